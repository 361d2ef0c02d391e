"""Scrapers for ``bench_proxy.py --scrapers``: ``python _scrapers.py PORT N [--plain]``.

``N`` threads, each with its own keep-alive connection, scrape ``/stats/prometheus`` back
to back with Prometheus' default headers (OpenMetrics preferred, gzip accepted; ``--plain``
asks for neither) and throw the body away. A process of its own, so that reading the
bodies is not billed to the load client or to the sidecars. It prints ``ready`` once every
scraper has had one answer, and at the first line on stdin (or its end) prints
``{"scrapes": n, "bytes": b}`` for the time in between and exits.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading

PROMETHEUS_HEADERS = (
    b"Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    b"version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n"
    b"Accept-Encoding: gzip\r\n"
)


class Scraper(threading.Thread):
    def __init__(self, port: int, plain: bool, first: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.request = (
            b"GET /stats/prometheus HTTP/1.1\r\nHost: admin\r\n"
            + (b"" if plain else PROMETHEUS_HEADERS)
            + b"\r\n"
        )
        self.first = first
        self.scrapes = 0
        self.bytes = 0

    def run(self) -> None:
        buffer = memoryview(bytearray(1 << 20))
        sock = socket.create_connection(("127.0.0.1", self.port))
        while True:
            sock.sendall(self.request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the admin server closed the connection")
                head += chunk
            head, body = head.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(head.decode("latin-1"))
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            left = length - len(body)
            while left > 0:  # recv_into: no Python object per chunk
                got = sock.recv_into(buffer, min(left, len(buffer)))
                if not got:
                    raise ConnectionError("closed mid-body")
                left -= got
            self.scrapes += 1
            self.bytes += length
            if self.scrapes == 1:
                self.first.wait()


def main() -> None:
    port, n = int(sys.argv[1]), int(sys.argv[2])
    plain = "--plain" in sys.argv[3:]
    first = threading.Barrier(n + 1)
    scrapers = [Scraper(port, plain, first) for _ in range(n)]
    for scraper in scrapers:
        scraper.start()
    first.wait(120)
    start = [(s.scrapes, s.bytes) for s in scrapers]
    print("ready", flush=True)
    sys.stdin.readline()
    scrapes = sum(s.scrapes - a for s, (a, _) in zip(scrapers, start))
    sent = sum(s.bytes - b for s, (_, b) in zip(scrapers, start))
    print(json.dumps({"scrapes": scrapes, "bytes": sent}), flush=True)
    os._exit(0)  # the scrapers may be mid-body: no need to wait for them


if __name__ == "__main__":
    main()
