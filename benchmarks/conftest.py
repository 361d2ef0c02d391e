"""Shared fixtures for the benchmark suites.

Every meshstats case sits in a pytest-benchmark group beside its baselines (prometheus-client
doing the same work, the pure-Python twin, and where it helps a NumPy floor), all measured in
the same run: compare ratios within one run, never absolute times across runs.
``python scripts/bench_table.py bench.json`` turns ``--benchmark-json`` output into README's table.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

# Istio's 25 standard labels with realistic values (about 230 characters per series).
ISTIO_LABELS: dict[str, str] = {
    "reporter": "source",
    "source_workload": "productpage-v1",
    "source_canonical_service": "productpage",
    "source_canonical_revision": "v1",
    "source_workload_namespace": "default",
    "source_principal": "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
    "source_app": "productpage",
    "source_version": "v1",
    "source_cluster": "Kubernetes",
    "destination_workload": "reviews-v2",
    "destination_workload_namespace": "default",
    "destination_principal": "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
    "destination_app": "reviews",
    "destination_version": "v2",
    "destination_service": "reviews.default.svc.cluster.local",
    "destination_canonical_service": "reviews",
    "destination_canonical_revision": "v2",
    "destination_service_name": "reviews",
    "destination_service_namespace": "default",
    "destination_cluster": "Kubernetes",
    "request_protocol": "http",
    "response_code": "200",
    "grpc_response_status": "",
    "response_flags": "-",
    "connection_security_policy": "unknown",
}
LABEL_NAMES = tuple(ISTIO_LABELS)


def label_values(i: int) -> tuple[str, ...]:
    """The i-th distinct realistic label set (workload and response code vary)."""
    values = dict(ISTIO_LABELS)
    values["source_workload"] = f"productpage-v{i // 8}"
    values["source_canonical_revision"] = f"v{i // 8}"
    values["response_code"] = ("200", "201", "204", "301", "404", "500", "503", "504")[i % 8]
    return tuple(values[name] for name in LABEL_NAMES)


def _store_module(name: str) -> ModuleType:
    return importlib.import_module(f"meshstats._store_{name}")


@pytest.fixture(scope="session")
def store_c() -> ModuleType:
    return _store_module("c")


@pytest.fixture(scope="session")
def store_py() -> ModuleType:
    return _store_module("py")


@pytest.fixture
def prom_registry() -> object:
    import prometheus_client

    prometheus_client.disable_created_metrics()  # fewer lines for them to write: a fair race
    return prometheus_client.CollectorRegistry(auto_describe=False)
