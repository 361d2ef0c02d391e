"""Istio's telemetry for ``grpcio`` services and clients, sync and ``grpc.aio``: interceptors.

>>> import grpc
>>> from concurrent import futures
>>> from meshstats import StatsEngine
>>> from meshstats.grpc import IstioServerInterceptor, IstioClientInterceptor
>>> engine = StatsEngine({"WORKLOAD_NAME": "reviews-v2", "NAMESPACE": "default"})
>>> server = grpc.server(futures.ThreadPoolExecutor(4),
...                      interceptors=[IstioServerInterceptor(engine)])
>>> channel = grpc.intercept_channel(grpc.insecure_channel("reviews:9080"),
...                                  IstioClientInterceptor(engine, host="reviews:9080"))

``grpc.aio.server(interceptors=[AioIstioServerInterceptor(engine)])`` and
``grpc.aio.insecure_channel(target, interceptors=aio_client_interceptors(engine, ...))``
are the ``grpc.aio`` twins. This is what Istio's proxyless gRPC mode lacks: each call is
reported as an Istio sidecar reports a gRPC stream.

- The exchange goes through gRPC metadata (HTTP/2 headers): the client sends this workload's
  ``x-envoy-peer-metadata`` / ``-id``; the server removes them from what the servicer sees
  (``context.invocation_metadata()``) and answers with its own (only when asked, as Istio
  does): in the initial metadata of a streaming response (merged into what the servicer
  sends), in the trailing metadata of a unary one (the same batch as the message: sending
  initial metadata on its own costs a unary call about 200 us more CPU; no Envoy reads
  trailers that follow a message, so there a caller that sent the alias gets the alias
  alone, while a failure's trailers-only response, which Envoy reads as headers, carries
  the whole answer); the client reads
  either as its peer (for a unary response the trailing first, then the initial, where
  Envoy answers; for a stream the initial first). gRPC core swallows
  ``x-envoy-peer-metadata`` on receipt (its CSM observability owns that header), so the
  same value also travels as ``x-meshstats-peer-metadata``, which is what a meshstats end
  reads (:data:`MX_GRPC_ALIAS`).
- Each metadata entry costs gRPC itself CPU on both ends (more than the interceptors' own
  work on it), so a client may opt in to a leaner exchange once both ends are meshstats:
  the alias alone, one entry each way instead of three (``istio_headers="auto"``; the
  default, ``"always"``, sends Istio's headers on every call, as an Istio client does).
  With it, the client sends Istio's two headers and the alias until a server answers with
  the alias, then the alias alone. A call
  answered without any exchange sends all three again on the next call (the server may be
  an Envoy that a lean request did not ask), and an Istio answer (Envoy's ``-id`` without
  the alias: gRPC core keeps Envoy's metadata from us) makes every later request on that
  channel carry Istio's headers. The server answers in the form its caller reads: the
  alias alone to a request with the alias alone; Istio's headers and the alias to a request
  with the alias and the id (a client still learning, or behind its own sidecar); Istio's
  headers to a request with the id alone (an Envoy caller).

  Why it is not the default: a client in that mode whose channel has met only meshstats
  servers stops sending Istio's headers, so an Envoy that cannot be told apart from a
  meshstats server (one in front of a meshstats server, which answers with the alias)
  sees no caller metadata and labels the caller unknown; so does an Envoy endpoint joining
  the channel, for the calls it gets before one that carries Istio's headers has been
  answered. Only a mesh with no Envoy between meshstats ends should turn it on.
- At the call's end: ``istio_requests_total`` and the three histograms with
  ``request_protocol="grpc"``, ``response_code="200"`` (the HTTP status of every gRPC
  response) and ``grpc_response_status`` (the status code's number). A client whose call
  never reached a server (``UNAVAILABLE``, "failed to connect") records ``503``/``UF``.
- ``istio_request_messages_total`` / ``istio_response_messages_total``: every message
  counted, for unary and all streaming kinds, reported every ``tcp_reporting_duration``
  (from the engine's reporting thread, ``engine.start_reporting()``) once the peer is known,
  and the rest at the call's end (:class:`~meshstats.GrpcStream`).
- Sizes are the gRPC messages as framed on the wire (5-byte prefix + message) plus the
  metadata's names and values; HTTP/2 framing and HPACK are not visible to an interceptor.
  The server counts the serialized bytes; the client counts ``ByteSize()`` of protobuf
  messages (``len`` of ``bytes``).
- The server's ``source_principal`` is the client certificate's SPIFFE id that gRPC verified
  (``auth_context()["peer_spiffe_id"]``), never a header; a client interceptor cannot see
  the server's certificate, so its ``destination_principal`` is ``unknown``.

Needs ``pip install 'meshstats[grpc]'``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ._embed import MX_HEADER, MX_HEADERS, MX_ID_HEADER, Exchange, service_metadata
from .errors import MissingExtraError

try:
    import grpc
    import grpc.aio
except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
    raise MissingExtraError("grpc", "grpc") from exc

if TYPE_CHECKING:
    from .connections import GrpcStream
    from .engine import StatsEngine
    from .labels import PeerContext

__all__ = [
    "IstioServerInterceptor",
    "IstioClientInterceptor",
    "AioIstioServerInterceptor",
    "aio_client_interceptors",
]

_perf = time.perf_counter
_FRAME = 5

#: gRPC core keeps ``x-envoy-peer-metadata`` for its own CSM observability and never hands
#: it to Python (neither to a servicer nor to a client's initial metadata), so the same value
#: also travels under this key, which both meshstats ends read. The Istio header is still
#: sent, for an Envoy or a CSM peer on the other end.
MX_GRPC_ALIAS = "x-meshstats-peer-metadata"
_MX_KEYS = MX_HEADERS | {MX_GRPC_ALIAS}  # gRPC's length prefix: compressed flag + u32 length


def _method(details: Any) -> str:
    method = details.method
    return method.decode("utf-8", "replace") if isinstance(method, bytes) else str(method)


def _metadata_size(metadata: Iterable[Any] | None) -> int:
    if not metadata:
        return 0
    return sum(len(key) + len(value) + 4 for key, value in metadata)


def _split(metadata: Iterable[Any] | None) -> tuple[Any, Any, Any, int]:
    """The exchange values in ``metadata`` (the alias', Istio's header's, the id) and its
    size, in one pass (per call: kept lean). Which key carried the metadata tells a
    meshstats peer (the alias) from an Istio one."""
    alias: Any = None
    istio: Any = None
    found_id: Any = None
    size = 0
    for key, value in metadata or ():
        size += len(key) + len(value) + 4
        if key == MX_GRPC_ALIAS:
            alias = value
        elif key == MX_ID_HEADER:
            found_id = value
        elif key == MX_HEADER:  # gRPC core swallows it today; read should that change
            istio = value
    return alias, istio, found_id, size


_STATUS = {code: int(code.value[0]) for code in grpc.StatusCode}
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
Answer = tuple[tuple[str, str], ...]


class _Reply(NamedTuple):
    """What the server answers a caller: the entries, their size, and the reply in trailers
    that follow a message, when it differs (see ``_ServerBase``)."""

    entries: Answer
    size: int
    after_message: _Reply | None = None


class _Handler(
    collections.namedtuple(
        "_Handler",
        (
            "request_streaming",
            "response_streaming",
            "request_deserializer",
            "response_serializer",
            "unary_unary",
            "unary_stream",
            "stream_unary",
            "stream_stream",
        ),
    ),
    grpc.RpcMethodHandler,
):
    """A servicer's handler with one call's behavior, made per call: a named tuple, as
    grpc's own, built with ``_new`` (no Python-level ``__new__``, and not through grpc's
    ``*_rpc_method_handler`` functions, which import a module on every call)."""


_new = tuple.__new__


def _message_size(message: Any, serialize: Callable[[Any], bytes] | None = None) -> int:
    """A message's size on the wire: its serialized length plus gRPC's frame prefix."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return len(message) + _FRAME
    size = getattr(message, "ByteSize", None)
    if size is not None:
        return int(size()) + _FRAME
    return (len(serialize(message)) if serialize is not None else 0) + _FRAME


