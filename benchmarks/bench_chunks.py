"""Fairness under a hostile body: other clients' latency while one client uploads 1 MB as
one-byte chunks through a client and a server sidecar (issue 10, item 4).

The pair runs in its own process (``_proxy_pair.py``: the app and the sidecars on one event
loop, as one proxy process would be); this process is the clients. Each round measures small
GETs on a keep-alive connection twice, alone and while another connection sends a chunked
POST of ``--chunks`` one-byte chunks as fast as the socket takes them; rounds interleave
the two, and the figure is each phase's latency percentiles plus the upload's duration, the
pair's CPU time for it, and the longest the pair's event loop was held meanwhile (the wait
every other connection pays per step)::

    PYTHONPATH=src python benchmarks/bench_chunks.py --rounds 3

Under pytest (``pytest benchmarks/bench_chunks.py``) one small round runs as a smoke test
that checks what the figure relies on: the upload arrives whole and every GET is answered.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proxy import Pair, cpu_seconds, start_pair  # noqa: E402

CHUNKS = 174_762  # 1 MiB / 6: what the issue measured (1 MB as one-byte chunks)
HOST = "reviews:9080"


def chunked_upload(chunks: int) -> bytes:
    head = b"POST /reviews/0 HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % (
        HOST.encode()
    )
    return head + b"1\r\nx\r\n" * chunks + b"0\r\n\r\n"


def upload(port: int, request: bytes, done: threading.Event, result: dict[str, object]) -> None:
    """Send ``request`` at full speed; keep the response's status line and the time taken."""
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            sock.sendall(request)
            head = b""
            while b"\r\n" not in head:
                data = sock.recv(4096)
                if not data:
                    break
                head += data
        result["status"] = head.split(b"\r\n", 1)[0]
    finally:
        result["seconds"] = time.perf_counter() - start
        done.set()


def small_gets(port: int, until: threading.Event | None, count: int) -> list[float]:
    """Latencies (seconds) of GETs on one keep-alive connection: ``count`` of them, or as
    many as fit before ``until`` is set (at least one)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    latencies: list[float] = []
    try:
        while True:
            start = time.perf_counter()
            conn.request("GET", "/reviews/0", headers={"Host": HOST})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise AssertionError(f"GET answered {response.status}")
            latencies.append(time.perf_counter() - start)
            if until is not None and until.is_set():
                return latencies
            if until is None and len(latencies) >= count:
                return latencies
    finally:
        conn.close()


@dataclass
class Round:
    alone: list[float]  # GET latencies without the upload, seconds
    during: list[float]  # while it was relayed
    upload_s: float
    status: bytes
    cpu_s: float  # the pair process's CPU time during the upload
    lag_s: float  # the longest the pair's event loop was held meanwhile (CPU time)


def one_round(pair: Pair, chunks: int, alone_gets: int) -> Round:
    port = pair.ports["on"]
    alone = small_gets(port, None, alone_gets)
    request = chunked_upload(chunks)
    done, result = threading.Event(), dict[str, object]()
    pair.loop_lag()  # from here on
    used = cpu_seconds(pair.process.pid)
    sender = threading.Thread(target=upload, args=(port, request, done, result))
    sender.start()
    during = small_gets(port, done, 0)
    sender.join()
    seconds, status = result["seconds"], result.get("status", b"")
    assert isinstance(seconds, float) and isinstance(status, bytes)
    cpu = cpu_seconds(pair.process.pid) - used
    return Round(alone, during, seconds, status, cpu, pair.loop_lag())


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_tiny_chunk_upload_and_small_gets_are_all_answered() -> None:
    pair = start_pair()
    try:
        got = one_round(pair, chunks=2_000, alone_gets=5)
    finally:
        pair.close()
    assert got.status.startswith(b"HTTP/1.1 200 ")
    assert len(got.alone) == 5 and len(got.during) >= 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=CHUNKS)
    parser.add_argument("--alone-gets", type=int, default=200)
    args = parser.parse_args()
    pair = start_pair()
    alone: list[float] = []
    during: list[float] = []
    try:
        print(f"{args.chunks} one-byte chunks in one chunked POST, GETs meanwhile; rounds:")
        for i in range(args.rounds):
            got = one_round(pair, args.chunks, args.alone_gets)
            a, d = got.alone, got.during
            alone += a
            during += d
            print(
                f"round {i + 1}: upload {got.upload_s:.2f} s ({got.status!r}), "
                f"pair CPU {got.cpu_s:.2f} s, loop held at most {1e3 * got.lag_s:.1f} ms; "
                f"GETs alone p50 {1e3 * statistics.median(a):.2f} "
                f"ms; during: {len(d)} GETs, p50 {1e3 * statistics.median(d):.2f} ms, "
                f"p99 {1e3 * _pct(d, 0.99):.2f} ms, max {1e3 * max(d):.2f} ms"
            )
    finally:
        pair.close()
    print(
        f"all rounds: GET latency alone p50 {1e3 * statistics.median(alone):.2f} ms, p99 "
        f"{1e3 * _pct(alone, 0.99):.2f} ms; during the upload p50 "
        f"{1e3 * statistics.median(during):.2f} ms, p99 {1e3 * _pct(during, 0.99):.2f} ms, "
        f"max {1e3 * max(during):.2f} ms"
    )


if __name__ == "__main__":
    main()
