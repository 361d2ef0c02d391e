"""Shared by the end-to-end tests that put a real Prometheus in front of meshstats.

>>> scoped('sum(rate(istio_requests_total{reporter="source"}[1m])) or vector(0)', "c-client")
'sum(rate(istio_requests_total{job="c-client",reporter="source"}[1m])) or vector(0)'

- :func:`enabled_backends`: the backends this run covers (``c`` is left out exactly when
  conftest deselects ``c_extension`` tests), so one module-scoped Prometheus serves both.
- :func:`scoped`: pins every ``istio_*`` selector of a dashboard query to one scrape job, since
  one server scrapes every backend's endpoints and the dashboards' PromQL has no job filter.
- :class:`PhaseGate`: a store wrapper that makes a batch of recording atomic for scrapes.
- :class:`RecordingProxy`: an HTTP pass-through in front of a ``MetricsServer`` that notes
  what Prometheus asked for and what we answered (optionally forcing the text format).
"""

from __future__ import annotations

import contextlib
import http.client
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import pytest
from conftest import Backend
from prometheus_server import Result

from meshstats._backend import extensions_disabled

__all__ = [
    "BACKEND_PARAMS",
    "Exchange",
    "PhaseGate",
    "RecordingProxy",
    "enabled_backends",
    "scoped",
    "series_key",
]

#: A series as the e2e tests compare it: (metric name, sorted labels without job/instance).
LabelKey = tuple[str, tuple[tuple[str, str], ...]]


#: Parameters for a module-scoped ``backend`` fixture (see :func:`module_backend`).
BACKEND_PARAMS = [pytest.param("c", marks=pytest.mark.c_extension), "py"]


def module_backend(request: pytest.FixtureRequest) -> Backend:
    """Body of a module-scoped ``backend`` override: the same modules as conftest's fixture.

    conftest's ``backend`` is session-scoped, so pytest groups the whole run by it and would
    visit an e2e module twice (all ``c`` tests, later all ``py`` tests), tearing down and
    restarting its module-scoped Prometheus in between. Overridden per e2e module with module
    scope, the grouping stays inside the module and one Prometheus serves both backends.
    The ``c`` parameter keeps the ``c_extension`` mark, so conftest still deselects it.
    """
    return request.getfixturevalue(f"{request.param}_backend")  # type: ignore[no-any-return]


def enabled_backends(request: pytest.FixtureRequest) -> dict[str, Backend]:
    """``{"c": ..., "py": ...}``, without ``c`` when the run deselects compiled-backend tests.

    Loaded through conftest's ``c_backend``/``py_backend`` fixtures, so the modules are the
    ones the ``backend`` fixture hands to the tests.
    """
    names = ["py"]
    if not (request.config.getoption("--no-c-extensions") or extensions_disabled()):
        names.insert(0, "c")
    return {name: request.getfixturevalue(f"{name}_backend") for name in names}


_SELECTOR = re.compile(r"\b(istio_[a-z_]+)(\{\s*\}|\{)?")


def scoped(promql: str, job: str) -> str:
    """``promql`` with ``job="<job>"`` added to every ``istio_*`` series selector."""

    def add(match: re.Match[str]) -> str:
        name, brace = match.group(1), match.group(2)
        if brace is None or brace.replace(" ", "") == "{}":
            return f'{name}{{job="{job}"}}'
        return f'{name}{{job="{job}",'

    return _SELECTOR.sub(add, promql)


def series_key(metric: dict[str, str]) -> LabelKey:
    """A result's series as ``(name, sorted labels)`` without the labels Prometheus adds."""
    labels = {k: v for k, v in metric.items() if k not in ("__name__", "job", "instance")}
    return metric.get("__name__", ""), tuple(sorted(labels.items()))


