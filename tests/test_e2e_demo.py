"""End to end over real proxies: a real Prometheus scrapes the demo mesh's nine metrics
ports, and its answers (Istio's dashboard queries included) match the traffic this test sent.

Per backend, a :class:`~meshstats.cli.demo.DemoMesh` (an ingress gateway, apps behind mTLS
sidecars, a grpcio service among them whose calls the sidecars carry over HTTP/2, each
engine's store from that backend) runs on an event loop in a background thread; one
Prometheus scrapes all eighteen metrics ports (jobs ``c-istio-ingressgateway``, ...,
``py-recommendations-v1``). Traffic, always through the gateway into productpage:

- phase 1, ``PHASE1`` requests, sent and recorded before Prometheus starts;
- phase 2, twice as many, once every target has been scraped with phase 1.

The apps' behaviour is deterministic (reviews-v3 answers 503 to every 20th request,
reviews-v2 to every 100th, details 404 to every 10th page, which asks for a product it does
not know; ratings retires its mongodb connection after ``DB_QUERIES`` queries, and phase 1
makes exactly 39 of them) and productpage round-robins over the reviews versions, so with 60
then 120 requests every counter series grows by exactly twice its phase-1 value:
``rate(x[1m])`` then scales every series of a target by the same factor and ratios are exact
(see docs/e2e.md). The durations are real, so latency is checked through ``increase`` over
``[t1, t2]``, the last scrape with phase 1 only and the first with everything (exact, no
extrapolation), against bucket counts read from the sidecar at the same two moments, and
against the apps' service time (reviews-v3 sleeps 30 ms: its median cannot be under the
25 ms bound).

Expected counts come from the apps' own counters (what each app served, by status code, the
gRPC calls and messages each end counted, the TCP connections ratings opened and closed, and
what this test's client got back), never from the proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
    by_labels,
    enabled_backends,
    module_backend,
    scalar,
    scoped,
)
from prometheus_server import PrometheusServer, Result

from meshstats import DEFAULT_BUCKETS
from meshstats.cli.demo import (
    DETAILS,
    GATEWAY,
    MONGODB,
    NOT_FOUND_EVERY,
    PRODUCTPAGE,
    RATINGS,
    RECOMMENDATIONS,
    RECOMMENDED,
    REVIEWS,
    SHOWN,
    DemoMesh,
    Workload,
    quantile,
)
from meshstats.cli.demo_apps import HttpApp

pytestmark = pytest.mark.e2e
T = TypeVar("T")

PHASE1 = 60  # requests into productpage; 20 per reviews version, reviews-v3 fails one
IN_FLIGHT = 4
#: Queries per mongodb connection: phase 1's 39 ratings queries are 3 whole connections,
#: so the connection counters double in phase 2 like every other series.
DB_QUERIES = 13
PRODUCTPAGE_SA = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
RECOMMENDATIONS_SA = "spiffe://cluster.local/ns/default/sa/bookinfo-recommendations"
HTTP_WORKLOADS = (PRODUCTPAGE, DETAILS, *REVIEWS, RATINGS)  # behind a sidecar, served HTTP
#: Who calls each service through its client sidecar (reporter="source").
CALLERS = {
    DETAILS.service_host: PRODUCTPAGE,
    REVIEWS[0].service_host: PRODUCTPAGE,
    RATINGS.service_host: REVIEWS[1],  # and REVIEWS[2]
}
Key = tuple[str, str, str]  # (destination_service, response_code, reporter)


class LoopThread:
    """An event loop running in a daemon thread, so sidecars serve while the test waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _minus(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return a[0] - b[0], a[1] - b[1], a[2] - b[2]


@dataclass(frozen=True)
class AppCounts:
    """What the apps counted, by workload and status code (``"ingress"``: our client)."""

    served: dict[str, Counter[int]]
    ingress: Counter[int]
    db_bytes: tuple[int, int]  # ratings wrote / read on its mongodb connections
    db_conns: tuple[int, int]  # ratings opened / closed
    grpc_client: tuple[int, int, int]  # productpage: calls finished, messages sent / received
    grpc_server: tuple[int, int, int]  # recommendations: calls served, messages read / written

    def __sub__(self, other: AppCounts) -> AppCounts:
        return AppCounts(
            {k: v - other.served[k] for k, v in self.served.items()},
            self.ingress - other.ingress,
            (self.db_bytes[0] - other.db_bytes[0], self.db_bytes[1] - other.db_bytes[1]),
            (self.db_conns[0] - other.db_conns[0], self.db_conns[1] - other.db_conns[1]),
            _minus(self.grpc_client, other.grpc_client),
            _minus(self.grpc_server, other.grpc_server),
        )

    def requests(self) -> dict[Key, float]:
        """Istio's request counts as both reporters must show them, from the apps' counts:
        every HTTP service is called through a proxy (productpage through the gateway), the
        gRPC service through productpage's sidecar (HTTP status 200, whatever gRPC says)."""
        out: dict[Key, float] = defaultdict(float)
        for workload in HTTP_WORKLOADS:
            served = self.served[workload.name]
            for code, n in served.items():
                if n == 0:
                    continue
                out[workload.service_host, str(code), "destination"] += n
                out[workload.service_host, str(code), "source"] += n
        out[RECOMMENDATIONS.service_host, "200", "destination"] += self.grpc_server[0]
        out[RECOMMENDATIONS.service_host, "200", "source"] += self.grpc_client[0]
        return dict(out)


@dataclass
class Side:
    """One mesh (one backend) and what Prometheus saw of it."""

    backend: str
    mesh: DemoMesh
    phases: list[AppCounts] = field(default_factory=list)
    # bucket counts of productpage -> reviews-v3 (reporter=source) at each phase's end
    buckets: list[list[int]] = field(default_factory=list)
    t1: dict[str, float] = field(default_factory=dict)  # per job: last scrape of phase 1
    t2: dict[str, float] = field(default_factory=dict)  # per job: first scrape of all

    def job(self, workload: Workload) -> str:
        return f"{self.backend}-{workload.name}"

    def window(self, workload: Workload) -> str:
        job = self.job(workload)
        return f"{round((self.t2[job] - self.t1[job]) * 1000)}ms"


async def send(mesh: DemoMesh, n: int) -> None:
    for _ in range(n // IN_FLIGHT):
        await asyncio.gather(
            *(
                mesh.client.get(mesh.entry, "/productpage", "productpage:9080")
                for _ in range(IN_FLIGHT)
            )
        )
    await mesh.settle()


async def app_counts(mesh: DemoMesh) -> AppCounts:
    served = {
        name: Counter(app.served) for name, app in mesh.apps.items() if isinstance(app, HttpApp)
    }
    ingress = Counter({code: n for (_, code), n in mesh.client.answered.items()})
    client, server = mesh.recommender, mesh.recommendations
    assert client is not None and server is not None  # grpcio is a test requirement
    return AppCounts(
        served,
        ingress,
        (mesh.db.bytes_out, mesh.db.bytes_in),
        (mesh.db.connections, mesh.db.closed),
        (client.calls, client.messages_out, client.messages_in),
        (server.served, server.messages_in, server.messages_out),
    )


async def reviews_v3_buckets(mesh: DemoMesh) -> list[int]:
    return list(mesh.edge_stats(PRODUCTPAGE, REVIEWS[2]).buckets or [])


def end_phase(loop: LoopThread, side: Side, n: int) -> None:
    loop.call(send(side.mesh, n))
    side.phases.append(loop.call(app_counts(side.mesh)))
    side.buckets.append(loop.call(reviews_v3_buckets(side.mesh)))


def _wait_until_scraped(prom: PrometheusServer, sides: list[Side], phase: int) -> None:
    """Every job's stored totals are the phase's, for each kind of counter the tests read:
    requests on both reporters, TCP bytes and closed connections (both TCP sidecars), gRPC
    response messages (both ends)."""

    def totals(query: str, want: dict[str, float]) -> None:
        def reached(result: list[Result]) -> bool:
            got = {r["metric"]["job"]: float(r["value"][1]) for r in result}
            return all(got.get(job) == total for job, total in want.items())

        prom.wait_for(query, reached)

    counts = [(side, side.phases[phase]) for side in sides]
    served: dict[str, float] = {}
    calls: dict[str, float] = {}
    for side, c in counts:
        for w in HTTP_WORKLOADS:
            served[side.job(w)] = float(sum(c.served[w.name].values()))
        served[side.job(RECOMMENDATIONS)] = float(c.grpc_server[0])
        calls[side.job(GATEWAY)] = float(sum(c.ingress.values()))
        calls[side.job(PRODUCTPAGE)] = float(
            sum(sum(c.served[w.name].values()) for w in (DETAILS, *REVIEWS)) + c.grpc_client[0]
        )
        for r in REVIEWS[1:]:
            calls[side.job(r)] = float(c.served[r.name][200])  # each ok review asks ratings
    totals('sum by (job) (istio_requests_total{reporter="destination"})', served)
    totals('sum by (job) (istio_requests_total{reporter="source"})', calls)
    for family, value in (("received_bytes", 0), ("connections_closed", 1)):
        totals(
            f"sum by (job) (istio_tcp_{family}_total)",
            {
                side.job(w): float((c.db_bytes, c.db_conns)[value][value])
                for side, c in counts
                for w in (RATINGS, MONGODB)
            },
        )
    totals(
        "sum by (job) (istio_response_messages_total)",
        {
            side.job(w): float(c.grpc_client[2] if w is PRODUCTPAGE else c.grpc_server[2])
            for side, c in counts
            for w in (PRODUCTPAGE, RECOMMENDATIONS)
        },
    )


def _phase_times(prom: PrometheusServer, side: Side) -> None:
    """t1 and t2 per job: the last scrape at which every ``istio_*`` series of the job still
    held its value of the first scrape (phase 1: Prometheus started after it), and the first
    at which every series held its final value.

    Every series, not one main counter: a scrape during phase 2 can find productpage's
    inbound count still at phase 1 while its outbound calls of the same request are
    already counted, and such a scrape is no phase-1 scrape."""
    for workload in SHOWN:
        job = side.job(workload)
        by_time: dict[float, dict[tuple[tuple[str, str], ...], str]] = defaultdict(dict)
        for series in prom.query(f'{{job="{job}",__name__=~"istio_.*"}}[5m]'):
            key = tuple(sorted(series["metric"].items()))
            for ts, value in series["values"]:
                by_time[float(ts)][key] = value
        seen = sorted(by_time)
        first, last = by_time[seen[0]], by_time[seen[-1]]
        assert first != last, job
        side.t1[job] = max(t for t in seen if by_time[t] == first)
        side.t2[job] = min(t for t in seen if by_time[t] == last)
        assert side.t1[job] < side.t2[job], (job, seen)


@dataclass
class Run:
    prom: PrometheusServer
    sides: dict[str, Side]


@pytest.fixture(scope="module")
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    backends = enabled_backends(request)
    loop = LoopThread()
    sides: dict[str, Side] = {}

    def stop(mesh: DemoMesh) -> None:
        loop.call(mesh.stop())

    try:
        with contextlib.ExitStack() as stack:
            for name, b in backends.items():
                mesh = DemoMesh(
                    admin_port=0,
                    jitter=0.0,
                    store_factory=b.store.Store,
                    grpc=True,
                    db_queries_per_connection=DB_QUERIES,
                )
                loop.call(mesh.start())
                stack.callback(stop, mesh)
                sides[name] = Side(name, mesh)
                end_phase(loop, sides[name], PHASE1)
            targets = {
                f"{side.backend}-{name}": url.removeprefix("http://")
                for side in sides.values()
                for name, url in side.mesh.metrics_urls().items()
            }
            assert len(targets) == len(sides) * len(SHOWN)
            prom = stack.enter_context(PrometheusServer(targets, tmp_path_factory.mktemp("prom")))
            _wait_until_scraped(prom, list(sides.values()), 0)
            for side in sides.values():
                end_phase(loop, side, 2 * PHASE1)
            _wait_until_scraped(prom, list(sides.values()), 1)
            for side in sides.values():
                _phase_times(prom, side)
            yield Run(prom, sides)
    finally:
        loop.close()


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """conftest's backends, module-scoped so the run visits this module once (one Prometheus)."""
    return module_backend(request)


@pytest.fixture
def side(run: Run, backend: Backend) -> Side:
    return run.sides[backend.name]


@pytest.fixture
def prom(run: Run) -> PrometheusServer:
    return run.prom


# -- the traffic the test sent, as the apps saw it ---------------------------------------------


def test_the_apps_saw_the_traffic_we_sent(side: Side) -> None:
    """The premise of every other check: our requests, all answered, evenly spread."""
    phase1, total = side.phases
    assert phase1.ingress == Counter({200: PHASE1})
    assert total.ingress == Counter({200: 3 * PHASE1})
    for counts, sent in ((phase1, PHASE1), (total - phase1, 2 * PHASE1)):
        missing = sent // NOT_FOUND_EVERY
        assert counts.served[DETAILS.name] == Counter({200: sent - missing, 404: missing})
        assert [sum(counts.served[r.name].values()) for r in REVIEWS] == [sent // 3] * 3
        assert counts.grpc_client == (sent, sent, RECOMMENDED * sent)
        assert counts.grpc_server == (sent, sent, RECOMMENDED * sent)
    # Every app-level count doubled in phase 2: what makes rate() ratios exact.
    phase2 = total - phase1
    for name, served in phase1.served.items():
        assert phase2.served[name] == Counter({c: 2 * n for c, n in served.items()}), name
    assert phase1.served[REVIEWS[2].name][503] == 1
    assert phase2.db_bytes == (2 * phase1.db_bytes[0], 2 * phase1.db_bytes[1])
    # 39 then 78 ratings queries: whole connections of DB_QUERIES, every one closed
    assert phase1.served[RATINGS.name][200] == 3 * DB_QUERIES
    assert (phase1.db_conns, phase2.db_conns) == ((3, 3), (6, 6))


# -- exact counts --------------------------------------------------------------------------------


def test_request_counts_exact_per_service_code_and_reporter(
    prom: PrometheusServer, side: Side
) -> None:
    at = max(side.t2.values())
    result = prom.query(
        COUNTS_BY.format(selector=f'istio_requests_total{{job=~"{side.backend}-.*"}}'), at
    )
    got = by_labels(result, "destination_service", "response_code", "reporter")
    assert got == side.phases[1].requests()
    # ... and what we know without the apps: every request was ours, or caused by ours.
    sent = 3 * PHASE1
    for reporter in ("source", "destination"):  # the gateway's and productpage's own
        assert got[PRODUCTPAGE.service_host, "200", reporter] == sent
        assert got[RECOMMENDATIONS.service_host, "200", reporter] == sent  # gRPC: HTTP 200
        assert got[DETAILS.service_host, "404", reporter] == sent // NOT_FOUND_EVERY
    assert got[DETAILS.service_host, "200", "source"] == sent - sent // NOT_FOUND_EVERY
    reviews = sum(
        v for (svc, _, rep), v in got.items() if svc == REVIEWS[0].service_host and rep == "source"
    )
    assert reviews == sent


def test_each_reporter_is_the_right_proxy(prom: PrometheusServer, side: Side) -> None:
    """reporter=source comes from the caller's proxy (the gateway, a client sidecar; for
    gRPC too), destination from the callee's."""
    result = prom.query(
        f"sum by (job, reporter, source_workload, destination_workload) "
        f'(istio_requests_total{{job=~"{side.backend}-.*"}})',
        max(side.t2.values()),
    )
    got = by_labels(result, "job", "reporter", "source_workload", "destination_workload")
    total = side.phases[1].served
    b = side.backend
    sent = float(3 * PHASE1)
    want: dict[tuple[str, ...], float] = {
        (f"{b}-istio-ingressgateway", "source", "istio-ingressgateway", "productpage-v1"): sent,
        (f"{b}-productpage-v1", "destination", "istio-ingressgateway", "productpage-v1"): sent,
        (f"{b}-productpage-v1", "source", "productpage-v1", "details-v1"): sent,
        (f"{b}-details-v1", "destination", "productpage-v1", "details-v1"): sent,
        (f"{b}-productpage-v1", "source", "productpage-v1", "recommendations-v1"): sent,
        (f"{b}-recommendations-v1", "destination", "productpage-v1", "recommendations-v1"): sent,
    }
    for r in REVIEWS:
        n = float(sum(total[r.name].values()))
        want[f"{b}-productpage-v1", "source", "productpage-v1", r.name] = n
        want[f"{b}-{r.name}", "destination", "productpage-v1", r.name] = n
    for r in REVIEWS[1:]:
        ok = float(total[r.name][200])  # only successful reviews call ratings
        want[f"{b}-{r.name}", "source", r.name, "ratings-v1"] = ok
        want[f"{b}-ratings-v1", "destination", r.name, "ratings-v1"] = ok
    assert got == want


def test_increase_over_phase2_scrapes_is_exact(prom: PrometheusServer, side: Side) -> None:
    phase2 = (side.phases[1] - side.phases[0]).requests()
    got: dict[tuple[str, ...], float] = defaultdict(float)
    for workload in (GATEWAY, *HTTP_WORKLOADS, RECOMMENDATIONS):
        job = side.job(workload)
        selector = f'increase(istio_requests_total{{job="{job}"}}[{side.window(workload)}])'
        result = prom.query(COUNTS_BY.format(selector=selector), side.t2[job])
        for key, value in by_labels(
            result, "destination_service", "response_code", "reporter"
        ).items():
            got[key] += value
    assert got == phase2


def test_tcp_bytes_and_connections_exact(prom: PrometheusServer, side: Side) -> None:
    """ratings retires its mongodb connection every DB_QUERIES queries: both sidecars count
    each connection opened and closed, and the bytes, as ratings counted them."""
    wrote, read = side.phases[1].db_bytes
    opened, closed = side.phases[1].db_conns
    opened2, closed2 = (side.phases[1] - side.phases[0]).db_conns
    assert closed == opened > 1
    for workload, reporter in ((RATINGS, "source"), (MONGODB, "destination")):
        job = side.job(workload)

        def total(metric: str, job: str = job, reporter: str = reporter) -> float:
            q = f'sum({metric}{{job="{job}",reporter="{reporter}"}}) or vector(0)'
            return scalar(prom.query(q))  # now: the fixture waited for the final bytes

        def increase(metric: str, job: str = job, workload: Workload = workload) -> float:
            q = f'sum(increase({metric}{{job="{job}"}}[{side.window(workload)}]))'
            return scalar(prom.query(q, side.t2[job]))

        assert total("istio_tcp_received_bytes_total") == wrote  # from ratings (downstream)
        assert total("istio_tcp_sent_bytes_total") == read
        assert total("istio_tcp_connections_opened_total") == opened
        assert total("istio_tcp_connections_closed_total") == closed
        assert increase("istio_tcp_connections_opened_total") == opened2
        assert increase("istio_tcp_connections_closed_total") == closed2
        services = prom.query(
            f'count by (destination_service) (istio_tcp_sent_bytes_total{{job="{job}"}})'
        )
        assert [r["metric"]["destination_service"] for r in services] == [MONGODB.service_host]


def test_grpc_calls_and_messages_exact(prom: PrometheusServer, side: Side) -> None:
    """Both ends of the gRPC edge, each a sidecar: calls as Envoy reports gRPC (protocol
    grpc, HTTP 200, the gRPC status from the trailers, no response flag), every message each
    app counted, exactly, and in phase 2's window; each sidecar names the other end by its
    verified certificate, and only the destination reports the mTLS policy (as Istio)."""
    counts, phase2 = side.phases[1], side.phases[1] - side.phases[0]
    ends = (
        (PRODUCTPAGE, "source", counts.grpc_client, phase2.grpc_client),
        (RECOMMENDATIONS, "destination", counts.grpc_server, phase2.grpc_server),
    )
    for workload, reporter, (calls, requests, responses), (_, requests2, responses2) in ends:
        job = side.job(workload)
        at = side.t2[job]
        selector = (
            f'{{job="{job}",reporter="{reporter}",destination_workload="recommendations-v1"}}'
        )
        labels = ("request_protocol", "response_code", "grpc_response_status",
                  "response_flags", "source_principal", "destination_principal",
                  "connection_security_policy")  # fmt: skip
        by_status = by_labels(
            prom.query(f"sum by ({', '.join(labels)}) (istio_requests_total{selector})", at),
            *labels,
        )
        policy = "mutual_tls" if reporter == "destination" else "unknown"
        assert by_status == {
            ("grpc", "200", "0", "-", PRODUCTPAGE_SA, RECOMMENDATIONS_SA, policy): calls
        }, reporter
        for family, total, phase2_total in (
            ("request", requests, requests2),
            ("response", responses, responses2),
        ):
            metric = f"istio_{family}_messages_total{selector}"
            assert scalar(prom.query(f"sum({metric})", at)) == total, (reporter, family)
            window = f"[{side.window(workload)}]"
            got = scalar(prom.query(f"sum(increase({metric}{window}))", at))
            assert got == phase2_total, (reporter, family)
        # No Istio dashboard reads the message counters; their rates, per target, keep
        # the apps' ratio of responses to requests exactly (every series doubled).
        ratio = scalar(
            prom.query(
                f"sum(rate(istio_response_messages_total{selector}[1m])) / "
                f"sum(rate(istio_request_messages_total{selector}[1m]))",
                at,
            )
        )
        assert ratio == pytest.approx(RECOMMENDED, rel=1e-9)


# -- latency ------------------------------------------------------------------------------------


def test_histogram_quantile_is_in_the_right_bucket(prom: PrometheusServer, side: Side) -> None:
    """Phase 2's p50/p99 of productpage -> reviews-v3, exact over [t1, t2]."""
    job = side.job(PRODUCTPAGE)
    deltas = [b - a for a, b in zip(side.buckets[0], side.buckets[1])]
    assert sum(deltas) == 2 * PHASE1 // 3
    bounds = tuple(DEFAULT_BUCKETS)
    got = {}
    for q in (0.5, 0.99):
        promql = (
            f"histogram_quantile({q}, sum by (le) (increase(istio_request_duration_milliseconds_"
            f'bucket{{job="{job}",reporter="source",destination_workload="reviews-v3"}}'
            f"[{side.window(PRODUCTPAGE)}])))"
        )
        got[q] = scalar(prom.query(promql, side.t2[job]))
        assert got[q] == pytest.approx(quantile(q, bounds, tuple(deltas)), rel=1e-9)
    # reviews-v3 sleeps 30 ms before answering: no request can land under the 25 ms bound.
    assert deltas[: bounds.index(25) + 1] == [0] * (bounds.index(25) + 1)
    assert 25 < got[0.5] <= got[0.99]


# -- Istio's dashboards (queries verbatim from shared/reference/istio-dashboards.md) -------------

MESH_VOLUME = (
    'round(sum (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval])), 0.01)'
)
MESH_5XX = MESH_4XX.replace('"4.."', '"5.."')
MESH_WORKLOAD_REQUESTS = (
    "label_join(sum by (destination_workload,destination_workload_namespace,destination_service)"
    ' (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval])),'
    ' "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")'
)


#: Kiali's outgoing edges (K3), its Go fmt string filled for istio_requests_total, the source
#: reporter, a namespace, a 600 s window, its HTTP/gRPC group-by and the `> 0` suffix,
#: wrapped in round(..., 0.001) as Kiali's PromQuery does.
KIALI_GROUP_BY = (
    "source_cluster,source_workload_namespace,source_workload,source_canonical_service,"
    "source_canonical_revision,destination_cluster,destination_service_namespace,"
    "destination_service,destination_service_name,destination_workload_namespace,"
    "destination_workload,destination_canonical_service,destination_canonical_revision,"
    "request_protocol,response_code,grpc_response_status,response_flags"
)
KIALI_OUTGOING = (
    'round(sum(rate(istio_requests_total{reporter="source",source_workload_namespace="$ns"}'
    f" [600s])) by ({KIALI_GROUP_BY}) > 0,0.001)"
)


def fill(template: str, **variables: str) -> str:
    for name in sorted(variables, key=len, reverse=True):
        template = template.replace(f"${name}", variables[name])
    return template


def test_mesh_dashboard_over_the_demo(prom: PrometheusServer, side: Side) -> None:
    """Per client proxy (one target each: one extrapolation factor), ratios are exact."""
    job = side.job(PRODUCTPAGE)

    def ask(template: str, job: str = job, **variables: str) -> list[Result]:
        promql = fill(template, __rate_interval="1m", **variables)
        return prom.query(scoped(promql, job), side.t2[job])

    served = side.phases[1].served
    calls = {w.name: sum(served[w.name].values()) for w in (DETAILS, *REVIEWS)}
    ok = {name: sum(n for c, n in served[name].items() if c < 500) for name in calls}
    calls[RECOMMENDATIONS.name] = ok[RECOMMENDATIONS.name] = side.phases[1].grpc_client[0]
    assert scalar(ask(MESH_SUCCESS_RATE)) == pytest.approx(
        sum(ok.values()) / sum(calls.values()), rel=1e-9
    )
    success = by_labels(ask(MESH_WORKLOAD_SUCCESS), "destination_workload")
    assert success == pytest.approx({(n,): ok[n] / calls[n] for n in calls}, rel=1e-9)
    assert success[("reviews-v3",)] < 1.0  # the injected faults show
    assert success[("details-v1",)] == 1.0  # a 404 is no failure to the dashboards

    p50 = by_labels(ask(MESH_WORKLOAD_QUANTILE, q="0.5"), "destination_workload_var")
    assert set(p50) == {(f"{n}.default",) for n in calls}
    assert p50[("reviews-v3.default",)] > 25  # 30 ms of service time, at least

    ratings = side.job(RATINGS)
    tcp = {
        d: by_labels(
            ask(MESH_TCP, job=ratings, dir=d), "destination_workload", "destination_service"
        )
        for d in ("sent", "received")
    }
    key = ("mongodb-v1", MONGODB.service_host)
    assert set(tcp["sent"]) == set(tcp["received"]) == {key}
    wrote, read = side.phases[1].db_bytes
    assert tcp["sent"][key] / tcp["received"][key] == pytest.approx(read / wrote, rel=1e-9)


def unrounded(panel: str) -> str:
    """A ``round(x, 0.01)[or vector(0)]`` panel's ``x``: exact ratios need the raw rates."""
    match = re.fullmatch(r"round\((.*), 0\.01\)(or vector\(0\))?", panel)
    assert match is not None, panel
    return match[1]


def test_mesh_dashboard_4xx_and_5xx_panels(prom: PrometheusServer, side: Side) -> None:
    """The 4xxs and 5xxs panels beside Traffic Volume, over productpage's outbound: the
    404s details answered and the reviews' 503s, as shares of the calls the apps counted."""
    job = side.job(PRODUCTPAGE)

    def ask(template: str) -> float:
        return scalar(prom.query(scoped(fill(template, __rate_interval="1m"), job), side.t2[job]))

    served = side.phases[1].served
    calls = sum(sum(served[w.name].values()) for w in (DETAILS, *REVIEWS))
    calls += side.phases[1].grpc_client[0]
    by_class = Counter(
        code // 100 for w in (DETAILS, *REVIEWS) for code in served[w.name].elements()
    )
    assert by_class[4] == 3 * PHASE1 // NOT_FOUND_EVERY and by_class[5] >= 3
    volume = ask(unrounded(MESH_VOLUME))
    for panel, share in ((MESH_4XX, by_class[4] / calls), (MESH_5XX, by_class[5] / calls)):
        raw = ask(unrounded(panel))
        assert raw / volume == pytest.approx(share, rel=1e-9)
        assert ask(panel) == pytest.approx(raw, abs=0.005 + 1e-9) and ask(panel) > 0
    assert ask(MESH_VOLUME) == pytest.approx(volume, abs=0.005 + 1e-9)


def test_mesh_dashboard_shows_the_entry_edge(prom: PrometheusServer, side: Side) -> None:
    """The mesh dashboard reads client-reported series only: productpage, which nothing in
    the mesh calls, has a row because the ingress gateway reports its calls. Over every job
    of the mesh, the HTTP/gRPC workloads table lists each service called, gRPC included,
    and the gateway's job alone makes productpage's row."""
    pattern = f"{side.backend}-.*"
    at = max(side.t2.values())

    def ask(template: str, job: str, **variables: str) -> list[Result]:
        promql = scoped(fill(template, __rate_interval="1m", **variables), job)
        if job == pattern:
            promql = promql.replace(f'job="{pattern}"', f'job=~"{pattern}"')
        return prom.query(promql, at)

    rows = by_labels(
        ask(MESH_WORKLOAD_REQUESTS, pattern), "destination_workload", "destination_service"
    )
    called = (PRODUCTPAGE, DETAILS, *REVIEWS, RECOMMENDATIONS, RATINGS)
    assert set(rows) == {(w.name, w.service_host) for w in called}
    assert all(v > 0 for v in rows.values())
    entry = by_labels(
        ask(MESH_WORKLOAD_REQUESTS, side.job(GATEWAY)),
        "destination_workload",
        "destination_service",
    )
    key = (PRODUCTPAGE.name, PRODUCTPAGE.service_host)
    assert entry == {key: rows[key]}
    # Success per workload: series of one target each, but ratings' (two callers); its
    # requests all succeeded, so every ratio is exact however the targets extrapolate.
    success = by_labels(ask(MESH_WORKLOAD_SUCCESS, pattern), "destination_workload")
    served = side.phases[1].served
    want = {
        (w.name,): sum(n for c, n in served[w.name].items() if c < 500)
        / sum(served[w.name].values())
        for w in (PRODUCTPAGE, DETAILS, *REVIEWS, RATINGS)
    }
    want[(RECOMMENDATIONS.name,)] = 1.0
    assert success == pytest.approx(want, rel=1e-9)
    assert by_labels(ask(MESH_TCP, pattern, dir="sent"), "destination_workload") == {
        (MONGODB.name,): pytest.approx(by_labels(
            ask(MESH_TCP, side.job(RATINGS), dir="sent"), "destination_workload"
        )[(MONGODB.name,)], rel=1e-12),
    }  # fmt: skip


def test_kiali_outgoing_edges(prom: PrometheusServer, side: Side) -> None:
    """Kiali's outgoing-edge query: the gateway's edge from istio-system, and productpage's
    gRPC edge told apart by request_protocol and grpc_response_status, as Kiali reads them."""

    def edges(namespace: str, job: str) -> dict[tuple[str, ...], float]:
        result = prom.query(scoped(fill(KIALI_OUTGOING, ns=namespace), job), side.t2[job])
        labels = ("source_workload", "destination_workload", "request_protocol",
                  "response_code", "grpc_response_status", "response_flags")  # fmt: skip
        for r in result:  # every label Kiali requires is there (an absent one drops the edge)
            assert set(KIALI_GROUP_BY.split(",")) - {"grpc_response_status"} <= set(r["metric"])
        return by_labels(result, *labels)

    gateway = edges("istio-system", side.job(GATEWAY))
    assert list(gateway) == [("istio-ingressgateway", "productpage-v1", "http", "200", "", "-")]
    outgoing = edges("default", side.job(PRODUCTPAGE))
    grpc = outgoing[("productpage-v1", "recommendations-v1", "grpc", "200", "0", "-")]
    details = sum(v for k, v in outgoing.items() if k[1] == "details-v1")
    assert {k[3] for k in outgoing if k[1] == "details-v1"} == {"200", "404"}
    # as many gRPC calls as details requests (one each per page), rounded to 0.001 by Kiali
    assert grpc == pytest.approx(details, abs=0.002) and grpc > 0
    assert {k[2] for k in outgoing} == {"http", "grpc"}


#: Kiali's incoming edges (K2), filled as KIALI_OUTGOING is.
KIALI_INCOMING = (
    'round(sum(rate(istio_requests_total{reporter="destination",'
    f'destination_workload_namespace="$ns"}} [600s])) by ({KIALI_GROUP_BY}) > 0,0.001)'
)


def test_service_dashboard_and_kiali_over_the_grpc_edge(prom: PrometheusServer, side: Side) -> None:
    """recommendations' service dashboard and Kiali's incoming edges over the series the two
    sidecars report for the gRPC edge: both reporters' volume, every call a success, the
    calls from productpage over mTLS as the server's sidecar saw them (the client sidecar's,
    as Istio's, say ``unknown``: the panel's non-mTLS twin shows them), and the edge as
    Kiali draws it, gRPC status and all."""
    pattern = f"{side.backend}-.*"
    host = RECOMMENDATIONS.service_host

    def settled(workload: Workload, reporter: str) -> float:
        """The first scrape of ``workload`` with the edge's final count: irate reads the last
        two scrapes, which differ there (later, with the traffic over, irate says 0)."""
        job = side.job(workload)
        (series,) = prom.query(  # one series: every call has the same labels
            f'istio_requests_total{{job="{job}",reporter="{reporter}",'
            f'destination_workload="{RECOMMENDATIONS.name}"}}[5m]',
            max(side.t2.values()),
        )
        final = series["values"][-1][1]
        return min(float(ts) for ts, value in series["values"] if value == final)

    at = {
        "source": settled(PRODUCTPAGE, "source"),
        "destination": settled(RECOMMENDATIONS, "destination"),
    }
    at["source|destination"] = max(at.values())

    def ask(template: str, qrep: str = "destination") -> list[Result]:
        promql = fill(template, __rate_interval="1m", service=host, qrep=qrep, srcwl=".*",
                      srcns=".*")  # fmt: skip
        return prom.query(
            scoped(promql, pattern).replace(f'job="{pattern}"', f'job=~"{pattern}"'), at[qrep]
        )

    for qrep in ("source", "destination", "source|destination"):
        assert scalar(ask(SERVICE_VOLUME, qrep)) > 0, qrep
        assert scalar(ask(SERVICE_SUCCESS, qrep)) == 1.0, qrep  # every call answered OK
    assert scalar(ask(SERVICE_SERVER_VOLUME)) > 0
    caller = ("productpage-v1", "default", "200")
    by_source = ("source_workload", "source_workload_namespace", "response_code")
    assert list(by_labels(ask(SERVICE_INCOMING_MTLS), *by_source)) == [caller]
    assert ask(SERVICE_INCOMING_PLAIN) == []
    assert ask(SERVICE_INCOMING_MTLS, "source") == []
    assert list(by_labels(ask(SERVICE_INCOMING_PLAIN, "source"), *by_source)) == [caller]

    job = side.job(RECOMMENDATIONS)
    result = prom.query(scoped(fill(KIALI_INCOMING, ns="default"), job), side.t2[job])
    labels = ("source_workload", "destination_workload", "destination_service",
              "request_protocol", "response_code", "grpc_response_status",
              "response_flags")  # fmt: skip
    for r in result:  # every label Kiali requires is there
        assert set(KIALI_GROUP_BY.split(",")) <= set(r["metric"])
    edges = by_labels(result, *labels)
    assert list(edges) == [("productpage-v1", "recommendations-v1", host, "grpc", "200", "0", "-")]
    assert list(edges.values())[0] > 0
