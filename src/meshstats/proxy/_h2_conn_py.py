"""A lean sans-I/O HTTP/2 connection for the sidecar relay: h2's behaviour, a fraction of its cost.

The pure-Python twin of ``_h2_conn_c`` (same API, same results); ``h2codec`` selects one.

>>> server, client = Connection(client=False), Connection(client=True)
>>> client.initiate_connection(); server.initiate_connection()
>>> stream_id = client.get_next_available_stream_id()
>>> client.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"http"),
...                                 (b":path", b"/"), (b":authority", b"a")], end_stream=True)
>>> events = server.receive_data(client.data_to_send())
>>> [type(event).__name__ for event in events]
['RemoteSettingsChanged', 'RequestReceived', 'StreamEnded']
>>> events[1].headers[2]
(b':path', b'/')

The relay (:mod:`.h2`) was written against the ``h2`` library's ``H2Connection``, and h2
cost about three times what splitting frames and HPACK alone cost per relayed stream: a
frame object per frame, with a set of flag names, a state machine call per transition, a
chain of generators per header block. This module keeps h2's API (the subset the relay
uses), its events (``h2.events``, with the attributes h2 sets) and its exceptions
(``h2.exceptions``, raised where h2 raises them), and reproduces h2's decisions on
received frames, which RFC 9113 leaves partly open: the same frames refused with the same
error code (a connection error queues GOAWAY and raises, as h2 does), the same frames
answered with RST_STREAM, frames on streams closed by a reset told from those on streams
closed by their end, WINDOW_UPDATE emitted when the app has consumed half a window (or
1024 bytes of a window that is shut), and a connection that takes nothing but GOAWAY once
either side sent or received one. ``tests/test_proxy_h2codec.py`` drives h2 and this
module with the same bytes, from a real h2 peer and mutated, and compares what comes out.

Settings are the relay's (:func:`.h2._connection`): at most 100 concurrent inbound
streams, header lists up to 64 KiB, push refused. Received header blocks are checked by
:func:`.h2_rules.checked` (h2's inbound rules, in one pass); what is sent is not checked
again (it was checked as it arrived on the other connection) and is HPACK-encoded without
Huffman coding: cheaper in CPU, and the few bytes it adds are a header block's, once per
stream, on links that are local or between nodes.

Two differences. On the sending side, an empty header block (trailers without fields, as
a peer may send them) goes out as a HEADERS frame with an empty fragment, where h2 fails
with an ``IndexError`` after changing the stream's state. On the receiving side, a frame
that announces more than our SETTINGS_MAX_FRAME_SIZE is refused (GOAWAY FRAME_SIZE_ERROR)
on its 9-byte header, where h2 buffers up to 16 MiB of it first and then refuses it: a
peer could otherwise make every connection hold that much.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack.exceptions import HPACKError, OversizedHeaderListError

from . import h2_hpack, h2_rules

__all__ = ["Connection", "checked"]

#: The received blocks' rules this backend applies (the compiled one has its own).
checked = h2_rules.checked

Header = tuple[bytes, bytes]
_Codes = h2.errors.ErrorCodes
_Setting = h2.settings.SettingCodes
_ProtocolError = h2.exceptions.ProtocolError

_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_LARGEST_WINDOW: Final = 2**31 - 1
_HIGHEST_STREAM_ID: Final = 2**31 - 1
_MAX_INBOUND_FRAME: Final = 16_384  # our SETTINGS_MAX_FRAME_SIZE, never changed
_MAX_INBOUND_STREAMS: Final = 100
_MAX_HEADER_LIST: Final = 1 << 16
_CONTINUATION_BACKLOG: Final = 64  # h2's bound on one header block's frames
_CLOSED_STREAMS_KEPT: Final = 2**16  # how many closed streams h2 remembers the end of

# Frame types (RFC 9113 §6) and flags.
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
_PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION, _ALTSVC = range(5, 11)
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# Which frames name a stream, which name none: any other stream id is refused as soon as
# the frame's header arrives, as h2 (hyperframe) refuses it.
_NEEDS_STREAM = frozenset((_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _PUSH_PROMISE, _CONTINUATION))
_NO_STREAM = frozenset((_SETTINGS, _PING, _GOAWAY))

# Connection states and inputs (h2's connection state machine: the inputs each state
# takes; anything else is a PROTOCOL_ERROR and closes).
_C_IDLE, _C_CLIENT_OPEN, _C_SERVER_OPEN, _C_CLOSED = range(4)
(
    _SEND_HEADERS, _SEND_PUSH_PROMISE, _SEND_DATA, _SEND_GOAWAY, _SEND_WINDOW_UPDATE,
    _SEND_PING, _SEND_SETTINGS, _SEND_RST_STREAM, _SEND_PRIORITY, _SEND_ALTSVC,
    _RECV_HEADERS, _RECV_PUSH_PROMISE, _RECV_DATA, _RECV_GOAWAY, _RECV_WINDOW_UPDATE,
    _RECV_PING, _RECV_SETTINGS, _RECV_RST_STREAM, _RECV_PRIORITY, _RECV_ALTSVC,
) = range(20)  # fmt: skip
_BOTH_OPEN = {
    _SEND_HEADERS, _SEND_DATA, _SEND_GOAWAY, _SEND_WINDOW_UPDATE, _SEND_PING, _SEND_SETTINGS,
    _SEND_PRIORITY, _SEND_RST_STREAM, _RECV_HEADERS, _RECV_DATA, _RECV_GOAWAY,
    _RECV_WINDOW_UPDATE, _RECV_PING, _RECV_SETTINGS, _RECV_RST_STREAM, _RECV_PRIORITY,
    _RECV_ALTSVC,
}  # fmt: skip
_CONNECTION_MOVES: dict[int, dict[int, int]] = {
    _C_IDLE: {
        _SEND_HEADERS: _C_CLIENT_OPEN, _RECV_HEADERS: _C_SERVER_OPEN,
        _SEND_SETTINGS: _C_IDLE, _RECV_SETTINGS: _C_IDLE, _SEND_WINDOW_UPDATE: _C_IDLE,
        _RECV_WINDOW_UPDATE: _C_IDLE, _SEND_PING: _C_IDLE, _RECV_PING: _C_IDLE,
        _SEND_GOAWAY: _C_CLOSED, _RECV_GOAWAY: _C_CLOSED, _SEND_PRIORITY: _C_IDLE,
        _RECV_PRIORITY: _C_IDLE, _SEND_ALTSVC: _C_SERVER_OPEN, _RECV_ALTSVC: _C_CLIENT_OPEN,
    },
    _C_CLIENT_OPEN: {
        **{i: _C_CLIENT_OPEN for i in _BOTH_OPEN}, _RECV_PUSH_PROMISE: _C_CLIENT_OPEN,
        _SEND_GOAWAY: _C_CLOSED, _RECV_GOAWAY: _C_CLOSED,
    },
    _C_SERVER_OPEN: {
        **{i: _C_SERVER_OPEN for i in _BOTH_OPEN}, _SEND_PUSH_PROMISE: _C_SERVER_OPEN,
        _SEND_ALTSVC: _C_SERVER_OPEN, _SEND_GOAWAY: _C_CLOSED, _RECV_GOAWAY: _C_CLOSED,
    },
    _C_CLOSED: {_SEND_GOAWAY: _C_CLOSED, _RECV_GOAWAY: _C_CLOSED},
}  # fmt: skip

# Stream states (RFC 9113 §5.1) and how a stream was closed (h2 answers a frame on a
# stream it reset with RST_STREAM, on a stream that ended with a connection error).
_IDLE, _OPEN, _HALF_LOCAL, _HALF_REMOTE, _CLOSED = range(5)
_BY_SEND_RST, _BY_RECV_RST, _BY_SEND_END, _BY_RECV_END = range(1, 5)


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (len(payload) << 48 | kind << 40 | flags << 32 | stream_id).to_bytes(9, "big") + payload


def _error_code(code: int) -> _Codes | int:
    """An error code as h2 hands it on: the enum member when it is a known one."""
    try:
        return _Codes(code)
    except ValueError:
        return code


def _setting_code(code: int) -> _Setting | int:
    try:
        return _Setting(code)
    except ValueError:
        return code


def _frame_size_error(what: str) -> h2.exceptions.FrameDataMissingError:
    return h2.exceptions.FrameDataMissingError(f"{what} frame has the wrong length")


def _is_informational(headers: Iterable[Header]) -> bool:
    """Whether a block is a 1xx response, judged as h2 judges it: by the pseudo-headers
    before the first regular field."""
    for name, value in headers:
        if name[:1] != b":":
            return False
        if name == b":status":
            return value[:1] == b"1"
    return False


def _pseudo(headers: Iterable[Header], wanted: bytes) -> bytes | None:
    """The value of one pseudo-header (``:method``, ``:authority``), or None."""
    for name, value in headers:
        if name == wanted:
            return value
    return None


class _InboundWindow:
    """What the peer may still send us, and when to hand consumed bytes back: once half
    the window was consumed, or 1024 bytes (a quarter of a smaller window) when the
    window is shut, so that neither a trickle of small frames costs a WINDOW_UPDATE each
    nor a stalled stream waits forever."""

    __slots__ = ("size", "largest", "consumed")

    def __init__(self, size: int) -> None:
        self.size = size
        self.largest = size  # the largest the window was opened to
        self.consumed = 0  # received and consumed by the app, not yet handed back

    def receive(self, length: int) -> None:
        self.size -= length
        if self.size < 0:
            raise h2.exceptions.FlowControlError("Flow control window shrunk below 0")

    def open(self, increment: int) -> None:
        self.size += increment
        if self.size > _LARGEST_WINDOW:
            raise h2.exceptions.FlowControlError("Flow control window too large")
        self.largest = max(self.size, self.largest)

    def consume(self, length: int) -> int:
        """The increment to send now (0: none)."""
        self.consumed += length
        consumed = self.consumed
        if not consumed:
            return 0
        largest = self.largest
        if (self.size == 0 and consumed > min(1024, largest // 4)) or consumed >= largest // 2:
            increment = min(consumed, largest - self.size)
            self.consumed = 0
            self.size += increment
            return increment
        return 0


class _Stream:
    """One stream's state, windows and what the content-length rule needs."""

    __slots__ = (
        "id", "state", "client", "headers_sent", "trailers_sent", "headers_received",
        "trailers_received", "closed_by", "send_window", "inbound", "expected_length",
        "received_length", "request_method", "authority",
    )  # fmt: skip

    def __init__(self, stream_id: int, send_window: int, receive_window: int) -> None:
        self.id = stream_id
        self.state = _IDLE
        self.client: bool | None = None  # which side opened it, once known
        self.headers_sent = self.trailers_sent = False
        self.headers_received = self.trailers_received = False
        self.closed_by = 0
        self.send_window = send_window
        self.inbound = _InboundWindow(receive_window)
        self.expected_length: int | None = None
        self.received_length = 0
        self.request_method: bytes | None = None
        self.authority: bytes | None = None

    @property
    def open(self) -> bool:
        return self.state in (_OPEN, _HALF_LOCAL, _HALF_REMOTE)

    def close(self, by: int) -> None:
        self.state = _CLOSED
        self.closed_by = by

    def invalid(self, what: str) -> _ProtocolError:
        """A transition the state machine does not have: the stream closes (as h2's does,
        without saying how) and the caller raises."""
        self.state = _CLOSED
        return _ProtocolError(f"Invalid input {what} in state {self.state} of {self.id}")

    def closed_error(self) -> h2.exceptions.StreamClosedError:
        return h2.exceptions.StreamClosedError(self.id)

    def reset_on_error(self) -> h2.exceptions.StreamClosedError:
        """A frame the peer may not send now: we reset the stream (STREAM_CLOSED)."""
        self.close(_BY_SEND_RST)
        error = h2.exceptions.StreamClosedError(self.id)
        error._events = [
            h2.events.StreamReset(
                stream_id=self.id, error_code=_Codes.STREAM_CLOSED, remote_reset=False
            )
        ]
        return error

    def track_length(self, length: int, end: bool) -> None:
        self.received_length += length
        expected = self.expected_length
        if expected is not None and (
            expected < self.received_length or (end and expected != self.received_length)
        ):
            raise h2.exceptions.InvalidBodyLengthError(expected, self.received_length)

    def expect_length(self, headers: Sequence[Header]) -> None:
        """The content-length a block announces (h2 takes it from every block, trailers
        included, and none for a response to HEAD)."""
        if self.request_method == b"HEAD":
            self.expected_length = 0
            return
        length: int | None = None
        for name, value in headers:
            if name == b"content-length":
                if not value.isdigit():
                    raise _ProtocolError(f"Invalid content-length header: {value!r}")
                parsed = int(value, 10)
                if length is None:
                    length = parsed
                elif parsed != length:
                    raise _ProtocolError("Conflicting content-length headers")
        self.expected_length = length


