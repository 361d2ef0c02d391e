"""Hostile input for the peer-exchange codec, over both backends.

Every handcrafted case states the exact ``reason`` and ``offset`` the rules in
docs/peer_exchange.md ("Decisions") give, worked out by hand in the comments (frame
offsets count from the magic's first byte, so the ``Any`` starts at 8). The random
cases (hypothesis) check the contract's invariants; the differential tests at the end
check that C and Python agree on random bytes and on mutations of real frames.
"""

from __future__ import annotations

import base64
import struct
from types import ModuleType

import pytest
from _istio_samples import NODE_ID, REVIEWS_V2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshstats.errors import PeerExchangeError

MAGIC = bytes.fromhex("3d230467")
TYPE_URL = b"type.googleapis.com/google.protobuf.Struct"  # 42 bytes
# Any field 1 (type_url): tag 0a, length 2a (42), then the URL: 44 bytes, offsets 8..51.
ANY_URL = b"\x0a\x2a" + TYPE_URL
REASONS = {
    "bad_magic",
    "truncated",
    "oversize",
    "bad_varint",
    "bad_wire_type",
    "too_deep",
    "bad_utf8",
    "wrong_type_url",
    "bad_base64",
    "bad_field",
}


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + varint(len(payload)) + payload


def frame(any_body: bytes) -> bytes:
    return MAGIC + struct.pack(">I", len(any_body)) + any_body


def frame_with_struct(struct_body: bytes) -> bytes:
    """A frame whose Any value is ``struct_body`` (which must be under 128 bytes)."""
    assert len(struct_body) < 128
    return frame(ANY_URL + b"\x12" + bytes([len(struct_body)]) + struct_body)


# In frame_with_struct, the Struct's first byte is at 8 + 44 + 2 = 54.
STRUCT_AT = 54


def expect(reason: str, offset: int, call: object, *args: object, **kwargs: object) -> None:
    assert callable(call)
    with pytest.raises(PeerExchangeError) as info:
        call(*args, **kwargs)
    assert (info.value.reason, info.value.offset) == (reason, offset), str(info.value)


def pe_of(backend: object) -> ModuleType:
    module = backend.peer_exchange  # type: ignore[attr-defined]
    assert isinstance(module, ModuleType)
    return module


# ------------------------------------------------------------------ framing and sizes


def test_length_ffffffff_is_oversize_at_the_length_field(backend: object) -> None:
    pe = pe_of(backend)
    data = MAGIC + b"\xff\xff\xff\xff"
    expect("oversize", 4, pe.decode_peer_prefix, data)
    # Even the largest accepted cap (2**31 - 1) is below 2**32 - 1.
    expect("oversize", 4, pe.decode_peer_prefix, data + b"x" * 100, max_size=2**31 - 1)


def test_streaming_refuses_oversize_before_buffering(backend: object) -> None:
    pe = pe_of(backend)
    dec = pe.PeerPrefixDecoder()
    header = MAGIC + b"\xff\xff\xff\xff"
    for i, byte in enumerate(header[:-1]):
        assert dec.feed(bytes([byte])) == pe.NEED_MORE
        assert dec.buffered == i + 1
    assert dec.feed(header[-1:] + b"body bytes") == pe.NOT_MESH
    assert (dec.error.reason, dec.error.offset) == ("oversize", 4)
    assert dec.passthrough == header + b"body bytes"
    assert dec.buffered == 0
    with pytest.raises(RuntimeError):
        dec.feed(b"more")


