"""Google's protobuf as the independent oracle for the peer-exchange codec, both backends.

protobuf runs in a child process (``_protobuf_oracle.py``) with its pure-Python backend,
the one whose deterministic map order matches C++ (keys sorted by UTF-8 bytes, a prefix
first). The child checks the backend itself, so nothing imported earlier in this test
session can switch it to upb behind our back.

Directions checked:
* encode: our bytes == protobuf's deterministic bytes (header Struct and whole frame);
* decode: bytes written by protobuf (sorted or insertion order) and bytes written by
  hand with shuffled entries, unknown fields, replaced duplicates, non-minimal lengths
  and overridden oneof kinds decode to exactly what protobuf parses from them;
* truncation and bad UTF-8: we reject exactly when protobuf rejects.
"""

from __future__ import annotations

import base64
import pickle
import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _istio_samples import NODE_ID, REVIEWS_V2, as_decoded, same
from conftest import Backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshstats.errors import PeerExchangeError

TYPE_URL = "type.googleapis.com/google.protobuf.Struct"
MAGIC_BYTES = bytes.fromhex("3d230467")


class Oracle:
    """Client of the protobuf child process (one request at a time)."""

    def __init__(self) -> None:
        script = Path(__file__).with_name("_protobuf_oracle.py")
        self._proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def __call__(self, op: str, *args: object) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        blob = pickle.dumps((op, *args))
        self._proc.stdin.write(struct.pack(">I", len(blob)) + blob)
        self._proc.stdin.flush()
        head = self._proc.stdout.read(4)
        if len(head) < 4:
            assert self._proc.stderr is not None
            pytest.fail(f"protobuf oracle died: {self._proc.stderr.read().decode()}")
        status, value = pickle.loads(self._proc.stdout.read(struct.unpack(">I", head)[0]))
        assert status == "ok", f"oracle raised on {op}: {value}"
        return value

    def close(self) -> None:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=30)
        self._proc.stdout.close()
        self._proc.stderr.close()


@pytest.fixture(scope="module")
def oracle() -> Iterator[Oracle]:
    client = Oracle()
    backend_name = client("backend")
    if backend_name != "python":
        pytest.fail(f"protobuf oracle runs the {backend_name!r} backend, not 'python'")
    yield client
    client.close()


# --------------------------------------------------------------------------- strategies

# Istio's own prefix pairs (NAME/NAMESPACE, the two exchange keys) and other edge keys
# are drawn often, so the sort order of prefix keys is exercised in most examples.
keys = st.one_of(
    st.sampled_from(
        [
            "",
            "NAME",
            "NAMESPACE",
            "NAME_",
            "LABELS",
            "app",
            "app.kubernetes.io/name",
            "x-envoy-peer-metadata",
            "x-envoy-peer-metadata-id",
            "\u00e9",
            "e\u0301",
            "\U0001f600",
            "a\x00b",
            "\x7f",
        ]
    ),
    st.text(max_size=12),
)
numbers = st.one_of(
    st.floats(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0.0, -0.0, 2**53 + 1, 2**53, -(2**63), float("inf"), float("-inf")]),
    st.just(float("nan")),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
values = st.recursive(
    leaves,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=5),
    max_leaves=25,
)
trees = st.dictionaries(keys, values, max_size=8)
node_ids = st.one_of(st.none(), st.just(""), st.just(NODE_ID), st.text(max_size=30))

