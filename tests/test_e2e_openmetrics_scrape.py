"""End to end: Prometheus 2.42 negotiates OpenMetrics with our ``MetricsServer`` and stores the
same values it stores from the text format.

Per backend, one stats engine behind one ``MetricsServer`` is scraped through two recording
pass-throughs: ``<backend>-openmetrics`` relays Prometheus' own ``Accept`` header (which prefers
``application/openmetrics-text;version=1.0.0``), ``<backend>-text`` replaces it with
``text/plain;version=0.0.4``. Nothing is recorded after Prometheus starts, so both jobs must
hold identical series, and both must equal our text exposition read by an independent parser.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Backend, wait_until
from e2e_support import (
    BACKEND_PARAMS,
    RecordingProxy,
    enabled_backends,
    module_backend,
    series_key,
)
from exposition_support import openmetrics_samples, text_samples
from prometheus_server import PrometheusServer, Result

from meshstats.engine import StatsEngine
from meshstats.exposition import MetricsServer

pytestmark = pytest.mark.e2e

TEXT_ACCEPT = "text/plain;version=0.0.4"
# A host header that reaches a label value verbatim (no cluster metadata, client side): a quote,
# a backslash and non-ASCII, which the two formats must escape alike.
ODD_HOST = 'we"ird\\höst:8080'

CLIENT = {
    "NAME": "productpage-v1-84975bc778-pxz2w",
    "NAMESPACE": "default",
    "WORKLOAD_NAME": "productpage-v1",
    "ISTIO_VERSION": "1.24.0",
    "LABELS": {"app": "productpage", "version": "v1"},
}
UPSTREAM = {"NAMESPACE": "default", "WORKLOAD_NAME": "reviews-v2", "LABELS": {"app": "reviews"}}


def record_traffic(engine: StatsEngine) -> None:
    peer = engine.peer(
        "outbound", UPSTREAM, peer_principal="spiffe://cluster.local/ns/default/sa/r"
    )
    for code, duration, n in ((200, 7, 40), (200, 31, 9), (503, 0.4, 3), (404, 12, 2)):
        for _ in range(n):
            engine.record_request(
                peer, response_code=code, duration_ms=duration, request_bytes=350,
                response_bytes=1200, host="reviews:9080",
            )  # fmt: skip
    # Beyond the last finite bucket (1 h): only +Inf counts it, in both formats.
    engine.record_request(peer, response_code=200, duration_ms=4_000_000, host="reviews:9080")
    engine.record_request(peer, response_code=200, duration_ms=3, host=ODD_HOST)
    engine.record_request(
        peer, response_code=200, duration_ms=5, protocol="grpc", grpc_status=0, host="reviews:9080"
    )
    engine.record_grpc_messages(peer, 3, 5, host="reviews:9080")
    conn = engine.tcp_connection(peer)
    conn.add_bytes(sent=4096, received=512)
    conn.close()


@dataclass
class Endpoint:
    engine: StatsEngine
    openmetrics: RecordingProxy
    text: RecordingProxy

    def jobs(self, backend: str) -> tuple[str, str]:
        return f"{backend}-openmetrics", f"{backend}-text"


@dataclass
class Setup:
    prom: PrometheusServer
    endpoints: dict[str, Endpoint]


@pytest.fixture(scope="module")
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    with contextlib.ExitStack() as stack:
        endpoints = {}
        targets = {}
        for name, backend in enabled_backends(request).items():
            engine = StatsEngine(CLIENT, store=backend.store.Store())
            record_traffic(engine)
            server = stack.enter_context(MetricsServer(engine.store))
            om = stack.enter_context(RecordingProxy(server.port))
            text = stack.enter_context(RecordingProxy(server.port, force_accept=TEXT_ACCEPT))
            endpoints[name] = Endpoint(engine, om, text)
            om_job, text_job = endpoints[name].jobs(name)
            targets[om_job], targets[text_job] = om.address, text.address
        prom = stack.enter_context(PrometheusServer(targets, tmp_path_factory.mktemp("prom")))
        prom.wait_for(
            "count by (job) (istio_requests_total)",
            lambda result: {r["metric"]["job"] for r in result} == set(targets),
        )
        yield Setup(prom, endpoints)


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """conftest's backends, module-scoped so the run visits this module once (one Prometheus)."""
    return module_backend(request)


def media_ranges(header: str) -> list[tuple[str, dict[str, str]]]:
    """An Accept header as ``[(media type, {param: value})]``, in the order sent."""
    out = []
    for entry in header.split(","):
        media, *params = (part.strip() for part in entry.split(";"))
        out.append((media.lower(), dict(p.split("=", 1) for p in params)))
    return out