def _principal(context: Any) -> str | None:
    """The client certificate's SPIFFE id, as gRPC verified it (never metadata)."""
    try:
        if context.peer_identity_key() is None:
            return None  # not authenticated: spares auth_context(), 20 times the cost
        auth = context.auth_context()
    except Exception:  # noqa: BLE001 - a context without transport security
        return None
    for value in auth.get("peer_spiffe_id", ()):
        return bytes(value).decode("utf-8", "replace")
    for value in auth.get("x509_subject_alternative_name", ()):
        text = bytes(value).decode("utf-8", "replace")
        if text.startswith("spiffe://"):
            return text
    return None


#: Most peer contexts an interceptor keeps by their exchange values (which come from peers).
_MAX_PEERS = 1024
_NO_PEER = (None, None)  # a server that sent no exchange


def _keep(kept: dict[Any, PeerContext], key: Any, peer: PeerContext) -> PeerContext:
    """Keep ``peer`` by ``key``: a peer sends the same exchange values on every call, so a
    call finds its context in one lookup, without the exchange's and the engine's caches
    behind it (those still answer the first call of each key). Bounded: emptied when full."""
    if len(kept) >= _MAX_PEERS:
        kept.clear()
    kept[key] = peer
    return peer


# -- server side -------------------------------------------------------------------------------