def test_streaming_holds_only_what_arrived(backend: object) -> None:
    pe = pe_of(backend)
    dec = pe.PeerPrefixDecoder(max_size=1000)
    # Announces exactly max_size bytes, sends one: 9 bytes held, nothing pre-sized.
    assert dec.feed(MAGIC + struct.pack(">I", 1000) + b"\x0a") == pe.NEED_MORE
    assert dec.buffered == 9
    dec = pe.PeerPrefixDecoder(max_size=1000)
    assert dec.feed(MAGIC + struct.pack(">I", 1001)) == pe.NOT_MESH
    assert (dec.error.reason, dec.error.offset) == ("oversize", 4)


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"\x00", 0),
        (b"\x3d\x00", 1),
        (b"\x3d\x23\x04\x66", 3),
        (b"GET / HTTP/1.1\r\n", 0),
    ],
)
def test_bad_magic_at_first_differing_byte(backend: object, data: bytes, offset: int) -> None:
    pe = pe_of(backend)
    expect("bad_magic", offset, pe.decode_peer_prefix, data)
    dec = pe.PeerPrefixDecoder()
    assert dec.feed(data) == pe.NOT_MESH
    assert (dec.error.reason, dec.error.offset) == ("bad_magic", offset)
    assert dec.passthrough == data


@pytest.mark.parametrize("n", [0, 1, 3, 4, 7])
def test_short_header_is_truncated_at_its_end(backend: object, n: int) -> None:
    pe = pe_of(backend)
    data = (MAGIC + b"\x00\x00\x00\x10")[:n]
    expect("truncated", n, pe.decode_peer_prefix, data)


def test_body_shorter_than_length_is_truncated_at_end_of_input(backend: object) -> None:
    pe = pe_of(backend)
    data = MAGIC + struct.pack(">I", 50) + ANY_URL[:10]
    expect("truncated", 18, pe.decode_peer_prefix, data)


@pytest.mark.parametrize("bad", [-1, 2**31, 2**40])
def test_max_size_out_of_range(backend: object, bad: int) -> None:
    pe = pe_of(backend)
    with pytest.raises(ValueError):
        pe.decode_peer_prefix(b"", max_size=bad)
    with pytest.raises(ValueError):
        pe.PeerPrefixDecoder(max_size=bad)
    with pytest.raises(TypeError):
        pe.decode_peer_header("", max_size="10")


# --------------------------------------------------------------------------- varints


def test_truncated_varint(backend: object) -> None:
    pe = pe_of(backend)
    # Any = 18 80 80: unknown field 3 (varint) whose varint (at 9) never ends.
    expect("truncated", 9, pe.decode_peer_prefix, frame(b"\x18\x80\x80"))
    # The frame's trailing bytes do not extend the Any: still truncated at 9.
    expect("truncated", 9, pe.decode_peer_prefix, frame(b"\x18\x80\x80") + b"\x00" * 20)


def test_varint_longer_than_ten_bytes(backend: object) -> None:
    pe = pe_of(backend)
    # Unknown varint field at 8, its varint starts at 9: 10 continuation bytes then 01.
    expect("bad_varint", 9, pe.decode_peer_prefix, frame(b"\x18" + b"\x80" * 10 + b"\x01"))
    # A tag that is itself an over-long varint: at 8.
    expect("bad_varint", 8, pe.decode_peer_prefix, frame(b"\xff" * 11))


def test_ten_byte_varint_high_bits(backend: object) -> None:
    pe = pe_of(backend)
    # 10th byte 02: bit 64 set -> bad_varint at the varint's first byte (9).
    expect("bad_varint", 9, pe.decode_peer_prefix, frame(b"\x18" + b"\xff" * 9 + b"\x02"))
    expect("bad_varint", 9, pe.decode_peer_prefix, frame(b"\x18" + b"\xff" * 9 + b"\x81"))
    # 10th byte 01 = 2**64 - 1: a valid unknown field, so the next problem is the missing
    # type_url, reported at the Any's start (8).
    expect("wrong_type_url", 8, pe.decode_peer_prefix, frame(b"\x18" + b"\xff" * 9 + b"\x01"))


def test_varint_inside_a_value(backend: object) -> None:
    pe = pe_of(backend)
    # Struct at 54: entry 0a 0d (54,55), key 0a 01 'k' (56..58), value 12 08 (59,60),
    # Value: bool tag 20 at 61, varint at 62: 7 bytes ff then end of Value -> truncated at 62.
    body = b"\x0a\x0d\x0a\x01k\x12\x08\x20" + b"\xff" * 7
    expect("truncated", 62, pe.decode_peer_prefix, frame_with_struct(body))


# ------------------------------------------------------------ lengths and wire types