class _Settings:
    """The peer's settings, as h2 keeps them: known ones with their defaults."""

    __slots__ = ("values",)

    def __init__(self, values: dict[int, int]) -> None:
        self.values = values

    @property
    def max_concurrent_streams(self) -> int:
        return self.values.get(_Setting.MAX_CONCURRENT_STREAMS, 2**32 + 1)

    @property
    def initial_window_size(self) -> int:
        return self.values[_Setting.INITIAL_WINDOW_SIZE]

    @property
    def max_frame_size(self) -> int:
        return self.values[_Setting.MAX_FRAME_SIZE]

    @property
    def header_table_size(self) -> int:
        return self.values[_Setting.HEADER_TABLE_SIZE]


def _defaults(client: bool) -> dict[int, int]:
    return {
        _Setting.HEADER_TABLE_SIZE: 4096,
        _Setting.ENABLE_PUSH: int(client),
        _Setting.INITIAL_WINDOW_SIZE: 65_535,
        _Setting.MAX_FRAME_SIZE: 16_384,
        _Setting.ENABLE_CONNECT_PROTOCOL: 0,
    }


def _setting_error(code: int, value: int, sender_is_client: bool) -> int:
    """The error code a received setting's value earns (0: valid)."""
    if code == _Setting.ENABLE_PUSH:
        if value not in (0, 1) or (not sender_is_client and value != 0):
            return _Codes.PROTOCOL_ERROR
    elif code == _Setting.INITIAL_WINDOW_SIZE:
        if value > _LARGEST_WINDOW:
            return _Codes.FLOW_CONTROL_ERROR
    elif code == _Setting.MAX_FRAME_SIZE:
        if not 16_384 <= value <= 16_777_215:
            return _Codes.PROTOCOL_ERROR
    elif code == _Setting.ENABLE_CONNECT_PROTOCOL and value not in (0, 1):
        return _Codes.PROTOCOL_ERROR
    return 0