class _ServerCall:
    """One call on the server: the servicer's handler, counts, sizes, the peer, and whether
    our metadata went out.

    A unary-unary call has no :class:`~meshstats.GrpcStream` (``stream`` is ``None``): it
    ends as it starts, so there is nothing to report periodically; its one request and its
    one response (if the servicer returned one) are recorded at its end. Streaming kinds
    count every message into theirs."""

    __slots__ = (
        "owner", "started", "metadata", "metadata_id", "method", "request_bytes",
        "response_bytes", "stream", "headers_sent", "code", "answer", "behavior",
        "deserializer", "serializer", "peer", "responses",
    )  # fmt: skip

    def __init__(
        self, owner: _ServerBase, details: Any, handler: Any, stream: GrpcStream | None
    ) -> None:
        self.started = _perf()
        self.owner = owner
        alias, istio, found_id, size = _split(details.invocation_metadata)
        self.metadata = alias if alias is not None else istio
        self.metadata_id = found_id
        method = details.method
        self.method: str = method if type(method) is str else _method(details)
        self.request_bytes = size + len(self.method) + 7  # ":path"
        self.response_bytes = 0
        self.stream = stream
        self.headers_sent = False
        self.code: Any = None  # set through the servicer's context, when it sets one
        # What this workload answers (the caller asked: Istio's rule; in the form the caller
        # reads, see _ServerBase), its size, and its form in the trailers after a message.
        self.answer: _Reply = owner._answers[
            alias is not None, found_id is not None or istio is not None
        ]
        self.behavior: Any = None
        self.deserializer: Callable[[bytes], Any] | None = handler.request_deserializer
        self.serializer: Callable[[Any], bytes] | None = handler.response_serializer
        self.peer: PeerContext | None = None
        self.responses = 0  # a unary-unary call's (its stream counts a streaming one's)

    def begin(self, context: Any) -> None:
        """The behavior starts: the peer is known (the principal needs the context)."""
        key = (self.metadata, self.metadata_id, _principal(context))
        peer = self.owner._peers.get(key)
        if peer is None:
            peer = self.owner._peer(key)
        self.peer = peer
        if self.stream is not None:
            self.stream.set_peer(peer)

    # The (de)serializers gRPC calls: each message counted as it crosses the wire.

    def deserialize_unary(self, data: bytes) -> Any:
        """A unary request (with a deserializer: without one, the behavior counts it)."""
        self.request_bytes += len(data) + _FRAME
        return self.deserializer(data)  # type: ignore[misc]

    def deserialize(self, data: bytes) -> Any:
        """Every request message of a streaming request."""
        self.request_bytes += len(data) + _FRAME
        self.stream.add(request_messages=1)  # type: ignore[union-attr]
        deserialize = self.deserializer
        return deserialize(data) if deserialize is not None else data

    def serialize(self, message: Any) -> bytes:
        """Every response message of a streaming response. (A unary response is serialized
        after the call is recorded: :meth:`unary_response` counts it.)"""
        serialize = self.serializer
        data = serialize(message) if serialize is not None else message
        self.response_bytes += len(data) + _FRAME
        self.stream.add(response_messages=1)  # type: ignore[union-attr]
        return bytes(data)

    # The behaviors gRPC calls: the servicer's, in a context (``_Context``) that starts the
    # call (the peer) and ends it (our answer in the trailing metadata, unless the initial
    # carried it; the call recorded, a failure included).

    def unary(self, request: Any, context: Any) -> Any:
        """A unary-unary or stream-unary call."""
        if self.stream is None and self.deserializer is None:
            self.request_bytes += len(request) + _FRAME  # raw bytes: no deserializer counted
        # _Context's with-block spelled out: two Python frames fewer on every unary call.
        ctx = _Context(context, self)
        self.begin(context)
        try:
            response = self.behavior(request, ctx)
        except BaseException as failed:
            ctx.ensure_trailers()  # a failed call's status carries them too
            self.finish(context, failed)
            raise
        self.unary_response(response)
        ctx.ensure_trailers()
        self.finish(context, None)
        return response

    def streaming(self, request: Any, context: Any) -> Iterator[Any]:
        with _Context(context, self) as ctx:
            for response in self.behavior(request, ctx):
                ctx.ensure_headers()
                yield response

    async def aio_unary(self, request: Any, context: Any) -> Any:
        if self.stream is None and self.deserializer is None:
            self.request_bytes += len(request) + _FRAME
        with _AioContext(context, self) as ctx:
            response = await self.behavior(request, ctx)
            self.unary_response(response)
            return response

    async def aio_streaming(self, request: Any, context: Any) -> AsyncIterator[Any]:
        with _AioContext(context, self) as ctx:
            result = self.behavior(request, ctx)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    await ctx.ensure_headers()
                    yield response
            else:  # a coroutine that writes with context.write()
                await result

    def unary_response(self, response: Any) -> None:
        """A unary response: counted here (it is serialized after the call is recorded).
        Our answer, not sent yet, goes in trailers that follow a message: only what a
        trailer reader reads (see ``_ServerBase``)."""
        self.response_bytes += _message_size(response, self.serializer)
        after = self.answer.after_message
        # (a status other than OK may go as trailers-only: headers, which Envoy reads)
        if after is not None and not self.headers_sent and self.code in (None, _OK):
            self.answer = after
        if self.stream is None:
            self.responses = 1
        else:
            self.stream.add(response_messages=1)

    def finish(self, context: Any, failed: BaseException | None) -> None:
        """The call's end: its messages and the call (``failed``: what the behavior raised)."""
        code = self.code
        if code is None:
            if failed is None:
                code = _OK
            else:
                # an exception: the status the context holds (abort_with_status), else UNKNOWN
                code = _code_of(context) or grpc.StatusCode.UNKNOWN
        flags = None
        if code == _CANCELLED and not _active(context):
            flags = "DC"  # the client went away
        requests, responses = 1, self.responses
        if self.stream is not None:
            self.stream.close()  # the rest of its messages reported: none left to record
            requests = responses = 0
        self.owner.engine.record_grpc_call(
            self.peer,  # type: ignore[arg-type]  # known: begin() ran
            request_messages=requests,
            response_messages=responses,
            grpc_status=0 if code is _OK else _STATUS[code],
            duration_ms=(_perf() - self.started) * 1000.0,
            request_bytes=self.request_bytes,
            response_bytes=self.response_bytes + self.answer.size,
            response_flags=flags,
            path=self.method,
        )

    def handler(self, handler: Any, aio: bool = False) -> Any:
        """The servicer's handler with this call's behavior and (de)serializers."""
        if handler.unary_unary is not None:
            self.behavior = handler.unary_unary
            deserialize = self.deserialize_unary if self.deserializer is not None else None
            behavior: Callable[..., Any] = self.aio_unary if aio else self.unary
            # The response goes to the servicer's serializer as it is: counted by the behavior.
            return _new(
                _Handler, (False, False, deserialize, self.serializer, behavior, None, None, None)
            )
        if handler.stream_unary is not None:
            self.behavior = handler.stream_unary
            behavior = self.aio_unary if aio else self.unary
            return _new(
                _Handler,
                (True, False, self.deserialize, self.serializer, None, None, behavior, None),
            )
        self.behavior = handler.unary_stream or handler.stream_stream
        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream is not None
            else grpc.stream_stream_rpc_method_handler
        )
        streaming = self.aio_streaming if aio else self.streaming
        return factory(streaming, self.deserialize, self.serialize)


