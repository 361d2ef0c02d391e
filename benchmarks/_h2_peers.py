"""The HTTP/2 ends of ``bench_proxy.py --h2``: an h2c app (prior knowledge) and a load
client that keeps N streams in flight on one connection, as ``asyncio.Protocol``s. The app
runs on the ``h2`` state machine directly (none of the sidecar's code), so every relayed
stream is read and answered by an independent HTTP/2 implementation.

Protocols rather than streams, and one write per batch of events, because both run in the
measured processes: the app beside the sidecars (its cost is subtracted with its own
``direct`` figure, as the HTTP/1.1 app's is), the client in the load process, which must
not be what limits the throughput. Header validation is off on the app for the same
reason: the sidecars validate what crosses them.

The load client is by default :class:`LeanLoad`, written for this as ``h2load`` is for
nghttp2: on one connection the client is a stage in series with the sidecars, not beside
them as 16 HTTP/1.1 connections are: a batch of responses arrives together, and the
sidecars wait while the client reads it and opens the next streams. On ``h2``
(:class:`H2Load`, ``bench_proxy.py --h2-client h2``) that was ~115 µs a stream and left
the pair process 15 % idle (December 2026: pair 85 % busy, load client 17 %), a limit of
the client's, which must not be what a throughput figure measures.

The app answers every request as the HTTP/1.1 bench app (``HttpApp``) does: 200, JSON
``{"service": ..., "path": ...}``, ``content-type`` and ``content-length``; so both
protocols carry the same body.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections import Counter
from typing import TypeVar, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack

Headers = list[tuple[bytes, bytes]]


def _config(client: bool) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=client,
        header_encoding=None,
        validate_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_outbound_headers=False,
        normalize_inbound_headers=False,
    )


def _status(headers: Headers) -> bytes | None:
    for name, value in headers:
        if name == b":status":
            return value
    return None


class H2App(asyncio.Protocol):
    """One h2c connection of the app; ``served`` counts responses by status (shared by
    every connection), ``connections`` how many were accepted."""

    def __init__(self, name: str, served: Counter[int], connections: list[int]) -> None:
        self.name = name
        self.served = served
        connections[0] += 1
        self.conn = h2.connection.H2Connection(_config(client=False))
        self.transport: asyncio.Transport | None = None
        # Responses whose body waits for window: stream -> body (a 44-byte body never does
        # unless a peer shrinks its windows, but an app that drops it would hang a round).
        self.pending: dict[int, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCP transport is not an asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._answer(event.stream_id, event.headers or [])
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                for stream_id, body in list(self.pending.items()):
                    self._send_body(stream_id, body)
            elif isinstance(event, h2.events.StreamReset):
                self.pending.pop(event.stream_id, None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._close()
                return
        out = conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def _answer(self, stream_id: int, headers: Headers) -> None:
        path = next((v for k, v in headers if k == b":path"), b"/").decode()
        body = json.dumps({"service": self.name, "path": path}).encode()
        self.conn.send_headers(
            stream_id,
            [
                (b":status", b"200"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        )
        self._send_body(stream_id, body)

    def _send_body(self, stream_id: int, body: bytes) -> None:
        if self.conn.local_flow_control_window(stream_id) < len(body):
            self.pending[stream_id] = body
            return
        self.pending.pop(stream_id, None)
        self.conn.send_data(stream_id, body, end_stream=True)
        self.served[200] += 1

    def _close(self) -> None:
        if self.transport is not None:
            out = self.conn.data_to_send()
            if out:
                self.transport.write(out)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def start_h2_app(name: str) -> tuple[asyncio.Server, int, Counter[int], list[int]]:
    """Serve h2c on a free port: the server, its port, responses by status, connections."""
    served: Counter[int] = Counter()
    connections = [0]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: H2App(name, served, connections), "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1]), served, connections


_Load = TypeVar("_Load", bound="H2Load")


class H2Load(asyncio.Protocol):
    """One h2c connection (prior knowledge) that sends GETs, ``streams`` in flight at a
    time: each response that ends opens the next request's stream, in the same write.
    ``h2``'s client; :class:`LeanLoad` is the default (see the module)."""

    def __init__(self, authority: bytes) -> None:
        self.conn = h2.connection.H2Connection(_config(client=True))
        self.transport: asyncio.Transport | None = None
        self.authority = authority
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done: asyncio.Future[None] | None = None
        self._path = b"/"
        self._left = 0  # requests still to open in this run
        self._open = 0  # streams in flight
        self.answered = 0

    @classmethod
    async def connect(cls: type[_Load], port: int, authority: str) -> _Load:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: cls(authority.encode()), "127.0.0.1", port
        )
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # No server push: the client reads only the responses it asked for.
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.ENABLE_PUSH: 0}
        )
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    async def run(self, path: str, requests: int, streams: int) -> None:
        """``requests`` GETs of ``path``, ``streams`` at a time; raises if one is not 200."""
        if self.transport is None or self._done is not None:
            raise ConnectionError("connection closed or busy")
        self._prepare(path.encode())
        self._left = requests
        self._done = asyncio.get_running_loop().create_future()
        for _ in range(min(streams, requests)):
            self._start()
        self._flush()
        try:
            await self._done
        finally:
            self._done = None

    def _prepare(self, path: bytes) -> None:
        self._path = path

    def _flush(self) -> None:
        if self.transport is not None:
            self.transport.write(self.conn.data_to_send())

    def _start(self) -> None:
        self._left -= 1
        self._open += 1
        self.conn.send_headers(
            self.conn.get_next_available_stream_id(),
            [
                (b":method", b"GET"),
                (b":path", self._path),
                (b":scheme", b"http"),
                (b":authority", self.authority),
            ],
            end_stream=True,
        )

    def _fail(self, error: Exception) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(error)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail(exc)
            return
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                status = _status(event.headers or [])
                if status != b"200":
                    self._fail(AssertionError(f"stream {event.stream_id} answered {status!r}"))
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._ended()
            elif isinstance(event, h2.events.StreamReset):
                self._fail(AssertionError(f"stream {event.stream_id} reset: {event.error_code}"))
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._fail(ConnectionError(f"GOAWAY {event.error_code}"))
        out = conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def _ended(self) -> None:
        self._open -= 1
        self.answered += 1
        if self._left > 0:
            self._start()
        elif self._open == 0 and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ConnectionError("connection lost"))
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.conn.close_connection()
            self.transport.write(self.conn.data_to_send())
            self.transport.close()


