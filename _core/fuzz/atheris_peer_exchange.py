"""Atheris fuzzing of the Python API of both codec backends, checking they agree.

For every input, the compiled and the pure-Python backend must give the same outcome
for ``decode_peer_prefix``, ``decode_peer_header`` (of the raw bytes and of their
base64) and a split-stream ``PeerPrefixDecoder``: the same value, or a
``PeerExchangeError`` with the same reason and offset. Whatever decodes must re-encode
to the same bytes in both. Run from the repository root after building in place::

    make -C _core/fuzz atheris ATHERIS_RUNS=200000

(new inputs go to ``_core/fuzz/corpus-out/atheris``; the committed seeds are read only).

Any other exception, or a disagreement, raises and atheris reports the input.
"""

from __future__ import annotations

import base64
import sys

import atheris

with atheris.instrument_imports():
    from meshstats import _peer_exchange_c as c_codec
    from meshstats import _peer_exchange_py as py_codec
    from meshstats.errors import PeerExchangeError


def outcome(call: object, *args: object, **kwargs: object) -> tuple[object, ...]:
    assert callable(call)
    try:
        result = call(*args, **kwargs)
    except PeerExchangeError as exc:
        return ("error", exc.reason, exc.offset)
    if hasattr(result, "metadata"):
        return ("ok", result.metadata, result.metadata_id, result.consumed)
    return ("ok", result)


def stream(codec: object, data: bytes, cuts: list[int]) -> tuple[object, ...]:
    dec = codec.PeerPrefixDecoder()  # type: ignore[attr-defined]
    pos, state = 0, "need_more"
    for size in [*cuts, len(data)]:
        if state != "need_more" or pos >= len(data):
            break
        state = dec.feed(data[pos : pos + size])
        pos += size
    if state == "done":
        ex = dec.exchange
        return (state, ex.metadata, ex.metadata_id, ex.consumed, dec.leftover)
    if state == "not_mesh":
        return (state, dec.error.reason, dec.error.offset, dec.passthrough)
    return (state, dec.buffered)


def same(a: object, b: object) -> bool:
    # repr() tells NaN payload-free equality apart from "nan != nan" and -0.0 from 0.0.
    return a == b or repr(a) == repr(b)


def test_one_input(data: bytes) -> None:
    cuts = [b % 64 + 1 for b in data[:8]]
    header = base64.b64encode(data)
    checks = [
        (outcome(c_codec.decode_peer_prefix, data), outcome(py_codec.decode_peer_prefix, data)),
        (outcome(c_codec.decode_peer_header, data), outcome(py_codec.decode_peer_header, data)),
        (outcome(c_codec.decode_peer_header, header), outcome(py_codec.decode_peer_header, header)),
        (stream(c_codec, data, cuts), stream(py_codec, data, cuts)),
    ]
    for got_c, got_py in checks:
        if not same(got_c, got_py):
            raise AssertionError(f"backends disagree on {data!r}: C {got_c!r} vs Python {got_py!r}")
    got = checks[0][0]
    if got[0] == "ok":
        meta, node_id = got[1], got[2]
        if c_codec.encode_peer_prefix(meta, node_id) != py_codec.encode_peer_prefix(meta, node_id):
            raise AssertionError(f"encodings differ for {data!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