def _code_of(context: Any) -> Any:
    try:
        return context.code()
    except Exception:  # noqa: BLE001 - older grpcio: no code() on the context
        return None


def _active(context: Any) -> bool:
    try:
        return bool(context.is_active())
    except Exception:  # noqa: BLE001 - grpc.aio contexts have no is_active()
        return not context.cancelled() if hasattr(context, "cancelled") else True


_Ctx = TypeVar("_Ctx", bound="_Context")


class _Context:
    """The servicer's context: the exchange headers hidden, and ours answered.

    A streaming response carries ours in its initial metadata (merged into what the
    servicer sends, or sent before the first message), so the client knows its peer while
    the stream is open. A unary response carries them in its trailing metadata, which travel
    in the same batch as the message and the status: an initial metadata sent on its own is
    one more round through gRPC core, about 200 us of CPU per call (bench_embed.py), and a
    unary call's client learns nothing earlier from it (gRPC sends a unary response's
    headers with the message)."""

    def __init__(self, context: Any, call: _ServerCall) -> None:
        self._context = context
        self._call = call
        self._trailing: tuple[Any, ...] = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def __enter__(self: _Ctx) -> _Ctx:
        self._call.begin(self._context)
        return self

    def __exit__(self, kind: Any, failed: BaseException | None, traceback: Any) -> None:
        self.ensure_trailers()  # a failed call's status carries them too
        self._call.finish(self._context, failed)

    def invocation_metadata(self) -> Any:
        md = self._context.invocation_metadata()
        return tuple(m for m in md or () if m[0] not in _MX_KEYS)

    def send_initial_metadata(self, initial_metadata: Any) -> None:
        call = self._call
        call.headers_sent = True
        self._context.send_initial_metadata(tuple(initial_metadata) + call.answer.entries)

    def ensure_headers(self) -> None:
        call = self._call
        if not call.headers_sent:
            call.headers_sent = True
            own = call.answer.entries
            if own:
                self._context.send_initial_metadata(tuple(own))

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata)
        self._context.set_trailing_metadata(trailing_metadata)

    def set_code(self, code: Any) -> None:
        self._call.code = code  # known here: spares asking the context at the end
        self._context.set_code(code)

    def ensure_trailers(self) -> None:
        """Ours in the trailing metadata, unless the initial metadata carried them."""
        call = self._call
        if not call.headers_sent:
            call.headers_sent = True
            own = call.answer.entries
            if own:
                self._context.set_trailing_metadata(self._trailing + own)

    # A failed call's status still carries our metadata, as Envoy adds its headers to a
    # trailers-only response: the client learns who failed it.
    def abort(self, code: Any, details: str) -> None:
        self.ensure_trailers()
        self._call.code = code
        self._context.abort(code, details)

    def abort_with_status(self, status: Any) -> None:
        self.ensure_trailers()
        self._context.abort_with_status(status)


