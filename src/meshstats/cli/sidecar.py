"""``meshstats sidecar``: run one sidecar proxy from a config file until interrupted.

A config is YAML or JSON; relative paths are taken from the file's directory. The
repository's ``examples/`` holds a working pair (``reviews-sidecar.yaml`` in front of an
app, ``productpage-sidecar.yaml`` calling it; the README's "Run a sidecar" runs them)::

    node: {WORKLOAD_NAME: reviews-v1, NAMESPACE: default, LABELS: {app: reviews, version: v1}}
    cert_dir: certs/reviews          # ca.crt, cert.pem, key.pem (`meshstats certs issue`)
    inbound: {port: 16006, app: "127.0.0.1:19080", protocol: http, mtls: strict}
    outbound:
      - {port: 16001, upstream: "127.0.0.1:16006", protocol: http,
         service_host: reviews.default.svc.cluster.local}
      - {port: 16002, protocol: http, mode: passthrough}   # or blackhole: not in the mesh
    admin_port: 16090                # /stats/prometheus, /metrics, /healthz
    registry: registry.yaml          # optional: IP/CIDR -> metadata for peers that cannot exchange
    plaintext_exchange: true         # recognise a plaintext peer's prefix by its magic
    gateway: false                   # true: destination_service from the requested host

Run it with ``meshstats sidecar --config sidecar.yaml``. Once listening it prints one line
per listener (``inbound 127.0.0.1:15006 -> 127.0.0.1:9080 http``, ...) and the event loop
(``event loop uvloop``: uvloop when it is installed, ``MESHSTATS_EVENT_LOOP=asyncio`` forces
the standard one), then serves until SIGINT/SIGTERM (or ``--duration`` seconds). Exit
status: 0 after a clean stop, 1 for a bad config, a missing certificate (naming
``cert_dir``) or a port that cannot be bound (naming the address and the config field), 2
for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..proxy import SidecarConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML or JSON")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this long (default: run until interrupted)",
    )
    # A worker process of a sidecar with `workers: N` (proxy/workers.py starts them).
    parser.add_argument("--worker-of", metavar="STORE", default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from .. import _gc, _loop
    from ..errors import MeshstatsError
    from ..proxy import Sidecar, SidecarConfig

    worker = args.worker_of is not None
    try:
        # uvloop when installed, unless MESHSTATS_EVENT_LOOP says otherwise; workers inherit
        # the environment, so they choose the same.
        loop_name = _loop.choose()
        config = SidecarConfig.from_file(args.config)
        if config.workers > 1 and not worker:
            return _supervise(config, args)
        if worker:
            from ..proxy.workers import worker_config

            config = worker_config(config, args.worker_of)
        sidecar = Sidecar(config, reuse_port=worker, expire_idle=not worker)
    except (MeshstatsError, OSError) as exc:
        print(f"meshstats sidecar: {exc}", file=sys.stderr)
        return 1

    async def serve() -> int:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await sidecar.start()
        except OSError as exc:
            print(f"meshstats sidecar: {_listen_error(config, exc)}", file=sys.stderr)
            return 1
        _gc.tune_for_serving()  # this process is ours: set up, it only serves from now on
        if worker:
            print("ready", flush=True)
            await stop.wait()
            await sidecar.stop()
            return 0
        try:
            inbound = sidecar.inbound_port if config.inbound is not None else None
            _describe(config, (inbound, sidecar.outbound_ports))
            if config.admin_port is not None:
                print(f"admin {sidecar.admin_url}/stats/prometheus")
            print(f"event loop {loop_name}")
            print(f"principal {sidecar.local_principal or '(none: plaintext)'}", flush=True)
            try:
                await asyncio.wait_for(stop.wait(), args.duration)
            except TimeoutError:
                pass
        finally:
            await sidecar.stop()
        return 0

    return _loop.run(serve(), loop_name)


def _describe(config: SidecarConfig, ports: tuple[int | None, list[int]]) -> None:
    """The listener lines ``meshstats sidecar`` prints once it serves."""
    host = config.host
    inbound_port, outbound_ports = ports
    if config.inbound is not None:
        app = "{}:{}".format(*config.inbound.app)
        print(
            f"inbound {host}:{inbound_port} -> {app} {config.inbound.protocol}"
            f" (mtls {config.inbound.mtls if config.cert_dir else 'off'})"
        )
    for out, port in zip(config.outbound, outbound_ports):
        target = "{}:{}".format(*out.upstream) if out.upstream else "(none)"
        what = out.service_host if out.mode == "service" else f"({out.mode})"
        print(f"outbound {host}:{port} -> {target} {out.protocol} {what}")


def _supervise(config: SidecarConfig, args: argparse.Namespace) -> int:
    """``workers: N``: N processes on the listener ports, one shared store, one admin port."""
    from .. import _loop
    from ..certs import principal_of
    from ..proxy.workers import Supervisor, WorkerError

    supervisor = Supervisor(config, args.config)
    try:
        supervisor.start()
    except WorkerError as exc:
        print(f"meshstats sidecar: {exc}", file=sys.stderr)
        return 1
    try:
        inbound = config.inbound.port if config.inbound is not None else None
        _describe(config, (inbound, [out.port for out in config.outbound]))
        if supervisor.admin is not None:
            print(f"admin {supervisor.admin.url}/stats/prometheus")
        pids = " ".join(str(p.pid) for p in supervisor.workers)
        print(f"workers {config.workers} (pids {pids}), store {supervisor.store_path}")
        print(f"event loop {_loop.choose()} (in each worker)")
        principal = principal_of(config.cert_dir) if config.cert_dir else None
        print(f"principal {principal or '(none: plaintext)'}", flush=True)
        supervisor.run(args.duration)
    finally:
        supervisor.stop()
    return 0


def _listen_error(config: SidecarConfig, exc: OSError) -> str:
    """``cannot listen on 127.0.0.1:15006 (inbound.port): Address already in use``.

    The listeners put the address in ``exc.filename``; the config field that asked for that
    port is named too, so the line says what to change.
    """
    address = exc.filename if isinstance(exc.filename, str) else None
    if address is None:
        return f"cannot listen: {exc}"
    fields = []
    port = int(address.rpartition(":")[2] or 0)
    if config.inbound is not None and config.inbound.port == port:
        fields.append("inbound.port")
    fields += [f"outbound[{i}].port" for i, out in enumerate(config.outbound) if out.port == port]
    if config.admin_port == port:
        fields.append("admin_port")
    where = f" ({', '.join(fields)})" if fields and port else ""
    return f"cannot listen on {address}{where}: {exc.strerror}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshstats sidecar", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
