"""Istio's client-side telemetry for ``httpx``: a transport that wraps another.

>>> import httpx
>>> from meshstats import StatsEngine
>>> from meshstats.httpx import IstioTransport, AsyncIstioTransport
>>> engine = StatsEngine({"WORKLOAD_NAME": "productpage-v1", "NAMESPACE": "default"})
>>> client = httpx.Client(transport=IstioTransport(engine))
>>> aclient = httpx.AsyncClient(transport=AsyncIstioTransport(engine))

Every request then reports Istio's four HTTP metrics with ``reporter="source"``, as the
client sidecar in front of this workload would:

- This workload's ``x-envoy-peer-metadata`` / ``-id`` go on every request (replacing what
  the caller set); the server's come back on the response, name the destination workload,
  and are removed before the caller sees the response.
- ``destination_service`` is the request's ``Host`` (Istio's host-header fallback), unless
  ``service_host`` names the service.
- ``request_bytes``: request line, headers and body (its ``Content-Length``);
  ``response_bytes``: status line, headers and the body as received (before decoding).
- The duration ends with the last body byte read; a response closed before its end is
  recorded with ``DC`` (the caller went away), a connection that fails ``503``/``UF``, a
  timeout ``504``/``UT``, a connection broken off ``503``/``UC``.
- ``destination_principal`` is the server certificate's URI SAN when TLS verified it.

Needs ``pip install 'meshstats[httpx]'``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._embed import (
    MX_HEADER,
    MX_ID_HEADER,
    UPSTREAM_CONNECT_FAILURE,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
    Exchange,
    record_outbound,
    service_metadata,
)
from .certs import peer_principal
from .errors import MissingExtraError

try:
    import httpx
except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
    raise MissingExtraError("httpx", "httpx") from exc

if TYPE_CHECKING:
    from .engine import StatsEngine

__all__ = ["IstioTransport", "AsyncIstioTransport"]

_perf = time.perf_counter


class _Client:
    """What both transports share: headers out, the peer and sizes back, the record."""

    def __init__(
        self,
        engine: StatsEngine,
        service_host: str | None,
        node_id: str | None,
        additional_labels: Iterable[str],
    ) -> None:
        self.exchange = Exchange(engine, node_id=node_id, additional_labels=additional_labels)
        self._cluster = service_metadata(service_host)

    def prepare(self, request: httpx.Request) -> _Call:
        headers = request.headers
        headers[MX_HEADER] = self.exchange.metadata
        headers[MX_ID_HEADER] = self.exchange.node_id
        return _Call(self, request)

    def failed(self, call: _Call, exc: Exception) -> None:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            call.code, call.flags = UPSTREAM_CONNECT_FAILURE
        elif isinstance(exc, httpx.TimeoutException):
            call.code, call.flags = UPSTREAM_TIMEOUT
        else:
            call.code, call.flags = UPSTREAM_RESET
        call.record()


class _Call:
    __slots__ = (
        "client", "request", "started", "request_bytes", "response_bytes", "code", "flags",
        "metadata", "metadata_id", "principal", "done", "recorded",
    )  # fmt: skip

    def __init__(self, client: _Client, request: httpx.Request) -> None:
        self.started = _perf()
        self.client = client
        self.request = request
        url = request.url
        headers = request.headers.raw
        size = sum(len(k) + len(v) + 4 for k, v in headers)
        length = request.headers.get("content-length")
        body = int(length) if length and length.isdigit() else 0
        # "METHOD target HTTP/1.1\r\n" + fields + "\r\n" + body
        self.request_bytes = len(request.method) + len(url.raw_path) + 14 + size + body
        self.response_bytes = 0
        self.code = 0
        self.flags: str | None = None
        self.metadata: bytes | None = None
        self.metadata_id: bytes | None = None
        self.principal: str | None = None
        self.done = self.recorded = False

    def response(self, response: httpx.Response) -> None:
        """Read the server's exchange headers (and remove them), count the head."""
        self.code = response.status_code
        headers = response.headers
        raw = headers.raw
        self.metadata = next((v for k, v in raw if k.lower() == b"x-envoy-peer-metadata"), None)
        self.metadata_id = next(
            (v for k, v in raw if k.lower() == b"x-envoy-peer-metadata-id"), None
        )
        if self.metadata is not None or self.metadata_id is not None:
            del headers[MX_HEADER]  # the caller never sees them, as behind a sidecar
            del headers[MX_ID_HEADER]
        ext = response.extensions
        version = ext.get("http_version", b"HTTP/1.1")
        reason = ext.get("reason_phrase", b"")
        # "HTTP/1.1 200 OK\r\n" + fields + "\r\n"
        fields = sum(len(k) + len(v) + 4 for k, v in raw)
        self.response_bytes = len(version) + len(str(self.code)) + len(reason) + 6 + fields
        stream = ext.get("network_stream")
        if stream is not None:
            self.principal = peer_principal(stream.get_extra_info("ssl_object"))

    def record(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        if not self.done and self.flags is None:
            self.flags = "DC"  # the caller closed the response before its end
        request = self.request
        record_outbound(
            self.client.exchange,
            metadata=self.metadata,
            metadata_id=self.metadata_id,
            principal=self.principal,
            started=self.started,
            ended=_perf(),
            code=self.code,
            flags=self.flags,
            request_bytes=self.request_bytes,
            response_bytes=self.response_bytes,
            host=request.headers.get("host"),
            method=request.method,
            path=request.url.path,
            content_type=request.headers.get("content-type"),
            cluster_metadata=self.client._cluster,
        )


class _Stream(httpx.SyncByteStream):
    def __init__(self, inner: Any, call: _Call) -> None:
        self._inner = inner
        self._call = call

    def __iter__(self) -> Iterator[bytes]:
        call = self._call
        try:
            for chunk in self._inner:
                call.response_bytes += len(chunk)
                yield chunk
        except httpx.TransportError:
            call.flags = "UC"  # the server broke off its response
            raise
        call.done = True

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._call.record()


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any, call: _Call) -> None:
        self._inner = inner
        self._call = call

    async def __aiter__(self) -> AsyncIterator[bytes]:
        call = self._call
        try:
            async for chunk in self._inner:
                call.response_bytes += len(chunk)
                yield chunk
        except httpx.TransportError:
            call.flags = "UC"
            raise
        call.done = True

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._call.record()


