"""Exposition of 1k and 10k series (a counter and a histogram each), text format 0.0.4.

Target (issue 2): at least 50x faster than prometheus-client's ``generate_latest()``.
Issue 11: also without transparent huge pages (>= 100x) and for the first render in a fresh
process (>= 50x): ``test_render_fresh_process`` runs both in child processes beside the
baseline measured here.

Also a scrape under attack (issue 10.5): 20,000 spoofed peers whose metadata fills the
source labels with 512-character values (the engine's cut), on Istio's four HTTP metrics,
with the default exposition budget. The render's size and what the same label sets would
have been charged without a budget go in ``extra_info``.
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


@pytest.mark.benchmark(group="exposition of 10000 series, fresh processes")
def test_render_fresh_process(benchmark: Any, prom_registry: Any) -> None:
    """First and steady renders in fresh processes, with and without huge pages, against
    prometheus-client in this one (medians; the spread goes to extra_info)."""
    import json
    import statistics
    import subprocess
    import sys
    import time
    from pathlib import Path

    import prometheus_client

    probe = str(Path(__file__).with_name("_render_probe.py"))
    _fill_prometheus(prom_registry, 10_000)
    runs = 1 if benchmark.disabled else 3
    firsts: dict[str, list[float]] = {"thp": [], "no_thp": []}
    steady: dict[str, list[float]] = {"thp": [], "no_thp": []}
    theirs: list[float] = []
    for _ in range(runs):  # interleaved: a child of each kind, then the baseline
        for kind, flag in (("thp", []), ("no_thp", ["--no-thp"])):
            out = subprocess.run(
                [sys.executable, probe, "10000", *flag], capture_output=True, text=True, check=True
            ).stdout
            result = json.loads(out)
            firsts[kind].append(result["first"])
            steady[kind].append(statistics.median(result["steady"]))
        t = time.perf_counter()
        prometheus_client.generate_latest(prom_registry)
        theirs.append(time.perf_counter() - t)
    base = statistics.median(theirs)
    for kind in ("thp", "no_thp"):
        for name, values in ((f"first_{kind}", firsts[kind]), (f"steady_{kind}", steady[kind])):
            median = statistics.median(values)
            benchmark.extra_info[f"{name}_ms"] = round(median * 1e3, 1)
            benchmark.extra_info[f"{name}_spread_ms"] = round((max(values) - min(values)) * 1e3, 1)
            benchmark.extra_info[f"{name}_ratio"] = round(base / median, 1)
    benchmark.extra_info["prometheus_client_s"] = round(base, 2)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


# Labels a plaintext peer's metadata fills (source_workload, canonical service and
# revision, namespace, app, version, cluster), each at the engine's 512-character cut.
_SPOOFED = {1, 2, 3, 4, 6, 7, 8}
_HTTP_HISTOGRAMS = (
    "istio_request_duration_milliseconds",
    "istio_request_bytes",
    "istio_response_bytes",
)


def _attack(mod: ModuleType, n: int, **store_args: Any) -> Any:
    store = mod.Store(**store_args)
    requests = store.counter("istio_requests_total", "Requests.", LABEL_NAMES)
    hists = [store.histogram(name, "H.", LABEL_NAMES) for name in _HTTP_HISTOGRAMS]
    for i in range(n):
        long = f"{i}-".ljust(512, "w")
        values = tuple(long if k in _SPOOFED else v for k, v in enumerate(label_values(i)))
        store.inc(store.series(requests, values))
        for h in hists:
            store.observe(store.series(h, values), 12.0)
    return store


@pytest.mark.parametrize("mod_name", ["c", "py"])
@pytest.mark.benchmark(group="exposition under attack: 20,000 spoofed peers")
def test_render_under_attack(
    benchmark: Any, store_c: ModuleType, store_py: ModuleType, mod_name: str
) -> None:
    mod = store_c if mod_name == "c" else store_py
    store = _attack(mod, 20_000)
    text = benchmark.pedantic(store.render, rounds=3 if mod_name == "c" else 1, iterations=1)
    # Charges alone (no render): what the same label sets add up to without a budget.
    unbounded = _attack(store_c, 20_000, max_exposition_bytes=2**64 - 1).exposition_bytes()
    benchmark.extra_info["render_bytes"] = len(text)
    benchmark.extra_info["charged_bytes"] = store.exposition_bytes()
    benchmark.extra_info["unbudgeted_charge_bytes"] = unbounded
    benchmark.extra_info["folded"] = sum(store.budget_overflow_count(m) for m in range(4))
    assert len(text) <= mod.DEFAULT_MAX_EXPOSITION_BYTES + 100_000
