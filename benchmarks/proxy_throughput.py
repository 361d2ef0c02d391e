"""Requests/s through a client and a server sidecar (mTLS), telemetry on and off, with wrk.

Usage (needs Debian's ``wrk``)::

    PYTHONPATH=src:tests python3 benchmarks/proxy_throughput.py --seconds 8 --rounds 3

One process runs the app (a minimal keep-alive HTTP/1.1 responder, 100-byte bodies) and both
sidecars on one event loop; ``wrk -t1 -c10`` drives the client sidecar's outbound port. Each
round measures the app directly, then through the sidecars with telemetry on, then off (off:
the per-request recording is replaced by a no-op; everything else is identical). Not collected
by pytest: it needs a load tool and takes a while. Compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from proxy_support import CLIENT_NODE, SERVER_NODE, SERVICE_HOST, make_certs

from meshstats import HAS_EXTENSION
from meshstats.proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig
from meshstats.proxy import http as proxy_http

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100


async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            break
        writer.write(RESPONSE)
        await writer.drain()
    writer.close()


def wrk(port: int, seconds: int) -> tuple[float, str]:
    out = subprocess.run(
        ["wrk", "-t1", "-c10", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = re.search(r"Latency\s+(\S+)", out)
    return rps, latency.group(1) if latency else "?"


async def main(seconds: int, rounds: int) -> None:
    certs = make_certs(Path(tempfile.mkdtemp()))
    server_app = await asyncio.start_server(app, "127.0.0.1", 0)
    app_port = server_app.sockets[0].getsockname()[1]
    inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol="http")
    server = await Sidecar(
        SidecarConfig(node=SERVER_NODE, cert_dir=certs.server, inbound=inbound)
    ).start()
    out = OutboundConfig(
        port=0,
        upstream=("127.0.0.1", server.inbound_port),
        service_host=SERVICE_HOST,
        protocol="http",
    )
    client = await Sidecar(
        SidecarConfig(node=CLIENT_NODE, cert_dir=certs.client, outbound=(out,))
    ).start()
    record = proxy_http._Proxy._record

    def off(self: Any, *args: Any, **kwargs: Any) -> None:
        pass

    print(f"compiled core: {HAS_EXTENSION}; wrk -t1 -c10 -d{seconds}s")
    try:
        for i in range(rounds):
            direct = await asyncio.to_thread(wrk, app_port, seconds)
            proxy_http._Proxy._record = record  # type: ignore[method-assign]
            on = await asyncio.to_thread(wrk, client.outbound_ports[0], seconds)
            proxy_http._Proxy._record = off  # type: ignore[method-assign]
            no = await asyncio.to_thread(wrk, client.outbound_ports[0], seconds)
            proxy_http._Proxy._record = record  # type: ignore[method-assign]
            print(
                f"round {i + 1}: direct {direct[0]:.0f} req/s | sidecars, telemetry on "
                f"{on[0]:.0f} req/s (avg {on[1]}) | off {no[0]:.0f} req/s (avg {no[1]}) | "
                f"telemetry costs {100 * (1 - on[0] / no[0]):.1f}% of throughput"
            )
    finally:
        await client.stop()
        await server.stop()
        server_app.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.rounds))