class _AioContext(_Context):
    async def send_initial_metadata(self, initial_metadata: Any) -> None:  # type: ignore[override]
        call = self._call
        call.headers_sent = True
        entries = tuple(initial_metadata) + call.answer.entries
        await self._context.send_initial_metadata(entries)

    async def ensure_headers(self) -> None:  # type: ignore[override]
        call = self._call
        if not call.headers_sent:
            call.headers_sent = True
            own = call.answer.entries
            if own:
                await self._context.send_initial_metadata(tuple(own))

    async def write(self, message: Any) -> None:
        await self.ensure_headers()
        await self._context.write(message)

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> None:  # type: ignore[override]
        call = self._call
        call.code = code
        if not call.headers_sent:
            call.headers_sent = True
            trailing_metadata = tuple(trailing_metadata) + tuple(call.answer.entries)
        await self._context.abort(code, details, trailing_metadata)

    async def abort_with_status(self, status: Any) -> None:  # type: ignore[override]
        self.ensure_trailers()
        await self._context.abort_with_status(status)


class _ServerBase:
    def __init__(
        self,
        engine: StatsEngine,
        *,
        service_host: str | None = None,
        node_id: str | None = None,
        additional_labels: Iterable[str] = (),
    ) -> None:
        self.engine = engine
        self.exchange = Exchange(engine, node_id=node_id, additional_labels=additional_labels)
        self._cluster = service_metadata(service_host)
        md, node_id = self.exchange.metadata, self.exchange.node_id
        # (the alias came, Istio's header or id came) -> the reply, made once.
        # The answer is in the form the caller reads, which the request's keys tell apart:
        # - the alias alone: a meshstats client that has met a meshstats server on this
        #   channel (IstioClientInterceptor's lean requests), which reads only the alias;
        # - the alias and the id: a meshstats client still learning its servers, or behind
        #   its own sidecar; Istio's headers for that sidecar, and the alias;
        # - the id alone: an Istio caller (Envoy) whose x-envoy-peer-metadata gRPC core kept
        #   from us; Istio's headers, which Envoy reads;
        # - neither: nobody asked (Istio answers only when asked).
        answers: dict[tuple[bool, bool], Answer] = {
            (False, False): (),
            (True, False): ((MX_GRPC_ALIAS, md),),
            (True, True): ((MX_HEADER, md), (MX_GRPC_ALIAS, md), (MX_ID_HEADER, node_id)),
            (False, True): ((MX_HEADER, md), (MX_ID_HEADER, node_id)),
        }
        # Trailers that follow a message (a unary response's) are read by no Envoy: Istio's
        # filter reads response headers only, which a trailers-only response (a failure
        # before any message) is. So a caller that sent the alias, and reads it, gets the
        # alias alone there: a sidecar of its own could not read Istio's headers in them,
        # and each entry costs gRPC (more than this interceptor's own work on it).
        alias_only = answers[True, False]
        after = _Reply(alias_only, _metadata_size(alias_only))
        self._answers: dict[tuple[bool, bool], _Reply] = {
            (alias, asked): _Reply(
                answer,
                _metadata_size(answer),
                after if alias and answer != alias_only else None,
            )
            for (alias, asked), answer in answers.items()
        }
        self._peers: dict[tuple[Any, Any, str | None], PeerContext] = {}

    def _peer(self, key: tuple[Any, Any, str | None]) -> PeerContext:
        """A caller's context, kept by its exchange values and principal (see ``_keep``)."""
        metadata, metadata_id, principal = key
        peer = self.exchange.inbound(
            metadata, metadata_id, principal=principal, cluster_metadata=self._cluster
        )
        return _keep(self._peers, key, peer)

    def _stream(self) -> GrpcStream:
        """A streaming call's message counts, reported periodically (a unary-unary call has
        none: it ends as it starts)."""
        return self.engine.grpc_stream(None, reporter="inbound")


class IstioServerInterceptor(_ServerBase, grpc.ServerInterceptor):
    """Reports every call a sync ``grpc.server`` serves (``reporter="destination"``).

    Parameters
    ----------
    engine:
        The :class:`~meshstats.StatsEngine` of this (serving) workload.
    service_host:
        This service's host (``name.namespace.svc.cluster.local``) for
        ``destination_service``; without it, the canonical service (Istio's server side).
    node_id, additional_labels:
        What goes into this workload's exchange metadata.
    """

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        stream = None if handler.unary_unary is not None else self._stream()
        return _ServerCall(self, details, handler, stream).handler(handler)


class AioIstioServerInterceptor(_ServerBase, grpc.aio.ServerInterceptor):
    """The ``grpc.aio.server`` twin of :class:`IstioServerInterceptor` (same parameters)."""

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        stream = None if handler.unary_unary is not None else self._stream()
        return _ServerCall(self, details, handler, stream).handler(handler, aio=True)


