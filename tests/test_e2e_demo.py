"""End to end over real sidecars: a real Prometheus scrapes the demo mesh's seven sidecars,
and its answers (Istio's dashboard queries included) match the traffic this test sent.

Per backend, a :class:`~meshstats.cli.demo.DemoMesh` (apps behind mTLS sidecars, each
sidecar's store from that backend) runs on an event loop in a background thread; one
Prometheus scrapes all fourteen admin ports (jobs ``c-productpage-v1``, ...,
``py-mongodb-v1``). Traffic, always into productpage from outside the mesh:

- phase 1, ``PHASE1`` requests, sent and recorded before Prometheus starts;
- phase 2, twice as many, once every target has been scraped with phase 1.

The apps' failures are deterministic (reviews-v3 answers 503 to every 20th request, reviews-v2
to every 100th) and productpage round-robins over the reviews versions, so with 60 then 120
requests every counter series grows by exactly twice its phase-1 value: ``rate(x[1m])`` then
scales every series of a target by the same factor and ratios are exact (see docs/e2e.md).
The durations are real, so latency is checked through ``increase`` over ``[t1, t2]``, the
last scrape with phase 1 only and the first with everything (exact, no extrapolation),
against bucket counts read from the sidecar at the same two moments, and against the apps'
service time (reviews-v3 sleeps 30 ms: its median cannot be under the 25 ms bound).

Expected counts come from the apps' own counters (what each app served, by status code, and
what this test's client got back), never from the sidecars.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter, defaultdict
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from conftest import Backend
from e2e_support import BACKEND_PARAMS, enabled_backends, module_backend, scoped
from prometheus_server import PrometheusServer, Result

from meshstats import DEFAULT_BUCKETS
from meshstats.cli.demo import (
    DETAILS,
    MONGODB,
    PRODUCTPAGE,
    RATINGS,
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
HTTP_WORKLOADS = (PRODUCTPAGE, DETAILS, *REVIEWS, RATINGS)
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


@dataclass(frozen=True)
class AppCounts:
    """What the apps counted, by workload and status code (``"ingress"``: our client)."""

    served: dict[str, Counter[int]]
    ingress: Counter[int]
    db_bytes: tuple[int, int]  # ratings wrote / read on its mongodb connection

    def __sub__(self, other: AppCounts) -> AppCounts:
        return AppCounts(
            {k: v - other.served[k] for k, v in self.served.items()},
            self.ingress - other.ingress,
            (self.db_bytes[0] - other.db_bytes[0], self.db_bytes[1] - other.db_bytes[1]),
        )

    def requests(self) -> dict[Key, float]:
        """Istio's request counts as both reporters must show them, from the apps' counts."""
        out: dict[Key, float] = defaultdict(float)
        for workload in HTTP_WORKLOADS:
            served = self.served[workload.name]
            for code, n in served.items():
                if n == 0:
                    continue
                out[workload.service_host, str(code), "destination"] += n
                if workload is not PRODUCTPAGE:  # productpage's caller is outside the mesh
                    out[workload.service_host, str(code), "source"] += n
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
    return AppCounts(served, ingress, (mesh.db.bytes_out, mesh.db.bytes_in))


async def reviews_v3_buckets(mesh: DemoMesh) -> list[int]:
    return list(mesh.edge_stats(PRODUCTPAGE, REVIEWS[2]).buckets or [])


def end_phase(loop: LoopThread, side: Side, n: int) -> None:
    loop.call(send(side.mesh, n))
    side.phases.append(loop.call(app_counts(side.mesh)))
    side.buckets.append(loop.call(reviews_v3_buckets(side.mesh)))


def _wait_until_scraped(prom: PrometheusServer, sides: list[Side], phase: int) -> None:
    """Every job's stored totals are the phase's: requests each HTTP app served (its own
    sidecar, reporter=destination), bytes ratings wrote to mongodb (both TCP sidecars)."""

    def totals(query: str, want: dict[str, float]) -> None:
        def reached(result: list[Result]) -> bool:
            got = {r["metric"]["job"]: float(r["value"][1]) for r in result}
            return all(got.get(job) == total for job, total in want.items())

        prom.wait_for(query, reached)

    totals(
        'sum by (job) (istio_requests_total{reporter="destination"})',
        {
            side.job(w): float(sum(side.phases[phase].served[w.name].values()))
            for side in sides
            for w in HTTP_WORKLOADS
        },
    )
    totals(
        "sum by (job) (istio_tcp_received_bytes_total)",
        {
            side.job(w): float(side.phases[phase].db_bytes[0])
            for side in sides
            for w in (RATINGS, MONGODB)
        },
    )


def _phase_times(prom: PrometheusServer, side: Side) -> None:
    """t1 and t2 per job, from the stored samples of the job's own main counter."""
    for workload in SHOWN:
        job = side.job(workload)
        if workload is MONGODB:
            selector = f'istio_tcp_received_bytes_total{{job="{job}"}}'
            phase1, total = (float(p.db_bytes[0]) for p in side.phases)
        else:
            selector = f'istio_requests_total{{job="{job}",reporter="destination"}}'
            phase1, total = (float(sum(p.served[workload.name].values())) for p in side.phases)
        by_time: dict[float, float] = defaultdict(float)
        for series in prom.query(f"{selector}[2m]"):
            for ts, value in series["values"]:
                by_time[float(ts)] += float(value)
        seen = sorted(by_time.items())
        side.t1[job] = max(t for t, v in seen if v == phase1)
        side.t2[job] = min(t for t, v in seen if v == total)
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
                mesh = DemoMesh(admin_port=0, jitter=0.0, store_factory=b.store.Store)
                loop.call(mesh.start())
                stack.callback(stop, mesh)
                sides[name] = Side(name, mesh)
                end_phase(loop, sides[name], PHASE1)
            targets = {
                side.job(w): side.mesh.sidecars[w.name].admin_url.removeprefix("http://")
                for side in sides.values()
                for w in SHOWN
            }
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


