"""End to end: a real Prometheus 2.42 scrapes a client and a server sidecar's stats, and the
PromQL of Istio's dashboards gives back the traffic this test sent.

Per backend, a client engine (productpage-v1 calling reviews and details) and a server engine
(reviews-v2) each sit behind their own ``MetricsServer``; one Prometheus per module scrapes all
of them, one job per endpoint (``c-client``, ``c-server``, ``py-client``, ``py-server``).

The traffic comes in two phases so that ``rate()`` has something to measure:

- phase 1, one *unit* of the mix (211 requests from the client, 141 of them reach reviews;
  5 TCP connections, 2 left open), recorded before Prometheus starts;
- phase 2, the unit twice more (same multiset, shuffled; TCP bytes doubled), recorded once
  every target has been scraped with phase 1.

Each endpoint is a :class:`PhaseGate`, so a scrape never sees half a phase: per target there
is a last scrape with phase 1 only (``t1``) and a first with both (``t2``). Queries are
evaluated at ``t2``. What that buys:

- raw counters and a scrape-aligned ``increase(x[t2-t1])`` are exact (no extrapolation: the
  window starts and ends on samples);
- ``irate`` (the service dashboard's) is exactly ``phase-2 count / (t2 - t1)``;
- ``rate(x[1m])`` (the mesh dashboard's) extrapolates, but every series of a target is scaled
  by the same factor because phase 2 is exactly twice phase 1 in every series (Prometheus
  limits extrapolation by ``first value / increase``, which is then 1/2 everywhere). So ratios
  (success rate, ``histogram_quantile``) are exact, and absolute rates lie in
  ``[increase/60, 1.5 * increase/60]``.
"""

from __future__ import annotations

import contextlib
import random
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import Backend
from e2e_support import (
    BACKEND_PARAMS,
    COUNTS_BY,
    MESH_4XX,
    MESH_SUCCESS_RATE,
    MESH_TCP,
    MESH_WORKLOAD_QUANTILE,
    MESH_WORKLOAD_SUCCESS,
    SERVICE_INCOMING_MTLS,
    SERVICE_INCOMING_PLAIN,
    SERVICE_SERVER_VOLUME,
    SERVICE_SUCCESS,
    SERVICE_VOLUME,
    PhaseGate,
    by_labels,
    enabled_backends,
    module_backend,
    scalar,
    scoped,
)
from exposition_support import text_samples
from prometheus_server import PrometheusServer, Result

from meshstats.engine import PeerContext, StatsEngine, TcpConnection
from meshstats.exposition import MetricsServer

pytestmark = pytest.mark.e2e

# Envoy's default histogram bounds (``Stats::HistogramSettingsImpl::defaultBuckets``), written
# out here rather than read from meshstats, so a wrong bound in meshstats would show.
ENVOY_BUCKETS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip

# -- Bookinfo-like nodes -------------------------------------------------------------------


def _node(pod: str, workload: str, app: str, version: str) -> dict[str, Any]:
    return {
        "NAME": pod,
        "NAMESPACE": "default",
        "WORKLOAD_NAME": workload,
        "CLUSTER_ID": "Kubernetes",
        "ISTIO_VERSION": "1.24.0",
        "LABELS": {
            "app": app,
            "version": version,
            "service.istio.io/canonical-name": app,
            "service.istio.io/canonical-revision": version,
        },
    }


PRODUCTPAGE = _node("productpage-v1-84975bc778-pxz2w", "productpage-v1", "productpage", "v1")
REVIEWS = _node("reviews-v2-5b667bcbf8-8hxlj", "reviews-v2", "reviews", "v2")
DETAILS = _node("details-v1-79f774bdb9-wq5vd", "details-v1", "details", "v1")
PP_SAN = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
REVIEWS_SAN = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
DETAILS_SAN = "spiffe://cluster.local/ns/default/sa/bookinfo-details"
FQDN = {
    "reviews": "reviews.default.svc.cluster.local",
    "details": "details.default.svc.cluster.local",
}