# -- client side -------------------------------------------------------------------------------


class _ClientCall:
    """One call from the client: counts, sizes, the peer once the server's metadata came.

    A unary-unary call has no :class:`~meshstats.GrpcStream` (``stream`` is ``None``): its
    one request and its one response (if it succeeded) are recorded at its end, which comes
    once (gRPC's done callback), so it needs no lock either."""

    __slots__ = (
        "owner", "started", "method", "stream", "request_bytes", "response_bytes", "peer",
        "recorded", "lock",
    )  # fmt: skip

    def __init__(self, owner: _ClientBase, details: Any, stream: GrpcStream | None) -> None:
        self.started = _perf()
        self.owner = owner
        method = details.method
        self.method: str = method if type(method) is str else _method(details)
        self.stream = stream
        self.request_bytes = len(self.method) + 7
        self.response_bytes = 0
        self.peer: PeerContext | None = None
        self.recorded = False
        self.lock = threading.Lock() if stream is not None else None

    def metadata(self, details: Any) -> list[tuple[str, Any]]:
        """The call's metadata with this workload's exchange in place of the caller's."""
        out, size = self.owner._send  # one read: the pair changes together
        given = details.metadata
        if given:
            metadata = [m for m in given if m[0] not in _MX_KEYS]
            metadata += out
            self.request_bytes += _metadata_size(metadata)
        else:
            metadata = list(out)
            self.request_bytes += size
        return metadata

    def details(self, details: Any) -> Any:
        """The call's details with :meth:`metadata` in place of the caller's."""
        return _new(_Details, (
            details.method, details.timeout, self.metadata(details), details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        ))  # fmt: skip

    def sent(self, message: Any) -> Any:
        self.request_bytes += _message_size(message)
        if self.stream is not None:
            self.stream.add(request_messages=1)
        return message

    def received(self, message: Any) -> Any:
        self.response_bytes += _message_size(message)
        if self.stream is not None:
            self.stream.add(response_messages=1)
        return message

    def peer_metadata(self, *metadata: Any) -> bool:
        """The server's initial or trailing metadata arrived: the first with an exchange
        names the peer; says whether the peer is known. Without one, the peer stays unknown
        until the call ends (:meth:`finish`)."""
        if self.peer is not None:
            return True
        for md in metadata:
            if not md:
                continue
            alias, istio, found_id, size = _split(md)
            if alias is not None or istio is not None or found_id is not None:
                self.response_bytes += size
                owner = self.owner
                if alias is None:
                    owner._istio_answered()
                elif owner._send is not owner._lean:
                    owner._meshstats_answered()
                key = (alias if alias is not None else istio, found_id)
                self.peer = owner._peers.get(key) or owner._peer(key)
                if self.stream is not None:
                    self.stream.set_peer(self.peer)
                return True
        return False

    def finish(self, code: Any, details: str | None, responses: int = 0) -> None:
        """The call's end (``responses``: a unary-unary call's, 1 if it succeeded)."""
        lock = self.lock
        if lock is not None:
            with lock:
                if self.recorded:
                    return
                self.recorded = True
        owner = self.owner
        peer = self.peer
        if peer is None:
            # No answer (a server without the exchange, or a call that failed before one):
            # maybe an Envoy that a lean request did not ask; the next request asks in full.
            owner._send = owner._full
            peer = self.peer = owner._peers.get(_NO_PEER) or owner._peer(_NO_PEER)
        requests = 1
        stream = self.stream
        if stream is not None:
            stream.set_peer(peer)
            stream.close()  # the rest of its messages reported: none left to record
            requests = responses = 0
        response_code, flags = 200, None
        if code is _OK:
            status = 0
        else:
            status = _STATUS[code]
            if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (details or ""):
                response_code, flags = 503, "UF"  # never reached a server: Envoy's local reply
            elif code == _CANCELLED:
                flags = "DC"  # this side gave up on the call
        owner.engine.record_grpc_call(
            peer,
            request_messages=requests,
            response_messages=responses,
            grpc_status=status,
            duration_ms=(_perf() - self.started) * 1000.0,
            request_bytes=self.request_bytes,
            response_bytes=self.response_bytes,
            response_code=response_code,
            host=owner.host,
            response_flags=flags,
            path=self.method,
        )

    def done(self, future: Any) -> None:
        """A unary response's outcome (gRPC's done callback): the call is recorded."""
        failed: Any = None
        try:
            # The response, or the failure it raises: one question, not exception() then
            # result(). Asked before code(): a finished blocking call answers it without
            # taking the call's lock (code() takes it).
            response = future.result()
        except grpc.RpcError as err:
            failed = err  # a failed outcome raises the RpcError it holds: the call
        except grpc.FutureCancelledError:
            failed = future  # this side cancelled it: the call holds what came
        if failed is None:
            code = _OK
            source = future
        else:
            code = future.code()
            source = failed
        try:
            # A unary response's exchange: in the trailing metadata from a meshstats server,
            # in the initial from Envoy. The initial is read only when the trailing lacks it:
            # each read goes through the call's lock (several frames, ~2 us a call).
            if not self.peer_metadata(source.trailing_metadata()):
                self.peer_metadata(source.initial_metadata())
        except Exception:  # noqa: BLE001 - a call that failed before any metadata
            pass
        if failed is None:
            self.received(response)
            self.finish(code, None, 1)  # the details matter only for a failure
        else:
            self.finish(code, future.details())


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """The call's details with our metadata: a named tuple, as grpc's own, made per call
    with ``_new``."""


