"""HTTP/1.1 through two sidecars (codec: :mod:`.h1`): Istio's header exchange and request metrics.

The client sidecar (outbound) sets ``x-envoy-peer-metadata`` (base64 of its node Struct,
computed once) and ``x-envoy-peer-metadata-id`` on every request, replacing whatever the
app sent, and strips both from responses, reading the server's as its peer. The server
sidecar (inbound) strips them from requests before the app sees them, reading the client's
as its peer, and answers with its own only when the request carried them: the metadata when
the request had metadata, the id when it had an id (reference/telemetry-v2.md §2.2).
meshstats also strips them from the app's responses on the server side (Istio leaves an
app's own headers alone): only a sidecar speaks for a workload.

Peer metadata from a header never sets a principal: principals come only from the verified
certificate of the TLS connection, so a plaintext client claiming to be someone (a spoofed
header) gets its metadata labels, at most, and ``unknown`` principals.

Each request is recorded once, when its response ended, with Envoy's downstream view:
``request_bytes`` = wire bytes of the request as received from downstream (request line,
headers, body framing), ``response_bytes`` = wire bytes of the response sent downstream,
duration from the request's headers to the response's end. A missing upstream gives a local
503 with ``UH``, a refused or timed-out connection ``UF``, an upstream closing before its
response headers ``UC``; an upstream breaking off its response body is recorded with ``UC``
and the downstream connection is closed (the response cannot be completed).

Catch-all outbound listeners (``mode``): a passthrough forwards to the configured original
destination or, without one, to the request's ``Host`` (port 80 by default), in plaintext
and without peer headers (Istio's ``skip_external_clusters``: node metadata is not handed to
destinations outside the mesh); the upstream connection follows the ``Host`` when it changes
on a keep-alive connection. A request without a usable ``Host`` gets 503 ``UH``. A blackhole
answers every request with Envoy's direct response for Istio's ``block_all`` route: 502, an
empty body, no response flag. A peer that sent no metadata is passed to the engine with its
address (``ip:port``), for the sidecar's workload registry.

Framing follows RFC 9112 strictly, as Envoy does: a request with both ``Content-Length``
and ``Transfer-Encoding``, more than one ``Content-Length`` (even equal ones), or
``Transfer-Encoding`` on HTTP/1.0 is answered 400, one with a transfer coding other than a
final ``chunked`` 501, and each is recorded as Envoy records it (that code, flag ``DPE``) and
the connection closed; so is a request that does not parse (431 for a head over 16 KiB).
Neither header is ever forwarded as received: each hop gets one framing header for the
framing the sidecar itself parsed (``transfer-encoding: chunked`` or one
``content-length``), so no app or client behind a sidecar can read a body differently from
how the sidecar framed it (request smuggling). A response with both headers is framed by
the chunked coding and forwarded without its ``Content-Length`` (§6.3).

Requests on one downstream connection are relayed one at a time over one upstream
connection, reused while both ends keep it alive; pipelined requests wait in the reader's buffer and
are answered in order. Hop-by-hop headers (``connection``, ``keep-alive``,
``proxy-connection``, ``upgrade``, ``te``) are not forwarded; the codec frames each hop itself
(``content-length`` or chunked).

Upgrades: a ``websocket`` upgrade (the one type Istio enables) is forwarded with its
``connection``/``upgrade`` headers; after the upstream's 101 the sidecar relays the 101 and
tunnels bytes both ways until either side closes or ``stream_idle_timeout`` passes without a
byte (``SI``), then records the request once (``101``, the tunnel's bytes and duration); the
upgraded connections never return to the pool. A non-101 answer is relayed as an ordinary
response and the connection closed (as Envoy closes it); another upgrade type is refused with
403; an ``h2c`` upgrade is served as a plain request (Envoy's HTTP/1 codec drops it).

``Expect: 100-continue``: with ``proxy_100_continue`` (Istio's default) the expectation goes
upstream and its 100 comes back; a final answer instead is relayed at once and the
connection closed. Without it (Envoy's default) the sidecar answers 100 and strips the
``Expect``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._peer_exchange import decode_peer_header
from ..certs import peer_principal
from ..errors import MeshstatsError
from ..peer_metadata import PeerMetadata
from . import h1
from .http_direct import DirectRelay, Handover
from .interrupt import Deadline, Interrupted, Interruptible
from .listener import Watched, open_watched, peer_address, write
from .pool import Pooled

if TYPE_CHECKING:
    from ..engine import PeerContext
    from .config import Address, OutboundConfig
    from .handler_api import SidecarView as Sidecar  # only what handlers may use

__all__ = [
    "LOCAL_REPLY_BODIES",
    "MX_HEADER",
    "MX_ID_HEADER",
    "HttpStream",
    "host_address",
    "inbound_http",
    "no_zero",
    "outbound_http",
    "peer_from_headers",
]

MX_HEADER = b"x-envoy-peer-metadata"
MX_ID_HEADER = b"x-envoy-peer-metadata-id"
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"upgrade", b"te"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_STRIP = _HOP_BY_HOP | _FRAMING | {MX_HEADER, MX_ID_HEADER}
# Upgrades relayed as a tunnel after the upstream's 101: Istio configures every HTTP
# connection manager with ``upgrade_configs: [{upgrade_type: websocket}]``. Another type is
# refused with 403, as Envoy refuses an upgrade its route does not allow; ``h2c`` is not an
# upgrade at all to Envoy's HTTP/1 codec, which drops its headers and serves the request.
UPGRADE_TYPES = frozenset({b"websocket"})
# A server's view of a client that asked to switch protocols, before the answer.
_MIGHT_SWITCH = h1.MIGHT_SWITCH_PROTOCOL
CHUNK = 1 << 16
# Most body events merged in one relay step. The codec spends a µs or so per event, so a
# read full of one-byte chunks (about 11,000 in 64 KiB) would hold the event loop for
# milliseconds; capped, a step is short and other connections get the loop between steps.
BODY_EVENTS_PER_STEP = 256

# Relay the plain requests of a keep-alive connection in the loop's callbacks (.http_direct);
# False leaves every request to the connection's task (the tests run both ways).
_DIRECT = True

# Envoy's local reply bodies.
LOCAL_REPLY_BODIES = {
    "UH": b"no healthy upstream",
    "UF": b"upstream connect error or disconnect/reset before headers. "
    b"reset reason: connection failure",
    "UC": b"upstream connect error or disconnect/reset before headers. "
    b"reset reason: connection termination",
    # An HTTP/2 upstream resetting its stream before the response headers (proxy/h2.py).
    "UR": b"upstream connect error or disconnect/reset before headers. reset reason: remote reset",
    "UT": b"upstream request timeout",
    "SI": b"stream timeout",
}

Headers = list[tuple[bytes, bytes]]

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    426: b"Upgrade Required",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",  # a transfer coding other than chunked (RFC 9112 §6.1, Envoy)
}


class DownstreamError(Exception):
    """The downstream broke off the exchange: went away (``0``/``DC``, nothing to answer) or
    sent something malformed (``400``/``DPE``); recorded against the downstream, never as an
    upstream failure."""

    def __init__(self, code: int, flag: str) -> None:
        super().__init__(flag)
        self.code = code
        self.flag = flag


def _downstream_error(stream: HttpStream, exc: BaseException) -> DownstreamError:
    """What a failure to read the downstream means: its end of the connection reset or
    closed is a disconnect; otherwise what it sent did not parse."""
    if isinstance(exc, OSError) or stream.conn.trailing_data[1]:
        return DownstreamError(0, "DC")
    return DownstreamError(400, "DPE")


class UpstreamError(Exception):
    """No response from upstream: a local reply with ``code`` and Envoy's ``flag`` for why."""

    def __init__(self, flag: str | None, code: int = 503) -> None:
        super().__init__(flag)
        self.flag = flag
        self.code = code


