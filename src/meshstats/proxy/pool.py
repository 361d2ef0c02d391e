"""Idle upstream HTTP/1.1 connections kept for the next request, as Envoy's pools keep them.

>>> pool = UpstreamPool(max_idle=2)
>>> pool.take(("reviews", 9080)) is None  # nothing parked yet
True

Without a pool every new downstream connection opens its own upstream one: a client sidecar
pays a TLS handshake to the server sidecar for each (about 2 ms of CPU on each side), and a
connection storm queues handshakes on the event loop. With it, a downstream connection that
ends gives its idle upstream connection back, and the next one takes it.

A parked connection is only handed out while it is usable: not closing, no end of stream
seen from the other side (an app's own keep-alive timeout closes it), idle for less than
``max_idle_seconds``. At most ``max_idle`` connections are kept per target; more are
closed. A peer may still close a connection just as it is taken, so the proxy retries a
request that failed on a reused connection once on a new one when that is safe (no body
sent, nothing received).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

__all__ = ["Pooled", "UpstreamPool"]


@dataclass
class Pooled:
    """An idle upstream connection and what was learnt when it was opened."""

    stream: Any  # an HttpStream in the IDLE state on both sides
    principal: str | None  # the upstream's verified identity (mTLS), if any
    address: str | None  # its ip:port
    since: float = 0.0  # when it was parked (the pool's clock)


class UpstreamPool:
    """Idle connections by target, newest first out (the warmest TLS state, the least likely
    to have been closed by the peer's idle timeout)."""

    def __init__(
        self,
        max_idle: int = 64,
        max_idle_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_idle = max_idle
        self.max_idle_seconds = max_idle_seconds
        self._clock = clock
        self._idle: dict[Hashable, list[Pooled]] = {}
        #: Connections handed out again, and parked ones found unusable and closed.
        self.reused = 0
        self.discarded = 0
        # HTTP/2 connections are not parked but shared: every stream to a target uses one
        # of them at once (see shared()).
        self._shared: dict[Hashable, list[Any]] = {}
        self._opening: dict[Hashable, asyncio.Lock] = {}

    def take(self, target: Hashable) -> Pooled | None:
        """A usable idle connection to ``target``, or None."""
        idle = self._idle.get(target)
        now = self._clock()
        while idle:
            pooled = idle.pop()
            stream = pooled.stream
            if (
                now - pooled.since < self.max_idle_seconds
                and not stream.writer.is_closing()
                and not stream.reader.at_eof()
            ):
                self.reused += 1
                return pooled
            self.discarded += 1
            stream.close()
        return None

    def give(self, target: Hashable, pooled: Pooled) -> None:
        """Park an idle connection (closed instead when the target has ``max_idle``)."""
        idle = self._idle.setdefault(target, [])
        now = self._clock()
        while idle and now - idle[0].since >= self.max_idle_seconds:  # the oldest first
            self.discarded += 1
            idle.pop(0).stream.close()
        if len(idle) >= self.max_idle or pooled.stream.writer.is_closing():
            pooled.stream.close()
            return
        pooled.since = now
        idle.append(pooled)

    async def shared(self, target: Hashable, open_: Callable[[], Awaitable[Any]]) -> Any:
        """A shared (HTTP/2) connection to ``target`` with room for one more stream, as
        Envoy's HTTP/2 pools keep one connection per upstream for all streams: an open one
        (``has_room()``), else a new one from ``open_()`` (which may raise). One connection
        is opened at a time per target, so a burst of streams shares it."""
        lock = self._opening.get(target)
        if lock is None or not lock.locked():
            # Nobody is opening one: the connection the lock's holder would pick, without
            # taking the lock (an asyncio.Lock per stream was ~2% of a relayed stream). The
            # closed ones are dropped from the list the next time one is opened.
            for conn in self._shared.get(target, ()):
                if not conn.closed and conn.has_room():
                    self.reused += 1
                    return conn
        if lock is None:
            lock = self._opening[target] = asyncio.Lock()
        async with lock:
            conns = self._shared.setdefault(target, [])
            conns[:] = [conn for conn in conns if not conn.closed]
            for conn in conns:
                if conn.has_room():
                    self.reused += 1
                    return conn
            conn = await open_()
            conn.idle_timeout = self.max_idle_seconds  # closed when unused this long
            conns.append(conn)
            return conn

    def __len__(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def close(self) -> None:
        """Close every parked and every shared connection."""
        for idle in self._idle.values():
            for pooled in idle:
                pooled.stream.close()
        self._idle.clear()
        for conns in self._shared.values():
            for conn in conns:
                conn.close()
        self._shared.clear()
