"""``meshstats demo``: a Bookinfo-shaped mesh of real apps and sidecars on loopback.

>>> import asyncio
>>> from meshstats.cli.demo import DemoMesh
>>> async def main() -> int:
...     async with DemoMesh(admin_port=0) as mesh:   # 7 apps, 7 sidecars, mTLS between them
...         status, _ = await mesh.client.get(mesh.entry, "/productpage", "productpage:9080")
...         await mesh.settle()                      # every sidecar has recorded it
...         return status
>>> asyncio.run(main())
200

Every workload is a small asyncio app on 127.0.0.1 behind its own
:class:`~meshstats.proxy.Sidecar` (certificates from a throw-away
:class:`~meshstats.certs.LocalCA`): productpage calls details and, round robin, reviews v1, v2
and v3 through its client sidecar; reviews v2 and v3 call ratings; ratings keeps one TCP
connection to a line-oriented "mongodb". Traffic enters at productpage's inbound port in
plaintext, as from an ingress outside the mesh. The table is what the *client* sidecars
recorded (``reporter="source"``; the ingress row is productpage's own inbound,
``reporter="destination"``), beside what each calling app counted itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import math
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from .demo_apps import Address, EchoApp, HttpApp, HttpClient, TcpLine

if TYPE_CHECKING:
    import h11

    from ..proxy import Sidecar

NAMESPACE = "default"
TRUST_DOMAIN = "cluster.local"
ISTIO_VERSION = "1.24.0"
CLUSTER = "Kubernetes"


#: The demo's sidecars take ``--port`` and the next six admin ports.
PORTS_TAKEN = 7
MAX_FIRST_PORT = 65535 - (PORTS_TAKEN - 1)


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
        help="requests in flight into productpage, >= 1 (8)",
    )
    parser.add_argument(
        "--port",
        type=_first_port,
        default=15090,
        help="admin (metrics) port of the first sidecar; the others take the next six "
        "(15090; 0 = any free ports)",
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep the mesh up after the traffic (Ctrl-C stops)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the latency jitter")


# -- the workloads -------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One Bookinfo workload: its identity, its service and how its app behaves."""

    name: str
    app: str
    version: str
    latency_ms: float  # median service time of the app
    error_every: int | None = None  # every n-th request answers 503
    protocol: str = "http"
    port: int = 9080  # the service port (names the cluster: outbound|<port>||<host>)

    @property
    def service_host(self) -> str:
        return f"{self.app}.{NAMESPACE}.svc.cluster.local"

    @property
    def service_account(self) -> str:
        return f"bookinfo-{self.app}"

    def node_metadata(self) -> dict[str, object]:
        return {
            "NAME": f"{self.name}-5d8c7b9f4-x2x7q",
            "NAMESPACE": NAMESPACE,
            "WORKLOAD_NAME": self.name,
            "CLUSTER_ID": CLUSTER,
            "MESH_ID": TRUST_DOMAIN,
            "ISTIO_VERSION": ISTIO_VERSION,
            "SERVICE_ACCOUNT": self.service_account,
            "OWNER": f"kubernetes://apis/apps/v1/namespaces/{NAMESPACE}/deployments/{self.name}",
            "LABELS": {
                "app": self.app,
                "version": self.version,
                "service.istio.io/canonical-name": self.app,
                "service.istio.io/canonical-revision": self.version,
            },
        }


PRODUCTPAGE = Workload("productpage-v1", "productpage", "v1", 1.0)
DETAILS = Workload("details-v1", "details", "v1", 3.0)
REVIEWS = (
    Workload("reviews-v1", "reviews", "v1", 6.0),
    Workload("reviews-v2", "reviews", "v2", 14.0, error_every=100),
    Workload("reviews-v3", "reviews", "v3", 30.0, error_every=20),
)
RATINGS = Workload("ratings-v1", "ratings", "v1", 2.0)
MONGODB = Workload("mongodb-v1", "mongodb", "v1", 1.0, protocol="tcp", port=27017)
#: In start order: a workload's callees come before it (its sidecar needs their ports).
WORKLOADS = (MONGODB, RATINGS, *REVIEWS, DETAILS, PRODUCTPAGE)
#: How the table and the metrics ports list them (productpage's admin port is ``--port``).
SHOWN = (PRODUCTPAGE, DETAILS, *REVIEWS, RATINGS, MONGODB)
#: Who calls whom through its client sidecar.
CALLS: dict[str, tuple[Workload, ...]] = {
    PRODUCTPAGE.name: (DETAILS, *REVIEWS),
    REVIEWS[1].name: (RATINGS,),
    REVIEWS[2].name: (RATINGS,),
    RATINGS.name: (MONGODB,),
}
#: The table's rows: (client, server); client None is traffic from outside the mesh.
EDGES: tuple[tuple[Workload | None, Workload], ...] = (
    (None, PRODUCTPAGE),
    *((client, server) for client in SHOWN for server in CALLS.get(client.name, ())),
)


# -- what the apps do ----------------------------------------------------------------------