class HttpStream:
    """One HTTP/1.1 connection: an :mod:`.h1` codec over asyncio streams, counting bytes.

    ``consumed`` is the number of bytes the codec has parsed into events so far (bytes received
    but not yet parsed, e.g. a pipelined request, are not counted); ``sent`` the number
    written. Their differences across one request give its exact wire size.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        role: h1.Role,
        initial: bytes = b"",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        # A connection the sidecar accepted can be watched while the relay waits upstream.
        self.watched: Watched | None = getattr(writer, "watched", None)
        # Its protocol, when its bytes can be taken in the callbacks (http_direct).
        tap = writer.transport.get_protocol()
        self.tap: Watched | None = tap if isinstance(tap, Watched) else None
        self.conn = h1.Connection(role)
        # Bytes already read from the connection (the first ones, read to tell HTTP/1.1
        # from HTTP/2): parsed as if they had just arrived.
        self.fed = len(initial)
        if initial:
            self.conn.receive_data(initial)
        self.sent = 0
        # Events (or a ProtocolError) taken from the codec ahead of time, returned first:
        # by ready() and next_body_event, or pushed back by the callbacks (http_direct).
        self._held: list[Any] = []
        # Bytes sent with flush=False, written together by the next flush: a response's head
        # and body in one write (one TLS record, one system call) instead of two.
        self._pending: list[bytes] = []

    @property
    def consumed(self) -> int:
        return self.fed - self.conn.unparsed()

    def unread(self) -> bool:
        """Bytes arrived that this stream has not read from its reader yet (a connection
        the sidecar accepted; False for others)."""
        return self.watched is not None and self.watched.received > self.fed

    async def next_event(self, idle: float | None = None, deadline: Deadline | None = None) -> Any:
        """The next codec event, reading from the socket as needed (EOF included); a read
        that waits more than ``idle`` seconds raises ``asyncio.TimeoutError`` (timed by the
        relay's ``deadline`` when given).

        An event the codec already holds is returned without yielding to the loop: the request
        is recorded before anyone who saw its response end can scrape.
        """
        if self._held:
            return self._pop_held()
        while True:
            event = self.conn.next_event()
            if event is not h1.NEED_DATA:
                return event
            if idle is None:
                data = await self.reader.read(CHUNK)
            else:
                try:
                    with Interruptible(idle, deadline):
                        data = await self.reader.read(CHUNK)
                except Interrupted:
                    raise asyncio.TimeoutError from None
            self.fed += len(data)
            self.conn.receive_data(data)

    def _pop_held(self) -> Any:
        event = self._held.pop(0)
        if isinstance(event, h1.ProtocolError):
            raise event
        return event

    def push(self, *events: Any) -> None:
        """Put events taken from the codec back (a ``ProtocolError`` last, to be raised):
        the next reads return them first, in order."""
        self._held.extend(events)

    async def send(self, event: h1.Event, *, flush: bool = True) -> None:
        """Send ``event``; with ``flush=False`` its bytes wait for the next :meth:`flush`
        (or flushing send), which the relay does before it waits for anything."""
        self.queue(event)
        if flush and self._pending:
            await self.flush()

    def queue(self, event: h1.Event) -> None:
        """:meth:`send` with ``flush=False``, for a caller that is not a coroutine."""
        data = self.conn.send(event)
        if data:
            self._pending.append(data)

    def write_queued(self) -> bool:
        """Hand what was queued to the transport now; True when a :meth:`flush` must still
        wait for it (bytes buffered, or the connection closing: ``drain`` raises then)."""
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        transport = self.transport
        self.sent += len(data)  # (counted when dropped too)
        if transport.is_closing():
            return True  # (dropped, as listener.write drops it)
        transport.write(data)
        return bool(transport.get_write_buffer_size())

    @property
    def pending(self) -> bool:
        """Bytes sent with ``flush=False`` are waiting to be written."""
        return bool(self._pending)

    async def flush(self) -> None:
        """Write what was sent with ``flush=False`` (``OSError`` when the peer is gone)."""
        if self._pending and self.write_queued():
            # drain() raises for a lost connection and waits while the peer reads slowly
            # (the protocol is paused only with bytes in the buffer). With every byte handed
            # to the socket and the transport open it would only return: skipped.
            await self.writer.drain()

    def ready(self) -> bool:
        """The next event can be had without reading the socket (it is parsed and held);
        False as well when the bytes there do not parse: the error is held, and the next
        :meth:`next_body_event` raises it (its message and offset kept)."""
        if not self._held:
            try:
                event = self.conn.next_event()
            except h1.ProtocolError as exc:
                self._held.append(exc)
                return False
            if event is h1.NEED_DATA:
                return False
            self._held.append(event)
        return not isinstance(self._held[0], h1.ProtocolError)

    async def next_body_event(
        self, idle: float | None = None, deadline: Deadline | None = None
    ) -> Any:
        """:meth:`next_event` for a body: the Data events the codec already holds come merged
        into one (up to CHUNK bytes or BODY_EVENTS_PER_STEP events), so a body sent as many
        tiny chunks (1 MB as 174,762 of them) costs one relay step per few hundred chunks, not
        one per chunk, and no step holds the loop for long."""
        event = await self.next_event(idle, deadline)  # (a held one first)
        if not isinstance(event, h1.Data) or self._held:
            return event
        parts, size = [event.data], len(event.data)
        while size < CHUNK and len(parts) < BODY_EVENTS_PER_STEP:
            more = self.conn.next_event()
            if not isinstance(more, h1.Data):
                if more is not h1.NEED_DATA:
                    self._held.append(more)  # the end of the message: returned next
                break
            parts.append(more.data)
            size += len(more.data)
        return event if len(parts) == 1 else h1.Data(data=b"".join(parts))

    @property
    def holds_event(self) -> bool:
        """Whether the next body event is already parsed (the message end, usually)."""
        return bool(self._held)

    def reusable(self) -> bool:
        """Both sides finished a cycle and neither asked to close: start the next one."""
        if self.conn.our_state is h1.DONE and self.conn.their_state is h1.DONE:
            self.conn.start_next_cycle()
            # A body event parsed ahead (ready(), next_body_event) of a message that ended
            # another way (its relay failed, its rest was drained) is not the next one's.
            self._held.clear()
            return True
        return False

    def usable(self) -> bool:
        """Open both ways as far as this end knows: no FIN or loss read, not closing (what
        the pool asks of an idle connection)."""
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


@dataclass
class _Exchange:
    """Per-request state: where it started (loop time, downstream byte counts), the peer
    headers seen, the outcome."""

    started: float = 0.0
    request_start: int = 0
    response_start: int = 0
    metadata: bytes | None = None
    metadata_id: bytes | None = None
    code: int = 0
    flags: str | None = None
    upgrade: bytes | None = None  # the Upgrade token of a request relayed as an upgrade
    tunnel_received: int = 0  # bytes relayed through the tunnel after a 101, from downstream
    tunnel_sent: int = 0  # ... and to downstream


def no_zero(timeout: float) -> float | None:
    """A configured timeout for asyncio: 0 means none."""
    return timeout if timeout > 0 else None


def _split(headers: Any) -> tuple[Headers, bytes | None, bytes | None]:
    """Headers to forward, plus the two peer values: without hop-by-hop and peer-exchange
    headers, and with the framing headers replaced by the one the codec framed the body by."""
    kept: Headers = []
    metadata = metadata_id = length = None
    chunked = False
    for (raw_name, value), (name, _) in zip(headers.raw_items(), headers.lowered()):
        if name == MX_HEADER:
            metadata = value
        elif name == MX_ID_HEADER:
            metadata_id = value
        elif name == b"transfer-encoding":
            chunked = True  # the codec accepts only (a final) chunked, and frames by it
        elif name == b"content-length":
            length = value  # the codec merged equal repeats and refused differing ones
        elif name not in _STRIP:
            kept.append((raw_name, value))
    if chunked:
        kept.append((b"transfer-encoding", b"chunked"))
    elif length is not None:
        kept.append((b"content-length", length))
    return kept, metadata, metadata_id


def framing_problem(request: h1.Request) -> str | None:
    r"""Why a request's framing is ambiguous (RFC 9112 §6.1, §6.3), or None.

    >>> conn = h1.Connection(h1.SERVER)
    >>> conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
    ...                   b"Transfer-Encoding: chunked\r\n\r\n")
    >>> framing_problem(conn.next_event())
    'both Content-Length and Transfer-Encoding'
    >>> conn = h1.Connection(h1.SERVER)
    >>> conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n")
    >>> framing_problem(conn.next_event())
    'more than one Content-Length'
    """
    lengths = request.content_lengths  # as received: the codec has merged equal ones
    coded = request.headers.get(b"transfer-encoding") is not None
    if lengths and coded:
        return "both Content-Length and Transfer-Encoding"
    if lengths > 1:
        return "more than one Content-Length"
    if coded and request.http_version == b"1.0":
        return "Transfer-Encoding on HTTP/1.0"
    return None


def peer_from_headers(metadata: bytes | None, metadata_id: bytes | None) -> PeerMetadata | None:
    """The peer a metadata header names; ``None`` when absent or undecodable."""
    if metadata is None:
        return None
    try:
        struct = decode_peer_header(metadata)
        node_id = metadata_id.decode("latin-1") if metadata_id is not None else None
        return PeerMetadata.from_struct(struct, node_id)
    except MeshstatsError:
        return None


def _has_body(request: h1.Request) -> bool:
    """Whether the request's framing announces a body (a chunked one may still be empty)."""
    length = _header(request.headers, b"content-length")
    chunked = _header(request.headers, b"transfer-encoding") is not None
    return chunked or (length is not None and length.strip() != "0")