def _aio_details(details: Any, metadata: list[tuple[str, Any]]) -> Any:
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, grpc.aio.Metadata(*metadata),
        details.credentials, details.wait_for_ready,
    )  # fmt: skip


class _ClientBase:
    def __init__(
        self,
        engine: StatsEngine,
        *,
        host: str | None = None,
        service_host: str | None = None,
        node_id: str | None = None,
        additional_labels: Iterable[str] = (),
        istio_headers: str = "always",
    ) -> None:
        self.engine = engine
        self.host = host
        self.exchange = Exchange(engine, node_id=node_id, additional_labels=additional_labels)
        self._cluster = service_metadata(service_host)
        ex = self.exchange
        if istio_headers not in ("auto", "always"):
            raise ValueError(f"istio_headers must be 'auto' or 'always', got {istio_headers!r}")
        full: Answer = (
            (MX_HEADER, ex.metadata), (MX_GRPC_ALIAS, ex.metadata), (MX_ID_HEADER, ex.node_id),
        )  # fmt: skip
        lean: Answer = ((MX_GRPC_ALIAS, ex.metadata),)
        # What each request sends (the entries, their size), swapped whole as servers answer:
        # Istio's headers and the alias until a meshstats server answered, then the alias
        # alone (see the module's docstring). Each entry costs gRPC, outside any interceptor,
        # more than this interceptor's own work on it.
        self._full = (full, _metadata_size(full))
        self._lean = (lean, _metadata_size(lean)) if istio_headers == "auto" else self._full
        self._send = self._full
        self._istio_peer = False  # an Istio (Envoy) server answered on this channel
        self._peers: dict[tuple[Any, Any], PeerContext] = {}

    def _meshstats_answered(self) -> None:
        """A meshstats server answered: lean requests, unless an Istio peer has been seen."""
        self._send = self._lean
        if self._istio_peer:  # set meanwhile by another thread's call: Istio's wins
            self._send = self._full

    def _istio_answered(self) -> None:
        """An Istio server answered (Envoy's id without the alias): it reads Istio's
        headers, so every request sends them from now on, whatever else answers."""
        self._istio_peer = True
        self._send = self._full

    def _peer(self, key: tuple[Any, Any]) -> PeerContext:
        """A server's context, kept by its exchange values (see ``_keep``)."""
        metadata, metadata_id = key
        peer = self.exchange.outbound(metadata, metadata_id, cluster_metadata=self._cluster)
        return _keep(self._peers, key, peer)

    def _call(self, details: Any, unary: bool = False) -> _ClientCall:
        stream = None if unary else self.engine.grpc_stream(reporter="outbound", host=self.host)
        return _ClientCall(self, details, stream)


def _sent(call: _ClientCall, requests: Iterable[Any]) -> Iterator[Any]:
    for message in requests:
        yield call.sent(message)


class _Responses:
    """A streaming call's response iterator, counting messages; everything else is the call."""

    def __init__(self, rendezvous: Any, call: _ClientCall) -> None:
        self._rendezvous = rendezvous
        self._call = call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rendezvous, name)

    def __iter__(self) -> _Responses:
        return self

    def __next__(self) -> Any:
        call = self._call
        try:
            message = next(self._rendezvous)
        except StopIteration:
            rendezvous = self._rendezvous
            call.peer_metadata(rendezvous.initial_metadata(), rendezvous.trailing_metadata())
            call.finish(self._rendezvous.code(), self._rendezvous.details())
            raise
        except grpc.RpcError:
            rendezvous = self._rendezvous
            call.peer_metadata(rendezvous.initial_metadata(), rendezvous.trailing_metadata())
            call.finish(rendezvous.code(), rendezvous.details())
            raise
        if call.peer is None:
            call.peer_metadata(self._rendezvous.initial_metadata())
        return call.received(message)