def test_lengths_past_the_end(backend: object) -> None:
    pe = pe_of(backend)
    # type_url claims 43 bytes, 42 follow: truncated at its length byte (9).
    expect("truncated", 9, pe.decode_peer_prefix, frame(b"\x0a\x2b" + TYPE_URL))
    # Entry at 54 claims 5 bytes, 2 follow in the Struct: truncated at 55.
    expect("truncated", 55, pe.decode_peer_prefix, frame_with_struct(b"\x0a\x05\x0a\x01"))
    # A huge length (2**63) in an unknown field at 8: truncated at 9.
    expect(
        "truncated", 9, pe.decode_peer_prefix, frame(b"\x22" + b"\x80" * 9 + b"\x01") + b"\x00" * 9
    )
    # fixed64 number_value with 3 bytes: entry 54, key 56..58, value 12 04 (59,60),
    # tag 11 at 61, the double would start at 62.
    expect(
        "truncated",
        62,
        pe.decode_peer_prefix,
        frame_with_struct(b"\x0a\x09\x0a\x01k\x12\x04\x11\x00\x00\x00"),
    )


def test_groups_and_reserved_wire_types(backend: object) -> None:
    pe = pe_of(backend)
    for wire in (3, 4, 6, 7):
        tag = bytes([(5 << 3) | wire])
        # Unknown field 5 of that wire type right at the Any's start (8).
        expect("bad_wire_type", 8, pe.decode_peer_prefix, frame(tag + b"\x00"))
        # Inside a Value: entry 54, key 56..58, value 12 02 (59,60), tag at 61.
        expect(
            "bad_wire_type",
            61,
            pe.decode_peer_prefix,
            frame_with_struct(b"\x0a\x07\x0a\x01k\x12\x02" + tag + b"\x00"),
        )


def test_known_field_with_wrong_wire_type(backend: object) -> None:
    pe = pe_of(backend)
    # type_url as a varint: tag 08 at 8.
    expect("bad_field", 8, pe.decode_peer_prefix, frame(b"\x08\x01"))
    # Struct field 1 as fixed32 (0d) at 54.
    expect("bad_field", 54, pe.decode_peer_prefix, frame_with_struct(b"\x0d\x00\x00\x00\x00"))
    # string_value as a varint (18) inside the Value at 61.
    expect(
        "bad_field",
        61,
        pe.decode_peer_prefix,
        frame_with_struct(b"\x0a\x07\x0a\x01k\x12\x02\x18\x00"),
    )


def test_field_number_zero(backend: object) -> None:
    pe = pe_of(backend)
    expect("bad_field", 8, pe.decode_peer_prefix, frame(b"\x02\x00"))


# ---------------------------------------------------------------------- depth bombs


def depth_bomb(containers: int) -> tuple[bytes, list[int]]:
    """Struct{"": list[ {"": list[ ... ]} ]} with ``containers`` nested under the top Struct.

    Returns the Struct bytes and, for each nested container (outermost first), the offset
    of the Value field tag (32 list_value / 2a struct_value) that opens it.
    """
    value = b""  # the innermost Value: empty, i.e. null
    headers: list[int] = []
    for level in reversed(range(containers)):
        before = len(value)
        if level % 2 == 0:
            value = field(0x32, field(0x0A, value))  # Value{list_value{values: value}}
        else:
            value = field(0x2A, field(0x0A, field(0x12, value)))  # Value{struct_value{"": value}}
        headers.append(len(value) - before)
    top = field(0x0A, field(0x12, value))  # Struct{fields: {value: value}}
    offsets, pos = [], len(top) - len(value)
    for size in reversed(headers):
        offsets.append(pos)
        pos += size
    return top, offsets


def test_depth_bomb_header(backend: object) -> None:
    pe = pe_of(backend)
    bomb, tags = depth_bomb(10_000)
    assert len(bomb) > 65536
    text = base64.b64encode(bomb).decode()
    # Top Struct is depth 1; nested container i (0-based) is depth i + 2; the first one too
    # deep (65) is i = 63. Offsets count decoded bytes.
    expect("too_deep", tags[63], pe.decode_peer_header, text, max_size=len(bomb))
    # The size cap wins over depth when the bomb is larger than max_size.
    expect("oversize", 0, pe.decode_peer_header, text)


