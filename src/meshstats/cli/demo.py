"""``meshstats demo``: a Bookinfo-shaped mesh of real apps and sidecars on loopback.

>>> import asyncio
>>> from meshstats.cli.demo import DemoMesh
>>> async def main() -> int:
...     async with DemoMesh(admin_port=0) as mesh:   # a gateway, 8 apps, 8 sidecars, mTLS
...         status, _ = await mesh.client.get(mesh.entry, "/productpage", "productpage:9080")
...         await mesh.settle()                      # every proxy has recorded it
...         return status
>>> asyncio.run(main())
200

Every workload is a small asyncio app on 127.0.0.1 behind its own
:class:`~meshstats.proxy.Sidecar` (certificates from a throw-away
:class:`~meshstats.certs.LocalCA`). Traffic enters through ``istio-ingressgateway``: a proxy
without an app, in ``istio-system``, that reports its calls as Istio's gateway does
(``reporter="source"`` only) and calls productpage over mTLS. productpage calls details
(every :data:`NOT_FOUND_EVERY`-th page asks for a product details does not know: a 404)
and, round robin, reviews v1, v2 and v3 through its client sidecar; reviews v2 and v3 call
ratings; ratings queries a line-oriented TCP "mongodb" on a connection it retires after
``db_queries_per_connection`` queries. productpage also asks "recommendations", a grpcio
server, over gRPC through the sidecars as well: its client speaks h2c to productpage's
sidecar, mTLS h2 goes between the sidecars, h2c to the server
(:mod:`meshstats.cli.demo_grpc`); without grpcio that edge is left out.

The table is what the *client* side recorded (``reporter="source"``: the gateway's and the
sidecars' outbound listeners), beside what each calling app counted itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from .demo_apps import Address, Answer, EchoApp, HttpApp, HttpClient, TcpLine

if TYPE_CHECKING:
    import h11

    from ..engine import StatsEngine
    from ..proxy import Sidecar
    from .demo_grpc import Recommendations, RecommendationsClient

NAMESPACE = "default"
TRUST_DOMAIN = "cluster.local"
ISTIO_VERSION = "1.24.0"
CLUSTER = "Kubernetes"


#: The demo's metrics ports: ``--port`` and the next eight (one per workload).
PORTS_TAKEN = 9
MAX_FIRST_PORT = 65535 - (PORTS_TAKEN - 1)
#: productpage asks details for a product it does not know on every n-th page (a 404).
NOT_FOUND_EVERY = 10
#: Recommendations streamed back per gRPC call (response messages per request message).
RECOMMENDED = 3
#: ratings closes its mongodb connection after this many queries, by default.
DB_QUERIES_PER_CONNECTION = 10
GRPC_MISSING = (
    "the gRPC edge (productpage -> recommendations) is left out: grpcio is not installed "
    "(pip install 'meshstats[grpc]')"
)


def _duration(text: str) -> float:
    """``--duration``: seconds > 0 (argparse turns the error into exit status 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 request in flight, got {value}")
    return value


def _first_port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if value != 0 and not 1 <= value <= MAX_FIRST_PORT:
        raise argparse.ArgumentTypeError(
            f"must be 0 (any free ports) or 1..{MAX_FIRST_PORT} (the demo takes it and the "
            f"next {PORTS_TAKEN - 1}), got {value}"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration", type=_duration, default=5.0, help="seconds of traffic, > 0 (5)"
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        default=8,
        help="requests in flight into the ingress gateway, >= 1 (8)",
    )
    parser.add_argument(
        "--port",
        type=_first_port,
        default=15090,
        help=f"metrics port of the ingress gateway; the other workloads take the next "
        f"{PORTS_TAKEN - 1} (15090; 0 = any free ports)",
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep the mesh up after the traffic (Ctrl-C stops)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the latency jitter")


# -- the workloads -------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One workload: its identity, its service and how its app behaves.

    ``protocol`` is how the app behind its sidecar speaks: ``"http"``, ``"tcp"`` or
    ``"grpc"`` (a grpcio server, reached over HTTP/2; the sidecars' listeners are HTTP
    ones for it, as Istio's are for a ``grpc`` port); ``"gateway"`` is a proxy without an
    app (the ingress gateway).
    """

    name: str
    app: str
    version: str
    latency_ms: float  # median service time of the app
    error_every: int | None = None  # every n-th request answers 503
    protocol: str = "http"
    port: int = 9080  # the service port (names the cluster: outbound|<port>||<host>)
    namespace: str = NAMESPACE
    account: str | None = None  # the service account; bookinfo-<app> by default
    labels: tuple[tuple[str, str], ...] = ()  # pod labels besides app/version/canonical

    @property
    def service_host(self) -> str:
        return f"{self.app}.{self.namespace}.svc.cluster.local"

    @property
    def service_account(self) -> str:
        return self.account or f"bookinfo-{self.app}"

    def node_metadata(self) -> dict[str, object]:
        labels = {"app": self.app}
        if self.version:
            labels["version"] = self.version
        labels["service.istio.io/canonical-name"] = self.app
        # Istio's injector labels a pod without a version "latest", as the gateway's.
        labels["service.istio.io/canonical-revision"] = self.version or "latest"
        labels.update(self.labels)
        ns = self.namespace
        return {
            "NAME": f"{self.name}-5d8c7b9f4-x2x7q",
            "NAMESPACE": ns,
            "WORKLOAD_NAME": self.name,
            "CLUSTER_ID": CLUSTER,
            "MESH_ID": TRUST_DOMAIN,
            "ISTIO_VERSION": ISTIO_VERSION,
            "SERVICE_ACCOUNT": self.service_account,
            "OWNER": f"kubernetes://apis/apps/v1/namespaces/{ns}/deployments/{self.name}",
            "LABELS": labels,
        }


GATEWAY = Workload(
    "istio-ingressgateway",
    "istio-ingressgateway",
    "",
    0.0,
    protocol="gateway",
    port=80,
    namespace="istio-system",
    account="istio-ingressgateway-service-account",
    labels=(("istio", "ingressgateway"),),
)
PRODUCTPAGE = Workload("productpage-v1", "productpage", "v1", 1.0)
DETAILS = Workload("details-v1", "details", "v1", 3.0)
REVIEWS = (
    Workload("reviews-v1", "reviews", "v1", 6.0),
    Workload("reviews-v2", "reviews", "v2", 14.0, error_every=100),
    Workload("reviews-v3", "reviews", "v3", 30.0, error_every=20),
)
RATINGS = Workload("ratings-v1", "ratings", "v1", 2.0)
MONGODB = Workload("mongodb-v1", "mongodb", "v1", 1.0, protocol="tcp", port=27017)
RECOMMENDATIONS = Workload("recommendations-v1", "recommendations", "v1", 2.0, protocol="grpc")
#: In start order: a workload's callees come before it (its sidecar needs their ports).
WORKLOADS = (MONGODB, RATINGS, *REVIEWS, DETAILS, RECOMMENDATIONS, PRODUCTPAGE, GATEWAY)
#: The order of the metrics ports (the gateway's is ``--port``) and of their list.
SHOWN = (GATEWAY, PRODUCTPAGE, DETAILS, *REVIEWS, RATINGS, MONGODB, RECOMMENDATIONS)
#: Who calls whom through its client sidecar (the gateway: its one route).
CALLS: dict[str, tuple[Workload, ...]] = {
    GATEWAY.name: (PRODUCTPAGE,),
    PRODUCTPAGE.name: (DETAILS, *REVIEWS, RECOMMENDATIONS),
    REVIEWS[1].name: (RATINGS,),
    REVIEWS[2].name: (RATINGS,),
    RATINGS.name: (MONGODB,),
}
#: The table's rows, (client, server), each reported by the client's side.
EDGES: tuple[tuple[Workload, Workload], ...] = (
    (GATEWAY, PRODUCTPAGE),
    (PRODUCTPAGE, DETAILS),
    *((PRODUCTPAGE, r) for r in REVIEWS),
    (PRODUCTPAGE, RECOMMENDATIONS),
    (REVIEWS[1], RATINGS),
    (REVIEWS[2], RATINGS),
    (RATINGS, MONGODB),
)


def grpc_edge() -> ModuleType | None:
    """:mod:`meshstats.cli.demo_grpc`, or None when grpcio is not installed."""
    try:
        from . import demo_grpc
    except ImportError:  # MissingExtraError is one; so is a grpcio that cannot load
        return None
    return demo_grpc


# -- what the apps do ----------------------------------------------------------------------


def _productpage(mesh: DemoMesh) -> Callable[[HttpApp, h11.Request], Any]:
    """Details, then the next reviews version (round robin, as the sidecar would balance);
    meanwhile recommendations over gRPC (when the mesh has that edge)."""

    async def handler(app: HttpApp, request: h11.Request) -> bytes:
        turn = app.calls  # read before awaiting: concurrent requests move it on
        product = 1 if turn % NOT_FOUND_EVERY == 0 else 0  # details knows product 0 only
        page: dict[str, object] = {"product": product}

        async def http() -> None:
            (details,) = app.upstreams["details"]
            reviews = app.upstreams["reviews"]
            d_status, d_body = await app.client.get(details, f"/details/{product}", "details:9080")
            r_status, r_body = await app.client.get(
                reviews[(turn - 1) % len(reviews)], "/reviews/0", "reviews:9080"
            )
            # a 404 from details still renders the page, as Bookinfo's does
            page.update(details=d_status, reviews=r_status, size=len(d_body) + len(r_body))

        async def grpc() -> None:
            if mesh.recommender is not None:
                status, items = await mesh.recommender.ask(product)
                page["recommendations"] = len(items) if status == "OK" else status

        await asyncio.gather(http(), grpc())
        return json.dumps(page).encode()

    return handler


async def _details(app: HttpApp, request: h11.Request) -> Answer:
    product = request.target.decode(errors="replace").rsplit("/", 1)[-1]
    if product != "0":
        return 404, json.dumps({"error": f"product {product} not found"}).encode()
    return json.dumps({"service": app.name, "product": 0, "pages": 200}).encode()


async def _reviews(app: HttpApp, request: h11.Request) -> bytes:
    (ratings,) = app.upstreams["ratings"]
    status, body = await app.client.get(ratings, "/ratings/0", "ratings:9080")
    return json.dumps({"reviewer": app.name, "ratings": status, "size": len(body)}).encode()


def _ratings(db: TcpLine) -> Callable[[HttpApp, h11.Request], Any]:
    async def handler(app: HttpApp, request: h11.Request) -> bytes:
        reply = await db.query(f"find ratings {request.target.decode()}")
        return b'{"ratings": ' + reply.strip() + b"}"

    return handler


# -- the mesh ------------------------------------------------------------------------------


class PortInUseError(OSError):
    """A metrics port the demo was told to use is taken (``--port``)."""

    def __init__(self, port: int, workload: str) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"port {port} ({workload}'s metrics port) is already in use: pick another "
            f"--port (the demo takes it and the next {PORTS_TAKEN - 1}) or --port 0 for "
            "any free ports",
        )
        self.port = port


class DemoMesh:
    """The demo's gateway, apps, sidecars and gRPC edge, started and stopped together on
    the running loop.

    ``admin_port`` is the first of :data:`PORTS_TAKEN` consecutive metrics ports (0: any
    free ones). ``jitter`` spreads the apps' latencies log-normally (0: each app takes
    exactly its median). ``store_factory`` gives each engine its store (a backend's
    ``Store``); by default the package's. ``grpc``: None includes the gRPC edge when grpcio
    is installed, False leaves it out, True requires it (a
    :class:`~meshstats.errors.MissingExtraError` without grpcio).
    ``db_queries_per_connection`` is how many queries ratings sends on one mongodb
    connection before closing it (None: one connection for good).

    :attr:`entry` is the ingress gateway's port (plaintext HTTP, as from outside the mesh),
    :attr:`client` an HTTP client for it, :attr:`apps` and :attr:`sidecars` are by workload
    name (the gateway has a sidecar and no app), :attr:`db` is ratings' connection to
    mongodb, :attr:`recommendations` and :attr:`recommender` the gRPC server and
    productpage's client (None without the gRPC edge).
    """

    def __init__(
        self,
        *,
        admin_port: int = 0,
        jitter: float = 0.5,
        seed: int = 7,
        store_factory: Callable[[], Any] | None = None,
        grpc: bool | None = None,
        db_queries_per_connection: int | None = DB_QUERIES_PER_CONNECTION,
    ) -> None:
        self.admin_port = admin_port
        self.jitter = jitter
        self.seed = seed
        self.store_factory = store_factory
        self._grpc = grpc_edge() if grpc is not False else None
        if grpc and self._grpc is None:
            from ..errors import MissingExtraError

            raise MissingExtraError("grpc", "grpc")
        self.apps: dict[str, HttpApp | EchoApp] = {}
        self.sidecars: dict[str, Sidecar] = {}
        self.db = TcpLine(db_queries_per_connection)
        self.client = HttpClient()
        self.recommendations: Recommendations | None = None
        self.recommender: RecommendationsClient | None = None
        self._certs: tempfile.TemporaryDirectory[str] | None = None
        # (client, server) -> the client sidecar's outbound address the client app calls
        self._upstream: dict[tuple[str, str], Address] = {}

    @property
    def has_grpc(self) -> bool:
        """Whether the mesh has its gRPC edge (grpcio is installed and it was not left out)."""
        return self._grpc is not None

    @property
    def workloads(self) -> tuple[Workload, ...]:
        """This mesh's workloads, in :data:`SHOWN` order."""
        return tuple(w for w in SHOWN if w.protocol != "grpc" or self.has_grpc)

    @property
    def edge_pairs(self) -> tuple[tuple[Workload, Workload], ...]:
        """This mesh's rows of :data:`EDGES`."""
        return tuple((c, s) for c, s in EDGES if s.protocol != "grpc" or self.has_grpc)

    def callees(self, workload: Workload) -> tuple[Workload, ...]:
        """Whom ``workload`` calls through its sidecar in this mesh (:data:`CALLS`)."""
        return tuple(
            w for w in CALLS.get(workload.name, ()) if w.protocol != "grpc" or self.has_grpc
        )

    @property
    def entry(self) -> Address:
        return ("127.0.0.1", self.sidecars[GATEWAY.name].outbound_ports[0])

    def http_app(self, workload: Workload) -> HttpApp:
        app = self.apps[workload.name]
        assert isinstance(app, HttpApp)
        return app

    def metrics_urls(self) -> dict[str, str]:
        """Where each workload's metrics are served (``/stats/prometheus`` and ``/metrics``
        below it), by workload name in :data:`SHOWN` order."""
        return {w.name: self.sidecars[w.name].admin_url for w in self.workloads}

    def engine(self, workload: Workload) -> StatsEngine:
        """The engine that records for ``workload``: its sidecar's."""
        return self.sidecars[workload.name].engine

    async def start(self) -> DemoMesh:
        from ..certs import LocalCA

        self._certs = tempfile.TemporaryDirectory(prefix="meshstats-demo-")
        ca = LocalCA.create(TRUST_DOMAIN)
        try:
            for workload in WORKLOADS:
                if workload.protocol == "grpc" and not self.has_grpc:
                    continue
                cert = ca.issue(workload.namespace, workload.service_account)
                cert_dir = cert.write(Path(self._certs.name) / workload.name)
                app_port = None
                app = None
                if workload.protocol == "grpc":
                    assert self._grpc is not None
                    self.recommendations = self._grpc.Recommendations(
                        items=RECOMMENDED, latency_ms=workload.latency_ms
                    )
                    app_port = (await self.recommendations.start()).port
                elif workload.protocol != "gateway":
                    app = self.apps[workload.name] = await self._start_app(workload)
                    app_port = app.port
                sidecar = await self._start_sidecar(workload, app_port, cert_dir)
                self.sidecars[workload.name] = sidecar
                for callee, port in zip(self.callees(workload), sidecar.outbound_ports):
                    address = ("127.0.0.1", port)
                    self._upstream[workload.name, callee.name] = address
                    if callee.protocol == "grpc":
                        # productpage's grpcio client calls its own sidecar (h2c), as the
                        # HTTP calls do
                        assert self._grpc is not None
                        self.recommender = self._grpc.RecommendationsClient(
                            address, authority=f"{callee.app}:{callee.port}"
                        )
                    elif isinstance(app, HttpApp):
                        app.upstreams.setdefault(callee.app, []).append(address)
            if self.sidecars[RATINGS.name].outbound_ports:
                self.db.address = ("127.0.0.1", self.sidecars[RATINGS.name].outbound_ports[0])
        except BaseException:
            await self.stop()
            raise
        return self

    def _metrics_port(self, workload: Workload) -> int:
        return self.admin_port + SHOWN.index(workload) if self.admin_port else 0

    async def _start_app(self, workload: Workload) -> HttpApp | EchoApp:
        if workload.protocol == "tcp":
            return await EchoApp(workload.name, latency_ms=workload.latency_ms).start()
        handler = {
            PRODUCTPAGE.name: _productpage(self),
            DETAILS.name: _details,
            REVIEWS[1].name: _reviews,
            REVIEWS[2].name: _reviews,
            RATINGS.name: _ratings(self.db),
        }.get(workload.name)
        app = HttpApp(
            workload.name,
            latency_ms=workload.latency_ms,
            jitter=self.jitter,
            error_every=workload.error_every,
            seed=self.seed * 31 + SHOWN.index(workload),
            handler=handler,
        )
        return await app.start()

    async def _start_sidecar(
        self, workload: Workload, app_port: int | None, cert_dir: Path
    ) -> Sidecar:
        from ..engine import StatsEngine
        from ..proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig

        outbound = tuple(
            OutboundConfig(
                port=0,
                upstream=("127.0.0.1", self.sidecars[callee.name].inbound_port),
                service_host=callee.service_host,
                protocol="tcp" if callee.protocol == "tcp" else "http",
                service_port=callee.port,
            )
            for callee in self.callees(workload)
        )
        inbound = None
        if app_port is not None:
            inbound = InboundConfig(
                port=0,
                app=("127.0.0.1", app_port),
                protocol="tcp" if workload.protocol == "tcp" else "http",
                service_host=workload.service_host,
            )
        config = SidecarConfig(
            node=workload.node_metadata(),
            cert_dir=cert_dir,
            inbound=inbound,
            outbound=outbound,
            # Not ``gateway``: that turns the Host-header fallback on, which Istio turns off
            # for gateways; the route's cluster names productpage's service either way.
            admin_port=self._metrics_port(workload),
        )
        engine = None
        if self.store_factory is not None:
            from ..certs import principal_of

            engine = StatsEngine(
                config.node, store=self.store_factory(), local_principal=principal_of(cert_dir)
            )
        sidecar = Sidecar(config, engine=engine)
        try:
            return await sidecar.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and config.admin_port:
                raise PortInUseError(config.admin_port, workload.name) from exc
            raise

    async def stop(self) -> None:
        """Stop everything started: clients, then proxies, then apps (nothing left open)."""
        await self.client.close()
        await self.db.close()
        if self.recommender is not None:
            await self.recommender.close()
            self.recommender = None
        for app in self.apps.values():
            if isinstance(app, HttpApp):
                await app.client.close()
        for sidecar in reversed(list(self.sidecars.values())):
            await sidecar.stop()
        if self.recommendations is not None:
            await self.recommendations.close()
            self.recommendations = None
        for app in self.apps.values():
            await app.close()
        self.sidecars.clear()
        self.apps.clear()
        if self._certs is not None:
            self._certs.cleanup()
            self._certs = None

    async def __aenter__(self) -> DemoMesh:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- reading the telemetry ---------------------------------------------------------------

    def edges(self) -> list[EdgeStats]:
        """Per edge, what its client side recorded and what the calling app counted."""
        return [self.edge_stats(client, server) for client, server in self.edge_pairs]

    def edge_stats(self, client: Workload, server: Workload) -> EdgeStats:
        """The client side's view of one edge (``reporter="source"``: the client's sidecar,
        or the gateway), and what the calling app counted (for the gateway: :attr:`client`,
        the traffic from outside)."""
        stats = EdgeStats(client.name, server.name, server.protocol)
        if client is GATEWAY:
            stats.app_requests = self.client.count(self.entry)
        elif server.protocol == "tcp":
            stats.app_requests = self.db.connections
            stats.app_closed = self.db.closed
            stats.app_bytes = (self.db.bytes_out, self.db.bytes_in)
        elif server.protocol == "grpc":
            assert self.recommender is not None
            stats.app_requests = self.recommender.calls
            stats.app_messages = (self.recommender.messages_out, self.recommender.messages_in)
        else:
            caller = self.http_app(client).client
            stats.app_requests = caller.count(self._upstream[client.name, server.name])
        for name, _kind, _help, names, _buckets, series in self.engine(client).store.snapshot():
            for values, sample in series:
                value: Any = sample  # an int for counters, (buckets, sum) for histograms
                labels = dict(zip(names, values))
                if (
                    labels.get("reporter") != "source"
                    or labels.get("destination_workload") != server.name
                ):
                    continue
                if name == "istio_requests_total":
                    stats.requests += value
                    code = labels["response_code"]
                    if code.startswith("5"):
                        stats.errors += value
                    elif code.startswith("4"):
                        stats.client_errors += value
                elif name == "istio_request_duration_milliseconds":
                    buckets, _sum = value
                    if stats.buckets:
                        stats.buckets = [a + b for a, b in zip(stats.buckets, buckets)]
                    else:
                        stats.buckets = list(buckets)
                elif name == "istio_request_messages_total":
                    stats.request_messages += value
                elif name == "istio_response_messages_total":
                    stats.response_messages += value
                elif name == "istio_tcp_connections_opened_total":
                    stats.connections += value
                elif name == "istio_tcp_connections_closed_total":
                    stats.closed += value
                elif name == "istio_tcp_received_bytes_total":
                    stats.bytes_up += value
                elif name == "istio_tcp_sent_bytes_total":
                    stats.bytes_down += value
        return stats

    def served_total(self, workload: Workload, family: str) -> int:
        """The sum of ``family`` as ``workload``'s server side recorded it
        (``reporter="destination"``)."""
        total = 0
        for name, _kind, _help, names, _b, series in self.engine(workload).store.snapshot():
            if name != family:
                continue
            at = names.index("reporter")
            for values, value in series:
                if values[at] == "destination":
                    assert isinstance(value, int)  # a counter's sample
                    total += value
        return total

    def recorded_everything(self) -> bool:
        """Whether every proxy has recorded everything the apps counted:
        each request, gRPC message and closed TCP connection, on both sides where the demo
        cannot otherwise tell (a server sidecar records a close after its client's does)."""
        for edge in self.edges():
            if edge.protocol == "tcp":
                if edge.closed != edge.app_closed:
                    return False
            elif edge.requests != edge.app_requests:
                return False
            if edge.protocol == "grpc" and edge.messages != edge.app_messages:
                return False
        if self.served_total(MONGODB, "istio_tcp_connections_closed_total") != self.db.closed:
            return False
        if self.recommendations is not None:
            served = self.served_total(RECOMMENDATIONS, "istio_requests_total")
            if served != self.recommendations.served:
                return False
        return True

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until the proxies have recorded everything the apps counted, then report
        the open TCP connection's bytes now instead of at the next 5 s tick."""
        deadline = time.monotonic() + timeout
        while not self.recorded_everything() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for sidecar in self.sidecars.values():
            sidecar.engine.report_tcp()


@dataclass
class EdgeStats:
    """One row of the demo's table."""

    client: str
    server: str
    protocol: str
    requests: int = 0
    errors: int = 0  # 5xx
    client_errors: int = 0  # 4xx
    buckets: list[int] | None = None
    request_messages: int = 0  # gRPC: istio_request_messages_total
    response_messages: int = 0  # gRPC: istio_response_messages_total
    connections: int = 0
    closed: int = 0  # TCP: istio_tcp_connections_closed_total
    bytes_up: int = 0  # client -> server (istio_tcp_received_bytes_total, client side)
    bytes_down: int = 0  # server -> client (istio_tcp_sent_bytes_total)
    app_requests: int = 0  # answers the calling app counted (TCP: connections it opened)
    app_messages: tuple[int, int] = (0, 0)  # gRPC: messages the calling app sent / received
    app_closed: int = 0  # TCP: connections the calling app closed
    app_bytes: tuple[int, int] = (0, 0)  # TCP: bytes the calling app wrote / read

    @property
    def messages(self) -> tuple[int, int]:
        return self.request_messages, self.response_messages

    def __post_init__(self) -> None:
        if self.buckets is None:
            self.buckets = []

    def quantile(self, q: float) -> float:
        from .. import DEFAULT_BUCKETS

        if not self.buckets:
            return float("nan")
        return quantile(q, tuple(DEFAULT_BUCKETS), tuple(self.buckets))


def quantile(q: float, bounds: tuple[float, ...], counts: tuple[int, ...]) -> float:
    """``histogram_quantile`` as Prometheus computes it, over one histogram's bucket counts.

    ``counts`` are per bucket (not cumulative), the last one being ``+Inf``.
    """
    total = sum(counts)
    if total == 0:
        return float("nan")
    rank, seen = q * total, 0
    for i, c in enumerate(counts):
        if seen + c >= rank and c:
            if i == len(bounds):  # the +Inf bucket: Prometheus answers the highest bound
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / c
        seen += c
    return bounds[-1]


# -- the load ------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on a terminal, a line per second elsewhere."""

    def __init__(self, total: float, stream: TextIO = sys.stderr) -> None:
        self.total, self.stream = total, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last = -1
        self._full = False  # the last line printed said 100%

    def update(self, done: float, note: str) -> None:
        frac = max(0.0, min(1.0, done / self.total)) if self.total > 0 else 1.0
        if self.tty:
            bar = "#" * int(frac * 30)
            print(f"\r[{bar:<30}] {frac:4.0%} {note}", end="", file=self.stream, flush=True)
        elif int(done) != self._last:
            self._last = int(done)
            self._full = frac >= 1.0
            print(f"{frac:4.0%} {note}", file=self.stream, flush=True)

    def finish(self, note: str) -> None:
        """Show 100% (a run shorter than a second would otherwise end at 0%) and end the line."""
        if self.tty:
            self.update(self.total, note)
            print(file=self.stream)
        elif not self._full:
            print(f"{1.0:4.0%} {note}", file=self.stream, flush=True)


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0  # answered, but not 200
    broken: int = 0  # no answer (connection error)
    seconds: float = 0.0


async def load(
    mesh: DemoMesh,
    duration: float,
    concurrency: int,
    progress: Progress | None = None,
) -> LoadResult:
    """Requests into productpage from ``concurrency`` keep-alive clients for ``duration`` s.

    Returns once every request sent has been answered (so the apps are quiet).
    """
    result = LoadResult()
    start = time.monotonic()
    deadline = start + duration
    client = mesh.client

    async def worker() -> None:
        while time.monotonic() < deadline:
            result.sent += 1
            try:
                status, _ = await client.get(mesh.entry, "/productpage", "productpage:9080")
            except (OSError, EOFError):
                result.broken += 1
                await asyncio.sleep(0.05)
                continue
            if status == 200:
                result.ok += 1
            else:
                result.failed += 1

    async def report() -> None:
        while True:
            if progress is not None:
                progress.update(time.monotonic() - start, f"{result.sent} requests")
            await asyncio.sleep(0.1)

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
    result.seconds = time.monotonic() - start
    if progress is not None:
        progress.finish(f"{result.sent} requests")
    return result


# -- the command ---------------------------------------------------------------------------


def table(edges: list[EdgeStats]) -> str:
    """The demo's per-edge table: a row per edge, and for gRPC and TCP a second line with
    the messages or the closed connections and bytes (the proxy's, then the app's)."""
    rows = [
        f"{'edge (client -> server)':<44}{'requests':>9}{'4xx':>7}{'5xx':>7}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'app saw':>9}"
    ]
    for e in edges:
        name = f"{e.client} -> {e.server}"
        if e.protocol in ("tcp", "grpc"):
            name += f" ({e.protocol})"
        if e.protocol == "tcp":
            rows.append(f"{name:<44}{f'{e.connections} conn':>9}{'':>30}{e.app_requests:>9}")
            rows.append(
                f"    {e.closed} closed (app {e.app_closed}), bytes up/down "
                f"{e.bytes_up}/{e.bytes_down} (app {e.app_bytes[0]}/{e.app_bytes[1]})"
            )
            continue
        n = e.requests or 1
        rows.append(
            f"{name:<44}{e.requests:>9}{e.client_errors / n:>7.1%}{e.errors / n:>7.1%}"
            f"{e.quantile(0.5):>8.1f}{e.quantile(0.99):>8.1f}{e.app_requests:>9}"
        )
        if e.protocol == "grpc":
            rows.append(
                f"    messages in/out {e.request_messages}/{e.response_messages} "
                f"(app {e.app_messages[0]}/{e.app_messages[1]})"
            )
    return "\n".join(rows)


async def _main(args: argparse.Namespace, out: TextIO) -> int:
    from .. import HAS_EXTENSION

    mesh = DemoMesh(admin_port=args.port, seed=args.seed)
    try:
        await mesh.start()
    except PortInUseError as exc:
        print(f"meshstats demo: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        apps = sum(1 for w in mesh.workloads if w.protocol != "gateway")
        grpc_note = " (one of them a gRPC service)" if mesh.has_grpc else ""
        print(
            f"mesh up: an ingress gateway, {apps} apps behind mTLS sidecars{grpc_note}; "
            f"traffic through the gateway into productpage for {args.duration:g} s, "
            f"{args.concurrency} in flight",
            file=sys.stderr,
        )
        result = await load(mesh, args.duration, args.concurrency, Progress(args.duration))
        await mesh.settle()
        rps = result.sent / result.seconds if result.seconds else 0.0
        print(
            f"\n{result.sent} requests into productpage in {result.seconds:.1f} s "
            f"({rps:.0f}/s): {result.ok} ok, {result.failed} not 200, {result.broken} broken\n",
            file=out,
        )
        print(table(mesh.edges()), file=out)
        if not mesh.has_grpc:
            print(GRPC_MISSING, file=out)
        backend = "compiled" if HAS_EXTENSION else "pure-Python (MESHSTATS_NO_EXTENSIONS)"
        print(
            '\nEvery number but "app saw" and "(app ...)" is what the client side recorded '
            "(reporter=source:\nthe gateway and the client sidecars, gRPC included); those two "
            "are what the calling\napp counted itself. 4xx: every "
            f"{NOT_FOUND_EVERY}th page is for a product details does not know.  backend: "
            f"{backend}",
            file=out,
        )
        if args.serve:
            print("metrics (Envoy's path; /metrics too):", file=out)
            for name, url in mesh.metrics_urls().items():
                print(f"  {name:<20} {url}/stats/prometheus", file=out)
            host, port = mesh.entry
            print(f"productpage, through the gateway: http://{host}:{port}/productpage", file=out)
            # The handlers go in before the line that tells a supervisor (or a test) it may
            # signal: a signal that arrived in between would kill the process uncleanly.
            with _signals() as stop:
                print("serving until Ctrl-C (or SIGTERM) ...", file=out, flush=True)
                await stop.wait()
        else:
            # Its URLs would already be closed: say how to keep them open instead.
            print(
                "the mesh is stopped now; `meshstats demo --serve` keeps it up and lists "
                "where each workload serves its metrics",
                file=out,
            )
    finally:
        await mesh.stop()
    return 0


@contextlib.contextmanager
def _signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM while inside; the caller then stops the mesh."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # e.g. Windows
            loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    # grpcio's core logs at INFO on stderr (a GOAWAY as the mesh stops, say), which would
    # cut through the progress bar; its warnings and errors still show.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from .. import _loop
    from ..errors import ConfigError

    try:
        loop = _loop.choose()  # uvloop when installed, unless MESHSTATS_EVENT_LOOP says no
    except ConfigError as exc:
        print(f"meshstats demo: {exc}", file=sys.stderr)
        return 1
    try:
        return _loop.run(_main(args, sys.stdout), loop)
    except KeyboardInterrupt:
        return 0
