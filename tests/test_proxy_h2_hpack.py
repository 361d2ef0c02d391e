"""The sidecar's HPACK decoder against hpack's: the same blocks, the same fields (values, and
whether HPACK may index them on the way out), the same failures, the same table afterwards.

Two decoders are fed the same header blocks in turn, as the two ends of a connection
would: blocks from hpack's encoder (literals and indexes, never-indexed fields, Huffman
or not, table size changes), and the same blocks cut short or with bytes flipped. After
each block both must have produced equal fields (value, and indexable or not) or both
failed, and both tables must hold the same entries.

500 examples per test in CI; ``MESHSTATS_H2_HPACK_EXAMPLES`` raises them for a long run.
"""

from __future__ import annotations

import os
from typing import Any

import hpack
import pytest
from hpack import NeverIndexedHeaderTuple
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshstats.proxy.h2_hpack import KNOWN_BLOCK_SIZE, KNOWN_BLOCKS, Decoder, Encoder

Header = tuple[bytes, bytes]
_EXAMPLES = int(os.environ.get("MESHSTATS_H2_HPACK_EXAMPLES", "500"))

_NAMES = [b":method", b":path", b":status", b"content-type", b"x-a", b"cookie", b"accept"]
names = st.one_of(st.sampled_from(_NAMES), st.binary(min_size=1, max_size=12))
values = st.one_of(st.sampled_from([b"", b"GET", b"/", b"200", b"x" * 40]), st.binary(max_size=60))


@st.composite
def fields(draw: st.DrawFn) -> Header:
    name, value = draw(names), draw(values)
    return NeverIndexedHeaderTuple(name, value) if draw(st.booleans()) else (name, value)


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """Header blocks an encoder sends in turn, some then damaged."""
    encoder = hpack.Encoder()
    blocks: list[bytes] = []
    pool = draw(st.lists(fields(), min_size=1, max_size=6))  # repeated: indexes appear
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.integers(0, 6)) == 0:
            encoder.header_table_size = draw(st.sampled_from([0, 64, 256, 4096]))
        block = draw(st.lists(st.one_of(st.sampled_from(pool), fields()), max_size=8))
        data = encoder.encode(block, huffman=draw(st.booleans()))
        damage = draw(st.integers(0, 5))
        if damage == 0 and data:
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif damage == 1 and data:
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
        blocks.append(data)
    return blocks


def _outcome(decoder: hpack.Decoder, data: bytes) -> object:
    try:
        got = decoder.decode(data, raw=True)
    except (hpack.HPACKError, IndexError, TypeError, UnicodeDecodeError) as exc:
        return ("refused", isinstance(exc, hpack.OversizedHeaderListError))
    # A plain tuple and a HeaderTuple are both indexable fields (see h2_hpack).
    return [(getattr(h, "indexable", True), h[0], h[1]) for h in got]


@pytest.mark.parametrize("limit", [1 << 16, 200])
@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=streams())
def test_decodes_as_hpack(limit: int, blocks: list[bytes]) -> None:
    theirs, ours = hpack.Decoder(), Decoder()
    theirs.max_header_list_size = ours.max_header_list_size = limit
    for data in blocks:
        expected = _outcome(theirs, data)
        assert _outcome(ours, data) == expected
        if isinstance(expected, tuple):
            return  # a connection error: the connection, and its table, are over
        assert list(ours.header_table.dynamic_entries) == list(theirs.header_table.dynamic_entries)
        assert ours.header_table_size == theirs.header_table_size


@settings(max_examples=_EXAMPLES, deadline=None)
@given(data=st.binary(max_size=40))
def test_random_bytes_as_hpack(data: bytes) -> None:
    assert _outcome(Decoder(), data) == _outcome(hpack.Decoder(), data)


def test_a_block_kept_decoded_is_forgotten_when_the_table_changes() -> None:
    encoder, ours, theirs = hpack.Encoder(), Decoder(), hpack.Decoder()

    def both(data: bytes) -> object:
        outcome = _outcome(ours, data)
        assert outcome == _outcome(theirs, data)
        return outcome

    both(encoder.encode([(b"x-a", b"1")]))  # learnt: x-a at index 62
    again = encoder.encode([(b"x-a", b"1")])
    assert again == b"\xbe"
    assert both(again) == both(again) == [(True, b"x-a", b"1")]  # (the second one kept)
    both(encoder.encode([(b"x-b", b"2")]))  # x-b at 62 now, x-a at 63
    assert both(again) == [(True, b"x-b", b"2")]
    ours.header_table_size = theirs.header_table_size = 0  # the table emptied by hand
    assert both(again) == ("refused", False)


def test_blocks_kept_decoded_are_bounded() -> None:
    decoder = Decoder()
    static = range(0x81, 0x81 + 61)
    for a in static:
        for b in static:
            decoder.decode(bytes([a, b]), raw=True)  # 3,721 different blocks of indexes
            assert len(decoder._known) <= KNOWN_BLOCKS
    long = bytes([0x82]) * (KNOWN_BLOCK_SIZE + 1)
    assert decoder.decode(long, raw=True) == [(b":method", b"GET")] * len(long)
    assert long not in decoder._known


def test_indexed_fields_are_the_tables_tuples() -> None:
    encoder, decoder = hpack.Encoder(), Decoder()
    decoder.decode(encoder.encode([(b"x-a", b"1")]), raw=True)  # learns the entry
    got = decoder.decode(encoder.encode([(b":method", b"GET"), (b"x-a", b"1")]), raw=True)
    assert got == [(b":method", b"GET"), (b"x-a", b"1")]
    assert all(type(h) is tuple for h in got)
    never = decoder.decode(encoder.encode([NeverIndexedHeaderTuple(b"x-b", b"2")]), raw=True)
    assert type(never[0]) is NeverIndexedHeaderTuple


@st.composite
def any_fields(draw: st.DrawFn) -> Any:
    """A field in any form hpack's encoder takes: a pair or a never-indexed one, a triple
    with its own sensitivity, text rather than bytes, a list (not hashable)."""
    name, value = draw(names), draw(values)
    form = draw(st.integers(0, 5))
    if form == 0:
        return (name, value, draw(st.booleans()))
    if form == 1:
        return (name.decode("latin-1"), value.decode("latin-1"))
    if form == 2:
        return [name, value]
    return draw(fields())


@st.composite
def lists(draw: st.DrawFn) -> list[tuple[int | None, list[Header], bool]]:
    """Header lists an encoder is given in turn (each after a table size change or not,
    Huffman or not), drawn from a few fields so that the table holds some of them."""
    pool = draw(st.lists(any_fields(), min_size=1, max_size=6))
    return [
        (
            draw(st.one_of(st.none(), st.sampled_from([0, 64, 256, 4096]))),
            draw(st.lists(st.one_of(st.sampled_from(pool), any_fields()), max_size=8)),
            draw(st.booleans()),
        )
        for _ in range(draw(st.integers(1, 8)))
    ]


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(turns=lists())
def test_encodes_as_hpack(turns: list[tuple[int | None, list[Header], bool]]) -> None:
    theirs, ours = hpack.Encoder(), Encoder()
    for size, block, huffman in turns:
        if size is not None:
            theirs.header_table_size = ours.header_table_size = size
        assert ours.encode(block, huffman=huffman) == theirs.encode(block, huffman=huffman)
        assert list(ours.header_table.dynamic_entries) == list(theirs.header_table.dynamic_entries)
