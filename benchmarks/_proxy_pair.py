"""The server side of ``bench_proxy.py``: one app and three client+server sidecar pairs (mTLS).

Run as a separate process (``python benchmarks/_proxy_pair.py``), so the sidecars have a
core of their own and the load client's work is not billed to them. It prints one JSON line,
``{"direct": port, "on": port, "off": port, "plain": port}`` (the app itself, and the
outbound port of each pair's client sidecar), then serves until its stdin closes. Each line
``engine`` on its stdin is answered with one JSON line, ``{"ns": ..., "calls": ...,
"bracket_ns": ..., "samples": {...}}``: the thread CPU time of the "on" pair's calls timed
by that clock so far, how many calls there were (by every method), the tight-loop cost of
that bracket, and each method's per-call nanoseconds since the last ``engine`` line (see
:class:`Timed`); a line ``lag`` with ``{"worst_s": ...}``, the longest the event loop was
held since the last ``lag``; a line ``loop`` with ``{"loop": ...}``, the event loop it runs
on (``MESHSTATS_EVENT_LOOP``, default ``asyncio``); a line ``counts`` with what the app
served and what the "on" pair's two sidecars recorded (``istio_requests_total`` summed per
reporter), for load runs that compare them.

The pairs are identical (same certificates, nodes, listeners, HTTP/1.1 relaying, peer-metadata
headers both ways, peer contexts resolved once per connection) except that the "off" pair's
engines record nothing: :class:`Silent` replaces ``record_request`` with a no-op. That is
what "telemetry off" means in the figures: the cost of the stats, not of the exchange. The
"on" pair's engines time every call (:class:`Timed`); a third pair, "plain"
(``{"plain": port}`` in the JSON line too), records with the stock engine and reads no
clock, so "plain" against "off" is the engine's cost with nothing added to measure it.

``--admin-series N`` gives the "on" pair's server sidecar its admin port, with about ``N``
series in its store besides those of the traffic (Istio's four HTTP metrics for ``N / 4``
client workloads and response codes), and adds ``"admin"`` to the JSON line;
``--threaded-admin`` also serves that store from a copy of the old thread-per-connection
server (``_threaded_admin.py``), as ``"admin_threaded"``, for a before/after in one run;
each ``--admin-variant '{"render_niceness": 0}'`` one more :class:`~meshstats.MetricsServer`
of that store with those arguments, as ``"admin_variant_<i>"``.

``--h2`` adds an h2c app (``_h2_peers.H2App``, the same answers as the HTTP/1.1 app) as
``"direct_h2"``, and a fourth pair in front of it, identical to the "plain" pair, as ``"h2"``:
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
from array import array
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


_RECORD = StatsEngine.record_request  # the stock method, called without super()


class Timed(StatsEngine):
    """The sidecar's own engine, with each ``record_request`` timed, five ways in turn.

    Call ``i`` of the pair's two engines is measured by method ``METHODS[i % 5]``:

    ``thread``
        Thread CPU time around ``super().record_request(peer, **kwargs)``, the figure this
        benchmark always reported: its sum over the calls, less a bracket cost measured in
        a tight loop (:func:`_bracket_ns`) per call, is ``ns - bracket_ns * calls``.
    ``perf_super``
        The same call, timed by ``time.perf_counter_ns`` (a vDSO clock read, no system
        call).
    ``perf``
        ``time.perf_counter_ns`` around the call exactly as the proxy makes it (``http.py``
        ``_record``: these nine keywords, named, no dict to unpack, no ``super()``).
    ``thread_empty`` / ``perf_empty``
        The same bracket around nothing, read right before the (unmeasured) call: what the
        bracket itself costs *here*, between two requests' worth of other work, rather
        than in a tight loop.

    Why more than one: reading the thread CPU clock is a system call (about 0.6 µs in a
    tight loop on a VM, twice that with cold caches), and subtracting the tight loop's
    figure leaves the rest billed to the engine; and ``super()`` plus a ``**kwargs``
    dict unpacked into the call cost, with cold caches, about as much as the engine
    itself, which the proxy never pays. ``perf`` less ``perf_empty`` is the engine's
    share as the proxy pays it; as wall time it is exposed to preemption, which is why
    the calls are summarised by the median and by the mean without the slowest 1 %.
    Calls with keywords ``_record`` does not pass (``add_series``) are not timed.
    """

    METHODS = ("thread", "perf_super", "perf", "thread_empty", "perf_empty")
    ns = 0  # thread CPU time of the calls measured by "thread"
    calls = 0  # timed calls, by every method
    samples: dict[str, array[int]] = {m: array("q") for m in METHODS}  # since the last "engine"

    def record_request(
        self,
        peer: Any,
        *,
        response_code: int = 0,
        duration_ms: float | None = None,
        request_bytes: int = 0,
        response_bytes: int = 0,
        host: str | None = None,
        response_flags: Any = None,
        method: str | None = None,
        path: str | None = None,
        content_type: str | None = None,
        **rest: Any,
    ) -> None:
        if rest:
            _RECORD(
                self, peer, response_code=response_code, duration_ms=duration_ms,
                request_bytes=request_bytes, response_bytes=response_bytes, host=host,
                response_flags=response_flags, method=method, path=path,
                content_type=content_type, **rest,
            )  # fmt: skip
            return
        kind = Timed.calls % 5
        Timed.calls += 1
        if kind < 2:  # the old wrapper's call: super() and a dict of keywords
            kwargs = {
                "response_code": response_code, "duration_ms": duration_ms,
                "request_bytes": request_bytes, "response_bytes": response_bytes,
                "host": host, "response_flags": response_flags, "method": method,
                "path": path, "content_type": content_type,
            }  # fmt: skip
            clock = time.thread_time_ns if kind == 0 else time.perf_counter_ns
            start = clock()
            super().record_request(peer, **kwargs)
            spent = clock() - start
            if kind == 0:
                Timed.ns += spent
        elif kind == 2:
            clock = time.perf_counter_ns  # as the empty bracket reads it: no lookup inside
            start = clock()
            _RECORD(
                self, peer, response_code=response_code, duration_ms=duration_ms,
                request_bytes=request_bytes, response_bytes=response_bytes, host=host,
                response_flags=response_flags, method=method, path=path,
                content_type=content_type,
            )  # fmt: skip
            spent = clock() - start
        else:
            clock = time.thread_time_ns if kind == 3 else time.perf_counter_ns
            start = clock()
            spent = clock() - start
            _RECORD(
                self, peer, response_code=response_code, duration_ms=duration_ms,
                request_bytes=request_bytes, response_bytes=response_bytes, host=host,
                response_flags=response_flags, method=method, path=path,
                content_type=content_type,
            )  # fmt: skip
        Timed.samples[Timed.METHODS[kind]].append(spent)


ENGINES: dict[str, type[StatsEngine]] = {"on": Timed, "off": Silent, "plain": StatsEngine}


def _engine(kind: str, node: dict[str, Any], cert_dir: Path) -> StatsEngine:
    return ENGINES[kind](node, local_principal=principal_of(cert_dir))


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
            samples = {m: v.tolist() for m, v in Timed.samples.items()}
            for v in Timed.samples.values():
                del v[:]
            answer = {"ns": Timed.ns, "calls": Timed.calls, "bracket_ns": bracket}
            print(json.dumps({**answer, "samples": samples}), flush=True)
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
    kind: str, app_port: int, server_dir: Path, client_dir: Path, admin: bool = False
) -> list[Sidecar]:
    inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol="http")
    server = Sidecar(
        SidecarConfig(
            node=SERVER_NODE,
            cert_dir=server_dir,
            inbound=inbound,
            admin_port=0 if admin else None,
        ),
        engine=_engine(kind, SERVER_NODE, server_dir),
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
        engine=_engine(kind, CLIENT_NODE, client_dir),
    )
    await client.start()
    return [client, server]


def _tune_gc() -> None:
    """The collector's settings ``meshstats sidecar`` makes once its sidecar is up; a
    ``--before`` checkout that predates them runs with Python's own, as its CLI did."""
    try:
        from meshstats._gc import tune_for_serving
    except ImportError:
        return
    tune_for_serving()


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
        on = await start_pair("on", app.port, server_dir, client_dir, admin=admin)
        off = await start_pair("off", app.port, server_dir, client_dir)
        plain = await start_pair("plain", app.port, server_dir, client_dir)
        ports = {
            "direct": app.port,
            **{name: pair[0].outbound_ports[0] for name, pair in
               (("on", on), ("off", off), ("plain", plain))},
        }  # fmt: skip
        COUNTED.update(app=app, sidecars=on)
        h2_pair: list[Sidecar] = []
        h2_server: asyncio.Server | None = None
        if args.h2:
            h2_server, h2_port, served, accepted = await start_h2_app("reviews")
            # A stock engine: not timed, so its calls stay out of the "on" pair's figure.
            h2_pair = await start_pair("plain", h2_port, server_dir, client_dir)
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
        _tune_gc()
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
            for sidecar in on + off + plain + h2_pair:
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