def _cluster_md(service: str) -> dict[str, Any]:
    entry = {"host": FQDN[service], "name": service, "namespace": "default"}
    return {"filter_metadata": {"istio": {"services": [entry]}}}


# -- the traffic ---------------------------------------------------------------------------

# One unit of the request mix: (service, response code, how many). Only reviews has a server
# engine here, so the destination reporter sees the reviews rows only.
MIX = (
    ("reviews", 200, 120),
    ("reviews", 404, 12),
    ("reviews", 503, 9),
    ("details", 200, 64),
    ("details", 500, 6),
)
PHASE2_UNITS = 2
# Server-side durations are drawn in these (lower, upper] ms bands with these weights; the client
# adds 0-3 ms of its own.
DURATION_BANDS = ((1, 5, 15), (5, 10, 25), (10, 25, 30), (25, 50, 17), (50, 100, 9), (100, 250, 4))
# TCP per phase: (connection, bytes sent, bytes received, closed at the end of the phase).
# Connections d and e stay open across the phase boundary (reported by report_tcp()); phase 2
# moves exactly twice phase 1's bytes, for the same reason the request mix is doubled.
TCP_PHASE1 = (
    ("a", 1000, 200, True),
    ("b", 3000, 500, True),
    ("c", 500, 100, True),
    ("d", 2000, 300, False),
    ("e", 700, 150, False),
)
TCP_PHASE2 = (
    ("d", 1500, 250, True),
    ("e", 2200, 350, True),
    ("f", 4000, 700, True),
    ("g", 3500, 600, True),
    ("h", 3200, 600, True),
)
TcpStep = tuple[str, int, int, bool]


@dataclass(frozen=True)
class Call:
    service: str
    code: int
    server_ms: int
    client_ms: int
    request_bytes: int
    response_bytes: int


def unit_calls(seed: int = 20261126) -> list[Call]:
    rng = random.Random(seed)
    weights = [w for *_, w in DURATION_BANDS]
    calls = []
    for service, code, n in MIX:
        for _ in range(n):
            lower, upper, _w = rng.choices(DURATION_BANDS, weights)[0]
            server_ms = rng.randint(lower + 1, upper)
            calls.append(
                Call(
                    service,
                    code,
                    server_ms,
                    server_ms + rng.randint(0, 3),
                    rng.randint(200, 900),
                    rng.randint(300, 9000),
                )
            )
    return calls


CALLS = unit_calls()


def seen_by(reporter: str, service: str | None = None) -> list[Call]:
    """One unit's calls as a reporter sees them (the server engine is reviews only)."""
    return [
        c
        for c in CALLS
        if (reporter == "source" or c.service == "reviews") and service in (None, c.service)
    ]


def durations(reporter: str, service: str | None = None) -> list[int]:
    pick = "client_ms" if reporter == "source" else "server_ms"
    return [getattr(c, pick) for c in seen_by(reporter, service)]


def code_counts(reporter: str, units: int) -> dict[tuple[str, str, str], float]:
    """``{(destination_service, response_code, reporter): count}`` for ``units`` units."""
    counts = Counter((FQDN[c.service], str(c.code), reporter) for c in seen_by(reporter))
    return {k: float(v * units) for k, v in counts.items()}


def tcp_totals(steps: tuple[TcpStep, ...]) -> dict[str, int]:
    return {
        "sent": sum(s for _, s, _, _ in steps),
        "received": sum(r for _, _, r, _ in steps),
        "closed": sum(1 for *_, closed in steps if closed),
    }