def _header(headers: h1.Headers, name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


def upgrade_of(headers: Any) -> bytes | None:
    """The ``Upgrade`` value when a message asks to switch protocols, else None.

    As Envoy's ``Utility::isUpgrade``: both an ``Upgrade`` header and ``upgrade`` among the
    ``Connection`` tokens. An ``Upgrade`` header alone is a hop-by-hop header to drop.

    >>> upgrade_of([(b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"websocket")])
    b'websocket'
    >>> upgrade_of([(b"upgrade", b"websocket")]) is None
    True
    """
    value = None
    tokens: set[bytes] = set()
    for name, field in headers:
        if name == b"upgrade":
            value = field.strip()
        elif name == b"connection":
            tokens.update(t.strip().lower() for t in field.split(b","))
    return value if value and b"upgrade" in tokens else None


def upgrade_of_response(response: h1.InformationalResponse) -> bytes:
    """The protocol a 101 switches to (its ``Upgrade`` header; empty if it named none)."""
    for name, value in response.headers:
        if name == b"upgrade":
            return bytes(value)
    return b""


def _informational(headers: Any) -> Headers:
    """A 1xx's headers to forward: no hop-by-hop, framing or peer headers (a 1xx has no
    body, and Envoy refuses a ``Transfer-Encoding`` on one)."""
    return [(name, value) for name, value in headers.raw_items() if name.lower() not in _STRIP]


class _Proxy:
    """The request loop shared by both directions; subclasses say how headers change."""

    def __init__(self, sidecar: Sidecar, down: HttpStream) -> None:
        self.sidecar = sidecar
        self.down = down
        # Looked up once: on 3.11 each get_running_loop() is a getpid() system call too.
        self.loop = asyncio.get_running_loop()
        # Every timed wait of this connection's relay, on one timer (closed by serve()).
        self.deadline = Deadline(self.loop)
        self.up: HttpStream | None = None
        self.principal: str | None = None  # the upstream's (outbound) / downstream's (inbound)
        self.address: str | None = None  # the same peer's ip:port, for the workload registry
        self.up_target: object = None  # what self.up is connected to (see upstream_for)
        # self.up came from the sidecar's pool of idle connections, or served a request of
        # this connection's already: a peer may have closed it meanwhile (a retry is safe)
        self.up_reused = False
        # A keep-alive connection sees the same peer headers on every request: resolve once.
        self._peer_key: tuple[object, ...] | None = None
        self._peer_ctx: PeerContext | None = None

    # -- hooks -------------------------------------------------------------------------------

    async def connect(self, request: h1.Request, *, fresh: bool = False) -> HttpStream:
        """A connection to the request's upstream: an idle one from the pool unless
        ``fresh`` (sets :attr:`up_reused`, and the peer's principal and address)."""
        raise NotImplementedError

    def pool_key(self) -> Hashable:
        """What the current upstream connection can serve again (the pool's key)."""
        raise NotImplementedError

    def _pooled(self, key: Hashable) -> HttpStream | None:
        pooled = None if key is None else self.sidecar.upstream_pool.take(key)
        self.up_reused = pooled is not None
        if pooled is None:
            return None
        self.principal, self.address = pooled.principal, pooled.address
        stream: HttpStream = pooled.stream
        return stream

    def upstream_for(self, request: h1.Request) -> object:
        """Where this request goes; a change closes the upstream connection and reconnects."""
        return None

    def request_headers(self, kept: Headers, ex: _Exchange) -> Headers:
        raise NotImplementedError

    def response_headers(self, kept: Headers, ex: _Exchange, upstream: Any) -> Headers:
        raise NotImplementedError

    def peer(self, ex: _Exchange) -> PeerContext:
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Relay requests until the connection is done. Between requests, while both
        connections are open and idle, the loop's callbacks relay the common ones
        (:mod:`.http_direct`); this task takes over for anything else, where they left off."""
        direct: DirectRelay | None = None
        try:
            going = True
            while going:
                if not (_DIRECT and self._can_go_direct()):
                    going = await self.one_request()
                    continue
                if direct is None:
                    direct = DirectRelay(self)
                handover = await direct.run()
                if handover.kind == "request":  # its event, if parsed, pushed back
                    going = await self.one_request(handover.ex)
                elif handover.kind == "response":  # the request went upstream
                    request, headers, ex = handover.request, handover.headers, handover.ex
                    assert request is not None and headers is not None and ex is not None
                    going = await self._relay(request, headers, ex, handover)
                elif handover.kind == "flush":  # the response is written, not yet sent
                    assert handover.request is not None and handover.ex is not None
                    going = await self._after_write(handover.request, handover.ex)
                else:
                    going = False  # "closed"
        finally:
            self.deadline.close()
            up, self.up = self.up, None
            if up is not None:
                if up.conn.our_state is h1.IDLE and up.conn.their_state is h1.IDLE:
                    # Between requests: the next downstream connection can use it.
                    pooled = Pooled(up, self.principal, self.address)
                    self.sidecar.upstream_pool.give(self.pool_key(), pooled)
                else:
                    up.close()

    def _can_go_direct(self) -> bool:
        """Both connections are between messages, open, and have nothing unread: what
        arrives next can be taken in the callbacks."""
        down, up = self.down, self.up
        return (
            up is not None
            and down.tap is not None
            and up.tap is not None
            and not down.holds_event
            and not up.holds_event
            and down.tap.received == down.fed
            and up.tap.received == up.fed
            and down.conn.their_state is h1.IDLE
            and up.conn.their_state is h1.IDLE
            and not down.tap.ended
            and not up.tap.ended
            and not down.transport.is_closing()
            and not up.transport.is_closing()
        )

    def exchange(self) -> _Exchange:
        """The state of the next request, from the downstream's counts so far."""
        return _Exchange(self.loop.time(), self.down.consumed, self.down.sent)

    async def one_request(self, ex: _Exchange | None = None) -> bool:
        """Relay one request and its response; False when the connection is done. ``ex``:
        the request's state, when the callbacks began it (its event pushed back)."""
        down = self.down
        loop = self.loop
        if ex is None:
            ex = self.exchange()
        try:
            # A connection waiting for its next request (or a head trickling in) is closed
            # after idle_timeout, as Envoy's connection idle timeout does; nothing to record.
            event = await down.next_event(no_zero(self.config.idle_timeout), self.deadline)
        except asyncio.TimeoutError:  # TimeoutError from 3.11, its own class in 3.10
            return False
        except (h1.RemoteProtocolError, OSError) as exc:
            # A head that does not parse is recorded as Envoy records it; a client gone
            # before its head was complete made no request (Envoy records none either).
            if _downstream_error(down, exc).flag == "DPE":
                # The codec's hint, as Envoy answers: 431 for a head over 16 KiB, 501 for a transfer
                # coding other than chunked, else 400.
                await self._reject(None, ex, getattr(exc, "error_status_hint", 400))
            return False
        if not isinstance(event, h1.Request):
            return False  # ConnectionClosed
        ex.started = loop.time()
        kept, ex.metadata, ex.metadata_id = _split(event.headers)
        if event.http_version == b"1.0" and not self.sidecar.config.accept_http_10:
            # Envoy's default (Istio: ISTIO_META_HTTP10 off): HTTP/1.0 is not served.
            await self._reject(event, ex, 426)
            return False
        if framing_problem(event) is not None:
            # Ambiguous framing: two parsers could read two different requests here.
            await self._reject(event, ex)
            return False
        # Envoy takes CONNECT for an upgrade of its own type, which Istio's sidecar
        # listeners do not enable: refused below as any other type.
        upgrade = None
        if event.method == b"CONNECT":
            upgrade = b"CONNECT"
        elif event.headers.get(b"upgrade") is not None:
            upgrade = upgrade_of(event.headers)
        if upgrade is not None and upgrade.lower() == b"h2c":
            # Envoy's HTTP/1 codec serves an h2c upgrade request as an ordinary request.
            kept = [(name, value) for name, value in kept if name.lower() != b"http2-settings"]
        elif upgrade is not None and upgrade.lower() not in UPGRADE_TYPES:
            # Not an allowed upgrade: 403, no flag, and the connection closed (what follows
            # the request might be the other protocol's bytes), as Envoy answers.
            try:
                await self._local_reply(403, None, ex)
            except OSError:
                pass  # gone: recorded all the same
            self._record(event, ex)
            return False
        elif upgrade is not None:
            ex.upgrade = upgrade
            kept += [(b"connection", b"upgrade"), (b"upgrade", upgrade)]
        if not self.config.proxy_100_continue:
            # Envoy's own default: the sidecar answers 100 itself and the upstream never
            # hears of the expectation.
            kept = [(name, value) for name, value in kept if name.lower() != b"expect"]
        headers = self.request_headers(kept, ex)
        return await self._relay(event, headers, ex)

    async def _relay(
        self,
        event: h1.Request,
        headers: Headers,
        ex: _Exchange,
        resumed: Handover | None = None,
    ) -> bool:
        """:meth:`_exchange` and what follows it: the request recorded, once."""
        try:
            await self._exchange(event, headers, ex, resumed)
        except DownstreamError as broke:
            # Envoy resets the upstream stream: the app must not act on half a request.
            if self.up is not None:
                self.up.close()
                self.up = None
            if broke.code:
                await self._reject(event, ex, broke.code, broke.flag)
            else:
                ex.code, ex.flags = broke.code, broke.flag
                self._record(event, ex)
            return False
        except (h1.ProtocolError, OSError):
            # The response had begun: nothing sane can follow on this connection.
            self._record(event, ex)
            return False
        return self.finish(event, ex)

    def finish(self, request: h1.Request, ex: _Exchange) -> bool:
        """Record a request whose response was relayed whole; False when the downstream
        connection is done. The upstream one is let go unless it can serve again."""
        self._record(request, ex)
        if self.up is not None:
            if self.up.reusable():
                self.up_reused = True  # (kept: it may be closed before the next request)
            else:
                self.up.close()
                self.up = None
        return self.down.reusable()

    async def _after_write(self, request: h1.Request, ex: _Exchange) -> bool:
        """A response the callbacks wrote whole, still in the transport's buffer: wait for
        it as a flush would (a client gone: ``DC``), then as :meth:`finish`."""
        try:
            await self.down.writer.drain()
        except OSError:
            ex.flags = "DC"
            self._record(request, ex)
            return False
        return self.finish(request, ex)

    async def _exchange(
        self,
        request: h1.Request,
        headers: Headers,
        ex: _Exchange,
        resumed: Handover | None = None,
    ) -> None:
        """Connect, send the request, relay the response; ``resumed``: the request was
        sent already (by the callbacks), so start at waiting for the response."""
        down = self.down
        try:
            if resumed is None:
                target = self.upstream_for(request)
                if self.up is not None and (target != self.up_target or not self.up.usable()):
                    # (Not usable: the app closed it between requests, its keep-alive
                    # timeout; Envoy's pool drops such a connection too.)
                    self.up.close()
                    self.up = None
                if self.up is None:
                    self.up = await self.connect(request)
                    self.up_target = target
            else:
                target = self.up_target
                if resumed.failure is not None:
                    raise resumed.failure  # (a timeout)
            up = self.up
            assert up is not None
            fed = up.fed if resumed is None else resumed.fed
            try:
                if resumed is None:
                    response = await self._send(request, headers, up)
                else:  # (a response the callbacks had begun to read is pushed back)
                    response = await self._response(up)
            except (OSError, h1.ProtocolError) as exc:
                if not (self.up_reused and up.fed == fed and not _has_body(request)):
                    raise UpstreamError("UC") from exc
                # A pooled connection the peer closed as we took it (its idle timeout):
                # nothing was received and there is no body to replay, so the request
                # goes once more on a new connection, as HTTP clients do for keep-alive.
                up.close()
                self.up = None
                self.up = up = await self.connect(request, fresh=True)
                self.up_target = target
                try:
                    await up.send(
                        h1.Request(method=request.method, target=request.target, headers=headers)
                    )
                    await up.send(h1.EndOfMessage())
                    response = await self._response(up)
                except (OSError, h1.ProtocolError) as again:
                    raise UpstreamError("UC") from again
            if not isinstance(response, (h1.Response, h1.InformationalResponse)):
                raise UpstreamError("UC")
        except UpstreamError as failed:
            if self.up is not None:
                self.up.close()
                self.up = None
            if not down.conn.they_are_waiting_for_100_continue:
                await self._drain_request(down)  # (else there is no body coming: closed)
            await self._local_reply(failed.code, failed.flag, ex)
            return
        if isinstance(response, h1.InformationalResponse):  # 101: the upgrade was accepted
            await self._switch(response, ex)
            return
        # Written with the body's first bytes (see _body), or before _body waits for them.
        await down.send(self.response_head(response, ex), flush=False)
        await self._body(up, down, ex=ex)

    def response_head(self, response: h1.Response, ex: _Exchange) -> h1.Response:
        """The head to send downstream for the upstream's ``response`` (its status noted)."""
        kept, _, _ = _split(response.headers)
        ex.code = response.status_code
        out = self._closing(self.response_headers(kept, ex, response), ex)
        return h1.Response(status_code=response.status_code, headers=out, reason=response.reason)

    def direct_headers(self, request: h1.Request, ex: _Exchange) -> Headers | None:
        """The headers to send upstream for ``request`` when the callbacks can relay it as
        it is, on the upstream connection open now; None for anything that needs more
        than that (HTTP/1.0, an upgrade or CONNECT, an expectation, ambiguous framing, a
        new upstream), which :meth:`one_request` then takes from the start."""
        headers = request.headers
        if (
            request.http_version != b"1.1"
            or request.method == b"CONNECT"
            or headers.get(b"upgrade") is not None
            or headers.get(b"expect") is not None
            or framing_problem(request) is not None
            or self.upstream_for(request) != self.up_target
        ):
            return None
        # (ex.started: when the callbacks began it, as the head was parsed)
        kept, ex.metadata, ex.metadata_id = _split(headers)
        return self.request_headers(kept, ex)

    def response_timeout(self) -> float | None:
        """How long to wait for a response head (None: no limit): the shorter of
        ``request_timeout`` and ``stream_idle_timeout``."""
        cfg = self.config
        waits = [cfg.stream_idle_timeout] if cfg.stream_idle_timeout > 0 else []
        if cfg.request_timeout > 0:
            waits.append(cfg.request_timeout)
        return min(waits) if waits else None

    def timed_out(self) -> UpstreamError:
        """What a response wait of :meth:`response_timeout` ends with when it runs out:
        ``504``/``UT`` when it is ``request_timeout``'s, else ``408``/``SI``. (Decided by the
        configuration, not by comparing the loop's clock with a deadline when the timer
        fires, which is not exact: uvloop rounds timers to milliseconds.)"""
        cfg = self.config
        if cfg.request_timeout > 0 and self.response_timeout() == cfg.request_timeout:
            return UpstreamError("UT", 504)
        return UpstreamError("SI", 408)

    async def _send(self, request: h1.Request, headers: Headers, up: HttpStream) -> Any:
        """Send the request (its body too, and a 100's turn) and wait for the response."""
        down = self.down
        await up.send(
            h1.Request(method=request.method, target=request.target, headers=headers),
            flush=False,
        )
        response = None
        if down.conn.they_are_waiting_for_100_continue:
            # The client holds its body back until told to go on: by the upstream's
            # 100, forwarded (Istio's default), or by the sidecar itself (Envoy's).
            if not self.config.proxy_100_continue:
                await self._continue([])
            else:
                first = await self._response(up, until_continue=True)
                if isinstance(first, h1.InformationalResponse):
                    await self._continue(_informational(first.headers))
                else:
                    # None: the client went ahead with its body. A final answer
                    # before the body: the body is never read, and the connection
                    # closes after the response (as Envoy closes it).
                    response = first
        if response is None:
            await self._body(down, up, downstream=down)
            response = await self._response(up)
        return response

    @property
    def config(self) -> Any:
        return self.sidecar.config

    def _closing(self, headers: Headers, ex: _Exchange) -> Headers:
        """``headers`` with ``connection: close`` when the request is not complete (an
        answer before its body, or to an upgrade that did not happen): what follows on the
        connection cannot be read as a next request, so it closes, as Envoy closes it.
        (An ``Upgrade`` header the sidecar did not relay, ``h2c``, is only declined.)"""
        state = self.down.conn.their_state
        if state is _MIGHT_SWITCH and ex.upgrade is None:
            return headers
        if state not in (h1.DONE, h1.MUST_CLOSE):
            headers.append((b"connection", b"close"))
        return headers

    async def _switch(self, response: h1.InformationalResponse, ex: _Exchange) -> None:
        """Relay the upstream's 101 (its peer headers exchanged as on any response), then
        tunnel bytes both ways until either side closes. The request is recorded once, by
        the caller, after the tunnel: ``101``, its duration the tunnel's."""
        up = self.up
        assert up is not None and ex.upgrade is not None
        self.up = None  # it speaks another protocol now: never pooled, closed by the tunnel
        kept = _informational(response.headers)
        out = self.response_headers(kept, ex, response)
        protocol = upgrade_of_response(response) or ex.upgrade
        out += [(b"connection", b"upgrade"), (b"upgrade", protocol)]
        ex.code = 101
        try:
            await self.down.send(
                h1.InformationalResponse(status_code=101, headers=out, reason=response.reason)
            )
        except BaseException as exc:
            up.close()
            if not isinstance(exc, OSError):
                raise
            ex.flags = "DC"  # the client went away before its 101
            return
        await self._tunnel(up, ex)

    async def _tunnel(self, up: HttpStream, ex: _Exchange) -> None:
        """Bytes both ways, untouched, from the ones each side sent after the handshake,
        until either side closes or resets (then both are closed: an HTTP/1 connection
        manager does not half-close) or no byte moved either way for
        ``stream_idle_timeout`` (``SI``, as Envoy's stream idle timer, which covers
        upgraded streams). Each direction holds at most one read (CHUNK) at a time."""
        down = self.down
        loop = self.loop
        idle = no_zero(self.config.stream_idle_timeout)
        last = loop.time()

        async def pump(src: HttpStream, dst: HttpStream, upward: bool) -> None:
            nonlocal last
            data = src.conn.trailing_data[0]  # what arrived after the handshake
            if not data:
                data = await src.reader.read(CHUNK)
            while data:
                last = loop.time()
                write(dst.writer, data)
                if upward:
                    ex.tunnel_received += len(data)
                else:
                    ex.tunnel_sent += len(data)
                await dst.writer.drain()
                data = await src.reader.read(CHUNK)

        tasks = {
            asyncio.ensure_future(pump(down, up, True)),
            asyncio.ensure_future(pump(up, down, False)),
        }
        try:
            while True:
                wait = None if idle is None else max(0.0, last + idle - loop.time())
                done, _ = await asyncio.wait(
                    tasks, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    return  # a side closed, reset, or could not be written to
                if idle is not None and loop.time() - last >= idle:
                    ex.flags = "SI"
                    return
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            up.close()

    async def _continue(self, headers: Headers) -> None:
        """Tell a client waiting to send its body to go on (a client gone is its own fault,
        not the upstream's)."""
        try:
            await self.down.send(h1.InformationalResponse(status_code=100, headers=headers))
        except OSError:
            raise DownstreamError(0, "DC") from None

    async def _response(self, up: HttpStream, *, until_continue: bool = False) -> Any:
        """The upstream's response head (for an accepted upgrade, an InformationalResponse
        is returned; the upstream's codec has switched protocols) and, ``until_continue``, a
        100: then it is returned too, or None as soon as the downstream sends body bytes
        without waiting for it.

        Meanwhile the downstream is watched: a client that goes away (FIN or reset) resets
        the upstream stream (``0``/``DC``), as Envoy does. ``request_timeout`` gives
        ``504``/``UT``, ``stream_idle_timeout`` ``408``/``SI``. Bytes the client sends
        meanwhile (a pipelined request) wait in its reader, which stops reading the socket
        when full.
        """
        await up.flush()  # the request's head, when it went out without a body
        watched = self.down.watched
        assert watched is not None  # a downstream: accepted by the sidecar's listener
        if watched.ended:
            raise DownstreamError(0, "DC")
        if until_continue and self.down.unread():
            return None  # the client sent its body without waiting
        timeout = self.response_timeout()
        try:
            with Interruptible(timeout, self.deadline) as wait:

                def downstream(what: str) -> None:
                    if until_continue or what != "data":
                        wait.fire(what)

                watched.watcher = downstream
                while True:
                    response = await up.next_event()
                    if not isinstance(response, h1.InformationalResponse):
                        return response
                    if response.status_code == 101 and up.conn.their_state is h1.SWITCHED_PROTOCOL:
                        return response
                    if until_continue and response.status_code == 100:
                        return response
                    # any other 1xx is not forwarded
        except Interrupted as why:
            if why.reason == "data":
                return None  # (until_continue) the client sent its body without waiting
            if why.reason != "timeout":
                raise DownstreamError(0, "DC") from None
            raise self.timed_out() from None
        finally:
            watched.watcher = None

    async def _body(
        self,
        src: HttpStream,
        dst: HttpStream,
        *,
        downstream: HttpStream | None = None,
        ex: _Exchange | None = None,
    ) -> None:
        """Relay Data events up to and including EndOfMessage (trailers kept).

        A request body (``downstream`` is ``src``): failing to read it is the downstream's
        (:class:`DownstreamError`), failing to write it the upstream's. A response body
        (``ex`` given): failing to read it is the upstream's (``UC``), failing to write it
        means the client went away (``DC``).
        """
        idle = no_zero(self.config.stream_idle_timeout)
        while True:
            if dst.pending and not src.ready():
                # Nothing more to relay without waiting: what was sent goes out first.
                try:
                    await dst.flush()
                except OSError:
                    if ex is not None:
                        ex.flags = "DC"
                    raise
            try:
                event = await src.next_body_event(idle, self.deadline)
                if isinstance(event, h1.Data) and not src.holds_event:
                    # More body to read: let other connections run between blocks, so a
                    # fast sender of a huge body cannot hold the loop. (Not after the last
                    # block: the request is recorded before anyone can scrape.)
                    await asyncio.sleep(0)
            except asyncio.TimeoutError:
                if downstream is not None:  # a stalled request body: 408, as Envoy
                    raise DownstreamError(408, "SI") from None
                if ex is not None:
                    ex.flags = "SI"  # the response had begun: the stream is cut
                raise OSError("stream idle timeout") from None
            except (OSError, h1.ProtocolError) as exc:
                if downstream is not None:
                    raise _downstream_error(downstream, exc) from None
                if ex is not None:
                    ex.flags = "UC"  # Envoy: upstream connection termination, after headers
                raise
            try:
                if isinstance(event, h1.Data):
                    await dst.send(event, flush=False)
                elif isinstance(event, h1.EndOfMessage):
                    await dst.send(event)  # with its trailers
                    return
                else:
                    raise h1.RemoteProtocolError(f"unexpected {type(event).__name__} in a body")
            except OSError:
                if ex is not None:
                    ex.flags = "DC"
                raise

    async def _drain_request(self, down: HttpStream) -> None:
        """Read what is left of the request body, so that the connection can go on."""
        while down.conn.their_state is h1.SEND_BODY:
            try:
                await down.next_event()
            except (OSError, h1.ProtocolError) as exc:
                raise _downstream_error(down, exc) from None

    async def _local_reply(self, code: int, flag: str | None, ex: _Exchange) -> None:
        ex.code, ex.flags = code, flag
        body = LOCAL_REPLY_BODIES.get(flag or "", b"")
        headers: Headers = [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
        ]
        headers = self._closing(self.response_headers(headers, ex, None), ex)
        await self.down.send(h1.Response(status_code=code, headers=headers), flush=False)
        await self.down.send(h1.Data(data=body), flush=False)
        await self.down.send(h1.EndOfMessage())

    async def _reject(
        self,
        request: h1.Request | None,
        ex: _Exchange,
        code: int = 400,
        flag: str = "DPE",
    ) -> None:
        """A request the sidecar refuses itself: ``code`` (400, 426 for HTTP/1.0, 431, 501;
        408 for a stalled request body), closed, recorded as Envoy records it (``flag``:
        ``DPE`` for a downstream protocol error, ``SI`` for a stream idle timeout).
        ``request`` is None when it did not even parse."""
        ex.code, ex.flags = code, flag
        if self.down.conn.our_state in (h1.IDLE, h1.SEND_RESPONSE):
            reason = _REASONS.get(code, b"Bad Request")
            try:  # written raw: after a parse error the codec may refuse to send for us
                data = b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (
                    code,
                    reason,
                    len(reason),
                    reason,
                )
                write(self.down.writer, data)
                self.down.sent += len(data)
                await self.down.writer.drain()
            except OSError:
                pass
        self._record(request, ex)

    def _record(self, request: h1.Request | None, ex: _Exchange) -> None:
        down = self.down
        elapsed = (self.loop.time() - ex.started) * 1000.0
        key = (ex.metadata, ex.metadata_id, self.principal, self.address)
        if key != self._peer_key or self._peer_ctx is None:
            self._peer_key, self._peer_ctx = key, self.peer(ex)
        headers = request.headers if request is not None else h1.Headers([])
        self.sidecar.engine.record_request(
            self._peer_ctx,
            response_code=ex.code,
            duration_ms=elapsed,
            # A request that did not parse counts what arrived of it.
            request_bytes=(down.consumed if request is not None else down.fed)
            - ex.request_start
            + ex.tunnel_received,
            response_bytes=down.sent - ex.response_start + ex.tunnel_sent,
            host=_header(headers, b"host"),
            response_flags=ex.flags,
            method=request.method.decode("latin-1") if request is not None else None,
            path=request.target.decode("latin-1") if request is not None else None,
            content_type=_header(headers, b"content-type"),
        )


class _Outbound(_Proxy):
    def __init__(self, sidecar: Sidecar, down: HttpStream, cfg: OutboundConfig) -> None:
        super().__init__(sidecar, down)
        self.cfg = cfg

    def upstream_for(self, request: h1.Request) -> Address | None:
        cfg = self.cfg
        if cfg.mode == "passthrough" and cfg.upstream is None:
            return host_address(_header(request.headers, b"host"))
        return cfg.upstream

    def pool_key(self) -> Hashable:
        return ("outbound", self.up_target, self.cfg.mode == "service")

    async def connect(self, request: h1.Request, *, fresh: bool = False) -> HttpStream:
        cfg = self.cfg
        self.principal = self.address = None
        if cfg.mode == "blackhole":
            raise UpstreamError(None, 502)
        target = self.upstream_for(request)
        if target is None:
            raise UpstreamError("UH")
        pooled = None if fresh else self._pooled(("outbound", target, cfg.mode == "service"))
        if pooled is not None:
            return pooled
        self.up_reused = False
        try:
            reader, writer, self.principal, _ = await self.sidecar.connect(
                target, "http", mesh=cfg.mode == "service"
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise UpstreamError("UF") from exc
        self.address = peer_address(writer)
        return HttpStream(reader, writer, h1.CLIENT)

    def request_headers(self, kept: Headers, ex: _Exchange) -> Headers:
        # Whatever the app claimed is dropped; the sidecar speaks for it. The peer is the
        # server sidecar, known from its response headers only.
        ex.metadata = ex.metadata_id = None
        if self.cfg.mode != "service":
            return kept  # outside the mesh: our metadata is nobody else's business
        return kept + self.sidecar.mx_headers

    def response_headers(self, kept: Headers, ex: _Exchange, upstream: Any) -> Headers:
        if upstream is not None:  # what the server sidecar said about itself
            _, ex.metadata, ex.metadata_id = _split(upstream.headers)
        else:
            ex.metadata = ex.metadata_id = None
        return kept

    def peer(self, ex: _Exchange) -> PeerContext:
        return self.sidecar.outbound_peer(
            self.cfg,
            peer_from_headers(ex.metadata, ex.metadata_id),
            self.principal,
            cache_key=(ex.metadata, ex.metadata_id),
            address=self.address,
        )


class _Inbound(_Proxy):
    def __init__(self, sidecar: Sidecar, down: HttpStream) -> None:
        super().__init__(sidecar, down)
        self.principal = peer_principal(down.writer.get_extra_info("ssl_object"))
        self.address = peer_address(down.writer)

    def pool_key(self) -> Hashable:
        inbound = self.sidecar.config.inbound
        return ("inbound", inbound.app if inbound is not None else None)

    async def connect(self, request: h1.Request, *, fresh: bool = False) -> HttpStream:
        inbound = self.sidecar.config.inbound
        assert inbound is not None
        # The app's connection carries no identity: principal and address stay the
        # downstream's, whichever connection the request takes.
        principal, address = self.principal, self.address
        pooled = None if fresh else self._pooled(self.pool_key())
        self.principal, self.address = principal, address
        if pooled is not None:
            return pooled
        self.up_reused = False
        try:
            reader, writer = await asyncio.wait_for(
                open_watched(*inbound.app), self.sidecar.config.connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise UpstreamError("UF") from exc
        return HttpStream(reader, writer, h1.CLIENT)

    def request_headers(self, kept: Headers, ex: _Exchange) -> Headers:
        return kept  # the peer's headers were read into ex and never reach the app

    def response_headers(self, kept: Headers, ex: _Exchange, upstream: Any) -> Headers:
        own = self.sidecar.mx_headers
        if ex.metadata is not None:
            kept.append(own[0])
        if ex.metadata_id is not None:
            kept.append(own[1])
        return kept

    def peer(self, ex: _Exchange) -> PeerContext:
        return self.sidecar.inbound_peer(
            peer_from_headers(ex.metadata, ex.metadata_id),
            self.principal,
            cache_key=(ex.metadata, ex.metadata_id),
            address=self.address,
        )


def host_address(host: str | None) -> Address | None:
    """A ``Host`` header as an address to connect to (port 80 when absent); None if unusable.

    >>> host_address("127.0.0.1:8080"), host_address("example.com"), host_address("[::1]:81")
    (('127.0.0.1', 8080), ('example.com', 80), ('::1', 81))
    """
    if not host:
        return None
    name, port = host, 80
    if host.startswith("["):  # [v6] or [v6]:port
        end = host.find("]")
        rest = host[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        name, port = host[1:end], int(rest[1:]) if rest else 80
    elif ":" in host:
        name, _, digits = host.rpartition(":")
        if ":" in name or not digits.isdigit():
            return None
        port = int(digits)
    if not name or not 1 <= port <= 65535:
        return None
    return name, port


async def outbound_http(
    sidecar: Sidecar,
    cfg: OutboundConfig,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    initial: bytes = b"",
) -> None:
    """Serve one HTTP/1.1 app connection on an outbound HTTP listener (``initial``: its
    first bytes, already read)."""
    await _Outbound(sidecar, HttpStream(reader, writer, h1.SERVER, initial), cfg).serve()


async def inbound_http(
    sidecar: Sidecar,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    initial: bytes = b"",
) -> None:
    """Serve one HTTP/1.1 downstream connection on the inbound HTTP listener."""
    await _Inbound(sidecar, HttpStream(reader, writer, h1.SERVER, initial)).serve()
