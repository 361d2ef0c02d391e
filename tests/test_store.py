"""The series store contract (docs/store.md), point by point, on both backends."""

from __future__ import annotations

import array
import math
import os
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest
from conftest import Backend

from meshstats.errors import (
    ArrayTypeError,
    BatchShapeError,
    DuplicateMetricError,
    InvalidLabelsError,
    InvalidMetricError,
    InvalidSampleError,
    MeshstatsError,
    UnknownSeriesError,
)

# Envoy's defaults, written out here from Envoy's histogram_impl.cc rather than imported.
ENVOY_BOUNDS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip
OVERFLOW = "__overflow__"


def make(backend: Backend, **kwargs: Any) -> Any:
    return backend.store.Store(**kwargs)


# -- ids and interning ---------------------------------------------------------------------


def test_default_buckets_are_envoys(backend: Backend) -> None:
    assert backend.store.DEFAULT_BUCKETS == tuple(float(b) for b in ENVOY_BOUNDS)
    assert all(type(b) is float for b in backend.store.DEFAULT_BUCKETS)


def test_metric_ids_count_up_in_registration_order(backend: Backend) -> None:
    store = make(backend)
    assert store.counter("z_total") == 0
    assert store.gauge("a") == 1
    assert store.histogram("m") == 2


def test_series_ids_are_global_and_in_creation_order(backend: Backend) -> None:
    store = make(backend)
    c = store.counter("c_total", "", ("k",))
    g = store.gauge("g", "", ("k",))
    assert store.series(c, ("a",)) == 0
    assert store.series(g, ("a",)) == 1
    assert store.series(c, ("b",)) == 2
    assert store.series(c, ("a",)) == 0
    assert store.series(c, ["b"]) == 2  # a list names the same label set as a tuple
    assert store.metric_of(1) == g
    assert store.labels(2) == ("b",)
    assert store.series_count(c) == 2
    assert store.series_count(g) == 1


def test_interning_is_by_value_not_identity(backend: Backend) -> None:
    store = make(backend)
    m = store.counter("c_total", "", ("a", "b"))
    first = store.series(m, ("x", "y" * 3))
    again = store.series(m, ("".join(["x"]), "yyy"))
    assert first == again
    assert store.series(m, ("y", "x")) != first  # order of values matters


def test_label_values_may_be_any_unicode(backend: Backend) -> None:
    store = make(backend)
    m = store.gauge("g", "", ("v",))
    values = ["", 'q"uote', "back\\slash", "new\nline", "日本語 ✓", "\x00nul", "tab\t\r"]
    ids = [store.series(m, (v,)) for v in values]
    assert len(set(ids)) == len(values)
    assert [store.labels(s) for s in ids] == [(v,) for v in values]


def test_str_subclass_values_come_back_as_str(backend: Backend) -> None:
    class Tag(str):
        pass

    store = make(backend)
    s = store.series(store.gauge("g", "", ("v",)), (Tag("x"),))
    assert store.labels(s) == ("x",)
    assert type(store.labels(s)[0]) is str


# -- registration validation -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "é", "a.b", "a\n"])
def test_bad_metric_names(backend: Backend, name: str) -> None:
    store = make(backend)
    for register in (store.counter, store.gauge, store.histogram):
        with pytest.raises(InvalidMetricError, match="name"):
            register(name)


@pytest.mark.parametrize("name", ["a", "_", ":x", "A:b_9", "istio_requests_total"])
def test_good_metric_names(backend: Backend, name: str) -> None:
    store = make(backend)
    assert store.gauge(name) == 0


def test_non_str_name_and_help(backend: Backend) -> None:
    store = make(backend)
    with pytest.raises(InvalidMetricError, match="name"):
        store.counter(b"c_total")
    with pytest.raises(InvalidMetricError, match="help"):
        store.counter("c_total", 5)
    with pytest.raises(InvalidMetricError, match="help"):
        store.counter("c_total", "bad \ud800 surrogate")


@pytest.mark.parametrize(
    ("labels", "where"),
    [
        (("ok", "1bad"), r"labels\[1\]"),
        (("a-b",), r"labels\[0\]"),
        (("",), r"labels\[0\]"),
        (("__reserved",), r"labels\[0\]"),
        (("a", "b", "a"), r"labels\[2\]"),
        (("a", 3), r"labels\[1\]"),
    ],
)
def test_bad_label_names(backend: Backend, labels: tuple[Any, ...], where: str) -> None:
    store = make(backend)
    with pytest.raises(InvalidMetricError, match=where):
        store.counter("c_total", "", labels)


