"""Istio's server-side telemetry inside a WSGI application (Flask, Django, any WSGI app).

>>> from flask import Flask
>>> from meshstats import StatsEngine
>>> from meshstats.wsgi import IstioMiddleware
>>> engine = StatsEngine({"WORKLOAD_NAME": "reviews-v2", "NAMESPACE": "default"})
>>> app = Flask(__name__)
>>> app.wsgi_app = IstioMiddleware(app.wsgi_app, engine=engine)

The semantics are :mod:`meshstats.asgi`'s, as WSGI can see them:

- The caller's ``x-envoy-peer-metadata`` / ``-id`` (``HTTP_X_ENVOY_PEER_METADATA...`` in the
  environ) name the source workload and are removed before the application runs; the
  response carries this workload's own when the request carried them.
- ``request_bytes``: the request line, the headers as the server hands them over and the body
  (at least ``CONTENT_LENGTH``). ``response_bytes``: the status line, the application's
  headers and ours, and the body; headers the server adds (gunicorn's ``Server``, ``Date``,
  ``Connection``) are not visible to a middleware.
- The request is recorded when the server closes the response iterable, which PEP 3333 has
  it do after the last byte was written: the duration ends there.
- A client that goes away: a request body that fails or ends before its ``Content-Length``
  is ``0``/``DC`` (whatever the app answered: Envoy resets such a stream);
  a server that stops iterating the response before its end (it could not write) is the
  status with ``DC``.
- An exception before ``start_response`` is recorded ``500`` (what the server answers).
- ``source_principal`` only from a verified client certificate in the environ as mod_ssl
  exports it (``SSL_CLIENT_CERT`` with ``SSL_CLIENT_VERIFY == "SUCCESS"``): a client cannot
  set those keys (its headers arrive as ``HTTP_*``). gunicorn does not export the
  certificate, so behind gunicorn the principal is ``unknown``.

With several worker processes, give each worker's engine a shared store
(``StatsEngine(..., store=Store.shared(path))``) so one scrape shows every worker's requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._embed import MX_HEADER, MX_ID_HEADER, Exchange, principal_from_pem, service_metadata

if TYPE_CHECKING:
    from .engine import StatsEngine

__all__ = ["IstioMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_MD_KEY = "HTTP_X_ENVOY_PEER_METADATA"
_ID_KEY = "HTTP_X_ENVOY_PEER_METADATA_ID"
_perf = time.perf_counter


class IstioMiddleware:
    """Records Istio's request metrics for each request of a WSGI ``app`` (reporter destination).

    Parameters are those of :class:`meshstats.asgi.IstioMiddleware`.
    """

    def __init__(
        self,
        app: WSGIApp,
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
        self._own_md = (MX_HEADER, self.exchange.metadata)
        self._own_id = (MX_ID_HEADER, self.exchange.node_id)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        call = _Call(self, environ, start_response)
        try:
            result = self.app(call.environ, call.start_response)
        except BaseException:
            call.record(failed=True)
            raise
        return _Body(call, result)


class _Input:
    """``wsgi.input`` counting what the app reads. A read that fails, or comes back short of
    ``CONTENT_LENGTH`` (servers return what arrived before the end of the stream), is the
    client gone."""

    def __init__(self, stream: Any, call: _Call, length: int) -> None:
        self._stream = stream
        self._call = call
        self._left = length

    def _count(self, data: bytes) -> bytes:
        self._call.request_body += len(data)
        self._left -= len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        try:
            data = self._count(self._stream.read(size))
        except Exception:
            self._call.disconnected = True
            raise
        if self._left > 0 and (size is None or size < 0 or len(data) < size):
            self._call.cut = True  # the body ended before its Content-Length
        return data

    def readline(self, *args: Any) -> bytes:
        try:
            return self._count(self._stream.readline(*args))
        except Exception:
            self._call.disconnected = True
            raise

    def readlines(self, *args: Any) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class _Call:
    __slots__ = (
        "mw", "environ", "_start", "started", "metadata", "metadata_id", "request_head",
        "request_body", "response_head", "response_body", "status", "done",
        "disconnected", "recorded", "cut",
    )  # fmt: skip

    def __init__(self, mw: IstioMiddleware, environ: Environ, start: StartResponse) -> None:
        self.started = _perf()
        self.mw = mw
        self._start = start
        self.metadata = environ.get(_MD_KEY)
        self.metadata_id = environ.get(_ID_KEY)
        size = 0
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                size += len(key) - 5 + len(value) + 4  # "name: value\r\n"
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            value = environ.get(key)
            if value:
                size += len(key) + len(value) + 4
        if self.metadata is not None or self.metadata_id is not None:
            environ = dict(environ)  # the app never sees the exchange headers
            environ.pop(_MD_KEY, None)
            environ.pop(_ID_KEY, None)
        target = environ.get("RAW_URI")
        if target is None:
            target = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            if environ.get("QUERY_STRING"):
                target += "?" + environ["QUERY_STRING"]
        protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
        # "METHOD target HTTP/x.y\r\n" + fields + "\r\n"
        self.request_head = len(environ["REQUEST_METHOD"]) + len(target) + len(protocol) + 6
        self.request_head += size
        self.request_body = 0
        if "wsgi.input" in environ:
            length = environ.get("CONTENT_LENGTH") or ""
            length_n = int(length) if length.isdigit() else -1
            environ["wsgi.input"] = _Input(environ["wsgi.input"], self, length_n)
        self.environ = environ
        self.response_head = self.response_body = self.status = 0
        self.done = self.disconnected = self.recorded = self.cut = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        mw = self.mw
        headers = list(headers)
        if self.metadata is not None:
            headers.append(mw._own_md)
        if self.metadata_id is not None:
            headers.append(mw._own_id)
        self.status = int(status[:3])
        size = sum(len(name) + len(value) + 4 for name, value in headers)
        # "HTTP/1.1 " + status + "\r\n" + fields + "\r\n"
        self.response_head = 9 + len(status) + 2 + size + 2
        write = self._start(status, headers, exc_info) if exc_info else self._start(status, headers)

        def counted(data: bytes) -> object:
            self.response_body += len(data)
            return write(data)

        return counted

    def record(self, *, failed: bool) -> None:
        if self.recorded:
            return
        self.recorded = True
        env = self.environ
        code, flags = self.status, None
        if self.cut:
            code, flags = 0, "DC"  # Envoy resets a stream whose client ended mid-request
        elif self.disconnected and not self.done:
            flags = "DC"
        elif failed and not code:
            code = 500
        body = self.request_body
        length = env.get("CONTENT_LENGTH")
        if flags is None and length and length.isdigit() and int(length) > body:
            body = int(length)  # the server drains what the app left unread
        principal = None
        if env.get("SSL_CLIENT_VERIFY") == "SUCCESS":
            principal = principal_from_pem(env.get("SSL_CLIENT_CERT"))
        mw = self.mw
        peer = mw.exchange.inbound(
            self.metadata,
            self.metadata_id,
            principal=principal,
            address=f"{env.get('REMOTE_ADDR')}:{env.get('REMOTE_PORT')}"
            if self.metadata is None
            else None,
            cluster_metadata=mw._cluster,
        )
        mw.engine.record_request(
            peer,
            response_code=code,
            duration_ms=(_perf() - self.started) * 1000.0,
            request_bytes=self.request_head + body,
            response_bytes=self.response_head + self.response_body,
            host=env.get("HTTP_HOST"),
            response_flags=flags,
            method=env.get("REQUEST_METHOD"),
            path=env.get("PATH_INFO"),
            content_type=env.get("CONTENT_TYPE"),
        )


class _Body:
    """The app's response iterable, counted; recorded at ``close()``, when the server is done
    writing. A server that closes it before the end could not write: the client went away."""

    def __init__(self, call: _Call, result: Iterable[bytes]) -> None:
        self._call = call
        self._result = result
        self._iter: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        call = self._call
        head = call.environ.get("REQUEST_METHOD") == "HEAD"
        try:
            for chunk in self._result:
                if not head:
                    call.response_body += len(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except BaseException:
            call.record(failed=True)
            raise
        call.done = True

    def close(self) -> None:
        call = self._call
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            if not call.done and call.status:
                call.disconnected = True  # the server stopped writing: the client is gone
            call.record(failed=False)
