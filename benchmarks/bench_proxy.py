"""Requests through a client sidecar and a server sidecar (mTLS, HTTP/1.1), telemetry on and
off in the same run: the throughput cost of Istio's metrics. Target: at most 5 %.

The app and both pairs of sidecars run in their own process (``_proxy_pair.py``: one event
loop, so they share one core, as one proxy process would); the load comes from this process,
``CONNECTIONS`` keep-alive connections each sending its share of ``REQUESTS`` back to back
(h11, the same client the demo's apps use). A round is one batch; time per round gives
requests per second, and ``extra_info`` carries ``req_per_s`` and, on the "on" case, the
loss against the "off" case's median (``loss_pct``). Off means the engines record nothing;
everything else (TLS, the HTTP/1.1 relay, the peer-metadata headers) is the same (see
``_proxy_pair.py``).

For a figure with rounds interleaved (less exposed to a shared machine's drift)::

    python benchmarks/bench_proxy.py --rounds 7 --requests 3000

The event loop's share (issue 14.5), CPU per request per sidecar on each loop, side by side::

    python benchmarks/bench_proxy.py --loops asyncio,uvloop --rounds 7 --requests 3000

and the same against the code before a change (another checkout, its ``src/``), each loop
both ways, rounds interleaved::

    python benchmarks/bench_proxy.py --loops asyncio,uvloop --before ../before/src

(the app and the sidecars run on the standard loop unless ``--loops`` names another).

That figure also reports the engine's own share, measured inside the sidecars, per request
per sidecar (issue 9): each ``record_request`` of the "on" pair timed as the proxy calls it
by ``perf_counter_ns``, less an empty bracket read in the same live process, and, for
comparison, the figure this benchmark printed before (thread CPU time around a wrapper's
``super()`` call, less a tight loop's bracket), which bills the engine for its own
measurement; ``engine_main`` says why, and ``--compare-src PATH`` measures another
checkout's code in the same run. Two throughputs differ by more from round to round than
telemetry costs, so these are the figures that show the cost.

**HTTP/2 on one connection** against HTTP/1.1 on 16 (issue 14.5: "HTTP/2 throughput per
connection at least that of HTTP/1.1 with 16 connections")::

    python benchmarks/bench_proxy.py --h2 --rounds 7 --requests 3000 --streams 16,64

In one pair process (``_proxy_pair.py --h2``): the HTTP/1.1 case above through the
"plain" pair (the stock engine, as the HTTP/2 pair's), and per ``--streams`` entry one h2c
connection (prior knowledge, ``_h2_peers.LeanLoad``; ``--h2-client h2``: h2's client) to a
fourth pair's client sidecar carrying the same number of GETs with that many streams in flight;
the sidecars relay it over HTTP/2 (h2 over mTLS, h2c to an h2c app answering the same
body). Each app alone is a case too, so that CPU per request per sidecar can be given.
Every case runs in every round, each round starting with another; reported: requests per
second, CPU per request, how busy the pair process and the load client were (which one
limits), and the HTTP/2 / HTTP/1.1 ratio of each round. ``--before ../before/src`` adds
the HTTP/2 cases of another checkout (a second pair process) to the same rounds, with
their ratio to this one's. ``MESHSTATS_PROFILE=<file>`` runs the pair process under
cProfile (not for figures: see ``_proxy_pair.py``).

Under ``--benchmark-disable`` (CI's smoke run) each case sends ``SMOKE_REQUESTS`` once
(the HTTP/2 case too: one connection, ``STREAMS[0]`` streams at once).

**Connection storm** (``--storm N``): the cost of a *new* connection, not of a request.
N clients each open a new connection to the client sidecar, send one request with
``connection: close`` and read the response to its end, all N at once (``--concurrency``
caps how many are open together). Every one crosses client sidecar -> new mTLS connection ->
server sidecar -> new connection to the app. Here each sidecar runs in a process of its own
(``_storm_sidecar.py``: a client and a server process per variant; the app and the clients
run in this one), so the CPU time each sidecar spends per new connection is read from
``/proc/<pid>/stat``. A variant is a set of ``SidecarConfig`` fields (``STORM_VARIANTS``:
full handshakes and resumed sessions; ``--variants`` replaces them). Reported per variant,
rounds interleaved: new connections per second through the pair (N / the round's wall time),
first-byte latency p50/p99 (from the client's connect to the first response byte) and CPU ms
per connection in each sidecar; the median of the rounds and, in brackets, the lowest and
highest round::

    python benchmarks/bench_proxy.py --storm 200 --rounds 7

The admin port against the data plane (issue 10.6)::

    python benchmarks/bench_proxy.py --scrapers 10 --series 2000 --compare-threaded

gives the "on" pair's server sidecar an admin port and about ``--series`` more series,
then measures the data plane (requests per second, p99 latency) with no scraper, and with
``--scrapers`` scrapers (``_scrapers.py``, a process of their own, Prometheus' headers)
against the sidecar's admin server; ``--compare-threaded`` adds the same scrapers against
a copy of the old thread-per-connection server in the same process (before), and
``--compare-settings`` against servers without the lower render priority, without the
render budget, and without either (what each is worth).
Rounds are interleaved; each round's loss is against that round's scraper-free figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import meshstats
from meshstats.certs import LocalCA
from meshstats.cli.demo_apps import HttpApp, HttpClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _h2_peers import CLIENTS, H2Load  # noqa: E402 - a sibling, not a package

REQUESTS = 2000
SMOKE_REQUESTS = 64
CONNECTIONS = 16
HERE = Path(__file__).resolve().parent
MODES = ("direct", "off", "on")
#: With --h2: the h2c app alone, and through a pair like "on" (see ``_proxy_pair.py``).
H2_MODES = ("direct_h2", "h2")
#: Streams in flight on the one HTTP/2 connection (--streams).
STREAMS = (16, 64)


@dataclass
class Pair:
    """The server process and a client with warm connections to each of its ports."""

    process: subprocess.Popen[str]
    ports: dict[str, int]
    loop: asyncio.AbstractEventLoop
    clients: dict[str, HttpClient]
    #: With ``start_pair("--h2")``: one h2c connection each to "h2" and "direct_h2".
    h2: dict[str, H2Load] = field(default_factory=dict)

    def send(
        self,
        mode: str,
        requests: int,
        connections: int = CONNECTIONS,
        latencies: list[float] | None = None,
    ) -> None:
        self.loop.run_until_complete(
            _send(self.clients[mode], self.ports[mode], requests, connections, latencies)
        )

    def send_h2(self, mode: str, requests: int, streams: int) -> None:
        """``requests`` GETs on the one HTTP/2 connection to ``mode``, ``streams`` at once."""
        self.loop.run_until_complete(self.h2[mode].run("/reviews/0", requests, streams))

    def engine_answer(self) -> dict[str, Any]:
        """The "on" pair's engine timings (``_proxy_pair.py``'s answer to ``engine``): the
        per-call samples of each method since the last call, and running totals."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("engine\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        return answer

    def loop_lag(self) -> float:
        """Seconds the pair's event loop was held at most since the last call."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("lag\n")
        self.process.stdin.flush()
        return float(json.loads(self.process.stdout.readline())["worst_s"])

    def loop_kind(self) -> str:
        """The event loop the pair runs on: ``"asyncio"`` or ``"uvloop"``."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("loop\n")
        self.process.stdin.flush()
        return str(json.loads(self.process.stdout.readline())["loop"])

    def counts(self) -> dict[str, float]:
        """Requests the app served, and the "on" pair's ``istio_requests_total`` per reporter
        (``source``: the client sidecar, ``destination``: the server sidecar)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("counts\n")
        self.process.stdin.flush()
        return {k: float(v) for k, v in json.loads(self.process.stdout.readline()).items()}

    def close(self) -> None:
        for client in self.clients.values():
            self.loop.run_until_complete(client.close())
        for load in self.h2.values():
            load.close()
            self.loop.run_until_complete(asyncio.wait_for(load.lost, 5))
        self.loop.close()
        if self.process.stdin is not None:
            self.process.stdin.close()  # the server's signal to stop
        self.process.wait(15)
        if self.process.stdout is not None:
            self.process.stdout.close()


async def _send(
    client: HttpClient,
    port: int,
    requests: int,
    connections: int,
    latencies: list[float] | None = None,
) -> None:
    address = ("127.0.0.1", port)
    clock = time.perf_counter

    async def one_connection(n: int) -> None:
        for _ in range(n):
            start = clock()
            status, _ = await client.get(address, "/reviews/0", "reviews:9080")
            if status != 200:
                raise AssertionError(f"port {port} answered {status}")
            if latencies is not None:
                latencies.append(clock() - start)

    share, extra = divmod(requests, connections)
    await asyncio.gather(*(one_connection(share + (i < extra)) for i in range(connections)))


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time of a process (summed over its threads) or of one of its threads, so far
    (Linux ``/proc``; 0.0 elsewhere).

    From ``schedstat`` (nanoseconds) rather than ``stat`` (clock ticks of 10 ms, which is
    1% of a round's CPU time and more than the effect measured here).
    """
    total = 0
    tasks = [Path(f"/proc/{pid}/task/{thread}")] if thread is not None else None
    try:
        for task in tasks if tasks is not None else Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended meanwhile
    except OSError:
        return 0.0
    return total / 1e9


