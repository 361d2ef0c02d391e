"""Atheris fuzzing of the HTTP/2 connection's two backends, checking they agree.

Each input is cut into pieces (its first bytes choose the role and the cuts) and fed to
``meshstats.proxy._h2_conn_c`` and ``meshstats.proxy._h2_conn_py`` (a server gets the client
preface first; a client has sent a request on stream 1); after every piece both must show
the same thing: the events (class and attributes, headers with their HPACK class), or the
same refusal (exception class and error code), the same bytes to send, the same windows
and stream counts. Run from the repository root after building in place::

    make -C _core/fuzz atheris-h2 ATHERIS_RUNS=200000

(seeded with ``corpus-h2``, frames a real h2 peer sends, written by ``--seeds DIR``; new
inputs go to ``_core/fuzz/corpus-out/atheris-h2``). Any other exception, or a
disagreement, raises and atheris reports the input. tests/test_proxy_h2codec.py holds each
backend to h2 itself under hypothesis.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import atheris

with atheris.instrument_imports():
    import h2.events
    import h2.exceptions

    from meshstats.proxy import _h2_conn_c, _h2_conn_py

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]


def _value(value: object) -> object:
    if isinstance(value, h2.events.Event):
        return _event(value)
    if isinstance(value, list):
        return [(type(v).__name__, tuple(v)) if isinstance(v, tuple) else _value(v) for v in value]
    if isinstance(value, dict):
        return sorted((repr(k), repr(v)) for k, v in value.items())
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return (type(value).__name__, sorted((k, repr(v)) for k, v in vars(value).items()))
    return value


def _event(event: h2.events.Event) -> object:
    return type(event).__name__, sorted((k, _value(v)) for k, v in vars(event).items())


def _state(conn: Any) -> tuple[object, ...]:
    return (
        conn.data_to_send(),
        conn.outbound_flow_control_window,
        conn.max_outbound_frame_size,
        conn.highest_inbound_stream_id,
        conn.highest_outbound_stream_id,
        conn.open_inbound_streams,
        conn.open_outbound_streams,
    )


def trace(module: ModuleType, client: bool, pieces: list[bytes]) -> list[object]:
    conn = module.Connection(client=client)
    conn.initiate_connection()
    out: list[object] = []
    if client:
        conn.send_headers(1, REQUEST)
        conn.send_data(1, b"body", end_stream=True)
    out.append(_state(conn))
    for piece in pieces:
        try:
            events = conn.receive_data(piece)
        except h2.exceptions.ProtocolError as exc:
            code = getattr(exc, "error_code", None)
            out.append(("refused", type(exc).__name__, code, _state(conn)))
            return out
        out.append(([_event(e) for e in events], _state(conn)))
        for event in events:  # consume what arrived, as the relay does
            if isinstance(event, h2.events.DataReceived) and event.stream_id:
                try:
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                except h2.exceptions.ProtocolError as exc:
                    out.append(("ack refused", type(exc).__name__))
        out.append(_state(conn))
    return out


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    client = bool(data[0] & 1)
    body = data[3:] if client else PREFACE + data[3:]
    step = data[1] % 64 + 1
    offset = data[2] % step
    cuts = [0, *range(offset, len(body), step), len(body)]
    pieces = [body[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    got_c = trace(_h2_conn_c, client, pieces)
    got_py = trace(_h2_conn_py, client, pieces)
    if got_c != got_py:
        raise AssertionError(f"backends disagree on {data!r}:\nC  {got_c!r}\nPy {got_py!r}")


def write_seeds(directory: Path) -> None:
    """Frames a real h2 peer sends: a client's requests (for the server role) and a server's
    responses to stream 1 (for the client role), with settings, pings, window updates."""
    import h2.config
    import h2.connection

    directory.mkdir(parents=True, exist_ok=True)
    peer = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    peer.initiate_connection()
    peer.send_headers(1, REQUEST + [(b"content-length", b"4")])
    peer.send_data(1, b"body", end_stream=True)
    peer.send_headers(3, [(b":method", b"GET"), *REQUEST[1:]], end_stream=True)
    peer.ping(b"12345678")
    peer.reset_stream(3)
    client_bytes = peer.data_to_send()[len(PREFACE) :]
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.initiate_connection()
    server.receive_data(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    server.receive_data(_h2_conn_py_request())
    server.send_headers(1, [(b":status", b"200"), (b"content-type", b"text/plain")])
    server.send_data(1, b"hello")
    server.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    server.increment_flow_control_window(1000)
    server_bytes = server.data_to_send()
    (directory / "server-role").write_bytes(b"\x00\x10\x00" + client_bytes)
    (directory / "server-role-whole").write_bytes(b"\x00\xff\x00" + client_bytes)
    (directory / "client-role").write_bytes(b"\x01\x10\x00" + server_bytes)
    (directory / "client-role-whole").write_bytes(b"\x01\xff\x00" + server_bytes)


def _h2_conn_py_request() -> bytes:
    """The request the client role sent on stream 1 (so the seed server may answer it)."""
    conn = _h2_conn_py.Connection(client=True)
    conn.initiate_connection()
    conn.send_headers(1, REQUEST)
    conn.send_data(1, b"body", end_stream=True)
    return conn.data_to_send()[len(PREFACE) :]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
