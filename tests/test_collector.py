"""MeshstatsCollector in a real prometheus_client registry (a fresh one, never the global)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
from conftest import Backend
from exposition_support import openmetrics_samples, same_values, text_samples
from prometheus_client import CollectorRegistry, Counter, generate_latest, start_http_server
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from meshstats.exposition import MeshstatsCollector

HOSTILE = ['say "hi"', "C:\\path\\", "line1\nline2", "ünïcödé ✓", ""]


def populated(backend: Backend) -> Any:
    store = backend.store.Store()
    req = store.counter("istio_requests_total", "Requests.", ("reporter", "code"))
    dur = store.histogram("istio_request_duration_milliseconds", 'Dur "ms"\\.', ("reporter",))
    up = store.gauge("istio_build", "Build.\nSecond line.", ("v",))
    small = store.counter("folded_total", "Folded.", ("k",), max_series=1)
    for i, value in enumerate(HOSTILE):
        store.inc(store.series(req, (value, "200")), i + 1)
        store.set(store.series(up, (value,)), i / 3)
    for v in (0.25, 1, 7, 12.5, 4e6):
        store.observe(store.series(dur, ("source",)), v)
    store.series(dur, ("destination",))  # an empty histogram series still exposes zeros
    store.set(store.series(up, ("specials",)), math.nan)
    store.set(store.series(up, ("inf",)), -math.inf)
    for k in ("a", "b", "c"):
        store.inc(store.series(small, (k,)))
    store.gauge("empty", "No series.")
    return store


def registry_for(store: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(MeshstatsCollector(store))
    return registry


def test_text_output_carries_the_same_samples(backend: Backend) -> None:
    store = populated(backend)
    ours = text_samples(store.render())
    theirs = text_samples(generate_latest(registry_for(store)))
    assert same_values(ours, theirs)
    assert ("meshstats_series_overflow_total", (("metric", "folded_total"),)) in theirs
    assert theirs[("istio_requests_total", (("code", "200"), ("reporter", 'say "hi"')))] == 1


def test_openmetrics_output_carries_the_same_samples(backend: Backend) -> None:
    store = populated(backend)
    ours = openmetrics_samples(store.render(openmetrics=True))
    theirs = openmetrics_samples(generate_openmetrics(registry_for(store)))  # type: ignore[no-untyped-call]
    assert same_values(ours, theirs)


def test_families_types_and_help(backend: Backend) -> None:
    store = populated(backend)
    families = {f.name: f for f in MeshstatsCollector(store).collect()}
    assert families["istio_requests"].type == "counter"  # prometheus_client's naming
    assert families["istio_build"].type == "gauge"
    assert families["istio_build"].documentation == "Build.\nSecond line."
    assert families["istio_request_duration_milliseconds"].type == "histogram"
    assert families["istio_request_duration_milliseconds"].documentation == 'Dur "ms"\\.'
    assert families["empty"].samples == []
    assert [s.name for s in families["istio_requests"].samples][:1] == ["istio_requests_total"]


def test_collect_reads_fresh_values(backend: Backend) -> None:
    store = backend.store.Store()
    s = store.series(store.counter("c_total", "C."), ())
    registry = registry_for(store)
    assert registry.get_sample_value("c_total") == 0
    store.inc(s, 5)
    assert registry.get_sample_value("c_total") == 5
    store.inc(s)
    assert registry.get_sample_value("c_total") == 6


def test_counter_without_total_gets_prometheus_client_naming(backend: Backend) -> None:
    # The documented difference: prometheus_client always writes <name>_total samples.
    store = backend.store.Store()
    store.inc(store.series(store.counter("reqs", "R."), ()), 3)
    registry = registry_for(store)
    assert registry.get_sample_value("reqs_total") == 3
    assert registry.get_sample_value("reqs") is None
    assert b"\nreqs 3\n" in store.render()


def test_name_clash_is_detected_by_the_registry(backend: Backend) -> None:
    store = backend.store.Store()
    store.counter("istio_requests_total", "Requests.")
    registry = CollectorRegistry(auto_describe=True)
    Counter("istio_requests", "Theirs.", registry=registry)
    with pytest.raises(ValueError, match="istio_requests"):
        registry.register(MeshstatsCollector(store))


def test_served_by_prometheus_client_http_server(backend: Backend) -> None:
    store = populated(backend)
    registry = registry_for(store)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert same_values(text_samples(body), text_samples(store.render()))


def test_missing_prometheus_client_is_a_clear_import_error(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes "import prometheus_client.core" raise ImportError.
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    with pytest.raises(ImportError, match=r"pip install meshstats\[prometheus\]"):
        MeshstatsCollector(backend.store.Store())


def test_exposition_module_imports_without_prometheus_client() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "import meshstats.exposition as e; print(e.negotiate(None)[0])"
    )
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
