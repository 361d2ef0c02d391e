"""One finished HTTP request through the stats engine, against prometheus-client doing the
same work: resolving Istio's 25 labels for a known peer and recording the four HTTP metrics
(a counter and three histograms).

For prometheus-client the label values are handed over already resolved (it has no notion of
peers or expressions), so it does strictly less work than the engine.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from conftest import LABEL_NAMES, label_values

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


def _engine(store_mod: ModuleType) -> tuple[StatsEngine, Any]:
    engine = StatsEngine(LOCAL, store=store_mod.Store())
    peer = engine.peer(
        "outbound",
        PEER,
        peer_principal="spiffe://cluster.local/ns/default/sa/reviews",
        cluster_metadata=CLUSTER_MD,
    )
    return engine, peer


def _record(engine: StatsEngine, peer: Any) -> None:
    engine.record_request(
        peer,
        response_code=200,
        duration_ms=12,
        request_bytes=420,
        response_bytes=3100,
        host="reviews:9080",
    )


@pytest.mark.benchmark(group="one HTTP request, 25 labels, 4 metrics")
def test_request_meshstats_c(benchmark: Any, store_c: ModuleType) -> None:
    engine, peer = _engine(store_c)
    benchmark(_record, engine, peer)
    assert engine.cache_stats()["series_misses"] == 1  # resolved once, then cached


@pytest.mark.benchmark(group="one HTTP request, 25 labels, 4 metrics")
def test_request_meshstats_py(benchmark: Any, store_py: ModuleType) -> None:
    engine, peer = _engine(store_py)
    benchmark(_record, engine, peer)


@pytest.mark.benchmark(group="one HTTP request, 25 labels, 4 metrics")
def test_request_prometheus_client(benchmark: Any, prom_registry: Any) -> None:
    import prometheus_client

    from meshstats import DEFAULT_BUCKETS

    def hist(name: str) -> Any:
        return prometheus_client.Histogram(
            name, "x", LABEL_NAMES, buckets=DEFAULT_BUCKETS, registry=prom_registry
        )

    requests = prometheus_client.Counter("istio_requests", "x", LABEL_NAMES, registry=prom_registry)
    duration = hist("istio_request_duration_milliseconds")
    req_bytes, resp_bytes = hist("istio_request_bytes"), hist("istio_response_bytes")
    values = label_values(0)

    def record() -> None:
        requests.labels(*values).inc()
        duration.labels(*values).observe(12)
        req_bytes.labels(*values).observe(420)
        resp_bytes.labels(*values).observe(3100)

    benchmark(record)
