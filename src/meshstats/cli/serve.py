"""``meshstats serve``: one scrape endpoint for a shared store that many processes record into.

    meshstats serve --store app.store --port 9464

Workers (gunicorn or uvicorn workers, a multiprocessing pool, the sidecar's processes)
each open ``Store.shared("app.store")`` and record; this process renders all of it at
``/metrics`` and ``/stats/prometheus`` (docs/store.md, "Shared stores"). It opens the file,
creating it if no worker has yet, prints ``serving <file> at <url>`` and serves until
SIGINT or SIGTERM. A file that is not a store ends it with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        required=True,
        metavar="PATH",
        help="the shared store's file (a bare name lives in /dev/shm)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=9464, help="port to listen on (0: any free port)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this long (default: run until interrupted)",
    )


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .._store import Store
    from ..errors import MeshstatsError
    from ..exposition import MetricsServer

    if not 0 <= args.port <= 65535:
        print(f"meshstats serve: --port must be in 0..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        store = Store.shared(args.store)
        server = MetricsServer(store, args.host, args.port).start()
    except (MeshstatsError, OSError) as exc:
        print(f"meshstats serve: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"serving {store.path} at {server.url}/metrics", flush=True)
    try:
        stop.wait(args.duration)
    finally:
        server.stop()
    return 0
