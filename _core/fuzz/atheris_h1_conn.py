"""Atheris fuzzing of the HTTP/1.1 connection's two backends, checking they agree.

Each input is cut into pieces (its first bytes choose the role, the method a client sent
and the cuts) and fed to ``meshstats._h1_conn_c`` and ``meshstats._h1_conn_py``; both must
show the same thing at every step: the event (with its fields and its cut of the body), the
states after it, the bytes not parsed yet, or a refusal with the same message, byte offset
and status. Run from the repository root after building in place::

    make -C _core/fuzz atheris-h1 ATHERIS_RUNS=200000

(seeded with the head parser's corpus, ``corpus-h1``; new inputs go to
``_core/fuzz/corpus-out/atheris-h1``). Any other exception, or a disagreement, raises and
atheris reports the input. tests/test_h1_conn.py holds the same property under hypothesis.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import atheris

with atheris.instrument_imports():
    from meshstats import _h1_conn_c, _h1_conn_py
    from meshstats import _h1_events as ev

METHODS = [b"GET", b"HEAD", b"POST", b"CONNECT"]


def _state(conn: Any) -> tuple[object, ...]:
    return (
        conn.our_state,
        conn.their_state,
        conn.their_http_version,
        conn.they_are_waiting_for_100_continue,
        conn.unparsed(),
        conn.trailing_data,
    )


def _describe(event: object) -> object:
    if event is ev.NEED_DATA or event is ev.PAUSED:
        return event
    out: list[object] = [type(event).__name__]
    for name in ("method", "target", "status_code", "reason", "http_version", "data"):
        if hasattr(event, name):
            out.append(getattr(event, name))
    headers = getattr(event, "headers", None)
    if headers is not None:
        out.append((headers.raw_items(), headers.lowered()))
    return tuple(out)


def trace(
    module: ModuleType, role: object, method: bytes | None, pieces: list[bytes]
) -> list[object]:
    conn = module.Connection(role)
    out: list[object] = []
    if method is not None:
        out.append(conn.send(ev.Request(method=method, target=b"/", headers=[(b"host", b"a")])))
        out.append(conn.send(ev.EndOfMessage()))
    feed = [*pieces, b""]
    for _ in range(4 * len(feed) + 64):
        try:
            event = conn.next_event()
        except ev.RemoteProtocolError as exc:
            out.append(("refused", str(exc), exc.offset, exc.error_status_hint, _state(conn)))
            return out
        out.append((_describe(event), _state(conn)))
        if event is ev.NEED_DATA:
            if not feed:
                return out
            conn.receive_data(feed.pop(0))
        elif event is ev.PAUSED or isinstance(event, ev.ConnectionClosed):
            return out
    return out


def test_one_input(data: bytes) -> None:
    if len(data) < 4:
        return
    role = ev.SERVER if data[0] & 1 else ev.CLIENT
    method = None if role is ev.SERVER else METHODS[data[1] % len(METHODS)]
    body = data[4:]
    step = data[2] % 32 + 1
    offset = data[3] % step
    cuts = [0, *range(offset, len(body), step), len(body)]
    pieces = [body[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    got_c = trace(_h1_conn_c, role, method, pieces)
    got_py = trace(_h1_conn_py, role, method, pieces)
    if got_c != got_py:
        raise AssertionError(f"backends disagree on {data!r}:\nC  {got_c!r}\nPy {got_py!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
