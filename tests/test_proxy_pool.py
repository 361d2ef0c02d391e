"""Idle upstream connections are reused across downstream connections (issue 10.7), as
Envoy's connection pools reuse them: a new client connection costs no new upstream
connection (no TLS handshake to the server sidecar), and a pooled connection the upstream
closed meanwhile costs nothing a client can see for a request without a body.

Each test waits for the sidecar to park the connection (an observable count, bounded by a
generous deadline) before the next client connection, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

import pytest
from proxy_support import (
    CLIENT_ID,
    CLIENT_NODE,
    CLIENT_SA,
    SERVER_ID,
    SERVER_NODE,
    SERVER_SA,
    Certs,
    eventually,
    make_certs,
    run,
    scrape,
    select,
    start_app,
    total,
)

from meshstats.errors import ConfigError
from meshstats.proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig
from meshstats.proxy.pool import Pooled, UpstreamPool

GET = b"GET /r HTTP/1.1\r\nHost: reviews:9080\r\nConnection: close\r\n\r\n"
POST = (
    b"POST /r HTTP/1.1\r\nHost: reviews:9080\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@dataclass
class CountingApp:
    """Answers every request; counts connections. With ``hang_up_on`` = n, the n-th request
    on a connection gets no answer: the connection is closed, as an app closes an idle
    keep-alive connection just as the sidecar sends on it."""

    hang_up_on: int = 0
    connections: int = 0
    requests: int = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                served += 1
                if served == self.hang_up_on:
                    return
                self.requests += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def exchange(port: int, request: bytes) -> bytes:
    """One request on a new connection; the whole response (the sidecar closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


def inbound(app_port: int, certs: Certs, **extra: Any) -> SidecarConfig:
    app = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol="http")
    return SidecarConfig(
        node=SERVER_NODE, node_id=SERVER_ID, cert_dir=certs.server, inbound=app, **extra
    )


async def parked(sidecar: Sidecar, n: int) -> None:
    async def check() -> bool:
        return len(sidecar.upstream_pool) == n

    await eventually(check)


def test_the_app_connection_is_reused_by_the_next_client(certs: Certs) -> None:
    async def main() -> None:
        app = CountingApp()
        server, port = await start_app(app)
        async with server, Sidecar(inbound(port, certs)) as sidecar:
            for _ in range(4):
                got = await asyncio.to_thread(exchange, sidecar.inbound_port, GET)
                assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"ok")
                await parked(sidecar, 1)
            assert (app.connections, app.requests) == (1, 4)
            assert sidecar.upstream_pool.reused == 3

    run(main())


def test_no_pooling_when_turned_off(certs: Certs) -> None:
    async def main() -> None:
        app = CountingApp()
        server, port = await start_app(app)
        config = inbound(port, certs, upstream_idle_connections=0)
        async with server, Sidecar(config) as sidecar:
            for _ in range(3):
                got = await asyncio.to_thread(exchange, sidecar.inbound_port, GET)
                assert got.startswith(b"HTTP/1.1 200 ")
            await eventually(lambda: _true_when(app.connections == 3))
            assert len(sidecar.upstream_pool) == 0 and sidecar.upstream_pool.reused == 0

    run(main())


async def _true_when(value: bool) -> bool:
    return value


def test_a_pooled_connection_the_app_closed_is_retried_for_a_bodiless_request(
    certs: Certs,
) -> None:
    """The app hangs up on the second request of a connection (its keep-alive timeout, as
    the request arrives): the GET goes again on a new connection and is answered; the
    client sees one 200, and one request is recorded."""

    async def main() -> None:
        app = CountingApp(hang_up_on=2)
        server, port = await start_app(app)
        async with server, Sidecar(inbound(port, certs)) as sidecar:
            first = await asyncio.to_thread(exchange, sidecar.inbound_port, GET)
            assert first.startswith(b"HTTP/1.1 200 ")
            await parked(sidecar, 1)
            second = await asyncio.to_thread(exchange, sidecar.inbound_port, GET)
            assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"ok")
            assert app.connections == 2 and app.requests == 2
            samples = await scrape(sidecar.admin_url)
            assert total(samples, "istio_requests_total", response_code="200") == 2
            assert select(samples, "istio_requests_total", response_code="503") == []

    run(main())


