"""Istio's server-side telemetry inside an ASGI application (Starlette, FastAPI, any ASGI app).

>>> from starlette.applications import Starlette
>>> from meshstats import StatsEngine
>>> from meshstats.asgi import IstioMiddleware
>>> engine = StatsEngine({"WORKLOAD_NAME": "reviews-v2", "NAMESPACE": "default",
...                       "LABELS": {"app": "reviews", "version": "v2"}})
>>> app = Starlette()
>>> app.add_middleware(IstioMiddleware, engine=engine)   # or IstioMiddleware(asgi_app, engine)

Serve ``engine.render()`` (or run ``meshstats.MetricsServer(engine.store, port=15090)``) and
every request shows up in Istio's four HTTP metrics with ``reporter="destination"``, exactly as
an Istio sidecar in front of the service would report it:

- The caller's ``x-envoy-peer-metadata`` / ``-id`` headers name the source workload; they are
  removed before the application sees the request. The response carries this workload's own
  (the metadata when the request had metadata, the id when it had an id), as Istio's server
  side answers.
- ``request_bytes``: the request line, the headers and the body as received (the head is
  rebuilt from the scope as HTTP/1.1 writes it; the body counts at least ``content-length``
  unless the client went away). ``response_bytes``: the status line, the headers the
  application and this middleware send, and the body. Headers the server adds on its own
  (uvicorn's ``date`` and ``server``) and chunked framing are not visible to a middleware.
- The duration runs from the request reaching the middleware to the last body byte sent.
- A client that goes away before the response ends (the application receives
  ``http.disconnect``) is recorded ``0``/``DC`` before the response started, or with the
  response's status and ``DC`` after.
- An application error before the response started is recorded ``500`` (what the server
  answers), then re-raised.
- ``source_principal`` comes only from a verified client certificate that the server exposes
  through the ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``), never
  from a header. uvicorn does not expose it, so behind uvicorn the principal is ``unknown``
  and ``connection_security_policy`` ``none`` (terminate mTLS in front of it to get them).

``service_host`` (``"reviews.default.svc.cluster.local"``) gives ``destination_service*`` as
Istio's inbound cluster does; without it they fall back to the canonical service, as Istio's
server side does.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from ._embed import MX_HEADER_B, MX_ID_HEADER_B, Exchange, principal_from_pem, service_metadata

if TYPE_CHECKING:
    from .engine import StatsEngine
    from .labels import PeerContext

__all__ = ["IstioMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REASONS: dict[int, str] = {s.value: s.phrase for s in HTTPStatus}
_perf = time.perf_counter


class IstioMiddleware:
    """Records Istio's request metrics for each HTTP request of ``app`` (reporter destination).

    Parameters
    ----------
    app:
        The ASGI application (Starlette's ``add_middleware`` passes it).
    engine:
        The :class:`~meshstats.StatsEngine` describing this workload (its node metadata) and
        holding the metrics.
    service_host:
        This service's host (``name.namespace.svc.cluster.local``) for ``destination_service``.
    node_id, additional_labels:
        What goes into this workload's exchange headers (Envoy's node id; pod labels beyond
        Istio's reduced set).
    """

    def __init__(
        self,
        app: ASGIApp,
        engine: StatsEngine,
        *,
        service_host: str | None = None,
        node_id: str | None = None,
        additional_labels: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.engine = engine
        self.exchange = Exchange(engine, node_id=node_id, additional_labels=additional_labels)
        self._cluster = service_metadata(service_host)
        self._own_md = (MX_HEADER_B, self.exchange.metadata_b)
        self._own_id = (MX_ID_HEADER_B, self.exchange.node_id_b)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        call = _Call(self, scope, receive, send)
        try:
            await self.app(call.scope, call.receive, call.send)
        except BaseException:
            if not call.recorded:
                call.record(failed=True)
            raise
        if not call.recorded:  # the app returned without finishing its response
            call.record(failed=False)


class _Call:
    """One request through the middleware: its byte counts and outcome."""

    __slots__ = (
        "mw", "scope", "_receive", "_send", "started", "metadata", "metadata_id", "host",
        "content_type", "content_length", "request_head", "request_body", "response_head",
        "response_body", "status", "done", "disconnected", "recorded", "head_method",
    )  # fmt: skip

    def __init__(self, mw: IstioMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        self.started = _perf()
        self.mw = mw
        self._receive = receive
        self._send = send
        metadata = metadata_id = host = content_type = None
        content_length = -1
        size = 0
        strip = False
        headers = scope["headers"]
        for name, value in headers:
            size += len(name) + len(value) + 4  # "name: value\r\n"
            if name == b"host":
                host = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = int(value) if value.isdigit() else -1
            elif name == MX_HEADER_B:
                metadata, strip = value, True
            elif name == MX_ID_HEADER_B:
                metadata_id, strip = value, True
        if strip:  # the app never sees the exchange headers (a copy: the server's scope stays)
            scope = dict(scope)
            scope["headers"] = [
                (n, v) for n, v in headers if n != MX_HEADER_B and n != MX_ID_HEADER_B
            ]
        self.scope = scope
        self.metadata = metadata
        self.metadata_id = metadata_id
        self.host = host
        self.content_type = content_type
        self.content_length = content_length
        raw_path = scope.get("raw_path") or scope["path"].encode()
        target = len(raw_path)
        query = scope.get("query_string")
        if query and b"?" not in raw_path:  # some servers leave the query in raw_path
            target += 1 + len(query)
        method: str = scope["method"]
        self.head_method = method == "HEAD"
        # "METHOD target HTTP/x.y\r\n" + fields + "\r\n"
        self.request_head = len(method) + target + len(scope.get("http_version", "1.1")) + 11
        self.request_head += size
        self.request_body = 0
        self.response_head = 0
        self.response_body = 0
        self.status = 0
        self.done = self.disconnected = self.recorded = False

    async def receive(self) -> Message:
        message = await self._receive()
        kind = message["type"]
        if kind == "http.request":
            self.request_body += len(message.get("body", b""))
        elif kind == "http.disconnect" and not self.done:
            self.disconnected = True
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            status = self.status = int(message["status"])
            headers = list(message.get("headers", ()))
            mw = self.mw
            if self.metadata is not None:
                headers.append(mw._own_md)
            if self.metadata_id is not None:
                headers.append(mw._own_id)
            message = dict(message)
            message["headers"] = headers
            size = 0
            for name, value in headers:
                size += len(name) + len(value) + 4
            version = self.scope.get("http_version", "1.1")
            # "HTTP/x.y code reason\r\n" + fields + "\r\n"
            reason = _REASONS.get(status, "")
            self.response_head = len(version) + len(str(status)) + len(reason) + 11 + size
        elif kind == "http.response.body":
            if not self.head_method:
                self.response_body += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.done = True
        try:
            await self._send(message)
        except OSError:
            self.disconnected = True  # servers that raise on a gone client (ASGI spec 2.4)
            raise
        if self.done and not self.recorded:
            self.record(failed=False)  # the last body byte went out

    def record(self, *, failed: bool) -> None:
        self.recorded = True
        mw = self.mw
        scope = self.scope
        code, flags = self.status, None
        if self.disconnected and not self.done:
            flags = "DC"  # Envoy: downstream connection termination
        elif failed and not self.status:
            code = 500  # what the server answers for an app that raised
        elif not self.done and not self.status:
            flags = "DC"  # the app gave up without a response: it saw the client go
        body = self.request_body
        if self.content_length > body and flags is None:
            body = self.content_length  # the server drained what the app did not read
        tls = scope.get("extensions", {}).get("tls") if "extensions" in scope else None
        principal = None
        if tls and not tls.get("client_cert_error"):
            chain = tls.get("client_cert_chain")
            if chain:
                principal = principal_from_pem(chain[0])
        client = scope.get("client")
        peer: PeerContext = mw.exchange.inbound(
            self.metadata,
            self.metadata_id,
            principal=principal,
            address=f"{client[0]}:{client[1]}" if client and self.metadata is None else None,
            cluster_metadata=mw._cluster,
        )
        host = self.host
        ctype = self.content_type
        mw.engine.record_request(
            peer,
            response_code=code,
            duration_ms=(_perf() - self.started) * 1000.0,
            request_bytes=self.request_head + body,
            response_bytes=self.response_head + self.response_body,
            host=host.decode("latin-1") if host is not None else None,
            response_flags=flags,
            method=scope["method"],
            path=scope["path"],
            content_type=ctype.decode("latin-1") if ctype is not None else None,
        )