_HEADER_EVENTS: dict[type[h2.events.Event], int] = {
    h2.events.RequestReceived: h2_rules.REQUEST,
    h2.events.ResponseReceived: h2_rules.RESPONSE,
    h2.events.InformationalResponseReceived: h2_rules.RESPONSE,
    h2.events.TrailersReceived: h2_rules.TRAILERS,
}


class Connection:
    """One HTTP/2 connection, client or server side, with the relay's settings.

    The subset of ``h2.connection.H2Connection`` that :class:`.h2.H2Conn` uses, with the
    same meaning: feed :meth:`receive_data` what the socket read and act on the events it
    returns; call the ``send_*`` methods; write :meth:`data_to_send`.
    """

    max_outbound_frame_size: int

    def __init__(self, *, client: bool) -> None:
        self.client = client
        self._state = _C_IDLE
        self.streams: dict[int, _Stream] = {}
        self._closed: dict[int, int] = {}  # stream id -> how it closed, once pruned
        self.highest_inbound_stream_id = 0
        self.highest_outbound_stream_id = 0
        self._encoder = h2_hpack.Encoder()  # hpack's, a table hit in one step
        self._decoder = h2_hpack.Decoder()
        self._decoder.max_header_list_size = _MAX_HEADER_LIST
        self._decoder.max_allowed_table_size = 4096
        local = _defaults(client)
        local[_Setting.ENABLE_PUSH] = 0  # a client refuses push; a server takes none
        local[_Setting.MAX_CONCURRENT_STREAMS] = _MAX_INBOUND_STREAMS
        local[_Setting.MAX_HEADER_LIST_SIZE] = _MAX_HEADER_LIST
        self._local = local
        self.remote_settings = _Settings(_defaults(not client))
        self.outbound_flow_control_window = 65_535
        self.max_outbound_frame_size = 16_384
        self._inbound = _InboundWindow(65_535)
        self._output = bytearray()
        self._input = bytearray()
        self._preface = b"" if client else _PREFACE  # what of the preface is still due
        # A header block spread over CONTINUATION frames: (type, flags, stream id,
        # priority, promised stream id) of its first frame, and its fragments.
        self._block_head: tuple[int, int, int, tuple[int, bool, int] | None, int] | None = None
        self._fragments: list[bytes] = []

    # -- connection and stream bookkeeping ---------------------------------------------------

    def _move(self, what: int) -> None:
        target = _CONNECTION_MOVES[self._state].get(what)
        if target is None:
            self._state = _C_CLOSED
            raise _ProtocolError(f"Invalid input {what} in connection state {self._state}")
        self._state = target

    def _is_outbound(self, stream_id: int) -> bool:
        return stream_id % 2 == (1 if self.client else 0)

    def _stream(self, stream_id: int) -> _Stream:
        """A stream h2 still holds; NoSuchStreamError for one never opened,
        StreamClosedError for one closed and forgotten."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            return stream
        highest = (
            self.highest_outbound_stream_id
            if self._is_outbound(stream_id)
            else self.highest_inbound_stream_id
        )
        if stream_id > highest:
            raise h2.exceptions.NoSuchStreamError(stream_id)
        raise h2.exceptions.StreamClosedError(stream_id)

    def _new_stream(self, stream_id: int, outbound: bool) -> _Stream:
        is_outbound = self._is_outbound(stream_id)
        highest = self.highest_outbound_stream_id if is_outbound else self.highest_inbound_stream_id
        if stream_id <= highest:
            raise h2.exceptions.StreamIDTooLowError(stream_id, highest)
        if is_outbound != outbound:
            raise _ProtocolError("Invalid stream ID for peer.")
        stream = _Stream(stream_id, self.remote_settings.initial_window_size, 65_535)
        self.streams[stream_id] = stream
        if is_outbound:
            self.highest_outbound_stream_id = stream_id
        else:
            self.highest_inbound_stream_id = stream_id
        return stream

    def _closed_by(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        if stream is not None:
            return stream.closed_by
        return self._closed.get(stream_id, 0)

    def _count_open(self, parity: int) -> int:
        """Open streams of one side, forgetting closed ones (as h2 does, at the same
        moments: which decides whether a late frame finds its stream)."""
        count = 0
        closed = [
            stream_id for stream_id, stream in self.streams.items() if stream.state == _CLOSED
        ]
        for stream in self.streams.values():
            if stream.state in (_OPEN, _HALF_LOCAL, _HALF_REMOTE) and stream.id % 2 == parity:
                count += 1
        for stream_id in closed:
            self._closed[stream_id] = self.streams.pop(stream_id).closed_by
            if len(self._closed) > _CLOSED_STREAMS_KEPT:
                del self._closed[next(iter(self._closed))]
        return count

    @property
    def open_outbound_streams(self) -> int:
        return self._count_open(1 if self.client else 0)

    @property
    def open_inbound_streams(self) -> int:
        return self._count_open(0 if self.client else 1)

    def _queue(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self._output += _frame(kind, flags, stream_id, payload)

    def _queue_reset(self, stream_id: int, error_code: int) -> None:
        self._queue(_RST_STREAM, 0, stream_id, int(error_code).to_bytes(4, "big"))

    def _queue_window_update(self, stream_id: int, increment: int) -> None:
        self._queue(_WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))

    def _terminate(self, error_code: int) -> None:
        self._move(_SEND_GOAWAY)
        payload = (self.highest_inbound_stream_id << 32 | int(error_code)).to_bytes(8, "big")
        self._queue(_GOAWAY, 0, 0, payload)

    # -- sending -----------------------------------------------------------------------------

    def initiate_connection(self) -> None:
        self._move(_SEND_SETTINGS)
        payload = b"".join(
            (code << 32 | value).to_bytes(6, "big") for code, value in self._local.items()
        )
        if self.client:
            self._output += _PREFACE
        self._queue(_SETTINGS, 0, 0, payload)

    def data_to_send(self) -> bytes:
        data = bytes(self._output)
        self._output.clear()
        return data

    def get_next_available_stream_id(self) -> int:
        highest = self.highest_outbound_stream_id
        next_id = highest + 2 if highest else (1 if self.client else 2)
        if next_id > _HIGHEST_STREAM_ID:
            raise h2.exceptions.NoAvailableStreamIDError("Exhausted allowed stream IDs")
        return next_id

    def send_headers(
        self, stream_id: int, headers: Sequence[Header], end_stream: bool = False
    ) -> None:
        if stream_id not in self.streams:
            limit = self.remote_settings.max_concurrent_streams
            if self.open_outbound_streams + 1 > limit:
                raise h2.exceptions.TooManyStreamsError(f"Max outbound streams is {limit}")
        self._move(_SEND_HEADERS)
        stream = self.streams.get(stream_id) or self._new_stream(stream_id, outbound=True)
        self._stream_sends_headers(stream, headers, end_stream)

    def _stream_sends_headers(
        self, stream: _Stream, headers: Sequence[Header], end_stream: bool
    ) -> None:
        informational = not stream.client and _is_informational(headers)
        if informational and end_stream:
            raise _ProtocolError("Cannot set END_STREAM on informational responses.")
        state = stream.state
        if informational:
            if state not in (_OPEN, _HALF_REMOTE):
                raise stream.invalid("SEND_INFORMATIONAL_HEADERS")
            if stream.headers_sent:
                stream.state = _CLOSED
                raise _ProtocolError("Information response after final response")
        elif state == _CLOSED:
            raise stream.closed_error()
        elif state == _IDLE:
            stream.state = _OPEN
            stream.client = True
            stream.headers_sent = True
        elif state in (_OPEN, _HALF_REMOTE):
            if not stream.headers_sent:
                if stream.client is not False:
                    stream.state = _CLOSED
                    raise _ProtocolError("Client cannot send responses.")
                stream.headers_sent = True
            elif stream.trailers_sent:
                stream.state = _CLOSED
                raise _ProtocolError("a second trailers block")
            else:
                stream.trailers_sent = True
        else:
            raise stream.invalid("SEND_HEADERS")
        block = self._encoder.encode(headers, huffman=False)
        size = self.max_outbound_frame_size
        pieces = [block[i : i + size] for i in range(0, len(block), size)] or [b""]
        if end_stream:
            self._stream_sends_end(stream)
        if stream.trailers_sent and not end_stream:
            raise _ProtocolError("Trailers must have END_STREAM set")
        if stream.client and stream.authority is None:
            stream.authority = _pseudo(headers, b":authority")
        stream.request_method = _pseudo(headers, b":method")
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            flags = _END_HEADERS if i == last else 0
            if i == 0:
                self._queue(_HEADERS, flags | (_END_STREAM if end_stream else 0), stream.id, piece)
            else:
                self._queue(_CONTINUATION, flags, stream.id, piece)

    def _stream_sends_end(self, stream: _Stream) -> None:
        state = stream.state
        if state == _OPEN:
            stream.state = _HALF_LOCAL
        elif state == _HALF_REMOTE:
            stream.close(_BY_SEND_END)
        elif state == _CLOSED:
            raise stream.closed_error()
        else:
            raise stream.invalid("SEND_END_STREAM")

    def local_flow_control_window(self, stream_id: int) -> int:
        stream = self._stream(stream_id)
        return min(self.outbound_flow_control_window, stream.send_window)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        size = len(data)
        if size > 0 and size > self.local_flow_control_window(stream_id):
            raise h2.exceptions.FlowControlError("Cannot send data larger than the window")
        if size > self.max_outbound_frame_size:
            raise h2.exceptions.FrameTooLargeError("Cannot send frame larger than allowed")
        self._move(_SEND_DATA)
        stream = self.streams[stream_id]
        state = stream.state
        if state == _CLOSED:
            raise stream.closed_error()
        if state not in (_OPEN, _HALF_REMOTE):
            raise stream.invalid("SEND_DATA")
        if end_stream:
            self._stream_sends_end(stream)
        stream.send_window -= size
        self._queue(_DATA, _END_STREAM if end_stream else 0, stream_id, data)
        self.outbound_flow_control_window -= size

    def end_stream(self, stream_id: int) -> None:
        self._move(_SEND_DATA)
        stream = self._stream(stream_id)
        self._stream_sends_end(stream)
        self._queue(_DATA, _END_STREAM, stream_id)

    def increment_flow_control_window(self, increment: int, stream_id: int | None = None) -> None:
        if not 1 <= increment <= _LARGEST_WINDOW:
            raise ValueError("Flow control increment must be between 1 and 2^31-1")
        self._move(_SEND_WINDOW_UPDATE)
        if stream_id is None:
            self._inbound.open(increment)
            self._queue_window_update(0, increment)
            return
        stream = self.streams[stream_id]
        if stream.state == _CLOSED:
            raise stream.closed_error()
        if stream.state == _IDLE:
            raise stream.invalid("SEND_WINDOW_UPDATE")
        stream.inbound.open(increment)
        self._queue_window_update(stream_id, increment)

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        if stream_id <= 0:
            raise ValueError(f"Stream ID {stream_id} is not valid")
        if acknowledged_size < 0:
            raise ValueError(f"Cannot acknowledge negative data {acknowledged_size}")
        increment = self._inbound.consume(acknowledged_size)
        if increment:
            self._queue_window_update(0, increment)
        try:
            stream = self._stream(stream_id)
        except h2.exceptions.StreamClosedError:
            return
        if stream.open:
            increment = stream.inbound.consume(acknowledged_size)
            if increment:
                self._queue_window_update(stream_id, increment)

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        self._move(_SEND_RST_STREAM)
        stream = self._stream(stream_id)
        self._stream_sends_reset(stream)
        self._queue_reset(stream_id, error_code)

    def _stream_sends_reset(self, stream: _Stream) -> None:
        if stream.state == _CLOSED:
            raise stream.closed_error()
        if stream.state == _IDLE:
            raise stream.invalid("SEND_RST_STREAM")
        stream.close(_BY_SEND_RST)

    def close_connection(self, error_code: int = 0) -> None:
        self._terminate(error_code)

    # -- receiving ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[h2.events.Event]:
        """The events ``data`` completes; ``h2.exceptions.ProtocolError`` (GOAWAY queued,
        but for a bad preface) when the peer broke the protocol."""
        if self._preface:
            data = self._strip_preface(data)
        self._input += data
        events: list[h2.events.Event] = []
        try:
            self._receive_frames(events)
        except _ProtocolError as error:
            self._terminate(error.error_code)
            raise
        return events

    def _strip_preface(self, data: bytes) -> bytes:
        due = self._preface
        seen = min(len(due), len(data))
        if data[:seen] != due[:seen]:
            raise _ProtocolError("Invalid HTTP/2 preamble.")  # no GOAWAY: not HTTP/2
        self._preface = due[seen:]
        return data[seen:]

    def _receive_frames(self, events: list[h2.events.Event]) -> None:
        # Frames are read at an offset and the buffer cut once: cutting it per frame moved
        # the rest of a read's bytes again for every small frame in it.
        buffer = self._input
        at, size = 0, len(buffer)
        try:
            while size - at >= 9:
                length = buffer[at] << 16 | buffer[at + 1] << 8 | buffer[at + 2]
                kind, flags = buffer[at + 3], buffer[at + 4]
                stream_id = int.from_bytes(buffer[at + 5 : at + 9], "big") & 0x7FFF_FFFF
                if (stream_id == 0 and kind in _NEEDS_STREAM) or (stream_id and kind in _NO_STREAM):
                    raise _ProtocolError("Received frame with invalid header")
                if length > _MAX_INBOUND_FRAME:
                    # Refused on its header, where h2 buffers the frame (up to 16 MiB) and
                    # refuses it once it is all there: a peer could make every connection
                    # hold that much. (The differential test knows this difference.)
                    raise h2.exceptions.FrameTooLargeError(f"Received overlong frame: {length}")
                if size - at < 9 + length:
                    return
                body = bytes(buffer[at + 9 : at + 9 + length])
                at += 9 + length
                self._receive_frame(kind, flags, stream_id, body, events)
        finally:
            del buffer[:at]

    def _receive_frame(
        self, kind: int, flags: int, stream_id: int, body: bytes, events: list[h2.events.Event]
    ) -> None:
        """Parse one frame's payload (refusing it as hyperframe would), then act on it,
        with h2's answer to a frame on a closed stream: RST_STREAM when we reset it, a
        connection error when it ended."""
        if kind == _DATA:
            parsed: tuple[Any, ...] = self._parse_data(flags, body)
        elif kind == _HEADERS:
            parsed = self._parse_headers(flags, body)
        elif kind == _PRIORITY:
            if len(body) != 5:
                raise _frame_size_error("PRIORITY")
            parsed = (_parse_priority(body),)
        elif kind == _RST_STREAM:
            if len(body) != 4:
                raise _frame_size_error("RST_STREAM")
            parsed = (int.from_bytes(body, "big"),)
        elif kind == _SETTINGS:
            parsed = (_parse_settings(flags, body),)
        elif kind == _PUSH_PROMISE:
            parsed = _parse_push_promise(flags, body)
        elif kind == _PING:
            if len(body) != 8:
                raise _frame_size_error("PING")
            parsed = (body,)
        elif kind == _GOAWAY:
            if len(body) < 8:
                raise _frame_size_error("GOAWAY")
            parsed = (body,)
        elif kind == _WINDOW_UPDATE:
            parsed = (_parse_window_update(body),)
        elif kind == _ALTSVC:
            parsed = _parse_altsvc(body)
        else:
            parsed = (body,)
        if self._block_head is not None:
            if kind != _CONTINUATION or stream_id != self._block_head[2]:
                raise _ProtocolError("Invalid frame during header block.")
            self._fragments.append(body)
            if len(self._fragments) > _CONTINUATION_BACKLOG:
                raise _ProtocolError("Too many continuation frames received.")
            if not flags & _END_HEADERS:
                return
            kind, flags, stream_id, priority, promised = self._block_head
            block = b"".join(self._fragments)
            self._block_head, self._fragments = None, []
            parsed = (block, priority) if kind == _HEADERS else (promised, block)
        elif kind in (_HEADERS, _PUSH_PROMISE) and not flags & _END_HEADERS:
            if kind == _HEADERS:
                self._block_head = (kind, flags, stream_id, parsed[1], 0)
                self._fragments = [parsed[0]]
            else:
                self._block_head = (kind, flags, stream_id, None, parsed[0])
                self._fragments = [parsed[1]]
            return
        try:
            events += self._dispatch(kind, flags, stream_id, parsed)
        except h2.exceptions.StreamClosedError as error:
            if self._closed_by(error.stream_id) not in (_BY_SEND_RST, _BY_RECV_RST):
                raise
            self._queue_reset(error.stream_id, error.error_code)
            events += error._events
        except h2.exceptions.StreamIDTooLowError as error:
            closed_by = self._closed_by(error.stream_id)
            if closed_by in (_BY_SEND_RST, _BY_RECV_RST):
                self._queue_reset(error.stream_id, _Codes.STREAM_CLOSED)
            elif closed_by in (_BY_SEND_END, _BY_RECV_END):
                raise h2.exceptions.StreamClosedError(error.stream_id) from error
            else:
                raise

    def _parse_data(self, flags: int, body: bytes) -> tuple[bytes, int]:
        """A DATA frame's data and flow-controlled length."""
        if not flags & _PADDED:
            return body, len(body)
        if not body:
            raise _frame_size_error("DATA")
        pad = body[0]
        if pad and pad >= len(body):
            raise _ProtocolError("Received frame with invalid padding.")
        data = body[1 : len(body) - pad]
        return data, len(data) + pad + 1

    def _parse_headers(self, flags: int, body: bytes) -> tuple[bytes, tuple[int, bool, int] | None]:
        """A HEADERS frame's block fragment and priority (None without the flag)."""
        pad = 0
        if flags & _PADDED:
            if not body:
                raise _frame_size_error("HEADERS")
            pad = body[0]
            body = body[1:]
        priority = None
        start = 0
        if flags & _PRIORITY_FLAG:
            if len(body) < 5:
                raise _frame_size_error("HEADERS")
            priority = _parse_priority(body)
            start = 5
        fragment = body[start : len(body) - pad]
        if pad and pad >= len(body):
            raise _ProtocolError("Received frame with invalid padding.")
        return fragment, priority

    def _dispatch(
        self, kind: int, flags: int, stream_id: int, parsed: tuple[Any, ...]
    ) -> list[h2.events.Event]:
        if kind == _DATA:
            return self._on_data(stream_id, flags, *parsed)
        if kind == _HEADERS:
            return self._on_headers(stream_id, flags, *parsed)
        if kind == _WINDOW_UPDATE:
            return self._on_window_update(stream_id, parsed[0])
        if kind == _SETTINGS:
            return self._on_settings(flags, parsed[0])
        if kind == _RST_STREAM:
            return self._on_rst_stream(stream_id, parsed[0])
        if kind == _PING:
            return self._on_ping(flags, parsed[0])
        if kind == _PRIORITY:
            self._move(_RECV_PRIORITY)
            return [_priority_event(stream_id, parsed[0])]
        if kind == _GOAWAY:
            return self._on_goaway(parsed[0])
        if kind == _PUSH_PROMISE:
            raise _ProtocolError("Received pushed stream")  # ENABLE_PUSH is 0, either side
        if kind == _CONTINUATION:
            return self._on_naked_continuation(stream_id)
        if kind == _ALTSVC:
            return self._on_altsvc(stream_id, *parsed)
        return [_unknown_frame(kind, flags, stream_id, parsed[0])]

    def _on_data(
        self, stream_id: int, flags: int, data: bytes, flow_length: int
    ) -> list[h2.events.Event]:
        self._move(_RECV_DATA)
        self._inbound.receive(flow_length)
        end = bool(flags & _END_STREAM)
        try:
            stream = self._stream(stream_id)
            return self._stream_receives_data(stream, data, flow_length, end)
        except h2.exceptions.StreamClosedError as error:
            # h2 answers DATA on any closed stream with RST_STREAM (not a connection
            # error), and hands the connection window back at once.
            increment = self._inbound.consume(flow_length)
            if increment:
                self._queue_window_update(0, increment)
            self._queue_reset(error.stream_id, error.error_code)
            return list(error._events)

    def _stream_receives_data(
        self, stream: _Stream, data: bytes, flow_length: int, end: bool
    ) -> list[h2.events.Event]:
        state = stream.state
        if state in (_OPEN, _HALF_LOCAL):
            if not stream.headers_received:
                stream.state = _CLOSED
                raise _ProtocolError("cannot receive data before headers")
        elif state == _CLOSED:
            raise stream.closed_error()
        else:  # idle, or the peer had ended its side
            raise stream.reset_on_error()
        stream.inbound.receive(flow_length)
        stream.track_length(len(data), end)
        event = h2.events.DataReceived(
            stream_id=stream.id, data=data, flow_controlled_length=flow_length
        )
        if not end:
            return [event]
        ended = self._stream_receives_end(stream)
        event.stream_ended = ended
        return [event, ended]

    def _stream_receives_end(self, stream: _Stream) -> h2.events.StreamEnded:
        if stream.state == _OPEN:
            stream.state = _HALF_REMOTE
        else:  # half closed (local): data_received and headers allow no other state here
            stream.close(_BY_RECV_END)
        return h2.events.StreamEnded(stream_id=stream.id)

    def _decode(self, block: bytes) -> list[Header]:
        try:
            return self._decoder.decode(block, raw=True)  # type: ignore[no-any-return]
        except OversizedHeaderListError as error:
            raise h2.exceptions.DenialOfServiceError(f"Oversized header block: {error}") from error
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as error:
            raise _ProtocolError(f"Error decoding header block: {error}") from error

    def _on_headers(
        self, stream_id: int, flags: int, block: bytes, priority: tuple[int, bool, int] | None
    ) -> list[h2.events.Event]:
        if stream_id not in self.streams and self.open_inbound_streams + 1 > _MAX_INBOUND_STREAMS:
            raise h2.exceptions.TooManyStreamsError("Max inbound streams is 100")
        headers = self._decode(block)
        self._move(_RECV_HEADERS)
        stream = self.streams.get(stream_id) or self._new_stream(stream_id, outbound=False)
        events = self._stream_receives_headers(stream, headers, bool(flags & _END_STREAM))
        if priority is not None:
            self._move(_RECV_PRIORITY)
            updated = _priority_event(stream_id, priority)
            events[0].priority_updated = updated  # type: ignore[attr-defined]
            events.append(updated)
        first = events[0]
        first.headers = h2_rules.checked(  # type: ignore[attr-defined]
            first.headers,  # type: ignore[attr-defined]
            _HEADER_EVENTS[type(first)],
        )
        return events

    def _stream_receives_headers(
        self, stream: _Stream, headers: list[Header], end: bool
    ) -> list[h2.events.Event]:
        state = stream.state
        event: Any
        if _is_informational(headers):
            if end:
                raise _ProtocolError("Cannot set END_STREAM on informational responses")
            if state not in (_OPEN, _HALF_LOCAL):
                raise stream.invalid("RECV_INFORMATIONAL_HEADERS")  # closed ones too
            if stream.headers_received:
                stream.state = _CLOSED
                raise _ProtocolError("Informational response after final response")
            event = h2.events.InformationalResponseReceived(stream_id=stream.id)
        elif state == _IDLE:
            stream.state = _OPEN
            stream.client = False
            stream.headers_received = True
            event = h2.events.RequestReceived(stream_id=stream.id)
        elif state in (_OPEN, _HALF_LOCAL):
            if not stream.headers_received:
                if stream.client is not True:
                    stream.state = _CLOSED
                    raise _ProtocolError("a response on a stream we did not open")
                stream.headers_received = True
                event = h2.events.ResponseReceived(stream_id=stream.id)
            else:
                if stream.trailers_received:
                    stream.state = _CLOSED
                    raise _ProtocolError("a second trailers block")
                stream.trailers_received = True
                event = h2.events.TrailersReceived(stream_id=stream.id)
        elif state == _HALF_REMOTE:
            raise stream.reset_on_error()
        else:
            raise stream.closed_error()
        events: list[h2.events.Event] = [event]
        if end:
            ended = self._stream_receives_end(stream)
            event.stream_ended = ended
            events.append(ended)
        stream.expect_length(headers)
        if type(event) is h2.events.TrailersReceived and not end:
            raise _ProtocolError("Trailers must have END_STREAM set")
        event.headers = headers
        return events

    def _live(
        self, stream_id: int, frame: str, gone: type[h2.exceptions.NoSuchStreamError]
    ) -> _Stream | None:
        """The stream a WINDOW_UPDATE or RST_STREAM names; None when there is nothing to do
        (forgotten with ``gone`` raised, or closed); a connection error for an idle one."""
        try:
            stream = self._stream(stream_id)
        except gone:
            return None
        if stream.state == _IDLE:
            raise stream.invalid(frame)
        return None if stream.state == _CLOSED else stream

    def _on_window_update(self, stream_id: int, increment: int) -> list[h2.events.Event]:
        self._move(_RECV_WINDOW_UPDATE)
        if not stream_id:
            window = self.outbound_flow_control_window + increment
            if window > _LARGEST_WINDOW:
                raise h2.exceptions.FlowControlError("Window increment past 2^31-1")
            self.outbound_flow_control_window = window
            return [h2.events.WindowUpdated(stream_id=0, delta=increment)]
        stream = self._live(stream_id, "RECV_WINDOW_UPDATE", h2.exceptions.StreamClosedError)
        if stream is None:
            return []
        window = stream.send_window + increment
        if window > _LARGEST_WINDOW:  # a stream error: that stream is reset
            stream.close(_BY_SEND_RST)
            self._queue_reset(stream_id, _Codes.FLOW_CONTROL_ERROR)
            return [
                h2.events.StreamReset(
                    stream_id=stream_id,
                    error_code=_Codes.FLOW_CONTROL_ERROR,
                    remote_reset=False,
                )
            ]
        stream.send_window = window
        return [h2.events.WindowUpdated(stream_id=stream_id, delta=increment)]

    def _on_settings(self, flags: int, settings: dict[int, int]) -> list[h2.events.Event]:
        self._move(_RECV_SETTINGS)
        if flags & _ACK:
            acknowledged = h2.events.SettingsAcknowledged()
            acknowledged.changed_settings = {}  # ours took effect when sent
            return [acknowledged]
        for code, value in settings.items():
            error = _setting_error(code, value, sender_is_client=not self.client)
            if error:
                raise h2.exceptions.InvalidSettingsValueError(
                    f"Setting {code} has invalid value {value}", error_code=_Codes(error)
                )
        remote = self.remote_settings.values
        changed = h2.events.RemoteSettingsChanged()
        for code, value in settings.items():
            setting = _setting_code(code)
            changed.changed_settings[setting] = h2.settings.ChangedSetting(
                setting, remote.get(code), value
            )
        self._apply_remote_settings(settings)
        self._queue(_SETTINGS, _ACK, 0)
        return [changed]

    def _apply_remote_settings(self, settings: dict[int, int]) -> None:
        remote = self.remote_settings.values
        old_window = remote.get(_Setting.INITIAL_WINDOW_SIZE)
        remote.update(settings)
        if _Setting.INITIAL_WINDOW_SIZE in settings:
            delta = settings[_Setting.INITIAL_WINDOW_SIZE] - (old_window or 0)
            for stream in self.streams.values():
                window = stream.send_window + delta
                if window > _LARGEST_WINDOW:
                    raise h2.exceptions.FlowControlError("Window increment past 2^31-1")
                stream.send_window = window
        if _Setting.HEADER_TABLE_SIZE in settings:
            self._encoder.header_table_size = settings[_Setting.HEADER_TABLE_SIZE]
        if _Setting.MAX_FRAME_SIZE in settings:
            self.max_outbound_frame_size = settings[_Setting.MAX_FRAME_SIZE]

    def _on_rst_stream(self, stream_id: int, code: int) -> list[h2.events.Event]:
        self._move(_RECV_RST_STREAM)
        stream = self._live(stream_id, "RECV_RST_STREAM", h2.exceptions.NoSuchStreamError)
        if stream is None:
            return []
        stream.close(_BY_RECV_RST)
        return [h2.events.StreamReset(stream_id=stream_id, error_code=_error_code(code))]

    def _on_ping(self, flags: int, opaque: bytes) -> list[h2.events.Event]:
        self._move(_RECV_PING)
        if flags & _ACK:
            return [h2.events.PingAckReceived(ping_data=opaque)]
        self._queue(_PING, _ACK, 0, opaque)
        return [h2.events.PingReceived(ping_data=opaque)]

    def _on_goaway(self, body: bytes) -> list[h2.events.Event]:
        self._move(_RECV_GOAWAY)
        self._output.clear()  # h2 drops what it had not sent yet
        terminated = h2.events.ConnectionTerminated()
        terminated.error_code = _error_code(int.from_bytes(body[4:8], "big"))
        terminated.last_stream_id = int.from_bytes(body[:4], "big")
        terminated.additional_data = body[8:] or None
        return [terminated]

    def _on_naked_continuation(self, stream_id: int) -> list[h2.events.Event]:
        stream = self._stream(stream_id)
        raise stream.invalid("RECV_CONTINUATION")

    def _on_altsvc(self, stream_id: int, origin: bytes, value: bytes) -> list[h2.events.Event]:
        self._move(_RECV_ALTSVC)
        if not stream_id:
            if not origin or not self.client:
                return []
            available = h2.events.AlternativeServiceAvailable()
            available.origin, available.field_value = origin, value
            return [available]
        try:
            stream = self._stream(stream_id)
        except h2.exceptions.NoSuchStreamError:
            return []
        closed = stream.state in (_IDLE, _CLOSED)
        if origin or stream.client is False or stream.headers_received or closed:
            return []
        available = h2.events.AlternativeServiceAvailable()
        available.origin, available.field_value = stream.authority, value
        return [available]