async def _productpage(app: HttpApp, request: h11.Request) -> bytes:
    """Details, then the next reviews version (round robin, as the sidecar would balance)."""
    turn = app.calls  # read before awaiting: concurrent requests move it on
    (details,) = app.upstreams["details"]
    reviews = app.upstreams["reviews"]
    d_status, d_body = await app.client.get(details, "/details/0", "details:9080")
    r_status, r_body = await app.client.get(
        reviews[(turn - 1) % len(reviews)], "/reviews/0", "reviews:9080"
    )
    page = {"details": d_status, "reviews": r_status, "size": len(d_body) + len(r_body)}
    return json.dumps(page).encode()


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
    """An admin port the demo was told to use is taken (``--port``)."""

    def __init__(self, port: int, workload: str) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"port {port} ({workload}'s metrics port) is already in use: pick another "
            "--port (the demo takes it and the next six) or --port 0 for any free ports",
        )
        self.port = port


class DemoMesh:
    """The demo's apps and sidecars, started and stopped together on the running loop.

    ``admin_port`` is the first of seven consecutive metrics ports (0: any free ones).
    ``jitter`` spreads the apps' latencies log-normally (0: each app takes exactly its
    median). ``store_factory`` gives each sidecar's engine its store (a backend's
    ``Store``); by default the package's. :attr:`entry` is productpage's inbound port,
    :attr:`client` an HTTP client for it, :attr:`apps` and :attr:`sidecars` are by workload
    name, :attr:`db` is ratings' connection to mongodb.
    """

    def __init__(
        self,
        *,
        admin_port: int = 0,
        jitter: float = 0.5,
        seed: int = 7,
        store_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.admin_port = admin_port
        self.jitter = jitter
        self.seed = seed
        self.store_factory = store_factory
        self.apps: dict[str, HttpApp | EchoApp] = {}
        self.sidecars: dict[str, Sidecar] = {}
        self.db = TcpLine()
        self.client = HttpClient()
        self._certs: tempfile.TemporaryDirectory[str] | None = None
        # (client, server) -> the client sidecar's outbound address the client app calls
        self._upstream: dict[tuple[str, str], Address] = {}

    @property
    def entry(self) -> Address:
        return ("127.0.0.1", self.sidecars[PRODUCTPAGE.name].inbound_port)

    def http_app(self, workload: Workload) -> HttpApp:
        app = self.apps[workload.name]
        assert isinstance(app, HttpApp)
        return app

    async def start(self) -> DemoMesh:
        from ..certs import LocalCA

        self._certs = tempfile.TemporaryDirectory(prefix="meshstats-demo-")
        ca = LocalCA.create(TRUST_DOMAIN)
        try:
            for workload in WORKLOADS:
                i = SHOWN.index(workload)
                cert_dir = ca.issue(NAMESPACE, workload.service_account).write(
                    Path(self._certs.name) / workload.name
                )
                app = await self._start_app(workload, i)
                self.apps[workload.name] = app
                sidecar = await self._start_sidecar(workload, app.port, cert_dir, i)
                self.sidecars[workload.name] = sidecar
                for callee, port in zip(CALLS.get(workload.name, ()), sidecar.outbound_ports):
                    address = ("127.0.0.1", port)
                    self._upstream[workload.name, callee.name] = address
                    if isinstance(app, HttpApp):
                        app.upstreams.setdefault(callee.app, []).append(address)
            if self.sidecars[RATINGS.name].outbound_ports:
                self.db.address = ("127.0.0.1", self.sidecars[RATINGS.name].outbound_ports[0])
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start_app(self, workload: Workload, index: int) -> HttpApp | EchoApp:
        if workload.protocol == "tcp":
            return await EchoApp(workload.name, latency_ms=workload.latency_ms).start()
        handler = {
            PRODUCTPAGE.name: _productpage,
            REVIEWS[1].name: _reviews,
            REVIEWS[2].name: _reviews,
            RATINGS.name: _ratings(self.db),
        }.get(workload.name)
        app = HttpApp(
            workload.name,
            latency_ms=workload.latency_ms,
            jitter=self.jitter,
            error_every=workload.error_every,
            seed=self.seed * 31 + index,
            handler=handler,
        )
        return await app.start()

    async def _start_sidecar(
        self, workload: Workload, app_port: int, cert_dir: Path, index: int
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
            for callee in CALLS.get(workload.name, ())
        )
        config = SidecarConfig(
            node=workload.node_metadata(),
            cert_dir=cert_dir,
            inbound=InboundConfig(
                port=0,
                app=("127.0.0.1", app_port),
                protocol="tcp" if workload.protocol == "tcp" else "http",
                service_host=workload.service_host,
            ),
            outbound=outbound,
            admin_port=self.admin_port + index if self.admin_port else 0,
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
        """Stop everything started: clients, then sidecars, then apps (nothing left open)."""
        await self.client.close()
        await self.db.close()
        for app in self.apps.values():
            if isinstance(app, HttpApp):
                await app.client.close()
        for sidecar in reversed(list(self.sidecars.values())):
            await sidecar.stop()
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
        """Per edge, what its reporting sidecar recorded and what the server app counted."""
        return [self.edge_stats(client, server) for client, server in EDGES]

    def edge_stats(self, client: Workload | None, server: Workload) -> EdgeStats:
        """The client sidecar's view of one edge (for ingress: the server's inbound view),
        and what the calling app counted (for ingress: :attr:`client`)."""
        reporter = "destination" if client is None else "source"
        sidecar = self.sidecars[server.name if client is None else client.name]
        stats = EdgeStats(client.name if client else "(outside)", server.name, server.protocol)
        if client is None:
            stats.app_requests = self.client.count(self.entry)
        elif server.protocol == "tcp":
            stats.app_requests = self.db.connections
            stats.app_bytes = (self.db.bytes_out, self.db.bytes_in)
        else:
            caller = self.http_app(client).client
            stats.app_requests = caller.count(self._upstream[client.name, server.name])
        for name, _kind, _help, names, _buckets, series in sidecar.engine.store.snapshot():
            for values, sample in series:
                value: Any = sample  # an int for counters, (buckets, sum) for histograms
                labels = dict(zip(names, values))
                if (
                    labels.get("reporter") != reporter
                    or labels.get("destination_workload") != server.name
                ):
                    continue
                if name == "istio_requests_total":
                    stats.requests += value
                    if labels["response_code"].startswith("5"):
                        stats.errors += value
                elif name == "istio_request_duration_milliseconds":
                    buckets, _sum = value
                    if stats.buckets:
                        stats.buckets = [a + b for a, b in zip(stats.buckets, buckets)]
                    else:
                        stats.buckets = list(buckets)
                elif name == "istio_tcp_connections_opened_total":
                    stats.connections += value
                elif name == "istio_tcp_received_bytes_total":
                    stats.bytes_up += value
                elif name == "istio_tcp_sent_bytes_total":
                    stats.bytes_down += value
        return stats

    def recorded_everything(self) -> bool:
        """Whether every sidecar has recorded every request the apps answered."""
        for edge in self.edges():
            if edge.protocol == "http" and edge.requests != edge.app_requests:
                return False
        return True

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until the sidecars have recorded every request the apps answered, then
        report the long TCP connection's bytes now instead of at the next 5 s tick."""
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
    errors: int = 0
    buckets: list[int] | None = None
    connections: int = 0
    bytes_up: int = 0  # client -> server (istio_tcp_received_bytes_total, client side)
    bytes_down: int = 0  # server -> client (istio_tcp_sent_bytes_total)
    app_requests: int = 0  # answers the calling app counted (TCP: connections it opened)
    app_bytes: tuple[int, int] = (0, 0)  # TCP: bytes the calling app wrote / read

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
    """The demo's per-edge table."""
    rows = [
        f"{'edge (client -> server)':<30}{'requests':>9}{'5xx':>7}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'app saw':>9}   tcp bytes up/down"
    ]
    for e in edges:
        name = f"{e.client} -> {e.server}"
        if e.protocol == "tcp":
            rows.append(
                f"{name:<30}{f'{e.connections} conn':>9}{'':>23}{e.app_requests:>9}"
                f"   {e.bytes_up}/{e.bytes_down} (app {e.app_bytes[0]}/{e.app_bytes[1]})"
            )
            continue
        rate = e.errors / e.requests if e.requests else 0.0
        rows.append(
            f"{name:<30}{e.requests:>9}{rate:>7.1%}{e.quantile(0.5):>8.1f}"
            f"{e.quantile(0.99):>8.1f}{e.app_requests:>9}"
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
        print(
            f"mesh up: 7 workloads, 7 sidecars (mTLS); sending traffic into productpage "
            f"for {args.duration:g} s, {args.concurrency} in flight",
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
        backend = "compiled" if HAS_EXTENSION else "pure-Python (MESHSTATS_NO_EXTENSIONS)"
        print(
            "\nrequests/5xx/p50/p99/tcp: the client sidecar's metrics (reporter=source; the "
            "first row: productpage's inbound).\napp saw: requests (or connections) the "
            f"calling app counted itself.  backend: {backend}",
            file=out,
        )
        if args.serve:
            print("metrics (Envoy's path; /metrics too):", file=out)
            for workload in SHOWN:
                url = mesh.sidecars[workload.name].admin_url
                print(f"  {workload.name:<16} {url}/stats/prometheus", file=out)
            host, port = mesh.entry
            print(f"productpage: http://{host}:{port}/productpage", file=out)
            # The handlers go in before the line that tells a supervisor (or a test) it may
            # signal: a signal that arrived in between would kill the process uncleanly.
            with _signals() as stop:
                print("serving until Ctrl-C (or SIGTERM) ...", file=out, flush=True)
                await stop.wait()
        else:
            # Its URLs would already be closed: say how to keep them open instead.
            print(
                "the mesh is stopped now; `meshstats demo --serve` keeps it up and lists "
                "where each sidecar serves its metrics",
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
    try:
        return asyncio.run(_main(args, sys.stdout))
    except KeyboardInterrupt:
        return 0
