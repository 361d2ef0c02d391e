"""Memory per series: one counter and one 19-bucket histogram over the same 25 labels.

Target (issues 2, 11): at most 400 bytes, against prometheus-client's (~7 KB), both when
label values repeat (a workload every 8 label sets) and when every label set has its own
workload and revision. Measured with
tracemalloc over creating 10k series, so it counts every byte allocated through Python's
allocators (the compiled store allocates through ``PyMem_Raw*``, which tracemalloc traces).
The figure is reported in ``extra_info``; the benchmark time is incidental.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from conftest import LABEL_NAMES, label_values

N = 10_000


def _own_values(i: int) -> tuple[str, ...]:
    """Every label set with its own workload and revision (distinct pods' peers)."""
    values = dict(zip(LABEL_NAMES, label_values(i)))
    values["source_workload"] = f"productpage-v{i}"
    values["source_canonical_revision"] = f"v{i}"
    return tuple(values[name] for name in LABEL_NAMES)


def _label_sets(own: bool) -> list[tuple[str, ...]]:
    # Built before measuring: the caller owns its label strings in every library alike.
    return [_own_values(i) if own else label_values(i) for i in range(N)]


def _bytes_per_series(build: Callable[[list[tuple[str, ...]]], object], own: bool) -> float:
    labels = _label_sets(own)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keep = build(labels)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    return (after - before) / N


def _meshstats(mod: ModuleType) -> Callable[[list[tuple[str, ...]]], object]:
    def build(labels: list[tuple[str, ...]]) -> object:
        store = mod.Store()
        counter = store.counter("istio_requests_total", "Requests.", LABEL_NAMES)
        hist = store.histogram("istio_request_duration_milliseconds", "Duration.", LABEL_NAMES)
        for values in labels:
            store.inc(store.series(counter, values))
            store.observe(store.series(hist, values), 10.0)
        return store

    return build


def _prometheus(labels: list[tuple[str, ...]]) -> object:
    import prometheus_client

    from meshstats import DEFAULT_BUCKETS

    prometheus_client.disable_created_metrics()
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    counter = prometheus_client.Counter(
        "istio_requests", "Requests.", LABEL_NAMES, registry=registry
    )
    hist = prometheus_client.Histogram(
        "istio_request_duration_milliseconds",
        "Duration.",
        LABEL_NAMES,
        buckets=DEFAULT_BUCKETS,
        registry=registry,
    )
    for values in labels:
        counter.labels(*values).inc()
        hist.labels(*values).observe(10.0)
    return registry


@pytest.mark.benchmark(group="memory per series (counter + histogram)")
@pytest.mark.parametrize("values", ["repeating", "own"])
@pytest.mark.parametrize("impl", ["meshstats_c", "meshstats_py", "prometheus_client"])
def test_memory_per_series(
    benchmark: Any, impl: str, values: str, store_c: ModuleType, store_py: ModuleType
) -> None:
    build = {
        "meshstats_c": _meshstats(store_c),
        "meshstats_py": _meshstats(store_py),
        "prometheus_client": _prometheus,
    }[impl]
    per_series = benchmark.pedantic(
        _bytes_per_series, args=(build, values == "own"), rounds=1, iterations=1
    )
    benchmark.extra_info["bytes_per_series"] = round(per_series, 1)
    assert per_series > 0
