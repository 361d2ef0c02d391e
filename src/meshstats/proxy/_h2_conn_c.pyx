"""The sidecar's HTTP/2 connection, compiled; the same API as ``_h2_conn_py``.

>>> server, client = Connection(client=False), Connection(client=True)
>>> client.initiate_connection(); server.initiate_connection()
>>> client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"),
...                         (b":path", b"/"), (b":authority", b"a")], end_stream=True)
>>> [type(event).__name__ for event in server.receive_data(client.data_to_send())]
['RemoteSettingsChanged', 'RequestReceived', 'StreamEnded']

A port of the pure twin (``_h2_conn_py.py``: read that one first, it says what each step
is for and where it follows h2), with the connection, its streams and their windows as C
structures and the frames split on a pointer into the buffer. Compiled because the twin's
Python steps were most of what an HTTP/2 stream cost a sidecar beyond what HTTP/1.1 costs
(``benchmarks/bench_h2_codec.py``). HPACK (``h2_hpack``) and the received blocks' rules
(``h2_rules``) are the twin's own Python; the events and exceptions are h2's, made the
same way, so ``tests/test_proxy_h2codec.py`` holds both backends to h2 itself.

Windows and stream ids are 64-bit integers: every value that reaches them is bounded by
the protocol (31 bits) before it is added.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE
from libc.string cimport memcmp, memcpy

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack.exceptions import HPACKError, OversizedHeaderListError

from . import _h2_conn_py, h2_hpack, h2_rules
# The rare frames' parsers and the settings' helpers are the twin's own Python: only the
# steps of every stream are ported.
from ._h2_conn_py import (
    _defaults,
    _error_code,
    _frame_size_error,
    _parse_altsvc,
    _parse_priority,
    _parse_push_promise,
    _parse_settings,
    _parse_window_update,
    _priority_event,
    _setting_code,
    _setting_error,
    _Settings,
    _unknown_frame,
)

__all__ = ["Connection", "checked"]

cdef object _Codes = h2.errors.ErrorCodes
cdef object _Setting = h2.settings.SettingCodes
cdef object _ProtocolError = h2.exceptions.ProtocolError
cdef object _StreamClosedError = h2.exceptions.StreamClosedError
cdef object _NoSuchStreamError = h2.exceptions.NoSuchStreamError
cdef object _StreamIDTooLowError = h2.exceptions.StreamIDTooLowError
cdef object _FlowControlError = h2.exceptions.FlowControlError
cdef object _checked_py = h2_rules.checked
cdef int _REQUEST = h2_rules.REQUEST
cdef int _RESPONSE = h2_rules.RESPONSE
cdef int _TRAILERS = h2_rules.TRAILERS
cdef frozenset _CONNECTION_FIELDS = h2_rules._CONNECTION

cdef object _RequestReceived = h2.events.RequestReceived
cdef object _ResponseReceived = h2.events.ResponseReceived
cdef object _InformationalResponseReceived = h2.events.InformationalResponseReceived
cdef object _TrailersReceived = h2.events.TrailersReceived
cdef object _DataReceived = h2.events.DataReceived
cdef object _StreamEnded = h2.events.StreamEnded
cdef object _StreamReset = h2.events.StreamReset
cdef object _WindowUpdated = h2.events.WindowUpdated

cdef bytes _PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
cdef long long _LARGEST_WINDOW = 2**31 - 1
cdef long long _HIGHEST_STREAM_ID = 2**31 - 1
cdef long long _MAX_INBOUND_FRAME = 16_384
cdef int _MAX_INBOUND_STREAMS = 100
cdef int _MAX_HEADER_LIST = 1 << 16
cdef Py_ssize_t _CONTINUATION_BACKLOG = 64
cdef Py_ssize_t _CLOSED_STREAMS_KEPT = 2**16

# Frame types (RFC 9113 §6) and flags.
cdef enum:
    _DATA = 0x0
    _HEADERS = 0x1
    _PRIORITY = 0x2
    _RST_STREAM = 0x3
    _SETTINGS = 0x4
    _PUSH_PROMISE = 0x5
    _PING = 0x6
    _GOAWAY = 0x7
    _WINDOW_UPDATE = 0x8
    _CONTINUATION = 0x9
    _ALTSVC = 0xA
    _END_STREAM = 0x1
    _ACK = 0x1
    _END_HEADERS = 0x4
    _PADDED = 0x8
    _PRIORITY_FLAG = 0x20

# Connection states and inputs, as the twin numbers them.
cdef enum:
    _C_IDLE = 0
    _C_CLIENT_OPEN = 1
    _C_SERVER_OPEN = 2
    _C_CLOSED = 3
    _SEND_HEADERS = 0
    _SEND_PUSH_PROMISE = 1
    _SEND_DATA = 2
    _SEND_GOAWAY = 3
    _SEND_WINDOW_UPDATE = 4
    _SEND_PING = 5
    _SEND_SETTINGS = 6
    _SEND_RST_STREAM = 7
    _SEND_PRIORITY = 8
    _SEND_ALTSVC = 9
    _RECV_HEADERS = 10
    _RECV_PUSH_PROMISE = 11
    _RECV_DATA = 12
    _RECV_GOAWAY = 13
    _RECV_WINDOW_UPDATE = 14
    _RECV_PING = 15
    _RECV_SETTINGS = 16
    _RECV_RST_STREAM = 17
    _RECV_PRIORITY = 18
    _RECV_ALTSVC = 19

# Stream states and how a stream was closed.
cdef enum:
    _IDLE = 0
    _OPEN = 1
    _HALF_LOCAL = 2
    _HALF_REMOTE = 3
    _CLOSED = 4
    _BY_SEND_RST = 1
    _BY_RECV_RST = 2
    _BY_SEND_END = 3
    _BY_RECV_END = 4

# The connection's moves, as a table: _MOVES[state][input] is the next state, or -1.
cdef signed char _MOVES[4][20]


cdef void _fill_moves():
    """The twin's table of moves (``_CONNECTION_MOVES``), as C arrays; the numbering of
    states and inputs above is the twin's, which ``_check_numbering`` holds."""
    cdef int state, what
    for state in range(4):
        for what in range(20):
            _MOVES[state][what] = -1
    for state, moves in _h2_conn_py._CONNECTION_MOVES.items():
        for what, target in moves.items():
            _MOVES[state][what] = target


