"""Finished HTTP requests through the stats engine, against prometheus-client doing the same
work: Istio's 25 labels for a known peer, the four HTTP metrics (a counter and three
histograms with Envoy's buckets), four response codes interleaved (200, 404, 200, 503).

For prometheus-client the label values are handed over already resolved (it has no notion of
peers or expressions), so it does strictly less work than the engine; "cached" keeps its four
children per label set in a dict, the fastest way to use it. Also here: what a new peer costs
(``engine.peer()`` from a metadata dict) and a cached one.

pytest-benchmark runs the cases one after the other (``pytest benchmarks/bench_engine.py
--benchmark-only``). For ratios with rounds interleaved, less exposed to a shared machine's
drift, run the module::

    PYTHONPATH=src python benchmarks/bench_engine.py --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

try:
    from conftest import ISTIO_LABELS, LABEL_NAMES
except ImportError:  # run as a script from the checkout
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from conftest import ISTIO_LABELS, LABEL_NAMES

from meshstats import DEFAULT_BUCKETS
from meshstats.engine import StatsEngine

LOCAL = {
    "WORKLOAD_NAME": "productpage-v1",
    "NAMESPACE": "default",
    "CLUSTER_ID": "Kubernetes",
    "LABELS": {"app": "productpage", "version": "v1"},
}
PEER = {
    "WORKLOAD_NAME": "reviews-v2",
    "NAMESPACE": "default",
    "CLUSTER_ID": "Kubernetes",
    "LABELS": {"app": "reviews", "version": "v2"},
}
CLUSTER_MD = {
    "filter_metadata": {
        "istio": {"services": [{"host": "reviews.default.svc.cluster.local", "name": "reviews"}]}
    }
}
# One benchmark call = these four requests: (response code, ms, request bytes, response bytes).
REQUESTS = ((200, 12, 420, 3100), (404, 3, 380, 150), (200, 25, 420, 2900), (503, 1, 420, 95))
CODES = tuple(r[0] for r in REQUESTS)
GROUP = "one HTTP request, 25 labels, 4 metrics, 4 codes interleaved (per request)"


def _engine(store_mod: ModuleType, fast: bool = True) -> tuple[StatsEngine, Any]:
    engine = StatsEngine(LOCAL, store=store_mod.Store())
    if not fast:
        engine._fast_http = False  # the general path: labels resolved per request
    peer = engine.peer(
        "outbound",
        PEER,
        peer_principal="spiffe://cluster.local/ns/default/sa/reviews",
        cluster_metadata=CLUSTER_MD,
    )
    return engine, peer


def _four(one: Callable[[int, float, int, int], None]) -> Callable[[], None]:
    """One benchmark call: the four requests, each through ``one``."""
    a, b, c, d = REQUESTS

    def four() -> None:
        one(*a)
        one(*b)
        one(*c)
        one(*d)

    return four


def meshstats_requests(store_mod: ModuleType, fast: bool = True) -> Callable[[], None]:
    engine, peer = _engine(store_mod, fast)
    record = engine.record_request

    def one(code: int, ms: float, up: int, down: int) -> None:
        record(peer, response_code=code, duration_ms=ms, request_bytes=up,
               response_bytes=down, host="reviews:9080")  # fmt: skip

    four = _four(one)
    four()  # the first request of each code resolves its series
    return four


def _prom_metrics(registry: Any) -> tuple[Any, Any, Any, Any]:
    import prometheus_client

    def hist(name: str) -> Any:
        return prometheus_client.Histogram(
            name, "x", LABEL_NAMES, buckets=DEFAULT_BUCKETS, registry=registry
        )

    requests = prometheus_client.Counter("istio_requests", "x", LABEL_NAMES, registry=registry)
    return (
        requests,
        hist("istio_request_duration_milliseconds"),
        hist("istio_request_bytes"),
        hist("istio_response_bytes"),
    )


def _values(code: int) -> tuple[str, ...]:
    return tuple({**ISTIO_LABELS, "response_code": str(code)}[name] for name in LABEL_NAMES)


def prometheus_labels(registry: Any) -> Callable[[], None]:
    requests, duration, req_bytes, resp_bytes = _prom_metrics(registry)
    values = {code: _values(code) for code in CODES}  # resolved labels, as handed over

    def one(code: int, ms: float, up: int, down: int) -> None:
        v = values[code]
        requests.labels(*v).inc()
        duration.labels(*v).observe(ms)
        req_bytes.labels(*v).observe(up)
        resp_bytes.labels(*v).observe(down)

    return _four(one)


def prometheus_cached(registry: Any) -> Callable[[], None]:
    metrics = _prom_metrics(registry)
    children = {c: tuple(m.labels(*_values(c)) for m in metrics) for c in CODES}

    def one(code: int, ms: float, up: int, down: int) -> None:
        requests, duration, req_bytes, resp_bytes = children[code]
        requests.inc()
        duration.observe(ms)
        req_bytes.observe(up)
        resp_bytes.observe(down)

    return _four(one)


def _per_request(benchmark: Any, fn: Callable[[], None]) -> None:
    benchmark.extra_info["calls_per_round"] = len(CODES)
    benchmark(fn)


@pytest.mark.benchmark(group=GROUP)
def test_request_meshstats_c(benchmark: Any, store_c: ModuleType) -> None:
    _per_request(benchmark, meshstats_requests(store_c))


@pytest.mark.benchmark(group=GROUP)
def test_request_meshstats_c_general_path(benchmark: Any, store_c: ModuleType) -> None:
    _per_request(benchmark, meshstats_requests(store_c, fast=False))


@pytest.mark.benchmark(group=GROUP)
def test_request_meshstats_py(benchmark: Any, store_py: ModuleType) -> None:
    _per_request(benchmark, meshstats_requests(store_py))


@pytest.mark.benchmark(group=GROUP)
def test_request_prometheus_client_labels(benchmark: Any, prom_registry: Any) -> None:
    _per_request(benchmark, prometheus_labels(prom_registry))


@pytest.mark.benchmark(group=GROUP)
def test_request_prometheus_client_cached_children(benchmark: Any, prom_registry: Any) -> None:
    _per_request(benchmark, prometheus_cached(prom_registry))


def new_peers(store_mod: ModuleType) -> Callable[[], None]:
    """A new peer each call: a fresh metadata dict, no cache key (a new connection)."""
    engine = StatsEngine(LOCAL, store=store_mod.Store())
    n = [0]

    def new_peer() -> None:
        n[0] += 1
        metadata = {**PEER, "NAME": f"reviews-v2-{n[0]}"}
        engine.peer(
            "outbound",
            metadata,
            peer_principal="spiffe://cluster.local/ns/default/sa/reviews",
            cluster_metadata=CLUSTER_MD,
        )

    return new_peer


@pytest.mark.benchmark(group="engine.peer(): a new peer from its metadata dict")
def test_new_peer_meshstats_c(benchmark: Any, store_c: ModuleType) -> None:
    benchmark(new_peers(store_c))


@pytest.mark.benchmark(group="engine.peer(): a cached peer (per call, 100 calls a round)")
def test_cached_peer_meshstats_c(benchmark: Any, store_c: ModuleType) -> None:
    engine = StatsEngine(LOCAL, store=store_c.Store())
    peer = engine.peer
    peer("outbound", PEER, cache_key="reviews-v2~id")

    def hundred() -> None:
        for _ in range(100):
            peer("outbound", PEER, cache_key="reviews-v2~id")

    benchmark.extra_info["calls_per_round"] = 100
    benchmark(hundred)


@pytest.mark.benchmark(group="StatsEngine(): a new engine, default config")
def test_new_engine_meshstats_c(benchmark: Any, store_c: ModuleType) -> None:
    StatsEngine(LOCAL, store=store_c.Store())  # the first in a process parses the defaults
    benchmark(lambda: StatsEngine(LOCAL, store=store_c.Store()))


# -- interleaved figure -----------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Per-request CPU time of each case, rounds interleaved; ratios to meshstats C."""
    import prometheus_client

    from meshstats import _store_c, _store_py

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5000, help="benchmark calls per round")
    args = parser.parse_args(argv)
    prometheus_client.disable_created_metrics()
    cases: dict[str, Callable[[], None]] = {
        "meshstats C": meshstats_requests(_store_c),
        "meshstats C, general path": meshstats_requests(_store_c, fast=False),
        "meshstats pure Python": meshstats_requests(_store_py),
        "prometheus-client .labels()": prometheus_labels(
            prometheus_client.CollectorRegistry(auto_describe=False)
        ),
        "prometheus-client cached children": prometheus_cached(
            prometheus_client.CollectorRegistry(auto_describe=False)
        ),
    }
    per_request: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, fn in cases.items():
            start = time.process_time()
            for _ in range(args.calls):
                fn()
            per_request[name].append((time.process_time() - start) / args.calls / len(CODES))
        print(f"\rround {r + 1}/{args.rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    ours = per_request["meshstats C"]
    print(f"{GROUP}: {args.rounds} rounds of {args.calls * len(CODES)} requests, interleaved")
    print(f"{'case':<36}{'median':>10}   {'x meshstats C (median, min-max)':>32}")
    for name, times in per_request.items():
        ratios = [t / o for t, o in zip(times, ours)]
        print(
            f"{name:<36}{statistics.median(times) * 1e6:>8.2f} µs"
            f"   {statistics.median(ratios):>8.1f}x ({min(ratios):.1f}-{max(ratios):.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
