"""The server side of ``bench_proxy.py``: one app and two client+server sidecar pairs (mTLS).

Run as a separate process (``python benchmarks/_proxy_pair.py``), so the sidecars have a
core of their own and the load client's work is not billed to them. It prints one JSON line,
``{"direct": port, "on": port, "off": port}`` (the app itself, and the outbound port of each
pair's client sidecar), then serves until its stdin closes. Each line ``engine`` on its stdin
is answered with one JSON line, ``{"ns": ..., "calls": ...}``: the thread CPU time the "on"
pair's two engines spent in ``record_request`` so far, and how many calls that was; a line
``lag`` with ``{"worst_s": ...}``, the longest the event loop was held since the last ``lag``;
a line ``loop`` with ``{"loop": ...}``, the event loop it runs on (``MESHSTATS_EVENT_LOOP``,
default ``asyncio``); a line ``counts`` with what the app served and what the "on" pair's two
sidecars recorded (``istio_requests_total`` summed per reporter), for load runs that compare
them.

Both pairs are identical (same certificates, nodes, listeners, h11 relaying, peer-metadata
headers both ways, peer contexts resolved once per connection) except that the "off" pair's
engines record nothing: :class:`Silent` replaces ``record_request`` with a no-op. That is
what "telemetry off" means in the figures: the cost of the stats, not of the exchange.

``--admin-series N`` gives the "on" pair's server sidecar its admin port, with about ``N``
series in its store besides those of the traffic (Istio's four HTTP metrics for ``N / 4``
client workloads and response codes), and adds ``"admin"`` to the JSON line;
``--threaded-admin`` also serves that store from a copy of the old thread-per-connection
server (``_threaded_admin.py``), as ``"admin_threaded"``, for a before/after in one run;
each ``--admin-variant '{"render_niceness": 0}'`` one more :class:`~meshstats.MetricsServer`
of that store with those arguments, as ``"admin_variant_<i>"``.

``--h2`` adds an h2c app (``_h2_peers.H2App``, the same answers as the HTTP/1.1 app) as
``"direct_h2"``, and a third pair in front of it, identical to the "on" pair, as ``"h2"``:
a client that speaks h2c to its outbound port is relayed over HTTP/2 all the way (the
sidecars pick the codec by preface and ALPN, as Envoy's ``codec_type: AUTO``), and the app
must then speak h2c, which the HTTP/1.1 app does not. ``counts`` then also gives what the
h2c app served and how many connections it accepted (``h2_app``, ``h2_app_connections``).

With ``MESHSTATS_PROFILE=<file>`` the whole process runs under cProfile, written to that
file when it stops: where the pair's CPU time goes (cProfile slows it, so figures from such
a run are not throughput figures).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from meshstats import _loop
from meshstats.certs import LocalCA, principal_of
from meshstats.cli.demo_apps import HttpApp
from meshstats.engine import StatsEngine
from meshstats.exposition import MetricsServer
from meshstats.proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _h2_peers import start_h2_app  # noqa: E402 - a sibling, not a package
from _threaded_admin import ThreadedMetricsServer  # noqa: E402 - a sibling, not a package

CLIENT_NODE = {
    "NAME": "productpage-v1-abc",
    "WORKLOAD_NAME": "productpage-v1",
    "NAMESPACE": "default",
    "LABELS": {"app": "productpage", "version": "v1"},
}
SERVER_NODE = {
    "NAME": "reviews-v2-xyz",
    "WORKLOAD_NAME": "reviews-v2",
    "NAMESPACE": "default",
    "LABELS": {"app": "reviews", "version": "v2"},
}
SERVICE_HOST = "reviews.default.svc.cluster.local"


class Silent(StatsEngine):
    """A stats engine that resolves peers as usual but records no request."""

    def record_request(self, peer: Any, **kwargs: Any) -> None:
        return None


class Timed(StatsEngine):
    """The sidecar's own engine, with the CPU time of each ``record_request`` added up.

    Thread CPU time, not wall time: what the engine's share of a request costs is not
    disturbed by other processes on the machine, which is why it is measured here and not
    inferred from throughput. The subclass call itself (about 0.1 µs) is outside the bracket.
    """

    ns = 0
    calls = 0

    def record_request(self, peer: Any, **kwargs: Any) -> None:
        start = time.thread_time_ns()
        super().record_request(peer, **kwargs)
        Timed.ns += time.thread_time_ns() - start
        Timed.calls += 1


def _engine(telemetry: bool, node: dict[str, Any], cert_dir: Path) -> StatsEngine:
    kind = Timed if telemetry else Silent
    return kind(node, local_principal=principal_of(cert_dir))


def _bracket_ns(samples: int = 20000) -> float:
    """What an empty bracket reads (the clock calls' own share), to subtract per call."""
    total = 0
    for _ in range(samples):
        start = time.thread_time_ns()
        total += time.thread_time_ns() - start
    return total / samples


class LagMonitor:
    """How long the event loop was held: a task asks to wake every millisecond and keeps
    the most CPU time the loop's thread spent between two of its wake-ups since the last
    ``take()``. That is what every other connection waits per step when one connection's
    work holds the loop. CPU time rather than wall time: a machine busy with other
    processes delays the wake-ups without any connection holding the loop.
    """

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        while True:
            start = time.thread_time()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.thread_time() - start)

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