def test_labels_must_be_a_sequence_not_a_str(backend: Backend) -> None:
    store = make(backend)
    with pytest.raises(InvalidMetricError, match="labels"):
        store.counter("c_total", "", "reporter")


def test_le_is_reserved_for_histograms_only(backend: Backend) -> None:
    store = make(backend)
    with pytest.raises(InvalidMetricError, match="le"):
        store.histogram("h", "", ("code", "le"))
    assert store.counter("c_total", "", ("le",)) == 0
    assert store.histogram("h2", "", ("_le", "lE")) == 1


@pytest.mark.parametrize(
    "buckets",
    [(), (1, 1), (2, 1), (1, math.inf), (math.nan,), (-math.inf, 0), (1, 2, 2), ("1",), "12"],
)
def test_bad_buckets(backend: Backend, buckets: Any) -> None:
    store = make(backend)
    with pytest.raises(InvalidMetricError, match="buckets"):
        store.histogram("h", "", (), buckets=buckets)


def test_buckets_accept_ints_and_negative_bounds(backend: Backend) -> None:
    store = make(backend)
    h = store.histogram("h", "", (), buckets=[-2, 0, 3])
    s = store.series(h, ())
    assert store.histogram_value(s) == ((0, 0, 0, 0), 0.0)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", None])
def test_max_series_must_be_a_positive_int(backend: Backend, bad: Any) -> None:
    store = make(backend)
    if bad is not None:  # None means "the store's default" for a metric
        with pytest.raises(InvalidMetricError, match="max_series"):
            store.counter("c_total", max_series=bad)
        with pytest.raises(InvalidMetricError, match="default_max_series"):
            backend.store.Store(default_max_series=bad)
    else:
        with pytest.raises(InvalidMetricError, match="default_max_series"):
            backend.store.Store(default_max_series=bad)
        assert store.counter("c_total", max_series=bad) == 0


def test_duplicate_names(backend: Backend) -> None:
    store = make(backend)
    store.counter("istio_requests_total")
    with pytest.raises(DuplicateMetricError) as info:
        store.gauge("istio_requests_total")
    assert info.value.name == "istio_requests_total"
    assert isinstance(info.value, ValueError) and isinstance(info.value, MeshstatsError)
    # Same OpenMetrics family "istio_requests": the OM exposition would hold it twice.
    with pytest.raises(DuplicateMetricError) as info:
        store.gauge("istio_requests")
    assert info.value.name == "istio_requests"
    with pytest.raises(DuplicateMetricError):
        store.counter("istio_requests")
    # A failed registration does not use up a metric id.
    assert store.gauge("other") == 1


def test_overflow_family_name_is_reserved(backend: Backend) -> None:
    store = make(backend)
    with pytest.raises(DuplicateMetricError):
        store.counter("meshstats_series_overflow_total")
    with pytest.raises(DuplicateMetricError):
        store.gauge("meshstats_series_overflow")


def test_counter_named_only_total_is_invalid(backend: Backend) -> None:
    store = make(backend)
    with pytest.raises(InvalidMetricError, match="_total"):
        store.counter("_total")
    assert store.gauge("_total") == 0  # only a counter loses the suffix


# -- series validation -----------------------------------------------------------------------


def test_series_label_validation(backend: Backend) -> None:
    store = make(backend)
    m = store.counter("c_total", "", ("a", "b"))
    with pytest.raises(InvalidLabelsError, match="values"):
        store.series(m, ("x",))
    with pytest.raises(InvalidLabelsError, match="values"):
        store.series(m, ("x", "y", "z"))
    with pytest.raises(InvalidLabelsError, match=r"values\[1\]"):
        store.series(m, ("x", 200))
    with pytest.raises(InvalidLabelsError, match=r"values\[0\]"):
        store.series(m, (None, "y"))
    with pytest.raises(InvalidLabelsError, match="values"):
        store.series(m, "xy")  # not split into characters
    with pytest.raises(InvalidLabelsError, match=r"values\[0\]"):
        store.series(m, ("\udc80", "y"))  # a lone surrogate has no UTF-8 form
    single = store.counter("d_total", "", ("a",))
    with pytest.raises(InvalidLabelsError, match="values"):
        store.series(single, "x")
    assert store.series_count(m) == 0


