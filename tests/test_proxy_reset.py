"""An app that resets its connection (RST: ``SO_LINGER`` 0, then close) behind two sidecars.

What each side sees and records (also in docs/proxy.md, "Faults"):

- TCP: the reset ends the relay; both sidecars close their connections (a clean close
  towards the client, not a reset) and record the connection closed with the bytes that did
  cross, and no response flag (Envoy's tcp_proxy sets none on an upstream close).
- HTTP, before the response headers: the server sidecar answers 503 ``UC`` (Envoy's
  "upstream connect error or disconnect/reset before headers. reset reason: connection
  termination"); the client sidecar passes that 503 on, recording it with no flag of its
  own.
- HTTP, in the middle of the response body: the response cannot be completed, so the
  client's connection is closed early (a short body); the server sidecar records the
  response's status with ``UC``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from proxy_support import (
    CLIENT_NODE,
    SERVER_NODE,
    SERVICE_HOST,
    Certs,
    Sample,
    assert_labels,
    eventually,
    make_certs,
    only_labels,
    run,
    scrape,
    start_app,
    total,
)

from meshstats.proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig

pytestmark = pytest.mark.timing

AppHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (linger on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class Mesh:
    client: Sidecar
    server: Sidecar

    @property
    def port(self) -> int:
        return self.client.outbound_ports[0]


@asynccontextmanager
async def mesh(certs: Certs, handler: AppHandler, protocol: str) -> AsyncIterator[Mesh]:
    app, app_port = await start_app(handler)
    inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol=protocol)  # type: ignore[arg-type]
    async with (
        app,
        Sidecar(SidecarConfig(node=SERVER_NODE, cert_dir=certs.server, inbound=inbound)) as server,
    ):
        out = OutboundConfig(
            port=0,
            upstream=("127.0.0.1", server.inbound_port),
            service_host=SERVICE_HOST,
            protocol=protocol,  # type: ignore[arg-type]
        )
        config = SidecarConfig(node=CLIENT_NODE, cert_dir=certs.client, outbound=(out,))
        async with Sidecar(config) as client:
            yield Mesh(client, server)


async def closed(sidecar: Sidecar, n: int) -> bool:
    samples = await scrape(sidecar.admin_url)
    return total(samples, "istio_tcp_connections_closed_total") >= n


def test_tcp_app_reset_closes_both_sides_and_is_recorded(certs: Certs) -> None:
    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ready")
        await writer.drain()
        await reader.readexactly(4)  # "boom"
        reset(writer)

    async def main() -> tuple[bytes, list[Sample], list[Sample]]:
        async with mesh(certs, app, "tcp") as m:
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            assert await reader.readexactly(5) == b"ready"
            writer.write(b"boom")
            try:
                rest = await reader.read()  # the connection ends
            except ConnectionResetError:
                rest = b"<reset>"
            writer.close()
            await eventually(lambda: closed(m.server, 1))
            await eventually(lambda: closed(m.client, 1))
            return rest, await scrape(m.client.admin_url), await scrape(m.server.admin_url)

    rest, client, server = run(main())
    assert rest == b""  # a clean close reaches the client, not the reset
    for samples, reporter in ((client, "source"), (server, "destination")):
        assert_labels(
            only_labels(samples, "istio_tcp_connections_closed_total"),
            reporter=reporter,
            source_workload="productpage-v1",
            destination_workload="reviews-v2",
            response_flags="-",
        )
        assert total(samples, "istio_tcp_connections_closed_total") == 1
        assert total(samples, "istio_tcp_received_bytes_total") == 4
        assert total(samples, "istio_tcp_sent_bytes_total") == 5


def test_http_app_reset_before_headers_is_503_uc(certs: Certs) -> None:
    requests_seen = 0

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests_seen
        await reader.readuntil(b"\r\n\r\n")
        requests_seen += 1
        reset(writer)

    def call(port: int) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"GET /reset HTTP/1.1\r\nHost: reviews:9080\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), body

    async def main() -> tuple[tuple[int, bytes], list[Sample], list[Sample]]:
        async with mesh(certs, app, "http") as m:
            reply = await asyncio.to_thread(call, m.port)
            return reply, await scrape(m.client.admin_url), await scrape(m.server.admin_url)

    (status, body), client, server = run(main())
    assert requests_seen == 1
    assert status == 503
    assert b"reset reason: connection termination" in body
    assert_labels(
        only_labels(server, "istio_requests_total"),
        reporter="destination",
        response_code="503",
        response_flags="UC",
        source_workload="productpage-v1",
    )
    assert_labels(
        only_labels(client, "istio_requests_total"),
        reporter="source",
        response_code="503",
        response_flags="-",
        destination_workload="reviews-v2",  # the server sidecar's local reply says who it is
    )


def test_http_app_reset_mid_body_closes_the_client_early_and_records_uc(certs: Certs) -> None:
    headers_read = threading.Event()
    go = asyncio.Event()

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await go.wait()  # the client has the headers: now break off
        reset(writer)

    def call(port: int, loop: asyncio.AbstractEventLoop) -> tuple[bytes, int]:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: reviews:9080\r\n\r\n")
            stream = sock.makefile("rb")
            status = stream.readline()
            while stream.readline() not in (b"\r\n", b""):
                pass
            headers_read.set()
            loop.call_soon_threadsafe(go.set)
            try:
                body = stream.read()  # until the connection ends
            except ConnectionResetError:
                body = b"<reset>"
            return status, len(body)

    async def main() -> tuple[tuple[bytes, int], list[Sample], list[Sample]]:
        async with mesh(certs, app, "http") as m:
            loop = asyncio.get_running_loop()
            reply = await asyncio.to_thread(call, m.port, loop)

            async def recorded() -> bool:
                for sidecar in (m.server, m.client):
                    if total(await scrape(sidecar.admin_url), "istio_requests_total") != 1:
                        return False
                return True

            await eventually(recorded)
            return reply, await scrape(m.client.admin_url), await scrape(m.server.admin_url)

    (status, got), client, server = run(main())
    assert headers_read.is_set()
    assert status.startswith(b"HTTP/1.1 200")
    assert got < 1000  # the response was cut short, not padded or completed
    assert_labels(
        only_labels(server, "istio_requests_total"),
        reporter="destination",
        response_code="200",
        response_flags="UC",
    )
    # The client sidecar's upstream (the server sidecar) closed mid-body too: UC there as well.
    assert_labels(
        only_labels(client, "istio_requests_total"),
        reporter="source",
        response_code="200",
        response_flags="UC",
    )