LAG = LagMonitor()
COUNTED: dict[str, Any] = {}  # the "on" pair's sidecars and the app, for "counts"


def _counts() -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"app": float(sum(COUNTED["app"].served.values()))}
    if "h2_app" in COUNTED:
        totals["h2_app"] = float(sum(COUNTED["h2_app"].values()))
        totals["h2_app_connections"] = float(COUNTED["h2_app_connections"][0])
    for sidecar in COUNTED["sidecars"]:
        text = sidecar.engine.store.render().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "istio_requests_total":
                    reporter = sample.labels["reporter"]
                    totals[reporter] = totals.get(reporter, 0.0) + sample.value
    return totals


LOOP_KIND = ["?"]  # "asyncio" or "uvloop": the running loop's package, set by main()


def _answer_until_eof() -> None:
    bracket = _bracket_ns()
    for line in sys.stdin:
        if line.strip() == "engine":
            answer = {"ns": Timed.ns, "calls": Timed.calls, "bracket_ns": bracket}
            print(json.dumps(answer), flush=True)
        elif line.strip() == "lag":
            print(json.dumps({"worst_s": LAG.take()}), flush=True)
        elif line.strip() == "counts":
            print(json.dumps(_counts()), flush=True)
        elif line.strip() == "loop":
            print(json.dumps({"loop": LOOP_KIND[0]}), flush=True)