def _check_numbering():
    twin = _h2_conn_py
    ours = {
        "_C_CLOSED": _C_CLOSED, "_SEND_ALTSVC": _SEND_ALTSVC, "_RECV_ALTSVC": _RECV_ALTSVC,
        "_RECV_HEADERS": _RECV_HEADERS, "_CLOSED": _CLOSED, "_BY_RECV_END": _BY_RECV_END,
        "_ALTSVC": _ALTSVC, "_PRIORITY_FLAG": _PRIORITY_FLAG,
    }
    for name, value in ours.items():
        if getattr(twin, name) != value:
            raise ImportError(f"_h2_conn_c numbers {name} unlike its twin")


_check_numbering()
_fill_moves()


cdef bytes _frame(int kind, int flags, long long stream_id, bytes payload):
    cdef Py_ssize_t length = len(payload)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 9 + length)
    cdef unsigned char* p = <unsigned char*><char*>out
    p[0] = (length >> 16) & 0xFF
    p[1] = (length >> 8) & 0xFF
    p[2] = length & 0xFF
    p[3] = kind
    p[4] = flags
    p[5] = (stream_id >> 24) & 0xFF
    p[6] = (stream_id >> 16) & 0xFF
    p[7] = (stream_id >> 8) & 0xFF
    p[8] = stream_id & 0xFF
    if length:
        memcpy(p + 9, <const char*>payload, length)
    return out


cdef bint _is_informational(list headers) except -1:
    for header in headers:
        name = header[0]
        if name[:1] != b":":
            return False
        if name == b":status":
            return header[1][:1] == b"1"
    return False


cdef object _pseudo(list headers, bytes wanted):
    for header in headers:
        if header[0] == wanted:
            return header[1]
    return None


# -- a received block's rules (h2_rules.checked), the common case in C ----------------------

# The pseudo-headers, as bits: which were seen in a block.
cdef enum:
    _P_METHOD = 1
    _P_SCHEME = 2
    _P_AUTHORITY = 4
    _P_PATH = 8
    _P_STATUS = 16
    _P_PROTOCOL = 32
    _P_REQUEST_ONLY = _P_METHOD | _P_SCHEME | _P_AUTHORITY | _P_PATH | _P_PROTOCOL


cdef inline int _pseudo_bit(const char* name, Py_ssize_t size):
    """The bit of a pseudo-header's name (with its colon); 0 for any other."""
    if size == 5 and memcmp(name, b":path", 5) == 0:
        return _P_PATH
    if size == 7:
        if memcmp(name, b":method", 7) == 0:
            return _P_METHOD
        if memcmp(name, b":scheme", 7) == 0:
            return _P_SCHEME
        if memcmp(name, b":status", 7) == 0:
            return _P_STATUS
    if size == 9 and memcmp(name, b":protocol", 9) == 0:
        return _P_PROTOCOL
    if size == 10 and memcmp(name, b":authority", 10) == 0:
        return _P_AUTHORITY
    return 0


cdef inline bint _good_value(const unsigned char* value, Py_ssize_t size):
    """No NUL, LF or CR; neither starts nor ends with SP or HTAB."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if size and (
        value[0] == 32 or value[0] == 9 or value[size - 1] == 32 or value[size - 1] == 9
    ):
        return False
    for i in range(size):
        c = value[i]
        if c == 0 or c == 10 or c == 13:
            return False
    return True


cdef inline bint _good_name(const unsigned char* name, Py_ssize_t size):
    """A regular field name: visible ASCII, no upper case, no colon, not empty."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if not size:
        return False
    for i in range(size):
        c = name[i]
        if c <= 0x20 or c == 0x3A or 0x41 <= c <= 0x5A or c >= 0x7F:
            return False
    return True


def checked(headers, int kind):
    """``h2_rules.checked``: ``headers`` as h2 would hand them on, or h2's refusal.

    A block that passes every rule here (bytes fields, no ``cookie``) is returned as the
    twin returns it; anything else, a refusal or an unusual block, is handed to the twin,
    which refuses it with its own message or takes it: so this can only be stricter than
    needed about what it takes itself, never more lenient than the twin.
    """
    return _checked(headers, kind)


