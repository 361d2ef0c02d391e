"""The sidecar's HTTP/1.1 connection, compiled; the same API as ``_h1_conn_py``.

>>> from meshstats._h1_events import SERVER, Response
>>> conn = Connection(SERVER)
>>> conn.receive_data(b"GET /ratings HTTP/1.1\\r\\nHost: ratings\\r\\n\\r\\n")
>>> conn.next_event().target
b'/ratings'
>>> conn.next_event()
EndOfMessage(headers=[])
>>> conn.send(Response(status_code=204, headers=[]))
b'HTTP/1.1 204 \\r\\n\\r\\n'

A line-for-line port of the pure twin (``_h1_conn_py.py``: read that one first), with the
states of the body being read and written as C integers, the buffer searched by ``memchr``
rather than a regular expression, and the chunk header checked by hand. Compiled because
the twin's Python steps, a dozen calls per message, were most of what the codec cost the
relay per request (the head grammar was compiled already, ``_h1_head_c``).

Lengths (``Content-Length``, chunk sizes) are held as 64-bit integers; a value over 2**62
is held as 2**62, which no connection can reach, so the behaviour is the twin's.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr

from . import _h1_events as _ev
from ._h1_head_c import note_fields, parse_fields, parse_head, write_fields

__all__ = ["Connection"]

# The shared events, states and errors, looked up once as C-level globals.
cdef object CLIENT = _ev.CLIENT
cdef object SERVER = _ev.SERVER
cdef object IDLE = _ev.IDLE
cdef object SEND_RESPONSE = _ev.SEND_RESPONSE
cdef object SEND_BODY = _ev.SEND_BODY
cdef object DONE = _ev.DONE
cdef object MUST_CLOSE = _ev.MUST_CLOSE
cdef object CLOSED = _ev.CLOSED
cdef object ERROR = _ev.ERROR
cdef object MIGHT_SWITCH_PROTOCOL = _ev.MIGHT_SWITCH_PROTOCOL
cdef object SWITCHED_PROTOCOL = _ev.SWITCHED_PROTOCOL
cdef object NEED_DATA = _ev.NEED_DATA
cdef object PAUSED = _ev.PAUSED
cdef object Headers = _ev.Headers
cdef object Request = _ev.Request
cdef object Response = _ev.Response
cdef object InformationalResponse = _ev.InformationalResponse
cdef object Data = _ev.Data
cdef object EndOfMessage = _ev.EndOfMessage
cdef object ConnectionClosed = _ev.ConnectionClosed
cdef object ProtocolError = _ev.ProtocolError
cdef object RemoteProtocolError = _ev.RemoteProtocolError
cdef object LocalProtocolError = _ev.LocalProtocolError
cdef Py_ssize_t MAX_INCOMPLETE_EVENT_SIZE = _ev.MAX_INCOMPLETE_EVENT_SIZE
cdef object _object_new = object.__new__


# The events a connection receives are made without their __init__ (keyword arguments and
# a conversion a parsed message never needs): their slots set here, as __init__ sets them.
# tests/test_h1_conn.py compares every slot with what the twin's constructors give.
cdef inline object _fields(list raw, object lower):
    headers = _object_new(Headers)
    headers._raw = raw
    headers._lower = lower
    return headers


cdef inline object _data(bytes data):
    event = _object_new(Data)
    event.data = data
    return event


cdef inline object _end(object headers):
    event = _object_new(EndOfMessage)
    event.headers = headers if headers is not None else _fields([], None)
    return event


cdef inline object _status_event(object kind, int status, object headers, bytes reason, bytes version):
    event = _object_new(kind)
    event.status_code = status
    event.headers = headers
    event.reason = reason
    event.http_version = version
    return event

cdef bytes _HTTP_11 = b"1.1"
cdef bytes _CONNECT = b"CONNECT"
cdef bytes _HEAD = b"HEAD"
cdef bytes _CLOSE = b"close"
cdef bytes _CHUNKED = b"chunked"
cdef bytes _KEEP_ALIVE = b"keep-alive"
cdef bytes _CONTINUE = b"100-continue"
cdef bytes _F_HOST = b"host"
cdef bytes _F_UPGRADE = b"upgrade"
cdef bytes _F_EXPECT = b"expect"
cdef bytes _F_CONNECTION = b"connection"
cdef bytes _F_CONTENT_LENGTH = b"content-length"
cdef bytes _F_TRANSFER_ENCODING = b"transfer-encoding"
cdef tuple _FRAMING_FIELDS = (_F_CONTENT_LENGTH, _F_TRANSFER_ENCODING)

cdef enum:
    _CONTENT_LENGTH_MAX_DIGITS = 20
    _CHUNK_SIZE_MAX_DIGITS = 20

# How a body is framed: read (_reading), written (_writing), or found in a head (_framing).
cdef enum:
    F_NONE
    F_CONTENT_LENGTH
    F_CHUNKED
    F_CLOSE

cdef long long _MAX_LENGTH = 1LL << 62

# A chunk's progress besides the bytes left in it: its CRLF is due, or the trailers.
cdef enum:
    _CHUNK_CRLF = -1
    _CHUNK_TRAILERS = -2


# -- grammar --------------------------------------------------------------------------------

cdef Py_ssize_t _head_end(const char *buf, Py_ssize_t pos, Py_ssize_t size):
    """The end of the first blank line at or after ``pos`` (``\\n\\r?\\n``), or -1."""
    cdef const char *at
    while pos < size:
        at = <const char *>memchr(buf + pos, 10, <size_t>(size - pos))
        if at == NULL:
            return -1
        pos = at - buf + 1
        if pos < size and buf[pos] == 10:
            return pos + 1
        if pos + 1 < size and buf[pos] == 13 and buf[pos + 1] == 10:
            return pos + 2
    return -1


cdef inline bint _all_digits(bytes value):
    cdef const char *text = PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i
    if n == 0:
        return False
    for i in range(n):
        if not 48 <= text[i] <= 57:
            return False
    return True


cdef long long _decimal(bytes digits):
    """``int(digits)`` for 1 to 20 ASCII digits, held at 2**62 (see the module's doc)."""
    cdef const char *text = PyBytes_AS_STRING(digits)
    cdef long long value = 0
    cdef Py_ssize_t i
    cdef int digit
    for i in range(PyBytes_GET_SIZE(digits)):
        digit = text[i] - 48
        if value > (_MAX_LENGTH - digit) // 10:
            return _MAX_LENGTH
        value = value * 10 + digit
    return value


cdef inline int _hex_digit(char c):
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef long long _chunk_size(bytes line):
    """The size a chunk header (with its CRLF) gives, or -1 when the line does not match
    ``[0-9A-Fa-f]{1,20}(;[^\\n]*)?[ \\t]*\\r\\n`` (the twin's regular expression)."""
    cdef const char *text = PyBytes_AS_STRING(line)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(line) - 2  # the CRLF is there: the line ends at it
    cdef Py_ssize_t i = 0
    cdef long long size = 0
    cdef int digit
    while i < n:
        digit = _hex_digit(text[i])
        if digit < 0:
            break
        size = _MAX_LENGTH if size > (_MAX_LENGTH - digit) >> 4 else size * 16 + digit
        i += 1
    if i == 0 or i > _CHUNK_SIZE_MAX_DIGITS:
        return -1
    if i < n and text[i] == 59:  # ";": an extension, anything up to the line's end but LF
        if memchr(text + i, 10, <size_t>(n - i)) != NULL:
            return -1
        return size
    while i < n:
        if text[i] != 32 and text[i] != 9:
            return -1
        i += 1
    return size


cdef list _tokens(list lower, dict noted, bytes name):
    """The comma-separated, lowercased values of every noted ``name`` field."""
    cdef list out = []
    cdef object at = noted.get(name)
    if at is None:
        return out
    for i in <list>at:
        for token in (<bytes>(<tuple>lower[i])[1]).lower().split(b","):
            token = token.strip()
            if token:
                out.append(token)
    return out


cdef inline bint _keep_alive(list lower, dict noted, bytes http_version):
    if not http_version >= _HTTP_11:
        return False
    if _F_CONNECTION not in noted:
        return True
    return _CLOSE not in _tokens(lower, noted, _F_CONNECTION)


cdef int _framing(
    list lower, list raw, dict noted, long long *length, Py_ssize_t *lengths
) except -1:
    """How a message's body is framed, after h11's normalization, its length, and how many
    ``Content-Length`` values it carried; repeats merged in place and ambiguity refused, as
    the twin's ``_framing``."""
    cdef object lengths_at = noted.get(_F_CONTENT_LENGTH)
    cdef object codings_at = noted.get(_F_TRANSFER_ENCODING)
    cdef bytes value, single, name
    cdef bytes found = None
    cdef bint chunked = False
    cdef list repeats
    cdef Py_ssize_t i
    length[0] = 0
    lengths[0] = 0
    if lengths_at is None and codings_at is None:
        return F_NONE
    if codings_at is None and len(<list>lengths_at) == 1:
        # The common case, one plain length: what the loop below would find, sooner.
        value = (<tuple>lower[(<list>lengths_at)[0]])[1]
        if _all_digits(value) and PyBytes_GET_SIZE(value) <= _CONTENT_LENGTH_MAX_DIGITS:
            length[0] = _decimal(value)
            lengths[0] = 1
            return F_CONTENT_LENGTH
    repeats = []
    for i in sorted((lengths_at or []) + (codings_at or [])):
        name, value = lower[i]
        if name == _F_CONTENT_LENGTH:
            lengths[0] += 1 + value.count(b",")
            values = {part.strip() for part in value.split(b",")}
            if len(values) != 1:
                raise RemoteProtocolError("conflicting Content-Length headers")
            single = values.pop()
            if not _all_digits(single) or PyBytes_GET_SIZE(single) > _CONTENT_LENGTH_MAX_DIGITS:
                raise RemoteProtocolError("bad Content-Length")
            if found is not None:
                if single != found:
                    raise RemoteProtocolError("conflicting Content-Length headers")
                repeats.append(i)
            found = single
            if single != value:
                lower[i] = (name, single)
                raw[i] = (raw[i][0], single)
        else:
            if chunked:
                raise RemoteProtocolError("multiple Transfer-Encoding headers", 501)
            if value.lower() != _CHUNKED:
                raise RemoteProtocolError("Only Transfer-Encoding: chunked is supported", 501)
            chunked = True
            if value != _CHUNKED:
                lower[i] = (name, _CHUNKED)
                raw[i] = (raw[i][0], _CHUNKED)
    for i in reversed(repeats):  # (the notes are stale from here on)
        del lower[i], raw[i]
    if chunked:
        return F_CHUNKED
    if found is not None:
        length[0] = _decimal(found)
        return F_CONTENT_LENGTH
    return F_NONE


cdef inline bytes _write_fields(object headers):
    return write_fields(headers.raw_items())


# -- the connection -----------------------------------------------------------------------------


cdef class Connection:
    """One end of an HTTP/1.1 connection (``role``: ``CLIENT`` or ``SERVER``): bytes in
    (:meth:`receive_data`), events out (:meth:`next_event`), events in (:meth:`send`),
    bytes out. States and their meaning as h11's (``our_state``, ``their_state``)."""

    cdef readonly object our_role, their_role
    cdef public object our_state, their_state
    cdef public object their_http_version
    cdef public bint they_are_waiting_for_100_continue
    cdef bytearray _buf
    cdef Py_ssize_t _pos  # parsed up to here
    cdef Py_ssize_t _dropped  # bytes of the connection dropped from the front of _buf
    cdef bint _closed  # the peer's EOF came
    cdef bint _keep_alive
    cdef bint _switch_proposed  # the request asked to upgrade (or was a CONNECT)
    cdef object _request_method
    # The body being read; for chunked, _chunk is the bytes left in the current chunk, or
    # _CHUNK_CRLF, or _CHUNK_TRAILERS.
    cdef int _reading
    cdef long long _remaining
    cdef long long _chunk
    cdef int _writing
    cdef long long _out_remaining

    def __init__(self, role):
        self.our_role = role
        self.their_role = SERVER if role is CLIENT else CLIENT
        self._buf = bytearray()
        self._pos = 0
        self._dropped = 0
        self._closed = False
        self.our_state = IDLE
        self.their_state = IDLE
        self._keep_alive = True
        self._request_method = None
        self.their_http_version = None
        self._switch_proposed = False
        self.they_are_waiting_for_100_continue = False
        self._reading = F_NONE
        self._remaining = 0
        self._chunk = 0
        self._writing = F_NONE
        self._out_remaining = 0

    # -- receiving ------------------------------------------------------------------------

    @property
    def trailing_data(self):
        """Bytes received but not parsed yet, and whether the peer's EOF came."""
        return bytes(self._buf[self._pos :]), self._closed

    cpdef Py_ssize_t unparsed(self):
        """How many received bytes are not parsed yet (``len(trailing_data[0])``)."""
        return PyByteArray_GET_SIZE(self._buf) - self._pos

    def receive_data(self, data):
        """Bytes from the peer; ``b""`` is its EOF."""
        if not data:
            self._closed = True
            return
        if self._closed:
            raise RuntimeError("received close, then received more data?")
        if self._pos and self._pos == PyByteArray_GET_SIZE(self._buf):
            self._dropped += self._pos
            self._buf = bytearray(data)
            self._pos = 0
        else:
            if self._pos > 65536:
                del self._buf[: self._pos]
                self._dropped += self._pos
                self._pos = 0
            self._buf += data

    def next_event(self):
        """The next event, ``NEED_DATA``, or ``PAUSED`` (their message is done and this
        cycle is not over, or the protocol switched)."""
        if self.their_state is ERROR:
            raise RemoteProtocolError("Can't receive data when peer state is ERROR")
        cdef Py_ssize_t start = self._pos
        try:
            event = self._next()
        except ProtocolError as exc:
            self.their_state = ERROR
            # Where the step that broke started (a head, or the body's next piece; a
            # chunk's CRLF and the next chunk header are one step), on the connection.
            raise self._at(RemoteProtocolError(str(exc), exc.error_status_hint), start) from None
        if event is NEED_DATA and self.unparsed() > MAX_INCOMPLETE_EVENT_SIZE:
            self.their_state = ERROR
            raise self._at(RemoteProtocolError("Receive buffer too long", 431), self._pos)
        return event

    cdef object _at(self, object exc, Py_ssize_t pos):
        exc.offset = self._dropped + pos
        exc.args = (f"{exc.args[0]} (at byte {exc.offset})",)
        return exc

    cdef object _next(self):
        state = self.their_state
        if state is SEND_BODY:
            return self._body()
        if state is IDLE and (self.our_role is SERVER or self.our_state is not IDLE):
            return self._head()
        if state is MIGHT_SWITCH_PROTOCOL or state is SWITCHED_PROTOCOL:
            return PAUSED
        if self._pos < PyByteArray_GET_SIZE(self._buf):
            if state is DONE:
                return PAUSED
            raise RemoteProtocolError("Got data when expecting EOF")
        if self._closed:
            self.their_state = CLOSED
            return ConnectionClosed()
        return NEED_DATA

    cdef object _head(self):
        cdef Py_ssize_t pos = self._pos, size = PyByteArray_GET_SIZE(self._buf), end
        cdef const char *buf = PyByteArray_AS_STRING(self._buf)
        if pos == size:
            if self._closed:
                if self.our_role is CLIENT:
                    raise RemoteProtocolError("peer closed connection before its response")
                self.their_state = CLOSED
                return ConnectionClosed()
            return NEED_DATA
        if buf[pos] == 10 or (pos + 1 < size and buf[pos] == 13 and buf[pos + 1] == 10):
            raise RemoteProtocolError("no request line received")
        end = _head_end(buf, pos, size)
        if end < 0:
            if <unsigned char>buf[pos] < 0x21:
                raise RemoteProtocolError("illegal request line")
            if self._closed and self.unparsed() <= MAX_INCOMPLETE_EVENT_SIZE:
                raise RemoteProtocolError("peer unexpectedly closed connection")
            return NEED_DATA  # (next_event refuses it with 431 when over the limit)
        head = PyBytes_FromStringAndSize(buf + pos, end - pos)
        self._pos = end
        cdef bint request = self.our_role is SERVER
        try:
            first, second, third, raw, lower, noted = parse_head(head, request)
        except ValueError as exc:
            raise RemoteProtocolError(str(exc)) from None
        if request:
            return self._request(first, second, third, raw, lower, noted)
        return self._response(first, second, third, raw, lower, noted)

    cdef object _request(
        self, bytes method, bytes target, bytes version, list raw, list lower, dict noted
    ):
        cdef object hosts_at = noted.get(_F_HOST)
        cdef Py_ssize_t hosts = 0 if hosts_at is None else len(<list>hosts_at)
        cdef long long length
        cdef Py_ssize_t lengths
        upgrade = _tokens(lower, noted, _F_UPGRADE)
        cdef bint keep_alive = _keep_alive(lower, noted, version)
        expects = _tokens(lower, noted, _F_EXPECT) if version >= _HTTP_11 else []
        cdef int framing = _framing(lower, raw, noted, &length, &lengths)
        headers = _fields(raw, lower)
        if hosts > 1:
            raise RemoteProtocolError("Found multiple Host: headers")
        if version == _HTTP_11 and hosts == 0:
            raise RemoteProtocolError("Missing mandatory Host: header")
        request = _object_new(Request)
        request.method = method
        request.target = target
        request.headers = headers
        request.http_version = version
        request.content_lengths = lengths
        self._request_method = method
        self.their_http_version = version
        if method == _CONNECT or upgrade:
            self._switch_proposed = True
        if not keep_alive:
            self._keep_alive = False
        if _CONTINUE in expects:
            self.they_are_waiting_for_100_continue = True
        self.our_state = SEND_RESPONSE
        self._start_body(framing if framing != F_NONE else F_CONTENT_LENGTH, length)
        return request

    cdef object _response(
        self, bytes version, int status, bytes reason, list raw, list lower, dict noted
    ):
        cdef long long length
        cdef Py_ssize_t lengths
        cdef bint keep_alive = _keep_alive(lower, noted, version)
        cdef int framing = _framing(lower, raw, noted, &length, &lengths)
        self.their_http_version = version
        if status < 200:
            info = _status_event(InformationalResponse, status, _fields(raw, lower), reason, version)
            if status == 101:
                if not self._switch_proposed:
                    raise RemoteProtocolError("101 Switching Protocols without an upgrade asked")
                self.their_state = self.our_state = SWITCHED_PROTOCOL
            return info
        response = _status_event(Response, status, _fields(raw, lower), reason, version)
        if not keep_alive:
            self._keep_alive = False
            self._done_to_close()
        method = self._request_method
        if status == 204 or status == 304 or method == _HEAD:
            framing, length = F_CONTENT_LENGTH, 0
        elif method == _CONNECT and 200 <= status < 300:
            framing, length = F_CONTENT_LENGTH, 0
            if self._switch_proposed:
                self.their_state = self.our_state = SWITCHED_PROTOCOL
                return response
        elif framing == F_NONE:
            framing = F_CLOSE
        # A final answer other than a switch: no switch now (h11 drops the proposal).
        self._switch_proposed = False
        if self.our_state is MIGHT_SWITCH_PROTOCOL:
            self.our_state = DONE if self._keep_alive else MUST_CLOSE
        self._start_body(framing, length)
        return response

    cdef inline void _start_body(self, int framing, long long length):
        self.their_state = SEND_BODY
        self._reading = framing
        self._remaining = length
        self._chunk = 0

    cdef object _body(self):
        cdef Py_ssize_t pos = self._pos, size = PyByteArray_GET_SIZE(self._buf)
        cdef Py_ssize_t available
        cdef long long take
        cdef int reading = self._reading
        if reading == F_CONTENT_LENGTH:
            if self._remaining == 0:
                return self._message_end(_end(None))
            available = size - pos
            if available == 0:
                if self._closed:
                    raise RemoteProtocolError(
                        "peer closed connection without sending complete message body"
                    )
                return NEED_DATA
            take = available if available < self._remaining else self._remaining
            self._pos = pos + <Py_ssize_t>take
            self._remaining -= take
            return _data(PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self._buf) + pos, take))
        if reading == F_CLOSE:
            if pos < size:
                self._pos = size
                return _data(PyBytes_FromStringAndSize(
                    PyByteArray_AS_STRING(self._buf) + pos, size - pos
                ))
            if self._closed:
                self._keep_alive = False
                return self._message_end(_end(None))
            return NEED_DATA
        return self._chunked()

    cdef object _chunked(self):
        cdef Py_ssize_t pos = self._pos, size = PyByteArray_GET_SIZE(self._buf), end, eol
        cdef const char *buf = PyByteArray_AS_STRING(self._buf)
        cdef long long chunk = self._chunk, take
        cdef Py_ssize_t available
        cdef bytes block, line, got
        if chunk == _CHUNK_TRAILERS:
            if pos == size:
                return self._starved()
            if (pos + 1 < size and buf[pos] == 13 and buf[pos + 1] == 10) or buf[pos] == 10:
                self._pos = pos + (2 if buf[pos] == 13 else 1)
                return self._message_end(_end(None))
            end = _head_end(buf, pos, size)
            if end < 0:
                return self._starved()
            block = PyBytes_FromStringAndSize(buf + pos, end - pos)
            self._pos = end
            try:
                raw, lower, noted = parse_fields(block[: -1 if block.endswith(b"\n\n") else -2])
            except ValueError as exc:
                raise RemoteProtocolError(str(exc)) from None
            _framing(lower, raw, noted, &take, &available)  # refused there as in a head
            return self._message_end(_end(_fields(raw, lower)))
        if chunk == _CHUNK_CRLF:
            got = PyBytes_FromStringAndSize(buf + pos, min(2, size - pos))
            if got != b"\r\n"[: len(got)]:
                raise RemoteProtocolError(f"malformed chunk footer: {got!r}")
            if len(got) < 2:
                return self._starved()
            pos += 2
            self._pos = pos
            chunk = self._chunk = 0
        if chunk == 0:
            eol = -1
            end = pos
            while end + 1 < size:
                found = <const char *>memchr(buf + end, 13, <size_t>(size - end - 1))
                if found == NULL:
                    break
                end = found - buf
                if buf[end + 1] == 10:
                    eol = end
                    break
                end += 1
            if eol < 0:
                return self._starved()
            line = PyBytes_FromStringAndSize(buf + pos, eol + 2 - pos)
            chunk = _chunk_size(line)
            if chunk < 0:
                raise RemoteProtocolError(f"illegal chunk header: {line[:64]!r}")
            self._pos = pos = eol + 2
            if chunk == 0:
                self._chunk = _CHUNK_TRAILERS
                return self._chunked()
            self._chunk = chunk
        available = size - pos
        if available == 0:
            return self._starved()
        take = available if available < chunk else chunk
        self._pos = pos + <Py_ssize_t>take
        self._chunk = chunk - take if take < chunk else _CHUNK_CRLF
        return _data(PyBytes_FromStringAndSize(buf + pos, take))

    cdef object _starved(self):
        if self._closed:
            raise RemoteProtocolError(
                "peer closed connection without sending complete message body "
                "(incomplete chunked read)"
            )
        return NEED_DATA

    cdef object _message_end(self, object event):
        self._reading = F_NONE
        if self.our_role is SERVER:
            self.they_are_waiting_for_100_continue = False
            if self._switch_proposed and self.our_state is not SWITCHED_PROTOCOL:
                self.their_state = MIGHT_SWITCH_PROTOCOL
                return event
        self.their_state = DONE if self._keep_alive else MUST_CLOSE
        return event

    cdef void _done_to_close(self):
        if self.our_state is DONE:
            self.our_state = MUST_CLOSE
        if self.their_state is DONE:
            self.their_state = MUST_CLOSE

    # -- sending ----------------------------------------------------------------------------

    def send(self, event):
        """The bytes that carry ``event`` to the peer."""
        kind = type(event)
        if kind is Data:
            return self._send_data(event.data)
        if kind is EndOfMessage:
            return self._send_end(event)
        if kind is Response:
            return self._send_response(event)
        if kind is Request:
            return self._send_request(event)
        if kind is InformationalResponse:
            return self._send_informational(event)
        raise LocalProtocolError(f"cannot send {kind.__name__}")

    cdef bytes _send_request(self, object request):
        cdef long long length
        cdef Py_ssize_t lengths
        if self.our_role is not CLIENT or self.our_state is not IDLE:
            raise LocalProtocolError(f"cannot send a request in state {self.our_state}")
        headers = request.headers
        raw = headers.raw_items()
        lower, noted = note_fields(raw)
        if request.method == _CONNECT or _tokens(lower, noted, _F_UPGRADE):
            self._switch_proposed = True
        cdef bint keep_alive = _keep_alive(lower, noted, request.http_version)
        cdef int framing = _framing(lower, raw, noted, &length, &lengths)
        self._request_method = request.method
        if not keep_alive:
            self._keep_alive = False
        self._writing = F_CHUNKED if framing == F_CHUNKED else F_CONTENT_LENGTH
        self._out_remaining = length
        self.our_state = SEND_BODY
        return b"%s %s HTTP/1.1\r\n%s" % (request.method, request.target, _write_fields(headers))

    cdef bytes _send_informational(self, object info):
        if self.our_role is not SERVER or self.our_state is not SEND_RESPONSE:
            raise LocalProtocolError(f"cannot send a 1xx in state {self.our_state}")
        self.they_are_waiting_for_100_continue = False
        if info.status_code == 101 and self.their_state is MIGHT_SWITCH_PROTOCOL:
            self.our_state = self.their_state = SWITCHED_PROTOCOL
        return b"HTTP/1.1 %d %s\r\n%s" % (
            info.status_code,
            info.reason,
            _write_fields(info.headers),
        )

    cdef bytes _send_response(self, object response):
        cdef long long length
        cdef Py_ssize_t lengths
        if self.our_role is not SERVER or self.our_state is not SEND_RESPONSE:
            raise LocalProtocolError(f"cannot send a response in state {self.our_state}")
        self.they_are_waiting_for_100_continue = False
        status = response.status_code
        cdef list raw = list(response.headers.raw_items())
        lower, noted = note_fields(raw)
        headers = Headers(raw, lower)
        # (read before _framing, which may drop repeated fields and so move the others)
        connection = _tokens(lower, noted, _F_CONNECTION)
        cdef bint keep_alive = _keep_alive(lower, noted, response.http_version)
        cdef int framing = _framing(lower, raw, noted, &length, &lengths)
        method = self._request_method
        # As h11: the headers say "close" when keep-alive had already ended or the body
        # can only end with the connection; a response's own "close" is sent as it is.
        cdef bint need_close = not self._keep_alive
        cdef bint no_body = status == 204 or status == 304 or (
            method == _CONNECT and 200 <= status < 300
        )
        if framing != F_CONTENT_LENGTH and not no_body:
            # Chunked, or no length: chunked for an HTTP/1.1 client (one framing header,
            # written last), else the end of the connection marks the body's end.
            raw = [(n, v) for n, v in raw if n.lower() not in _FRAMING_FIELDS]
            if self.their_http_version is not None and self.their_http_version >= _HTTP_11:
                raw.append((b"Transfer-Encoding", b"chunked"))
                framing = F_CHUNKED
            else:
                framing = F_NONE
                need_close = need_close or method != _HEAD
            headers = Headers(raw)
        if need_close:
            tokens = set(connection)
            tokens.discard(_KEEP_ALIVE)
            tokens.add(_CLOSE)
            raw = [(n, v) for n, v in raw if n.lower() != _F_CONNECTION]
            raw.append((b"Connection", b", ".join(sorted(tokens))))
            headers = Headers(raw)
        if need_close or not keep_alive:
            self._keep_alive = False
            self._done_to_close()
        head = b"HTTP/1.1 %d %s\r\n%s" % (status, response.reason, _write_fields(headers))
        if status == 204 or status == 304 or method == _HEAD:
            self._writing, self._out_remaining = F_CONTENT_LENGTH, 0
        elif method == _CONNECT and 200 <= status < 300 and self._switch_proposed:
            self.our_state = self.their_state = SWITCHED_PROTOCOL
            return head
        elif framing == F_CHUNKED:
            self._writing = F_CHUNKED
        elif framing == F_CONTENT_LENGTH:
            self._writing, self._out_remaining = F_CONTENT_LENGTH, length
        else:
            self._writing = F_CLOSE
        self._switch_proposed = False  # a final answer other than a switch: none now
        if self.their_state is MIGHT_SWITCH_PROTOCOL:
            self.their_state = DONE if self._keep_alive else MUST_CLOSE
        self.our_state = SEND_BODY
        return head

    cdef object _send_data(self, object data):
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError(f"cannot send data in state {self.our_state}")
        if self.our_role is CLIENT:
            self.they_are_waiting_for_100_continue = False
        cdef Py_ssize_t n = len(data)
        if self._writing == F_CONTENT_LENGTH:
            if n > self._out_remaining:
                raise LocalProtocolError("Too much data for declared Content-Length")
            self._out_remaining -= n
            return data
        if self._writing == F_CHUNKED:
            return b"%x\r\n%s\r\n" % (n, data) if n else b""
        return data

    cdef bytes _send_end(self, object end):
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError(f"cannot end a message in state {self.our_state}")
        cdef bytes out = b""
        if self._writing == F_CONTENT_LENGTH:
            if self._out_remaining:
                raise LocalProtocolError("Too little data for declared Content-Length")
        elif self._writing == F_CHUNKED:
            out = b"0\r\n" + _write_fields(end.headers)
        elif self._writing == F_CLOSE:
            self._keep_alive = False
        self._writing = F_NONE
        if self.our_role is CLIENT and self._switch_proposed:
            self.our_state = MIGHT_SWITCH_PROTOCOL
        else:
            self.our_state = DONE if self._keep_alive else MUST_CLOSE
            if not self._keep_alive:
                self._done_to_close()
        return out

    # -- cycles -----------------------------------------------------------------------------

    def start_next_cycle(self):
        """Both sides are ``DONE``: the connection is ready for its next request."""
        if self.our_state is not DONE or self.their_state is not DONE:
            raise LocalProtocolError(
                f"not in a reusable state: ours {self.our_state}, theirs {self.their_state}"
            )
        self.our_state = self.their_state = IDLE
        self._request_method = None
        self._switch_proposed = False
        self.they_are_waiting_for_100_continue = False