# Frame types and flags (RFC 9113 §6) the lean client acts on.
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _CONTINUATION = 0, 1, 3, 4, 6, 7, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_FRAME_HEAD = struct.Struct(">I B I")  # length (24 bits, shifted), flags, stream id
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_WINDOW = 2**31 - 1  # every window the client offers: the server never waits on it


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        (len(payload) << 8 | kind).to_bytes(4, "big")
        + bytes([flags])
        + (stream_id.to_bytes(4, "big") + payload)
    )


class LeanLoad(H2Load):
    """:class:`H2Load` as a load generator written for it (as ``h2load`` is): requests are
    one pre-encoded HEADERS frame with a new stream id; responses are read frame by frame,
    their header blocks decoded by ``hpack`` (so the dynamic table the sidecar encodes
    against is followed exactly) and the status of each checked; DATA only counted. It
    offers the largest windows at once (stream and connection), answers SETTINGS and PING,
    and fails the run on anything but a 200, a reset or a GOAWAY. No code of the relay's."""

    def __init__(self, authority: bytes) -> None:
        super().__init__(authority)
        self._decoder = hpack.Decoder()
        self._buffer = b""
        self._next_id = 1
        self._block = b""  # the request's header block
        self._fragments: list[bytes] = []  # a block still waiting for CONTINUATION
        self._fragment_flags = 0
        self._received = 0  # flow-controlled bytes since the last WINDOW_UPDATE
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        settings = struct.pack(">HIHI", 0x2, 0, 0x4, _WINDOW)  # ENABLE_PUSH 0, window
        update = (_WINDOW - 65_535).to_bytes(4, "big")
        self.transport.write(_PREFACE + _frame(_SETTINGS, 0, 0, settings) + _frame(8, 0, 0, update))

    def _prepare(self, path: bytes) -> None:
        # :method GET and :scheme http from the static table, :path and :authority as
        # literals without indexing (RFC 7541 §6.2.2), so the block never changes.
        self._block = b"\x82\x86" + _literal(4, path) + _literal(1, self.authority)

    def _start(self) -> None:
        self._left -= 1
        self._open += 1
        stream_id, self._next_id = self._next_id, self._next_id + 2
        self._out.append(_frame(_HEADERS, _END_STREAM | _END_HEADERS, stream_id, self._block))

    def _flush(self) -> None:
        if self._out and self.transport is not None:
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        at, size = 0, len(buffer)
        try:
            while size - at >= 9:
                head, flags, stream_id = _FRAME_HEAD.unpack_from(buffer, at)
                length, kind = head >> 8, head & 0xFF
                if size - at - 9 < length:
                    break
                body = buffer[at + 9 : at + 9 + length]
                at += 9 + length
                self._frame(kind, flags, stream_id & 0x7FFF_FFFF, body)
        except (hpack.HPACKError, AssertionError, ConnectionError) as exc:
            self._fail(exc)
            if self.transport is not None:
                self.transport.close()
            return
        self._buffer = buffer[at:]
        if self._received > _WINDOW // 2:  # hand the connection's window back
            self._out.append(_frame(8, 0, 0, self._received.to_bytes(4, "big")))
            self._received = 0
        self._flush()

    def _frame(self, kind: int, flags: int, stream_id: int, body: bytes) -> None:
        if kind == _DATA:
            self._received += len(body)
            if flags & _END_STREAM:
                self._ended()
        elif kind == _HEADERS or kind == _CONTINUATION:
            if kind == _HEADERS:
                self._fragment_flags = flags
                body = _unpadded(flags, body, _PRIORITY)
            self._fragments.append(body)
            if flags & _END_HEADERS:
                block, self._fragments = b"".join(self._fragments), []
                self._headers(stream_id, cast(Headers, self._decoder.decode(block, raw=True)))
        elif kind == _SETTINGS and not flags & _ACK:
            self._out.append(_frame(_SETTINGS, _ACK, 0, b""))
        elif kind == _PING and not flags & _ACK:
            self._out.append(_frame(_PING, _ACK, 0, body))
        elif kind == _RST_STREAM:
            raise AssertionError(f"stream {stream_id} reset: {int.from_bytes(body, 'big')}")
        elif kind == _GOAWAY:
            raise ConnectionError(f"GOAWAY {int.from_bytes(body[4:8], 'big')}")

    def _headers(self, stream_id: int, headers: Headers) -> None:
        status = _status(headers)
        if status is not None and status != b"200":  # (trailers have none)
            raise AssertionError(f"stream {stream_id} answered {status!r}")
        if self._fragment_flags & _END_STREAM:
            self._ended()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.write(_frame(_GOAWAY, 0, 0, bytes(8)))
            self.transport.close()


def _literal(name_index: int, value: bytes) -> bytes:
    """A literal field without indexing, its name from the static table (RFC 7541 §6.2.2;
    both fit their prefixes here)."""
    if name_index >= 15 or len(value) >= 127:
        raise ValueError("a short field only")
    return bytes([name_index, len(value)]) + value


def _unpadded(flags: int, body: bytes, priority: int) -> bytes:
    """A HEADERS frame's fragment, without its padding and priority fields."""
    start, end = 0, len(body)
    if flags & _PADDED:
        start, end = 1, end - body[0]
    if flags & priority:
        start += 5
    return body[start:end]


#: ``bench_proxy.py --h2-client``: the load client by name.
CLIENTS: dict[str, type[H2Load]] = {"lean": LeanLoad, "h2": H2Load}