cdef object _checked(object headers, int kind):
    if type(headers) is not list:
        return _checked_py(headers, kind)
    cdef int seen = 0, bit
    cdef bint regular = False
    cdef object method = None, authority = None, host = None
    cdef object name, value
    cdef const char* raw
    cdef Py_ssize_t size
    for header in <list>headers:
        if not PyTuple_Check(header) or PyTuple_GET_SIZE(header) != 2:
            return _checked_py(headers, kind)
        name, value = header
        if not PyBytes_CheckExact(name) or not PyBytes_CheckExact(value):
            return _checked_py(headers, kind)
        if not _good_value(
            <const unsigned char*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value)
        ):
            return _checked_py(headers, kind)
        raw = PyBytes_AS_STRING(name)
        size = PyBytes_GET_SIZE(name)
        if size and raw[0] == 0x3A:  # a colon: a pseudo-header
            bit = _pseudo_bit(raw, size)
            if not bit or seen & bit or regular:
                return _checked_py(headers, kind)
            seen |= bit
            if bit == _P_METHOD:
                method = value
            elif bit == _P_AUTHORITY:
                authority = value
            elif bit == _P_PATH and not PyBytes_GET_SIZE(value) and kind == _REQUEST:
                return _checked_py(headers, kind)
            continue
        regular = True
        if not _good_name(<const unsigned char*>raw, size) or name in _CONNECTION_FIELDS:
            return _checked_py(headers, kind)
        if size == 6 and memcmp(raw, b"cookie", 6) == 0:
            return _checked_py(headers, kind)  # joined and moved: the twin's work
        if size == 2 and memcmp(raw, b"te", 2) == 0:
            if value.lower() != b"trailers":
                return _checked_py(headers, kind)
        elif size == 4 and memcmp(raw, b"host", 4) == 0 and kind == _REQUEST:
            if host is not None:
                return _checked_py(headers, kind)
            host = value
    if kind == _TRAILERS:
        if seen:
            return _checked_py(headers, kind)
    elif kind == _RESPONSE:
        if not seen & _P_STATUS or seen & _P_REQUEST_ONLY:
            return _checked_py(headers, kind)
    else:
        if not seen & _P_METHOD or seen & _P_STATUS:
            return _checked_py(headers, kind)
        connect = method == b"CONNECT"
        if connect and not seen & _P_PROTOCOL:
            if seen & (_P_SCHEME | _P_PATH):
                return _checked_py(headers, kind)
        elif not seen & _P_SCHEME or not seen & _P_PATH:
            return _checked_py(headers, kind)
        if not connect and seen & _P_PROTOCOL:
            return _checked_py(headers, kind)
        if authority is None and host is None:
            return _checked_py(headers, kind)
        if authority is not None and host is not None and authority != host:
            return _checked_py(headers, kind)
    return headers


