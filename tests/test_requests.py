"""The request table (the engine's per-request fast path) on both backends: what it keys,
what it refuses, its bounds, and that the two implementations agree call for call."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from conftest import Backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HOST = "reviews:9080"


def setup(
    backend: Backend, max_entries: int = 4096, store: Any = None
) -> tuple[Any, Any, list[tuple[int, str, str]]]:
    store = backend.store.Store() if store is None else store
    req = store.counter("r_total", "", ("code",))
    dur = store.histogram("d", "", ("code",), buckets=(10.0, 100.0))
    size = store.histogram("s", "", ("code",), buckets=(100.0, 1000.0))
    block = [
        (store.series(req, ("200",)), "counter", "one"),
        (store.series(dur, ("200",)), "histogram", "duration"),
        (store.series(size, ("200",)), "histogram", "request_bytes"),
    ]
    return store, backend.requests.RequestTable(store, max_entries), block


def test_a_kept_key_records_its_whole_block(backend: Backend) -> None:
    store, table, block = setup(backend)
    assert not table.record(200, None, None, "http", HOST, 12.9, 420, 3100)
    assert table.put(200, None, None, "http", HOST, block)
    assert len(table) == 1
    assert table.record(200, None, None, "http", HOST, 12.9, 420, 3100)
    assert table.record(200, None, None, "http", HOST, None, 50, 0)  # no duration: not observed
    assert table.hits == 2
    assert store.value(block[0][0]) == 2
    assert store.histogram_value(block[1][0]) == ((0, 1, 0), 12.0)  # whole milliseconds
    assert store.histogram_value(block[2][0]) == ((1, 1, 0), 470.0)  # 50 <= 100, 420 <= 1000


@pytest.mark.parametrize(
    "other",
    [
        (201, None, None, "http", HOST),
        (200, 0, None, "http", HOST),
        (200, None, "UF", "http", HOST),
        (200, None, 0x20, "http", HOST),
        (200, None, 0, "http", HOST),  # bits 0 is keyed apart from no flags
        (200, None, None, "grpc", HOST),
        (200, None, None, "http", None),
        (200, None, None, "http", ""),
        (200, None, None, "http", "reviews:908"),
    ],
)
def test_every_key_field_counts(backend: Backend, other: tuple[Any, ...]) -> None:
    _, table, block = setup(backend)
    table.put(200, None, None, "http", HOST, block)
    assert not table.record(*other, 1.0, 0, 0)
    assert table.record(200, None, None, "http", "".join(["reviews", ":9080"]), 1.0, 0, 0)


@pytest.mark.parametrize(
    "args",
    [
        (True, None, None, "http", HOST, 1.0, 0, 0),  # bool is not an int code
        ("200", None, None, "http", HOST, 1.0, 0, 0),
        (200, None, ["UF"], "http", HOST, 1.0, 0, 0),  # a flags list: the general path's
        (200, None, None, b"http", HOST, 1.0, 0, 0),
        (200, None, None, "http", HOST, math.nan, 0, 0),
        (200, None, None, "http", HOST, math.inf, 0, 0),
        (200, None, None, "http", HOST, "12", 0, 0),
        (200, None, None, "http", HOST, 1.0, None, 0),
        (200, None, None, "http", HOST, 1.0, 0, 2**1024),
        (2**63, None, None, "http", HOST, 1.0, 0, 0),
        (200, None, None, "http", "\ud800", 1.0, 0, 0),  # cannot be UTF-8
    ],
)
def test_what_cannot_be_keyed_goes_the_general_way(backend: Backend, args: tuple[Any, ...]) -> None:
    store, table, block = setup(backend)
    table.put(200, None, None, "http", HOST, block)
    assert not table.record(*args)
    if args[:5] != (200, None, None, "http", HOST):  # a bad key cannot be kept either
        assert not table.put(*args[:5], block)
    assert table.hits == 0 and store.value(block[0][0]) == 0


def test_an_unresolved_series_that_would_record_is_a_miss(backend: Backend) -> None:
    store, table, block = setup(backend)
    lazy = [block[0], (-1, "histogram", "duration")]
    table.put(200, None, None, "http", HOST, lazy)
    assert table.record(200, None, None, "http", HOST, None, 0, 0)  # duration absent: fine
    assert not table.record(200, None, None, "http", HOST, 5.0, 0, 0)  # needs the series
    assert store.value(block[0][0]) == 1  # the miss recorded nothing at all
    table.put(200, None, None, "http", HOST, [block[0], block[1]])  # replaced once resolved
    assert table.record(200, None, None, "http", HOST, 5.0, 0, 0)
    assert len(table) == 1


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("bad", ["another kind", "another store"])
def test_a_block_with_a_wrong_id_records_nothing(
    backend: Backend, bad: str, shared: bool, tmp_path: Path
) -> None:
    """Whole or not at all: an id of another kind or one this store does not hold makes
    the record a miss before anything is recorded, on both backends and in a shared store
    (the compiled table recorded the entries before it, then said no: the general path
    would count them again)."""
    kept = backend.store.Store.shared(str(tmp_path / "s.store")) if shared else None
    store, table, block = setup(backend, store=kept)
    wrong = block[0][0] if bad == "another kind" else 10**6
    table.put(200, None, None, "http", HOST, [block[0], (wrong, "histogram", "duration")])
    assert not table.record(200, None, None, "http", HOST, 5.0, 0, 0)
    assert store.value(block[0][0]) == 0 and table.hits == 0
    assert table.record(200, None, None, "http", HOST, None, 0, 0)  # no duration: not needed
    assert store.value(block[0][0]) == 1


def test_a_grpc_calls_message_counts_need_their_entries(backend: Backend) -> None:
    store, table, block = setup(backend)
    msgs = store.counter("m_total", "", ("dir",))
    sent, got = store.series(msgs, ("sent",)), store.series(msgs, ("got",))
    table.put(200, 0, None, "grpc", HOST, block)  # a request's block alone
    assert table.record(200, 0, None, "grpc", HOST, 1.0, 10, 10)  # no messages: fine
    assert not table.record(200, 0, None, "grpc", HOST, 1.0, 10, 10, 1, 0)  # would drop one
    assert store.value(block[0][0]) == 1  # the miss recorded nothing at all
    messages = [(sent, "counter", "request_messages"), (got, "counter", "response_messages")]
    table.put(200, 0, None, "grpc", HOST, block + messages)
    assert table.record(200, 0, None, "grpc", HOST, 1.0, 10, 10, 3, 0)
    assert table.record(200, 0, None, "grpc", HOST, 1.0, 10, 10, 0, 2)
    assert (store.value(sent), store.value(got), store.value(block[0][0])) == (3, 2, 3)
    assert not table.record(200, 0, None, "grpc", HOST, 1.0, 10, 10, 1.5, 0)  # not a count


def test_bounds(backend: Backend) -> None:
    _, table, block = setup(backend, max_entries=2)
    assert table.put(1, None, None, "http", HOST, block)
    assert table.put(2, None, None, "http", HOST, block)
    assert not table.put(3, None, None, "http", HOST, block)  # full: the general path
    assert table.put(2, None, None, "http", HOST, block)  # a known key still updates
    _, table, block = setup(backend)
    assert table.put(200, None, None, "http", "h" * 1024, block)
    assert not table.put(200, None, None, "http", "h" * 1025, block)
    assert not table.put(200, None, "U" * 1025, "http", HOST, block)
    with pytest.raises(ValueError, match="at most 8"):
        table.put(200, None, None, "http", HOST, block * 3)
    with pytest.raises(MemoryError):
        backend.requests.RequestTable(backend.store.Store(), 0)


# -- differential: the two implementations agree call for call ---------------------------

codes = st.sampled_from([200, 201, 404, 503, -1, 2**40])
grpcs = st.sampled_from([None, 0, 14, -7])
flags = st.sampled_from([None, 0, 0x20, 0x40, "UF", "UF,UH", "", "é"])
protocols = st.sampled_from(["http", "grpc", "ünicode"])
hosts = st.sampled_from([None, "", HOST, "ratings:9080", "ü.example"])
keys = st.tuples(codes, grpcs, flags, protocols, hosts)
numbers = st.one_of(
    st.none(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True)
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), keys, st.lists(st.sampled_from(range(8)), max_size=8)),
        st.tuples(st.just("record"), keys, st.tuples(numbers, numbers, numbers)),
        st.tuples(st.just("record"), keys, st.tuples(numbers, numbers, numbers, numbers, numbers)),
    ),
    max_size=60,
)


def play(backend: Backend, program: list[Any]) -> tuple[list[Any], bytes, int, int]:
    store = backend.store.Store()
    c = store.counter("c_total", "", ("k",))
    h = store.histogram("h", "", ("k",), buckets=(0.0, 10.0))
    g = store.gauge("g", "", ("k",))
    entries = [
        (store.series(c, ("a",)), "counter", "one"),
        (store.series(h, ("a",)), "histogram", "duration"),
        (store.series(g, ("a",)), "gauge", "response_bytes"),
        (-1, "histogram", "request_bytes"),
        (store.series(c, ("m",)), "counter", "request_messages"),
        (-1, "counter", "response_messages"),
        (store.series(c, ("b",)), "histogram", "duration"),  # a series of another kind
        (10**6, "counter", "one"),  # an id the store does not hold
    ]
    table = backend.requests.RequestTable(store, 8)
    out: list[Any] = []
    for op, key, arg in program:
        if op == "put":
            out.append(table.put(*key, [entries[i] for i in arg]))
        else:
            try:
                out.append(table.record(*key, *arg))
            except Exception as exc:  # noqa: BLE001 - compared across backends
                out.append(type(exc).__name__)
    return out, bytes(store.render()), table.hits, len(table)


@pytest.mark.c_extension
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_backends_agree(c_backend: Backend, py_backend: Backend, program: list[Any]) -> None:
    assert play(c_backend, program) == play(py_backend, program)
