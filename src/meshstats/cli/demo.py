"""``meshstats demo``: a Bookinfo-shaped mesh on loopback, its traffic, its Istio metrics.

Each workload has Istio node metadata. Before traffic flows, every edge exchanges that
metadata through the real codec (the HTTP header form for HTTP edges, the TCP prefix fed to
the streaming decoder in small chunks for the TCP edge), and both ends resolve Istio's 25 (or
23) standard labels from what they learnt, as a client sidecar (``reporter="source"``) and a
server sidecar (``reporter="destination"``) would. Traffic is then generated for
``--duration`` seconds and recorded in batches into the compiled store; the store is served
at ``/stats/prometheus`` and ``/metrics`` on 127.0.0.1 for a Prometheus to scrape.

Traffic is synthetic (latencies and status codes drawn from per-edge distributions); the
sidecar proxy that carries real bytes between real processes comes with ``meshstats.proxy``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

NAMESPACE = "default"
TRUST_DOMAIN = "cluster.local"
ISTIO_VERSION = "1.24.0"
CLUSTER = "Kubernetes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of traffic (5)")
    parser.add_argument(
        "--rps", type=float, default=2000.0, help="requests per second into productpage (2000)"
    )
    parser.add_argument("--port", type=int, default=15090, help="metrics port (15090; 0 = any)")
    parser.add_argument(
        "--serve", action="store_true", help="keep serving the metrics after the traffic stops"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed of the traffic")


@dataclass(frozen=True)
class Workload:
    name: str
    app: str
    version: str

    @property
    def principal(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/bookinfo-{self.app}"

    def node_metadata(self) -> dict[str, object]:
        return {
            "NAME": f"{self.name}-5d8c7b9f4-x2x7q",
            "NAMESPACE": NAMESPACE,
            "WORKLOAD_NAME": self.name,
            "CLUSTER_ID": CLUSTER,
            "MESH_ID": TRUST_DOMAIN,
            "ISTIO_VERSION": ISTIO_VERSION,
            "SERVICE_ACCOUNT": f"bookinfo-{self.app}",
            "OWNER": f"kubernetes://apis/apps/v1/namespaces/{NAMESPACE}/deployments/{self.name}",
            "LABELS": {
                "app": self.app,
                "version": self.version,
                "service.istio.io/canonical-name": self.app,
                "service.istio.io/canonical-revision": self.version,
            },
        }


@dataclass
class Edge:
    client: Workload
    server: Workload
    protocol: str  # "http" or "tcp"
    share: float  # fraction of the edge's parent traffic
    latency_ms: float  # median service time
    error_rate: float
    host: str = field(init=False)

    def __post_init__(self) -> None:
        self.host = f"{self.server.app}.{NAMESPACE}.svc.cluster.local"


PRODUCTPAGE = Workload("productpage-v1", "productpage", "v1")
DETAILS = Workload("details-v1", "details", "v1")
REVIEWS = [Workload(f"reviews-v{i}", "reviews", f"v{i}") for i in (1, 2, 3)]
RATINGS = Workload("ratings-v1", "ratings", "v1")
MONGODB = Workload("mongodb-v1", "mongodb", "v1")

EDGES = [
    Edge(PRODUCTPAGE, DETAILS, "http", 1.0, 3.0, 0.0),
    Edge(PRODUCTPAGE, REVIEWS[0], "http", 1 / 3, 6.0, 0.0),
    Edge(PRODUCTPAGE, REVIEWS[1], "http", 1 / 3, 14.0, 0.01),
    Edge(PRODUCTPAGE, REVIEWS[2], "http", 1 / 3, 30.0, 0.05),
    Edge(REVIEWS[1], RATINGS, "http", 1 / 3, 2.0, 0.0),
    Edge(REVIEWS[2], RATINGS, "http", 1 / 3, 2.0, 0.0),
    Edge(RATINGS, MONGODB, "tcp", 2 / 3, 1.0, 0.0),
]


class Progress:
    """A one-line progress bar on a terminal, a line per second elsewhere."""

    def __init__(self, total: float, stream: TextIO = sys.stderr) -> None:
        self.total, self.stream = total, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last = -1

    def update(self, done: float, note: str) -> None:
        frac = min(1.0, done / self.total) if self.total else 1.0
        if self.tty:
            bar = "#" * int(frac * 30)
            print(f"\r[{bar:<30}] {frac:4.0%} {note}", end="", file=self.stream, flush=True)
        elif int(done) != self._last:
            self._last = int(done)
            print(f"{frac:4.0%} {note}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream)


def quantile(q: float, bounds: tuple[float, ...], counts: tuple[int, ...]) -> float:
    """``histogram_quantile`` as Prometheus computes it, over one series' bucket counts."""
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


