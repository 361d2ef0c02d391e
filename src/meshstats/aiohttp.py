"""Istio's client-side telemetry for ``aiohttp``: a trace config for ``ClientSession``.

>>> import aiohttp
>>> from meshstats import StatsEngine
>>> from meshstats.aiohttp import istio_trace_config
>>> engine = StatsEngine({"WORKLOAD_NAME": "productpage-v1", "NAMESPACE": "default"})
>>> async def main() -> None:
...     async with aiohttp.ClientSession(trace_configs=[istio_trace_config(engine)]) as s:
...         ...

Every request then reports Istio's four HTTP metrics with ``reporter="source"``:

- This workload's ``x-envoy-peer-metadata`` / ``-id`` go on every request (replacing what
  the caller set); the server's, on the response, name the destination workload. (aiohttp's
  response headers are read-only: the caller still sees them.)
- ``destination_service`` is the request's ``Host``, unless ``service_host`` names it.
- ``request_bytes``: the request line and the headers as aiohttp sent them, and the body
  chunks it wrote. ``response_bytes``: status line, headers and the body as delivered
  (after content decoding: aiohttp decodes before a trace can count).
- The request is recorded when the body's last byte has arrived (the response's stream
  reached its end), or with ``503``/``UF`` (connection failure), ``504``/``UT``
  (timeout), ``503``/``UC`` (broken off) when the request fails. A response released
  before its end is not recorded: aiohttp's trace signals have no event for it.
- ``destination_principal`` is the server certificate's URI SAN when TLS verified it.

Needs ``pip install 'meshstats[aiohttp]'``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from types import SimpleNamespace
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
    import aiohttp
except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
    raise MissingExtraError("aiohttp", "aiohttp") from exc

if TYPE_CHECKING:
    from .engine import StatsEngine

__all__ = ["istio_trace_config"]

_perf = time.perf_counter


def istio_trace_config(
    engine: StatsEngine,
    *,
    service_host: str | None = None,
    node_id: str | None = None,
    additional_labels: Iterable[str] = (),
) -> aiohttp.TraceConfig:
    """A ``TraceConfig`` that makes a ``ClientSession`` report as Istio's client side.

    ``engine`` describes this (calling) workload; ``service_host`` the destination service
    (``name.namespace.svc.cluster.local``) when the session talks to one service;
    ``node_id`` and ``additional_labels`` what goes into the exchange headers.
    """
    exchange = Exchange(engine, node_id=node_id, additional_labels=additional_labels)
    cluster = service_metadata(service_host)
    config = aiohttp.TraceConfig()

    def ctx_of(ctx: SimpleNamespace) -> dict[str, Any]:
        state: dict[str, Any] = ctx.__dict__.setdefault("meshstats", {})
        return state

    async def start(session: Any, ctx: SimpleNamespace, params: Any) -> None:
        headers = params.headers
        headers[MX_HEADER] = exchange.metadata  # replaces what the caller set
        headers[MX_ID_HEADER] = exchange.node_id
        state = ctx_of(ctx)
        state.update(started=_perf(), request=0, body=0, recorded=False)

    async def headers_sent(session: Any, ctx: SimpleNamespace, params: Any) -> None:
        state = ctx_of(ctx)
        url = params.url
        target = url.raw_path_qs if hasattr(url, "raw_path_qs") else str(url.raw_path)
        fields = sum(len(k) + len(v) + 4 for k, v in params.headers.items())
        # "METHOD target HTTP/1.1\r\n" + fields + "\r\n"
        state["request"] = len(params.method) + len(target) + 14 + fields
        state["host"] = params.headers.get("Host")
        state["content_type"] = params.headers.get("Content-Type")

    async def chunk_sent(session: Any, ctx: SimpleNamespace, params: Any) -> None:
        ctx_of(ctx)["body"] += len(params.chunk)

    def record(state: dict[str, Any], params: Any, code: int, flags: str | None,
               response_bytes: int, metadata: str | None, metadata_id: str | None,
               principal: str | None) -> None:  # fmt: skip
        if state.get("recorded"):
            return
        state["recorded"] = True
        record_outbound(
            exchange,
            metadata=metadata,
            metadata_id=metadata_id,
            principal=principal,
            started=state["started"],
            ended=_perf(),
            code=code,
            flags=flags,
            request_bytes=state["request"] + state["body"],
            response_bytes=response_bytes,
            host=state.get("host") or params.url.host,
            method=params.method,
            path=params.url.path,
            content_type=state.get("content_type"),
            cluster_metadata=cluster,
        )

    async def end(session: Any, ctx: SimpleNamespace, params: Any) -> None:
        state = ctx_of(ctx)
        response = params.response
        raw = response.raw_headers
        fields = sum(len(k) + len(v) + 4 for k, v in raw)
        reason = response.reason or ""
        version = response.version
        # "HTTP/x.y code reason\r\n" + fields + "\r\n"
        head = 5 + len(f"{version.major}.{version.minor}") + 1 + 3 + 1 + len(reason) + 4
        head += fields
        headers = response.headers
        metadata, metadata_id = headers.get(MX_HEADER), headers.get(MX_ID_HEADER)
        principal = None
        conn = response.connection
        if conn is not None:
            transport = conn.transport
        else:
            # A body that came with the headers has already released the connection to the
            # pool; the response's protocol still holds the (kept-alive) transport.
            transport = getattr(getattr(response, "_protocol", None), "transport", None)
        if transport is not None:
            principal = peer_principal(transport.get_extra_info("ssl_object"))
        content = response.content
        code = response.status

        def at_eof() -> None:
            record(state, params, code, None, head + content.total_bytes, metadata,
                   metadata_id, principal)  # fmt: skip

        content.on_eof(at_eof)

    async def failed(session: Any, ctx: SimpleNamespace, params: Any) -> None:
        state = ctx_of(ctx)
        exc = params.exception
        if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
            code, flags = UPSTREAM_CONNECT_FAILURE
        elif isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            code, flags = UPSTREAM_TIMEOUT
        elif isinstance(exc, aiohttp.ClientError):
            code, flags = UPSTREAM_RESET
        else:
            return  # not the upstream's doing (a cancelled caller, a bad argument)
        record(state, params, code, flags, 0, None, None, None)

    config.on_request_start.append(start)
    config.on_request_headers_sent.append(headers_sent)
    config.on_request_chunk_sent.append(chunk_sent)
    config.on_request_end.append(end)
    config.on_request_exception.append(failed)
    return config
