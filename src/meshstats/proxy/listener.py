"""Accepting connections: plaintext, mTLS, or either (Istio's permissive mode).

>>> import asyncio
>>> from meshstats.proxy.listener import Listener
>>> async def main() -> bytes:
...     async def echo(reader, writer):
...         writer.write(await reader.read(5))
...     listener = await Listener(echo).start("127.0.0.1", 0)
...     reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
...     writer.write(b"hello")
...     data = await reader.read(5)
...     writer.close()
...     await listener.close()
...     return data
>>> asyncio.run(main())
b'hello'

asyncio's ``start_server`` decides plaintext or TLS for the whole port. Istio's permissive
inbound port takes both, told apart by the first byte (Envoy's TLS inspector): a TLS
connection starts with a handshake record, ``0x16``. So this listener accepts sockets itself,
peeks at the first byte without consuming it (``MSG_PEEK``), and only then wraps the socket,
with or without TLS. A client that sends nothing within ``detect_timeout`` (a server-first
protocol) is taken as plaintext, after that delay, as in Istio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..certs import outlived_certificate

__all__ = [
    "Handler",
    "Listener",
    "TlsCounters",
    "Watched",
    "format_address",
    "open_watched",
    "peer_address",
    "write",
]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

log = logging.getLogger("meshstats.proxy")

_TLS_HANDSHAKE = b"\x16"
# Bytes a StreamReader may hold before it stops reading from the socket (flow control).
STREAM_LIMIT = 1 << 16


def format_address(peername: object) -> str | None:
    """``ip:port`` (``[ip]:port`` for IPv6) of a socket's peer name; None when unknown."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        ip, port = peername[0], peername[1]
        return f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"
    return None


def peer_address(writer: asyncio.StreamWriter) -> str | None:
    """:func:`format_address` of a connection's peer; None when unknown.

    asyncio reads the peer name once, when the connection is made; uvloop asks the socket on
    every call and raises ``AttributeError`` once the transport has closed (a peer that reset
    first), so a closed upstream connection is "unknown" there rather than a failure.
    """
    try:
        return format_address(writer.get_extra_info("peername"))
    except AttributeError:
        return None


def write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """``writer.write(data)``, dropped once the transport is closing, as asyncio's loop does.

    asyncio drops bytes written to a connection the peer has closed or reset, and the next
    ``drain()`` raises ``ConnectionResetError``; uvloop's plain TCP transport raises
    ``RuntimeError`` from ``write()`` itself once its handle is closed, which the relays
    would not take for a peer gone. One behaviour on both loops.
    """
    if not writer.transport.is_closing():
        writer.write(data)


class Watched(asyncio.StreamReaderProtocol):
    """A downstream connection's protocol that tells :attr:`watcher` (when set) of bytes
    arriving (``"data"``), the peer's FIN (``"eof"``) or the connection lost (``"lost"``).

    A relay waiting for its upstream learns this way that its client went away, without a
    task reading the downstream meanwhile (see :mod:`.interrupt`). :attr:`ended` says the
    FIN or the loss came already; :attr:`received` counts the bytes that arrived.

    :attr:`direct` (when set) is offered each arrival first, and takes it when it returns
    True: the bytes then never reach the reader (an HTTP/1.1 relay parsing them in the
    callback, :mod:`.http_direct`). The FIN or the loss always reaches the reader first,
    then ``direct(b"")`` is told.
    """

    watcher: Callable[[str], None] | None = None
    direct: Callable[[bytes], bool] | None = None
    transport: Any = None  # the connection's transport, once made
    ended = False
    received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.direct is not None and self.direct(data):
            return
        super().data_received(data)
        if self.watcher is not None:
            self.watcher("data")

    def eof_received(self) -> bool:
        keep_open = bool(super().eof_received())
        self.ended = True
        if self.direct is not None:
            self.direct(b"")
        if self.watcher is not None:
            self.watcher("eof")
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.ended = True
        if self.direct is not None:
            self.direct(b"")
        if self.watcher is not None:
            self.watcher("lost")