def test_unknown_metric(backend: Backend) -> None:
    store = make(backend)
    store.counter("c_total")
    for bad in (1, -1, 10**30, "0", 0.0, None):
        with pytest.raises(UnknownSeriesError):
            store.series(bad, ())
        with pytest.raises(UnknownSeriesError):
            store.series_count(bad)
        with pytest.raises(UnknownSeriesError):
            store.overflow_count(bad)


def test_unknown_series_everywhere(backend: Backend) -> None:
    store = make(backend)
    s = store.series(store.counter("c_total"), ())
    for bad in (s + 1, -1, 2**64, "0", 0.5, None):
        for call in (
            lambda: store.inc(bad),
            lambda: store.set(bad, 1.0),
            lambda: store.observe(bad, 1.0),
            lambda: store.value(bad),
            lambda: store.histogram_value(bad),
            lambda: store.labels(bad),
            lambda: store.metric_of(bad),
        ):
            with pytest.raises(UnknownSeriesError) as info:
                call()  # type: ignore[no-untyped-call]
            assert isinstance(info.value, IndexError)
    with pytest.raises(UnknownSeriesError) as info:
        store.inc(7)
    assert info.value.series_id == 7


def test_ids_with_index_are_accepted(backend: Backend) -> None:
    store = make(backend)
    m = store.counter("c_total", "", ("k",))
    zero = store.series(np.int64(m), ("a",))
    one = store.series(m, ("b",))
    store.inc(np.uint32(zero), np.int64(3))
    store.inc(True)  # bool has __index__: True is series 1
    assert store.value(zero) == 3
    assert store.value(one) == 1


# -- kinds -----------------------------------------------------------------------------------


@pytest.fixture
def kinds(backend: Backend) -> tuple[Any, int, int, int]:
    store = make(backend)
    c = store.series(store.counter("c_total"), ())
    g = store.series(store.gauge("g"), ())
    h = store.series(store.histogram("h", buckets=(1,)), ())
    return store, c, g, h


def test_recording_on_the_wrong_kind(kinds: tuple[Any, int, int, int]) -> None:
    store, c, g, h = kinds
    for call in (
        lambda: store.inc(g),
        lambda: store.inc(h),
        lambda: store.set(c, 1.0),
        lambda: store.set(h, 1.0),
        lambda: store.observe(c, 1.0),
        lambda: store.observe(g, 1.0),
        lambda: store.value(h),
        lambda: store.histogram_value(c),
        lambda: store.histogram_value(g),
    ):
        with pytest.raises(InvalidSampleError):
            call()  # type: ignore[no-untyped-call]
    assert store.value(c) == 0
    assert store.value(g) == 0.0
    assert store.histogram_value(h) == ((0, 0), 0.0)


def test_value_types(kinds: tuple[Any, int, int, int]) -> None:
    store, c, g, _ = kinds
    store.inc(c, 2)
    store.set(g, 3)  # an int is a real number; the gauge holds it as a float
    assert type(store.value(c)) is int and store.value(c) == 2
    assert type(store.value(g)) is float and store.value(g) == 3.0


# -- counters ---------------------------------------------------------------------------------


def test_inc_amounts(kinds: tuple[Any, int, int, int]) -> None:
    store, c, _, _ = kinds
    store.inc(c)
    store.inc(c, 0)
    store.inc(c, 41)
    assert store.value(c) == 42
    for bad in (-1, 2**64, 1.0, "1", None, 2.5):
        with pytest.raises(InvalidSampleError, match="n"):
            store.inc(c, bad)
    assert store.value(c) == 42


def test_counter_is_uint64_and_wraps(kinds: tuple[Any, int, int, int]) -> None:
    store, c, _, _ = kinds
    store.inc(c, 2**64 - 1)
    assert store.value(c) == 2**64 - 1
    store.inc(c, 3)
    assert store.value(c) == 2


# -- gauges -----------------------------------------------------------------------------------


@pytest.mark.parametrize("v", [0.0, -1.5, 1e308, math.inf, -math.inf, 5e-324, -0.0])
def test_set_any_float(kinds: tuple[Any, int, int, int], v: float) -> None:
    store, _, g, _ = kinds
    store.set(g, v)
    assert store.value(g) == v
    assert math.copysign(1, store.value(g)) == math.copysign(1, v)