cdef class _InboundWindow:
    cdef long long size, largest, consumed

    def __cinit__(self, long long size):
        self.size = size
        self.largest = size
        self.consumed = 0

    cdef int receive(self, long long length) except -1:
        self.size -= length
        if self.size < 0:
            raise _FlowControlError("Flow control window shrunk below 0")
        return 0

    cdef int open(self, long long increment) except -1:
        self.size += increment
        if self.size > _LARGEST_WINDOW:
            raise _FlowControlError("Flow control window too large")
        if self.size > self.largest:
            self.largest = self.size
        return 0

    cdef long long consume(self, long long length):
        self.consumed += length
        cdef long long consumed = self.consumed, largest = self.largest, increment
        if not consumed:
            return 0
        if (self.size == 0 and consumed > min(1024, largest // 4)) or consumed >= largest // 2:
            increment = min(consumed, largest - self.size)
            self.consumed = 0
            self.size += increment
            return increment
        return 0


cdef class _Stream:
    cdef long long id
    cdef int state
    cdef object client  # None, True or False: which side opened it, once known
    cdef bint headers_sent, trailers_sent, headers_received, trailers_received
    cdef int closed_by
    cdef long long send_window
    cdef _InboundWindow inbound
    cdef long long expected_length  # -1: none announced
    cdef long long received_length
    cdef object request_method
    cdef object authority

    def __cinit__(self, long long stream_id, long long send_window, long long receive_window):
        self.id = stream_id
        self.state = _IDLE
        self.client = None
        self.closed_by = 0
        self.send_window = send_window
        self.inbound = _InboundWindow(receive_window)
        self.expected_length = -1
        self.received_length = 0
        self.request_method = None
        self.authority = None

    cdef inline bint is_open(self):
        return _OPEN <= self.state <= _HALF_REMOTE

    cdef inline void close(self, int by):
        self.state = _CLOSED
        self.closed_by = by

    cdef object invalid(self, str what):
        self.state = _CLOSED
        return _ProtocolError(f"Invalid input {what} in state {self.state} of {self.id}")

    cdef object closed_error(self):
        return _StreamClosedError(self.id)

    cdef object reset_on_error(self):
        self.close(_BY_SEND_RST)
        error = _StreamClosedError(self.id)
        error._events = [
            _StreamReset(stream_id=self.id, error_code=_Codes.STREAM_CLOSED, remote_reset=False)
        ]
        return error

    cdef int track_length(self, long long length, bint end) except -1:
        self.received_length += length
        cdef long long expected = self.expected_length
        if expected >= 0 and (
            expected < self.received_length or (end and expected != self.received_length)
        ):
            raise h2.exceptions.InvalidBodyLengthError(expected, self.received_length)
        return 0

    cdef int expect_length(self, list headers) except -1:
        if self.request_method == b"HEAD":
            self.expected_length = 0
            return 0
        length = None
        cdef bytes value
        for header in headers:
            if header[0] == b"content-length":
                value = header[1]
                if not value.isdigit():
                    raise _ProtocolError(f"Invalid content-length header: {value!r}")
                parsed = int(value, 10)
                if length is None:
                    length = parsed
                elif parsed != length:
                    raise _ProtocolError("Conflicting content-length headers")
        if length is None:
            self.expected_length = -1
        else:
            # Past 2**62 no body can reach it: held as that, as a mismatch all the same.
            self.expected_length = min(length, 2**62)
        return 0


cdef dict _HEADER_EVENTS = _h2_conn_py._HEADER_EVENTS

cdef object _INITIAL_WINDOW_SIZE = _Setting.INITIAL_WINDOW_SIZE


cdef class Connection:
    """One HTTP/2 connection, client or server side, with the relay's settings (the
    subset of ``h2.connection.H2Connection`` that the relay uses)."""

    cdef readonly bint client
    cdef int _state
    cdef public dict streams
    cdef dict _closed
    cdef public long long highest_inbound_stream_id
    cdef public long long highest_outbound_stream_id
    cdef object _encoder
    cdef object _decoder
    cdef dict _local
    cdef public object remote_settings
    cdef public long long outbound_flow_control_window
    cdef public long long max_outbound_frame_size
    cdef _InboundWindow _inbound
    cdef bytearray _output
    cdef readonly bytearray _input  # (read by the tests: what is buffered)
    cdef bytes _preface
    cdef object _block_head
    cdef list _fragments

    def __init__(self, *, client):
        self.client = bool(client)
        self._state = _C_IDLE
        self.streams = {}
        self._closed = {}
        self.highest_inbound_stream_id = 0
        self.highest_outbound_stream_id = 0
        self._encoder = h2_hpack.Encoder()
        self._decoder = h2_hpack.Decoder()
        self._decoder.max_header_list_size = _MAX_HEADER_LIST
        self._decoder.max_allowed_table_size = 4096
        local = _defaults(client)
        local[_Setting.ENABLE_PUSH] = 0
        local[_Setting.MAX_CONCURRENT_STREAMS] = _MAX_INBOUND_STREAMS
        local[_Setting.MAX_HEADER_LIST_SIZE] = _MAX_HEADER_LIST
        self._local = local
        self.remote_settings = _Settings(_defaults(not client))
        self.outbound_flow_control_window = 65_535
        self.max_outbound_frame_size = 16_384
        self._inbound = _InboundWindow(65_535)
        self._output = bytearray()
        self._input = bytearray()
        self._preface = b"" if client else _PREFACE
        self._block_head = None
        self._fragments = []

    # -- connection and stream bookkeeping ---------------------------------------------------

    cdef int _move(self, int what) except -1:
        cdef int target = _MOVES[self._state][what]
        if target < 0:
            self._state = _C_CLOSED
            raise _ProtocolError(f"Invalid input {what} in connection state {self._state}")
        self._state = target
        return 0

    cdef inline bint _is_outbound(self, long long stream_id):
        return stream_id % 2 == (1 if self.client else 0)

    cdef _Stream _stream(self, long long stream_id):
        cdef object found = self.streams.get(stream_id)
        if found is not None:
            return <_Stream>found
        cdef long long highest = (
            self.highest_outbound_stream_id
            if self._is_outbound(stream_id)
            else self.highest_inbound_stream_id
        )
        if stream_id > highest:
            raise _NoSuchStreamError(stream_id)
        raise _StreamClosedError(stream_id)

    cdef _Stream _new_stream(self, long long stream_id, bint outbound):
        cdef bint is_outbound = self._is_outbound(stream_id)
        cdef long long highest = (
            self.highest_outbound_stream_id if is_outbound else self.highest_inbound_stream_id
        )
        if stream_id <= highest:
            raise _StreamIDTooLowError(stream_id, highest)
        if is_outbound != outbound:
            raise _ProtocolError("Invalid stream ID for peer.")
        cdef _Stream stream = _Stream(
            stream_id, self.remote_settings.values[_INITIAL_WINDOW_SIZE], 65_535
        )
        self.streams[stream_id] = stream
        if is_outbound:
            self.highest_outbound_stream_id = stream_id
        else:
            self.highest_inbound_stream_id = stream_id
        return stream

    cdef int _closed_by(self, long long stream_id) except -1:
        cdef object found = self.streams.get(stream_id)
        if found is not None:
            return (<_Stream>found).closed_by
        return self._closed.get(stream_id, 0)

    cdef long long _count_open(self, int parity) except -1:
        """Open streams of one side, forgetting closed ones at h2's moments (the twin's)."""
        cdef long long count = 0
        cdef _Stream stream
        cdef list closed = None
        for value in self.streams.values():
            stream = <_Stream>value
            if stream.state == _CLOSED:
                if closed is None:
                    closed = []
                closed.append(stream)
            elif stream.state != _IDLE and stream.id % 2 == parity:
                count += 1
        if closed is not None:
            for value in closed:
                stream = <_Stream>value
                del self.streams[stream.id]
                self._closed[stream.id] = stream.closed_by
                if len(self._closed) > _CLOSED_STREAMS_KEPT:
                    del self._closed[next(iter(self._closed))]
        return count

    @property
    def open_outbound_streams(self):
        return self._count_open(1 if self.client else 0)

    @property
    def open_inbound_streams(self):
        return self._count_open(0 if self.client else 1)

    cdef inline void _queue(self, int kind, int flags, long long stream_id, bytes payload):
        self._output += _frame(kind, flags, stream_id, payload)

    cdef void _queue_reset(self, long long stream_id, long long error_code):
        self._queue(_RST_STREAM, 0, stream_id, int(error_code).to_bytes(4, "big"))

    cdef void _queue_window_update(self, long long stream_id, long long increment):
        self._queue(_WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))

    cdef int _terminate(self, error_code) except -1:
        self._move(_SEND_GOAWAY)
        payload = (self.highest_inbound_stream_id << 32 | int(error_code)).to_bytes(8, "big")
        self._queue(_GOAWAY, 0, 0, payload)
        return 0

    # -- sending -----------------------------------------------------------------------------

    def initiate_connection(self):
        self._move(_SEND_SETTINGS)
        payload = b"".join(
            (code << 32 | value).to_bytes(6, "big") for code, value in self._local.items()
        )
        if self.client:
            self._output += _PREFACE
        self._queue(_SETTINGS, 0, 0, payload)

    def data_to_send(self):
        data = bytes(self._output)
        del self._output[:]
        return data

    def get_next_available_stream_id(self):
        cdef long long highest = self.highest_outbound_stream_id
        cdef long long next_id = highest + 2 if highest else (1 if self.client else 2)
        if next_id > _HIGHEST_STREAM_ID:
            raise h2.exceptions.NoAvailableStreamIDError("Exhausted allowed stream IDs")
        return next_id

    def send_headers(self, long long stream_id, headers, end_stream=False):
        cdef _Stream stream
        if stream_id not in self.streams:
            limit = self.remote_settings.max_concurrent_streams
            if self._count_open(1 if self.client else 0) + 1 > limit:
                raise h2.exceptions.TooManyStreamsError(f"Max outbound streams is {limit}")
        self._move(_SEND_HEADERS)
        found = self.streams.get(stream_id)
        stream = self._new_stream(stream_id, True) if found is None else <_Stream>found
        self._stream_sends_headers(stream, headers, bool(end_stream))

    cdef int _stream_sends_headers(self, _Stream stream, headers, bint end_stream) except -1:
        cdef list items = headers if type(headers) is list else list(headers)
        cdef bint informational = stream.client is not True and _is_informational(items)
        if informational and end_stream:
            raise _ProtocolError("Cannot set END_STREAM on informational responses.")
        cdef int state = stream.state
        if informational:
            if state != _OPEN and state != _HALF_REMOTE:
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
        elif state == _OPEN or state == _HALF_REMOTE:
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
        cdef bytes block = self._encoder.encode(headers, huffman=False)
        cdef Py_ssize_t size = self.max_outbound_frame_size, length = len(block)
        if end_stream:
            self._stream_sends_end(stream)
        if stream.trailers_sent and not end_stream:
            raise _ProtocolError("Trailers must have END_STREAM set")
        if stream.client is True and stream.authority is None:
            stream.authority = _pseudo(items, b":authority")
        stream.request_method = _pseudo(items, b":method")
        if length <= size:
            self._queue(
                _HEADERS, _END_HEADERS | (_END_STREAM if end_stream else 0), stream.id, block
            )
            return 0
        cdef Py_ssize_t at = 0
        while at < length:
            flags = _END_HEADERS if at + size >= length else 0
            if at == 0:
                self._queue(_HEADERS, flags | (_END_STREAM if end_stream else 0), stream.id,
                            block[:size])
            else:
                self._queue(_CONTINUATION, flags, stream.id, block[at : at + size])
            at += size
        return 0

    cdef int _stream_sends_end(self, _Stream stream) except -1:
        cdef int state = stream.state
        if state == _OPEN:
            stream.state = _HALF_LOCAL
        elif state == _HALF_REMOTE:
            stream.close(_BY_SEND_END)
        elif state == _CLOSED:
            raise stream.closed_error()
        else:
            raise stream.invalid("SEND_END_STREAM")
        return 0

    def local_flow_control_window(self, long long stream_id):
        cdef _Stream stream = self._stream(stream_id)
        return min(self.outbound_flow_control_window, stream.send_window)

    def send_data(self, long long stream_id, data, end_stream=False):
        if type(data) is not bytes:
            data = bytes(data)
        cdef Py_ssize_t size = len(data)
        cdef bint end = bool(end_stream)
        cdef _Stream stream
        if size > 0:
            stream = self._stream(stream_id)
            if size > min(self.outbound_flow_control_window, stream.send_window):
                raise _FlowControlError("Cannot send data larger than the window")
        if size > self.max_outbound_frame_size:
            raise h2.exceptions.FrameTooLargeError("Cannot send frame larger than allowed")
        self._move(_SEND_DATA)
        stream = <_Stream>self.streams[stream_id]
        cdef int state = stream.state
        if state == _CLOSED:
            raise stream.closed_error()
        if state != _OPEN and state != _HALF_REMOTE:
            raise stream.invalid("SEND_DATA")
        if end:
            self._stream_sends_end(stream)
        stream.send_window -= size
        self._queue(_DATA, _END_STREAM if end else 0, stream_id, data)
        self.outbound_flow_control_window -= size

    def end_stream(self, long long stream_id):
        self._move(_SEND_DATA)
        cdef _Stream stream = self._stream(stream_id)
        self._stream_sends_end(stream)
        self._queue(_DATA, _END_STREAM, stream_id, b"")

    def increment_flow_control_window(self, increment, stream_id=None):
        if not 1 <= increment <= _LARGEST_WINDOW:
            raise ValueError("Flow control increment must be between 1 and 2^31-1")
        self._move(_SEND_WINDOW_UPDATE)
        if stream_id is None:
            self._inbound.open(increment)
            self._queue_window_update(0, increment)
            return
        cdef _Stream stream = <_Stream>self.streams[stream_id]
        if stream.state == _CLOSED:
            raise stream.closed_error()
        if stream.state == _IDLE:
            raise stream.invalid("SEND_WINDOW_UPDATE")
        stream.inbound.open(increment)
        self._queue_window_update(stream_id, increment)

    def acknowledge_received_data(self, acknowledged_size, stream_id):
        if stream_id <= 0:
            raise ValueError(f"Stream ID {stream_id} is not valid")
        if acknowledged_size < 0:
            raise ValueError(f"Cannot acknowledge negative data {acknowledged_size}")
        cdef long long size = acknowledged_size
        cdef long long increment = self._inbound.consume(size)
        if increment:
            self._queue_window_update(0, increment)
        cdef object found = self.streams.get(stream_id)
        cdef _Stream stream
        if found is None:
            if stream_id > (
                self.highest_outbound_stream_id
                if self._is_outbound(stream_id)
                else self.highest_inbound_stream_id
            ):
                raise _NoSuchStreamError(stream_id)
            return
        stream = <_Stream>found
        if stream.is_open():
            increment = stream.inbound.consume(size)
            if increment:
                self._queue_window_update(stream_id, increment)

    def reset_stream(self, long long stream_id, error_code=0):
        self._move(_SEND_RST_STREAM)
        cdef _Stream stream = self._stream(stream_id)
        if stream.state == _CLOSED:
            raise stream.closed_error()
        if stream.state == _IDLE:
            raise stream.invalid("SEND_RST_STREAM")
        stream.close(_BY_SEND_RST)
        self._queue_reset(stream_id, error_code)

    def close_connection(self, error_code=0):
        self._terminate(error_code)

    # -- receiving ---------------------------------------------------------------------------

    def receive_data(self, data):
        """The events ``data`` completes; ``h2.exceptions.ProtocolError`` (GOAWAY queued,
        but for a bad preface) when the peer broke the protocol."""
        if self._preface:
            data = self._strip_preface(data)
        self._input += data
        cdef list events = []
        try:
            self._receive_frames(events)
        except _ProtocolError as error:
            self._terminate(error.error_code)
            raise
        return events

    cdef bytes _strip_preface(self, data):
        cdef bytes due = self._preface
        cdef Py_ssize_t seen = min(len(due), len(data))
        if data[:seen] != due[:seen]:
            raise _ProtocolError("Invalid HTTP/2 preamble.")
        self._preface = due[seen:]
        return bytes(data[seen:])

    cdef int _receive_frames(self, list events) except -1:
        cdef bytearray buffer = self._input
        cdef Py_ssize_t at = 0, size = PyByteArray_GET_SIZE(buffer)
        cdef const unsigned char* p
        cdef long long length, stream_id
        cdef int kind, flags
        cdef bytes body
        try:
            while size - at >= 9:
                # Taken again per frame: acting on a frame does not resize the buffer
                # today, and a stale pointer would be a read of freed memory if it did.
                p = <const unsigned char*>PyByteArray_AS_STRING(buffer) + at
                length = p[0] << 16 | p[1] << 8 | p[2]
                kind, flags = p[3], p[4]
                stream_id = (
                    (<long long>p[5] & 0x7F) << 24 | p[6] << 16 | p[7] << 8 | p[8]
                )
                if stream_id == 0:
                    if (
                        kind == _DATA or kind == _HEADERS or kind == _PRIORITY
                        or kind == _RST_STREAM or kind == _PUSH_PROMISE
                        or kind == _CONTINUATION
                    ):
                        raise _ProtocolError("Received frame with invalid header")
                elif kind == _SETTINGS or kind == _PING or kind == _GOAWAY:
                    raise _ProtocolError("Received frame with invalid header")
                if length > _MAX_INBOUND_FRAME:
                    raise h2.exceptions.FrameTooLargeError(f"Received overlong frame: {length}")
                if size - at < 9 + length:
                    return 0
                body = PyBytes_FromStringAndSize(<const char*>p + 9, length)
                at += 9 + length
                self._receive_frame(kind, flags, stream_id, body, events)
        finally:
            del buffer[:at]
        return 0

    cdef int _receive_frame(
        self, int kind, int flags, long long stream_id, bytes body, list events
    ) except -1:
        cdef Py_ssize_t length = len(body)
        cdef tuple parsed
        if kind == _DATA:
            parsed = _parse_data(flags, body)
        elif kind == _HEADERS:
            parsed = _parse_headers(flags, body)
        elif kind == _PRIORITY:
            if length != 5:
                raise _frame_size_error("PRIORITY")
            parsed = (_parse_priority(body),)
        elif kind == _RST_STREAM:
            if length != 4:
                raise _frame_size_error("RST_STREAM")
            parsed = (int.from_bytes(body, "big"),)
        elif kind == _SETTINGS:
            parsed = (_parse_settings(flags, body),)
        elif kind == _PUSH_PROMISE:
            parsed = _parse_push_promise(flags, body)
        elif kind == _PING:
            if length != 8:
                raise _frame_size_error("PING")
            parsed = (body,)
        elif kind == _GOAWAY:
            if length < 8:
                raise _frame_size_error("GOAWAY")
            parsed = (body,)
        elif kind == _WINDOW_UPDATE:
            parsed = (_parse_window_update(body),)
        elif kind == _ALTSVC:
            parsed = _parse_altsvc(body)
        else:
            parsed = (body,)
        cdef tuple head
        if self._block_head is not None:
            head = self._block_head
            if kind != _CONTINUATION or stream_id != head[2]:
                raise _ProtocolError("Invalid frame during header block.")
            self._fragments.append(body)
            if len(self._fragments) > _CONTINUATION_BACKLOG:
                raise _ProtocolError("Too many continuation frames received.")
            if not flags & _END_HEADERS:
                return 0
            kind, flags, stream_id, priority, promised = head
            block = b"".join(self._fragments)
            self._block_head, self._fragments = None, []
            parsed = (block, priority) if kind == _HEADERS else (promised, block)
        elif (kind == _HEADERS or kind == _PUSH_PROMISE) and not flags & _END_HEADERS:
            if kind == _HEADERS:
                self._block_head = (kind, flags, stream_id, parsed[1], 0)
                self._fragments = [parsed[0]]
            else:
                self._block_head = (kind, flags, stream_id, None, parsed[0])
                self._fragments = [parsed[1]]
            return 0
        cdef int closed_by
        try:
            self._dispatch(kind, flags, stream_id, parsed, events)
        except _StreamClosedError as error:
            closed_by = self._closed_by(error.stream_id)
            if closed_by != _BY_SEND_RST and closed_by != _BY_RECV_RST:
                raise
            self._queue_reset(error.stream_id, error.error_code)
            events += error._events
        except _StreamIDTooLowError as error:
            closed_by = self._closed_by(error.stream_id)
            if closed_by == _BY_SEND_RST or closed_by == _BY_RECV_RST:
                self._queue_reset(error.stream_id, _Codes.STREAM_CLOSED)
            elif closed_by == _BY_SEND_END or closed_by == _BY_RECV_END:
                raise _StreamClosedError(error.stream_id) from error
            else:
                raise
        return 0

    cdef int _dispatch(
        self, int kind, int flags, long long stream_id, tuple parsed, list events
    ) except -1:
        # The two frames of nearly every stream append their events here; the rest go
        # through the twin's shape (a list returned), which the rare frames keep.
        if kind == _DATA:
            self._on_data(stream_id, flags, parsed[0], parsed[1], events)
            return 0
        if kind == _HEADERS:
            self._on_headers(stream_id, flags, parsed[0], parsed[1], events)
            return 0
        if kind == _WINDOW_UPDATE:
            events += self._on_window_update(stream_id, parsed[0])
        elif kind == _SETTINGS:
            events += self._on_settings(flags, parsed[0])
        elif kind == _RST_STREAM:
            events += self._on_rst_stream(stream_id, parsed[0])
        elif kind == _PING:
            events += self._on_ping(flags, parsed[0])
        elif kind == _PRIORITY:
            self._move(_RECV_PRIORITY)
            events.append(_priority_event(stream_id, parsed[0]))
        elif kind == _GOAWAY:
            events += self._on_goaway(parsed[0])
        elif kind == _PUSH_PROMISE:
            raise _ProtocolError("Received pushed stream")
        elif kind == _CONTINUATION:
            stream = self._stream(stream_id)
            raise stream.invalid("RECV_CONTINUATION")
        elif kind == _ALTSVC:
            events += self._on_altsvc(stream_id, parsed[0], parsed[1])
        else:
            events.append(_unknown_frame(kind, flags, stream_id, parsed[0]))
        return 0

    cdef int _on_data(
        self, long long stream_id, int flags, bytes data, long long flow_length, list events
    ) except -1:
        self._move(_RECV_DATA)
        self._inbound.receive(flow_length)
        cdef bint end = flags & _END_STREAM
        cdef long long increment
        try:
            stream = self._stream(stream_id)
            self._stream_receives_data(stream, data, flow_length, end, events)
        except _StreamClosedError as error:
            increment = self._inbound.consume(flow_length)
            if increment:
                self._queue_window_update(0, increment)
            self._queue_reset(error.stream_id, error.error_code)
            events += error._events
        return 0

    cdef int _stream_receives_data(
        self, _Stream stream, bytes data, long long flow_length, bint end, list events
    ) except -1:
        cdef int state = stream.state
        if state == _OPEN or state == _HALF_LOCAL:
            if not stream.headers_received:
                stream.state = _CLOSED
                raise _ProtocolError("cannot receive data before headers")
        elif state == _CLOSED:
            raise stream.closed_error()
        else:
            raise stream.reset_on_error()
        stream.inbound.receive(flow_length)
        stream.track_length(len(data), end)
        event = _DataReceived(stream_id=stream.id, data=data, flow_controlled_length=flow_length)
        if not end:
            events.append(event)
            return 0
        ended = self._stream_receives_end(stream)
        event.stream_ended = ended
        events.append(event)
        events.append(ended)
        return 0

    cdef object _stream_receives_end(self, _Stream stream):
        if stream.state == _OPEN:
            stream.state = _HALF_REMOTE
        else:
            stream.close(_BY_RECV_END)
        return _StreamEnded(stream_id=stream.id)

    cdef list _decode(self, bytes block):
        try:
            return self._decoder.decode(block, raw=True)
        except OversizedHeaderListError as error:
            raise h2.exceptions.DenialOfServiceError(f"Oversized header block: {error}") from error
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as error:
            raise _ProtocolError(f"Error decoding header block: {error}") from error

    cdef int _on_headers(
        self, long long stream_id, int flags, bytes block, object priority, list events
    ) except -1:
        cdef object found = self.streams.get(stream_id)
        if found is None and (
            self._count_open(0 if self.client else 1) + 1 > _MAX_INBOUND_STREAMS
        ):
            raise h2.exceptions.TooManyStreamsError("Max inbound streams is 100")
        cdef list headers = self._decode(block)
        self._move(_RECV_HEADERS)
        found = self.streams.get(stream_id)
        cdef _Stream stream = self._new_stream(stream_id, False) if found is None else <_Stream>found
        cdef Py_ssize_t first_at = len(events)
        self._stream_receives_headers(stream, headers, flags & _END_STREAM, events)
        first = events[first_at]
        if priority is not None:
            self._move(_RECV_PRIORITY)
            updated = _priority_event(stream_id, priority)
            first.priority_updated = updated
            events.append(updated)
        first.headers = _checked(first.headers, _HEADER_EVENTS[type(first)])
        return 0

    cdef int _stream_receives_headers(
        self, _Stream stream, list headers, bint end, list events
    ) except -1:
        cdef int state = stream.state
        if _is_informational(headers):
            if end:
                raise _ProtocolError("Cannot set END_STREAM on informational responses")
            if state != _OPEN and state != _HALF_LOCAL:
                raise stream.invalid("RECV_INFORMATIONAL_HEADERS")
            if stream.headers_received:
                stream.state = _CLOSED
                raise _ProtocolError("Informational response after final response")
            event = _InformationalResponseReceived(stream_id=stream.id)
        elif state == _IDLE:
            stream.state = _OPEN
            stream.client = False
            stream.headers_received = True
            event = _RequestReceived(stream_id=stream.id)
        elif state == _OPEN or state == _HALF_LOCAL:
            if not stream.headers_received:
                if stream.client is not True:
                    stream.state = _CLOSED
                    raise _ProtocolError("a response on a stream we did not open")
                stream.headers_received = True
                event = _ResponseReceived(stream_id=stream.id)
            else:
                if stream.trailers_received:
                    stream.state = _CLOSED
                    raise _ProtocolError("a second trailers block")
                stream.trailers_received = True
                event = _TrailersReceived(stream_id=stream.id)
        elif state == _HALF_REMOTE:
            raise stream.reset_on_error()
        else:
            raise stream.closed_error()
        events.append(event)
        if end:
            ended = self._stream_receives_end(stream)
            event.stream_ended = ended
            events.append(ended)
        stream.expect_length(headers)
        if type(event) is _TrailersReceived and not end:
            raise _ProtocolError("Trailers must have END_STREAM set")
        event.headers = headers
        return 0

    cdef _Stream _live(self, long long stream_id, str frame, object gone):
        """The stream a WINDOW_UPDATE or RST_STREAM names; None when there is nothing to
        do; a connection error for an idle one."""
        cdef _Stream stream
        try:
            stream = self._stream(stream_id)
        except gone:
            return None
        if stream.state == _IDLE:
            raise stream.invalid(frame)
        return None if stream.state == _CLOSED else stream

    cdef list _on_window_update(self, long long stream_id, long long increment):
        self._move(_RECV_WINDOW_UPDATE)
        cdef long long window
        if not stream_id:
            window = self.outbound_flow_control_window + increment
            if window > _LARGEST_WINDOW:
                raise _FlowControlError("Window increment past 2^31-1")
            self.outbound_flow_control_window = window
            return [_WindowUpdated(stream_id=0, delta=increment)]
        cdef _Stream stream = self._live(stream_id, "RECV_WINDOW_UPDATE", _StreamClosedError)
        if stream is None:
            return []
        window = stream.send_window + increment
        if window > _LARGEST_WINDOW:
            stream.close(_BY_SEND_RST)
            self._queue_reset(stream_id, _Codes.FLOW_CONTROL_ERROR)
            return [
                _StreamReset(
                    stream_id=stream_id,
                    error_code=_Codes.FLOW_CONTROL_ERROR,
                    remote_reset=False,
                )
            ]
        stream.send_window = window
        return [_WindowUpdated(stream_id=stream_id, delta=increment)]

    cdef list _on_settings(self, int flags, dict settings):
        self._move(_RECV_SETTINGS)
        if flags & _ACK:
            acknowledged = h2.events.SettingsAcknowledged()
            acknowledged.changed_settings = {}
            return [acknowledged]
        for code, value in settings.items():
            error = _setting_error(code, value, not self.client)
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
        self._queue(_SETTINGS, _ACK, 0, b"")
        return [changed]

    cdef int _apply_remote_settings(self, dict settings) except -1:
        cdef dict remote = self.remote_settings.values
        cdef _Stream stream
        old_window = remote.get(_INITIAL_WINDOW_SIZE)
        remote.update(settings)
        if _INITIAL_WINDOW_SIZE in settings:
            delta = settings[_INITIAL_WINDOW_SIZE] - (old_window or 0)
            for value in self.streams.values():
                stream = <_Stream>value
                window = stream.send_window + delta
                if window > _LARGEST_WINDOW:
                    raise _FlowControlError("Window increment past 2^31-1")
                stream.send_window = window
        if _Setting.HEADER_TABLE_SIZE in settings:
            self._encoder.header_table_size = settings[_Setting.HEADER_TABLE_SIZE]
        if _Setting.MAX_FRAME_SIZE in settings:
            self.max_outbound_frame_size = settings[_Setting.MAX_FRAME_SIZE]
        return 0

    cdef list _on_rst_stream(self, long long stream_id, code):
        self._move(_RECV_RST_STREAM)
        cdef _Stream stream = self._live(stream_id, "RECV_RST_STREAM", _NoSuchStreamError)
        if stream is None:
            return []
        stream.close(_BY_RECV_RST)
        return [_StreamReset(stream_id=stream_id, error_code=_error_code(code))]

    cdef list _on_ping(self, int flags, bytes opaque):
        self._move(_RECV_PING)
        if flags & _ACK:
            return [h2.events.PingAckReceived(ping_data=opaque)]
        self._queue(_PING, _ACK, 0, opaque)
        return [h2.events.PingReceived(ping_data=opaque)]

    cdef list _on_goaway(self, bytes body):
        self._move(_RECV_GOAWAY)
        del self._output[:]
        terminated = h2.events.ConnectionTerminated()
        terminated.error_code = _error_code(int.from_bytes(body[4:8], "big"))
        terminated.last_stream_id = int.from_bytes(body[:4], "big")
        terminated.additional_data = body[8:] or None
        return [terminated]

    cdef list _on_altsvc(self, long long stream_id, bytes origin, bytes value):
        self._move(_RECV_ALTSVC)
        if not stream_id:
            if not origin or not self.client:
                return []
            available = h2.events.AlternativeServiceAvailable()
            available.origin, available.field_value = origin, value
            return [available]
        cdef _Stream stream
        try:
            stream = self._stream(stream_id)
        except _NoSuchStreamError:
            return []
        closed = stream.state == _IDLE or stream.state == _CLOSED
        if origin or stream.client is False or stream.headers_received or closed:
            return []
        available = h2.events.AlternativeServiceAvailable()
        available.origin, available.field_value = stream.authority, value
        return [available]


cdef tuple _parse_data(int flags, bytes body):
    """A DATA frame's data and flow-controlled length."""
    cdef Py_ssize_t length = len(body)
    if not flags & _PADDED:
        return body, length
    if not length:
        raise _frame_size_error("DATA")
    cdef int pad = (<const unsigned char*><const char*>body)[0]
    if pad and pad >= length:
        raise _ProtocolError("Received frame with invalid padding.")
    data = body[1 : length - pad]
    return data, len(data) + pad + 1


cdef tuple _parse_headers(int flags, bytes body):
    """A HEADERS frame's block fragment and priority (None without the flag)."""
    cdef int pad = 0
    if flags & _PADDED:
        if not body:
            raise _frame_size_error("HEADERS")
        pad = body[0]
        body = body[1:]
    priority = None
    cdef Py_ssize_t start = 0, length = len(body)
    if flags & _PRIORITY_FLAG:
        if length < 5:
            raise _frame_size_error("HEADERS")
        priority = _parse_priority(body)
        start = 5
    fragment = body[start : max(start, length - pad)] if pad else body[start:]
    if pad and pad >= length:
        raise _ProtocolError("Received frame with invalid padding.")
    return fragment, priority
