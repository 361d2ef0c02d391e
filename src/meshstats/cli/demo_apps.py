"""The demo mesh's applications: small asyncio HTTP/1.1 (h11) and TCP servers on loopback.

>>> import asyncio
>>> async def main() -> tuple[int, int]:
...     app = await HttpApp("details", latency_ms=0.0).start()
...     client = HttpClient()
...     try:
...         status, _body = await client.get(("127.0.0.1", app.port), "/details/0", "details:9080")
...         return status, app.served[200]
...     finally:
...         await client.close()
...         await app.close()
>>> asyncio.run(main())
(200, 1)

Each app counts what it served (:attr:`HttpApp.served`, by status code; :attr:`EchoApp.bytes_in`
and ``bytes_out``), independently of the sidecars: the demo prints those counts beside the
telemetry, and the tests compare the two. An app that calls others does so through its own
sidecar's outbound ports (:attr:`HttpApp.upstreams`, set once the sidecar is up), as a
workload in a mesh calls ``localhost`` iptables would redirect.

Failures are deterministic: with ``error_every=k`` the k-th, 2k-th, ... request gets a 503, so a
run's error share is exact (a handler may answer a status of its own, such as a 404, the same
way: from a counter), and latencies are ``latency_ms`` times a log-normal factor with
spread ``jitter`` (0: constant) from a seeded generator.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import h11

__all__ = ["EchoApp", "HttpApp", "HttpClient", "TcpLine", "Address"]

Address = tuple[str, int]
_READ = 65536
S = TypeVar("S", bound="_Server")


class _Server:
    """An asyncio TCP server that keeps its connections' tasks, so close() leaves none behind."""

    port = 0

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self: S, host: str = "127.0.0.1", port: int = 0) -> S:
        self._server = await asyncio.start_server(self._accept, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self.serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, h11.ProtocolError):
            pass  # the sidecar went away mid-request: nothing to answer
        except asyncio.CancelledError:
            # Only close() cancels these. Ending quietly matters: asyncio 3.11's stream
            # callback calls task.exception() on the finished task, which raises (and logs
            # a traceback) for a cancelled one.
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(_READ))


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")


#: What an app's handler answers: a 200's body, or a status and a body.
Answer = bytes | tuple[int, bytes]