def _exchange(edge: Edge) -> tuple[Any, Any]:
    """The real metadata exchange for one edge, through the codec.

    Returns (the server's view of the client, the client's view of the server) as
    ``PeerMetadata``. HTTP edges use the header form; the TCP edge sends the prefix, which the
    other side's streaming decoder receives in 7-byte pieces followed by application bytes.
    """
    from .. import PeerPrefixDecoder, decode_peer_header, encode_peer_header, encode_peer_prefix
    from ..peer_metadata import PeerMetadata

    if edge.protocol == "http":
        request_header = encode_peer_header(edge.client.node_metadata())
        response_header = encode_peer_header(edge.server.node_metadata())
        return (
            PeerMetadata.from_struct(decode_peer_header(request_header)),
            PeerMetadata.from_struct(decode_peer_header(response_header)),
        )
    views = []
    for sender in (edge.client, edge.server):
        wire = encode_peer_prefix(sender.node_metadata(), f"sidecar~{sender.name}") + b"HELLO"
        decoder = PeerPrefixDecoder()
        for i in range(0, len(wire), 7):
            if decoder.feed(wire[i : i + 7]) != "need_more":
                break
        if decoder.state != "done":
            raise RuntimeError(f"metadata exchange failed: {decoder.error}")
        assert decoder.exchange is not None
        views.append(PeerMetadata.from_exchange(decoder.exchange))
    return views[0], views[1]


class Sidecar:
    """One workload's sidecar: its stats engine and its metrics endpoint."""

    def __init__(self, workload: Workload, port: int) -> None:
        from ..engine import StatsEngine
        from ..exposition import MetricsServer

        self.workload = workload
        self.engine = StatsEngine(workload.node_metadata(), local_principal=workload.principal)
        try:
            self.server = MetricsServer(self.engine.store, port=port).start()
        except OSError:  # the port is taken: any free one will do
            self.server = MetricsServer(self.engine.store, port=0).start()


