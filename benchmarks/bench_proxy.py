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

That figure also reports the engine's own share, measured inside the sidecars: the thread
CPU time of every ``record_request`` of the "on" pair (``_proxy_pair.Timed``), per request
and as a share of the server process's CPU time per request. Two throughputs differ by
more from round to round than telemetry costs, so this is the figure that shows the cost.

Under ``--benchmark-disable`` (CI's smoke run) each case sends ``SMOKE_REQUESTS`` once.
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

    def send(self, mode: str, requests: int, connections: int = CONNECTIONS) -> None:
        self.loop.run_until_complete(
            _send(self.clients[mode], self.ports[mode], requests, connections)
        )

    def engine_time(self) -> tuple[float, int]:
        """CPU seconds the "on" pair's engines spent in ``record_request``, and the calls."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("engine\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        return (answer["ns"] - answer["bracket_ns"] * answer["calls"]) / 1e9, answer["calls"]

    def loop_lag(self) -> float:
        """Seconds the pair's event loop was held at most since the last call."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("lag\n")
        self.process.stdin.flush()
        return float(json.loads(self.process.stdout.readline())["worst_s"])

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
        self.loop.close()
        if self.process.stdin is not None:
            self.process.stdin.close()  # the server's signal to stop
        self.process.wait(15)
        if self.process.stdout is not None:
            self.process.stdout.close()


async def _send(client: HttpClient, port: int, requests: int, connections: int) -> None:
    address = ("127.0.0.1", port)

    async def one_connection(n: int) -> None:
        for _ in range(n):
            status, _ = await client.get(address, "/reviews/0", "reviews:9080")
            if status != 200:
                raise AssertionError(f"port {port} answered {status}")

    share, extra = divmod(requests, connections)
    await asyncio.gather(*(one_connection(share + (i < extra)) for i in range(connections)))


def cpu_seconds(pid: int) -> float:
    """CPU time of a process so far, summed over its threads (Linux ``/proc``; 0.0 elsewhere).

    From ``schedstat`` (nanoseconds) rather than ``stat`` (clock ticks of 10 ms, which is
    1% of a round's CPU time and more than the effect measured here).
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended meanwhile
    except OSError:
        return 0.0
    return total / 1e9


def start_pair() -> Pair:
    env = {**os.environ, "PYTHONPATH": str(Path(meshstats.__file__).resolve().parent.parent)}
    process = subprocess.Popen(
        [sys.executable, str(HERE / "_proxy_pair.py")],
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
    args = parser.parse_args()
    pair = start_pair()
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}  # server µs per request
    engine: list[float] = []  # µs per request in record_request, both sidecars together
    try:
        print(
            f"compiled core: {meshstats.HAS_EXTENSION}; {args.requests} requests over "
            f"{args.connections} connections per round, modes interleaved"
        )
        for i in range(args.rounds):
            line = []
            for mode in MODES:
                if mode == "on":
                    spent, calls = pair.engine_time()
                start, used = time.perf_counter(), cpu_seconds(pair.process.pid)
                pair.send(mode, args.requests, args.connections)
                rates[mode].append(args.requests / (time.perf_counter() - start))
                cpu[mode].append((cpu_seconds(pair.process.pid) - used) / args.requests * 1e6)
                line.append(f"{mode} {rates[mode][-1]:.0f}/s ({cpu[mode][-1]:.0f} µs cpu)")
                if mode == "on":
                    spent_after, calls_after = pair.engine_time()
                    if calls_after - calls != 2 * args.requests:  # each sidecar records once
                        raise AssertionError(f"{calls_after - calls} engine calls in a round")
                    engine.append((spent_after - spent) / args.requests * 1e6)
                    line.append(f"engine {engine[-1]:.2f} µs")
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
    # The engine's own CPU time, measured inside the sidecars, is the cost of telemetry with
    # none of the round-to-round noise of comparing two throughputs.
    e = statistics.median(engine)
    print(
        f"engine (record_request, thread CPU time): {e:.2f} µs per request for the two "
        f"sidecars (rounds {min(engine):.2f}..{max(engine):.2f}), {e / 2:.2f} µs per sidecar; "
        f"{100 * e / c['on']:.2f}% of the server's {c['on']:.0f} µs of CPU per request"
    )


if __name__ == "__main__":
    main()
