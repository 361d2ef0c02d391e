"""``meshstats sidecar``: run one sidecar proxy from a config file until interrupted.

Example config (YAML or JSON; relative paths are taken from the file's directory)::

    node: {WORKLOAD_NAME: reviews-v2, NAMESPACE: default, LABELS: {app: reviews, version: v2}}
    cert_dir: certs/reviews          # ca.crt, cert.pem, key.pem (meshstats.certs writes them)
    inbound: {port: 15006, app: "127.0.0.1:9080", protocol: http, mtls: permissive}
    outbound:
      - {port: 15001, upstream: "127.0.0.1:16006", protocol: http,
         service_host: ratings.default.svc.cluster.local}
      - {port: 15002, protocol: http, mode: passthrough}   # or blackhole: not in the mesh
    admin_port: 15090                # /stats/prometheus, /metrics, /healthz
    registry: registry.yaml          # IP/CIDR -> metadata for peers that cannot exchange
    plaintext_exchange: true         # recognise a plaintext peer's prefix by its magic
    gateway: false                   # true: destination_service from the requested host

Run it with ``meshstats sidecar --config sidecar.yaml``. Once listening it prints one line
per listener (``inbound 127.0.0.1:15006 -> 127.0.0.1:9080 http``, ...), then serves until
SIGINT/SIGTERM (or ``--duration`` seconds). Exit status: 0 after a clean stop, 1 for a bad
config or a port that cannot be bound, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML or JSON")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this long (default: run until interrupted)",
    )


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..errors import ConfigError
    from ..proxy import Sidecar, SidecarConfig

    try:
        config = SidecarConfig.from_file(args.config)
        sidecar = Sidecar(config)
    except (ConfigError, OSError) as exc:
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
            print(f"meshstats sidecar: cannot listen: {exc}", file=sys.stderr)
            return 1
        try:
            host = config.host
            if config.inbound is not None:
                app = "{}:{}".format(*config.inbound.app)
                print(
                    f"inbound {host}:{sidecar.inbound_port} -> {app} {config.inbound.protocol}"
                    f" (mtls {config.inbound.mtls if config.cert_dir else 'off'})"
                )
            for out, port in zip(config.outbound, sidecar.outbound_ports):
                target = "{}:{}".format(*out.upstream) if out.upstream else "(none)"
                what = out.service_host if out.mode == "service" else f"({out.mode})"
                print(f"outbound {host}:{port} -> {target} {out.protocol} {what}")
            if config.admin_port is not None:
                print(f"admin {sidecar.admin_url}/stats/prometheus")
            print(f"principal {sidecar.local_principal or '(none: plaintext)'}", flush=True)
            try:
                await asyncio.wait_for(stop.wait(), args.duration)
            except TimeoutError:
                pass
        finally:
            await sidecar.stop()
        return 0

    return asyncio.run(serve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshstats sidecar", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