class Link:
    """One edge after the metadata exchange: each side's view of the other."""

    def __init__(self, edge: Edge, client: Sidecar, server: Sidecar) -> None:
        server_view, client_view = _exchange(edge)
        md = {
            "filter_metadata": {
                "istio": {
                    "services": [
                        {"host": edge.host, "name": edge.server.app, "namespace": NAMESPACE}
                    ]
                }
            }
        }
        self.edge = edge
        self.client, self.server = client, server
        self.outbound = client.engine.peer(
            "outbound",
            client_view,
            peer_principal=edge.server.principal,
            cluster_name=f"outbound|9080||{edge.host}",
            cluster_metadata=md,
        )
        self.inbound = server.engine.peer(
            "inbound", server_view, peer_principal=edge.client.principal
        )

    def send(self, rng: Any, n: int) -> None:
        """``n`` requests (or, for TCP, ``n`` short connections) through both sidecars."""
        edge = self.edge
        if edge.protocol == "tcp":
            sizes = rng.integers(100, 4000, (n, 2))
            for up, down in sizes.tolist():
                for engine, ctx, sent, received in (
                    (self.client.engine, self.outbound, up, down),
                    (self.server.engine, self.inbound, down, up),
                ):
                    conn = engine.tcp_connection(ctx)
                    conn.add_bytes(sent=sent, received=received)
                    conn.close()
            return
        failed = (rng.random(n) < edge.error_rate).tolist()
        server_ms = rng.lognormal(math.log(edge.latency_ms), 0.5, n).tolist()
        req_bytes = rng.integers(300, 900, n).tolist()
        resp_bytes = rng.integers(500, 6000, n).tolist()
        for fail, ms, rq, rs in zip(failed, server_ms, req_bytes, resp_bytes):
            code = 503 if fail else 200
            self.server.engine.record_request(
                self.inbound,
                response_code=code,
                duration_ms=ms,
                request_bytes=rq,
                response_bytes=rs,
                host=f"{edge.server.app}:9080",
            )
            self.client.engine.record_request(
                self.outbound,
                response_code=code,
                duration_ms=ms + 0.4,
                request_bytes=rq,
                response_bytes=rs,
                host=f"{edge.server.app}:9080",
                response_flags="URX" if fail else None,
            )


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import HAS_EXTENSION

    workloads = [PRODUCTPAGE, DETAILS, *REVIEWS, RATINGS, MONGODB]
    sidecars = {
        w.name: Sidecar(w, args.port + i if args.port else 0) for i, w in enumerate(workloads)
    }
    links = [Link(e, sidecars[e.client.name], sidecars[e.server.name]) for e in EDGES]
    rng = np.random.default_rng(args.seed)
    tick, rates, sent = 0.1, _edge_rates(args.rps), 0
    progress = Progress(args.duration)
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < args.duration:
        for link, rps in zip(links, rates):
            n = int(rng.poisson(rps * tick))
            if n:
                link.send(rng, n)
                sent += n if link.edge.protocol == "http" else 0
        progress.update(elapsed, f"{sent} requests")
        time.sleep(max(0.0, tick - (time.monotonic() - start - elapsed)))
    progress.update(args.duration, f"{sent} requests")
    progress.close()

    print(_table(links))
    backend = "compiled" if HAS_EXTENSION else "pure-Python (MESHSTATS_NO_EXTENSIONS)"
    print(f"\nbackend: {backend}")
    print("metrics (Envoy's path; /metrics too):")
    for sidecar in sidecars.values():
        print(f"  {sidecar.workload.name:<16} {sidecar.server.url}/stats/prometheus")
    if args.serve:
        print("serving until Ctrl-C ...", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    for sidecar in sidecars.values():
        sidecar.server.stop()
    return 0


def _edge_rates(rps: float) -> list[float]:
    """Requests per second on each edge, following productpage's fan-out."""
    rates = []
    for edge in EDGES:
        if edge.client is PRODUCTPAGE:
            rates.append(rps * edge.share)
        elif edge.protocol == "http":  # reviews-v2/v3 -> ratings
            rates.append(rps / 3)
        else:  # ratings -> mongodb: one connection per two ratings requests
            rates.append(rps * (2 / 3) / 2)
    return rates


def _client_series(link: Link, family: str) -> list[tuple[dict[str, str], Any]]:
    """The client sidecar's series of one family towards this link's server."""
    out = []
    for name, _kind, _help, names, _buckets, series in link.client.engine.store.snapshot():
        if name != family:
            continue
        for values, value in series:
            labels = dict(zip(names, values))
            if labels["destination_workload"] == link.edge.server.name:
                out.append((labels, value))
    return out


def _table(links: list[Link]) -> str:
    """Per edge, as the client sidecar reported it (reporter="source")."""
    from .. import DEFAULT_BUCKETS

    bounds = tuple(DEFAULT_BUCKETS)
    rows = [
        f"\n{'edge (client -> server)':<32}{'requests':>9}{'errors':>8}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'tcp bytes out/in':>19}"
    ]
    for link in links:
        name = f"{link.edge.client.name} -> {link.edge.server.name}"
        if link.edge.protocol == "tcp":
            conns = sum(v for _, v in _client_series(link, "istio_tcp_connections_opened_total"))
            out = sum(v for _, v in _client_series(link, "istio_tcp_sent_bytes_total"))
            back = sum(v for _, v in _client_series(link, "istio_tcp_received_bytes_total"))
            rows.append(f"{name:<32}{f'{conns} conn':>9}{'':>24}{f'{out}/{back}':>19}")
            continue
        total = errors = 0
        for labels, value in _client_series(link, "istio_requests_total"):
            total += value
            errors += value if labels["response_code"] != "200" else 0
        counts = [0] * (len(bounds) + 1)
        for _, (buckets, _sum) in _client_series(link, "istio_request_duration_milliseconds"):
            counts = [a + b for a, b in zip(counts, buckets)]
        p50 = quantile(0.5, bounds, tuple(counts))
        p99 = quantile(0.99, bounds, tuple(counts))
        rate = errors / total if total else 0.0
        rows.append(f"{name:<32}{total:>9}{rate:>8.1%}{p50:>8.1f}{p99:>8.1f}")
    return "\n".join(rows)
