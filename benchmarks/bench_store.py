"""Recording: single events on a resolved series, and batches of one million.

Targets (issue 2): counter ``inc`` >= 12x prometheus-client's cached child ``inc()``;
histogram ``observe`` >= 20x its cached child ``observe()``; batch counters >= 100M events/s;
batch histograms >= 2x NumPy ``searchsorted`` + ``bincount``.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import LABEL_NAMES, label_values

BATCH = 1_000_000
N_SERIES = 1000


def _counter(mod: ModuleType) -> tuple[Any, int]:
    store = mod.Store()
    metric = store.counter("istio_requests_total", "Requests.", LABEL_NAMES)
    return store, store.series(metric, label_values(0))


def _histogram(mod: ModuleType) -> tuple[Any, int]:
    store = mod.Store()
    metric = store.histogram("istio_request_duration_milliseconds", "Duration.", LABEL_NAMES)
    return store, store.series(metric, label_values(0))


# -- single events ------------------------------------------------------------------------
#
# Each round makes CALLS calls in a local loop with the bound method fetched once, the
# same loop for meshstats and prometheus-client, as an instrumented hot path would call
# them. Timed one call per round, pytest-benchmark's own overhead per round (hundreds of
# ns) would be added to both sides and squeeze the ratio. ``ns_per_call`` in the table's
# note is the median round divided by CALLS; the ratio column is unaffected by the factor.

CALLS = 1000


def _per_call(benchmark: Any) -> None:
    benchmark.extra_info["calls_per_round"] = CALLS
    if benchmark.stats is not None:  # None under --benchmark-disable (CI's smoke run)
        median = benchmark.stats.stats.median
        benchmark.extra_info["ns_per_call"] = round(median / CALLS * 1e9, 1)


def _run_calls(benchmark: Any, fn: Callable[..., Any], *args: Any) -> None:
    """CALLS calls of ``fn(*args)`` per round, spelled out per arity so that no side pays
    for argument unpacking inside the loop."""
    if not args:

        def calls() -> None:
            for _ in repeat(None, CALLS):
                fn()

    elif len(args) == 1:
        (a,) = args

        def calls() -> None:
            for _ in repeat(None, CALLS):
                fn(a)

    else:
        a, b = args

        def calls() -> None:
            for _ in repeat(None, CALLS):
                fn(a, b)

    benchmark(calls)
    _per_call(benchmark)


@pytest.mark.benchmark(group="counter inc, resolved series")
def test_counter_inc_meshstats_c(benchmark: Any, store_c: ModuleType) -> None:
    store, sid = _counter(store_c)
    _run_calls(benchmark, store.inc, sid)
    assert store.value(sid) > 0


@pytest.mark.benchmark(group="counter inc, resolved series")
def test_counter_inc_meshstats_py(benchmark: Any, store_py: ModuleType) -> None:
    store, sid = _counter(store_py)
    _run_calls(benchmark, store.inc, sid)
    assert store.value(sid) > 0


@pytest.mark.benchmark(group="counter inc, resolved series")
def test_counter_inc_prometheus_client(benchmark: Any, prom_registry: Any) -> None:
    import prometheus_client

    counter = prometheus_client.Counter(
        "istio_requests", "Requests.", LABEL_NAMES, registry=prom_registry
    )
    child = counter.labels(*label_values(0))
    _run_calls(benchmark, child.inc)
    assert child._value.get() > 0


@pytest.mark.benchmark(group="histogram observe, resolved series")
def test_histogram_observe_meshstats_c(benchmark: Any, store_c: ModuleType) -> None:
    store, sid = _histogram(store_c)
    _run_calls(benchmark, store.observe, sid, 42.0)
    assert store.histogram_value(sid)[0][5] > 0  # 42 ms lands in le="50"


@pytest.mark.benchmark(group="histogram observe, resolved series")
def test_histogram_observe_meshstats_py(benchmark: Any, store_py: ModuleType) -> None:
    store, sid = _histogram(store_py)
    _run_calls(benchmark, store.observe, sid, 42.0)
    assert store.histogram_value(sid)[0][5] > 0


@pytest.mark.benchmark(group="histogram observe, resolved series")
def test_histogram_observe_prometheus_client(benchmark: Any, prom_registry: Any) -> None:
    import prometheus_client

    from meshstats import DEFAULT_BUCKETS

    hist = prometheus_client.Histogram(
        "istio_request_duration_milliseconds",
        "Duration.",
        LABEL_NAMES,
        buckets=DEFAULT_BUCKETS,
        registry=prom_registry,
    )
    child = hist.labels(*label_values(0))
    _run_calls(benchmark, child.observe, 42.0)


# -- batches of one million -----------------------------------------------------------------


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "slots": rng.integers(0, N_SERIES, BATCH).astype(np.int64),
        "amounts": rng.integers(1, 4, BATCH).astype(np.int64),
        # durations in ms: log-normal around 20 ms, like real request latencies
        "values": np.floor(rng.lognormal(np.log(20.0), 1.0, BATCH)),
    }


def _batch_store(mod: ModuleType, kind: str) -> tuple[Any, np.ndarray]:
    store = mod.Store()
    if kind == "counter":
        metric = store.counter("istio_requests_total", "Requests.", LABEL_NAMES)
    else:
        metric = store.histogram("istio_request_duration_milliseconds", "Duration.", LABEL_NAMES)
    ids = np.array([store.series(metric, label_values(i)) for i in range(N_SERIES)], np.int64)
    return store, ids


@pytest.mark.benchmark(group="batch of 1M counter increments")
def test_batch_counter_meshstats_c(
    benchmark: Any, store_c: ModuleType, batch: dict[str, np.ndarray]
) -> None:
    store, ids = _batch_store(store_c, "counter")
    series = ids[batch["slots"]]
    benchmark(store.inc_many, series, batch["amounts"])
    total = sum(store.value(int(s)) for s in ids)
    assert total % int(batch["amounts"].sum()) == 0


@pytest.mark.benchmark(group="batch of 1M counter increments")
def test_batch_counter_numpy_bincount_floor(benchmark: Any, batch: dict[str, np.ndarray]) -> None:
    """The floor: NumPy adding into a plain array, no store, no atomics."""
    benchmark(np.bincount, batch["slots"], batch["amounts"], N_SERIES)


@pytest.mark.benchmark(group="batch of 1M histogram observations")
def test_batch_histogram_meshstats_c(
    benchmark: Any, store_c: ModuleType, batch: dict[str, np.ndarray]
) -> None:
    store, ids = _batch_store(store_c, "histogram")
    series = ids[batch["slots"]]
    benchmark(store.observe_many, series, batch["values"])


@pytest.mark.benchmark(group="batch of 1M histogram observations")
def test_batch_histogram_numpy_searchsorted_bincount(
    benchmark: Any, batch: dict[str, np.ndarray]
) -> None:
    """NumPy's best: bucket index by searchsorted, per-(series, bucket) counts by bincount."""
    from meshstats import DEFAULT_BUCKETS

    bounds = np.asarray(DEFAULT_BUCKETS)
    nb = len(bounds) + 1
    slots, values = batch["slots"], batch["values"]

    def numpy_histogram() -> tuple[np.ndarray, np.ndarray]:
        bucket = np.searchsorted(bounds, values, side="left")  # le is inclusive
        counts = np.bincount(slots * nb + bucket, minlength=N_SERIES * nb)
        sums = np.bincount(slots, values, N_SERIES)
        return counts, sums

    benchmark(numpy_histogram)