class IstioClientInterceptor(
    _ClientBase,
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Reports every call made on an intercepted sync channel (``reporter="source"``).

    Parameters
    ----------
    engine:
        The :class:`~meshstats.StatsEngine` of this (calling) workload.
    host:
        The channel's authority (``reviews:9080``), reported as ``destination_service``
        (Istio's host-header fallback) unless ``service_host`` names the service.
    service_host:
        The destination service's host (``name.namespace.svc.cluster.local``).
    node_id, additional_labels:
        What goes into this workload's exchange metadata.
    istio_headers:
        ``"always"`` (the default): every request carries ``x-envoy-peer-metadata`` and
        ``-id`` (and the alias), as an Istio client's do; ``"auto"``: once a meshstats server
        has answered on this channel, and no Istio one has, requests carry only
        ``x-meshstats-peer-metadata`` (one metadata entry instead of three; only where no
        Envoy sits between meshstats ends: a meshstats server behind its own sidecar would
        label the caller unknown).
    """

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = _ClientCall(self, details, None)
        call.request_bytes += _message_size(request)
        outcome = continuation(call.details(details), request)
        outcome.add_done_callback(call.done)
        return outcome

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        call = self._call(details)
        outcome = continuation(call.details(details), _sent(call, requests))
        outcome.add_done_callback(call.done)
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        call = self._call(details)
        call.sent(request)
        return _Responses(continuation(call.details(details), request), call)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        call = self._call(details)
        return _Responses(continuation(call.details(details), _sent(call, requests)), call)


async def _aio_sent(call: _ClientCall, requests: Any) -> AsyncIterator[Any]:
    if hasattr(requests, "__aiter__"):
        async for message in requests:
            yield call.sent(message)
    else:
        for message in requests:
            yield call.sent(message)


class _AioClientBase(_ClientBase):
    async def intercept(
        self, continuation: Any, details: Any, request: Any, requests: bool, responses: bool
    ) -> Any:
        """A call of any kind (``requests``, ``responses``: which side streams): our
        metadata in the caller's place, every message counted, the call recorded at its
        end (a streaming response's, when its iterator ends)."""
        call = self._call(details, unary=not (requests or responses))
        if not requests:
            call.sent(request)
        elif request is not None:  # None: the caller writes with call.write(), uncounted
            request = _aio_sent(call, request)
        rpc = await continuation(_aio_details(details, call.metadata(details)), request)
        if responses:
            return self._streaming(call, rpc)
        return await self._unary(call, rpc)

    async def _unary(self, call: _ClientCall, rpc: Any) -> Any:
        try:
            response = await rpc
        except grpc.aio.AioRpcError as err:
            call.peer_metadata(err.trailing_metadata(), err.initial_metadata())
            call.finish(err.code(), err.details())
            return rpc
        except BaseException:
            call.finish(_CANCELLED, None)
            raise
        # the trailing metadata first, as the sync client (IstioClientInterceptor.done)
        if not call.peer_metadata(await rpc.trailing_metadata()):
            call.peer_metadata(await rpc.initial_metadata())
        call.received(response)
        call.finish(await rpc.code(), await rpc.details(), 1)
        return rpc

    async def _streaming(self, call: _ClientCall, rpc: Any) -> AsyncIterator[Any]:
        try:
            async for message in rpc:
                if call.peer is None:
                    call.peer_metadata(await rpc.initial_metadata())
                yield call.received(message)
        except grpc.aio.AioRpcError as err:
            call.peer_metadata(err.initial_metadata(), err.trailing_metadata())
            call.finish(err.code(), err.details())
            raise
        except BaseException:
            call.finish(_CANCELLED, None)
            raise
        call.peer_metadata(await rpc.initial_metadata(), await rpc.trailing_metadata())
        call.finish(await rpc.code(), await rpc.details())


class _AioKind:
    """One call kind's ``grpc.aio`` interceptor over the base all four share."""

    def __init__(self, base: _AioClientBase) -> None:
        self._base = base


class _AioUnaryUnary(_AioKind, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._base.intercept(continuation, details, request, False, False)


class _AioStreamUnary(_AioKind, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._base.intercept(continuation, details, requests, True, False)


class _AioUnaryStream(_AioKind, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._base.intercept(continuation, details, request, False, True)


class _AioStreamStream(_AioKind, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._base.intercept(continuation, details, requests, True, True)


def aio_client_interceptors(
    engine: StatsEngine,
    *,
    host: str | None = None,
    service_host: str | None = None,
    node_id: str | None = None,
    additional_labels: Iterable[str] = (),
    istio_headers: str = "always",
) -> list[Any]:
    """The ``grpc.aio`` twin of :class:`IstioClientInterceptor` (same parameters): four
    interceptors, one per call kind, for ``grpc.aio.insecure_channel(target,
    interceptors=aio_client_interceptors(engine, host=target))``.

    (``grpc.aio`` registers an interceptor object for one call kind only, the first its
    class derives from, so one object cannot cover all four.) A request stream written with
    ``call.write()`` instead of an iterator is not counted.
    """
    base = _AioClientBase(
        engine, host=host, service_host=service_host, node_id=node_id,
        additional_labels=additional_labels, istio_headers=istio_headers,
    )  # fmt: skip
    return [
        _AioUnaryUnary(base),
        _AioUnaryStream(base),
        _AioStreamUnary(base),
        _AioStreamStream(base),
    ]
