"""The sidecar pair under sustained load, then a connection storm: no errors, the same counts
at the clients, both sidecars and the app, and flat memory and descriptors (issue 10).

The pair runs in its own process (``_proxy_pair.py``: the app, a client sidecar and a server
sidecar, mTLS between them); this process is the clients. A cycle is:

1. ``--connections`` keep-alive connections (200) sending GETs back to back for ``--seconds``
   (30);
2. a storm: ``--storm`` new connections (one request each, ``Connection: close``),
   ``--storm-concurrency`` at a time.

After each cycle it compares the requests the clients saw answered 200 with the app's count
and the ``istio_requests_total`` of the client sidecar (``reporter="source"``) and of the
server sidecar (``reporter="destination"``), and reads the pair's RSS and open descriptors.
``--cycles`` (2) cycles: what a leak looks like is growth from one cycle to the next::

    PYTHONPATH=src python benchmarks/bench_load.py

Exit status 1 if any request failed or any count disagrees. Under pytest one short cycle
runs as a smoke test with the same checks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proxy import Pair, cpu_seconds, start_pair  # noqa: E402

from meshstats.cli.demo_apps import HttpClient  # noqa: E402

HOST = "reviews:9080"
GET_CLOSE = b"GET /reviews/0 HTTP/1.1\r\nHost: reviews:9080\r\nConnection: close\r\n\r\n"


@dataclass
class Tally:
    ok: int = 0
    errors: list[str] = field(default_factory=list)


def resources(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open descriptors) of a process (Linux ``/proc``)."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def keep_alive(port: int, connections: int, seconds: float | None, each: int) -> Tally:
    """GETs back to back on ``connections`` keep-alive connections, for ``seconds`` or
    ``each`` requests per connection."""
    tally = Tally()
    deadline = None if seconds is None else time.monotonic() + seconds

    async def one() -> None:
        client = HttpClient()  # one pooled connection per worker: keep-alive throughout
        sent = 0
        try:
            while (deadline is None and sent < each) or (
                deadline is not None and time.monotonic() < deadline
            ):
                sent += 1
                try:
                    status, _ = await client.get(("127.0.0.1", port), "/reviews/0", HOST)
                except (OSError, ValueError) as exc:
                    tally.errors.append(f"keep-alive: {type(exc).__name__}: {exc}")
                    continue
                if status == 200:
                    tally.ok += 1
                else:
                    tally.errors.append(f"keep-alive: status {status}")
        finally:
            await client.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return tally


async def storm(port: int, total: int, concurrency: int) -> tuple[Tally, list[float]]:
    """``total`` new connections, one request each; returns the tally and first-byte times."""
    tally, first_byte = Tally(), []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            start = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(GET_CLOSE)
                    head = await reader.readuntil(b"\r\n")
                    first_byte.append(time.perf_counter() - start)
                    await reader.read()  # to the close the request asked for
                finally:
                    writer.close()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                tally.errors.append(f"storm: {type(exc).__name__}: {exc}")
                return
            if head.startswith(b"HTTP/1.1 200 "):
                tally.ok += 1
            else:
                tally.errors.append(f"storm: {head!r}")

    await asyncio.gather(*(one() for _ in range(total)))
    return tally, first_byte


def check_counts(pair: Pair, before: dict[str, float], answered: int) -> list[str]:
    after = pair.counts()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("app", "source", "destination")}
    return [
        f"{k}: {v:.0f} recorded, {answered} answered" for k, v in delta.items() if v != answered
    ]


def cycle(pair: Pair, args: argparse.Namespace, n: int) -> list[str]:
    port = pair.ports["on"]
    before = pair.counts()
    used = cpu_seconds(pair.process.pid)
    start = time.perf_counter()
    kept = asyncio.run(keep_alive(port, args.connections, args.seconds, args.each))
    kept_s = time.perf_counter() - start
    start = time.perf_counter()
    stormed, first_byte = asyncio.run(storm(port, args.storm, args.storm_concurrency))
    storm_s = time.perf_counter() - start
    cpu = cpu_seconds(pair.process.pid) - used
    answered = kept.ok + stormed.ok
    problems = kept.errors + stormed.errors + check_counts(pair, before, answered)
    rss, fds = resources(pair.process.pid)
    first_byte.sort()

    def ms(q: float) -> float:
        if not first_byte:
            return float("nan")
        return 1e3 * first_byte[min(len(first_byte) - 1, int(q * len(first_byte)))]

    print(
        f"cycle {n}: keep-alive {kept.ok} requests in {kept_s:.1f} s ({kept.ok / kept_s:.0f}/s) "
        f"over {args.connections} connections; storm {stormed.ok} new connections in "
        f"{storm_s:.1f} s ({stormed.ok / storm_s:.0f}/s), first byte p50 {ms(0.5):.0f} ms p99 "
        f"{ms(0.99):.0f} ms; pair CPU {cpu:.1f} s; errors {len(kept.errors) + len(stormed.errors)}"
        f"; counts {'identical' if not problems else 'DIFFER'} (clients, app, source, "
        f"destination: {answered}); pair RSS {rss / 1024:.1f} MiB, {fds} descriptors"
    )
    return problems


def test_short_cycle_loses_and_miscounts_nothing() -> None:
    args = argparse.Namespace(connections=8, seconds=None, each=10, storm=20, storm_concurrency=5)
    pair = start_pair()
    try:
        assert cycle(pair, args, 1) == []
    finally:
        pair.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--storm", type=int, default=1000, help="new connections per storm")
    parser.add_argument("--storm-concurrency", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=2)
    args = parser.parse_args()
    args.each = 0
    pair = start_pair()
    problems: list[str] = []
    try:
        rss, fds = resources(pair.process.pid)
        print(f"pair started: RSS {rss / 1024:.1f} MiB, {fds} descriptors")
        for n in range(1, args.cycles + 1):
            problems += cycle(pair, args, n)
    finally:
        pair.close()
    for problem in problems[:20]:
        print("PROBLEM:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