def test_a_request_with_a_body_is_not_replayed(certs: Certs) -> None:
    """Its body was sent on the dead connection and is gone: 503 ``UC``, as before."""

    async def main() -> None:
        app = CountingApp(hang_up_on=2)
        server, port = await start_app(app)
        async with server, Sidecar(inbound(port, certs)) as sidecar:
            assert (await asyncio.to_thread(exchange, sidecar.inbound_port, GET)).startswith(
                b"HTTP/1.1 200 "
            )
            await parked(sidecar, 1)
            got = await asyncio.to_thread(exchange, sidecar.inbound_port, POST)
            assert got.startswith(b"HTTP/1.1 503 ")
            assert app.connections == 1
            samples = await scrape(sidecar.admin_url)
            assert total(samples, "istio_requests_total", response_code="503", response_flags="UC")

    run(main())


def test_client_sidecar_reuses_its_mtls_connection(certs: Certs) -> None:
    """Four client connections to the client sidecar: one upstream mTLS handshake, and
    every request recorded with both principals, on both sides."""

    async def main() -> None:
        app = CountingApp()
        app_server, app_port = await start_app(app)
        async with app_server, Sidecar(inbound(app_port, certs)) as server:
            out = OutboundConfig(
                port=0,
                upstream=("127.0.0.1", server.inbound_port),
                service_host="reviews.default.svc.cluster.local",
                protocol="http",
            )
            config = SidecarConfig(
                node=CLIENT_NODE, node_id=CLIENT_ID, cert_dir=certs.client, outbound=(out,)
            )
            async with Sidecar(config) as client:
                for _ in range(4):
                    got = await asyncio.to_thread(exchange, client.outbound_ports[0], GET)
                    assert got.startswith(b"HTTP/1.1 200 ")
                    await parked(client, 1)
                assert client.tls_outbound.handshakes == 1
                assert server.tls_inbound.handshakes == 1
                for sidecar, reporter, policy in (
                    (client, "source", "unknown"),
                    (server, "destination", "mutual_tls"),
                ):
                    samples = await scrape(sidecar.admin_url)
                    found = select(samples, "istio_requests_total", reporter=reporter)
                    assert len(found) == 1, found  # one series: the same labels every time
                    _, labels, value = found[0]
                    assert value == 4
                    assert labels["source_principal"] == CLIENT_SA
                    assert labels["destination_principal"] == SERVER_SA
                    assert labels["connection_security_policy"] == policy

    run(main())


# -- the pool itself ------------------------------------------------------------------------


class FakeStream:
    def __init__(self, *, closing: bool = False, eof: bool = False) -> None:
        self.writer = self
        self.reader = self
        self._closing, self._eof, self.closed = closing, eof, False

    def is_closing(self) -> bool:
        return self._closing or self.closed

    def at_eof(self) -> bool:
        return self._eof

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pool_bounds_and_expiry() -> None:
    clock = Clock()
    pool = UpstreamPool(max_idle=2, max_idle_seconds=10, clock=clock)
    streams = [FakeStream() for _ in range(3)]
    for stream in streams:
        pool.give("t", Pooled(stream, None, None))
    assert len(pool) == 2 and streams[2].closed  # over max_idle: closed, not kept
    taken = pool.take("t")
    assert taken is not None and taken.stream is streams[1]  # newest first
    assert pool.take("other") is None
    clock.now = 10.0  # streams[0] has been idle for max_idle_seconds
    assert pool.take("t") is None and streams[0].closed
    assert (pool.reused, pool.discarded) == (1, 1)


def test_pool_skips_connections_the_peer_closed() -> None:
    pool = UpstreamPool()
    dead, eof, alive = FakeStream(closing=True), FakeStream(eof=True), FakeStream()
    pool.give("t", Pooled(alive, "p", "a"))
    pool.give("t", Pooled(eof, None, None))
    pool.give("t", Pooled(dead, None, None))  # already closing: not even kept
    assert dead.closed and len(pool) == 2
    taken = pool.take("t")
    assert taken is not None and taken.stream is alive and taken.principal == "p"
    assert eof.closed
    pool.give("t", Pooled(FakeStream(), None, None))
    pool.close()
    assert len(pool) == 0


@pytest.mark.parametrize("bad", [-1, True, "8", 1.5, 100_001])
def test_upstream_idle_connections_is_validated(bad: object) -> None:
    with pytest.raises(ConfigError, match="upstream_idle_connections"):
        SidecarConfig.from_mapping(
            {"node": {"WORKLOAD_NAME": "w"}, "upstream_idle_connections": bad}
        )