def test_set_nan_and_bad_values(kinds: tuple[Any, int, int, int]) -> None:
    store, _, g, _ = kinds
    store.set(g, math.nan)
    assert math.isnan(store.value(g))
    store.set(g, np.float32(0.5))
    assert store.value(g) == 0.5
    for bad in ("1.5", b"1", None, [1.0], 10**400):
        with pytest.raises(InvalidSampleError, match="v"):
            store.set(g, bad)
    assert store.value(g) == 0.5


# -- histograms --------------------------------------------------------------------------------


def _bucket_of(store: Any, s: int) -> int:
    """The single bucket that holds the one observation recorded in series ``s``."""
    counts, _ = store.histogram_value(s)
    assert sum(counts) == 1
    return int(counts.index(1))


@pytest.mark.parametrize("i", range(len(ENVOY_BOUNDS)))
def test_envoy_bound_placement(backend: Backend, i: int) -> None:
    store = make(backend)
    h = store.histogram("h", "", ("case",))  # DEFAULT_BUCKETS
    bound = float(ENVOY_BOUNDS[i])
    at, below, above = (store.series(h, (c,)) for c in ("at", "below", "above"))
    store.observe(at, bound)
    store.observe(below, math.nextafter(bound, -math.inf))
    store.observe(above, math.nextafter(bound, math.inf))
    # le is inclusive: the bound itself and anything just under it are in bucket i,
    # the next float up belongs to the next bucket (i + 1 == +Inf after the last bound).
    assert _bucket_of(store, at) == i
    assert _bucket_of(store, below) == i
    assert _bucket_of(store, above) == i + 1
    counts, _ = store.histogram_value(at)
    assert len(counts) == len(ENVOY_BOUNDS) + 1


@pytest.mark.parametrize(
    ("v", "bucket"),
    [
        (-math.inf, 0),
        (-1e300, 0),
        (-2.0, 0),
        (math.nextafter(-2.0, 0), 1),
        (-0.0, 1),  # -0.0 == 0.0 <= 0
        (0.0, 1),
        (5e-324, 2),
        (0.005, 2),
        (math.nextafter(0.005, 1), 3),
        (1e300, 3),
        (math.inf, 3),
    ],
)
def test_custom_bound_placement(backend: Backend, v: float, bucket: int) -> None:
    store = make(backend)
    s = store.series(store.histogram("h", buckets=(-2, 0, 0.005)), ())
    store.observe(s, v)
    assert _bucket_of(store, s) == bucket


def test_sum_and_count_are_exact(backend: Backend) -> None:
    store = make(backend)
    s = store.series(store.histogram("h", buckets=(1,)), ())
    values = [0.1, 0.2, 0.3, 1e16, 1.0, -1e16, 7]
    expected = 0.0
    for v in values:
        store.observe(s, v)
        expected += v  # the same float additions in the same order
    counts, total = store.histogram_value(s)
    assert total == expected
    assert sum(counts) == len(values)
    assert counts == (5, 2)  # 1e16 and 7 are above the bound, the rest at or below it


def test_nan_observation_is_rejected_and_infinities_kept(backend: Backend) -> None:
    store = make(backend)
    s = store.series(store.histogram("h", buckets=(1,)), ())
    with pytest.raises(InvalidSampleError, match="v"):
        store.observe(s, math.nan)
    with pytest.raises(InvalidSampleError, match="v"):
        store.observe(s, "1")
    assert store.histogram_value(s) == ((0, 0), 0.0)
    store.observe(s, math.inf)
    assert store.histogram_value(s) == ((0, 1), math.inf)
    store.observe(s, -math.inf)
    counts, total = store.histogram_value(s)
    assert counts == (1, 1) and math.isnan(total)  # inf + -inf, as a float sum must be


# -- cardinality guard --------------------------------------------------------------------------


