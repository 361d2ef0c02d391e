"""An HTTP/2 app (h2c, prior knowledge) and an HTTP/2 client for the sidecar tests, written
on the ``h2`` state machine directly (none of the sidecar's relay code): each drives its
own flow control, so a test decides when the client hands back window.

The app (:class:`H2App`) answers by path:

- ``/status/<code>``: that status, body ``status <code>``;
- ``/echo``: 200 with the request body, and the request's trailers (if any) echoed back as
  response trailers, plus ``x-echo-trailer: yes``;
- ``/big/<n>``: 200 with ``n`` bytes (a repeated pattern), sent within the client's window;
- ``/reset-before``: resets the stream (``code`` from ``?code=``, default CANCEL) before
  any response; ``/reset-after``: sends 200 headers and 5 bytes, then resets;
- ``/hang``: never answers (until the stream is reset);
- ``/noread``: never answers, and never hands back the window of the body it receives (an
  app that does not read);
- ``/headers``: 200, with peer-exchange headers of its own (an app trying to speak for its
  sidecar).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

Headers = list[tuple[bytes, bytes]]
PATTERN = bytes(range(256)) * 64  # 16 KiB


def big_body(n: int) -> bytes:
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


def get(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


@dataclass
class Seen:
    """One request as the app received it."""

    headers: Headers
    body: bytes = b""
    trailers: Headers = field(default_factory=list)
    reset: int | None = None  # the error code the downstream reset the stream with


class _Peer:
    """One end of an HTTP/2 connection: an h2 state machine on asyncio streams."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: bool
    ) -> None:
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=client, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.changed = asyncio.Event()  # any event: waiters re-check their condition
        self.closed = False
        self.sent_data = 0  # DATA bytes sent by send()
        self.reset_streams: set[int] = set()  # streams the peer reset
        self.blocked = asyncio.Event()  # set while send() waits for window

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def pump(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    if isinstance(event, h2.events.StreamReset):
                        self.reset_streams.add(event.stream_id)
                    self.on_event(event)
                self.flush()
                self.changed.set()
        except OSError:
            pass
        finally:
            self.closed = True
            self.changed.set()

    def on_event(self, event: h2.events.Event) -> None:
        raise NotImplementedError

    async def wait(self) -> None:
        self.changed.clear()
        await self.changed.wait()

    async def send(self, stream_id: int, data: bytes, end: bool) -> None:
        """Send within the peer's window, waiting for it to open; stops if the peer resets
        the stream (what it answered before then stands)."""
        view = memoryview(data)
        while view:
            if stream_id in self.reset_streams:
                return
            window = min(self.conn.local_flow_control_window(stream_id), len(view))
            window = min(window, self.conn.max_outbound_frame_size)
            if window <= 0:
                self.blocked.set()
                await self.wait()
                if self.closed:
                    raise ConnectionError("closed")
                continue
            self.blocked.clear()
            self.conn.send_data(stream_id, bytes(view[:window]))
            self.sent_data += window
            view = view[window:]
            self.flush()
            await self.writer.drain()
        if end and stream_id not in self.reset_streams:
            self.conn.end_stream(stream_id)
            self.flush()


class H2App(_Peer):
    """The app: one instance per connection; requests recorded in ``seen`` (shared)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        seen: list[Seen],
        blocked: asyncio.Event,
        sent: list[int],
    ) -> None:
        super().__init__(reader, writer, client=False)
        self.seen = seen
        self.blocked = blocked  # set while a response waits for window
        self.sent = sent  # [bytes of /big sent so far]
        self.requests: dict[int, Seen] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            seen = Seen(list(event.headers or []))
            self.requests[event.stream_id] = seen
            self.seen.append(seen)
            path = get(seen.headers, b":path") or b""
            if not path.startswith(b"/echo"):
                self._spawn(event.stream_id, seen)  # answered at once
        elif isinstance(event, h2.events.DataReceived):
            seen = self.requests[event.stream_id]
            seen.body += event.data or b""
            if get(seen.headers, b":path") != b"/noread":
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            self.requests[event.stream_id].trailers = list(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            seen = self.requests[event.stream_id]
            if (get(seen.headers, b":path") or b"").startswith(b"/echo"):
                self._spawn(event.stream_id, seen)
        elif isinstance(event, h2.events.StreamReset):
            found = self.requests.get(event.stream_id)
            if found is not None:
                found.reset = event.error_code

    def _spawn(self, stream_id: int, seen: Seen) -> None:
        task = asyncio.ensure_future(self.answer(stream_id, seen))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def answer(self, stream_id: int, seen: Seen) -> None:
        path = (get(seen.headers, b":path") or b"/").decode()
        route, _, query = path.partition("?")
        conn = self.conn
        try:
            if route.startswith("/status/"):
                code = route.rsplit("/", 1)[1]
                conn.send_headers(stream_id, [(b":status", code.encode())])
                await self.send(stream_id, b"status " + code.encode(), True)
            elif route == "/echo":
                conn.send_headers(stream_id, [(b":status", b"200")])
                await self.send(stream_id, seen.body, not seen.trailers)
                if seen.trailers:
                    conn.send_headers(
                        stream_id, seen.trailers + [(b"x-echo-trailer", b"yes")], end_stream=True
                    )
            elif route.startswith("/big/"):
                n = int(route.rsplit("/", 1)[1])
                conn.send_headers(stream_id, [(b":status", b"200")])
                await self._send_counted(stream_id, big_body(n))
            elif route == "/reset-before":
                error = int(query.split("=")[1]) if query.startswith("code=") else 8
                conn.reset_stream(stream_id, error)
            elif route == "/reset-after":
                conn.send_headers(stream_id, [(b":status", b"200")])
                conn.send_data(stream_id, b"hello")
                self.flush()
                await self.writer.drain()
                conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            elif route in ("/hang", "/noread"):
                return
            elif route == "/headers":
                conn.send_headers(
                    stream_id,
                    [
                        (b":status", b"200"),
                        (b"x-envoy-peer-metadata", b"Cg8KBE5BTUUSBxoFZXZpbC0x"),
                        (b"x-envoy-peer-metadata-id", b"evil"),
                    ],
                    end_stream=True,
                )
            else:
                conn.send_headers(stream_id, [(b":status", b"404")], end_stream=True)
            self.flush()
        except (h2.exceptions.StreamClosedError, ConnectionError):
            pass

    async def _send_counted(self, stream_id: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            window = min(self.conn.local_flow_control_window(stream_id), len(view), 16384)
            if window <= 0:
                self.blocked.set()
                await self.wait()
                if self.closed:
                    return
                continue
            self.blocked.clear()
            self.conn.send_data(stream_id, bytes(view[:window]))
            self.sent[0] += window
            view = view[window:]
            self.flush()
            await self.writer.drain()
        self.conn.end_stream(stream_id)
        self.flush()


@dataclass
class AppServer:
    server: asyncio.Server
    port: int
    seen: list[Seen]
    blocked: asyncio.Event
    sent: list[int]
    connections: list[H2App]


async def start_h2_app() -> AppServer:
    seen: list[Seen] = []
    blocked = asyncio.Event()
    sent = [0]
    connections: list[H2App] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        app = H2App(reader, writer, seen, blocked, sent)
        connections.append(app)
        app.conn.initiate_connection()
        app.flush()
        try:
            await app.pump()
        finally:
            for task in list(app.tasks):
                task.cancel()
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    return AppServer(server, port, seen, blocked, sent, connections)


@dataclass
class Response:
    headers: Headers = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: Headers = field(default_factory=list)
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> int:
        return int(get(self.headers, b":status") or b"0")


class H2Client(_Peer):
    """An h2c client with prior knowledge; ``auto_ack=False`` hands back no window until
    :meth:`consume` (a client that does not read)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auto_ack: bool = True
    ) -> None:
        super().__init__(reader, writer, client=True)
        self.auto_ack = auto_ack
        self.responses: dict[int, Response] = collections.defaultdict(Response)
        self.unacked: dict[int, int] = collections.defaultdict(int)
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int, auto_ack: bool = True) -> H2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer, auto_ack)
        client.conn.initiate_connection()
        client.flush()
        client._pump = asyncio.ensure_future(client.pump())
        return client

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.responses[event.stream_id].headers = list(event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            self.responses[event.stream_id].body += event.data or b""
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                self.unacked[event.stream_id] += event.flow_controlled_length
        elif isinstance(event, h2.events.TrailersReceived):
            self.responses[event.stream_id].trailers = list(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            self.responses[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.responses[event.stream_id].reset = event.error_code

    def consume(self) -> None:
        """Hand back every window held (the client reads now, and from now on)."""
        self.auto_ack = True
        for stream_id, size in self.unacked.items():
            try:
                self.conn.acknowledge_received_data(size, stream_id)
            except h2.exceptions.StreamClosedError:
                pass
        self.unacked.clear()
        self.flush()

    async def start(
        self,
        path: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: Headers | None = None,
        trailers: Headers | None = None,
        end: bool = True,
    ) -> int:
        """Open a stream and send the request (or only its start, ``end=False``)."""
        stream_id = self.conn.get_next_available_stream_id()
        request = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"reviews:9080"),
            *(headers or []),
        ]
        no_body = body is None and trailers is None
        self.conn.send_headers(stream_id, request, end_stream=no_body and end)
        self.flush()
        if body is not None:
            await self.send(stream_id, body, trailers is None and end)
        if trailers is not None:
            self.conn.send_headers(stream_id, trailers, end_stream=True)
            self.flush()
        self.responses[stream_id]  # noqa: B018 - made now, so done() can see it
        return stream_id

    def done(self, stream_id: int) -> bool:
        found = self.responses[stream_id]
        return found.ended or found.reset is not None

    async def finish(self, stream_id: int) -> Response:
        while not self.done(stream_id):
            if self.closed:
                raise ConnectionError("connection closed before the response ended")
            await self.wait()
        return self.responses[stream_id]

    async def request(
        self, path: str, *, method: str = "GET", body: bytes | None = None
    ) -> Response:
        return await self.finish(await self.start(path, method=method, body=body))

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self.conn.reset_stream(stream_id, code)
        self.flush()

    async def close(self) -> None:
        if not self.closed:
            try:
                self.conn.close_connection()
                self.flush()
            except h2.exceptions.ProtocolError:
                pass
        self.writer.close()
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
