"""The HTTP/2 ends of ``bench_proxy.py --h2``: an h2c app (prior knowledge) and a load
client that keeps N streams in flight on one connection, as ``asyncio.Protocol``s. The app
runs on the ``h2`` state machine directly (none of the sidecar's code), so every relayed
stream is read and answered by an independent HTTP/2 implementation.

Protocols rather than streams, and one write per batch of events, because both run in the
measured processes: the app beside the sidecars (its cost is subtracted with its own
``direct`` figure, as the HTTP/1.1 app's is), the client in the load process, which must
not be what limits the throughput. Header validation is off on the app for the same
reason: the sidecars validate what crosses them.

The load client runs by default on the relay's own codec (``meshstats.proxy.h2codec``,
held to h2 by ``tests/test_proxy_h2codec.py``), as the HTTP/1.1 load client is the demo's
``HttpClient``. On one connection the client is a stage in series with the sidecars, not
beside them as 16 HTTP/1.1 connections are: a batch of responses arrives together, and
the sidecars wait while the client reads it and opens the next streams. On h2 that took
~115 µs a stream and left the pair process 15 % idle (December 2026: pair 85 % busy, load
client 17 %; on the codec 90–92 % and 9–11 %). ``client="h2"`` keeps h2's client for that
comparison (``bench_proxy.py --h2-client h2``).

The app answers every request as the HTTP/1.1 bench app (``HttpApp``) does: 200, JSON
``{"service": ..., "path": ...}``, ``content-type`` and ``content-length``; so both
protocols carry the same body.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from meshstats.proxy import h2codec

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


class H2Load(asyncio.Protocol):
    """One h2c connection (prior knowledge) that sends GETs, ``streams`` in flight at a
    time: each response that ends opens the next request's stream, in the same write."""

    def __init__(self, authority: bytes, client: str = "relay") -> None:
        self.conn: h2.connection.H2Connection | h2codec.Connection
        if client == "relay":
            self.conn = h2codec.Connection(client=True)  # a client that takes no push
        elif client == "h2":
            self.conn = h2.connection.H2Connection(_config(client=True))
            # No server push: the client reads only the responses it asked for.
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.ENABLE_PUSH: 0}
            )
        else:
            raise ValueError(f"client {client!r}: 'relay' or 'h2'")
        self.transport: asyncio.Transport | None = None
        self.authority = authority
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done: asyncio.Future[None] | None = None
        self._path = b"/"
        self._left = 0  # requests still to open in this run
        self._open = 0  # streams in flight
        self.answered = 0

    @classmethod
    async def connect(cls, port: int, authority: str, client: str = "relay") -> H2Load:
        """``client``: the HTTP/2 implementation, ``"relay"`` or ``"h2"`` (see the module)."""
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: cls(authority.encode(), client), "127.0.0.1", port
        )
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    async def run(self, path: str, requests: int, streams: int) -> None:
        """``requests`` GETs of ``path``, ``streams`` at a time; raises if one is not 200."""
        if self.transport is None or self._done is not None:
            raise ConnectionError("connection closed or busy")
        self._path = path.encode()
        self._left = requests
        self._done = asyncio.get_running_loop().create_future()
        for _ in range(min(streams, requests)):
            self._start()
        self.transport.write(self.conn.data_to_send())
        try:
            await self._done
        finally:
            self._done = None

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
                self._open -= 1
                self.answered += 1
                if self._left > 0:
                    self._start()
                elif self._open == 0 and self._done is not None and not self._done.done():
                    self._done.set_result(None)
            elif isinstance(event, h2.events.StreamReset):
                self._fail(AssertionError(f"stream {event.stream_id} reset: {event.error_code}"))
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._fail(ConnectionError(f"GOAWAY {event.error_code}"))
        out = conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

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