def expected_quantile(q: float, values: list[int]) -> tuple[float, float, float]:
    """``(value, bucket lower bound, bucket upper bound)`` as ``histogram_quantile`` defines it:
    the first bucket whose cumulative count reaches ``q * total``, linearly interpolated."""
    counts = [0] * (len(ENVOY_BUCKETS) + 1)
    for v in values:
        counts[bisect_left(ENVOY_BUCKETS, v)] += 1  # le is inclusive
    rank = q * len(values)
    # Our draw must not put a rank on a bucket edge, where float noise could pick either side.
    edges = [sum(counts[: i + 1]) for i in range(len(counts))]
    assert all(abs(edge - rank) > 1e-6 for edge in edges), f"rank {rank} on an edge: reseed"
    cumulative = 0
    for i, count in enumerate(counts):
        if cumulative + count >= rank:
            lower = 0.0 if i == 0 else float(ENVOY_BUCKETS[i - 1])
            upper = float(ENVOY_BUCKETS[i])
            return lower + (upper - lower) * (rank - cumulative) / count, lower, upper
        cumulative += count
    raise AssertionError("quantile beyond the last finite bucket")


# -- the mesh: engines, endpoints, Prometheus -----------------------------------------------


@dataclass
class Side:
    job: str
    engine: StatsEngine
    gate: PhaseGate
    server: MetricsServer
    t1: float = 0.0  # last scrape that saw phase 1 only
    t2: float = 0.0  # first scrape that saw phases 1 and 2

    @property
    def window(self) -> str:
        """The range ``[t1, t2]`` exactly, as a PromQL duration."""
        return f"{round((self.t2 - self.t1) * 1000)}ms"

    @property
    def interval(self) -> float:
        return round((self.t2 - self.t1) * 1000) / 1000


@dataclass
class Deployment:
    """One backend's client and server sidecar stats, with the peers they talk to."""

    client: Side
    server: Side
    peers: dict[str, PeerContext]
    conns: dict[tuple[str, str], TcpConnection] = field(default_factory=dict)

    def record(self, calls: list[Call], tcp: tuple[TcpStep, ...]) -> None:
        """Record one phase; neither endpoint can be scraped until all of it is in."""
        client, server = self.client.engine, self.server.engine
        with self.client.gate.phase(), self.server.gate.phase():
            for call in calls:
                client.record_request(
                    self.peers[call.service],
                    response_code=call.code,
                    duration_ms=call.client_ms,
                    request_bytes=call.request_bytes,
                    response_bytes=call.response_bytes,
                    host=f"{call.service}:9080",
                )
                if call.service == "reviews":
                    server.record_request(
                        self.peers["inbound"],
                        response_code=call.code,
                        duration_ms=call.server_ms,
                        request_bytes=call.request_bytes,
                        response_bytes=call.response_bytes,
                        host="reviews:9080",
                    )
            for name, sent, received, closed in tcp:
                for side, engine, peer in (
                    ("client", client, "tcp-out"),
                    ("server", server, "tcp-in"),
                ):
                    conn = self.conns.get((side, name))
                    if conn is None:
                        conn = self.conns[side, name] = engine.tcp_connection(self.peers[peer])
                    conn.add_bytes(sent=sent, received=received)
                    if closed:
                        conn.close()
            # What a reporting tick does: connections still open report their bytes so far.
            client.report_tcp()
            server.report_tcp()


def deploy(name: str, backend: Backend, stack: contextlib.ExitStack) -> Deployment:
    client = StatsEngine(PRODUCTPAGE, store=backend.store.Store(), local_principal=PP_SAN)
    server = StatsEngine(REVIEWS, store=backend.store.Store(), local_principal=REVIEWS_SAN)
    peers = {
        service: client.peer(
            "outbound",
            node,
            peer_principal=san,
            cluster_name=f"outbound|9080||{FQDN[service]}",
            cluster_metadata=_cluster_md(service),
        )
        for service, node, san in (
            ("reviews", REVIEWS, REVIEWS_SAN),
            ("details", DETAILS, DETAILS_SAN),
        )
    }
    peers["tcp-out"] = client.peer(
        "outbound",
        REVIEWS,
        peer_principal=REVIEWS_SAN,
        cluster_name=f"outbound|9081||{FQDN['reviews']}",
        cluster_metadata=_cluster_md("reviews"),
    )
    for key, port in (("inbound", 9080), ("tcp-in", 9081)):
        peers[key] = server.peer(
            "inbound",
            PRODUCTPAGE,
            peer_principal=PP_SAN,
            cluster_name=f"inbound|{port}||",
            cluster_metadata=_cluster_md("reviews"),
        )
    sides = []
    for role, engine in (("client", client), ("server", server)):
        gate = PhaseGate(engine.store)
        metrics = stack.enter_context(MetricsServer(gate))
        sides.append(Side(f"{name}-{role}", engine, gate, metrics))
    return Deployment(sides[0], sides[1], peers)