async def open_watched(
    host: str, port: int, **kwargs: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` (``kwargs``: ``create_connection``'s, e.g. ``ssl``), with a
    :class:`Watched` protocol and the relay's read limit: an upstream connection that
    :mod:`.http_direct` can read from its callbacks."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    protocol = Watched(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port, **kwargs)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class _Downstream(asyncio.StreamWriter):
    """A downstream connection's writer that keeps the peer name ``accept()`` returned, and
    its :class:`Watched` protocol (:attr:`watched`).

    The client's address picks its registry entry even when it reset before the sidecar
    looked (uvloop cannot ask a closed socket; see :func:`peer_address`).
    """

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: Watched,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
        peername: object,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._peername = peername
        self.watched = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        return super().get_extra_info(name, default)


@dataclass
class TlsCounters:
    """TLS handshakes on one side of a sidecar, as Envoy counts them (``ssl.handshake``,
    ``ssl.session_reused``), plus resumed sessions refused because the peer's certificate
    had expired since their full handshake (:func:`~meshstats.certs.outlived_certificate`).
    """

    handshakes: int = 0
    resumed: int = 0
    expired: int = 0

    def count(self, ssl_object: ssl.SSLObject, now: float | None = None) -> bool:
        """Count one finished handshake; False when it must be refused (expired peer).

        ``now`` (a Unix time) replaces the clock, for tests.
        """
        self.handshakes += 1
        if not ssl_object.session_reused:
            return True
        self.resumed += 1
        if outlived_certificate(ssl_object, now):
            self.expired += 1
            return False
        return True


class Listener:
    """Calls ``handler(reader, writer)`` for each accepted connection, each in its own task.

    Parameters
    ----------
    handler
        The connection's coroutine; the writer is closed when it returns or fails.
    ssl_context
        Wrap connections in TLS (a server context); ``None`` for plaintext only.
    detect_tls
        Accept plaintext too on a TLS port, by peeking at the first byte (permissive).
    detect_timeout, handshake_timeout
        Seconds to wait for the first byte, and for the TLS handshake.
    tls
        Where TLS handshakes are counted (a new :class:`TlsCounters` if not given). A
        resumed session whose client certificate has expired since is closed at once.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        detect_tls: bool = False,
        detect_timeout: float = 5.0,
        handshake_timeout: float = 5.0,
        tls: TlsCounters | None = None,
    ) -> None:
        self._handler = handler
        self.tls = tls if tls is not None else TlsCounters()
        self._ssl = ssl_context
        self._detect = detect_tls and ssl_context is not None
        self._detect_timeout = detect_timeout
        self._handshake_timeout = handshake_timeout
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> Listener:
        """Bind and listen (``port=0``: any free port, see :attr:`port`).

        ``reuse_port``: other processes may listen on the same port (``SO_REUSEPORT``), and
        the kernel spreads new connections over them (a sidecar's ``workers``).
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(512)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            # bind() does not say which address: a sidecar has several. errno is kept.
            raise OSError(exc.errno, exc.strerror, f"{host}:{port}") from exc
        self._sock = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())
        return self

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("listener not started")
        return int(self._sock.getsockname()[1])

    async def close(self) -> None:
        """Stop accepting, cancel every open connection's task and wait for them."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peername = await loop.sock_accept(self._sock)
            except OSError as exc:  # e.g. EMFILE: keep serving the connections we have
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._serve(conn, peername))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket, peername: object) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            use_tls = self._ssl is not None
            if self._detect:
                use_tls = await self._peek(conn) == _TLS_HANDSHAKE
            reader = asyncio.StreamReader(limit=STREAM_LIMIT)
            protocol = Watched(reader)
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=self._ssl if use_tls else None,
                ssl_handshake_timeout=self._handshake_timeout if use_tls else None,
            )
        except (OSError, asyncio.TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.debug("connection dropped before it started: %r", exc)
            conn.close()
            return
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and not self.tls.count(ssl_object):
            log.info("refused a resumed TLS session: the client's certificate has expired")
            transport.abort()
            return
        writer = _Downstream(transport, protocol, reader, loop, peername)
        try:
            await self._handler(reader, writer)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("connection ended: %r", exc)
        except Exception:
            log.exception("connection handler failed")
        finally:
            writer.close()

    async def _peek(self, conn: socket.socket) -> bytes:
        """The first byte the client sent, left in the socket; ``b""`` if none in time."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(conn.fileno(), on_readable)
        try:
            await asyncio.wait_for(ready, self._detect_timeout)
        except asyncio.TimeoutError:
            return b""
        finally:
            loop.remove_reader(conn.fileno())
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except OSError:
            return b""