def add_series(engine: StatsEngine, n: int) -> None:
    """About ``n`` more series: Istio's four HTTP metrics per client workload and code."""
    codes = (200, 404, 500, 503)
    for i in range(max(n // 4 // len(codes), 1)):
        meta = {
            "WORKLOAD_NAME": f"client-{i}-v1",
            "NAMESPACE": "default",
            "LABELS": {"app": f"client-{i}", "version": "v1"},
        }
        peer = engine.peer(
            "inbound", meta, peer_principal=f"spiffe://cluster.local/ns/default/sa/c{i}"
        )
        for code in codes:
            engine.record_request(
                peer, response_code=code, duration_ms=i % 90, request_bytes=300 + i,
                response_bytes=2000 + i,
            )  # fmt: skip


async def start_pair(
    telemetry: bool, app_port: int, server_dir: Path, client_dir: Path, admin: bool = False
) -> list[Sidecar]:
    inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol="http")
    server = Sidecar(
        SidecarConfig(
            node=SERVER_NODE,
            cert_dir=server_dir,
            inbound=inbound,
            admin_port=0 if admin else None,
        ),
        engine=_engine(telemetry, SERVER_NODE, server_dir),
    )
    await server.start()
    out = OutboundConfig(
        port=0,
        upstream=("127.0.0.1", server.inbound_port),
        service_host=SERVICE_HOST,
        protocol="http",
        service_port=9080,
    )
    client = Sidecar(
        SidecarConfig(node=CLIENT_NODE, cert_dir=client_dir, outbound=(out,), admin_port=None),
        engine=_engine(telemetry, CLIENT_NODE, client_dir),
    )
    await client.start()
    return [client, server]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--admin-series", type=int, default=0)
    parser.add_argument("--threaded-admin", action="store_true")
    parser.add_argument("--admin-variant", action="append", default=[], type=json.loads)
    parser.add_argument("--h2", action="store_true")
    args = parser.parse_args()
    LOOP_KIND[0] = type(asyncio.get_running_loop()).__module__.split(".")[0]
    with tempfile.TemporaryDirectory(prefix="meshstats-bench-") as tmp:
        ca = LocalCA.create("cluster.local")
        server_dir = ca.issue("default", "reviews").write(Path(tmp) / "server")
        client_dir = ca.issue("default", "productpage").write(Path(tmp) / "client")
        app = await HttpApp("reviews", latency_ms=0.0).start()
        admin = args.admin_series > 0
        on = await start_pair(True, app.port, server_dir, client_dir, admin=admin)
        off = await start_pair(False, app.port, server_dir, client_dir)
        ports = {"direct": app.port, "on": on[0].outbound_ports[0], "off": off[0].outbound_ports[0]}
        COUNTED.update(app=app, sidecars=on)
        h2_pair: list[Sidecar] = []
        h2_server: asyncio.Server | None = None
        if args.h2:
            h2_server, h2_port, served, accepted = await start_h2_app("reviews")
            h2_pair = await start_pair(True, h2_port, server_dir, client_dir)
            ports.update(direct_h2=h2_port, h2=h2_pair[0].outbound_ports[0])
            COUNTED.update(h2_app=served, h2_app_connections=accepted)
        extra: list[ThreadedMetricsServer | MetricsServer] = []
        if admin:
            store = on[1].engine.store
            add_series(on[1].engine, args.admin_series)
            ports["admin"] = int(on[1].admin_url.rsplit(":", 1)[1])
            if args.threaded_admin:
                extra.append(ThreadedMetricsServer(store).start())
                ports["admin_threaded"] = extra[-1].port
            for i, kwargs in enumerate(args.admin_variant):
                extra.append(MetricsServer(store, **kwargs).start())
                ports[f"admin_variant_{i}"] = extra[-1].port
        print(json.dumps(ports), flush=True)
        monitor = asyncio.create_task(LAG.run())
        try:
            # Timed's counters are read from another thread: two ints, a torn read is at
            # worst one call off.
            await asyncio.get_running_loop().run_in_executor(None, _answer_until_eof)
        finally:
            monitor.cancel()
            for server in extra:
                server.stop()
            for sidecar in on + off + h2_pair:
                await sidecar.stop()
            await app.close()
            if h2_server is not None:
                h2_server.close()


if __name__ == "__main__":
    # The standard loop unless MESHSTATS_EVENT_LOOP names one (bench_proxy.py --loops), so a
    # figure does not change with whether uvloop happens to be installed.
    loop = _loop.choose({_loop.ENV: os.environ.get(_loop.ENV, "asyncio")})
    profile_to = os.environ.get("MESHSTATS_PROFILE")
    if profile_to:
        # Thread CPU time, not wall time: on a shared machine the wall clock bills the time
        # the process waited for a core to whatever call it was preempted in (a send(), say).
        profiler = cProfile.Profile(time.thread_time)
        profiler.runcall(_loop.run, main(), loop)
        profiler.dump_stats(profile_to)
    else:
        _loop.run(main(), loop)