class PhaseGate:
    """Serves ``store`` to a ``MetricsServer`` while letting a test record in atomic phases.

    >>> gate = PhaseGate(engine.store)  # doctest: +SKIP
    >>> with gate.phase():              # a scrape now waits until the block is done
    ...     record_everything()

    A scrape renders either before or after a phase, never in the middle, so every sample
    Prometheus stores is "all of phase 1" or "all of phases 1 and 2". That makes ``irate``
    and scrape-aligned ``increase`` exact. The lock is the test's, on the render path only;
    recording itself goes to the store untouched.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self._lock = threading.Lock()
        self.renders = 0

    @contextlib.contextmanager
    def phase(self) -> Iterator[None]:
        with self._lock:
            yield

    def render(self, openmetrics: bool = False) -> bytes:
        with self._lock:
            self.renders += 1
            return bytes(self.store.render(openmetrics=openmetrics))

    def snapshot(self) -> Any:
        with self._lock:
            return self.store.snapshot()


@dataclass(frozen=True)
class Exchange:
    """One scrape as seen between Prometheus and our server."""

    path: str
    accept: str | None  # what Prometheus sent
    accept_encoding: str | None
    forwarded_accept: str | None  # what reached our server (differs when forcing text)
    status: int
    content_type: str | None  # what our server answered
    content_encoding: str | None
    body_bytes: int


class RecordingProxy:
    """An HTTP pass-through to ``upstream`` (``host:port``) that records every exchange.

    >>> with MetricsServer(store) as server, RecordingProxy(server.port) as proxy:  # doctest: +SKIP
    ...     scrape(proxy.address)
    ...     proxy.exchanges[0].content_type

    With ``force_accept``, the ``Accept`` header is replaced before it reaches our server, so
    a scraper that prefers OpenMetrics gets the format that header asks for instead. The body
    and headers that matter to a scraper (``Content-Type``, ``Content-Encoding``) are relayed
    byte for byte.
    """

    def __init__(self, upstream_port: int, *, force_accept: str | None = None) -> None:
        self.upstream_port = upstream_port
        self.force_accept = force_accept
        self.exchanges: list[Exchange] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        assert self._server is not None, "RecordingProxy is not running"
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> RecordingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                accept = self.headers.get("Accept")
                forwarded = proxy.force_accept if proxy.force_accept is not None else accept
                headers = {
                    k: v
                    for k, v in (
                        ("Accept", forwarded),
                        ("Accept-Encoding", self.headers.get("Accept-Encoding")),
                        ("User-Agent", self.headers.get("User-Agent")),
                    )
                    if v is not None
                }
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=5)
                try:
                    conn.request("GET", self.path, headers=headers)
                    response = conn.getresponse()
                    body = response.read()
                finally:
                    conn.close()
                content_type = response.getheader("Content-Type")
                encoding = response.getheader("Content-Encoding")
                proxy.exchanges.append(
                    Exchange(
                        self.path,
                        accept,
                        self.headers.get("Accept-Encoding"),
                        forwarded,
                        response.status,
                        content_type,
                        encoding,
                        len(body),
                    )
                )
                self.send_response(response.status)
                if content_type is not None:
                    self.send_header("Content-Type", content_type)
                if encoding is not None:
                    self.send_header("Content-Encoding", encoding)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- Istio's dashboard queries, and reading their results ----------------------------------


def by_labels(result: list[Result], *labels: str) -> dict[tuple[str, ...], float]:
    out = {}
    for r in result:
        key = tuple(r["metric"].get(label, "") for label in labels)
        assert key not in out, f"two series for {key}: {result}"
        out[key] = float(r["value"][1])
    return out


def scalar(result: list[Result]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


COUNTS_BY = "sum by (destination_service, response_code, reporter) ({selector})"


MESH_SUCCESS_RATE = (
    'sum (rate(istio_requests_total{reporter=~"source|waypoint",response_code!~"5.."}'
    "[$__rate_interval])) / sum (rate(istio_requests_total"
    '{reporter=~"source|waypoint"}[$__rate_interval]))'
)


MESH_4XX = (
    'round(sum (rate(istio_requests_total{reporter=~"source|waypoint",response_code=~"4.."}'
    "[$__rate_interval])), 0.01)or vector(0)"
)


MESH_WORKLOAD_QUANTILE = (
    "label_join(histogram_quantile($q, sum by (le,destination_workload,"
    "destination_workload_namespace) (rate(istio_request_duration_milliseconds_bucket"
    '{reporter=~"source|waypoint"}[$__rate_interval]))), "destination_workload_var", ".",'
    ' "destination_workload", "destination_workload_namespace")'
)


MESH_WORKLOAD_SUCCESS = (
    "label_join(sum by (destination_workload,destination_workload_namespace) (rate("
    'istio_requests_total{reporter=~"source|waypoint",response_code!~"5.."}[$__rate_interval]))'
    "/sum by (destination_workload,destination_workload_namespace) (rate(istio_requests_total"
    '{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".",'
    ' "destination_workload", "destination_workload_namespace")'
)


MESH_TCP = (
    "label_join(sum by (destination_workload,destination_workload_namespace,destination_service)"
    ' (rate(istio_tcp_$dir_bytes_total{reporter=~"source|waypoint"}[$__rate_interval])),'
    ' "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")'
)


SERVICE_VOLUME = (
    'round(sum(irate(istio_requests_total{reporter=~"$qrep",destination_service="$service"}'
    "[$__rate_interval])), 0.001)"
)


SERVICE_SUCCESS = (
    'sum(irate(istio_requests_total{reporter=~"$qrep",destination_service="$service",'
    'response_code!~"5.*"}[$__rate_interval])) / (sum(irate(istio_requests_total'
    '{reporter=~"$qrep",destination_service="$service"}[$__rate_interval])) or on () vector(1))'
)


SERVICE_SERVER_VOLUME = (
    'round(sum(irate(istio_requests_total{reporter="destination",destination_service="$service"}'
    "[$__rate_interval])), 0.001)"
)


SERVICE_INCOMING_MTLS = (
    'round(sum(irate(istio_requests_total{connection_security_policy="mutual_tls",'
    'destination_service="$service",reporter=~"$qrep",source_workload=~"$srcwl",'
    'source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload,'
    " source_workload_namespace, response_code), 0.001)"
)


SERVICE_INCOMING_PLAIN = (
    'round(sum(irate(istio_requests_total{connection_security_policy!="mutual_tls",'
    ' destination_service="$service", reporter=~"$qrep", source_workload=~"$srcwl",'
    ' source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload,'
    " source_workload_namespace, response_code), 0.001)"
)
