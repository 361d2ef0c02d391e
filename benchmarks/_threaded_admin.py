"""The admin server as it was before issue 10.6, kept only so ``bench_proxy.py --scrapers``
can measure old and new in the same run: a ``ThreadingHTTPServer``, one thread per
connection, no timeouts, every scrape rendering (and compressing) on its own.

Not part of the package and not to be used for anything but that comparison.
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from meshstats.exposition import METRICS_PATHS, StoreLike, negotiate


def _accepts_gzip(header: str | None) -> bool:
    return "gzip" in (header or "")


class _Handler(BaseHTTPRequestHandler):
    store: StoreLike
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        encoding = None
        if path in METRICS_PATHS:
            openmetrics, content_type = negotiate(self.headers.get("Accept"))
            body = self.store.render(openmetrics=openmetrics)
            if _accepts_gzip(self.headers.get("Accept-Encoding")):
                body, encoding = gzip.compress(body, compresslevel=1), "gzip"
            status = 200
        else:
            status, content_type, body = 404, "text/plain; charset=utf-8", b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # scrapers stopped mid-body: broken pipes are expected


class ThreadedMetricsServer:
    """``start()``, ``stop()`` and ``port``, as the old ``MetricsServer`` had them."""

    def __init__(self, store: StoreLike, host: str = "127.0.0.1") -> None:
        handler = type("Handler", (_Handler,), {"store": store})
        self._server = _Server((host, 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> ThreadedMetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])