def test_overflow_series(backend: Backend) -> None:
    store = make(backend)
    other = store.counter("other_total", "", ("k",))
    m = store.counter("c_total", "", ("a", "b"), max_series=2)
    first = store.series(m, ("1", "x"))
    store.series(other, ("z",))
    second = store.series(m, ("2", "x"))
    assert store.overflow_count(m) == 0
    folded = store.series(m, ("3", "x"))
    assert folded == 3  # the next global id, created on first need
    assert store.labels(folded) == (OVERFLOW, OVERFLOW)
    assert store.metric_of(folded) == m
    assert store.overflow_count(m) == 1
    assert store.series(m, ("4", "x")) == folded
    assert store.series(m, ("3", "x")) == folded  # folded sets are not remembered
    assert store.overflow_count(m) == 3
    assert store.series_count(m) == 2
    assert store.series(m, ("1", "x")) == first  # existing series keep working
    assert store.series(m, ("2", "x")) == second
    store.inc(folded, 5)
    assert store.value(folded) == 5
    assert store.overflow_count(other) == 0


def test_overflow_label_set_is_reserved(backend: Backend) -> None:
    store = make(backend)
    m = store.gauge("g", "", ("a",), max_series=1)
    reserved = store.series(m, (OVERFLOW,))
    assert store.series_count(m) == 0 and store.overflow_count(m) == 0
    real = store.series(m, ("x",))
    assert store.series_count(m) == 1
    assert store.series(m, ("y",)) == reserved
    assert store.overflow_count(m) == 1
    assert real != reserved


def test_invalid_labels_on_a_full_metric_are_not_counted(backend: Backend) -> None:
    store = make(backend)
    m = store.counter("c_total", "", ("a",), max_series=1)
    store.series(m, ("x",))
    with pytest.raises(InvalidLabelsError):
        store.series(m, (1,))
    assert store.overflow_count(m) == 0


def test_default_max_series_applies(backend: Backend) -> None:
    store = make(backend, default_max_series=3)
    m = store.counter("c_total", "", ("a",))
    ids = [store.series(m, (str(i),)) for i in range(5)]
    assert ids[:3] == [0, 1, 2]
    assert ids[3] == ids[4] == 3
    assert store.overflow_count(m) == 2


def test_metric_without_labels_never_overflows(backend: Backend) -> None:
    store = make(backend)
    m = store.gauge("g", max_series=1)
    assert {store.series(m, ()) for _ in range(3)} == {0}
    assert store.overflow_count(m) == 0


def test_overflow_family_in_snapshot(backend: Backend) -> None:
    store = make(backend)
    a = store.counter("zz_total", "", ("k",), max_series=1)
    b = store.gauge("aa", "", ("k",), max_series=1)
    for metric in (b, a, a):
        store.series(metric, ("1",))
        store.series(metric, ("2",))
    names = [entry[0] for entry in store.snapshot()]
    assert names == sorted(names)
    entry = next(e for e in store.snapshot() if e[0] == "meshstats_series_overflow_total")
    assert entry[1:5] == (
        "counter",
        "Label sets folded into the overflow series because the metric reached max_series.",
        ("metric",),
        (),
    )
    # One series per affected metric, in metric-id order (zz registered first).
    assert entry[5] == [(("zz_total",), 2), (("aa",), 1)]


# -- snapshot ----------------------------------------------------------------------------------


def test_snapshot_shape(backend: Backend) -> None:
    store = make(backend)
    c = store.counter("c_total", "C.", ("k",))
    h = store.histogram("b_hist", "H.", ("k",), buckets=(1, 2))
    store.gauge("a_empty", "E.")
    store.inc(store.series(c, ("y",)), 3)
    store.series(c, ("x",))
    store.observe(store.series(h, ("q",)), 1.5)
    assert store.snapshot() == [
        ("a_empty", "gauge", "E.", (), (), []),
        ("b_hist", "histogram", "H.", ("k",), (1.0, 2.0), [(("q",), ((0, 1, 0), 1.5))]),
        ("c_total", "counter", "C.", ("k",), (), [(("y",), 3), (("x",), 0)]),
    ]


# -- batches ----------------------------------------------------------------------------------


@pytest.fixture
def batch(backend: Backend) -> tuple[Any, list[int], int, int]:
    store = make(backend)
    c = store.counter("c_total", "", ("k",))
    counters = [store.series(c, (str(i),)) for i in range(3)]
    g = store.series(store.gauge("g"), ())
    h = store.series(store.histogram("h", buckets=(1, 10)), ())
    return store, counters, g, h


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint32", "uint64"])
def test_inc_many_dtypes(batch: tuple[Any, list[int], int, int], dtype: str) -> None:
    store, (a, b, c), _, _ = batch
    store.inc_many(np.array([a, b, a, c], dtype=dtype), np.array([1, 2, 3, 0], dtype=dtype))
    assert [store.value(s) for s in (a, b, c)] == [4, 2, 0]


