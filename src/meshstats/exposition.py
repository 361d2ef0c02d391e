"""Serving a store to Prometheus: content negotiation, a prometheus_client collector, HTTP.

>>> from meshstats import Store
>>> from meshstats.exposition import MetricsServer, negotiate
>>> store = Store()
>>> store.inc(store.series(store.counter("istio_requests_total", "Requests."), ()))
>>> negotiate("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
(True, 'application/openmetrics-text; version=1.0.0; charset=utf-8')
>>> import urllib.request
>>> with MetricsServer(store) as server:  # 127.0.0.1, a free port
...     body = urllib.request.urlopen(server.url + "/stats/prometheus").read()
>>> body.splitlines()[-1]
b'istio_requests_total 1'

To show the same metrics through an existing prometheus_client setup instead (its
``REGISTRY``, ``generate_latest()``, ``start_http_server()``, push gateway, ...)::

    from prometheus_client import REGISTRY
    REGISTRY.register(MeshstatsCollector(store))

``prometheus_client`` is optional: only :class:`MeshstatsCollector` needs it
(``pip install meshstats[prometheus]``).
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ._render_py import Snapshot

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "METRICS_PATHS",
    "MeshstatsCollector",
    "MetricsServer",
    "negotiate",
    "serve_in_background",
]

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
#: Where :class:`MetricsServer` answers with the exposition: Envoy's path and the usual one.
METRICS_PATHS = ("/stats/prometheus", "/metrics")


class StoreLike(Protocol):
    """What the exposition helpers need from a store (``meshstats.Store`` is one)."""

    def snapshot(self) -> Snapshot: ...

    def render(self, openmetrics: bool = False) -> bytes: ...


def _media_ranges(header: str) -> Iterator[tuple[str, float]]:
    """``(media type, q)`` for each comma-separated entry of an Accept-style header."""
    for entry in header.split(","):
        media, *params = entry.split(";")
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0  # an unreadable weight does not ask for anything
        yield media.strip().lower(), q


def negotiate(accept_header: str | None) -> tuple[bool, str]:
    """Pick the exposition format for an HTTP ``Accept`` header: ``(openmetrics, content_type)``.

    OpenMetrics whenever the header accepts ``application/openmetrics-text`` (as
    prometheus_client decides, and as Prometheus asks when it prefers it); the text
    format 0.0.4 otherwise, including for a missing header. An entry with ``q=0`` means
    "not acceptable" (RFC 9110) and is ignored.

    >>> negotiate(None)
    (False, 'text/plain; version=0.0.4; charset=utf-8')
    >>> negotiate("application/openmetrics-text; version=0.0.1; q=0.75, */*; q=0.1")[0]
    True
    """
    for media, q in _media_ranges(accept_header or ""):
        if media == "application/openmetrics-text" and q > 0:
            return True, CONTENT_TYPE_OPENMETRICS
    return False, CONTENT_TYPE_TEXT


def _accepts_gzip(accept_encoding: str | None) -> bool:
    return any(m == "gzip" and q > 0 for m, q in _media_ranges(accept_encoding or ""))


def _import_prometheus_client() -> Any:
    try:
        import prometheus_client.core
    except ImportError as exc:
        raise ImportError(
            "MeshstatsCollector needs prometheus_client: pip install meshstats[prometheus]"
        ) from exc
    return prometheus_client.core


class MeshstatsCollector:
    """A prometheus_client collector that reports a store's metrics at every scrape.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> from meshstats import Store
    >>> store = Store()
    >>> store.set(store.series(store.gauge("istio_build", "Build.", ("tag",)), ("1.24",)), 1)
    >>> registry = CollectorRegistry()
    >>> registry.register(MeshstatsCollector(store))
    >>> b'istio_build{tag="1.24"} 1.0' in generate_latest(registry)
    True

    Families, samples, labels and values are those of ``store.render()``. One difference
    comes from prometheus_client's own rules: it always writes a counter's samples as
    ``<name>_total``, so a counter registered without ``_total`` (``reqs``) is shown as
    ``reqs_total`` here while ``store.render()`` writes ``reqs``. Istio's counters all end
    in ``_total`` and look the same either way. Nothing is cached: each ``collect()``
    reads a fresh ``store.snapshot()``.
    """

    def __init__(self, store: StoreLike) -> None:
        self._core = _import_prometheus_client()  # fail at construction, not at scrape
        self._store = store

    def collect(self) -> Iterator[Any]:
        """Yield one prometheus_client ``Metric`` family per store family."""
        from ._render_py import format_float

        core = self._core
        for name, kind, help_text, label_names, buckets, series in self._store.snapshot():
            labels = list(label_names)
            if kind == "counter":
                family = core.CounterMetricFamily(name, help_text, labels=labels)
                for values, value in series:
                    family.add_metric(list(values), value)
            elif kind == "gauge":
                family = core.GaugeMetricFamily(name, help_text, labels=labels)
                for values, value in series:
                    family.add_metric(list(values), value)
            else:
                family = core.HistogramMetricFamily(name, help_text, labels=labels)
                # The same le strings as our renderer, so both expositions label alike.
                bounds = [format_float(b) for b in buckets] + ["+Inf"]
                for values, (counts, total) in series:  # type: ignore[misc]
                    cumulative, pairs = 0, []
                    for le, count in zip(bounds, counts):
                        cumulative += count
                        pairs.append((le, cumulative))
                    family.add_metric(list(values), pairs, total)
            yield family


class _Handler(BaseHTTPRequestHandler):
    # Set on the per-server subclass made in MetricsServer.start().
    store: StoreLike
    log_requests: bool
    protocol_version = "HTTP/1.1"  # keep-alive for scrapers that reuse connections
    server_version = "meshstats"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        encoding = None
        if path in METRICS_PATHS:
            openmetrics, content_type = negotiate(self.headers.get("Accept"))
            try:
                body = self.store.render(openmetrics=openmetrics)
            except Exception as exc:  # a scrape must get an answer, not a dropped socket
                self._reply(500, "text/plain; charset=utf-8", f"render failed: {exc}\n".encode())
                return
            if _accepts_gzip(self.headers.get("Accept-Encoding")):
                body, encoding = gzip.compress(body, compresslevel=1), "gzip"
            status = 200
        elif path == "/healthz":
            status, content_type, body = 200, "text/plain; charset=utf-8", b"ok"
        else:
            status, content_type, body = 404, "text/plain; charset=utf-8", b"not found\n"
        self._reply(status, content_type, body, encoding, send_body)

    def _reply(
        self,
        status: int,
        content_type: str,
        body: bytes,
        encoding: str | None = None,
        send_body: bool = True,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.log_requests:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an open scrape connection must not keep the process alive


class MetricsServer:
    """A small threaded HTTP server for Prometheus scrapes of ``store``.

    ``GET /stats/prometheus`` (Envoy's path) and ``GET /metrics`` answer with
    ``store.render()`` in the format the ``Accept`` header asks for (see :func:`negotiate`),
    gzip-compressed when the client accepts it; ``/healthz`` answers ``ok``; anything else
    is a 404. Request threads are daemons, and requests are not logged unless
    ``log_requests``.

    >>> from meshstats import Store
    >>> server = MetricsServer(Store()).start()
    >>> server.url.startswith("http://127.0.0.1:")
    True
    >>> server.stop()

    Parameters
    ----------
    store
        What to serve: a ``meshstats.Store`` (or anything with its ``render``).
    host, port
        Where to listen. ``port=0`` picks a free port; read it back from ``.port``.
    """

    def __init__(
        self,
        store: StoreLike,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_requests: bool = False,
    ) -> None:
        self._store = store
        self._host = host
        self._port = port
        self._log_requests = log_requests
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        """Bind and start serving in a daemon thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("MetricsServer is already running")
        handler = type(
            "MeshstatsHandler",
            (_Handler,),
            {"store": self._store, "log_requests": self._log_requests},
        )
        try:
            self._server = _Server((self._host, self._port), handler)
        except OSError as exc:  # name the address, as the sidecar's listeners do
            raise OSError(exc.errno, exc.strerror, f"{self._host}:{self._port}") from exc
        self._thread = threading.Thread(
            # A short poll keeps stop() quick: shutdown() waits for the loop to notice.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"meshstats-metrics-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (safe to call twice)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    @property
    def port(self) -> int:
        """The port listened on (the real one when constructed with ``port=0``)."""
        if self._server is None:
            return self._port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port``, without a path."""
        return f"http://{self._host}:{self.port}"

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_in_background(
    store: StoreLike, host: str = "127.0.0.1", port: int = 0, *, log_requests: bool = False
) -> MetricsServer:
    """Start a :class:`MetricsServer` for ``store`` and return it (call ``.stop()`` to end).

    >>> from meshstats import Store
    >>> server = serve_in_background(Store(), port=0)
    >>> server.port > 0
    True
    >>> server.stop()
    """
    return MetricsServer(store, host, port, log_requests=log_requests).start()
