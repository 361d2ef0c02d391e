r"""The sidecar's HTTP/1.1 connection, in Python; the same API as ``_h1_conn_c``.

>>> conn = Connection(SERVER)
>>> conn.receive_data(b"GET /ratings HTTP/1.1\r\nHost: ratings\r\n\r\n")
>>> conn.next_event().target
b'/ratings'
>>> conn.next_event()
EndOfMessage(headers=[])
>>> conn.send(Response(status_code=204, headers=[]))
b'HTTP/1.1 204 \r\n\r\n'

What the connection does (states, framing, refusals) is described in
:mod:`meshstats.proxy.h1`, which selects this twin or the compiled one. The heads are
split by ``_h1_head_py``, so this backend is Python throughout.
"""

from __future__ import annotations

import re
from typing import Any

from ._h1_events import (
    CLIENT,
    CLOSED,
    DONE,
    ERROR,
    IDLE,
    MAX_INCOMPLETE_EVENT_SIZE,
    MIGHT_SWITCH_PROTOCOL,
    MUST_CLOSE,
    NEED_DATA,
    PAUSED,
    SEND_BODY,
    SEND_RESPONSE,
    SERVER,
    SWITCHED_PROTOCOL,
    ConnectionClosed,
    Data,
    EndOfMessage,
    HeaderList,
    Headers,
    InformationalResponse,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    Role,
    State,
)
from ._h1_head_py import note_fields, parse_fields, parse_head, write_fields

__all__ = ["Connection"]

# -- grammar (RFC 9112 as h11 reads it: the head parser in _h1_head_py) ----------------------

_HEAD_END = re.compile(rb"\n\r?\n")
_CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_CONTENT_LENGTH = re.compile(rb"[0-9]+")
_CONTENT_LENGTH_MAX_DIGITS = 20
_FRAMING_FIELDS = (b"content-length", b"transfer-encoding")
Noted = dict[bytes, list[int]]


def _fields(block: bytes) -> tuple[HeaderList, HeaderList, Noted]:
    """The raw and lowercased fields of a field section (its lines, each with its line end),
    validated, and where the fields the codec reads are (``meshstats._h1_head.NOTED``)."""
    try:
        return parse_fields(block)
    except ValueError as exc:
        raise RemoteProtocolError(str(exc)) from None


def _tokens(lower: HeaderList, noted: Noted, name: bytes) -> list[bytes]:
    """The comma-separated, lowercased values of every noted ``name`` field."""
    out = []
    for i in noted.get(name, ()):
        for token in lower[i][1].lower().split(b","):
            token = token.strip()
            if token:
                out.append(token)
    return out


def _framing(lower: HeaderList, raw: HeaderList, noted: Noted) -> tuple[str, int, int]:
    """How a message's body is framed, after h11's normalization: ``("chunked", 0)``,
    ``("content-length", n)`` or ``("none", 0)`` when it names neither, and how many
    ``Content-Length`` values it carried. Equal repeats of ``Content-Length`` (as fields or
    a list) are merged into the first field, in place; anything else that could be read two
    ways is refused (the first problem in field order, as h11 reports it)."""
    lengths_at = noted.get(b"content-length", [])
    codings_at = noted.get(b"transfer-encoding", [])
    if not lengths_at and not codings_at:
        return "none", 0, 0
    if not codings_at and len(lengths_at) == 1:
        # The common case, one plain length: what the loop below would find, sooner.
        value = lower[lengths_at[0]][1]
        if value.isdigit() and len(value) <= _CONTENT_LENGTH_MAX_DIGITS:
            return "content-length", int(value), 1
    length: bytes | None = None
    chunked = False
    repeats: list[int] = []
    lengths = 0
    for i in sorted(lengths_at + codings_at):
        name, value = lower[i]
        if name == b"content-length":
            lengths += 1 + value.count(b",")
            values = {part.strip() for part in value.split(b",")}
            if len(values) != 1:
                raise RemoteProtocolError("conflicting Content-Length headers")
            single = values.pop()
            if (
                _CONTENT_LENGTH.fullmatch(single) is None
                or len(single) > _CONTENT_LENGTH_MAX_DIGITS
            ):
                raise RemoteProtocolError("bad Content-Length")
            if length is not None:
                if single != length:
                    raise RemoteProtocolError("conflicting Content-Length headers")
                repeats.append(i)
            length = single
            if single != value:
                lower[i] = (name, single)
                raw[i] = (raw[i][0], single)
        else:
            if chunked:
                raise RemoteProtocolError("multiple Transfer-Encoding headers", 501)
            if value.lower() != b"chunked":
                raise RemoteProtocolError("Only Transfer-Encoding: chunked is supported", 501)
            chunked = True
            if value != b"chunked":
                lower[i] = (name, b"chunked")
                raw[i] = (raw[i][0], b"chunked")
    for i in reversed(repeats):  # (the notes are stale from here on)
        del lower[i], raw[i]
    if chunked:
        return "chunked", 0, lengths
    if length is not None:
        return "content-length", int(length), lengths
    return "none", 0, lengths


