"""The HTTP/1.1 codec's share of one relayed request in one sidecar, without sockets or a loop.

``bench_proxy.py`` measures the whole pair on a shared machine, where rounds swing by tens
of percent. This loop measures only the codec calls a sidecar makes for one keep-alive
request: the downstream connection (server side) reads the request head, carrying the peer
metadata, and its end; the relay splits its fields (``proxy.http._split``); the upstream
connection (client side) writes the request, reads the response head and body, the relay
splits those fields, and the downstream connection writes the response; both start their
next cycle. Each backend of the connection (``meshstats._h1_conn_c`` and the pure twin
``_h1_conn_py``) runs the same loop in the same process, rounds interleaved; the figure is
each backend's best and median of ``--rounds`` means, and the compiled one's ratio to the
twin in the same round::

    PYTHONPATH=src python benchmarks/bench_h1_codec.py --before ../before/src

(``--before`` also runs the loop over another checkout's ``src/``, in a child process,
rounds interleaved: its ``proxy.h1.Connection``, whichever backend that checkout selects.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

METADATA = (
    b"x-envoy-peer-metadata: " + b"C" * 400 + b"\r\n"
    b"x-envoy-peer-metadata-id: sidecar~10.0.0.1~productpage-v1-abc.default~default.svc."
    b"cluster.local\r\n"
)
REQUEST = (
    b"GET /reviews/0 HTTP/1.1\r\nHost: reviews:9080\r\nuser-agent: bench\r\naccept: */*\r\n"
    + METADATA
    + b"\r\n"
)
BODY = b'{"id": "0", "reviews": ["good", "fine"]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
    b"date: Thu, 03 Dec 2026 13:00:00 GMT\r\n" % len(BODY) + METADATA + b"\r\n" + BODY
)


def relay_loop(connection: Any, n: int) -> float:
    """Seconds per request for ``n`` requests through one sidecar's two connections."""
    from meshstats.proxy import h1
    from meshstats.proxy.http import _split

    down, up = connection(h1.SERVER), connection(h1.CLIENT)
    request_event, end_event = h1.Request, h1.EndOfMessage
    response_event, data_event = h1.Response, h1.Data
    start = time.perf_counter()
    for _ in range(n):
        down.receive_data(REQUEST)
        request = down.next_event()
        end = down.next_event()
        kept, _, _ = _split(request.headers)
        up.send(request_event(method=request.method, target=request.target, headers=kept))
        up.send(end)
        up.receive_data(RESPONSE)
        response = up.next_event()
        data = up.next_event()
        last = up.next_event()
        assert type(data) is data_event and type(last) is end_event
        kept, _, _ = _split(response.headers)
        down.send(
            response_event(status_code=response.status_code, headers=kept, reason=response.reason)
        )
        down.send(data)
        down.send(last)
        down.start_next_cycle()
        up.start_next_cycle()
    return (time.perf_counter() - start) / n


def _backends() -> dict[str, Any]:
    from meshstats import _h1_conn_py

    out: dict[str, Any] = {}
    try:
        from meshstats import _h1_conn_c
    except ImportError:
        pass
    else:
        out["compiled"] = _h1_conn_c.Connection
    out["pure twin"] = _h1_conn_py.Connection
    return out


def _child(n: int) -> None:
    """``--child``: one round per line on stdin, its seconds per request on stdout."""
    from meshstats.proxy import h1

    relay_loop(h1.Connection, n)  # warm
    for _ in sys.stdin:
        print(json.dumps(relay_loop(h1.Connection, n)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--before", metavar="SRC", help="another checkout's src/, run alongside")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.requests)
        return
    cases = _backends()
    before = None
    if args.before:
        env = {**os.environ, "PYTHONPATH": args.before}
        command = [sys.executable, __file__, "--child", "--requests", str(args.requests)]
        before = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
    for connection in cases.values():
        relay_loop(connection, args.requests // 10)  # warm
    got: dict[str, list[float]] = {name: [] for name in cases}
    if before is not None:
        got["before"] = []
    print(f"{args.rounds} rounds of {args.requests} requests; µs per request per sidecar")
    for i in range(args.rounds):
        order = list(cases)[i % len(cases) :] + list(cases)[: i % len(cases)]
        for name in order:
            got[name].append(relay_loop(cases[name], args.requests) * 1e6)
        if before is not None:
            assert before.stdin is not None and before.stdout is not None
            before.stdin.write("\n")
            before.stdin.flush()
            got["before"].append(json.loads(before.stdout.readline()) * 1e6)
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in got.items()))
    if before is not None:
        assert before.stdin is not None
        before.stdin.close()
        before.wait(30)
    for name, values in got.items():
        print(
            f"  {name}: best {min(values):.2f} µs, median {statistics.median(values):.2f} "
            f"({min(values):.2f}–{max(values):.2f})"
        )
    names = list(got)
    for other in names[1:]:
        ratios = [a / b for a, b in zip(got[names[0]], got[other], strict=True)]
        print(
            f"  {names[0]} / {other}, same round: {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}–{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