def test_inc_many_amounts_none_and_other_buffers(batch: tuple[Any, list[int], int, int]) -> None:
    store, (a, b, _), _, _ = batch
    store.inc_many(np.array([a, a, b], dtype=np.int64))
    store.inc_many(array.array("q", [b]), array.array("q", [10]))
    store.inc_many(memoryview(array.array("i", [a])), memoryview(array.array("I", [5])))
    store.inc_many(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert store.value(a) == 7 and store.value(b) == 11


def test_inc_many_noncontiguous_and_readonly(batch: tuple[Any, list[int], int, int]) -> None:
    store, (a, b, _), _, _ = batch
    ids = np.array([a, 99, b, 99, a], dtype=np.int64)[::2]
    amounts = np.array([1, 2, 3], dtype=np.uint64)
    amounts.flags.writeable = False
    store.inc_many(ids, amounts)
    assert store.value(a) == 4 and store.value(b) == 2


def test_inc_many_uint64_amounts_wrap(batch: tuple[Any, list[int], int, int]) -> None:
    store, (a, _, _), _, _ = batch
    store.inc_many(np.array([a, a], dtype=np.uint32), np.array([2**64 - 1, 2], dtype=np.uint64))
    assert store.value(a) == 1


@pytest.mark.parametrize(
    "ids",
    [
        [0, 1],
        (0, 1),
        np.array([0, 1], dtype=np.float64),
        np.array([0, 1], dtype=np.int16),
        np.array([0, 1], dtype=np.int8),
        np.array([True, False]),
        np.array([[0, 1]], dtype=np.int64),
        np.array(0, dtype=np.int64),
        np.array([0, 1], dtype=">i8" if sys.byteorder == "little" else "<i8"),
        b"\x00\x01",
    ],
)
def test_inc_many_rejects_id_types(batch: tuple[Any, list[int], int, int], ids: Any) -> None:
    store = batch[0]
    with pytest.raises(ArrayTypeError, match="ids") as info:
        store.inc_many(ids)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    "amounts",
    [[1, 1], np.array([1, 1], dtype=np.float64), np.array([1, 1], dtype=np.int16)],
)
def test_inc_many_rejects_amount_types(
    batch: tuple[Any, list[int], int, int], amounts: Any
) -> None:
    store = batch[0]
    with pytest.raises(ArrayTypeError, match="amounts"):
        store.inc_many(np.array([0, 1], dtype=np.int64), amounts)


def test_batch_length_mismatch(batch: tuple[Any, list[int], int, int]) -> None:
    store, (a, _, _), _, h = batch
    with pytest.raises(BatchShapeError) as info:
        store.inc_many(np.array([a, a], dtype=np.int64), np.array([1], dtype=np.int64))
    assert isinstance(info.value, ValueError)
    with pytest.raises(BatchShapeError):
        store.observe_many(np.array([h], dtype=np.int64), np.array([1.0, 2.0]))
    assert store.value(a) == 0


def _values(store: Any, counters: list[int]) -> list[int]:
    return [store.value(s) for s in counters]


def test_inc_many_all_or_nothing(batch: tuple[Any, list[int], int, int]) -> None:
    store, counters, g, h = batch
    a = counters[0]
    i64 = np.int64
    cases: list[tuple[Any, Any, type[Exception], str]] = [
        ([a, a, 99, a], None, UnknownSeriesError, r"ids\[2\]"),
        ([a, -1], None, UnknownSeriesError, r"ids\[1\]"),
        ([a, a, g], None, InvalidSampleError, r"ids\[2\]"),
        ([a, h], [1, 1], InvalidSampleError, r"ids\[1\]"),
        ([a, a, a], [1, -1, 1], InvalidSampleError, r"amounts\[1\]"),
        # The smallest bad index wins, whichever argument it is in.
        ([a, a, a, 99], [1, -5, 1, 1], InvalidSampleError, r"amounts\[1\]"),
        ([a, 99, a], [1, 1, -5], UnknownSeriesError, r"ids\[1\]"),
        ([a, 99], [1, -5], UnknownSeriesError, r"ids\[1\]"),
    ]
    for ids, amounts, error, where in cases:
        ids_arr = np.array(ids, dtype=i64)
        amounts_arr = None if amounts is None else np.array(amounts, dtype=i64)
        with pytest.raises(error, match=where):
            store.inc_many(ids_arr, amounts_arr)
        assert _values(store, counters) == [0, 0, 0]
    with pytest.raises(UnknownSeriesError, match=r"ids\[1\]"):
        store.inc_many(np.array([a, 2**64 - 1], dtype=np.uint64))
    assert _values(store, counters) == [0, 0, 0]