def test_depth_limit_is_exact(backend: object) -> None:
    pe = pe_of(backend)
    ok, _ = depth_bomb(63)  # deepest container at depth 64
    # Walk it: top {"": [ {"": [ ... [None] ... ]} ]}, 63 containers, innermost a list.
    cur = pe.decode_peer_header(base64.b64encode(ok))[""]
    for level in range(63):
        if level % 2 == 0:
            assert isinstance(cur, list) and len(cur) == 1
            cur = cur[0]
        else:
            assert isinstance(cur, dict) and list(cur) == [""]
            cur = cur[""]
    assert cur is None
    bad, tags = depth_bomb(64)
    expect("too_deep", tags[63], pe.decode_peer_header, base64.b64encode(bad))


def test_depth_bomb_prefix(backend: object) -> None:
    pe = pe_of(backend)
    bomb, tags = depth_bomb(10_000)
    body = ANY_URL + b"\x12" + varint(len(bomb)) + bomb
    start = 8 + len(ANY_URL) + 1 + len(varint(len(bomb)))
    expect("too_deep", start + tags[63], pe.decode_peer_prefix, frame(body), max_size=len(body))


def test_encoder_refuses_what_the_decoder_would(backend: object) -> None:
    from meshstats.errors import PeerMetadataTypeError

    pe = pe_of(backend)
    deep: object = "leaf"
    for _ in range(63):
        deep = [deep]
    # Header: node Struct at depth 1 + 63 lists = 64: fine.
    assert pe.decode_peer_header(pe.encode_peer_header({"k": deep})) == {"k": deep}
    # Prefix: the node Struct is at depth 2, so the same tree is one level too deep.
    with pytest.raises(PeerMetadataTypeError):
        pe.encode_peer_prefix({"k": deep})
    loop: dict[str, object] = {}
    loop["self"] = loop
    with pytest.raises(PeerMetadataTypeError):
        pe.encode_peer_header(loop)


# ------------------------------------------------------------------------ type_url


def test_wrong_type_url(backend: object) -> None:
    pe = pe_of(backend)
    value_url = b"type.googleapis.com/google.protobuf.Value"
    expect("wrong_type_url", 8, pe.decode_peer_prefix, frame(field(0x0A, value_url)))
    # Missing entirely: at the Any's start.
    expect("wrong_type_url", 8, pe.decode_peer_prefix, frame(b"\x12\x00"))
    # After a value field (12 00 at 8, 9): the type_url tag is at 10.
    expect("wrong_type_url", 10, pe.decode_peer_prefix, frame(b"\x12\x00" + field(0x0A, b"x")))
    # Last occurrence wins: right then wrong -> wrong at the second tag (52) ...
    expect("wrong_type_url", 52, pe.decode_peer_prefix, frame(ANY_URL + field(0x0A, b"")))
    # ... and wrong then right is accepted.
    assert pe.decode_peer_prefix(frame(field(0x0A, value_url) + ANY_URL)).metadata == {}
    # Checked before the Struct: an invalid Struct behind a wrong URL still says wrong URL.
    expect("wrong_type_url", 8, pe.decode_peer_prefix, frame(field(0x0A, b"u") + b"\x12\x01\xff"))


# --------------------------------------------------------------------------- UTF-8

BAD_UTF8 = [
    (b"\xc0\x80", 0),  # overlong NUL
    (b"ab\xe0\x80\xaf", 2),  # overlong '/'
    (b"\xf0\x80\x80\xaf", 0),  # overlong, 4 bytes
    (b"x\xed\xa0\x80", 1),  # surrogate U+D800
    (b"\xed\xbf\xbf", 0),  # surrogate U+DFFF
    (b"\xf4\x90\x80\x80", 0),  # U+110000
    (b"\xf5\x80\x80\x80", 0),  # lead byte that never occurs
    (b"abc\x80", 3),  # stray continuation
    (b"\xe2\x82", 0),  # cut short
    (b"\xff", 0),
]