def _parse_priority(body: bytes) -> tuple[int, bool, int]:
    """(depends on, exclusive, weight as sent: one less than the weight)."""
    dependency = int.from_bytes(body[:4], "big")
    return dependency & 0x7FFF_FFFF, bool(dependency >> 31), body[4]


def _priority_event(stream_id: int, priority: tuple[int, bool, int]) -> h2.events.PriorityUpdated:
    depends_on, exclusive, weight = priority
    updated = h2.events.PriorityUpdated()
    updated.stream_id, updated.depends_on = stream_id, depends_on
    updated.exclusive, updated.weight = exclusive, weight + 1
    if depends_on == stream_id:
        raise _ProtocolError(f"Stream {stream_id} may not depend on itself")
    return updated


def _parse_settings(flags: int, body: bytes) -> dict[int, int]:
    if flags & _ACK:
        if body:
            raise _ProtocolError("SETTINGS ack frame must not have payload")
        return {}
    if len(body) % 6:
        raise _frame_size_error("SETTINGS")
    return {
        int.from_bytes(body[i : i + 2], "big"): int.from_bytes(body[i + 2 : i + 6], "big")
        for i in range(0, len(body), 6)
    }


def _parse_push_promise(flags: int, body: bytes) -> tuple[int, bytes]:
    """Checked as hyperframe checks it, though h2 refuses every push after that."""
    start = pad = 0
    if flags & _PADDED:
        if not body:
            raise _frame_size_error("PUSH_PROMISE")
        pad, start = body[0], 1
    if len(body) < start + 4:
        raise _frame_size_error("PUSH_PROMISE")
    promised = int.from_bytes(body[start : start + 4], "big")
    fragment = body[start + 4 : len(body) - pad]
    if promised == 0 or promised % 2:
        raise _ProtocolError(f"Invalid PUSH_PROMISE promised stream id: {promised}")
    if pad and pad >= len(body):
        raise _ProtocolError("Received frame with invalid padding.")
    return promised, fragment


def _parse_window_update(body: bytes) -> int:
    if len(body) != 4:
        raise _frame_size_error("WINDOW_UPDATE")
    increment = int.from_bytes(body, "big")
    if not 1 <= increment <= _LARGEST_WINDOW:
        raise _ProtocolError("WINDOW_UPDATE increment must be between 1 to 2^31-1")
    return increment


def _parse_altsvc(body: bytes) -> tuple[bytes, bytes]:
    if len(body) < 2:
        raise _frame_size_error("ALTSVC")
    length = int.from_bytes(body[:2], "big")
    origin = body[2 : 2 + length]
    if len(origin) != length:
        raise _frame_size_error("ALTSVC")
    return origin, body[2 + length :]


def _unknown_frame(kind: int, flags: int, stream_id: int, body: bytes) -> h2.events.Event:
    """An extension frame, ignored but reported as h2 reports it."""
    import hyperframe.frame  # only for frames nobody sends the relay

    frame = hyperframe.frame.ExtensionFrame(type=kind, stream_id=stream_id, flag_byte=flags)
    frame.body = body
    return h2.events.UnknownFrameReceived(frame=frame)
