"""One sidecar of ``bench_proxy.py --storm``, alone in its process: a client or a server.

Each sidecar runs in its own process so that the CPU time a new connection costs can be
read per sidecar (``/proc/<pid>/stat``), and so that the two sidecars of a pair do not share
one event loop, as two workloads' sidecars never do. Run as::

    python benchmarks/_storm_sidecar.py server CERTS APP_PORT CONFIG_JSON
    python benchmarks/_storm_sidecar.py client CERTS UPSTREAM_PORT CONFIG_JSON

``CERTS`` holds ``server/`` and ``client/`` certificate directories (``meshstats.certs``);
``CONFIG_JSON`` holds extra ``SidecarConfig`` fields (a variant's setting), and
optionally ``"loop": "uvloop"`` to run the sidecar on uvloop's event loop
(``"cert_dir": null`` runs it without TLS, a floor for the rest of the work). The process
prints the port it serves on (the server's inbound port, the client's outbound port) as
one JSON line and serves until its stdin closes. With ``MESHSTATS_PROFILE=<file>`` it runs
under cProfile and writes the stats there when it stops.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import sys
from pathlib import Path
from typing import Any

from meshstats.proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _proxy_pair import CLIENT_NODE, SERVER_NODE, SERVICE_HOST  # noqa: E402  (one node set)


def _server(certs: Path, app_port: int, extra: dict[str, Any]) -> Sidecar:
    inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol="http")
    fields = {"cert_dir": certs / "server", **extra}  # "cert_dir": null runs plaintext
    return Sidecar(SidecarConfig(node=SERVER_NODE, inbound=inbound, admin_port=None, **fields))


def _client(certs: Path, upstream: int, extra: dict[str, Any]) -> Sidecar:
    out = OutboundConfig(
        port=0,
        upstream=("127.0.0.1", upstream),
        service_host=SERVICE_HOST,
        protocol="http",
        service_port=9080,
    )
    fields = {"cert_dir": certs / "client", **extra}
    return Sidecar(SidecarConfig(node=CLIENT_NODE, outbound=(out,), admin_port=None, **fields))


async def main(argv: list[str]) -> None:
    role, certs, target, extra = argv[0], Path(argv[1]), int(argv[2]), json.loads(argv[3])
    extra.pop("loop", None)
    make = _server if role == "server" else _client
    sidecar = await make(certs, target, extra).start()
    print(json.dumps(sidecar.inbound_port if role == "server" else sidecar.outbound_ports[0]))
    sys.stdout.flush()
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await sidecar.stop()


if __name__ == "__main__":
    runner: Any = asyncio.run
    if json.loads(sys.argv[4]).get("loop") == "uvloop":
        import uvloop  # not a dependency: install it to compare event loops

        runner = uvloop.run
    profile_to = os.environ.get("MESHSTATS_PROFILE")
    if profile_to:
        profiler = cProfile.Profile()
        profiler.runcall(runner, main(sys.argv[1:]))
        profiler.dump_stats(profile_to)
    else:
        runner(main(sys.argv[1:]))
