"""The streaming prefix decoder (``PeerPrefixDecoder``) on both backends.

What a proxy needs from it: the same answer however the bytes are split, the bytes after
the frame handed back exactly, and for a peer that is not in the mesh every byte handed
back untouched so it can be forwarded.
"""

from __future__ import annotations

from typing import Any

import pytest
from _istio_samples import NODE_ID, REVIEWS_V2
from conftest import Backend
from hypothesis import given, settings
from hypothesis import strategies as st

from meshstats.errors import DecoderFinishedError, PeerExchangeError

MAGIC = bytes.fromhex("3d230467")


@pytest.fixture
def pe(backend: Backend) -> Any:
    return backend.peer_exchange


@pytest.fixture
def frame(pe: Any) -> bytes:
    frame: bytes = pe.encode_peer_prefix(REVIEWS_V2, NODE_ID)
    return frame


def feed_all(decoder: Any, chunks: list[bytes]) -> list[str]:
    states = []
    for chunk in chunks:
        states.append(decoder.feed(chunk))
        if states[-1] != "need_more":
            break
    return states


def test_initial_state(pe: Any) -> None:
    decoder = pe.PeerPrefixDecoder()
    assert decoder.state == pe.NEED_MORE == "need_more"
    assert decoder.exchange is None and decoder.error is None
    assert decoder.leftover == b"" and decoder.passthrough == b""
    assert decoder.buffered == 0
    assert decoder.max_size == pe.DEFAULT_MAX_FRAME == 65536
    assert decoder.feed(b"") == "need_more"


def test_every_split_point(pe: Any, frame: bytes) -> None:
    expected = pe.decode_peer_prefix(frame)
    for cut in range(len(frame) + 1):
        decoder = pe.PeerPrefixDecoder()
        first = decoder.feed(frame[:cut])
        assert first == ("done" if cut == len(frame) else "need_more")
        assert decoder.buffered == (0 if cut == len(frame) else cut)
        if cut < len(frame):
            assert decoder.feed(frame[cut:]) == "done"
        assert decoder.exchange == expected
        assert decoder.leftover == b""
        assert decoder.buffered == 0


def test_one_byte_at_a_time(pe: Any, frame: bytes) -> None:
    decoder = pe.PeerPrefixDecoder()
    states = [decoder.feed(frame[i : i + 1]) for i in range(len(frame))]
    assert states == ["need_more"] * (len(frame) - 1) + ["done"]
    assert decoder.exchange.metadata == REVIEWS_V2
    assert decoder.exchange.metadata_id == NODE_ID
    assert decoder.exchange.consumed == len(frame)


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_frame_then_payload_leftover_exact(
    backend: Backend, payload: bytes, cuts: list[int]
) -> None:
    pe = backend.peer_exchange
    frame = pe.encode_peer_prefix(REVIEWS_V2, NODE_ID)
    stream = frame + payload
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(points, points[1:])]
    decoder = pe.PeerPrefixDecoder()
    fed = 0
    for chunk in chunks:
        state = decoder.feed(chunk)
        fed += len(chunk)
        if state == "done":
            break
        assert state == "need_more"
    assert decoder.state == "done"
    # Everything after the frame in the chunks fed so far, and not a byte more or less.
    assert decoder.leftover == stream[len(frame) : fed]
    assert decoder.exchange.consumed == len(frame)


def test_frame_and_payload_in_one_chunk_as_bytearray_and_memoryview(pe: Any, frame: bytes) -> None:
    for wrap in (bytes, bytearray, memoryview):
        decoder = pe.PeerPrefixDecoder()
        assert decoder.feed(wrap(frame + b"GET / HTTP/1.1\r\n\r\n")) == "done"
        assert decoder.leftover == b"GET / HTTP/1.1\r\n\r\n"
        assert type(decoder.leftover) is bytes


