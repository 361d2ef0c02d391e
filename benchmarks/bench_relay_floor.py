"""What a relay costs on an event loop before it parses anything: the floor under a sidecar.

A client sends 100 bytes and waits for them back from an echo server, straight or through a
relay that forwards bytes both ways and does nothing else, all on one loop in one process,
plaintext on 127.0.0.1. Two relay designs:

* ``task``: the sidecar's design, a task per connection that reads (``StreamReader``) and
  writes (``transport.write``) in turn, waking once per read;
* ``protocol``: ``data_received`` writes to the other side at once; no task, no wake-up.

Each case's process CPU per round trip less the straight case's (same rounds, interleaved)
is what the relay costs per relayed request, the figure a sidecar's own ≤ 150 µs compares
with (a sidecar also runs TLS on one side, both heads through its codec, and telemetry).
A third straight case runs over mutual TLS (``meshstats.certs`` contexts, as between
sidecars): less the plaintext one, what TLS adds to a round trip at both ends, of which a
sidecar carries one::

    python benchmarks/bench_relay_floor.py --loops asyncio,uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from meshstats.certs import LocalCA, client_context, server_context

MESSAGE = b"x" * 100


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _Down(asyncio.Protocol):
    """The protocol relay's client side: bytes go upstream as they come."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.up: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        up, _ = await loop.create_connection(lambda: _Up(self), "127.0.0.1", self.port)
        self.up = up
        for data in self.early:
            up.write(data)

    def data_received(self, data: bytes) -> None:
        if self.up is None:
            self.early.append(data)
        else:
            self.up.write(data)


class _Up(asyncio.Protocol):
    def __init__(self, down: _Down) -> None:
        self.down = down

    def data_received(self, data: bytes) -> None:
        self.down.transport.write(data)


async def _task_relay(port: int) -> asyncio.Server:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        while data := await reader.read(65536):
            up_writer.write(data)
            writer.write(await up_reader.read(65536))
        up_writer.close()

    return await asyncio.start_server(relay, "127.0.0.1", 0)


async def _measure(rounds: int, requests: int, cert_dir: Path) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    echo = await loop.create_server(_Echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    relays: dict[str, asyncio.Server] = {
        "straight": echo,
        "task": await _task_relay(echo_port),
        "protocol": await loop.create_server(lambda: _Down(echo_port), "127.0.0.1", 0),
        "straight, mTLS": await loop.create_server(
            _Echo, "127.0.0.1", 0, ssl=server_context(cert_dir, alpn=None)
        ),
    }
    clients = {}
    for name, server in relays.items():
        tls = client_context(cert_dir, alpn=None) if "TLS" in name else None
        clients[name] = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1], ssl=tls
        )

    async def trips(name: str, n: int) -> float:
        reader, writer = clients[name]
        start = time.process_time()
        for _ in range(n):
            writer.write(MESSAGE)
            await reader.readexactly(len(MESSAGE))
        return (time.process_time() - start) / n * 1e6

    for name in clients:
        await trips(name, requests // 10)  # warm
    got: dict[str, list[float]] = {name: [] for name in clients}
    names = list(clients)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            got[name].append(await trips(name, requests))
    for _, writer in clients.values():
        writer.close()
    for server in relays.values():
        server.close()
    # The task relays end as their clients close (a read gives b""); let them.
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.gather(*others, return_exceptions=True)
    return got


def _run(loop_name: str, rounds: int, requests: int, cert_dir: Path) -> dict[str, list[float]]:
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    loop = factory()
    try:
        return loop.run_until_complete(_measure(rounds, requests, cert_dir))
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", default="asyncio", help="e.g. asyncio,uvloop")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        cert_dir = LocalCA.create().issue("default", "bench").write(directory)
        for loop_name in args.loops.split(","):
            _report(loop_name, _run(loop_name, args.rounds, args.requests, cert_dir))


def _report(loop_name: str, got: dict[str, list[float]]) -> None:
    straight = got["straight"]
    print(
        f"{loop_name}: straight {statistics.median(straight):.1f} µs CPU per round trip "
        f"({min(straight):.1f}–{max(straight):.1f})"
    )
    for name in ("task", "protocol"):
        extra = [a - b for a, b in zip(got[name], straight, strict=True)]
        print(
            f"  {name} relay: +{statistics.median(extra):.1f} µs per relayed request "
            f"({min(extra):.1f}–{max(extra):.1f}), same round"
        )
    saved = [a - b for a, b in zip(got["task"], got["protocol"], strict=True)]
    print(
        f"  task - protocol: {statistics.median(saved):.1f} µs ({min(saved):.1f}–{max(saved):.1f})"
    )
    tls = [a - b for a, b in zip(got["straight, mTLS"], straight, strict=True)]
    print(
        f"  mutual TLS, both ends of a round trip: +{statistics.median(tls):.1f} µs "
        f"({min(tls):.1f}–{max(tls):.1f}), same round"
    )


if __name__ == "__main__":
    main()
