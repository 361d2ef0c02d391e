"""Exposition of 1k and 10k series (a counter and a histogram each), text format 0.0.4.

Target (issue 2): at least 50x faster than prometheus-client's ``generate_latest()``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import LABEL_NAMES, label_values


def _fill_meshstats(mod: ModuleType, n: int) -> Any:
    store = mod.Store()
    counter = store.counter("istio_requests_total", "Requests.", LABEL_NAMES)
    hist = store.histogram("istio_request_duration_milliseconds", "Duration.", LABEL_NAMES)
    rng = np.random.default_rng(n)
    for i in range(n):
        values = label_values(i)
        store.inc(store.series(counter, values), int(rng.integers(1, 1000)))
        sid = store.series(hist, values)
        for v in rng.lognormal(3.0, 1.0, 5):
            store.observe(sid, float(v))
    return store


def _fill_prometheus(registry: Any, n: int) -> None:
    import prometheus_client

    from meshstats import DEFAULT_BUCKETS

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
    rng = np.random.default_rng(n)
    for i in range(n):
        values = label_values(i)
        counter.labels(*values).inc(int(rng.integers(1, 1000)))
        child = hist.labels(*values)
        for v in rng.lognormal(3.0, 1.0, 5):
            child.observe(float(v))


@pytest.mark.parametrize("n", [1000, 10000])
@pytest.mark.benchmark(group="exposition")
def test_render_meshstats_c(benchmark: Any, store_c: ModuleType, n: int) -> None:
    benchmark.group = f"exposition of {n} series"
    store = _fill_meshstats(store_c, n)
    text = benchmark(store.render)
    assert text.count(b"\nistio_requests_total{") == n


@pytest.mark.parametrize("n", [1000, 10000])
@pytest.mark.benchmark(group="exposition")
def test_render_meshstats_py(benchmark: Any, store_py: ModuleType, n: int) -> None:
    benchmark.group = f"exposition of {n} series"
    store = _fill_meshstats(store_py, n)
    text = benchmark.pedantic(store.render, rounds=3, iterations=1)
    assert text.count(b"\nistio_requests_total{") == n


@pytest.mark.parametrize("n", [1000, 10000])
@pytest.mark.benchmark(group="exposition")
def test_render_prometheus_client(benchmark: Any, prom_registry: Any, n: int) -> None:
    import prometheus_client

    benchmark.group = f"exposition of {n} series"
    _fill_prometheus(prom_registry, n)
    text = benchmark.pedantic(
        prometheus_client.generate_latest, args=(prom_registry,), rounds=3, iterations=1
    )
    assert text.count(b"\nistio_requests_total{") == n