@pytest.mark.parametrize(("bad", "at"), BAD_UTF8)
def test_bad_utf8_in_key(backend: object, bad: bytes, at: int) -> None:
    pe = pe_of(backend)
    # Entry at 54 (0a len), key tag 0a at 56, length at 57, key bytes from 58.
    body = field(0x0A, field(0x0A, bad))
    expect("bad_utf8", 58 + at, pe.decode_peer_prefix, frame_with_struct(body))
    # Header: entry 0, key tag 2, key bytes from 4.
    expect("bad_utf8", 4 + at, pe.decode_peer_header, base64.b64encode(body))


@pytest.mark.parametrize(("bad", "at"), BAD_UTF8)
def test_bad_utf8_in_value(backend: object, bad: bytes, at: int) -> None:
    pe = pe_of(backend)
    # Entry 54, key 0a 01 'k' (56..58), value 12 len (59, 60), string tag 1a at 61, len 62,
    # string bytes from 63.
    body = field(0x0A, b"\x0a\x01k" + field(0x12, field(0x1A, bad)))
    expect("bad_utf8", 63 + at, pe.decode_peer_prefix, frame_with_struct(body))
    # In a list, in a struct, in the node of a real-looking frame: found wherever it is.
    nested = field(0x0A, b"\x0a\x01k" + field(0x12, field(0x32, field(0x0A, field(0x1A, bad)))))
    # 54 entry, 56..58 key, 59/60 value, 61/62 list_value, 63/64 values, 65/66 string, 67...
    expect("bad_utf8", 67 + at, pe.decode_peer_prefix, frame_with_struct(nested))


def test_replaced_oneof_kinds_are_still_validated(backend: object) -> None:
    pe = pe_of(backend)
    # Value{string_value: C0 80, bool_value: true}: the bool wins, but the bad string
    # before it is still an error (string bytes at 63).
    body = field(0x0A, b"\x0a\x01k" + field(0x12, field(0x1A, b"\xc0\x80") + b"\x20\x01"))
    expect("bad_utf8", 63, pe.decode_peer_prefix, frame_with_struct(body))
    good = field(0x0A, b"\x0a\x01k" + field(0x12, field(0x1A, b"s") + b"\x20\x01"))
    assert pe.decode_peer_prefix(frame_with_struct(good)).metadata == {}  # no node key
    assert pe.decode_peer_header(base64.b64encode(good)) == {"k": True}


# -------------------------------------------------------------------------- base64


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("  Cg-K", 4),  # urlsafe '-' at index 4 (2 spaces stripped first)
        ("Cg_K", 2),
        ("QQ=", 2),  # one '=' where two are needed
        ("QQ=A", 3),  # data after padding
        ("QUJD=", 4),  # padding on a complete quantum
        ("QQ===", 2),
        ("QUJDR", 4),  # a lone last character
        ("Q\u00e9JD", 1),  # non-ASCII character, counted in characters
        ("QU JD", 2),  # inner whitespace is not stripped
    ],
)
def test_bad_base64(backend: object, text: str, offset: int) -> None:
    pe = pe_of(backend)
    expect("bad_base64", offset, pe.decode_peer_header, text)


def test_header_regression_from_fuzzing(backend: object) -> None:
    pe = pe_of(backend)
    # libFuzzer found the C encoder doing pointer arithmetic on a NULL arena for a Struct
    # whose only key is "". These bytes: fixed32 field 7 (3d + 4 bytes), then an entry
    # (0a 02) holding only unknown varint field 8 (40 7a): key "" and no value -> None.
    data = bytes.fromhex("3d23046700 0a02407a".replace(" ", ""))
    assert pe.decode_peer_header(base64.b64encode(data)) == {"": None}
    # {"": None} re-encodes with both key and value written: 0a 06 | 0a 00 | 12 02 08 00.
    assert base64.b64decode(pe.encode_peer_header({"": None})) == bytes.fromhex(
        "0a060a00120208 00".replace(" ", "")
    )