@dataclass
class Mesh:
    prom: PrometheusServer
    deployments: dict[str, Deployment]


def _wait_for_totals(prom: PrometheusServer, want: dict[str, float]) -> None:
    def reached(result: list[Result]) -> bool:
        got = {r["metric"]["job"]: float(r["value"][1]) for r in result}
        return all(got.get(job) == total for job, total in want.items())

    prom.wait_for("sum by (job) (istio_requests_total)", reached)


def _phase_times(prom: PrometheusServer, side: Side, phase1: float, total: float) -> None:
    """Find t1 and t2 from the stored samples themselves (every series shares timestamps)."""
    by_time: dict[float, float] = defaultdict(float)
    for series in prom.query(f'istio_requests_total{{job="{side.job}"}}[1m]'):
        for ts, value in series["values"]:
            by_time[float(ts)] += float(value)
    seen = sorted(by_time.items())
    assert {v for _, v in seen} == {phase1, total}, f"{side.job}: a scrape saw half a phase: {seen}"
    side.t1 = max(t for t, v in seen if v == phase1)
    side.t2 = min(t for t, v in seen if v == total)
    assert side.t1 < side.t2, seen


@pytest.fixture(scope="module")
def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    backends = enabled_backends(request)
    with contextlib.ExitStack() as stack:
        deployments = {name: deploy(name, b, stack) for name, b in backends.items()}
        for d in deployments.values():
            d.record(CALLS, TCP_PHASE1)
        sides = [s for d in deployments.values() for s in (d.client, d.server)]
        targets = {s.job: f"127.0.0.1:{s.server.port}" for s in sides}
        prom = stack.enter_context(PrometheusServer(targets, tmp_path_factory.mktemp("prom")))
        phase1 = {s.job: float(len(seen_by(_reporter(s)))) for s in sides}
        _wait_for_totals(prom, phase1)

        phase2 = CALLS * PHASE2_UNITS
        random.Random(2).shuffle(phase2)
        for d in deployments.values():
            d.record(phase2, TCP_PHASE2)
        total = {job: v * (1 + PHASE2_UNITS) for job, v in phase1.items()}
        _wait_for_totals(prom, total)
        for s in sides:
            _phase_times(prom, s, phase1[s.job], total[s.job])
        yield Mesh(prom, deployments)


def _reporter(side: Side) -> str:
    return "source" if side.job.endswith("-client") else "destination"


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """conftest's backends, module-scoped so the run visits this module once (one Prometheus)."""
    return module_backend(request)


@pytest.fixture
def deployment(mesh: Mesh, backend: Backend) -> Deployment:
    return mesh.deployments[backend.name]


@pytest.fixture
def prom(mesh: Mesh) -> PrometheusServer:
    return mesh.prom


# -- reading answers -------------------------------------------------------------------------


def fill(template: str, **variables: str) -> str:
    """Grafana's substitution: ``$name`` -> value (longest names first, so none clips another)."""
    for name in sorted(variables, key=len, reverse=True):
        template = template.replace(f"${name}", variables[name])
    return template


def assert_rounded(got: float, exact: float, step: float) -> None:
    """``got`` is PromQL's ``round(exact, step)``: within half a step (plus float noise)."""
    assert abs(got - exact) <= step / 2 + 1e-9, (got, exact, step)