NON_MESH = {
    "http": b"GET /productpage HTTP/1.1\r\nHost: bookinfo\r\n\r\n",
    "tls-client-hello": bytes.fromhex("160301020001000200fc0303") + bytes(range(32)),
    "single-byte": b"\x16",
    "magic-then-mismatch": MAGIC[:3] + b"\x00" + b"rest of the stream",
    "magic-prefix-2-then-mismatch": MAGIC[:2] + b"\xff",
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(NON_MESH))
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 1000])
def test_non_mesh_peer_passes_every_byte_through(pe: Any, name: str, chunk_size: int) -> None:
    data = NON_MESH[name]
    decoder = pe.PeerPrefixDecoder()
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    states = feed_all(decoder, chunks)
    assert states[-1] == "not_mesh"
    fed = b"".join(chunks[: len(states)])
    assert decoder.passthrough == fed
    assert data.startswith(decoder.passthrough)
    # The magic is rejected at its first differing byte, as soon as that byte arrives.
    first_bad = next(i for i in range(4) if data[i] != MAGIC[i])
    assert decoder.error.reason == "bad_magic"
    assert decoder.error.offset == first_bad
    assert len(fed) - len(chunks[len(states) - 1]) <= first_bad < len(fed)
    assert decoder.exchange is None and decoder.buffered == 0


def test_single_byte_matching_the_magic_needs_more(pe: Any) -> None:
    decoder = pe.PeerPrefixDecoder()
    assert decoder.feed(MAGIC[:1]) == "need_more"
    assert decoder.buffered == 1


def test_oversize_length_is_not_mesh_without_buffering(pe: Any) -> None:
    decoder = pe.PeerPrefixDecoder(max_size=1000)
    header = MAGIC + (1001).to_bytes(4, "big")
    assert decoder.feed(header[:6]) == "need_more"
    assert decoder.feed(header[6:] + b"body bytes") == "not_mesh"
    assert decoder.error.reason == "oversize" and decoder.error.offset == 4
    assert decoder.passthrough == header + b"body bytes"
    assert decoder.buffered == 0


def test_announced_4gib_frame_is_refused_at_once(pe: Any) -> None:
    decoder = pe.PeerPrefixDecoder()
    assert decoder.feed(MAGIC + b"\xff\xff\xff\xff") == "not_mesh"
    assert decoder.error.reason == "oversize"


def test_buffer_never_exceeds_frame(pe: Any) -> None:
    decoder = pe.PeerPrefixDecoder(max_size=100)
    header = MAGIC + (100).to_bytes(4, "big")
    assert decoder.feed(header) == "need_more"
    for i in range(99):
        assert decoder.feed(b"\x00") == "need_more"
        assert decoder.buffered == 8 + i + 1 <= 8 + 100


def test_malformed_body_is_not_mesh_with_decode_error(pe: Any, frame: bytes) -> None:
    mutable = bytearray(frame)
    mutable[10] = ord("X")  # inside the type_url: wrong_type_url
    broken = bytes(mutable)
    with pytest.raises(PeerExchangeError) as info:
        pe.decode_peer_prefix(broken)
    decoder = pe.PeerPrefixDecoder()
    assert decoder.feed(broken[:300]) == "need_more"
    assert decoder.feed(broken[300:] + b"tail") == "not_mesh"
    assert (decoder.error.reason, decoder.error.offset) == (info.value.reason, info.value.offset)
    assert decoder.passthrough == broken + b"tail"


@pytest.mark.parametrize("final", ["done", "not_mesh"])
def test_feed_after_final_state_raises(pe: Any, frame: bytes, final: str) -> None:
    decoder = pe.PeerPrefixDecoder()
    assert decoder.feed(frame if final == "done" else b"HTTP") == final
    message = f"feed() after the decoder finished ({final!r}): make a new decoder per connection"
    with pytest.raises(DecoderFinishedError) as info:
        decoder.feed(b"more")
    assert str(info.value) == message and isinstance(info.value, RuntimeError)
    with pytest.raises(DecoderFinishedError):
        decoder.feed(b"")
    assert decoder.state == final


def test_frame_without_node_id_or_metadata(pe: Any) -> None:
    frame = pe.encode_peer_prefix({})
    decoder = pe.PeerPrefixDecoder()
    assert decoder.feed(frame) == "done"
    assert decoder.exchange.metadata == {} and decoder.exchange.metadata_id is None


@pytest.mark.parametrize("bad", [-1, 2**31, 2**40])
def test_max_size_out_of_range(pe: Any, bad: int) -> None:
    with pytest.raises(ValueError):
        pe.PeerPrefixDecoder(max_size=bad)


def test_max_size_not_an_int(pe: Any) -> None:
    with pytest.raises(TypeError):
        pe.PeerPrefixDecoder(max_size=1.5)
    with pytest.raises(TypeError):
        pe.PeerPrefixDecoder().feed("text is not bytes")