@pytest.mark.parametrize("dtype", ["float64", "float32", "int32", "int64", "uint32", "uint64"])
def test_observe_many_value_dtypes(batch: tuple[Any, list[int], int, int], dtype: str) -> None:
    store, _, _, h = batch
    store.observe_many(np.array([h, h, h], dtype=np.int32), np.array([0, 5, 20], dtype=dtype))
    assert store.histogram_value(h) == ((1, 1, 1), 25.0)


def test_observe_many_equals_a_loop_of_observe(backend: Backend) -> None:
    store = make(backend)
    m = store.histogram("h", "", ("k",))
    one, two = store.series(m, ("1",)), store.series(m, ("2",))
    loop_store = make(backend)
    lm = loop_store.histogram("h", "", ("k",))
    lone, ltwo = loop_store.series(lm, ("1",)), loop_store.series(lm, ("2",))
    rng = np.random.default_rng(7)
    values = rng.lognormal(3, 3, 500)
    values[::7] *= -1
    which = rng.integers(0, 2, 500)
    ids = np.where(which == 0, one, two).astype(np.int64)
    store.observe_many(ids, values)
    for sid, v in zip(ids.tolist(), values.tolist()):
        loop_store.observe(lone if sid == one else ltwo, v)
    assert store.histogram_value(one) == loop_store.histogram_value(lone)
    assert store.histogram_value(two) == loop_store.histogram_value(ltwo)
    assert store.render() == loop_store.render()


def test_observe_many_adds_one_partial_sum_per_series(backend: Backend) -> None:
    """docs/store.md, "Sums in batches": per series, the batch's values are summed in index
    order from 0.0 and that partial sum is added to ``_sum`` once (not value by value)."""
    store = make(backend)
    m = store.histogram("h", "", ("k",))
    a, b = store.series(m, ("a",)), store.series(m, ("b",))
    store.observe(a, 1e16)  # doubles are 2 apart here: a lone +1.0 rounds away
    store.observe(b, -1e16)
    ids = np.array([a, b, a, b, a], dtype=np.int64)
    values = [1.0, 3.0, 1.0, -1.0, 2.0]
    store.observe_many(ids, np.array(values))
    for sid, start in ((a, 1e16), (b, -1e16)):
        partial = 0.0
        for i, v in zip(ids.tolist(), values):
            if i == sid:
                partial += v
        one_at_a_time = start
        for i, v in zip(ids.tolist(), values):
            if i == sid:
                one_at_a_time += v
        assert store.histogram_value(sid)[1] == start + partial
        if sid == a:
            assert start + partial != one_at_a_time  # the two rules differ here


def test_observe_many_float32_is_converted_exactly(batch: tuple[Any, list[int], int, int]) -> None:
    store, _, _, h = batch
    v = np.array([0.1], dtype=np.float32)
    store.observe_many(np.array([h], dtype=np.int64), v)
    assert store.histogram_value(h)[1] == float(v[0])  # 0.100000001490116..., not 0.1


def test_observe_many_all_or_nothing(batch: tuple[Any, list[int], int, int]) -> None:
    store, (a, _, _), g, h = batch
    cases: list[tuple[list[int], list[float], type[Exception], str]] = [
        ([h, h, h], [1.0, math.nan, 2.0], InvalidSampleError, r"values\[1\]"),
        ([h, 50], [1.0, 1.0], UnknownSeriesError, r"ids\[1\]"),
        ([h, h, a], [1.0, 1.0, 1.0], InvalidSampleError, r"ids\[2\]"),
        ([h, g], [1.0, 1.0], InvalidSampleError, r"ids\[1\]"),
        ([h, h, 50], [1.0, math.nan, 1.0], InvalidSampleError, r"values\[1\]"),
        ([h, 50, h], [1.0, 1.0, math.nan], UnknownSeriesError, r"ids\[1\]"),
    ]
    for ids, values, error, where in cases:
        with pytest.raises(error, match=where):
            store.observe_many(np.array(ids, dtype=np.int64), np.array(values))
        assert store.histogram_value(h) == ((0, 0, 0), 0.0)
    for bad in ([1.0], np.array([1.0], dtype=np.float16), np.array([True])):
        with pytest.raises(ArrayTypeError, match="values"):
            store.observe_many(np.array([h], dtype=np.int64), bad)


