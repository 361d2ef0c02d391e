"""Requests through a client sidecar and a server sidecar (mTLS, HTTP/1.1), telemetry on and
off in the same run: the throughput cost of Istio's metrics. Target: at most 5 %.

The app and both pairs of sidecars run in their own process (``_proxy_pair.py``: one event
loop, so they share one core, as one proxy process would); the load comes from this process,
``CONNECTIONS`` keep-alive connections each sending its share of ``REQUESTS`` back to back
(h11, the same client the demo's apps use). A round is one batch; time per round gives
requests per second, and ``extra_info`` carries ``req_per_s`` and, on the "on" case, the
loss against the "off" case's median (``loss_pct``). Off means the engines record nothing;
everything else (TLS, h11, the peer-metadata headers) is the same (see ``_proxy_pair.py``).

For a figure with rounds interleaved (less exposed to a shared machine's drift)::

    python benchmarks/bench_proxy.py --rounds 7 --requests 3000

Under ``--benchmark-disable`` (CI's smoke run) each case sends ``SMOKE_REQUESTS`` once.

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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import meshstats
from meshstats.cli.demo_apps import HttpClient

REQUESTS = 2000
SMOKE_REQUESTS = 64
CONNECTIONS = 16
HERE = Path(__file__).resolve().parent
MODES = ("direct", "off", "on")


@dataclass
class Pair:
    """The server process and a client with warm connections to each of its ports."""

    process: subprocess.Popen[str]
    ports: dict[str, int]
    loop: asyncio.AbstractEventLoop
    clients: dict[str, HttpClient]

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

    def close(self) -> None:
        for client in self.clients.values():
            self.loop.run_until_complete(client.close())
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
    """User + system CPU time of a process, or of one of its threads, so far (Linux
    ``/proc``; 0.0 elsewhere)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(meshstats.__file__).resolve().parent.parent)}


def start_pair(*options: str) -> Pair:
    process = subprocess.Popen(
        [sys.executable, str(HERE / "_proxy_pair.py"), *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
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
    return pair


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    started = start_pair()
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


# -- interleaved figure -----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
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
    args = parser.parse_args()
    if args.scrapers:
        scrape_case(args)
        return
    pair = start_pair()
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}  # server µs per request
    try:
        print(
            f"compiled core: {meshstats.HAS_EXTENSION}; {args.requests} requests over "
            f"{args.connections} connections per round, modes interleaved"
        )
        for i in range(args.rounds):
            line = []
            for mode in MODES:
                start, used = time.perf_counter(), cpu_seconds(pair.process.pid)
                pair.send(mode, args.requests, args.connections)
                rates[mode].append(args.requests / (time.perf_counter() - start))
                cpu[mode].append((cpu_seconds(pair.process.pid) - used) / args.requests * 1e6)
                line.append(f"{mode} {rates[mode][-1]:.0f}/s ({cpu[mode][-1]:.0f} µs cpu)")
            print(f"round {i + 1}: " + " | ".join(line))
    finally:
        pair.close()
    med = {mode: statistics.median(r) for mode, r in rates.items()}
    losses = [1 - on / off for on, off in zip(rates["on"], rates["off"])]
    print(
        f"median req/s: direct {med['direct']:.0f}, sidecars telemetry off {med['off']:.0f}, "
        f"on {med['on']:.0f}; throughput loss from telemetry: median of rounds "
        f"{100 * statistics.median(losses):.1f}% (range {100 * min(losses):.1f}.."
        f"{100 * max(losses):.1f}%), of medians {100 * (1 - med['on'] / med['off']):.1f}%"
    )
    # The server process is CPU-bound, so its CPU time per request predicts its throughput,
    # and it is far less disturbed by other work on a shared machine than wall time.
    c = {mode: statistics.median(v) for mode, v in cpu.items()}
    print(
        f"server CPU per request (median): direct {c['direct']:.0f} µs, off {c['off']:.0f} µs, "
        f"on {c['on']:.0f} µs; telemetry costs {c['on'] - c['off']:.0f} µs per request "
        f"(two sidecars), a throughput loss of {100 * (1 - c['off'] / c['on']):.1f}%"
    )


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


def _spread(values: list[float], scale: float = 1.0, fmt: str = ".0f") -> str:
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
            f"  {mode}: {_spread(rates[mode])} req/s, p99 {_spread(tails[mode], 1000, '.1f')} ms"
            f", loop CPU {_spread(loop_cpu[mode])} µs/request, waiting for a CPU "
            f"{_spread(loop_queued[mode])} µs/request, other threads "
            f"{_spread(rest_cpu[mode], 100)}% of a core"
        )
        if mode != base:
            losses = [1 - r / b for r, b in zip(rates[mode], rates[base])]
            text += (
                f", throughput loss {_spread(losses, 100, '.1f')}%, "
                f"{_spread(scraped[mode], 1.0, '.1f')} scrapes/s"
            )
        print(text)


if __name__ == "__main__":
    main()