class IstioTransport(httpx.BaseTransport):
    """A sync ``httpx`` transport that reports every request as Istio's client side does.

    Parameters
    ----------
    engine:
        The :class:`~meshstats.StatsEngine` of this (calling) workload.
    transport:
        The transport that does the work (``httpx.HTTPTransport()`` by default).
    service_host:
        The destination service's host (``name.namespace.svc.cluster.local``), when this
        client talks to one service; otherwise the request's ``Host`` is reported.
    node_id, additional_labels:
        What goes into this workload's exchange headers.
    """

    def __init__(
        self,
        engine: StatsEngine,
        transport: httpx.BaseTransport | None = None,
        *,
        service_host: str | None = None,
        node_id: str | None = None,
        additional_labels: Iterable[str] = (),
    ) -> None:
        self._client = _Client(engine, service_host, node_id, additional_labels)
        self._inner = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = self._client.prepare(request)
        try:
            response = self._inner.handle_request(request)
        except Exception as exc:
            self._client.failed(call, exc)
            raise
        call.response(response)
        response.stream = _Stream(response.stream, call)
        return response

    def close(self) -> None:
        self._inner.close()


class AsyncIstioTransport(httpx.AsyncBaseTransport):
    """The ``httpx.AsyncClient`` twin of :class:`IstioTransport` (same parameters; the
    default inner transport is ``httpx.AsyncHTTPTransport()``)."""

    def __init__(
        self,
        engine: StatsEngine,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        service_host: str | None = None,
        node_id: str | None = None,
        additional_labels: Iterable[str] = (),
    ) -> None:
        self._client = _Client(engine, service_host, node_id, additional_labels)
        self._inner = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = self._client.prepare(request)
        try:
            response = await self._inner.handle_async_request(request)
        except Exception as exc:
            self._client.failed(call, exc)
            raise
        call.response(response)
        response.stream = _AsyncStream(response.stream, call)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