def assert_rate_bounds(got: float, increase: float) -> None:
    """``rate(x[1m])`` over fewer than 60 s of data: the increase extrapolated by at most half
    the scrape interval's share, then divided by the full 60 s."""
    low, high = increase / 60, 1.5 * increase / 60
    assert low * (1 - 1e-9) <= got <= high * (1 + 1e-9), (got, low, high)


# -- target health -----------------------------------------------------------------------------


def test_targets_up_and_every_sample_ingested(
    prom: PrometheusServer, deployment: Deployment
) -> None:
    for side in (deployment.client, deployment.server):
        assert scalar(prom.query(f'up{{job="{side.job}"}}')) == 1.0
        # Prometheus counted exactly the samples our exposition holds (parsed independently).
        ours = len(text_samples(side.engine.render()))
        assert scalar(prom.query(f'scrape_samples_scraped{{job="{side.job}"}}')) == ours > 0
        build = prom.query(f'istio_build{{job="{side.job}"}}')
        assert [(r["metric"]["component"], r["metric"]["tag"], r["value"][1]) for r in build] == [
            ("proxy", "1.24.0", "1")
        ]
    health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in prom.active_targets()}
    assert health[deployment.client.job] == health[deployment.server.job] == ("up", "")


# -- exact counts ------------------------------------------------------------------------------


def test_request_counts_exact_per_service_code_and_reporter(
    prom: PrometheusServer, deployment: Deployment, backend: Backend
) -> None:
    at = max(deployment.client.t2, deployment.server.t2)
    got = by_labels(
        prom.query(
            COUNTS_BY.format(selector=f'istio_requests_total{{job=~"{backend.name}-.*"}}'), at
        ),
        "destination_service",
        "response_code",
        "reporter",
    )
    units = 1 + PHASE2_UNITS
    assert got == {**code_counts("source", units), **code_counts("destination", units)}
    # Each target's last phase-1 scrape holds exactly phase 1.
    for side, reporter in ((deployment.client, "source"), (deployment.server, "destination")):
        selector = f'istio_requests_total{{job="{side.job}"}}'
        phase1 = prom.query(COUNTS_BY.format(selector=selector), side.t1)
        assert by_labels(phase1, "destination_service", "response_code", "reporter") == (
            code_counts(reporter, 1)
        )


def test_increase_over_the_phase2_scrapes_is_exact(
    prom: PrometheusServer, deployment: Deployment
) -> None:
    for side, reporter in ((deployment.client, "source"), (deployment.server, "destination")):
        query = COUNTS_BY.format(
            selector=f'increase(istio_requests_total{{job="{side.job}"}}[{side.window}])'
        )
        got = by_labels(
            prom.query(query, side.t2), "destination_service", "response_code", "reporter"
        )
        assert got == code_counts(reporter, PHASE2_UNITS)


def test_histogram_counts_and_sums_exact(prom: PrometheusServer, deployment: Deployment) -> None:
    units = 1 + PHASE2_UNITS
    for side, reporter in ((deployment.client, "source"), (deployment.server, "destination")):
        calls = seen_by(reporter)

        def total(metric: str, side: Side = side) -> float:
            return scalar(prom.query(f'sum({metric}{{job="{side.job}"}})', side.t2))

        assert total("istio_request_duration_milliseconds_count") == units * len(calls)
        assert total("istio_request_duration_milliseconds_sum") == units * sum(durations(reporter))
        assert total("istio_request_bytes_sum") == units * sum(c.request_bytes for c in calls)
        assert total("istio_response_bytes_sum") == units * sum(c.response_bytes for c in calls)
        inf = f'sum(istio_request_duration_milliseconds_bucket{{job="{side.job}",le="+Inf"}})'
        assert scalar(prom.query(inf, side.t2)) == units * len(calls)


# -- Istio Mesh Dashboard (rate over [$__rate_interval] = [1m]) -------------------------------