def run_queue_seconds(pid: int, thread: int) -> float:
    """Time a thread has waited for a CPU while runnable so far (Linux schedstat; 0.0
    elsewhere): a thread held up by the scheduler, not by a lock or the GIL."""
    try:
        return int(Path(f"/proc/{pid}/task/{thread}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def settle(pid: int, deadline: float = 20.0) -> None:
    """Wait until a process is nearly idle (under 10% of a core over 0.2 s), so that a
    round does not pay for renders a previous round's scrapers left running."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        used = cpu_seconds(pid)
        time.sleep(0.2)
        if cpu_seconds(pid) - used < 0.02:
            return


def _env(src: str | None = None) -> dict[str, str]:
    """The environment of a server process: meshstats from this checkout, or from ``src``
    (another checkout's ``src/``: the code before a change, measured in the same run)."""
    return {
        **os.environ,
        "PYTHONPATH": src or str(Path(meshstats.__file__).resolve().parent.parent),
    }


def start_pair(
    *options: str, loop: str | None = None, src: str | None = None, h2_client: str = "lean"
) -> Pair:
    """``loop``: the event loop of the app and sidecars (``MESHSTATS_EVENT_LOOP``; by default
    the standard one); ``src``: see :func:`_env`; ``h2_client``: the HTTP/2 load client's
    implementation (``_h2_peers.H2Load``)."""
    env = _env(src) if loop is None else {**_env(src), "MESHSTATS_EVENT_LOOP": loop}
    process = subprocess.Popen(
        [sys.executable, str(HERE / "_proxy_pair.py"), *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(15)
        raise RuntimeError(f"_proxy_pair.py exited with {process.returncode}")
    pair = Pair(process, json.loads(line), asyncio.new_event_loop(), {})
    for mode in MODES:
        pair.clients[mode] = HttpClient()
        pair.send(mode, CONNECTIONS)  # open every connection, resolve peers: warm
    if "h2" in pair.ports:  # --h2 holds HTTP/2 to HTTP/1.1 through "plain" (h2_main)
        pair.clients["plain"] = HttpClient()
        pair.send("plain", CONNECTIONS)
    for mode in H2_MODES if "h2" in pair.ports else ():
        pair.h2[mode] = pair.loop.run_until_complete(
            CLIENTS[h2_client].connect(pair.ports[mode], "reviews:9080")
        )
        pair.send_h2(mode, CONNECTIONS, CONNECTIONS)  # the same warm-up
    return pair


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    started = start_pair("--h2")
    yield started
    started.close()


_medians: dict[str, float] = {}


@pytest.mark.benchmark(group=f"proxy: {REQUESTS} requests over {CONNECTIONS} connections")
@pytest.mark.parametrize("mode", MODES)  # "on" last: its loss is against "off"'s median
def test_proxy_requests(benchmark: Any, pair: Pair, mode: str) -> None:
    requests = SMOKE_REQUESTS if benchmark.disabled else REQUESTS
    benchmark.extra_info["requests_per_round"] = requests
    benchmark.pedantic(pair.send, args=(mode, requests), rounds=5, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable
        return
    median = benchmark.stats.stats.median
    _medians[mode] = median
    benchmark.extra_info["req_per_s"] = round(requests / median)
    if mode == "on" and "off" in _medians:
        benchmark.extra_info["loss_pct"] = round(100 * (1 - _medians["off"] / median), 2)


@pytest.mark.benchmark(
    group=f"proxy: {REQUESTS} requests, HTTP/2 over one connection, {STREAMS[0]} streams"
)
def test_proxy_h2_one_connection(benchmark: Any, pair: Pair) -> None:
    """HTTP/2 through the same sidecars on one connection; ``h2_over_h1``: its req/s over
    the "on" case's (HTTP/1.1, 16 connections) when that ran first in this session."""
    requests = SMOKE_REQUESTS if benchmark.disabled else REQUESTS
    benchmark.extra_info["requests_per_round"] = requests
    benchmark.pedantic(
        pair.send_h2, args=("h2", requests, STREAMS[0]), rounds=5, iterations=1, warmup_rounds=1
    )
    if benchmark.stats is None:  # --benchmark-disable
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info["req_per_s"] = round(requests / median)
    if "on" in _medians:
        benchmark.extra_info["h2_over_h1"] = round(_medians["on"] / median, 3)


# -- connection storm -------------------------------------------------------------------------

STORM = 200
SMOKE_STORM = 8
# Variant name -> SidecarConfig fields both sidecars of that pair get. Two entries are not
# fields: "src" runs that variant's sidecars from another checkout's src/ (the code before a
# change, say), so before and after are measured in the same run, rounds interleaved;
# "loop": "uvloop" runs them on uvloop (which must be importable).
STORM_VARIANTS: dict[str, dict[str, Any]] = {
    "full": {"tls_session_resumption": False},
    "resumed": {"tls_session_resumption": True},
}
STORM_REQUEST = b"GET /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\nconnection: close\r\n\r\n"


def _side(role: str, certs: Path, target: int, variant: str, fields: dict[str, Any]) -> Any:
    """Start one ``_storm_sidecar.py`` process; returns it and the port it serves on."""
    fields = dict(fields)
    src = fields.pop("src", None) or Path(meshstats.__file__).resolve().parent.parent
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src)] + ([path] if path else []))}
    profile = os.environ.get(f"MESHSTATS_PROFILE_{role.upper()}")
    if profile:
        env["MESHSTATS_PROFILE"] = f"{profile}.{variant}"
    process = subprocess.Popen(
        [sys.executable, str(HERE / "_storm_sidecar.py"), role, str(certs), str(target),
         json.dumps(fields)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(15)
        raise RuntimeError(f"_storm_sidecar.py {role} exited with {process.returncode}")
    return process, int(json.loads(line))


@dataclass
class StormRound:
    """One storm through one pair: wall time, first-byte latencies, failures, CPU per side."""

    seconds: float
    first_byte_ms: list[float]
    failed: int
    # "client"/"server" sidecar, "driver" (this process) -> CPU ms per connection
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.first_byte_ms) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.first_byte_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass
class StormPair:
    """Per variant a client and a server sidecar process; the app runs in this loop."""

    processes: dict[str, dict[str, subprocess.Popen[str]]]  # variant -> side -> process
    ports: dict[str, int]  # variant -> its client sidecar's outbound port
    loop: asyncio.AbstractEventLoop
    app: HttpApp
    tmp: tempfile.TemporaryDirectory[str]

    def storm(self, variant: str, connections: int, concurrency: int) -> StormRound:
        pids = {side: p.pid for side, p in self.processes[variant].items()}
        pids["driver"] = os.getpid()  # the clients and the app: not a sidecar's cost
        before = {side: cpu_seconds(pid) for side, pid in pids.items()}
        result = self.loop.run_until_complete(_storm(self.ports[variant], connections, concurrency))
        # Let the sidecars finish closing the round's connections before reading their CPU.
        self.loop.run_until_complete(asyncio.sleep(0.3))
        for side, pid in pids.items():
            result.cpu_ms[side] = (cpu_seconds(pid) - before[side]) / connections * 1e3
        return result

    def close(self) -> None:
        processes = [p for sides in self.processes.values() for p in sides.values()]
        for process in processes:
            if process.stdin is not None:
                process.stdin.close()  # the signal to stop
        for process in processes:
            process.wait(30)
            if process.stdout is not None:
                process.stdout.close()
        self.loop.run_until_complete(self.app.close())
        self.loop.close()
        self.tmp.cleanup()


async def _storm(port: int, connections: int, concurrency: int) -> StormRound:
    gate = asyncio.Semaphore(concurrency)
    first: list[float] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with gate:
            start = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(STORM_REQUEST)
                    head = await reader.read(1)
                    arrived = time.perf_counter()
                    rest = await reader.read()  # to EOF: the sidecar closes after it
                finally:
                    writer.close()
            except OSError:
                failed += 1
                return
            if not (head + rest).startswith(b"HTTP/1.1 200 "):
                failed += 1
                return
            first.append((arrived - start) * 1e3)

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    return StormRound(time.perf_counter() - began, first, failed)


def start_storm_pair(variants: dict[str, dict[str, Any]]) -> StormPair:
    tmp = tempfile.TemporaryDirectory(prefix="meshstats-storm-")
    certs = Path(tmp.name)
    ca = LocalCA.create("cluster.local")
    ca.issue("default", "reviews").write(certs / "server")
    ca.issue("default", "productpage").write(certs / "client")
    loop = asyncio.new_event_loop()
    app = loop.run_until_complete(HttpApp("reviews", latency_ms=0.0).start())
    pair = StormPair({}, {}, loop, app, tmp)
    try:
        for variant, fields in variants.items():
            server, inbound = _side("server", certs, app.port, variant, fields)
            pair.processes[variant] = {"server": server}
            client, pair.ports[variant] = _side("client", certs, inbound, variant, fields)
            pair.processes[variant]["client"] = client
        for variant in variants:
            pair.storm(variant, 4, 4)  # imports done, peers resolved, a first ticket: warm
    except BaseException:
        pair.close()
        raise
    return pair


@pytest.fixture(scope="module")
def storm_pair() -> Iterator[StormPair]:
    started = start_storm_pair(STORM_VARIANTS)
    yield started
    started.close()


@pytest.mark.benchmark(group=f"proxy: storm of {STORM} new connections (no keep-alive)")
@pytest.mark.parametrize("variant", STORM_VARIANTS)
def test_proxy_connection_storm(benchmark: Any, storm_pair: StormPair, variant: str) -> None:
    connections = SMOKE_STORM if benchmark.disabled else STORM
    rounds: list[StormRound] = []

    def storm() -> None:
        rounds.append(storm_pair.storm(variant, connections, connections))

    benchmark.pedantic(storm, rounds=3, iterations=1, warmup_rounds=0)
    assert all(r.failed == 0 for r in rounds), [r.failed for r in rounds]
    benchmark.extra_info["connections_per_round"] = connections
    benchmark.extra_info["conn_per_s"] = round(statistics.median(r.rate for r in rounds))
    benchmark.extra_info["first_byte_p99_ms"] = round(
        statistics.median(r.percentile(0.99) for r in rounds)
    )


def _spread(values: list[float], fmt: str = ".0f") -> str:
    """The median and, in brackets, the lowest and highest value."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def storm_main(args: argparse.Namespace) -> None:
    variants: dict[str, dict[str, Any]] = (
        json.loads(args.variants) if args.variants else STORM_VARIANTS
    )
    pair = start_storm_pair(variants)
    results: dict[str, list[StormRound]] = {v: [] for v in variants}
    concurrency = args.concurrency or args.storm
    try:
        print(
            f"compiled core: {meshstats.HAS_EXTENSION}; {args.storm} new connections per round "
            f"(at most {concurrency} open), variants interleaved: {json.dumps(variants)}"
        )
        for i in range(args.rounds):
            line = []
            # Each round starts with another variant, so none always follows the same one.
            order = list(variants)[i % len(variants) :] + list(variants)[: i % len(variants)]
            for variant in order:
                r = pair.storm(variant, args.storm, concurrency)
                results[variant].append(r)
                line.append(
                    f"{variant} {r.rate:.0f}/s p50 {r.percentile(0.5):.0f} ms "
                    f"p99 {r.percentile(0.99):.0f} ms cpu {r.cpu_ms['client']:.2f}+"
                    f"{r.cpu_ms['server']:.2f} ms" + (f" FAILED {r.failed}" if r.failed else "")
                )
            print(f"round {i + 1}: " + " | ".join(line), flush=True)
    finally:
        pair.close()
    print("median of rounds (lowest–highest round):")
    for variant, rs in results.items():
        print(
            f"  {variant}: {_spread([r.rate for r in rs])} new connections/s; first byte "
            f"p50 {_spread([r.percentile(0.5) for r in rs])} ms, "
            f"p99 {_spread([r.percentile(0.99) for r in rs])} ms; CPU per connection: "
            f"client sidecar {_spread([r.cpu_ms['client'] for r in rs], '.2f')} ms, "
            f"server sidecar {_spread([r.cpu_ms['server'] for r in rs], '.2f')} ms "
            f"(clients and app: {_spread([r.cpu_ms['driver'] for r in rs], '.2f')} ms); "
            f"failed {sum(r.failed for r in rs)}"
        )


# -- interleaved figure -----------------------------------------------------------------------


def loops_main(args: argparse.Namespace, loops: list[str], before: str | None = None) -> None:
    """CPU per request per sidecar on each event loop (``--loops asyncio,uvloop``), one pair
    process per loop, rounds interleaved (each round starts with another loop). With
    ``before`` (another checkout's ``src/``), each loop also runs that code, as
    ``<loop>@before``: today's stack against a change, side by side in one run.

    Per sidecar = (the pair process's CPU per request through two sidecars - the app's
    alone, ``direct``) / 2, from the same round of the same process, so the app's own loop
    cost cancels out. Telemetry on (``on``) and off (``off``) both.
    """
    stacks: dict[str, tuple[str, str | None]] = {name: (name, None) for name in loops}
    if before is not None:
        stacks.update({f"{name}@before": (name, before) for name in loops})
    pairs = {label: start_pair(loop=loop, src=src) for label, (loop, src) in stacks.items()}
    loops = list(stacks)
    # µs of the pair process's CPU per request, per loop and mode
    cpu: dict[str, dict[str, list[float]]] = {name: {mode: [] for mode in MODES} for name in loops}
    rates: dict[str, list[float]] = {name: [] for name in loops}  # req/s through "on"
    try:
        for name, pair in pairs.items():
            if pair.loop_kind() != stacks[name][0]:
                raise AssertionError(f"asked for {name}, the pair runs {pair.loop_kind()}")
        print(
            f"compiled core: {meshstats.HAS_EXTENSION}; {args.requests} requests over "
            f"{args.connections} keep-alive connections per case, HTTP/1.1 over mTLS; "
            f"loops {', '.join(loops)} and modes interleaved"
        )
        for i in range(args.rounds):
            line = []
            order = loops[i % len(loops) :] + loops[: i % len(loops)]
            for name in order:
                pair = pairs[name]
                for mode in MODES:
                    start, used = time.perf_counter(), cpu_seconds(pair.process.pid)
                    pair.send(mode, args.requests, args.connections)
                    spent = cpu_seconds(pair.process.pid) - used
                    cpu[name][mode].append(spent / args.requests * 1e6)
                    if mode == "on":
                        rates[name].append(args.requests / (time.perf_counter() - start))
                c = {mode: cpu[name][mode][-1] for mode in MODES}
                line.append(
                    f"{name}: app {c['direct']:.0f} µs, per sidecar off "
                    f"{(c['off'] - c['direct']) / 2:.0f} on {(c['on'] - c['direct']) / 2:.0f} µs"
                )
            print(f"round {i + 1}: " + " | ".join(line), flush=True)
    finally:
        for pair in pairs.values():
            pair.close()

    def per_sidecar(name: str, mode: str) -> list[float]:
        return [(m - d) / 2 for m, d in zip(cpu[name][mode], cpu[name]["direct"])]

    def per_sidecar_pooled(name: str, mode: str) -> list[float]:
        # Against the app's median over every round of every stack on this loop (its code is
        # the same in all): a round's own app figure swings as much as a sidecar costs.
        app = statistics.median(
            d for other in loops if other.split("@")[0] == name.split("@")[0]
            for d in cpu[other]["direct"]
        )  # fmt: skip
        return [(m - app) / 2 for m in cpu[name][mode]]

    print("CPU per request, median of rounds (lowest–highest round):")
    for name in loops:
        print(
            f"  {name}: per sidecar, telemetry on {_spread(per_sidecar(name, 'on'))} µs, "
            f"off {_spread(per_sidecar(name, 'off'))} µs; the app alone "
            f"{_spread(cpu[name]['direct'])} µs; through both sidecars (on) "
            f"{_spread(rates[name])} req/s; per sidecar (on) against the app's median over "
            f"all rounds on this loop {_spread(per_sidecar_pooled(name, 'on'))} µs"
        )
    # Each stack against the first, and with --before each loop against its own before.
    pairs_compared = [(name, loops[0]) for name in loops[1:]]
    if before is not None:
        pairs_compared = [(name, f"{name}@before") for name in loops if "@" not in name]
    for name, base in pairs_compared:
        ratio = [
            n / b for n, b in zip(per_sidecar(name, "on"), per_sidecar(base, "on"), strict=True)
        ]
        print(f"  {name} / {base}, per sidecar (on), same round: {_spread(ratio, '.2f')}")
        pair_ratio = [n / b for n, b in zip(cpu[name]["on"], cpu[base]["on"], strict=True)]
        print(
            f"  {name} / {base}, the pair process's CPU per request through both sidecars "
            f"and the app (on), same round: {_spread(pair_ratio, '.2f')}"
        )


def h2_main(
    args: argparse.Namespace,
    streams: list[int],
    before: str | None = None,
    loops: list[str] | None = None,
) -> None:
    """HTTP/2 on one connection against HTTP/1.1 on ``args.connections`` (issue 14.5), in
    one pair process, every case in every round, each round starting with another case.

    Cases: the HTTP/1.1 app alone and through the "on" pair (``args.connections`` keep-alive
    connections, as the default figure), and per entry of ``streams`` the h2c app alone and
    through the "h2" pair (one connection, that many streams in flight). Per case: requests
    per second; the pair process's CPU per request, and per sidecar (minus the same app's
    alone in the same round, halved); and how busy each side was (CPU time / wall time):
    the pair process near 100 % of a core means the sidecars limit, the load client (this
    process) near 100 % that it does, and the figure says nothing about the sidecars.

    With ``before`` (another checkout's ``src/``), a second pair process runs that code and
    its HTTP/2 cases join the rounds (``... @before``), for a change's effect in one run.
    With ``loops`` (``--loops asyncio,uvloop``), a pair process per event loop, each with
    all the cases (``... @uvloop``); ``@before`` runs on the first. ``--h2-client`` picks
    the load client's HTTP/2 implementation (``_h2_peers``).
    """
    client = args.h2_client
    on_loop: dict[str, str | None] = (
        {"": None} if not loops else {f"@{name}": name for name in loops}
    )
    pairs = {at: start_pair("--h2", loop=name, h2_client=client) for at, name in on_loop.items()}
    for at, name in on_loop.items():
        if name is not None and pairs[at].loop_kind() != name:
            raise AssertionError(f"asked for {name}, the pair runs {pairs[at].loop_kind()}")
    first = next(iter(pairs))
    if before is not None:
        on_loop["@before"] = on_loop[first]
        pairs["@before"] = start_pair("--h2", loop=on_loop[first], src=before, h2_client=client)
    me = os.getpid()

    def h1_of(at: str) -> str:
        """The HTTP/1.1 case an HTTP/2 case of pair ``at`` is held against."""
        return f"h1 {args.connections} conns{first if at == '@before' else at}"

    # label -> (pair, protocol, mode, connections or streams); "direct": the app alone.
    cases: dict[str, tuple[str, str, str, int]] = {}
    for at in pairs:
        if at != "@before":
            cases[f"h1 app{at}"] = (at, "h1", "direct", args.connections)
            # "plain": the stock engine, as the "h2" pair's (not "on"'s timing wrapper).
            cases[h1_of(at)] = (at, "h1", "plain", args.connections)
        for n in streams:
            cases[f"h2 app x{n}{at}"] = (at, "h2", "direct_h2", n)
            cases[f"h2 1 conn x{n}{at}"] = (at, "h2", "h2", n)
    rate: dict[str, list[float]] = {label: [] for label in cases}
    pair_cpu: dict[str, list[float]] = {label: [] for label in cases}  # µs per request
    pair_busy: dict[str, list[float]] = {label: [] for label in cases}  # share of a core
    load_busy: dict[str, list[float]] = {label: [] for label in cases}
    labels = list(cases)
    served = {at: pair.counts() for at, pair in pairs.items()}
    try:
        print(
            f"compiled core: {meshstats.HAS_EXTENSION}; {args.requests} GETs per case and "
            f"round through a client and a server sidecar (mTLS, telemetry on): HTTP/1.1 over "
            f"{args.connections} keep-alive connections, HTTP/2 over one connection with "
            f"{', '.join(map(str, streams))} streams in flight (h2c to the client sidecar, "
            f"h2 over mTLS, h2c to the app); load client on {client}; cases interleaved"
            + (f"; @before: {before}" if before else "")
        )
        for i in range(args.rounds):
            for label in labels[i % len(labels) :] + labels[: i % len(labels)]:
                at, protocol, mode, n = cases[label]
                pair = pairs[at]
                pid = pair.process.pid
                start = time.perf_counter()
                used, mine = cpu_seconds(pid), cpu_seconds(me)
                if protocol == "h1":
                    pair.send(mode, args.requests, n)
                else:
                    pair.send_h2(mode, args.requests, n)
                wall = time.perf_counter() - start
                spent, spent_here = cpu_seconds(pid) - used, cpu_seconds(me) - mine
                rate[label].append(args.requests / wall)
                pair_cpu[label].append(spent / args.requests * 1e6)
                pair_busy[label].append(spent / wall)
                load_busy[label].append(spent_here / wall)
            line = [
                f"{h1} {rate[h1][-1]:.0f}/s ({pair_cpu[h1][-1]:.0f} µs)"
                for h1 in dict.fromkeys(map(h1_of, pairs))
            ] + [
                f"h2 x{n}{at} {rate[f'h2 1 conn x{n}{at}'][-1]:.0f}/s "
                f"({pair_cpu[f'h2 1 conn x{n}{at}'][-1]:.0f} µs, "
                f"{rate[f'h2 1 conn x{n}{at}'][-1] / rate[h1_of(at)][-1]:.2f}x)"
                for at in pairs
                for n in streams
            ]
            print(f"round {i + 1}: " + " | ".join(line), flush=True)
        after = {at: pair.counts() for at, pair in pairs.items()}
    finally:
        for pair in pairs.values():
            pair.close()
    # Every request reached the app (the load client also checks each status): the h2 ones
    # over the server sidecar's shared h2c connection, and the load client's own.
    for at in pairs:
        sent = args.requests * args.rounds * len(streams) * 2
        got = after[at]["h2_app"] - served[at]["h2_app"]
        if got != sent:
            raise AssertionError(f"the h2c app{at} served {got} of {sent}")
        print(
            f"the h2c app{at} accepted {after[at]['h2_app_connections']:.0f} connections (the "
            "load client's and the server sidecar's)"
        )

    def app_of(label: str) -> str:
        at, protocol, _, n = cases[label]
        return f"h1 app{at}" if protocol == "h1" else f"h2 app x{n}{at}"

    def per_sidecar(label: str) -> list[float]:
        return [(p - a) / 2 for p, a in zip(pair_cpu[label], pair_cpu[app_of(label)], strict=True)]

    def ratio(a: list[float], b: list[float]) -> str:
        return _spread([y / x for x, y in zip(a, b, strict=True)], ".2f")

    print("median of rounds (lowest–highest round); CPU per request of the pair process:")
    for label, (_, _, mode, _) in cases.items():
        text = (
            f"  {label}: {_spread(rate[label])} req/s, {_spread(pair_cpu[label])} µs; busy: "
            f"pair process {_spread([100 * b for b in pair_busy[label]])} %, load client "
            f"{_spread([100 * b for b in load_busy[label]])} %"
        )
        if mode not in ("direct", "direct_h2"):
            text += f"; per sidecar {_spread(per_sidecar(label))} µs"
        print(text)
    for at in pairs:
        h1 = h1_of(at)
        for n in streams:
            h2 = f"h2 1 conn x{n}{at}"
            ratios = [b / a for a, b in zip(rate[h1], rate[h2], strict=True)]
            verdict = "met" if statistics.median(ratios) >= 1 else "NOT met"
            print(
                f"HTTP/2 one connection x{n}{at} / HTTP/1.1 {args.connections} connections, "
                f"same round: req/s {_spread(ratios, '.2f')}, CPU per request per sidecar "
                f"{ratio(per_sidecar(h1), per_sidecar(h2))}; target (h2 per connection >= h1 "
                f"with {args.connections}): {verdict}"
            )
    if before is not None:
        for n in streams:
            now, then = f"h2 1 conn x{n}{first}", f"h2 1 conn x{n}@before"
            print(
                f"HTTP/2 x{n}, this checkout / @before, same round: req/s "
                f"{ratio(rate[then], rate[now])}, CPU per request per sidecar "
                f"{ratio(per_sidecar(then), per_sidecar(now))}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument(
        "--storm", type=int, metavar="N", help="connection storm: N new connections per round"
    )
    parser.add_argument(
        "--concurrency", type=int, help="storm: connections open at once (default: all N)"
    )
    parser.add_argument(
        "--variants",
        help="storm: JSON mapping variant -> SidecarConfig fields (both sidecars); "
        '"src": a path runs that variant from another checkout\'s src/, '
        '"loop": "uvloop" on uvloop',
    )
    parser.add_argument(
        "--scrapers", type=int, default=0, help="measure the admin port's cost instead (issue 10.6)"
    )
    parser.add_argument(
        "--series", type=int, default=2000, help="series added to the scraped store"
    )
    parser.add_argument(
        "--compare-threaded",
        action="store_true",
        help="also scrape the old thread-per-connection server, in the same run",
    )
    parser.add_argument(
        "--compare-settings",
        action="store_true",
        help="also scrape servers with render_niceness=0, render_budget=1, and both",
    )
    parser.add_argument(
        "--plain-scrapes", action="store_true", help="scrapers ask for text, without gzip"
    )
    parser.add_argument(
        "--compare-src",
        metavar="PATH",
        help="engine figure: also run the pair from another checkout's src/ (before a "
        "change), rounds interleaved",
    )
    parser.add_argument(
        "--loops",
        default=None,
        metavar="LOOP,LOOP",
        help="compare event loops for the app and sidecars, e.g. asyncio,uvloop: CPU per "
        "request per sidecar on each, side by side (default: the standard loop only)",
    )
    parser.add_argument(
        "--before",
        metavar="SRC",
        help="with --loops: also run each loop on another checkout's src/ (the code before a "
        "change), rounds interleaved, and give each loop's ratio to it; with --h2: the "
        "HTTP/2 cases on it too",
    )
    parser.add_argument(
        "--h2",
        action="store_true",
        help="HTTP/2 over one connection against HTTP/1.1 over --connections, same pair "
        "process, rounds interleaved (issue 14.5)",
    )
    parser.add_argument(
        "--streams",
        default=",".join(map(str, STREAMS)),
        metavar="N,N",
        help="with --h2: streams in flight on the HTTP/2 connection, one case each",
    )
    parser.add_argument(
        "--h2-client",
        choices=tuple(CLIENTS),
        default="lean",
        help="with --h2: the load client, a lean one written for the bench (default) or the "
        "h2 library's (see _h2_peers.py)",
    )
    args = parser.parse_args()
    if args.h2:
        loops = [name.strip() for name in (args.loops or "").split(",") if name.strip()]
        h2_main(args, [int(n) for n in args.streams.split(",") if n.strip()], args.before, loops)
        return
    if args.loops:
        loops = [name.strip() for name in args.loops.split(",") if name.strip()]
        loops_main(args, loops, args.before)
        return
    if args.scrapers:
        scrape_case(args)
        return
    if args.storm:
        storm_main(args)
        return
    engine_main(args)


def _trimmed_mean(values: list[int]) -> float:
    """The mean without the slowest 1 % (calls that were preempted or interrupted)."""
    ordered = sorted(values)
    return statistics.fmean(ordered[: max(1, len(ordered) * 99 // 100)])


def _engine_round(pair: Pair, calls: int) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The engine's answer once it has made ``calls`` calls, and the round's samples: a
    sidecar records a request after its response is sent, so the client can see the last
    response before the last call has happened."""
    got: dict[str, list[int]] = {}
    deadline = time.monotonic() + 5.0
    while True:
        answer = pair.engine_answer()
        for method, values in answer["samples"].items():
            got.setdefault(method, []).extend(values)
        if answer["calls"] >= calls or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if answer["calls"] != calls:  # each sidecar records each request once
        raise AssertionError(f"{answer['calls'] - calls} engine calls more than expected")
    return answer, got


@dataclass
class EngineRun:
    """One pair process' figures, a list entry per round."""

    pair: Pair
    rates: dict[str, list[float]] = field(default_factory=dict)  # req/s per mode
    cpu: dict[str, list[float]] = field(default_factory=dict)  # process µs per request
    figures: dict[str, list[float]] = field(default_factory=dict)  # µs per call per sidecar

    def round(self, modes: tuple[str, ...], requests: int, connections: int) -> str:
        for mode in modes:
            if mode == "on":
                before = self.pair.engine_answer()
            start, used = time.perf_counter(), cpu_seconds(self.pair.process.pid)
            self.pair.send(mode, requests, connections)
            elapsed = time.perf_counter() - start
            self.rates.setdefault(mode, []).append(requests / elapsed)
            spent = cpu_seconds(self.pair.process.pid) - used
            self.cpu.setdefault(mode, []).append(spent / requests * 1e6)
            if mode == "on":
                answer, got = _engine_round(self.pair, before["calls"] + 2 * requests)
                med = {k: statistics.median(v) for k, v in got.items()}
                trimmed = {k: _trimmed_mean(got[k]) for k in ("perf", "perf_empty")}
                for key, ns in (
                    ("thread_loop", statistics.fmean(got["thread"]) - answer["bracket_ns"]),
                    ("thread_live", med["thread"] - med["thread_empty"]),
                    ("perf_super", med["perf_super"] - med["perf_empty"]),
                    ("perf_median", med["perf"] - med["perf_empty"]),
                    ("perf_mean", trimmed["perf"] - trimmed["perf_empty"]),
                ):
                    self.figures.setdefault(key, []).append(ns / 1e3)
        line = [f"{m} {self.rates[m][-1]:.0f}/s ({self.cpu[m][-1]:.0f} µs cpu)" for m in modes]
        f = {k: v[-1] for k, v in self.figures.items()}
        line.append(
            f"engine per sidecar: thread/loop bracket {f['thread_loop']:.2f}, thread/live "
            f"{f['thread_live']:.2f}, perf/super {f['perf_super']:.2f}, perf median "
            f"{f['perf_median']:.2f}, perf mean "
            f"{f['perf_mean']:.2f}, differential "
            f"{(self.cpu['plain'][-1] - self.cpu['off'][-1]) / 2:.1f} µs"
        )
        return " | ".join(line)

    def summary(self) -> None:
        rates, cpu, figures = self.rates, self.cpu, self.figures
        med = {mode: statistics.median(r) for mode, r in rates.items()}
        losses = [1 - on / off for on, off in zip(rates["plain"], rates["off"])]
        print(
            f"median req/s: direct {med['direct']:.0f}, sidecars telemetry off "
            f"{med['off']:.0f}, on {med['plain']:.0f} (on and timed {med['on']:.0f}); "
            f"throughput loss from telemetry: median of rounds "
            f"{100 * statistics.median(losses):.1f}% (range {100 * min(losses):.1f}.."
            f"{100 * max(losses):.1f}%), of medians {100 * (1 - med['plain'] / med['off']):.1f}%"
        )
        # The server process is CPU-bound, so its CPU time per request predicts its
        # throughput, and it is far less disturbed by other work on a shared machine than
        # wall time.
        c = {mode: statistics.median(v) for mode, v in cpu.items()}
        print(
            f"server CPU per request (median): direct {c['direct']:.0f} µs, off "
            f"{c['off']:.0f} µs, on {c['plain']:.0f} µs (on and timed {c['on']:.0f} µs); "
            f"telemetry costs {c['plain'] - c['off']:.0f} µs per request (two sidecars), a "
            f"throughput loss of {100 * (1 - c['off'] / c['plain']):.1f}%"
        )
        diff = [(p - o) / 2 for p, o in zip(cpu["plain"], cpu["off"])]
        e = statistics.median(figures["thread_loop"])
        print("engine (record_request) per request per sidecar, median of rounds (lowest–highest):")
        print(
            f"  thread CPU, less a tight loop's bracket (the old figure): "
            f"{_spread(figures['thread_loop'], '.2f')} µs; {100 * 2 * e / c['on']:.2f}% of the "
            f"server's {c['on']:.0f} µs of CPU per request"
        )
        labels = {
            "thread_live": "thread CPU, median less a live empty bracket",
            "perf_super": "perf_counter, super() and **kwargs as before, median less a live "
            "empty bracket",
            "perf_median": "perf_counter, called as the proxy calls it, median less a live "
            "empty bracket (the figure)",
            "perf_mean": "the same, mean of the fastest 99 % less an empty bracket's",
        }
        for key, label in labels.items():
            print(f"  {label}: {_spread(figures[key], '.2f')} µs")
        print(f"  differential, process CPU (plain - off) / 2: {_spread(diff, '.1f')} µs")


def engine_main(args: argparse.Namespace) -> None:
    """Throughput and CPU per request with telemetry off and on, and the engine's share.

    The engine's share per request per sidecar, five ways, each per round (rounds and the
    modes within a round interleaved); see ``_proxy_pair.Timed`` for the brackets:

    * ``thread, loop bracket``: the figure this benchmark always printed: thread CPU time
      around ``super().record_request(peer, **kwargs)``, less the bracket's cost in a tight
      loop. It reads high twice over. Reading that clock is a system call, which in the
      live process, with cold caches, costs about twice what it does in a loop, and the
      difference is billed to the engine. And ``super()`` and a dict unpacked into the
      call are the wrapper's, not the proxy's: with cold caches they cost about as much
      as the engine's own work.
    * ``thread, live bracket``: the same calls' median, less the median of an empty
      thread-CPU bracket read in the live process right before a call (fixes the first).
    * ``perf_counter, super() and **kwargs``: the same calls timed by the vDSO clock (no
      system call), less an empty live bracket the same way.
    * ``perf_counter, called as the proxy calls it`` (**the figure**): the stock method
      called with the nine named keywords ``http.py``'s ``_record`` passes, timed by the
      vDSO clock, less an empty live bracket: median, and the mean of all but the slowest
      1 % (preemption lands in that 1 %: a round has thousands of calls). It is what the
      proxy pays per call, except the method lookup on the engine, which the caller pays
      whatever the engine does.
    * ``differential``: the process' CPU per request through the "plain" pair (the stock
      engine, no clock read at all) less through the "off" pair, halved. Nothing added to
      measure and every indirect cost included (what the engine evicts for the next
      request's work), but it is the difference of two figures near a millisecond, so on
      a shared machine its rounds spread by tens of µs either way: it bounds the others,
      it does not replace them.

    ``--compare-src PATH`` runs a second pair process from another checkout's ``src/`` (the
    code before a change), rounds interleaved with this one's, and prints the ratio of the
    two perf_counter medians per round.
    """
    names = ["this checkout"]
    runs = {names[0]: EngineRun(start_pair())}
    if args.compare_src:
        names.append(f"before ({args.compare_src})")
        runs[names[1]] = EngineRun(start_pair(src=args.compare_src))
    modes = (*MODES, "plain")
    try:
        for run in runs.values():
            run.pair.clients["plain"] = HttpClient()
            run.pair.send("plain", CONNECTIONS)
        print(
            f"compiled core: {meshstats.HAS_EXTENSION}; {args.requests} requests over "
            f"{args.connections} connections per round, modes interleaved"
            + (", pair processes interleaved" if len(runs) > 1 else "")
        )
        for i in range(args.rounds):
            order = modes[i % len(modes) :] + modes[: i % len(modes)]
            for name in names[i % len(names) :] + names[: i % len(names)]:
                line = runs[name].round(order, args.requests, args.connections)
                print(f"round {i + 1}, {name}: {line}", flush=True)
    finally:
        for run in runs.values():
            run.pair.close()
    for name, run in runs.items():
        print(f"-- {name}")
        run.summary()
    if len(runs) > 1:
        this, before = (runs[name].figures["perf_median"] for name in names)
        ratio = [t / b for t, b in zip(this, before, strict=True)]
        print(f"perf_counter median, this / before, same round: {_spread(ratio, '.2f')}")


# -- the admin port against the data plane (issue 10.6) --------------------------------------


class Scrapers:
    """``_scrapers.py`` in its own process, scraping until :meth:`stop`."""

    def __init__(self, port: int, n: int, plain: bool) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "_scrapers.py"), str(port), str(n)]
            + (["--plain"] if plain else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.process.wait(15)
            raise RuntimeError(f"_scrapers.py exited with {self.process.returncode}")

    def stop(self) -> dict[str, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        counts: dict[str, int] = json.loads(self.process.stdout.readline())
        self.process.wait(15)
        self.process.stdin.close()
        self.process.stdout.close()
        return counts


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98]


def _scaled_spread(values: list[float], scale: float = 1.0, fmt: str = ".0f") -> str:
    med = statistics.median(values) * scale
    return f"{med:{fmt}} ({min(values) * scale:{fmt}}..{max(values) * scale:{fmt}})"


def _body_size(port: int, plain: bool) -> int:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {} if plain else {"Accept-Encoding": "gzip", "Accept": "application/openmetrics-text"}
    try:
        connection.request("GET", "/stats/prometheus", headers=headers)
        return len(connection.getresponse().read())
    finally:
        connection.close()


#: MetricsServer settings that --compare-settings scrapes besides the defaults.
SETTINGS: list[dict[str, float]] = [
    {"render_niceness": 0},
    {"render_budget": 1},
    {"render_niceness": 0, "render_budget": 1},
]


def scrape_case(args: argparse.Namespace) -> None:
    """Data-plane throughput and p99 with 0 and ``args.scrapers`` scrapers, interleaved."""
    options = ["--admin-series", str(args.series)]
    if args.compare_threaded:
        options.append("--threaded-admin")
    variants = SETTINGS if args.compare_settings else []
    for kwargs in variants:
        options += ["--admin-variant", json.dumps(kwargs)]
    pair = start_pair(*options)
    n = args.scrapers
    modes = {"0 scrapers": None, f"{n} scrapers": pair.ports["admin"]}
    for i, kwargs in enumerate(variants):
        settings = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        modes[f"{n} scrapers, {settings}"] = pair.ports[f"admin_variant_{i}"]
    if args.compare_threaded:
        modes[f"{n} scrapers, threaded (before)"] = pair.ports["admin_threaded"]
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    tails: dict[str, list[float]] = {mode: [] for mode in modes}
    scraped: dict[str, list[float]] = {mode: [] for mode in modes}
    # CPU of the sidecars' event loop per request, its wait for a CPU, and the CPU of the
    # rest of their process (the admin server, mostly) per second: where a loss comes
    # from (more work per request, the scheduler, or neither: the GIL).
    loop_cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    loop_queued: dict[str, list[float]] = {mode: [] for mode in modes}
    rest_cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    pid = pair.process.pid
    try:
        pair.send("on", CONNECTIONS)
        body = _body_size(pair.ports["admin"], args.plain_scrapes)
        print(
            f"compiled core: {meshstats.HAS_EXTENSION}; {args.requests} requests over "
            f"{args.connections} connections per round; the store has "
            f"{args.series} + the traffic's series, a scrape is {body / 1e6:.2f} MB"
            f"{' (text)' if args.plain_scrapes else ' (OpenMetrics, gzip)'}; modes interleaved"
        )
        for i in range(args.rounds):
            line = []
            for mode, port in modes.items():
                settle(pid)
                scrapers = None if port is None else Scrapers(port, n, args.plain_scrapes)
                latencies: list[float] = []
                start, loop0, all0 = time.perf_counter(), cpu_seconds(pid, pid), cpu_seconds(pid)
                queued0 = run_queue_seconds(pid, pid)
                try:
                    pair.send("on", args.requests, args.connections, latencies)
                finally:
                    elapsed = time.perf_counter() - start
                    loop1, all1 = cpu_seconds(pid, pid), cpu_seconds(pid)
                    queued1 = run_queue_seconds(pid, pid)
                    counts = scrapers.stop() if scrapers is not None else {"scrapes": 0}
                rates[mode].append(args.requests / elapsed)
                tails[mode].append(p99(latencies))
                scraped[mode].append(counts["scrapes"] / elapsed)
                loop_cpu[mode].append((loop1 - loop0) / args.requests * 1e6)
                loop_queued[mode].append((queued1 - queued0) / args.requests * 1e6)
                rest_cpu[mode].append(((all1 - all0) - (loop1 - loop0)) / elapsed)
                line.append(
                    f"{mode} {rates[mode][-1]:.0f}/s p99 {1000 * tails[mode][-1]:.1f} ms"
                    + (f" {scraped[mode][-1]:.1f} scrapes/s" if port is not None else "")
                    + f" (loop {loop_cpu[mode][-1]:.0f} µs CPU, {loop_queued[mode][-1]:.0f} µs"
                    " queued per request)"
                )
            print(f"round {i + 1}: " + " | ".join(line), flush=True)
    finally:
        pair.close()
    base = "0 scrapers"
    print("median (min..max) over rounds:")
    for mode in modes:
        text = (
            f"  {mode}: {_scaled_spread(rates[mode])} req/s, "
            f"p99 {_scaled_spread(tails[mode], 1000, '.1f')} ms"
            f", loop CPU {_scaled_spread(loop_cpu[mode])} µs/request, waiting for a CPU "
            f"{_scaled_spread(loop_queued[mode])} µs/request, other threads "
            f"{_scaled_spread(rest_cpu[mode], 100)}% of a core"
        )
        if mode != base:
            losses = [1 - r / b for r, b in zip(rates[mode], rates[base])]
            text += (
                f", throughput loss {_scaled_spread(losses, 100, '.1f')}%, "
                f"{_scaled_spread(scraped[mode], 1.0, '.1f')} scrapes/s"
            )
        print(text)


if __name__ == "__main__":
    main()