class HttpApp(_Server):
    """One workload's HTTP service: waits its latency, then answers JSON (or calls others)."""

    def __init__(
        self,
        name: str,
        *,
        latency_ms: float,
        jitter: float = 0.0,
        error_every: int | None = None,
        seed: int = 0,
        handler: Callable[[HttpApp, h11.Request], Awaitable[Answer]] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.latency_ms = latency_ms
        self.jitter = jitter
        self.error_every = error_every
        self.handler = handler
        self.served: Counter[int] = Counter()
        self.calls = 0  # requests that reached the handler (productpage round-robins on it)
        self.upstreams: dict[str, list[Address]] = {}
        self.client = HttpClient()
        self._rng = random.Random(seed)
        self._received = 0

    def service_time(self) -> float:
        """Seconds this request takes: the median latency, log-normally spread."""
        factor = math.exp(self._rng.gauss(0.0, self.jitter)) if self.jitter else 1.0
        return self.latency_ms * factor / 1000.0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = await _next_event(conn, reader)
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed: the sidecar closed its keep-alive connection
            await _read_body(conn, reader)
            self._received += 1
            status, body = await self._answer(event, self._received)
            writer.write(
                conn.send(
                    h11.Response(
                        status_code=status,
                        headers=[
                            ("content-type", "application/json"),
                            ("content-length", str(len(body))),
                        ],
                    )
                )
                + conn.send(h11.Data(data=body))
                + conn.send(h11.EndOfMessage())
            )
            await writer.drain()
            self.served[status] += 1
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _answer(self, request: h11.Request, n: int) -> tuple[int, bytes]:
        await asyncio.sleep(self.service_time())
        if self.error_every and n % self.error_every == 0:
            return 503, b'{"error": "injected fault"}'
        if self.handler is None:
            return 200, json.dumps({"service": self.name, "path": request.target.decode()}).encode()
        try:
            self.calls += 1
            answer = await self.handler(self, request)
        except (OSError, asyncio.IncompleteReadError, h11.ProtocolError) as exc:
            # A call through the sidecar broke (it answers 503 itself for a dead upstream).
            return 502, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
        return answer if isinstance(answer, tuple) else (200, answer)


class HttpClient:
    """Keep-alive HTTP/1.1 GETs with a pool of idle connections per address.

    :attr:`answered` counts the responses received, by ``(address, status)``.
    """

    def __init__(self) -> None:
        self.answered: Counter[tuple[Address, int]] = Counter()
        self._idle: dict[Address, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self._busy: set[asyncio.StreamWriter] = set()

    async def get(self, address: Address, path: str, host: str) -> tuple[int, bytes]:
        idle = self._idle.setdefault(address, [])
        reader, writer = idle.pop() if idle else await asyncio.open_connection(*address)
        self._busy.add(writer)
        conn = h11.Connection(h11.CLIENT)
        try:
            writer.write(
                conn.send(h11.Request(method="GET", target=path, headers=[("host", host)]))
                + conn.send(h11.EndOfMessage())
            )
            await writer.drain()
            response = await _next_event(conn, reader)
            if not isinstance(response, h11.Response):
                raise ConnectionResetError(f"{address}: no response ({type(response).__name__})")
            body = await _read_body(conn, reader)
        except BaseException:
            writer.close()
            raise
        finally:
            self._busy.discard(writer)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            idle.append((reader, writer))
        else:
            writer.close()
        self.answered[address, response.status_code] += 1
        return response.status_code, body

    def count(self, address: Address) -> int:
        """Responses received from ``address``."""
        return sum(n for (a, _), n in self.answered.items() if a == address)

    async def close(self) -> None:
        for idle in self._idle.values():
            for _, writer in idle:
                writer.close()
        for writer in self._busy:
            writer.close()
        self._idle.clear()


class EchoApp(_Server):
    """A line-oriented TCP "database": every query line gets one document line back.

    :attr:`connections` counts the connections accepted, :attr:`closed` those that ended.
    """

    def __init__(self, name: str, *, latency_ms: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.latency_ms = latency_ms
        self.bytes_in = 0
        self.bytes_out = 0
        self.connections = 0
        self.closed = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await reader.readline():
                self.bytes_in += len(line)
                if self.latency_ms:
                    await asyncio.sleep(self.latency_ms / 1000.0)
                reply = json.dumps({"query": line.decode(errors="replace").strip(), "stars": 4})
                data = reply.encode() + b"\n"
                writer.write(data)
                await writer.drain()
                self.bytes_out += len(data)
        finally:
            self.closed += 1


class TcpLine:
    """A TCP connection for query/reply lines, shared by concurrent requests.

    With ``queries_per_connection=n`` the connection is closed after its n-th reply and
    the next query opens a new one, as a database driver retires its connections (so the
    sidecars report connections closing, not only opening); ``None`` keeps one connection
    for good. :attr:`connections` counts those opened, :attr:`closed` those this side
    closed (after their n-th reply, on an error, or on :meth:`close`).
    """

    def __init__(self, queries_per_connection: int | None = None) -> None:
        if queries_per_connection is not None and queries_per_connection < 1:
            raise ValueError(
                f"queries_per_connection must be at least 1, got {queries_per_connection}"
            )
        self.address: Address | None = None
        self.queries_per_connection = queries_per_connection
        self.bytes_out = 0
        self.bytes_in = 0
        self.connections = 0
        self.closed = 0
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._answered = 0  # replies on the open connection
        self._lock = asyncio.Lock()

    async def query(self, text: str) -> bytes:
        async with self._lock:  # one query in flight: replies come back in order
            if self._streams is None:
                if self.address is None:
                    raise ConnectionRefusedError("no upstream configured")
                self._streams = await asyncio.open_connection(*self.address)
                self.connections += 1
                self._answered = 0
            reader, writer = self._streams
            data = text.encode() + b"\n"
            try:
                writer.write(data)
                await writer.drain()
                self.bytes_out += len(data)
                reply = await reader.readline()
                if not reply:
                    raise ConnectionResetError("the database closed the connection")
            except BaseException:
                self._retire()
                raise
            self.bytes_in += len(reply)
            self._answered += 1
            if self._answered == self.queries_per_connection:
                self._retire()
            return reply

    def _retire(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None
            self.closed += 1

    async def close(self) -> None:
        self._retire()