ORACLE_SETTINGS = settings(
    max_examples=150,
    deadline=None,  # every example talks to a child process
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# --------------------------------------------------------------------------- hand writer
#
# An encoder independent of the code under test that writes *valid but unusual*
# protobuf: what another implementation, or a hostile but well-formed peer, may send.


def w_varint(n: int, rng: random.Random | None = None) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            break
    # Non-minimal (padded) encodings are legal; only used for lengths.
    if rng is not None and rng.random() < 0.2:
        while len(out) < 10 and rng.random() < 0.5:
            out[-1] |= 0x80
            out.append(0)
    return bytes(out)


def w_len(field: int, body: bytes, rng: random.Random) -> bytes:
    return w_varint(field << 3 | 2) + w_varint(len(body), rng) + body


def w_unknown(rng: random.Random) -> bytes:
    field = rng.choice([7, 9, 15, 16, 100, 2047, 2**20, 2**29 - 1])
    wire_type = rng.choice([0, 1, 2, 5])
    tag = w_varint(field << 3 | wire_type)
    if wire_type == 0:
        return tag + w_varint(rng.getrandbits(rng.choice([1, 7, 35, 64])))
    if wire_type == 1:
        return tag + rng.randbytes(8)
    if wire_type == 5:
        return tag + rng.randbytes(4)
    return w_len(field, rng.randbytes(rng.randrange(12)), rng)


def sprinkle(parts: list[bytes], rng: random.Random) -> bytes:
    """Join message fields with unknown fields inserted at random places."""
    out = list(parts)
    for _ in range(rng.choice([0, 0, 1, 2])):
        out.insert(rng.randrange(len(out) + 1), w_unknown(rng))
    return b"".join(out)


def w_scalar_value_field(rng: random.Random) -> bytes:
    """One scalar kind field; a later kind field in the same Value replaces it."""
    choice = rng.randrange(4)
    if choice == 0:
        return b"\x08" + w_varint(rng.getrandbits(8))
    if choice == 1:
        return b"\x11" + rng.randbytes(8)
    if choice == 2:
        return w_len(3, b"junk", rng)
    return b"\x20" + w_varint(rng.getrandbits(3))


def w_value(value: object, rng: random.Random) -> bytes:
    parts: list[bytes] = []
    if rng.random() < 0.2:
        parts.append(w_scalar_value_field(rng))
    if value is None:
        if parts or rng.random() < 0.7:
            # Any enum number is still null_value.
            parts.append(b"\x08" + w_varint(rng.choice([0, 0, 1, 2**31])))
        # else: no kind at all, which also reads as None
    elif isinstance(value, bool):
        parts.append(b"\x20" + w_varint(rng.choice([1, 2, 2**63]) if value else 0))
    elif isinstance(value, (int, float)):
        parts.append(b"\x11" + struct.pack("<d", float(value)))
    elif isinstance(value, str):
        parts.append(w_len(3, value.encode(), rng))
    elif isinstance(value, dict):
        parts.append(w_len(5, w_struct(value, rng), rng))
    else:
        assert isinstance(value, list)
        parts.append(w_len(6, w_list(value, rng), rng))
    return sprinkle(parts, rng)


def w_entry(key: str, value: object, rng: random.Random) -> bytes:
    fields = [w_len(1, key.encode(), rng), w_len(2, w_value(value, rng), rng)]
    rng.shuffle(fields)
    if rng.random() < 0.15:
        fields.insert(0, w_len(1, b"replaced-key", rng))  # the last key field wins
    return sprinkle(fields, rng)


def w_struct(tree: dict[str, object], rng: random.Random) -> bytes:
    groups = []
    for key, value in tree.items():
        group = [w_len(1, w_entry(key, value, rng), rng)]
        if rng.random() < 0.15:  # an earlier entry for the same key, replaced by the later one
            group.insert(0, w_len(1, w_entry(key, "replaced", rng), rng))
        groups.append(group)
    rng.shuffle(groups)
    return sprinkle([entry for group in groups for entry in group], rng)


def w_list(items: list[object], rng: random.Random) -> bytes:
    return sprinkle([w_len(1, w_value(item, rng), rng) for item in items], rng)


def w_frame(outer: bytes, rng: random.Random) -> bytes:
    fields = [w_len(1, TYPE_URL.encode(), rng), w_len(2, outer, rng)]
    rng.shuffle(fields)
    body = sprinkle(fields, rng)
    return MAGIC_BYTES + len(body).to_bytes(4, "big") + body


def header_of(struct_bytes: bytes) -> str:
    return base64.b64encode(struct_bytes).decode()


# --------------------------------------------------------------------------- tests


def test_oracle_runs_pure_python_protobuf(oracle: Oracle) -> None:
    # The fixture already failed otherwise; this states the requirement as a test.
    assert oracle("backend") == "python"


def test_prefix_keys_sort_shorter_first(backend: Backend, oracle: Oracle) -> None:
    tree = {"NAMESPACE": "ns", "NAME": "pod", "NAME_": 1}
    expected = oracle("encode_struct", tree)
    raw = base64.b64decode(backend.peer_exchange.encode_peer_header(tree))
    assert raw == expected
    assert raw.index(b"NAME\x12") < raw.index(b"NAMESPACE") < raw.index(b"NAME_")


@ORACLE_SETTINGS
@given(tree=trees)
def test_header_encoding_matches_protobuf(
    backend: Backend, oracle: Oracle, tree: dict[str, Any]
) -> None:
    expected = oracle("encode_struct", tree)
    value = backend.peer_exchange.encode_peer_header(tree)
    assert value == base64.b64encode(expected).decode()  # padded standard base64


@ORACLE_SETTINGS
@given(tree=trees, node_id=node_ids)
def test_prefix_encoding_matches_protobuf(
    backend: Backend, oracle: Oracle, tree: dict[str, Any], node_id: str | None
) -> None:
    assert backend.peer_exchange.encode_peer_prefix(tree, node_id) == oracle(
        "encode_frame", tree, node_id
    )


@ORACLE_SETTINGS
@given(tree=trees, seed=st.integers(0, 2**32))
def test_decoding_protobuf_output_matches_protobuf(
    backend: Backend, oracle: Oracle, tree: dict[str, Any], seed: int
) -> None:
    shuffled = dict(sorted(tree.items(), key=lambda kv: random.Random(seed).random()))
    for op, source in (("encode_struct", tree), ("encode_struct_insertion_order", shuffled)):
        raw = oracle(op, source)
        status, parsed = oracle("parse_struct", raw)
        assert status == "ok"
        decoded = backend.peer_exchange.decode_peer_header(header_of(raw))
        assert same(decoded, parsed)
        assert same(decoded, as_decoded(tree))


@ORACLE_SETTINGS
@given(tree=trees, seed=st.integers(0, 2**32))
def test_decoding_unusual_wire_matches_protobuf(
    backend: Backend, oracle: Oracle, tree: dict[str, Any], seed: int
) -> None:
    raw = w_struct(tree, random.Random(seed))
    status, parsed = oracle("parse_struct", raw)
    assert status == "ok", parsed
    decoded = backend.peer_exchange.decode_peer_header(header_of(raw))
    assert same(decoded, parsed)
    assert same(decoded, as_decoded(tree))


@ORACLE_SETTINGS
@given(tree=trees, node_id=node_ids, seed=st.integers(0, 2**32))
def test_decoding_unusual_frame_matches_protobuf(
    backend: Backend, oracle: Oracle, tree: dict[str, Any], node_id: str | None, seed: int
) -> None:
    rng = random.Random(seed)
    outer_tree: dict[str, object] = {"x-envoy-peer-metadata": tree}
    if node_id is not None:
        outer_tree["x-envoy-peer-metadata-id"] = node_id
    frame = w_frame(w_struct(outer_tree, rng), rng)
    status, type_url, value = oracle("parse_any", frame[8:])
    assert status == "ok" and type_url == TYPE_URL
    status, outer = oracle("parse_struct", value)
    assert status == "ok"
    exchange = backend.peer_exchange.decode_peer_prefix(frame + b"trailing payload")
    assert exchange.consumed == len(frame)
    assert same(exchange.metadata, outer["x-envoy-peer-metadata"])
    assert exchange.metadata_id == outer.get("x-envoy-peer-metadata-id")
    assert same(exchange.metadata, as_decoded(tree))


@ORACLE_SETTINGS
@given(tree=trees.filter(bool), data=st.data())
def test_truncation_rejected_exactly_when_protobuf_rejects(
    backend: Backend, oracle: Oracle, tree: dict[str, Any], data: st.DataObject
) -> None:
    raw = oracle("encode_struct", tree)
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    status, parsed = oracle("parse_struct", raw[:cut])
    try:
        decoded = backend.peer_exchange.decode_peer_header(header_of(raw[:cut]))
    except PeerExchangeError as exc:
        assert status == "error", f"protobuf accepted what we rejected ({exc})"
        assert exc.reason == "truncated"
        assert exc.offset <= cut  # where the element that does not fit starts
    else:
        assert status == "ok", f"we accepted what protobuf rejected ({parsed})"
        assert same(decoded, parsed)


@pytest.mark.parametrize(
    "bad",
    [
        b"\xc0\x80",  # overlong NUL
        b"\xe0\x80\xaf",  # overlong '/'
        b"\xed\xa0\x80",  # surrogate U+D800
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"\x80",  # stray continuation byte
        b"\xe2\x82",  # sequence cut short by the next ASCII byte
        b"\xff",
    ],
    ids=["overlong", "overlong3", "surrogate", "too-big", "stray", "cut-short", "ff"],
)
@pytest.mark.parametrize("where", ["key", "value"])
def test_bad_utf8_rejected_like_protobuf(
    backend: Backend, oracle: Oracle, bad: bytes, where: str
) -> None:
    good_key, good_value = b"LABELS", b"reviews"
    text = b"ok" + bad + b"tail"
    key, value = (text, good_value) if where == "key" else (good_key, text)
    value_msg = b"\x1a" + bytes([len(value)]) + value
    entry = b"\x0a" + bytes([len(key)]) + key + b"\x12" + bytes([len(value_msg)]) + value_msg
    raw = b"\x0a" + bytes([len(entry)]) + entry
    # Where the bad bytes sit: entry tag+len, then (key tag+len or key, value tag+len...).
    text_at = 4 if where == "key" else 2 + 2 + len(key) + 2 + 2
    assert raw[text_at : text_at + len(text)] == text
    status, _ = oracle("parse_struct", raw)
    assert status == "error"
    with pytest.raises(PeerExchangeError) as info:
        backend.peer_exchange.decode_peer_header(header_of(raw))
    assert info.value.reason == "bad_utf8"
    assert info.value.offset == text_at + 2


def test_realistic_istio_frame(backend: Backend, oracle: Oracle) -> None:
    pe = backend.peer_exchange
    frame = pe.encode_peer_prefix(REVIEWS_V2, NODE_ID)
    assert frame == oracle("encode_frame", REVIEWS_V2, NODE_ID)
    assert frame[:4] == bytes.fromhex("3d230467")
    assert int.from_bytes(frame[4:8], "big") == len(frame) - 8
    # ecosystem.md §3 measured 649 B for a similar node (without the node id).
    bare = pe.encode_peer_prefix(REVIEWS_V2)
    assert bare == oracle("encode_frame", REVIEWS_V2, None)
    assert 600 <= len(bare) <= 700, len(bare)
    assert len(frame) > len(bare) + len(NODE_ID)
    exchange = pe.decode_peer_prefix(frame)
    assert exchange.metadata == REVIEWS_V2 and exchange.metadata_id == NODE_ID
    assert exchange.consumed == len(frame)
    header = pe.encode_peer_header(REVIEWS_V2)
    assert header == header_of(oracle("encode_struct", REVIEWS_V2))
    assert pe.decode_peer_header(header) == REVIEWS_V2