def test_observe_many_infinities(batch: tuple[Any, list[int], int, int]) -> None:
    store, _, _, h = batch
    store.observe_many(np.array([h, h], dtype=np.int64), np.array([-math.inf, -3.0]))
    assert store.histogram_value(h) == ((2, 0, 0), -math.inf)


# -- threads ----------------------------------------------------------------------------------


def test_concurrent_updates_lose_nothing(backend: Backend) -> None:
    store = make(backend)
    c = store.series(store.counter("c_total"), ())
    h = store.series(store.histogram("h", buckets=(1,)), ())
    threads_n, per_thread = 4, 5000
    ids = np.full(1000, c, dtype=np.int64)
    hids = np.full(1000, h, dtype=np.int64)
    twos = np.full(1000, 2.0)
    barrier = threading.Barrier(threads_n)

    def work() -> None:
        barrier.wait()
        for _ in range(per_thread):
            store.inc(c)
            store.observe(h, 0.5)
        store.inc_many(ids)
        store.observe_many(hids, twos)

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.value(c) == threads_n * (per_thread + 1000)
    counts, total = store.histogram_value(h)
    assert counts == (threads_n * per_thread, threads_n * 1000)
    assert total == threads_n * (per_thread * 0.5 + 2000)  # exact: halves and twos add exactly


def test_concurrent_series_creation_interns_once(backend: Backend) -> None:
    store = make(backend)
    m = store.counter("c_total", "", ("k",))
    results: list[list[int]] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        results.append([store.series(m, (str(i),)) for i in range(500)])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == results[0] for r in results)
    assert sorted(results[0]) == list(range(500))
    assert store.series_count(m) == 500


# -- memory and the backend switch ---------------------------------------------------------------


def test_memory_bytes_grows_with_series(backend: Backend) -> None:
    store = make(backend)
    empty = store.memory_bytes()
    assert isinstance(empty, int) and empty > 0
    m = store.histogram("h", "", ("k",))
    for i in range(1000):
        store.series(m, (f"value-{i}",))
    # 1000 histogram series hold at least 20 eight-byte slots each.
    assert store.memory_bytes() - empty >= 1000 * 20 * 8


def test_no_extensions_switch() -> None:
    code = (
        "import meshstats, meshstats._store as s; "
        "print(meshstats.HAS_EXTENSION, s.COMPILED, meshstats.Store.__module__)"
    )
    env = dict(os.environ, MESHSTATS_NO_EXTENSIONS="1")
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False", "meshstats._store_py"]


def test_renders_reusing_a_buffer_are_fresh_and_never_change_a_kept_one(backend: Backend) -> None:
    """The compiled store writes a render into the last one's memory once nobody holds it
    (no page faults); a render someone still holds, or has hashed, must not change."""
    store = backend.store.Store()
    m = store.counter("c_total", "", ("k",))
    ids = [store.series(m, (f"{i:0100d}",)) for i in range(12_000)]  # > 1 MB renders
    first = store.render()
    kept = bytes(first)  # a copy, to compare with
    store.inc(ids[5], 7)
    second = store.render()
    assert first == kept  # held: untouched
    assert second != first and f'c_total{{k="{5:0100d}"}} 7\n'.encode() in second
    hashed = hash(second)
    del first, second  # now only the store holds the last render: the next reuses it
    store.inc(ids[6], 9)
    third = store.render()
    assert f'c_total{{k="{6:0100d}"}} 9\n'.encode() in third
    assert hash(third) == hash(bytes(third)) != hashed  # the cached hash was forgotten
    store.inc(ids[7], 1)
    fourth = store.render()
    assert fourth == third.replace(
        f'c_total{{k="{7:0100d}"}} 0\n'.encode(), f'c_total{{k="{7:0100d}"}} 1\n'.encode()
    )