def test_prometheus_asks_for_openmetrics_and_gets_it(setup: Setup, backend: Backend) -> None:
    endpoint = setup.endpoints[backend.name]
    scrapes = list(endpoint.openmetrics.exchanges)
    assert scrapes, "Prometheus never scraped the OpenMetrics target"
    for x in scrapes:
        assert x.path == "/stats/prometheus"
        assert x.accept is not None and x.forwarded_accept == x.accept
        ranges = media_ranges(x.accept)
        # OpenMetrics 1.0.0 first and unweighted (q=1); the text format only as a fallback.
        assert ranges[0] == ("application/openmetrics-text", {"version": "1.0.0"})
        text_q = [float(p.get("q", "1")) for m, p in ranges if m == "text/plain"]
        assert text_q and max(text_q) < 1
        assert x.status == 200
        assert x.content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
        assert x.content_encoding == ("gzip" if "gzip" in (x.accept_encoding or "") else None)
    for x in list(endpoint.text.exchanges):
        assert x.forwarded_accept == TEXT_ACCEPT and x.status == 200
        assert x.content_type == "text/plain; version=0.0.4; charset=utf-8"


def test_prometheus_parsed_the_body_as_openmetrics(setup: Setup, backend: Backend) -> None:
    # Metadata is keyed by family name, and only OpenMetrics names a counter family without
    # its _total suffix: so this tells which parser Prometheus actually ran on each body.
    om_job, text_job = setup.endpoints[backend.name].jobs(backend.name)

    def families(job: str) -> dict[str, str]:
        data = setup.prom.api("/api/v1/targets/metadata", {"match_target": f'{{job="{job}"}}'})
        return {m["metric"]: m["type"] for m in data}

    om, text = families(om_job), families(text_job)
    assert om["istio_requests"] == text["istio_requests_total"] == "counter"
    assert "istio_requests_total" not in om and "istio_requests" not in text
    assert om["istio_request_duration_milliseconds"] == "histogram"
    assert om["istio_build"] == text["istio_build"] == "gauge"


def test_both_targets_healthy_with_every_sample(setup: Setup, backend: Backend) -> None:
    endpoint = setup.endpoints[backend.name]
    jobs = endpoint.jobs(backend.name)

    def health() -> list[tuple[str, str]]:
        targets = setup.prom.active_targets()
        by_job = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
        return [by_job[job] for job in jobs]

    # Scrapes time out after their 1 s interval: on a loaded machine one may, and the next
    # one is up again. Healthy means a scrape of each job that succeeds.
    wait_until(lambda: health() == [("up", ""), ("up", "")], f"both {jobs} up", 120)
    text_count = len(text_samples(endpoint.engine.render()))
    om_count = len(openmetrics_samples(endpoint.engine.render(openmetrics=True)))
    assert text_count == om_count > 0
    for job in jobs:
        assert float(setup.prom.query(f'up{{job="{job}"}}')[0]["value"][1]) == 1.0
        scraped = setup.prom.query(f'scrape_samples_scraped{{job="{job}"}}')
        assert float(scraped[0]["value"][1]) == text_count


def stored(result: list[Result]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for r in result:
        key = series_key(r["metric"])
        assert key not in out, key
        out[key] = float(r["value"][1])
    return out


def test_values_identical_to_the_text_format(setup: Setup, backend: Backend) -> None:
    endpoint = setup.endpoints[backend.name]
    om_job, text_job = endpoint.jobs(backend.name)

    def both() -> tuple[dict[Any, float], dict[Any, float]]:
        om = stored(setup.prom.query(f'{{job="{om_job}",__name__=~"istio_.*"}}'))
        text = stored(setup.prom.query(f'{{job="{text_job}",__name__=~"istio_.*"}}'))
        return om, text

    # Both jobs scrape one unchanging store; a scrape that timed out on a loaded machine
    # leaves a job without samples until its next one.
    wait_until(lambda: all(both()), "samples stored for both jobs", 120)
    om, text = both()
    assert om == text
    # ... and both are what we expose, read back by prometheus_client's own parser. In
    # Prometheus' data model an empty label value is no label at all (grpc_response_status=""
    # for every non-gRPC request), so it is not stored; compare without them.
    ours = text_samples(endpoint.engine.render())
    assert any(v == "" for _, labels in ours for _, v in labels)
    assert not any(v == "" for _, labels in om for _, v in labels)
    assert om == {
        (name, tuple((k, v) for k, v in labels if v != "")): value
        for (name, labels), value in ours.items()
    }
    odd = [k for k in om if dict(k[1]).get("destination_service") == ODD_HOST]
    assert odd, "the label value with a quote, a backslash and non-ASCII did not survive"
    buckets: dict[float, float] = {}
    for (name, labels), value in om.items():
        label = dict(labels)
        if name.endswith("duration_milliseconds_bucket") and label["destination_service"] == (
            "reviews:9080"
        ):
            le = float(label["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    finite = max(b for b in buckets if b != float("inf"))
    assert buckets[float("inf")] - buckets[finite] == 1.0  # the 4 000 000 ms request only
