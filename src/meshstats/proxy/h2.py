"""HTTP/2 through two sidecars: streams, flow control, gRPC.

Each connection's state machine is :mod:`.h2codec`, which behaves as the ``h2`` library's
``H2Connection`` (its events and exceptions are h2's) at under half its cost; h2 itself
is kept only as the reference the codec is tested against (``tests/h2_reference.py``).

Which codec a connection speaks is decided as Envoy's ``codec_type: AUTO`` decides it: the
protocol TLS negotiated (ALPN ``h2`` or ``http/1.1``) when there is one, else the first
bytes: HTTP/2's connection preface (``PRI * HTTP/2.0``, RFC 9113 §3.4, h2c with prior
knowledge) or HTTP/1.1. An HTTP/2 downstream is relayed over HTTP/2 upstream (Envoy's
``USE_DOWNSTREAM_PROTOCOL``, which is what Istio's sidecars do for a port whose protocol is
``http`` or detected): the client sidecar opens mTLS with Istio's ALPN for HTTP/2
(``istio-h2, istio, h2``), the server sidecar picks ``h2``, and it talks h2c (prior
knowledge) to its app. gRPC is HTTP/2 by definition, so every gRPC call takes this path.

One downstream connection carries many streams, each relayed by a task of its own; the
upstream HTTP/2 connections are shared by all the streams to the same target (the pool's
:meth:`~meshstats.proxy.pool.UpstreamPool.shared`), opened once, as Envoy's HTTP/2 pools
do, and a second one is opened when the peer's ``MAX_CONCURRENT_STREAMS`` is reached.

Flow control is end to end: DATA received on one side is acknowledged (its window handed
back with WINDOW_UPDATE) only once it has been written to the other side, within that
side's window, and the socket drained. A slow reader therefore stalls its own stream's
sender, through the windows, and nothing is buffered beyond one stream window (64 KiB) per
stream and direction. The connection-level window is opened to the stream window times the
stream limit, so a stalled stream cannot starve the others of connection window.

Per stream the exchange is exactly the HTTP/1.1 one (:mod:`.http`): the client sidecar sets
``x-envoy-peer-metadata``/``-id`` and strips the server's from the response, reading them as
its peer; the server sidecar strips the client's before the app sees them and answers with
its own only when asked. Each stream is recorded once, when it ends, with Envoy's sizes for
HTTP/2: ``request_bytes`` = the request's headers (names and values, HPACK-decoded, pseudo
headers included) + DATA + trailers as received from downstream, ``response_bytes`` the same
of what was sent downstream.

gRPC (``content-type: application/grpc*``): ``request_protocol="grpc"``,
``grpc_response_status`` from the trailers, or the headers of a trailers-only response, or
Envoy's mapping of the HTTP status when neither carries one. Messages are counted from the
5-byte length prefixes in the DATA stream (:class:`GrpcFrames`; a message counts when its
prefix begins, as Envoy's gRPC frame inspector counts) and reported as Istio does: every
``tcp_reporting_duration`` while the stream is open, the rest when it ends
(:meth:`~meshstats.StatsEngine.grpc_stream`).

Resets, with Envoy's response flags: a downstream that resets its stream (or closes its
connection) is ``DC``, and the upstream stream is reset (``CANCEL``); an upstream reset
is ``UR`` and a closed upstream connection ``UC``: before the response headers the
downstream gets Envoy's local reply (503; for gRPC a trailers-only ``UNAVAILABLE``), after
them its stream is reset with the upstream's error code (``INTERNAL_ERROR`` for a closed
connection). A gRPC local reply is recorded as Envoy records it: ``response_code`` 200 (the
``:status`` it carries) with ``grpc_response_status`` 14 and the flag.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
import hpack.hpack

from ..attributes import is_grpc_content_type
from ..certs import peer_principal
from . import h2codec
from .http import (
    LOCAL_REPLY_BODIES,
    MX_HEADER,
    MX_ID_HEADER,
    UpstreamError,
    host_address,
    inbound_http,
    no_zero,
    outbound_http,
    peer_from_headers,
)
from .interrupt import Deadline, Interrupted, Interruptible
from .listener import log, peer_address, write

if TYPE_CHECKING:
    from ..connections import GrpcStream
    from ..engine import PeerContext
    from .config import OutboundConfig
    from .handler_api import SidecarView as Sidecar

__all__ = [
    "PREFACE",
    "GrpcFrames",
    "H2Conn",
    "grpc_status_of_http",
    "inbound_auto",
    "outbound_auto",
    "sniff",
]

#: HTTP/2's client connection preface (RFC 9113 §3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CHUNK = 1 << 16
#: Streams a peer may open at once on one connection (h2's default; RFC 9113 advises >= 100).
MAX_STREAMS = 100
#: HTTP/2's default stream window: what one stream may have in flight per direction.
STREAM_WINDOW = 65_535
#: The connection window: every stream's window at once, so none starves the others.
CONNECTION_WINDOW = STREAM_WINDOW * MAX_STREAMS
# DATA frames smaller than this are written with the other frames of the loop's pass.
_COALESCE_BELOW = 4096
# The read loop stops reading (waits for the peer to read) past this much unsent output:
# what a peer that floods PINGs or SETTINGS without reading the answers can cost.
_OUTPUT_LIMIT = 1 << 20

Headers = list[tuple[bytes, bytes]]


class Terminated(h2.events.Event):
    """The connection ended (closed, broke, or a GOAWAY that left this stream out)."""

    def __init__(self, error_code: int | None = None) -> None:
        self.error_code = error_code


class DownstreamGone(h2.events.Event):
    """Put in an upstream stream's events when the stream it relays for goes, so that a
    relay waiting for the response learns it without a task watching the downstream."""


class StreamGone(Exception):
    """The stream can take nothing more: reset by the peer, or its connection is gone."""


def grpc_status_of_http(code: int) -> int:
    """Envoy's ``Grpc::Utility::httpToGrpcStatus`` (the gRPC spec's HTTP mapping).

    >>> grpc_status_of_http(503), grpc_status_of_http(404), grpc_status_of_http(200)
    (14, 12, 2)
    """
    return {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}.get(code, 2)


class GrpcFrames:
    """Counts gRPC messages in a DATA stream: each message is a 5-byte prefix (a flag byte,
    a big-endian u32 length) and that many bytes, and DATA frames may split either anywhere.

    A message counts when its prefix begins, as Envoy's ``Grpc::FrameInspector`` counts.

    >>> frames = GrpcFrames()
    >>> frames.feed(b"\\x00\\x00\\x00\\x00\\x03ab"), frames.feed(b"c\\x00\\x00"), frames.count
    (1, 1, 2)
    >>> frames.feed(b"\\x00" * 8), frames.count  # the prefix's end, then an empty message
    (1, 3)
    """

    __slots__ = ("count", "_left", "_prefix", "_length")

    def __init__(self) -> None:
        self.count = 0
        self._left = 0  # bytes of the current message still to come
        self._prefix = 0  # bytes of the current prefix seen (0: none begun)
        self._length = 0  # the length the prefix announces, so far

    def feed(self, data: bytes) -> int:
        """Account for ``data``; returns how many messages began in it."""
        began = 0
        i, size = 0, len(data)
        while i < size:
            if self._left:
                step = min(self._left, size - i)
                self._left -= step
                i += step
                continue
            if self._prefix == 0:
                began += 1
                self._length = 0
            while self._prefix < 5 and i < size:
                if self._prefix:  # the flag byte says nothing about the length
                    self._length = (self._length << 8) | data[i]
                self._prefix += 1
                i += 1
            if self._prefix == 5:
                self._prefix = 0
                self._left = self._length
        self.count += began
        return began


def header_size(headers: Headers) -> int:
    """Envoy's ``HeaderMap::byteSize()``: names and values, HPACK-decoded.

    >>> header_size([(b":status", b"200"), (b"x-a", b"")])
    13
    """
    # Every length in C (a generator was a Python frame step per field, twice a stream).
    return sum(map(len, itertools.chain.from_iterable(headers)))


def _get(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _split(headers: Headers) -> tuple[Headers, bytes | None, bytes | None]:
    """``headers`` without the peer-exchange ones, and their values."""
    kept: Headers = []
    metadata = metadata_id = None
    for name, value in headers:
        if name == MX_HEADER:
            metadata = value
        elif name == MX_ID_HEADER:
            metadata_id = value
        else:
            kept.append((name, value))
    return kept, metadata, metadata_id


_NEVER_INDEXED = frozenset((b"authorization", b"proxy-authorization"))


def _secure(headers: Headers) -> Headers:
    """``headers`` with credentials never indexed by HPACK, as h2's outbound normalisation
    marks them (turned off, see :class:`H2Conn`): ``authorization`` and
    ``proxy-authorization``, and a ``cookie`` under 20 bytes (rules from nghttp2 and
    Firefox), so that a compression oracle cannot guess them."""
    for name, value in headers:
        if name in _NEVER_INDEXED or (name == b"cookie" and len(value) < 20):
            break
    else:
        return headers
    return [
        hpack.NeverIndexedHeaderTuple(name, value)
        if name in _NEVER_INDEXED or (name == b"cookie" and len(value) < 20)
        else (name, value)
        for name, value in headers
    ]


def _grpc_status(headers: Headers) -> int | None:
    value = _get(headers, b"grpc-status")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


# -- one HTTP/2 connection -----------------------------------------------------------------------


class _Silent:
    """Stands in for hpack's logger while that drops debug records: hpack logs each field
    it encodes or decodes at debug level, and a dropped record still cost two calls (~7%
    of h2's work per relayed stream). ``"".format`` is a C call taking any arguments."""

    debug = "".format


_HPACK_LOG = hpack.hpack.log
_SILENT = _Silent()


def _quiet_hpack() -> None:
    """hpack's logger, or :class:`_Silent` when it would drop debug records: decided again
    for every new connection, so that turning hpack's debug logging on takes effect."""
    enabled = _HPACK_LOG.isEnabledFor(logging.DEBUG)
    hpack.hpack.log = _HPACK_LOG if enabled else _SILENT  # type: ignore[assignment]


def _connection(client: bool) -> h2codec.Connection:
    """The state machine of one connection, client or server side: :mod:`.h2codec`,
    which behaves as h2 configured as the relay had it (``tests/h2_reference.py``) at
    under half its cost."""
    _quiet_hpack()
    return h2codec.Connection(client=client)


class H2Stream:
    """One stream of an :class:`H2Conn`: the events the peer sent on it, in order."""

    __slots__ = (
        "conn", "id", "_events", "_ready", "window", "gone", "ended", "error", "on_gone"
    )  # fmt: skip

    def __init__(self, conn: H2Conn, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self._events: collections.deque[h2.events.Event] = collections.deque()
        self._ready = asyncio.Event()
        self.window = asyncio.Event()  # set when the send window may have grown
        self.gone = False  # reset by the peer, or the connection ended
        self.ended = False  # the peer ended its side (END_STREAM)
        #: Why it is gone: the peer's RST_STREAM error code, or None (connection lost).
        self.error: int | None = None
        #: Called when the stream goes (wakes whoever sends on the stream it is relayed to).
        self.on_gone: Callable[[], None] | None = None

    @property
    def broken(self) -> bool:
        """Gone before its time: any reset of a downstream stream, and a reset of an
        upstream stream before the response ended (a server may reset a stream whose
        response is complete, to stop the request: RFC 9113 §8.1)."""
        return self.gone and not (self.ended and self.conn.client)

    def push(self, event: h2.events.Event) -> None:
        self._events.append(event)
        self._ready.set()
        if isinstance(event, h2.events.StreamEnded):
            self.ended = True
        elif isinstance(event, (h2.events.StreamReset, Terminated)) and not self.gone:
            self.gone = True
            if isinstance(event, h2.events.StreamReset):
                self.error = int(event.error_code or 0)
            self.window.set()
            if self.on_gone is not None:
                self.on_gone()

    def ends_next(self) -> bool:
        """Whether the next event is the end of the peer's side (no DATA or trailers
        before it: a request without a body)."""
        return bool(self._events) and isinstance(self._events[0], h2.events.StreamEnded)

    async def next(self) -> h2.events.Event:
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        return self._events.popleft()

    def discard(self) -> None:
        """The stream's relay is over: forget it, and hand back the window of DATA it
        never consumed (the connection's window is shared by every stream)."""
        conn = self.conn
        conn.streams.pop(self.id, None)
        while self._events:
            event = self._events.popleft()
            if isinstance(event, h2.events.DataReceived):
                conn.ack(self, event.flow_controlled_length)
        conn.flush_soon()
        if not conn.streams:
            conn.idle()


_TO_STREAM, _NEW_STREAM, _WINDOW, _SETTINGS, _GOAWAY = range(5)
#: What the read loop does with each event the codec hands it (others: nothing).
_ROUTES: dict[type[h2.events.Event], int] = {
    h2.events.ResponseReceived: _TO_STREAM,
    h2.events.InformationalResponseReceived: _TO_STREAM,
    h2.events.DataReceived: _TO_STREAM,
    h2.events.TrailersReceived: _TO_STREAM,
    h2.events.StreamEnded: _TO_STREAM,
    h2.events.StreamReset: _TO_STREAM,
    h2.events.RequestReceived: _NEW_STREAM,
    h2.events.WindowUpdated: _WINDOW,
    h2.events.RemoteSettingsChanged: _SETTINGS,
    h2.events.ConnectionTerminated: _GOAWAY,
}


class H2Conn:
    """An HTTP/2 connection, either role, over asyncio streams.

    A read loop feeds the state machine (:mod:`.h2codec`) and hands each stream its events
    (:meth:`H2Stream.next`); a server's new streams come from :meth:`accept`. Sending
    respects the peer's windows (:meth:`send_data` waits for WINDOW_UPDATE); what is
    received is acknowledged only when the caller says it was consumed (:meth:`ack`).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client: bool,
        initial: bytes = b"",
        principal: str | None = None,
        address: str | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.client = client
        self.principal = principal  # the peer's verified identity, for an upstream
        self.address = address
        self.h2 = _connection(client)
        self.streams: dict[int, H2Stream] = {}
        self._incoming: collections.deque[tuple[H2Stream, h2.events.RequestReceived]] = (
            collections.deque()
        )
        self._arrived = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._initial = initial
        self._reading: asyncio.Task[None] | None = None
        self.closed = False
        self.goaway = False  # the peer takes no new streams
        #: An upstream connection without streams for this long is closed (the pool's
        #: ``max_idle_seconds``); None: kept.
        self.idle_timeout: float | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._flush_due = False

    def start(self) -> H2Conn:
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - STREAM_WINDOW)
        self._write()
        self._loop = asyncio.get_running_loop()
        self._reading = self._loop.create_task(self._read_loop())
        return self

    # -- output --------------------------------------------------------------------------------

    def _write(self) -> None:
        """Write what the codec has queued, now."""
        data = self.h2.data_to_send()
        if data and not self.closed:
            write(self.writer, data)

    def _write_soon(self) -> None:
        """Write what the codec has queued once the loop has run the callbacks ready now: the
        frames of every stream that moved in this pass go out in one TLS record and one
        send (a write per frame was several per stream, each through TLS)."""
        if not self._flush_due and not self.closed:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        self._write()

    async def _drain(self) -> None:
        if self.closed:
            raise StreamGone
        try:
            async with self._drain_lock:
                await self.writer.drain()
        except OSError:
            self._terminate()
            raise StreamGone from None

    def flush_soon(self) -> None:
        """Write what the codec has queued (window updates), without waiting."""
        self._write_soon()

    # -- input ---------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            data = self._initial
            self._initial = b""
            while True:
                if not data:
                    data = await self.reader.read(CHUNK)
                    if not data:
                        break
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    self._write()  # h2's GOAWAY
                    break
                data = b""
                for event in events:
                    self._dispatch(event)
                self._write_soon()  # with what the streams woken now will send
                transport = self.writer.transport
                if transport.get_write_buffer_size() > _OUTPUT_LIMIT:
                    await self._drain()
        except (OSError, StreamGone):
            pass
        finally:
            self._terminate()

    def _dispatch(self, event: h2.events.Event) -> None:
        # By the event's class, in a dict: an isinstance chain per event cost more.
        route = _ROUTES.get(type(event))
        if route is _TO_STREAM:
            stream_id: int = event.stream_id  # type: ignore[attr-defined]
            found = self.streams.get(stream_id)
            if found is None:  # a stream whose relay is over
                if type(event) is h2.events.DataReceived:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
                return
            found.push(event)
        elif route is _NEW_STREAM:
            assert isinstance(event, h2.events.RequestReceived) and event.stream_id is not None
            stream = self.streams[event.stream_id] = H2Stream(self, event.stream_id)
            self._incoming.append((stream, event))
            self._arrived.set()
        elif route is _WINDOW:
            assert isinstance(event, h2.events.WindowUpdated)
            if event.stream_id:
                found = self.streams.get(event.stream_id)
                if found is not None:
                    found.window.set()
            else:
                for found in self.streams.values():
                    found.window.set()
        elif route is _SETTINGS:
            for found in self.streams.values():  # the initial window may have changed
                found.window.set()
        elif route is _GOAWAY:
            assert isinstance(event, h2.events.ConnectionTerminated)
            self.goaway = True
            last = event.last_stream_id or 0
            for found in list(self.streams.values()):
                if found.id > last and self.client:
                    found.push(Terminated(event.error_code))
            self._arrived.set()

    def _terminate(self) -> None:
        if self.closed:
            return
        self._write()  # what is queued goes before the close
        self.closed = True
        self.goaway = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        for stream in list(self.streams.values()):
            stream.push(Terminated())
        self._arrived.set()
        self.writer.close()

    # -- the API -------------------------------------------------------------------------------

    async def accept(
        self, stop: Callable[[], bool] | None = None
    ) -> tuple[H2Stream, h2.events.RequestReceived] | None:
        """The next stream a client opened; None once the connection is over, or when
        ``stop()`` is true with none waiting (checked again on :meth:`wake`)."""
        while not self._incoming:
            if self.closed or self.goaway or (stop is not None and stop()):
                return None
            self._arrived.clear()
            await self._arrived.wait()
        return self._incoming.popleft()

    def wake(self) -> None:
        """Have :meth:`accept` check its ``stop`` again."""
        self._arrived.set()

    def has_room(self) -> bool:
        """Whether a new stream may be opened now (the peer's stream limit)."""
        if self.closed or self.goaway:
            return False
        limit = self.h2.remote_settings.max_concurrent_streams
        # Every stream h2 counts as open is one of ours until its relay discards it, which
        # is after h2 closed it: so fewer of ours is room, without h2 walking its streams.
        return len(self.streams) < limit or self.h2.open_outbound_streams < limit

    def idle(self) -> None:
        """The last stream ended: an upstream connection closes if none comes in time."""
        if self.idle_timeout is not None and self._idle is None and not self.closed:
            self._idle = self._loop.call_later(self.idle_timeout, self.close)

    def open(self, headers: Headers, *, end_stream: bool) -> H2Stream:
        """Open a stream with a request's headers (client role)."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, _secure(headers), end_stream=end_stream)  # may refuse
        stream = self.streams[stream_id] = H2Stream(self, stream_id)
        self._write_soon()
        return stream

    async def send_headers(
        self,
        stream: H2Stream,
        headers: Headers,
        *,
        end: bool,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """Send headers (or trailers, ``end``). ``on_end`` runs once the frame that ends the
        stream is written, before waiting for the socket: a stream is recorded before its
        client can have seen it end, so a scrape that follows always counts it."""
        if stream.gone or self.closed:
            raise StreamGone
        try:
            self.h2.send_headers(stream.id, _secure(headers), end_stream=end)
        except h2.exceptions.StreamClosedError:
            raise StreamGone from None
        self._write_soon()
        if end and on_end is not None:
            on_end()
        await self._drain()

    async def send_data(
        self,
        stream: H2Stream,
        data: bytes,
        *,
        end: bool = False,
        on_end: Callable[[], None] | None = None,
        watch: H2Stream | None = None,
    ) -> None:
        """Send ``data`` within the peer's windows (waiting for them to open); ``end`` and
        ``on_end`` as for :meth:`send_headers`. Waiting for window ends (StreamGone) when
        ``watch``, the stream the data comes from, breaks (see :attr:`H2Stream.on_gone`)."""
        view = memoryview(data)
        h2conn = self.h2
        while True:
            if stream.gone or self.closed:
                raise StreamGone
            if not view:
                if end:
                    try:
                        h2conn.end_stream(stream.id)
                    except h2.exceptions.StreamClosedError:
                        raise StreamGone from None
                    self._write_soon()
                    if on_end is not None:
                        on_end()
                    await self._drain()
                return
            try:
                window = h2conn.local_flow_control_window(stream.id)
            except h2.exceptions.StreamClosedError:
                raise StreamGone from None
            size = min(window, h2conn.max_outbound_frame_size, len(view))
            if size <= 0:
                if watch is not None and watch.broken:
                    raise StreamGone  # what would wait for window has nowhere to go now
                stream.window.clear()
                await stream.window.wait()
                continue
            last = end and size == len(view)
            try:
                h2conn.send_data(stream.id, bytes(view[:size]), end_stream=last)
            except h2.exceptions.StreamClosedError:
                raise StreamGone from None
            view = view[size:]
            # A small frame waits for the others of this pass; a large one goes now, so
            # that the drain below sees it (the socket's backpressure, as before).
            if size < _COALESCE_BELOW:
                self._write_soon()
            else:
                self._write()
            if last and on_end is not None:
                on_end()
            await self._drain()
            if last:
                return

    def ack(self, stream: H2Stream, size: int) -> None:
        """``size`` flow-controlled bytes of ``stream`` were consumed: their window may go
        back to the peer (h2 sends WINDOW_UPDATE once enough has been consumed)."""
        if size and not self.closed:
            self.h2.acknowledge_received_data(size, stream.id)

    def reset(self, stream: H2Stream, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream.id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self._write_soon()

    def close(self) -> None:
        """GOAWAY, then close (streams still open see :class:`Terminated`)."""
        if not self.closed:
            try:
                self.h2.close_connection()
                self._write()
            except h2.exceptions.ProtocolError:
                pass
        self._terminate()
        if self._reading is not None:
            self._reading.cancel()


# -- the relay ------------------------------------------------------------------------------------


class _Downstream(Exception):
    """The downstream broke off the stream (reset it, or its connection went): ``DC``."""


class _Upstream(Exception):
    """The upstream broke off the stream: ``flag`` (UR reset, UC connection), and the
    error code to reset the downstream with if its response had begun."""

    def __init__(self, flag: str, code: int) -> None:
        super().__init__(flag)
        self.flag = flag
        self.code = code


@dataclass(slots=True)
class _Exchange:
    started: float
    last: float  # the last time anything moved (stream_idle_timeout)
    request_bytes: int = 0
    response_bytes: int = 0
    code: int = 0
    flags: str | None = None
    grpc_status: int | None = None
    metadata: bytes | None = None  # the peer's exchange headers
    metadata_id: bytes | None = None
    principal: str | None = None
    address: str | None = None
    host: str | None = None
    method: str | None = None
    path: str | None = None
    content_type: str | None = None
    grpc: GrpcStream | None = None
    responded: bool = False  # response headers sent downstream
    request_done: bool = False
    recorded: bool = False
    # gRPC's message counters, made only for a gRPC stream (with ``grpc``).
    request_frames: GrpcFrames | None = None
    response_frames: GrpcFrames | None = None


def _watch_stream(
    timers: Deadline,
    wait: Interruptible,
    ex: _Exchange,
    idle: float | None,
    deadline: float | None,
) -> None:
    """Put a stream relayed in one task on its connection's timer until ``wait`` ends (with
    no timeout at all, nothing to watch): ``UT`` at the request's ``deadline``, ``SI`` after
    ``idle`` seconds without a frame."""
    if idle is not None or deadline is not None:
        check = functools.partial(_stream_timeout, ex, idle, deadline)
        timers.watch_until(wait, _stream_due(ex, idle, deadline), check)


def _stream_due(ex: _Exchange, idle: float | None, deadline: float | None) -> float:
    """When a stream's next timeout comes, if nothing moves before."""
    waits = [] if idle is None else [ex.last + idle]
    if deadline is not None and not ex.responded:
        waits.append(deadline)
    return min(waits)


def _stream_timeout(
    ex: _Exchange, idle: float | None, deadline: float | None, now: float
) -> str | float:
    """A stream's timeout when its time comes (its :class:`.Deadline` check): ``UT`` at the
    request's deadline until the response began, ``SI`` once nothing moved for ``idle``
    seconds (``ex.last``); else, a frame having moved meanwhile, when to look again."""
    if deadline is not None and not ex.responded and now >= deadline:
        return "UT"
    if idle is not None and now - ex.last >= idle:
        return "SI"
    return _stream_due(ex, idle, deadline)


def _downstream_gone(us: H2Stream) -> Callable[[], None]:
    def gone() -> None:
        us.window.set()
        us.push(DownstreamGone())

    return gone


def _log_failure(task: asyncio.Task[None]) -> None:
    """A stream's relay failed unexpectedly (a bug): say so, as the listener does for a
    connection handler (the connection and its other streams go on)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("HTTP/2 stream relay failed", exc_info=task.exception())


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


class _H2Proxy:
    """The streams of one downstream HTTP/2 connection; subclasses say where they go and
    how headers change (as :mod:`.http`'s ``_Outbound`` / ``_Inbound``)."""

    reporter = "inbound"

    def __init__(self, sidecar: Sidecar, down: H2Conn) -> None:
        self.sidecar = sidecar
        self.down = down
        # Looked up once: on 3.11 each get_running_loop() is a getpid() system call, and a
        # stream's steps asked for it six times.
        self.loop = asyncio.get_running_loop()
        # The timeouts of the streams relayed in one task, on one timer (closed by serve()).
        self.timers = Deadline(self.loop)
        self._peer_key: tuple[object, ...] | None = None
        self._peer_ctx: PeerContext | None = None

    # -- hooks ---------------------------------------------------------------------------------

    async def upstream(self, ex: _Exchange) -> H2Conn:
        raise NotImplementedError

    def request_headers(self, kept: Headers, ex: _Exchange) -> Headers:
        raise NotImplementedError

    def response_headers(self, kept: Headers, ex: _Exchange, upstream: Headers | None) -> Headers:
        raise NotImplementedError

    def peer(self, ex: _Exchange) -> PeerContext:
        raise NotImplementedError

    def peer_known(self, ex: _Exchange) -> bool:
        """Whether :meth:`peer` is final yet (a client learns it from the response)."""
        return True

    # -- the loop ------------------------------------------------------------------------------

    async def serve(self) -> None:
        down = self.down.start()
        tasks: set[asyncio.Task[None]] = set()
        idle = no_zero(self.sidecar.config.idle_timeout)
        loop = self.loop
        timer: asyncio.TimerHandle | None = None
        idled = False

        # A connection without streams is closed after idle_timeout (Envoy's connection
        # idle timeout); with streams open it waits for them. A timer armed when the last
        # stream ends, rather than waiting on every open stream's task for each new one,
        # which costs as much as there are streams open, per stream.
        def close_idle() -> None:
            nonlocal idled
            idled = True
            down.wake()

        def arm() -> None:
            nonlocal timer
            if idle is not None and not tasks and timer is None:
                timer = loop.call_later(idle, close_idle)

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            arm()

        try:
            arm()
            while True:
                item = await down.accept(lambda: idled)
                if item is None:
                    break
                idled = False  # a stream came as the timer went: not idle after all
                if timer is not None:
                    timer.cancel()
                    timer = None
                task = loop.create_task(self.relay(*item))
                task.add_done_callback(_log_failure)
                task.add_done_callback(finished)
                tasks.add(task)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.timers.close()  # (the streams left are cancelled: their timeouts are moot)
            if timer is not None:
                timer.cancel()
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            down.close()

    async def relay(self, ds: H2Stream, request: h2.events.RequestReceived) -> None:
        loop = self.loop
        now = loop.time()
        ex = _Exchange(started=now, last=now)
        headers: Headers = list(request.headers or [])
        ex.request_bytes = header_size(headers)
        kept, ex.metadata, ex.metadata_id = _split(headers)
        ex.host = _text(_get(headers, b":authority") or _get(headers, b"host"))
        ex.method = _text(_get(headers, b":method"))
        ex.path = _text(_get(headers, b":path"))
        ex.content_type = _text(_get(headers, b"content-type"))
        self.downstream_peer(ex)
        if ex.content_type is not None and is_grpc_content_type(ex.content_type):
            ex.grpc = self.sidecar.engine.grpc_stream(
                self._peer(ex) if self.peer_known(ex) else None,
                host=ex.host,
                reporter="inbound" if self.reporter == "inbound" else "outbound",
            )
            ex.request_frames, ex.response_frames = GrpcFrames(), GrpcFrames()
        us: H2Stream | None = None
        try:
            out = self.request_headers(kept, ex)
            try:
                up = await self.upstream(ex)
                # A request without a body (its END_STREAM came with the headers) goes
                # upstream the same way: one HEADERS frame.
                ended = ds.ends_next() and not ex.request_done
                us = up.open(out, end_stream=ended)
                ex.request_done = ex.request_done or ended
                # Either side going wakes a send to the other that waits for window; the
                # downstream going also ends a wait for the response (see _exchange).
                ds.on_gone, us.on_gone = _downstream_gone(us), ds.window.set
                if ds.gone:  # before it was watched
                    ds.on_gone()
            except UpstreamError as failed:
                await self._local_reply(ds, ex, failed.code, failed.flag)
                return
            except (h2.exceptions.ProtocolError, StreamGone):
                await self._local_reply(ds, ex, 503, "UC")
                return
            await self._exchange(ds, us, ex)
        except _Downstream:
            ex.flags = "DC"
            if us is not None:
                us.conn.reset(us)
        finally:
            ds.discard()
            if us is not None:
                us.discard()
            self._record(ex)

    def downstream_peer(self, ex: _Exchange) -> None:
        """Fill in what the downstream connection says about the peer (inbound)."""

    async def _exchange(self, ds: H2Stream, us: H2Stream, ex: _Exchange) -> None:
        loop = self.loop
        cfg = self.sidecar.config
        idle = no_zero(cfg.stream_idle_timeout)
        deadline = ex.started + cfg.request_timeout if cfg.request_timeout > 0 else None
        # A request that ended with its headers (a GET) has nothing more to relay: no task
        # for it (a task, its wake-ups and its cancellation were a good part of a stream's
        # cost); its downstream resetting reaches _response as DownstreamGone.
        if ex.request_done:
            await self._response_only(ds, us, ex, idle, deadline)
            return
        request = asyncio.ensure_future(self._request(ds, us, ex))
        response = asyncio.ensure_future(self._response(ds, us, ex))
        pending: set[asyncio.Future[None]] = {request, response}
        try:
            while response in pending:
                waits = [] if idle is None else [ex.last + idle - loop.time()]
                if deadline is not None and not ex.responded:
                    waits.append(deadline - loop.time())
                done, pending = await asyncio.wait(
                    pending,
                    timeout=max(0.0, min(waits)) if waits else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if request in done:
                    failed = request.exception()
                    if isinstance(failed, _Downstream):
                        raise failed
                    # (StreamGone: the upstream reset; the response side reports it)
                if response in done:
                    failed = response.exception()
                    if failed is not None:
                        raise failed
                    break
                now = loop.time()
                if deadline is not None and not ex.responded and now >= deadline:
                    await self._timed_out(ds, us, ex, "UT")
                    return
                if idle is not None and now - ex.last >= idle:
                    await self._timed_out(ds, us, ex, "SI")
                    return
            # The response ended. A request still being sent is cut (RFC 9113 §8.1).
            if not ex.request_done:
                ds.conn.reset(ds, h2.errors.ErrorCodes.NO_ERROR)
                us.conn.reset(us, h2.errors.ErrorCodes.NO_ERROR)
        except _Upstream as broke:
            request.cancel()
            await self._upstream_broke(ds, ex, broke)
        finally:
            tasks = [request, response]
            for task in tasks:
                if not task.done():
                    task.cancel()
            if not all(task.done() for task in tasks):
                await asyncio.gather(*tasks, return_exceptions=True)
            else:  # what gather would do, without its round trips through the loop
                for task in tasks:
                    if not task.cancelled():
                        task.exception()

    async def _response_only(
        self,
        ds: H2Stream,
        us: H2Stream,
        ex: _Exchange,
        idle: float | None,
        deadline: float | None,
    ) -> None:
        """:meth:`_exchange` for a request that ended with its headers: the response is
        relayed in this task, not one of its own, and the timeouts are a timer that
        interrupts it (:class:`.Interruptible`; a task and an ``asyncio.wait`` per stream
        were a good part of its cost). Which timeout, and when, as :meth:`_exchange`
        decides."""
        try:
            with Interruptible(deadline=self.timers) as wait:
                _watch_stream(self.timers, wait, ex, idle, deadline)
                await self._response(ds, us, ex)
        except Interrupted as why:
            await self._timed_out(ds, us, ex, why.reason)
        except _Upstream as broke:
            await self._upstream_broke(ds, ex, broke)

    async def _timed_out(self, ds: H2Stream, us: H2Stream, ex: _Exchange, flag: str) -> None:
        """The request's deadline (``UT``) or the stream's idle timeout (``SI``) passed."""
        us.conn.reset(us)
        if flag == "UT":
            await self._local_reply(ds, ex, 504, "UT")
        elif ex.responded:
            ex.flags = "SI"
            ds.conn.reset(ds, h2.errors.ErrorCodes.NO_ERROR)
        else:
            await self._local_reply(ds, ex, 408, "SI")

    async def _upstream_broke(self, ds: H2Stream, ex: _Exchange, broke: _Upstream) -> None:
        ex.flags = broke.flag
        if ex.responded:
            ds.conn.reset(ds, broke.code)
        else:
            await self._local_reply(ds, ex, 503, broke.flag)

    async def _request(self, ds: H2Stream, us: H2Stream, ex: _Exchange) -> None:
        """Downstream -> upstream: DATA, trailers, the end."""
        loop = self.loop
        up, down = us.conn, ds.conn

        def done() -> None:
            ex.request_done = True

        while True:
            event = await ds.next()
            ex.last = loop.time()
            if isinstance(event, h2.events.DataReceived):
                data = event.data or b""
                ex.request_bytes += len(data)
                if ex.grpc is not None and ex.request_frames is not None:
                    ex.grpc.add(request_messages=ex.request_frames.feed(data))
                # The body's last DATA frame ends the stream upstream too, rather than an
                # empty DATA frame after it: one frame less to make, send and read.
                last = not ex.request_done and ds.ends_next()
                try:
                    await up.send_data(us, data, end=last, on_end=done, watch=ds)
                except StreamGone:
                    if ds.broken:
                        raise _Downstream from None
                    return  # the upstream went: the response side reports it
                down.ack(ds, event.flow_controlled_length)
                down.flush_soon()
            elif isinstance(event, h2.events.TrailersReceived):
                trailers = list(event.headers or [])
                ex.request_bytes += header_size(trailers)
                try:
                    await up.send_headers(us, trailers, end=True)
                except StreamGone:
                    return
                ex.request_done = True
            elif isinstance(event, h2.events.StreamEnded):
                # The request is complete; the stream is still watched: a client that
                # resets it (a cancelled call) is gone while its response is awaited.
                if not ex.request_done:
                    ex.request_done = True
                    try:
                        await up.send_data(us, b"", end=True)
                    except StreamGone:
                        return
            elif isinstance(event, (h2.events.StreamReset, Terminated)):
                raise _Downstream

    async def _response(self, ds: H2Stream, us: H2Stream, ex: _Exchange) -> None:
        """Upstream -> downstream: the headers (peer exchange), DATA, trailers, the end."""
        loop = self.loop
        up, down = us.conn, ds.conn
        ended = False

        def done(last: Callable[[], None] | None) -> None:
            """The response's last frame is written: account for it, and record now."""
            if last is not None:
                last()
            self._record(ex)

        while True:
            event = await us.next()
            ex.last = loop.time()
            try:
                if isinstance(event, h2.events.InformationalResponseReceived):
                    continue  # 1xx are not forwarded
                if isinstance(event, h2.events.ResponseReceived):
                    headers = list(event.headers or [])
                    kept, _, _ = _split(headers)
                    out = self.response_headers(kept, ex, headers)
                    if ex.grpc is not None:
                        ex.grpc.set_peer(self._peer(ex))  # periodic reports may begin
                    ended = event.stream_ended is not None

                    def sent(headers: Headers = headers, out: Headers = out) -> None:
                        # Only once sent: a downstream gone by now got nothing (0, DC).
                        status = _get(headers, b":status") or b"0"
                        ex.code = int(status) if status.isdigit() else 0
                        if ended:  # trailers-only
                            ex.grpc_status = _grpc_status(headers)
                        ex.response_bytes += header_size(out)
                        ex.responded = True

                    if ended:
                        await down.send_headers(ds, out, end=True, on_end=lambda: done(sent))
                    else:
                        await down.send_headers(ds, out, end=False)
                        sent()
                elif isinstance(event, h2.events.DataReceived):
                    data = event.data or b""
                    if ex.grpc is not None and ex.response_frames is not None:
                        ex.grpc.add(response_messages=ex.response_frames.feed(data))
                    if not ended and us.ends_next():
                        # The last DATA frame ends the stream downstream too (see _request).
                        ended = True

                        def counted(size: int = len(data)) -> None:
                            ex.response_bytes += size

                        await down.send_data(
                            ds, data, end=True, on_end=lambda: done(counted), watch=us
                        )
                    else:
                        await down.send_data(ds, data, watch=us)
                        ex.response_bytes += len(data)
                    up.ack(us, event.flow_controlled_length)
                    up.flush_soon()
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = list(event.headers or [])
                    ended = True

                    def trailed(trailers: Headers = trailers) -> None:
                        ex.grpc_status = _grpc_status(trailers)
                        ex.response_bytes += header_size(trailers)

                    await down.send_headers(ds, trailers, end=True, on_end=lambda: done(trailed))
                elif isinstance(event, h2.events.StreamEnded):
                    if not ended:
                        await down.send_data(ds, b"", end=True, on_end=lambda: done(None))
                    return
                elif isinstance(event, h2.events.StreamReset):
                    raise _Upstream("UR", event.error_code or h2.errors.ErrorCodes.CANCEL)
                elif isinstance(event, Terminated):
                    raise _Upstream("UC", h2.errors.ErrorCodes.INTERNAL_ERROR)
                elif isinstance(event, DownstreamGone):
                    raise _Downstream
            except StreamGone:
                if us.broken:  # the upstream went while its data waited for window
                    if us.error is None:
                        raise _Upstream("UC", h2.errors.ErrorCodes.INTERNAL_ERROR) from None
                    raise _Upstream("UR", us.error or h2.errors.ErrorCodes.CANCEL) from None
                raise _Downstream from None

    async def _local_reply(self, ds: H2Stream, ex: _Exchange, code: int, flag: str | None) -> None:
        """Envoy's local reply on this stream; for gRPC a trailers-only response with the
        gRPC status Envoy maps the HTTP code to, recorded with ``:status`` 200 (as Envoy)."""
        ex.flags = flag
        body = LOCAL_REPLY_BODIES.get(flag or "", b"")
        if ex.grpc is not None:
            ex.code = 200
            ex.grpc_status = grpc_status_of_http(code)
            headers: Headers = [
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                (b"grpc-status", str(ex.grpc_status).encode()),
                (b"grpc-message", body),
            ]
        else:
            ex.code = code
            headers = [
                (b":status", str(code).encode()),
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ]
        headers = self.response_headers(headers, ex, None)
        down = ds.conn

        def record() -> None:
            self._record(ex)

        try:
            if ex.grpc is not None or not body:
                ex.response_bytes += header_size(headers)
                await down.send_headers(ds, headers, end=True, on_end=record)
            else:
                await down.send_headers(ds, headers, end=False)
                ex.response_bytes += header_size(headers) + len(body)
                await down.send_data(ds, body, end=True, on_end=record)
        except StreamGone:
            ex.flags = "DC"
            return
        if not ex.request_done:
            down.reset(ds, h2.errors.ErrorCodes.NO_ERROR)  # the rest of the request is moot

    def _peer(self, ex: _Exchange) -> PeerContext:
        """:meth:`peer`, resolved once for as long as the peer stays the same (the streams
        of one connection usually share it)."""
        key = (ex.metadata, ex.metadata_id, ex.principal, ex.address)
        if key != self._peer_key or self._peer_ctx is None:
            self._peer_key, self._peer_ctx = key, self.peer(ex)
        return self._peer_ctx

    def _record(self, ex: _Exchange) -> None:
        """Record the stream, once (when its last frame went out, else when it ended)."""
        if ex.recorded:
            return
        ex.recorded = True
        elapsed = (self.loop.time() - ex.started) * 1000.0
        peer = self._peer(ex)
        grpc_status = ex.grpc_status
        if ex.grpc is not None:
            if grpc_status is None and ex.code:
                grpc_status = grpc_status_of_http(ex.code)  # Envoy's fallback
            ex.grpc.set_peer(peer)
            ex.grpc.close()
        self.sidecar.engine.record_request(
            peer,
            response_code=ex.code,
            duration_ms=elapsed,
            request_bytes=ex.request_bytes,
            response_bytes=ex.response_bytes,
            host=ex.host,
            grpc_status=grpc_status if ex.grpc is not None else None,
            response_flags=ex.flags,
            protocol="grpc" if ex.grpc is not None else "http",
            method=ex.method,
            path=ex.path,
            content_type=ex.content_type,
        )


class _Outbound(_H2Proxy):
    reporter = "outbound"

    def __init__(self, sidecar: Sidecar, down: H2Conn, cfg: OutboundConfig) -> None:
        super().__init__(sidecar, down)
        self.cfg = cfg

    async def upstream(self, ex: _Exchange) -> H2Conn:
        cfg = self.cfg
        if cfg.mode == "blackhole":
            raise UpstreamError(None, 502)
        if cfg.mode == "passthrough" and cfg.upstream is None:
            target = host_address(ex.host)
        else:
            target = cfg.upstream
        if target is None:
            raise UpstreamError("UH")
        mesh = cfg.mode == "service"
        sidecar = self.sidecar

        async def connect() -> H2Conn:
            try:
                reader, writer, principal, _ = await sidecar.connect(target, "h2", mesh=mesh)
            except (OSError, asyncio.TimeoutError) as exc:
                raise UpstreamError("UF") from exc
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
                writer.close()  # a server that does not speak HTTP/2
                raise UpstreamError("UF")
            address = peer_address(writer)
            return H2Conn(reader, writer, client=True, principal=principal, address=address).start()

        up: H2Conn = await sidecar.upstream_pool.shared(("h2", "outbound", target, mesh), connect)
        ex.principal, ex.address = up.principal, up.address
        return up

    def request_headers(self, kept: Headers, ex: _Exchange) -> Headers:
        # Whatever the app claimed is dropped (kept has none); the sidecar speaks for it.
        ex.metadata = ex.metadata_id = None
        if self.cfg.mode != "service":
            return kept
        return kept + self.sidecar.mx_headers

    def response_headers(self, kept: Headers, ex: _Exchange, upstream: Headers | None) -> Headers:
        if upstream is not None:
            _, ex.metadata, ex.metadata_id = _split(upstream)
        else:
            ex.metadata = ex.metadata_id = None
        return kept

    def peer_known(self, ex: _Exchange) -> bool:
        return ex.responded

    def peer(self, ex: _Exchange) -> PeerContext:
        return self.sidecar.outbound_peer(
            self.cfg,
            peer_from_headers(ex.metadata, ex.metadata_id),
            ex.principal,
            cache_key=(ex.metadata, ex.metadata_id),
            address=ex.address,
        )


class _Inbound(_H2Proxy):
    def __init__(self, sidecar: Sidecar, down: H2Conn) -> None:
        super().__init__(sidecar, down)
        self.principal = peer_principal(down.writer.get_extra_info("ssl_object"))
        self.address = peer_address(down.writer)

    def downstream_peer(self, ex: _Exchange) -> None:
        ex.principal, ex.address = self.principal, self.address

    async def upstream(self, ex: _Exchange) -> H2Conn:
        inbound = self.sidecar.config.inbound
        assert inbound is not None
        app = inbound.app
        timeout = self.sidecar.config.connect_timeout

        async def connect() -> H2Conn:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(*app), timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                raise UpstreamError("UF") from exc
            return H2Conn(reader, writer, client=True).start()

        up: H2Conn = await self.sidecar.upstream_pool.shared(("h2", "inbound", app), connect)
        return up

    def request_headers(self, kept: Headers, ex: _Exchange) -> Headers:
        return kept  # the peer's headers were read into ex and never reach the app

    def response_headers(self, kept: Headers, ex: _Exchange, upstream: Headers | None) -> Headers:
        own = self.sidecar.mx_headers
        if ex.metadata is not None:
            kept.append(own[0])
        if ex.metadata_id is not None:
            kept.append(own[1])
        return kept

    def peer(self, ex: _Exchange) -> PeerContext:
        return self.sidecar.inbound_peer(
            peer_from_headers(ex.metadata, ex.metadata_id),
            ex.principal,
            cache_key=(ex.metadata, ex.metadata_id),
            address=ex.address,
        )


# -- which codec ----------------------------------------------------------------------------------


async def sniff(reader: asyncio.StreamReader, timeout: float | None) -> tuple[bool, bytes]:
    """Whether a plaintext connection starts with HTTP/2's preface, and the bytes read to
    tell (handed on to whichever codec serves it). Reads only while what arrived could
    still be the preface; ``asyncio.TimeoutError`` if a read waits ``timeout``."""
    data = b""
    while len(data) < len(PREFACE) and PREFACE.startswith(data):
        read = reader.read(CHUNK)
        more = await (read if timeout is None else asyncio.wait_for(read, timeout))
        if not more:
            break
        data += more
    return data[: len(PREFACE)] == PREFACE, data


async def _codec(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, timeout: float | None
) -> tuple[bool, bytes] | None:
    """HTTP/2 or not, as Envoy's ``codec_type: AUTO`` decides: by ALPN when TLS negotiated
    one, else by the preface. None when the client went away or sent nothing in time."""
    ssl_object = writer.get_extra_info("ssl_object")
    alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
    if alpn:
        return alpn == "h2", b""
    try:
        return await sniff(reader, timeout)
    except (OSError, asyncio.TimeoutError):
        return None


async def inbound_auto(
    sidecar: Sidecar, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Serve one downstream connection on the inbound HTTP listener, HTTP/1.1 or HTTP/2."""
    found = await _codec(writer, reader, no_zero(sidecar.config.idle_timeout))
    if found is None:
        return
    is_h2, initial = found
    if is_h2:
        await _Inbound(sidecar, H2Conn(reader, writer, client=False, initial=initial)).serve()
    else:
        await inbound_http(sidecar, reader, writer, initial)


async def outbound_auto(
    sidecar: Sidecar,
    cfg: OutboundConfig,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Serve one app connection on an outbound HTTP listener, HTTP/1.1 or h2c."""
    found = await _codec(writer, reader, no_zero(sidecar.config.idle_timeout))
    if found is None:
        return
    is_h2, initial = found
    if is_h2:
        down = H2Conn(reader, writer, client=False, initial=initial)
        await _Outbound(sidecar, down, cfg).serve()
    else:
        await outbound_http(sidecar, cfg, reader, writer, initial)