MESH_TRAFFIC_VOLUME = (
    'round(sum (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval])), 0.01)'
)
MESH_5XX = (
    'round(sum (rate(istio_requests_total{reporter=~"source|waypoint",response_code=~"5.."}'
    "[$__rate_interval])), 0.01)or vector(0)"
)
MESH_WORKLOAD_RATE = (
    "label_join(sum by (destination_workload,destination_workload_namespace,destination_service)"
    ' (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval])),'
    ' "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")'
)
RATE_INTERVAL = "1m"


def test_mesh_dashboard_headline_panels(prom: PrometheusServer, deployment: Deployment) -> None:
    side = deployment.client  # every mesh-wide number is client-reported

    def ask(template: str) -> float:
        promql = scoped(fill(template, __rate_interval=RATE_INTERVAL), side.job)
        return scalar(prom.query(promql, side.t2))

    calls = seen_by("source")
    increase = PHASE2_UNITS * len(calls)
    exact_volume = ask('sum (rate(istio_requests_total{reporter=~"source|waypoint"}[1m]))')
    assert_rate_bounds(exact_volume, increase)
    assert_rounded(ask(MESH_TRAFFIC_VOLUME), exact_volume, 0.01)
    ok = sum(1 for c in calls if c.code < 500)
    assert ask(MESH_SUCCESS_RATE) == pytest.approx(ok / len(calls), rel=1e-9)
    share_4xx = sum(1 for c in calls if 400 <= c.code < 500) / len(calls)
    share_5xx = sum(1 for c in calls if c.code >= 500) / len(calls)
    assert_rounded(ask(MESH_4XX), exact_volume * share_4xx, 0.01)
    assert_rounded(ask(MESH_5XX), exact_volume * share_5xx, 0.01)
    assert ask(MESH_4XX) > 0 and ask(MESH_5XX) > 0  # not the "or vector(0)" branch


def test_mesh_dashboard_workload_tables(prom: PrometheusServer, deployment: Deployment) -> None:
    side = deployment.client

    def ask(template: str, **variables: str) -> list[Result]:
        promql = fill(template, __rate_interval=RATE_INTERVAL, **variables)
        return prom.query(scoped(promql, side.job), side.t2)

    workloads = {"reviews": "reviews-v2", "details": "details-v1"}
    rates = by_labels(
        ask(MESH_WORKLOAD_RATE),
        "destination_workload",
        "destination_workload_namespace",
        "destination_service",
        "destination_workload_var",
    )
    assert set(rates) == {(w, "default", FQDN[s], f"{w}.default") for s, w in workloads.items()}
    per_service = {key[0]: value for key, value in rates.items()}
    n = {s: len(seen_by("source", s)) for s in workloads}
    assert per_service["reviews-v2"] / per_service["details-v1"] == pytest.approx(
        n["reviews"] / n["details"], rel=1e-9
    )
    for service, workload in workloads.items():
        assert_rate_bounds(per_service[workload], PHASE2_UNITS * n[service])

    success = by_labels(ask(MESH_WORKLOAD_SUCCESS), "destination_workload")
    for service, workload in workloads.items():
        calls = seen_by("source", service)
        want = sum(1 for c in calls if c.code < 500) / len(calls)
        assert success[(workload,)] == pytest.approx(want, rel=1e-9)

    for q in ("0.5", "0.9", "0.99"):
        got = by_labels(ask(MESH_WORKLOAD_QUANTILE, q=q), "destination_workload")
        for service, workload in workloads.items():
            value, lower, upper = expected_quantile(float(q), durations("source", service))
            assert lower <= got[(workload,)] <= upper
            assert got[(workload,)] == pytest.approx(value, rel=1e-9), (q, workload)

    sent, received = tcp_totals(TCP_PHASE2)["sent"], tcp_totals(TCP_PHASE2)["received"]
    tcp = {
        d: by_labels(ask(MESH_TCP, dir=d), "destination_workload", "destination_service")
        for d in ("sent", "received")
    }
    key = ("reviews-v2", FQDN["reviews"])
    assert set(tcp["sent"]) == set(tcp["received"]) == {key}
    assert_rate_bounds(tcp["sent"][key], sent)
    assert_rate_bounds(tcp["received"][key], received)
    assert tcp["sent"][key] / tcp["received"][key] == pytest.approx(sent / received, rel=1e-9)


