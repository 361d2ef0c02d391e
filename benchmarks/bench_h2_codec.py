"""The h2 library's share of one relayed GET in one sidecar, without sockets or a loop.

``bench_proxy.py --h2`` measures the whole pair on a shared machine, where rounds swing by
tens of percent. This loop measures only the h2/hpack calls a sidecar makes for one GET:
a downstream connection (server side) receives the request's HEADERS, an upstream one
(client side) sends them on with the peer-exchange headers, receives the response's
HEADERS and DATA, and the downstream one sends those on and hands back the window; the
connections are made as ``meshstats.proxy.h2`` makes them, their peers are plain h2. Only
the sidecar's calls are timed; the figure is the best of ``--rounds`` means::

    PYTHONPATH=src python benchmarks/bench_h2_codec.py --before ../before/src

(``--before`` runs the same loop over another checkout's ``src/``, in a child process,
rounds interleaved). Before ``_connection`` existed the connections are built as the
sidecar built them then, and the body's end goes in a DATA frame of its own, as it did.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

REQUEST = [
    (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/bench"),
    (b":authority", b"app:8080"), (b"user-agent", b"h2load"), (b"accept", b"*/*"),
]  # fmt: skip
EXCHANGE = [
    (b"x-envoy-peer-metadata", b"C" * 300),
    (b"x-envoy-peer-metadata-id", b"sidecar~10.0.0.1~app.ns~ns.svc.cluster.local"),
]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"server", b"app")]
BODY = b"x" * 64


def _sidecar_connection(client: bool) -> tuple[h2.connection.H2Connection, bool]:
    """A connection as this checkout's sidecar makes it, and whether the sidecar sends a
    body's end with its last DATA frame."""
    from meshstats.proxy import h2 as proxy_h2

    make: Any = getattr(proxy_h2, "_connection", None)
    if make is not None:
        return make(client), True
    config = h2.config.H2Configuration(
        client_side=client,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = h2.connection.H2Connection(config)
    codes = h2.settings.SettingCodes
    values = {codes.MAX_CONCURRENT_STREAMS: 100, codes.MAX_HEADER_LIST_SIZE: 1 << 16}
    if client:
        values[codes.ENABLE_PUSH] = 0
    conn.local_settings = h2.settings.Settings(client=client, initial_values=values)
    return conn, False


def measure(rounds: int, requests: int) -> float:
    """Best mean µs of the sidecar's h2 calls per relayed GET over ``rounds``."""
    down, merged = _sidecar_connection(False)
    up, _ = _sidecar_connection(True)
    load = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    app = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    for first, second in ((load, down), (up, app)):
        first.initiate_connection()
        second.initiate_connection()
        second.receive_data(first.data_to_send())
        first.receive_data(second.data_to_send())
        second.receive_data(first.data_to_send())
    stream = [1]

    def one() -> float:
        sid = stream[0]
        stream[0] += 2
        load.send_headers(sid, REQUEST, end_stream=True)
        to_down = load.data_to_send()
        start = time.perf_counter()
        events = down.receive_data(to_down)
        request = next(e for e in events if isinstance(e, h2.events.RequestReceived))
        up.send_headers(sid, list(request.headers or []) + EXCHANGE, end_stream=True)
        to_app = up.data_to_send()
        spent = time.perf_counter() - start
        app.receive_data(to_app)
        app.send_headers(sid, RESPONSE + EXCHANGE)
        app.send_data(sid, BODY, end_stream=True)
        to_up = app.data_to_send()
        start = time.perf_counter()
        events = up.receive_data(to_up)
        response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
        data = next(e for e in events if isinstance(e, h2.events.DataReceived))
        kept = [h for h in response.headers or [] if not h[0].startswith(b"x-envoy")]
        down.send_headers(sid, kept)
        if merged:
            down.send_data(sid, data.data or b"", end_stream=True)
        else:
            down.send_data(sid, data.data or b"")
            down.end_stream(sid)
        up.acknowledge_received_data(data.flow_controlled_length, sid)
        to_load, to_app = down.data_to_send(), up.data_to_send()
        spent += time.perf_counter() - start
        for event in load.receive_data(to_load):
            if isinstance(event, h2.events.DataReceived):
                load.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        down.receive_data(load.data_to_send())
        app.receive_data(to_app)
        return spent

    return min(sum(one() for _ in range(requests)) / requests for _ in range(rounds)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--before", help="another checkout's src/, measured alongside")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(measure(args.rounds, args.requests))
        return

    def child(src: str) -> float:
        env = dict(os.environ, PYTHONPATH=src)
        command = [sys.executable, __file__, "--one", "--rounds", "1"]
        command += ["--requests", str(args.requests)]
        return float(subprocess.run(command, env=env, check=True, capture_output=True).stdout)

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "src")
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.rounds):
        ours.append(child(os.path.normpath(here)))
        if args.before:
            theirs.append(child(args.before))
    print(f"this checkout: {min(ours):.1f} µs of h2 calls per relayed GET per sidecar (best)")
    if theirs:
        print(f"@before:       {min(theirs):.1f} µs; ratio {min(ours) / min(theirs):.2f}")


if __name__ == "__main__":
    main()
