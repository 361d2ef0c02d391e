"""The HTTP header form (``x-envoy-peer-metadata``) and the encoding rules, both backends.

Expected offsets come from the base64 rules in docs/peer_exchange.md ("Header"), worked
out by hand for each input, not from running the code.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import pytest
from _istio_samples import REVIEWS_V2, as_decoded, same
from conftest import Backend
from hypothesis import given, settings
from hypothesis import strategies as st

from meshstats.errors import PeerExchangeError, PeerMetadataTypeError

leaves = st.one_of(
    st.none(), st.booleans(), st.floats(), st.integers(-(2**60), 2**60), st.text(max_size=15)
)
values = st.recursive(
    leaves,
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.tuples(kids, kids)
        | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=15,
)
trees = st.dictionaries(st.text(max_size=10), values, max_size=6)


@pytest.fixture
def pe(backend: Backend) -> Any:
    return backend.peer_exchange


def bad_base64_at(pe: Any, value: Any, **kwargs: Any) -> int:
    with pytest.raises(PeerExchangeError) as info:
        pe.decode_peer_header(value, **kwargs)
    assert info.value.reason == "bad_base64", info.value
    return info.value.offset


@settings(max_examples=100, deadline=None)
@given(tree=trees)
def test_round_trip(backend: Backend, tree: dict[str, Any]) -> None:
    pe = backend.peer_exchange
    value = pe.encode_peer_header(tree)
    assert same(pe.decode_peer_header(value), as_decoded(tree))


@settings(max_examples=50, deadline=None)
@given(tree=trees, lead=st.sampled_from(["", " ", "\t", "\r\n ", "\x0b\x0c"]))
def test_padded_unpadded_whitespace_bytes_all_decode_alike(
    backend: Backend, tree: dict[str, Any], lead: str
) -> None:
    pe = backend.peer_exchange
    value = pe.encode_peer_header(tree)
    expected = pe.decode_peer_header(value)
    variants = [value.rstrip("="), lead + value + lead[::-1], lead + value.rstrip("=") + "\n"]
    for variant in variants:
        assert same(pe.decode_peer_header(variant), expected)
        assert same(pe.decode_peer_header(variant.encode()), expected)
        assert same(pe.decode_peer_header(bytearray(variant.encode())), expected)


def test_encoding_is_standard_padded_base64(pe: Any) -> None:
    value = pe.encode_peer_header(REVIEWS_V2)
    assert len(value) % 4 == 0
    assert re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", value)
    struct_bytes = base64.b64decode(value, validate=True)
    assert base64.b64encode(struct_bytes).decode() == value
    assert pe.decode_peer_header(value) == REVIEWS_V2


def test_empty_value_is_empty_struct(pe: Any) -> None:
    assert pe.decode_peer_header("") == {}
    assert pe.decode_peer_header(" \t\r\n") == {}
    assert pe.encode_peer_header({}) == ""


def test_invalid_character_offset(pe: Any) -> None:
    value = pe.encode_peer_header(REVIEWS_V2)
    for at in (0, 1, 17, len(value) // 2, len(value) - 3):
        broken = value[:at] + "*" + value[at + 1 :]
        assert bad_base64_at(pe, broken) == at
        assert bad_base64_at(pe, "  \t" + broken) == at + 3  # offsets count the blanks
        assert bad_base64_at(pe, broken.encode()) == at


def test_inner_whitespace_and_non_ascii_are_invalid(pe: Any) -> None:
    value = pe.encode_peer_header(REVIEWS_V2)
    assert bad_base64_at(pe, value[:8] + " " + value[8:]) == 8
    assert bad_base64_at(pe, value[:8] + "\u00e9" + value[8:]) == 8
    assert bad_base64_at(pe, value[:8].encode() + "\u00e9".encode() + value[8:].encode()) == 8
    assert bad_base64_at(pe, "\u00a0" + value) == 0  # NBSP is not ASCII whitespace


def _value_with(pe: Any, chars: str) -> tuple[str, str]:
    """A header value containing every character in ``chars`` (searched, not assumed)."""
    for text in ("?" * n + "~" * m for n in range(1, 8) for m in range(1, 8)):
        value = pe.encode_peer_header({"k": text})
        if all(c in value for c in chars):
            return value, text
    raise AssertionError(f"no sample value contains {chars!r}")


def test_urlsafe_alphabet_rejected(pe: Any) -> None:
    value, text = _value_with(pe, "+/")
    assert pe.decode_peer_header(value) == {"k": text}
    urlsafe = value.translate(str.maketrans("+/", "-_"))
    first = min(urlsafe.index("-"), urlsafe.index("_"))
    assert bad_base64_at(pe, urlsafe) == first
    assert bad_base64_at(pe, urlsafe.rstrip("=")) == first


@pytest.mark.parametrize(
    ("value", "offset"),
    [
        ("QQ=", 2),  # 2 data chars need "==", one "=" is short
        ("QQ===", 2),  # three pads
        ("QUJD=", 4),  # a full quantum takes no padding
        ("QUI==", 3),  # 3 data chars take one "="
        ("QQ==QQ", 4),  # data after padding: at that character
        ("QQ=A", 3),
        ("=", 0),
        ("Q", 0),  # a lone character encodes no byte
        ("QUJDQ", 4),
        ("  QUJDQ", 6),
    ],
)
def test_padding_rules(pe: Any, value: str, offset: int) -> None:
    assert bad_base64_at(pe, value) == offset


def test_unused_bits_in_last_character_are_ignored(pe: Any) -> None:
    # "CgA" and "CgB" differ only in bits that encode no byte; both are b"\x0a\x00".
    assert pe.decode_peer_header("CgA=") == pe.decode_peer_header("CgB=")


def test_oversize_checked_on_length_before_characters(pe: Any) -> None:
    value = pe.encode_peer_header(REVIEWS_V2)
    size = len(base64.b64decode(value))
    assert pe.decode_peer_header(value, max_size=size) == REVIEWS_V2
    for broken in (value, "*" + value[1:]):
        with pytest.raises(PeerExchangeError) as info:
            pe.decode_peer_header(broken, max_size=size - 1)
        assert (info.value.reason, info.value.offset) == ("oversize", 0)


def test_struct_errors_count_decoded_bytes(pe: Any) -> None:
    # entry tag, then a length (5) larger than the 1 byte left: the length varint is at 1.
    value = base64.b64encode(b"\x0a\x05\x0a").decode()
    with pytest.raises(PeerExchangeError) as info:
        pe.decode_peer_header("   " + value)
    assert (info.value.reason, info.value.offset) == ("truncated", 1)


@pytest.mark.parametrize("value", [123, None, memoryview(b"Cg8K"), ["Cg8K"]])
def test_header_value_type(pe: Any, value: Any) -> None:
    with pytest.raises(TypeError):
        pe.decode_peer_header(value)


# --------------------------------------------------------------------------- encoding rules


def nested(depth: int, use_list: bool = False) -> dict[str, object]:
    """A mapping whose deepest container is ``depth`` levels down (itself = 1)."""
    inner: object = {}
    for level in range(depth - 1):
        # Alternate lists and mappings, keeping the outermost a mapping.
        wrap_in_list = use_list and (depth - 2 - level) % 2 == 1
        inner = [inner] if wrap_in_list else {"k": inner}
    assert isinstance(inner, dict)
    return inner


@pytest.mark.parametrize("use_list", [False, True])
def test_depth_limit(pe: Any, use_list: bool) -> None:
    limit = pe.MAX_DEPTH
    assert limit == 64
    ok = pe.encode_peer_header(nested(limit, use_list))
    assert pe.decode_peer_header(ok) == nested(limit, use_list)
    with pytest.raises(PeerMetadataTypeError):
        pe.encode_peer_header(nested(limit + 1, use_list))
    # In a prefix the node Struct sits inside the exchange Struct: one level less.
    frame = pe.encode_peer_prefix(nested(limit - 1, use_list))
    assert pe.decode_peer_prefix(frame).metadata == nested(limit - 1, use_list)
    with pytest.raises(PeerMetadataTypeError):
        pe.encode_peer_prefix(nested(limit, use_list))


def test_self_reference_is_an_error_not_a_crash(pe: Any) -> None:
    loop: dict[str, object] = {}
    loop["me"] = loop
    with pytest.raises(PeerMetadataTypeError):
        pe.encode_peer_header(loop)
    items: list[object] = []
    items.append(items)
    with pytest.raises(PeerMetadataTypeError):
        pe.encode_peer_prefix({"l": items})


@pytest.mark.parametrize(
    "metadata",
    [
        {1: "x"},
        {"a": {None: 1}},
        {"a": b"bytes"},
        {"a": {1, 2}},
        {"a": object()},
        {"a": [1, b"x"]},
        {"\ud800": "lone surrogate key"},
        {"k": "lone \udfff surrogate"},
        {"big": 10**400},
        ["not", "a", "mapping"],
        "text",
    ],
    ids=repr,
)
def test_unencodable_metadata(pe: Any, metadata: Any) -> None:
    for encode in (pe.encode_peer_header, pe.encode_peer_prefix):
        with pytest.raises(PeerMetadataTypeError) as info:
            encode(metadata)
        assert isinstance(info.value, TypeError)


def test_metadata_id_must_be_str(pe: Any) -> None:
    with pytest.raises(PeerMetadataTypeError):
        pe.encode_peer_prefix({}, 42)
    assert pe.encode_peer_prefix({}, "") == pe.encode_peer_prefix({}, None)
    assert pe.decode_peer_prefix(pe.encode_peer_prefix({}, "id-1")).metadata_id == "id-1"


class Labels(Mapping[str, object]):
    """A mapping that is not a dict: encoded as a Struct like any Mapping."""

    def __init__(self, data: dict[str, object]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> object:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class MyFloat(float):
    pass


class MyStr(str):
    pass


def test_value_mapping(pe: Any) -> None:
    tree = {
        "none": None,
        "t": True,
        "f": False,
        "int": 7,
        "big": 2**53 + 1,
        "neg0": -0.0,
        "nan": math.nan,
        "inf": -math.inf,
        "sub": MyFloat(1.5),
        "s": MyStr("text"),
        "tuple": (1, "a", None),
        "proxy": MappingProxyType({"app": "reviews"}),
        "labels": Labels({"version": "v2"}),
    }
    out = pe.decode_peer_header(pe.encode_peer_header(tree))
    assert out["none"] is None and out["t"] is True and out["f"] is False
    assert type(out["int"]) is float and out["int"] == 7.0
    assert out["big"] == float(2**53 + 1) == 2.0**53  # rounded to the nearest double
    assert math.copysign(1.0, out["neg0"]) == -1.0
    assert math.isnan(out["nan"]) and out["inf"] == -math.inf
    assert type(out["sub"]) is float and out["sub"] == 1.5
    assert type(out["s"]) is str and out["s"] == "text"
    assert out["tuple"] == [1.0, "a", None]
    assert out["proxy"] == {"app": "reviews"} and type(out["proxy"]) is dict
    assert out["labels"] == {"version": "v2"}
    # A subclass encodes exactly like its base type.
    assert pe.encode_peer_header({"s": MyStr("x"), "f": MyFloat(2.0)}) == pe.encode_peer_header(
        {"s": "x", "f": 2.0}
    )