QUANTILE_BY_LE = (
    "histogram_quantile($q, sum by (le) "
    '(rate(istio_request_duration_milliseconds_bucket{reporter="$reporter"}[1m])))'
)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_latency_quantile_lies_in_its_bucket(
    prom: PrometheusServer, deployment: Deployment, q: float
) -> None:
    for side, reporter in ((deployment.client, "source"), (deployment.server, "destination")):
        promql = scoped(fill(QUANTILE_BY_LE, q=str(q), reporter=reporter), side.job)
        got = scalar(prom.query(promql, side.t2))
        value, lower, upper = expected_quantile(q, durations(reporter))
        assert lower <= got <= upper, (reporter, q, got)
        assert got == pytest.approx(value, rel=1e-9), (reporter, q)


# -- Istio Service Dashboard (irate: exact between the two phase scrapes) -----------------------

SERVICE_DURATION = (
    "(histogram_quantile($q, sum(irate(istio_request_duration_milliseconds_bucket"
    '{reporter=~"$qrep",destination_service="$service"}[$__rate_interval])) by (le)) / 1000)'
    " or histogram_quantile($q, sum(irate(istio_request_duration_seconds_bucket"
    '{reporter=~"$qrep",destination_service="$service"}[$__rate_interval])) by (le))'
)
SERVICE_TCP_RECEIVED = (
    'sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", destination_service="$service"}'
    "[$__rate_interval]))"
)
SERVICE_TCP_SENT_TO_INCOMING = (
    'round(sum(irate(istio_tcp_sent_bytes_total{connection_security_policy="mutual_tls",'
    ' reporter="destination", destination_service="$service", destination_workload=~"$dstwl",'
    ' destination_workload_namespace=~"$dstns"}[$__rate_interval])) by (destination_workload,'
    " destination_workload_namespace), 0.001)"
)


def test_service_dashboard(prom: PrometheusServer, deployment: Deployment) -> None:
    variables = {
        "__rate_interval": RATE_INTERVAL,
        "service": FQDN["reviews"],
        "srcwl": "productpage-v1",
        "srcns": "default",
        "dstwl": "reviews-v2",
        "dstns": "default",
    }
    tcp = tcp_totals(TCP_PHASE2)
    for side, qrep in ((deployment.client, "source"), (deployment.server, "destination")):

        def ask(template: str, side: Side = side, **more: str) -> list[Result]:
            promql = fill(template, **variables, qrep=qrep, **more)
            return prom.query(scoped(promql, side.job), side.t2)

        calls = seen_by(qrep, "reviews")
        per_second = PHASE2_UNITS / side.interval  # irate: phase 2 over the scrape gap
        assert_rounded(scalar(ask(SERVICE_VOLUME)), len(calls) * per_second, 0.001)
        ok = sum(1 for c in calls if c.code < 500)
        assert scalar(ask(SERVICE_SUCCESS)) == pytest.approx(ok / len(calls), rel=1e-9)
        for q in (0.5, 0.9, 0.99):
            value, lower, upper = expected_quantile(q, durations(qrep, "reviews"))
            got = scalar(ask(SERVICE_DURATION, q=f"{q:.2f}"))
            assert lower / 1000 <= got <= upper / 1000
            assert got == pytest.approx(value / 1000, rel=1e-9), (qrep, q)
        assert scalar(ask(SERVICE_TCP_RECEIVED)) == pytest.approx(
            tcp["received"] / side.interval, rel=1e-9
        )

        # Only the server knows the connection was mutual TLS (Istio: the client says unknown).
        incoming = by_labels(
            ask(SERVICE_INCOMING_MTLS),
            "source_workload",
            "source_workload_namespace",
            "response_code",
        )
        plain = by_labels(
            ask(SERVICE_INCOMING_PLAIN),
            "source_workload",
            "source_workload_namespace",
            "response_code",
        )
        by_code = Counter(str(c.code) for c in calls)
        expected = {("productpage-v1", "default", code): n for code, n in by_code.items()}
        mtls, other = (incoming, plain) if qrep == "destination" else (plain, incoming)
        assert other == {}
        assert set(mtls) == set(expected)
        for key, n in expected.items():
            assert_rounded(mtls[key], n * per_second, 0.001)

    server = deployment.server

    def ask_server(template: str) -> list[Result]:
        return prom.query(scoped(fill(template, **variables), server.job), server.t2)

    server_calls = seen_by("destination", "reviews")
    assert_rounded(
        scalar(ask_server(SERVICE_SERVER_VOLUME)),
        len(server_calls) * PHASE2_UNITS / server.interval,
        0.001,
    )
    sent = by_labels(
        ask_server(SERVICE_TCP_SENT_TO_INCOMING),
        "destination_workload",
        "destination_workload_namespace",
    )
    assert set(sent) == {("reviews-v2", "default")}
    assert_rounded(sent[("reviews-v2", "default")], tcp["sent"] / server.interval, 0.001)


