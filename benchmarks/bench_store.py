"""Recording: single events on a resolved series, and batches of one million.

Targets (issue 2): counter ``inc`` >= 12x prometheus-client's cached child ``inc()``;
histogram ``observe`` >= 20x its cached child ``observe()``; batch counters >= 100M events/s;
batch histograms >= 2x NumPy ``searchsorted`` + ``bincount`` (issue 11: >= 2.5x).

pytest-benchmark runs the cases one after the other (``pytest benchmarks/bench_store.py
--benchmark-only``); the batch-histogram case also records a ratio with rounds interleaved in
its ``extra_info``. For that ratio over several runs, run the module::

    PYTHONPATH=src python benchmarks/bench_store.py --runs 5 --rounds 21
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from itertools import repeat
from types import ModuleType
from typing import Any

import numpy as np
import pytest

try:
    from conftest import LABEL_NAMES, label_values
except ImportError:  # run as a script from the checkout
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from conftest import LABEL_NAMES, label_values

from meshstats import DEFAULT_BUCKETS

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


def _batch_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "slots": rng.integers(0, N_SERIES, BATCH).astype(np.int64),
        "amounts": rng.integers(1, 4, BATCH).astype(np.int64),
        # durations in ms: log-normal around 20 ms, like real request latencies
        "values": np.floor(rng.lognormal(np.log(20.0), 1.0, BATCH)),
    }


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    return _batch_data()


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


# The histogram batch: meshstats records (series id, value) pairs into a store; NumPy's best
# computes the same result into fresh arrays: per-(series, bucket) counts and per-series sums,
# the sums in index order as the store's partial sums are (docs/store.md, "Sums in batches").
# The ids of the store's first 1000 series are 0..999, so NumPy's slots are the same ids;
# NumPy skips what the store also does (id and NaN checks, one atomic add per touched slot).


def _numpy_histogram(
    slots: np.ndarray, values: np.ndarray
) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """NumPy's best: bucket index by searchsorted, per-(series, bucket) counts by bincount."""
    bounds = np.asarray(DEFAULT_BUCKETS)
    nb = len(bounds) + 1

    def numpy_histogram() -> tuple[np.ndarray, np.ndarray]:
        bucket = np.searchsorted(bounds, values, side="left")  # le is inclusive
        counts = np.bincount(slots * nb + bucket, minlength=N_SERIES * nb)
        sums = np.bincount(slots, values, N_SERIES)
        return counts, sums

    return numpy_histogram


def _same_work(mod: ModuleType, data: dict[str, np.ndarray]) -> None:
    """One batch into a fresh store gives NumPy's counts and sums exactly."""
    store, ids = _batch_store(mod, "histogram")
    store.observe_many(ids[data["slots"]], data["values"])
    counts, sums = _numpy_histogram(data["slots"], data["values"])()
    counts = counts.reshape(N_SERIES, -1)
    for i in (0, 1, N_SERIES // 2, N_SERIES - 1):
        got_counts, got_sum = store.histogram_value(int(ids[i]))
        assert list(got_counts) == counts[i].tolist() and got_sum == sums[i]


def interleaved_ratios(mod: ModuleType, data: dict[str, np.ndarray], rounds: int) -> list[float]:
    """NumPy's time over meshstats' per round, one call of each, which goes first alternating
    (CPU time, as in bench_engine.py): both sides see the same moment of a shared machine."""
    store, ids = _batch_store(mod, "histogram")
    series, values = ids[data["slots"]], data["values"]
    numpy_histogram = _numpy_histogram(data["slots"], values)
    store.observe_many(series, values)  # warm both: the first call faults memory in
    numpy_histogram()
    ratios = []
    for r in range(rounds):
        times = {}
        for side in ("ms", "np") if r % 2 == 0 else ("np", "ms"):
            start = time.process_time()
            if side == "ms":
                store.observe_many(series, values)
            else:
                numpy_histogram()
            times[side] = time.process_time() - start
        ratios.append(times["np"] / times["ms"])
    return ratios


@pytest.mark.benchmark(group="batch of 1M histogram observations")
def test_batch_histogram_meshstats_c(
    benchmark: Any, store_c: ModuleType, batch: dict[str, np.ndarray]
) -> None:
    _same_work(store_c, batch)
    store, ids = _batch_store(store_c, "histogram")
    series = ids[batch["slots"]]
    benchmark(store.observe_many, series, batch["values"])
    if benchmark.stats is not None:  # None under --benchmark-disable (CI's smoke run)
        ratios = interleaved_ratios(store_c, batch, 21)
        benchmark.extra_info["numpy_ratio_interleaved"] = (
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        )


@pytest.mark.benchmark(group="batch of 1M histogram observations")
def test_batch_histogram_numpy_searchsorted_bincount(
    benchmark: Any, batch: dict[str, np.ndarray]
) -> None:
    benchmark(_numpy_histogram(batch["slots"], batch["values"]))


# -- interleaved figure -----------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """NumPy searchsorted + bincount over meshstats C observe_many, 1M values, rounds
    interleaved: per run the median ratio and its range over rounds, then the runs' spread."""
    from meshstats import _store_c

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=21, help="rounds per run")
    args = parser.parse_args(argv)
    data = _batch_data()
    _same_work(_store_c, data)
    medians = []
    for run in range(args.runs):
        ratios = interleaved_ratios(_store_c, data, args.rounds)
        medians.append(statistics.median(ratios))
        print(
            f"run {run + 1}: {medians[-1]:.2f}x NumPy "
            f"(rounds {min(ratios):.2f}-{max(ratios):.2f}, {args.rounds} rounds)"
        )
    print(
        f"median of {args.runs} runs: {statistics.median(medians):.2f}x "
        f"(runs {min(medians):.2f}-{max(medians):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
