"""Serving a store to Prometheus: content negotiation, a prometheus_client collector, HTTP.

>>> from meshstats import Store
>>> from meshstats.exposition import MetricsServer, negotiate
>>> store = Store()
>>> store.inc(store.series(store.counter("istio_requests_total", "Requests."), ()))
>>> negotiate("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
(True, 'application/openmetrics-text; version=1.0.0; charset=utf-8')
>>> import urllib.request
>>> with MetricsServer(store) as server:  # 127.0.0.1, a free port
...     body = urllib.request.urlopen(server.url + "/stats/prometheus").read()
>>> body.splitlines()[-1]
b'istio_requests_total 1'

To show the same metrics through an existing prometheus_client setup instead (its
``REGISTRY``, ``generate_latest()``, ``start_http_server()``, push gateway, ...)::

    from prometheus_client import REGISTRY
    REGISTRY.register(MeshstatsCollector(store))

``prometheus_client`` is optional: only :class:`MeshstatsCollector` needs it
(``pip install meshstats[prometheus]``).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ._render_py import Snapshot

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "METRICS_PATHS",
    "MeshstatsCollector",
    "MetricsServer",
    "ServerStats",
    "negotiate",
    "serve_in_background",
]

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
#: Where :class:`MetricsServer` answers with the exposition: Envoy's path and the usual one.
METRICS_PATHS = ("/stats/prometheus", "/metrics")


class StoreLike(Protocol):
    """What the exposition helpers need from a store (``meshstats.Store`` is one)."""

    def snapshot(self) -> Snapshot: ...

    def render(self, openmetrics: bool = False) -> bytes: ...


def _media_ranges(header: str) -> Iterator[tuple[str, float]]:
    """``(media type, q)`` for each comma-separated entry of an Accept-style header."""
    for entry in header.split(","):
        media, *params = entry.split(";")
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0  # an unreadable weight does not ask for anything
        yield media.strip().lower(), q


def negotiate(accept_header: str | None) -> tuple[bool, str]:
    """Pick the exposition format for an HTTP ``Accept`` header: ``(openmetrics, content_type)``.

    OpenMetrics whenever the header accepts ``application/openmetrics-text`` (as
    prometheus_client decides, and as Prometheus asks when it prefers it); the text
    format 0.0.4 otherwise, including for a missing header. An entry with ``q=0`` means
    "not acceptable" (RFC 9110) and is ignored.

    >>> negotiate(None)
    (False, 'text/plain; version=0.0.4; charset=utf-8')
    >>> negotiate("application/openmetrics-text; version=0.0.1; q=0.75, */*; q=0.1")[0]
    True
    """
    for media, q in _media_ranges(accept_header or ""):
        if media == "application/openmetrics-text" and q > 0:
            return True, CONTENT_TYPE_OPENMETRICS
    return False, CONTENT_TYPE_TEXT


def _accepts_gzip(accept_encoding: str | None) -> bool:
    return any(m == "gzip" and q > 0 for m, q in _media_ranges(accept_encoding or ""))


def _import_prometheus_client() -> Any:
    try:
        import prometheus_client.core
    except ImportError as exc:
        raise ImportError(
            "MeshstatsCollector needs prometheus_client: pip install meshstats[prometheus]"
        ) from exc
    return prometheus_client.core


class MeshstatsCollector:
    """A prometheus_client collector that reports a store's metrics at every scrape.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> from meshstats import Store
    >>> store = Store()
    >>> store.set(store.series(store.gauge("istio_build", "Build.", ("tag",)), ("1.24",)), 1)
    >>> registry = CollectorRegistry()
    >>> registry.register(MeshstatsCollector(store))
    >>> b'istio_build{tag="1.24"} 1.0' in generate_latest(registry)
    True

    Families, samples, labels and values are those of ``store.render()``. One difference
    comes from prometheus_client's own rules: it always writes a counter's samples as
    ``<name>_total``, so a counter registered without ``_total`` (``reqs``) is shown as
    ``reqs_total`` here while ``store.render()`` writes ``reqs``. Istio's counters all end
    in ``_total`` and look the same either way. Nothing is cached: each ``collect()``
    reads a fresh ``store.snapshot()``.
    """

    def __init__(self, store: StoreLike) -> None:
        self._core = _import_prometheus_client()  # fail at construction, not at scrape
        self._store = store

    def collect(self) -> Iterator[Any]:
        """Yield one prometheus_client ``Metric`` family per store family."""
        from ._render_py import format_float

        core = self._core
        for name, kind, help_text, label_names, buckets, series in self._store.snapshot():
            labels = list(label_names)
            if kind == "counter":
                family = core.CounterMetricFamily(name, help_text, labels=labels)
                for values, value in series:
                    family.add_metric(list(values), value)
            elif kind == "gauge":
                family = core.GaugeMetricFamily(name, help_text, labels=labels)
                for values, value in series:
                    family.add_metric(list(values), value)
            else:
                family = core.HistogramMetricFamily(name, help_text, labels=labels)
                # The same le strings as our renderer, so both expositions label alike.
                bounds = [format_float(b) for b in buckets] + ["+Inf"]
                for values, (counts, total) in series:  # type: ignore[misc]
                    cumulative, pairs = 0, []
                    for le, count in zip(bounds, counts):
                        cumulative += count
                        pairs.append((le, cumulative))
                    family.add_metric(list(values), pairs, total)
            yield family


#: Defaults of :class:`MetricsServer`'s limits (``docs/proxy.md``, "Admin port").
HEADER_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0
IDLE_TIMEOUT = 120.0
MAX_CONNECTIONS = 256
#: How much lower the render thread's CPU priority is (a nice value; Linux only).
RENDER_NICENESS = 10
#: The share of one core that renders may use, on average, however often scrapers ask.
RENDER_BUDGET = 0.25
#: A request head (request line and headers) larger than this is answered 431.
MAX_HEAD_BYTES = 16 * 1024

_PLAIN = "text/plain; charset=utf-8"
# Up to this size a body goes out in the same send as its head; above, copying it
# into one buffer would cost more than a second send (TCP_NODELAY is on).
_JOIN_BELOW = 64 * 1024
_REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class ServerStats:
    """A :class:`MetricsServer`'s counters since :meth:`~MetricsServer.start`.

    ``connections`` are open now, ``waiting`` scrapes wait for a render now; ``renders``
    counts renders started and ``scrapes`` metrics answers (concurrent scrapes share a
    render, so ``renders <= scrapes``); ``timed_out`` connections were closed by the
    header, idle or write timeout, ``evicted`` ones to make room for a new connection at
    ``max_connections``, and ``refused`` new ones found no room (every connection busy).
    """

    connections: int = 0
    waiting: int = 0
    renders: int = 0
    scrapes: int = 0
    timed_out: int = 0
    evicted: int = 0
    refused: int = 0


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _lower_priority(niceness: int) -> None:
    """Lower the calling thread's CPU priority by ``niceness`` (Linux; elsewhere a no-op).

    Renders and gzip run without the GIL, so what they take from the data plane is CPU
    time, given by the OS scheduler: at a lower priority they use the cores the other
    threads leave idle, and back off when those are busy. Only Linux sets the nice value
    of one thread (``setpriority`` with a thread id); elsewhere that id could name
    another process.
    """
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(
            os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + niceness, 19)
        )
    except OSError:
        pass  # a sandbox that forbids it: renders just keep the normal priority


def _retrieve(future: asyncio.Future[bytes]) -> None:
    # Every waiter may be gone (timed out, evicted): the error is still not "unretrieved".
    if not future.cancelled():
        future.exception()


class _Renders:
    """Single-flight renders of one store (used on the admin loop only).

    A scrape that arrives while a render of the same format is in progress gets that
    render's bytes instead of starting another: ten scrapers cost one render, not ten.
    Nothing is kept once a render is done (no time-based cache), so every scrape sees the
    store as it was at or after its arrival. Renders are spaced so that they use at most
    ``budget`` of one core's time.
    """

    def __init__(
        self, store: StoreLike, loop: asyncio.AbstractEventLoop, niceness: int, budget: float
    ) -> None:
        self._store = store
        self._loop = loop
        self._flights: dict[tuple[bool, bool], asyncio.Future[bytes]] = {}
        # One worker: renders never pile up, and the admin loop stays free (for /healthz
        # and for timeouts) while the compiled store renders without the GIL.
        self._executor = ThreadPoolExecutor(
            1,
            thread_name_prefix="meshstats-render",
            initializer=_lower_priority,
            initargs=(niceness,),
        )
        self.started = 0
        self.waiting = 0
        # After a render that took t seconds of CPU, none starts for t * _rest: renders
        # then use at most ``budget`` of one core, however often scrapers ask.
        self._rest = 1 / budget - 1
        self._next_start = 0.0

    async def body(self, openmetrics: bool, gzipped: bool) -> bytes:
        key = (openmetrics, gzipped)
        flight = self._flights.get(key)
        if flight is None or flight.done():
            flight = self._loop.create_task(self._flight(openmetrics, gzipped))
            flight.add_done_callback(_retrieve)
            flight.add_done_callback(lambda done: self._land(key, done))
            self._flights[key] = flight
            self.started += 1
        self.waiting += 1
        try:
            # A waiter that times out or is evicted must not cancel the others' render.
            return await asyncio.shield(flight)
        finally:
            self.waiting -= 1

    def _land(self, key: tuple[bool, bool], flight: asyncio.Future[bytes]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]  # frees the body as soon as its waiters have it

    async def _flight(self, openmetrics: bool, gzipped: bool) -> bytes:
        # Scrapes that arrive during the delay join this flight: they wait, then get a
        # render that starts after they arrived.
        delay = self._next_start - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        body, cpu = await self._loop.run_in_executor(
            self._executor, self._render, openmetrics, gzipped
        )
        self._next_start = self._loop.time() + cpu * self._rest
        return body

    def _render(self, openmetrics: bool, gzipped: bool) -> tuple[bytes, float]:
        start = time.thread_time()
        body = self._store.render(openmetrics=openmetrics)
        body = gzip.compress(body, compresslevel=1) if gzipped else body
        return body, time.thread_time() - start

    async def close(self) -> None:
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()  # one may be waiting out the budget: no render is owed anyone
        await asyncio.gather(*flights, return_exceptions=True)
        self._executor.shutdown(wait=True)


@dataclass
class _Connection:
    sock: socket.socket
    host: str
    since: float  # when it began waiting for its current request head
    waiting: bool = True  # for a request head (it may be evicted), not answering one


class _AdminLoop:
    """One run of a :class:`MetricsServer`: an asyncio loop in a thread of its own.

    Every admin connection is a task on this loop, so a thousand stalled connections
    cost a thousand sockets, not a thousand threads; renders run on one more thread.
    """

    def __init__(self, server: MetricsServer, listener: socket.socket) -> None:
        self.server = server
        self.listener = listener
        self.loop = asyncio.new_event_loop()
        self.renders = _Renders(
            server._store, self.loop, server._render_niceness, server._render_budget
        )
        self.connections: dict[asyncio.Task[None], _Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # evicted ones too, until they unwind
        self.scrapes = self.timed_out = self.evicted = self.refused = 0
        self._stopping = asyncio.Event()  # bound to self.loop when first awaited there
        self.thread = threading.Thread(
            target=self._run, name=f"meshstats-metrics-{listener.getsockname()[1]}", daemon=True
        )

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    def stop(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self._stopping.set)
        except RuntimeError:
            pass  # the loop has already ended
        self.thread.join()

    def stats(self) -> ServerStats:
        return ServerStats(
            connections=len(self.connections),
            waiting=self.renders.waiting,
            renders=self.renders.started,
            scrapes=self.scrapes,
            timed_out=self.timed_out,
            evicted=self.evicted,
            refused=self.refused,
        )

    async def _serve(self) -> None:
        accepting = asyncio.get_running_loop().create_task(self._accept())
        try:
            await self._stopping.wait()
        finally:
            accepting.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(accepting, *self._tasks, return_exceptions=True)
            self.listener.close()
            await self.renders.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.server._max_connections
        while True:
            try:
                sock, address = await loop.sock_accept(self.listener)
            except OSError:
                # Out of descriptors, most likely: a pause lets timeouts free some.
                await asyncio.sleep(0.1)
                continue
            if len(self.connections) >= limit and not self._make_room():
                self.refused += 1
                _refuse(sock)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock, str(address[0]), loop.time())
            task = loop.create_task(self._connection(connection))
            self.connections[task] = connection
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._forget, connection))

    def _forget(self, connection: _Connection, task: asyncio.Task[None]) -> None:
        self.connections.pop(task, None)
        self._tasks.discard(task)
        # A task cancelled before its first step never reaches its own ``finally``.
        connection.sock.close()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for a request head, if any.

        A flood of stalled connections then pushes out only stalled (or idle keep-alive)
        connections, and a scraper that sends its request gets through.
        """
        idle = [(c.since, id(t), t) for t, c in self.connections.items() if c.waiting]
        if not idle:
            return False
        _, _, task = min(idle)
        del self.connections[task]
        task.cancel()  # its socket closes when the task unwinds
        self.evicted += 1
        return True

    async def _connection(self, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        buffer = bytearray()
        first = True
        try:
            while True:
                connection.waiting, connection.since = True, loop.time()
                try:
                    head = await self._read_head(connection.sock, buffer, first)
                    if head is None:
                        return  # the client closed the connection
                    connection.waiting, first = False, False
                    keep_alive = await self._answer(connection, head)
                except _BadRequest as bad:
                    body = f"{bad}\n".encode()
                    await self._send(connection, "", bad.status, _PLAIN, body, keep_alive=False)
                    return
                if not keep_alive:
                    return
        except asyncio.TimeoutError:
            self.timed_out += 1
        except OSError:
            pass  # reset or gone: nothing to answer
        finally:
            connection.sock.close()

    async def _read_head(self, sock: socket.socket, buffer: bytearray, first: bool) -> bytes | None:
        """The next request head (without its blank line), or None at the client's EOF."""
        loop = asyncio.get_running_loop()
        server = self.server
        if not first and not buffer:
            # Keep-alive: the next scrape may be a scrape interval away.
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), server._idle_timeout)
            if not data:
                return None
            buffer += data
        deadline = loop.time() + server._header_timeout
        start = 0
        while (end := buffer.find(b"\r\n\r\n", start)) < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise _BadRequest(431, "request head too large")
            start = max(len(buffer) - 3, 0)
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), deadline - loop.time())
            if not data:
                return None
            buffer += data
        if end > MAX_HEAD_BYTES:
            raise _BadRequest(431, "request head too large")
        head = bytes(buffer[:end])
        del buffer[: end + 4]
        return head

    async def _answer(self, connection: _Connection, head: bytes) -> bool:
        """Answer one request; whether the connection stays open for the next."""
        request_line, *lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
            raise _BadRequest(400, "bad request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise _BadRequest(400, "bad header line")
            key, value = name.lower(), value.strip(" \t")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
            raise _BadRequest(400, "no request body expected")  # and none will be read
        if method not in ("GET", "HEAD"):
            raise _BadRequest(501, f"unsupported method {method!r}")
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
        path = urlsplit(target).path
        encoding = None
        if path in METRICS_PATHS:
            openmetrics, content_type = negotiate(headers.get("accept"))
            gzipped = _accepts_gzip(headers.get("accept-encoding"))
            try:
                body = await self.renders.body(openmetrics, gzipped)
            except Exception as exc:  # a scrape must get an answer, not a dropped socket
                status, content_type, body = 500, _PLAIN, f"render failed: {exc}\n".encode()
            else:
                status, encoding = 200, "gzip" if gzipped else None
                self.scrapes += 1
        elif path == "/healthz":
            status, content_type, body = 200, _PLAIN, b"ok"
        else:
            status, content_type, body = 404, _PLAIN, b"not found\n"
        await self._send(
            connection,
            request_line,
            status,
            content_type,
            body,
            encoding=encoding,
            send_body=method == "GET",
            keep_alive=keep_alive,
            http10=version == "HTTP/1.0",
        )
        return keep_alive

    async def _send(
        self,
        connection: _Connection,
        request_line: str,
        status: int,
        content_type: str,
        body: bytes,
        *,
        encoding: str | None = None,
        send_body: bool = True,
        keep_alive: bool,
        http10: bool = False,
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            "Server: meshstats",
            f"Date: {formatdate(usegmt=True)}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        if encoding:
            lines.append(f"Content-Encoding: {encoding}")
        if not keep_alive:
            lines.append("Connection: close")
        elif http10:
            lines.append("Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.server._write_timeout
        if not send_body:
            parts = [head]
        elif len(body) < _JOIN_BELOW:
            parts = [head + body]
        else:
            parts = [head, body]  # sock_sendall sends from the bytes: no copy of the body
        for part in parts:
            await asyncio.wait_for(loop.sock_sendall(connection.sock, part), deadline - loop.time())
        if self.server._log_requests:
            stamp = time.strftime("%d/%b/%Y %H:%M:%S")
            size = len(body) if send_body else "-"
            sys.stderr.write(f'{connection.host} - - [{stamp}] "{request_line}" {status} {size}\n')


def _refuse(sock: socket.socket) -> None:
    try:
        sock.send(_REFUSED)  # best effort: the socket is non-blocking and the head tiny
    except OSError:
        pass
    sock.close()


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


class MetricsServer:
    """A small HTTP server for Prometheus scrapes of ``store``, on a thread of its own.

    ``GET /stats/prometheus`` (Envoy's path) and ``GET /metrics`` answer with
    ``store.render()`` in the format the ``Accept`` header asks for (see :func:`negotiate`),
    gzip-compressed when the client accepts it; ``/healthz`` answers ``ok``; anything else
    is a 404. Requests are not logged unless ``log_requests``.

    >>> from meshstats import Store
    >>> server = MetricsServer(Store()).start()
    >>> server.url.startswith("http://127.0.0.1:")
    True
    >>> server.stop()

    All connections are served by one asyncio loop on one daemon thread, and renders run
    on one more, at a lower CPU priority (Linux): scrapes cannot multiply threads, and
    what they cost the rest of the process (a sidecar's data plane) is bounded. Scrapes of
    the same format that arrive while a render is in progress share it, and renders use
    at most ``render_budget`` of one core. A connection is closed when its request head
    takes longer than ``header_timeout`` (from the connection, or from the first byte of
    a later request), when it waits ``idle_timeout`` for a next request, or when a
    response takes longer than ``write_timeout`` to send. At ``max_connections`` open
    connections, a new one closes the connection that has waited longest for a request
    head; if every connection is busy answering, the new one gets a ``503`` and is
    closed. :meth:`stats` counts all of it.

    Parameters
    ----------
    store
        What to serve: a ``meshstats.Store`` (or anything with its ``render``).
    host, port
        Where to listen. ``port=0`` picks a free port; read it back from ``.port``.
    header_timeout, write_timeout, idle_timeout
        Seconds (> 0); defaults :data:`HEADER_TIMEOUT` (10), :data:`WRITE_TIMEOUT` (30),
        :data:`IDLE_TIMEOUT` (120: longer than common scrape intervals, so a scraper's
        keep-alive connection is reused).
    max_connections
        Open admin connections at most; default :data:`MAX_CONNECTIONS` (256).
    render_niceness
        On Linux, the render thread runs this much lower in CPU priority (a nice value,
        default :data:`RENDER_NICENESS`, 10; 0 keeps it equal): renders use the cores the
        data plane leaves idle instead of taking turns with it. Elsewhere it has no effect.
    render_budget
        The share of one core renders may use on average (default :data:`RENDER_BUDGET`,
        0.25; 1 turns the limit off): after a render that took ``t`` seconds of CPU, the
        next starts no sooner than ``t * (1 / render_budget - 1)`` later, and scrapes that
        arrive meanwhile wait for it. Scrapes at Prometheus' intervals never wait; ten
        scrapers scraping back to back get fewer, not costlier, renders.
    """

    def __init__(
        self,
        store: StoreLike,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_requests: bool = False,
        header_timeout: float = HEADER_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        render_niceness: int = RENDER_NICENESS,
        render_budget: float = RENDER_BUDGET,
    ) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ValueError(f"max_connections must be an integer, got {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self._store = store
        self._host = host
        self._port = port
        self._log_requests = log_requests
        self._header_timeout = _positive(header_timeout, "header_timeout")
        self._write_timeout = _positive(write_timeout, "write_timeout")
        self._idle_timeout = _positive(idle_timeout, "idle_timeout")
        self._max_connections = max_connections
        if isinstance(render_niceness, bool) or not isinstance(render_niceness, int):
            raise ValueError(f"render_niceness must be an integer, got {render_niceness!r}")
        if not 0 <= render_niceness <= 19:
            raise ValueError(f"render_niceness must be in 0..19, got {render_niceness}")
        self._render_niceness = render_niceness
        if isinstance(render_budget, bool) or not isinstance(render_budget, (int, float)):
            raise ValueError(f"render_budget must be a number, got {render_budget!r}")
        if not 0 < render_budget <= 1:
            raise ValueError(f"render_budget must be in (0, 1], got {render_budget}")
        self._render_budget = float(render_budget)
        self._run: _AdminLoop | None = None
        self._last = ServerStats()

    def start(self) -> MetricsServer:
        """Bind and start serving in a daemon thread; returns ``self``.

        Binding happens here, so a port in use raises ``OSError`` from ``start()``.
        """
        if self._run is not None:
            raise RuntimeError("MetricsServer is already running")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((self._host, self._port))
            except OSError as exc:  # name the address, as the sidecar's listeners do
                raise OSError(exc.errno, exc.strerror, f"{self._host}:{self._port}") from exc
            # A burst of connections waits in the kernel instead of being dropped.
            listener.listen(1024)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._run = _AdminLoop(self, listener)
        self._run.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and the socket (safe to call twice)."""
        run, self._run = self._run, None
        if run is not None:
            run.stop()
            self._last = run.stats()

    def stats(self) -> ServerStats:
        """Counters of the current run (of the last one once stopped); see :class:`ServerStats`."""
        run = self._run
        return self._last if run is None else run.stats()

    @property
    def port(self) -> int:
        """The port listened on (the real one when constructed with ``port=0``)."""
        if self._run is None:
            return self._port
        return int(self._run.listener.getsockname()[1])

    @property
    def url(self) -> str:
        """``http://host:port``, without a path."""
        return f"http://{self._host}:{self.port}"

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_in_background(
    store: StoreLike, host: str = "127.0.0.1", port: int = 0, *, log_requests: bool = False
) -> MetricsServer:
    """Start a :class:`MetricsServer` for ``store`` and return it (call ``.stop()`` to end).

    >>> from meshstats import Store
    >>> server = serve_in_background(Store(), port=0)
    >>> server.port > 0
    True
    >>> server.stop()
    """
    return MetricsServer(store, host, port, log_requests=log_requests).start()