def by_labels(result: list[Result], *labels: str) -> dict[tuple[str, ...], float]:
    out = {}
    for r in result:
        key = tuple(r["metric"].get(label, "") for label in labels)
        assert key not in out, f"two series for {key}: {result}"
        out[key] = float(r["value"][1])
    return out


def scalar(result: list[Result]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


# -- the traffic the test sent, as the apps saw it ---------------------------------------------


def test_the_apps_saw_the_traffic_we_sent(side: Side) -> None:
    """The premise of every other check: our requests, all answered, evenly spread."""
    phase1, total = side.phases
    assert phase1.ingress == Counter({200: PHASE1})
    assert total.ingress == Counter({200: 3 * PHASE1})
    for counts, sent in ((phase1, PHASE1), (total - phase1, 2 * PHASE1)):
        assert sum(counts.served[DETAILS.name].values()) == sent
        assert [sum(counts.served[r.name].values()) for r in REVIEWS] == [sent // 3] * 3
    # Every app-level count doubled in phase 2: what makes rate() ratios exact.
    phase2 = total - phase1
    for name, served in phase1.served.items():
        assert phase2.served[name] == Counter({c: 2 * n for c, n in served.items()}), name
    assert phase1.served[REVIEWS[2].name][503] == 1
    assert phase2.db_bytes == (2 * phase1.db_bytes[0], 2 * phase1.db_bytes[1])


# -- exact counts --------------------------------------------------------------------------------

COUNTS_BY = "sum by (destination_service, response_code, reporter) ({selector})"


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
    assert got[PRODUCTPAGE.service_host, "200", "destination"] == sent
    assert got[DETAILS.service_host, "200", "source"] == sent
    reviews = sum(
        v for (svc, _, rep), v in got.items() if svc == REVIEWS[0].service_host and rep == "source"
    )
    assert reviews == sent


def test_each_reporter_is_the_right_sidecar(prom: PrometheusServer, side: Side) -> None:
    """reporter=source comes from the caller's sidecar, destination from the callee's."""
    result = prom.query(
        f"sum by (job, reporter, source_workload, destination_workload) "
        f'(istio_requests_total{{job=~"{side.backend}-.*"}})',
        max(side.t2.values()),
    )
    got = by_labels(result, "job", "reporter", "source_workload", "destination_workload")
    total = side.phases[1].served
    b = side.backend
    want: dict[tuple[str, ...], float] = {
        (f"{b}-productpage-v1", "destination", "unknown", "productpage-v1"): 3 * PHASE1,
        (f"{b}-productpage-v1", "source", "productpage-v1", "details-v1"): 3 * PHASE1,
        (f"{b}-details-v1", "destination", "productpage-v1", "details-v1"): 3 * PHASE1,
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
    got: dict[tuple[str, ...], float] = {}
    for workload in HTTP_WORKLOADS:
        job = side.job(workload)
        selector = f'increase(istio_requests_total{{job="{job}"}}[{side.window(workload)}])'
        result = prom.query(COUNTS_BY.format(selector=selector), side.t2[job])
        for key, value in by_labels(
            result, "destination_service", "response_code", "reporter"
        ).items():
            got[key] = got.get(key, 0.0) + value
    assert got == phase2


def test_tcp_bytes_and_connections_exact(prom: PrometheusServer, side: Side) -> None:
    wrote, read = side.phases[1].db_bytes
    for workload, reporter in ((RATINGS, "source"), (MONGODB, "destination")):
        job = side.job(workload)

        def total(metric: str, job: str = job, reporter: str = reporter) -> float:
            q = f'sum({metric}{{job="{job}",reporter="{reporter}"}}) or vector(0)'
            return scalar(prom.query(q))  # now: the fixture waited for the final bytes

        assert total("istio_tcp_received_bytes_total") == wrote  # from ratings (downstream)
        assert total("istio_tcp_sent_bytes_total") == read
        assert total("istio_tcp_connections_opened_total") == 1
        assert total("istio_tcp_connections_closed_total") == 0  # kept open
        services = prom.query(
            f'count by (destination_service) (istio_tcp_sent_bytes_total{{job="{job}"}})'
        )
        assert [r["metric"]["destination_service"] for r in services] == [MONGODB.service_host]


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

MESH_SUCCESS_RATE = (
    'sum (rate(istio_requests_total{reporter=~"source|waypoint",response_code!~"5.."}'
    "[$__rate_interval])) / sum (rate(istio_requests_total"
    '{reporter=~"source|waypoint"}[$__rate_interval]))'
)
MESH_WORKLOAD_SUCCESS = (
    "label_join(sum by (destination_workload,destination_workload_namespace) (rate("
    'istio_requests_total{reporter=~"source|waypoint",response_code!~"5.."}[$__rate_interval]))'
    "/sum by (destination_workload,destination_workload_namespace) (rate(istio_requests_total"
    '{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".",'
    ' "destination_workload", "destination_workload_namespace")'
)
MESH_WORKLOAD_QUANTILE = (
    "label_join(histogram_quantile($q, sum by (le,destination_workload,"
    "destination_workload_namespace) (rate(istio_request_duration_milliseconds_bucket"
    '{reporter=~"source|waypoint"}[$__rate_interval]))), "destination_workload_var", ".",'
    ' "destination_workload", "destination_workload_namespace")'
)
MESH_TCP = (
    "label_join(sum by (destination_workload,destination_workload_namespace,destination_service)"
    ' (rate(istio_tcp_$dir_bytes_total{reporter=~"source|waypoint"}[$__rate_interval])),'
    ' "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")'
)


def fill(template: str, **variables: str) -> str:
    for name in sorted(variables, key=len, reverse=True):
        template = template.replace(f"${name}", variables[name])
    return template


def test_mesh_dashboard_over_the_demo(prom: PrometheusServer, side: Side) -> None:
    """Per client sidecar (one target each: one extrapolation factor), ratios are exact."""
    job = side.job(PRODUCTPAGE)

    def ask(template: str, job: str = job, **variables: str) -> list[Result]:
        promql = fill(template, __rate_interval="1m", **variables)
        return prom.query(scoped(promql, job), side.t2[job])

    served = side.phases[1].served
    calls = {w.name: sum(served[w.name].values()) for w in (DETAILS, *REVIEWS)}
    ok = {w.name: served[w.name][200] for w in (DETAILS, *REVIEWS)}
    assert scalar(ask(MESH_SUCCESS_RATE)) == pytest.approx(
        sum(ok.values()) / sum(calls.values()), rel=1e-9
    )
    success = by_labels(ask(MESH_WORKLOAD_SUCCESS), "destination_workload")
    assert success == pytest.approx({(n,): ok[n] / calls[n] for n in calls}, rel=1e-9)
    assert success[("reviews-v3",)] < 1.0  # the injected faults show

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