# -- Istio Workload Dashboard: outbound by destination, told apart by destination_principal ----

WORKLOAD_OUTGOING = (
    'round(sum(irate(istio_requests_total{destination_principal=~"spiffe.*",'
    ' source_workload_namespace=~"$namespace", source_workload=~"$workload", reporter="source",'
    ' destination_service=~"$dstsvc"}[5m])) by (destination_service, response_code), 0.001)'
)


def test_workload_dashboard_outgoing_requests(
    prom: PrometheusServer, deployment: Deployment
) -> None:
    side = deployment.client
    promql = fill(
        WORKLOAD_OUTGOING,
        namespace="default",
        workload="productpage-v1",
        dstsvc="|".join(FQDN.values()),  # Grafana's multi-value regex
    )
    got = by_labels(
        prom.query(scoped(promql, side.job), side.t2), "destination_service", "response_code"
    )
    want = {(svc, code): n for (svc, code, _), n in code_counts("source", PHASE2_UNITS).items()}
    assert set(got) == set(want)
    for key, n in want.items():
        assert_rounded(got[key], n / side.interval, 0.001)


# -- TCP totals --------------------------------------------------------------------------------


def test_tcp_bytes_and_connections_exact(prom: PrometheusServer, deployment: Deployment) -> None:
    phase1, phase2 = tcp_totals(TCP_PHASE1), tcp_totals(TCP_PHASE2)
    opened = {
        "phase1": len(TCP_PHASE1),
        "both": len({name for name, *_ in TCP_PHASE1 + TCP_PHASE2}),
    }
    for side, reporter in ((deployment.client, "source"), (deployment.server, "destination")):

        def total(metric: str, at: float, side: Side = side, reporter: str = reporter) -> float:
            promql = f'sum({metric}{{reporter="{reporter}"}})'
            return scalar(prom.query(scoped(promql, side.job), at))

        # After phase 1: two connections still open, but their bytes already reported.
        assert total("istio_tcp_sent_bytes_total", side.t1) == phase1["sent"]
        assert total("istio_tcp_received_bytes_total", side.t1) == phase1["received"]
        assert total("istio_tcp_connections_opened_total", side.t1) == opened["phase1"]
        assert total("istio_tcp_connections_closed_total", side.t1) == phase1["closed"]
        assert total("istio_tcp_sent_bytes_total", side.t2) == phase1["sent"] + phase2["sent"]
        assert (
            total("istio_tcp_received_bytes_total", side.t2)
            == phase1["received"] + phase2["received"]
        )
        assert total("istio_tcp_connections_opened_total", side.t2) == opened["both"]
        assert total("istio_tcp_connections_closed_total", side.t2) == opened["both"]
        services = prom.query(
            scoped("count by (destination_service) (istio_tcp_sent_bytes_total)", side.job),
            side.t2,
        )
        assert [r["metric"]["destination_service"] for r in services] == [FQDN["reviews"]]