def _keep_alive(lower: HeaderList, noted: Noted, http_version: bytes) -> bool:
    return http_version >= b"1.1" and b"close" not in _tokens(lower, noted, b"connection")


# -- the connection -----------------------------------------------------------------------------


class Connection:
    """One end of an HTTP/1.1 connection (``role``: :data:`CLIENT` or :data:`SERVER`): bytes
    in (:meth:`receive_data`), events out (:meth:`next_event`), events in (:meth:`send`),
    bytes out. States and their meaning as h11's (``our_state``, ``their_state``)."""

    def __init__(self, role: Role) -> None:
        self.our_role = role
        self.their_role = SERVER if role is CLIENT else CLIENT
        self._buf = bytearray()
        self._pos = 0  # parsed up to here
        self._dropped = 0  # bytes of the connection dropped from the front of _buf
        self._closed = False  # the peer's EOF came
        self.our_state: State = IDLE
        self.their_state: State = IDLE
        self._keep_alive = True
        self._request_method: bytes | None = None
        self.their_http_version: bytes | None = None
        self._switch_proposed = False  # the request asked to upgrade (or was a CONNECT)
        self.they_are_waiting_for_100_continue = False
        # The body being read: "content-length" (_remaining bytes left), "chunked", "close"
        # (read until EOF); for chunked, the bytes left in the current chunk, or -1 while
        # the chunk's CRLF is due, or -2 while reading the trailer section.
        self._reading: str | None = None
        self._remaining = 0
        self._chunk = 0
        # What we are writing: "content-length" (_out_remaining bytes left) or "chunked"
        self._writing: str | None = None
        self._out_remaining = 0

    # -- receiving ------------------------------------------------------------------------

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received but not parsed yet, and whether the peer's EOF came."""
        return bytes(self._buf[self._pos :]), self._closed

    def unparsed(self) -> int:
        """How many received bytes are not parsed yet (``len(trailing_data[0])``)."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` is its EOF."""
        if not data:
            self._closed = True
            return
        if self._closed:
            raise RuntimeError("received close, then received more data?")
        if self._pos and self._pos == len(self._buf):
            self._dropped += self._pos
            self._buf = bytearray(data)
            self._pos = 0
        else:
            if self._pos > 65536:
                del self._buf[: self._pos]
                self._dropped += self._pos
                self._pos = 0
            self._buf += data

    def next_event(self) -> Any:
        """The next event, :data:`NEED_DATA`, or :data:`PAUSED` (their message is done and
        this cycle is not over, or the protocol switched)."""
        if self.their_state is ERROR:
            raise RemoteProtocolError("Can't receive data when peer state is ERROR")
        start = self._pos
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

    def _at(self, exc: ProtocolError, pos: int) -> ProtocolError:
        exc.offset = self._dropped + pos
        exc.args = (f"{exc.args[0]} (at byte {exc.offset})",)
        return exc

    def _next(self) -> Any:
        state = self.their_state
        if state is SEND_BODY:
            return self._body()
        if state is IDLE and (self.our_role is SERVER or self.our_state is not IDLE):
            return self._head()
        if state is MIGHT_SWITCH_PROTOCOL or state is SWITCHED_PROTOCOL:
            return PAUSED
        if self._pos < len(self._buf):
            if state is DONE:
                return PAUSED
            raise RemoteProtocolError("Got data when expecting EOF")
        if self._closed:
            self.their_state = CLOSED
            return ConnectionClosed()
        return NEED_DATA

    def _head(self) -> Any:
        buf, pos = self._buf, self._pos
        if pos == len(buf):
            if self._closed:
                if self.our_role is CLIENT:
                    raise RemoteProtocolError("peer closed connection before its response")
                self.their_state = CLOSED
                return ConnectionClosed()
            return NEED_DATA
        if buf[pos] == 0x0A or buf[pos : pos + 2] == b"\r\n":
            raise RemoteProtocolError("no request line received")
        found = _HEAD_END.search(buf, pos)
        if found is None:
            if buf[pos] < 0x21:
                raise RemoteProtocolError("illegal request line")
            if self._closed and self.unparsed() <= MAX_INCOMPLETE_EVENT_SIZE:
                raise RemoteProtocolError("peer unexpectedly closed connection")
            return NEED_DATA  # (next_event refuses it with 431 when over the limit)
        end = found.end()
        head = bytes(buf[pos:end])
        self._pos = end
        request = self.our_role is SERVER
        try:
            first, second, third, raw, lower, noted = parse_head(head, request)
        except ValueError as exc:
            raise RemoteProtocolError(str(exc)) from None
        if request:
            return self._request(first, second, third, raw, lower, noted)  # type: ignore[arg-type]
        return self._response(first, second, third, raw, lower, noted)  # type: ignore[arg-type]

    def _request(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        raw: HeaderList,
        lower: HeaderList,
        noted: Noted,
    ) -> Request:
        hosts = len(noted.get(b"host", ()))
        upgrade = _tokens(lower, noted, b"upgrade")
        keep_alive = _keep_alive(lower, noted, version)
        expects = _tokens(lower, noted, b"expect") if version >= b"1.1" else []
        framing, length, lengths = _framing(lower, raw, noted)
        headers = Headers(raw, lower)
        if hosts > 1:
            raise RemoteProtocolError("Found multiple Host: headers")
        if version == b"1.1" and hosts == 0:
            raise RemoteProtocolError("Missing mandatory Host: header")
        request = Request(method=method, target=target, headers=headers, http_version=version)
        request.content_lengths = lengths
        self._request_method = method
        self.their_http_version = version
        if method == b"CONNECT" or upgrade:
            self._switch_proposed = True
        if not keep_alive:
            self._keep_alive = False
        if b"100-continue" in expects:
            self.they_are_waiting_for_100_continue = True
        self.our_state = SEND_RESPONSE
        self._start_body(framing if framing != "none" else "content-length", length)
        return request

    def _response(
        self,
        version: bytes,
        status: int,
        reason: bytes,
        raw: HeaderList,
        lower: HeaderList,
        noted: Noted,
    ) -> Any:
        keep_alive = _keep_alive(lower, noted, version)
        framing, length, _ = _framing(lower, raw, noted)
        self.their_http_version = version
        if status < 200:
            info = InformationalResponse(
                status_code=status, headers=Headers(raw, lower), reason=reason,
                http_version=version,
            )  # fmt: skip
            if status == 101:
                if not self._switch_proposed:
                    raise RemoteProtocolError("101 Switching Protocols without an upgrade asked")
                self.their_state = self.our_state = SWITCHED_PROTOCOL
            return info
        headers = Headers(raw, lower)
        response = Response(
            status_code=status, headers=headers, reason=reason, http_version=version
        )
        if not keep_alive:
            self._keep_alive = False
            self._done_to_close()
        method = self._request_method
        if status in (204, 304) or method == b"HEAD":
            framing, length = "content-length", 0
        elif method == b"CONNECT" and 200 <= status < 300:
            framing, length = "content-length", 0
            if self._switch_proposed:
                self.their_state = self.our_state = SWITCHED_PROTOCOL
                return response
        elif framing == "none":
            framing = "close"
        # A final answer other than a switch: no switch now (h11 drops the proposal).
        self._switch_proposed = False
        if self.our_state is MIGHT_SWITCH_PROTOCOL:
            self.our_state = DONE if self._keep_alive else MUST_CLOSE
        self._start_body(framing, length)
        return response

    def _start_body(self, framing: str, length: int) -> None:
        self.their_state = SEND_BODY
        self._reading = framing
        self._remaining = length
        self._chunk = 0

    def _body(self) -> Any:
        reading = self._reading
        buf, pos = self._buf, self._pos
        if reading == "content-length":
            if self._remaining == 0:
                return self._message_end(EndOfMessage())
            available = len(buf) - pos
            if available == 0:
                if self._closed:
                    raise RemoteProtocolError(
                        "peer closed connection without sending complete message body"
                    )
                return NEED_DATA
            take = min(available, self._remaining)
            self._pos = pos + take
            self._remaining -= take
            return Data(bytes(buf[pos : pos + take]))
        if reading == "close":
            if pos < len(buf):
                self._pos = len(buf)
                return Data(bytes(buf[pos:]))
            if self._closed:
                self._keep_alive = False
                return self._message_end(EndOfMessage())
            return NEED_DATA
        return self._chunked()

    def _chunked(self) -> Any:
        buf, pos = self._buf, self._pos
        chunk = self._chunk
        if chunk == -2:  # the trailer section
            if pos == len(buf):
                return self._starved()
            if buf[pos : pos + 2] == b"\r\n" or buf[pos : pos + 1] == b"\n":
                self._pos = pos + (2 if buf[pos] == 0x0D else 1)
                return self._message_end(EndOfMessage())
            found = _HEAD_END.search(buf, pos)
            if found is None:
                return self._starved()
            block = bytes(buf[pos : found.end()])
            self._pos = found.end()
            raw, lower, noted = _fields(block[: -1 if block.endswith(b"\n\n") else -2])
            _framing(lower, raw, noted)  # refused there as in a head
            return self._message_end(EndOfMessage(Headers(raw, lower)))
        if chunk == -1:  # the CRLF after a chunk's data
            got = bytes(buf[pos : pos + 2])
            if got != b"\r\n"[: len(got)]:
                raise RemoteProtocolError(f"malformed chunk footer: {got!r}")
            if len(got) < 2:
                return self._starved()
            pos += 2
            self._pos = pos
            chunk = self._chunk = 0
        if chunk == 0:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return self._starved()
            line = bytes(buf[pos : eol + 2])
            match = _CHUNK_HEADER.fullmatch(line)
            if match is None:
                raise RemoteProtocolError(f"illegal chunk header: {line[:64]!r}")
            self._pos = pos = eol + 2
            chunk = int(match.group(1), 16)
            if chunk == 0:
                self._chunk = -2
                return self._chunked()
            self._chunk = chunk
        available = len(buf) - pos
        if available == 0:
            return self._starved()
        take = min(available, chunk)
        self._pos = pos + take
        self._chunk = chunk - take if take < chunk else -1
        return Data(bytes(buf[pos : pos + take]))

    def _starved(self) -> Any:
        if self._closed:
            raise RemoteProtocolError(
                "peer closed connection without sending complete message body "
                "(incomplete chunked read)"
            )
        return NEED_DATA

    def _message_end(self, event: EndOfMessage) -> EndOfMessage:
        self._reading = None
        if self.our_role is SERVER:
            self.they_are_waiting_for_100_continue = False
            if self._switch_proposed and self.our_state is not SWITCHED_PROTOCOL:
                self.their_state = MIGHT_SWITCH_PROTOCOL
                return event
        self.their_state = DONE if self._keep_alive else MUST_CLOSE
        return event

    def _done_to_close(self) -> None:
        if self.our_state is DONE:
            self.our_state = MUST_CLOSE
        if self.their_state is DONE:
            self.their_state = MUST_CLOSE

    # -- sending ----------------------------------------------------------------------------

    def send(self, event: Any) -> bytes:
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

    def _send_request(self, request: Request) -> bytes:
        if self.our_role is not CLIENT or self.our_state is not IDLE:
            raise LocalProtocolError(f"cannot send a request in state {self.our_state}")
        headers = request.headers
        lower, noted = note_fields(headers.raw_items())
        if request.method == b"CONNECT" or _tokens(lower, noted, b"upgrade"):
            self._switch_proposed = True
        keep_alive = _keep_alive(lower, noted, request.http_version)
        framing, length, _ = _framing(lower, headers.raw_items(), noted)
        self._request_method = request.method
        if not keep_alive:
            self._keep_alive = False
        self._writing = "chunked" if framing == "chunked" else "content-length"
        self._out_remaining = length
        self.our_state = SEND_BODY
        return b"%s %s HTTP/1.1\r\n%s" % (request.method, request.target, _write_fields(headers))

    def _send_informational(self, info: InformationalResponse) -> bytes:
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

    def _send_response(self, response: Response) -> bytes:
        if self.our_role is not SERVER or self.our_state is not SEND_RESPONSE:
            raise LocalProtocolError(f"cannot send a response in state {self.our_state}")
        self.they_are_waiting_for_100_continue = False
        status = response.status_code
        raw = list(response.headers.raw_items())
        lower, noted = note_fields(raw)
        headers = Headers(raw, lower)
        # (read before _framing, which may drop repeated fields and so move the others)
        connection = _tokens(lower, noted, b"connection")
        keep_alive = _keep_alive(lower, noted, response.http_version)
        framing, length, _ = _framing(lower, raw, noted)
        method = self._request_method
        # As h11: the headers say "close" when keep-alive had already ended or the body
        # can only end with the connection; a response's own "close" is sent as it is.
        need_close = not self._keep_alive
        no_body = status in (204, 304) or (method == b"CONNECT" and 200 <= status < 300)
        if framing != "content-length" and not no_body:
            # Chunked, or no length: chunked for an HTTP/1.1 client (one framing header,
            # written last), else the end of the connection marks the body's end.
            raw = [(n, v) for n, v in raw if n.lower() not in _FRAMING_FIELDS]
            if self.their_http_version is not None and self.their_http_version >= b"1.1":
                raw.append((b"Transfer-Encoding", b"chunked"))
                framing = "chunked"
            else:
                framing = "none"
                need_close = need_close or method != b"HEAD"
            headers = Headers(raw)
        if need_close:
            tokens = set(connection)
            tokens.discard(b"keep-alive")
            tokens.add(b"close")
            raw = [(n, v) for n, v in raw if n.lower() != b"connection"]
            raw.append((b"Connection", b", ".join(sorted(tokens))))
            headers = Headers(raw)
        if need_close or not keep_alive:
            self._keep_alive = False
            self._done_to_close()
        head = b"HTTP/1.1 %d %s\r\n%s" % (status, response.reason, _write_fields(headers))
        if status in (204, 304) or method == b"HEAD":
            self._writing, self._out_remaining = "content-length", 0
        elif method == b"CONNECT" and 200 <= status < 300 and self._switch_proposed:
            self.our_state = self.their_state = SWITCHED_PROTOCOL
            return head
        elif framing == "chunked":
            self._writing = "chunked"
        elif framing == "content-length":
            self._writing, self._out_remaining = "content-length", length
        else:
            self._writing = "close"
        self._switch_proposed = False  # a final answer other than a switch: none now
        if self.their_state is MIGHT_SWITCH_PROTOCOL:
            self.their_state = DONE if self._keep_alive else MUST_CLOSE
        self.our_state = SEND_BODY
        return head

    def _send_data(self, data: bytes) -> bytes:
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError(f"cannot send data in state {self.our_state}")
        if self.our_role is CLIENT:
            self.they_are_waiting_for_100_continue = False
        if self._writing == "content-length":
            if len(data) > self._out_remaining:
                raise LocalProtocolError("Too much data for declared Content-Length")
            self._out_remaining -= len(data)
            return data
        if self._writing == "chunked":
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        return data

    def _send_end(self, end: EndOfMessage) -> bytes:
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError(f"cannot end a message in state {self.our_state}")
        out = b""
        if self._writing == "content-length":
            if self._out_remaining:
                raise LocalProtocolError("Too little data for declared Content-Length")
        elif self._writing == "chunked":
            out = b"0\r\n" + _write_fields(end.headers)
        elif self._writing == "close":
            self._keep_alive = False
        self._writing = None
        if self.our_role is CLIENT and self._switch_proposed:
            self.our_state = MIGHT_SWITCH_PROTOCOL
        else:
            self.our_state = DONE if self._keep_alive else MUST_CLOSE
            if not self._keep_alive:
                self._done_to_close()
        return out

    # -- cycles -----------------------------------------------------------------------------

    def start_next_cycle(self) -> None:
        """Both sides are :data:`DONE`: the connection is ready for its next request."""
        if self.our_state is not DONE or self.their_state is not DONE:
            raise LocalProtocolError(
                f"not in a reusable state: ours {self.our_state}, theirs {self.their_state}"
            )
        self.our_state = self.their_state = IDLE
        self._request_method = None
        self._switch_proposed = False
        self.they_are_waiting_for_100_continue = False


def _write_fields(headers: Headers) -> bytes:
    return write_fields(headers.raw_items())