# ---------------------------------------------------------------- random (both backends)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(call: object, *args: object, **kwargs: object) -> tuple[object, ...]:
    assert callable(call)
    try:
        result = call(*args, **kwargs)
    except PeerExchangeError as exc:
        assert exc.reason in REASONS
        # The message too: both backends word it from the reason (errors.py).
        return ("error", exc.reason, exc.offset, str(exc))
    if hasattr(result, "metadata"):
        return ("ok", result.metadata, result.metadata_id, result.consumed)
    return ("ok", result)


@SETTINGS
@given(data=st.binary(max_size=300), split=st.lists(st.integers(1, 40), max_size=20))
def test_random_bytes_never_crash(backend: object, data: bytes, split: list[int]) -> None:
    pe = pe_of(backend)
    whole = outcome(pe.decode_peer_prefix, data)
    if whole[0] == "error":
        assert 0 <= int(whole[2]) <= len(data)  # type: ignore[call-overload]
    # Streamed in arbitrary pieces: the same verdict, with "truncated" as NEED_MORE.
    dec, pos = pe.PeerPrefixDecoder(), 0
    state = pe.NEED_MORE
    for size in [*split, len(data)]:
        if state != pe.NEED_MORE or pos >= len(data):
            break
        state = dec.feed(data[pos : pos + size])
        pos += size
    if state == pe.NEED_MORE:
        assert whole[:2] == ("error", "truncated")
    elif state == pe.NOT_MESH:
        assert ("error", dec.error.reason, dec.error.offset, str(dec.error)) == whole
        assert dec.passthrough == data[:pos]
    else:
        ex = dec.exchange
        assert ("ok", ex.metadata, ex.metadata_id, ex.consumed) == whole
        assert data[: ex.consumed] + dec.leftover == data[:pos]
    header = outcome(pe.decode_peer_header, base64.b64encode(data))
    if header[0] == "error":
        assert header[1] != "bad_base64"


# ------------------------------------------------------------- differential C vs Python


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, byte in edits:
        if not out:
            out.append(byte)
            continue
        i = where % len(out)
        if kind == 0:
            out[i] = byte
        elif kind == 1:
            del out[i : i + 1 + byte % 8]
        elif kind == 2:
            out.insert(i, byte)
        else:
            del out[i:]
    return bytes(out)


EDITS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


@pytest.mark.c_extension
@SETTINGS
@given(data=st.binary(max_size=400), max_size=st.sampled_from([65536, 40, 0]))
def test_differential_random_bytes(
    c_backend: object, py_backend: object, data: bytes, max_size: int
) -> None:
    c, py = pe_of(c_backend), pe_of(py_backend)
    for call in ("decode_peer_prefix", "decode_peer_header"):
        arg: object = data if call == "decode_peer_prefix" else base64.b64encode(data)
        assert outcome(getattr(c, call), arg, max_size=max_size) == outcome(
            getattr(py, call), arg, max_size=max_size
        )
    # And the raw bytes as header text (mostly base64 errors, compared by offset).
    assert outcome(c.decode_peer_header, data) == outcome(py.decode_peer_header, data)


@pytest.mark.c_extension
@SETTINGS
@given(edits=EDITS, trailing=st.binary(max_size=8))
def test_differential_mutated_real_frames(
    c_backend: object, py_backend: object, edits: list[tuple[int, int, int]], trailing: bytes
) -> None:
    c, py = pe_of(c_backend), pe_of(py_backend)
    frame_bytes = c.encode_peer_prefix(REVIEWS_V2, NODE_ID)
    assert frame_bytes == py.encode_peer_prefix(REVIEWS_V2, NODE_ID)
    data = mutate(frame_bytes, edits) + trailing
    assert outcome(c.decode_peer_prefix, data) == outcome(py.decode_peer_prefix, data)
    header = base64.b64encode(data[8:])
    assert outcome(c.decode_peer_header, header) == outcome(py.decode_peer_header, header)
    # Whatever decodes must re-encode identically in both backends.
    result = outcome(c.decode_peer_prefix, data)
    if result[0] == "ok":
        meta, node_id = result[1], result[2]
        assert c.encode_peer_prefix(meta, node_id) == py.encode_peer_prefix(meta, node_id)
