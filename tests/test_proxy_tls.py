"""TLS session resumption between two real sidecars on 127.0.0.1 (real certificates).

Each request goes over a new connection (``connection: close``; a new TCP connection),
so every one is a TLS handshake between the sidecars: the first a full one, the next
ones resumed from the ticket the first brought. What must hold: resumption happens, a
resumed connection is labelled exactly as a full one (principals from the certificate of
the session's full handshake), and a ticket never lets a connection skip a check it would
fail: a replaced upstream (another identity, another CA) gets a full handshake.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from proxy_support import (
    CLIENT_ID,
    CLIENT_NODE,
    CLIENT_SA,
    SERVER_ID,
    SERVER_NODE,
    SERVER_SA,
    SERVICE_HOST,
    Certs,
    Sample,
    assert_labels,
    eventually,
    make_certs,
    only_labels,
    run,
    scrape,
    select,
    start_app,
    total,
)

from meshstats.certs import LocalCA, resuming_client_context, server_context
from meshstats.proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig
from meshstats.proxy.config import Protocol
from meshstats.proxy.listener import TlsCounters

pytestmark = pytest.mark.timing

TESTER_SA = "spiffe://cluster.local/ns/default/sa/tester"
REQUEST = b"GET /reviews/0 HTTP/1.1\r\nhost: reviews:9080\r\nconnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


async def http_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One response per connection."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    await writer.drain()
    writer.close()


async def tcp_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A greeting, then read until EOF."""
    writer.write(b"hello")
    await writer.drain()
    await reader.read()
    writer.close()


APPS = {"http": http_app, "tcp": tcp_app}


async def one_connection(port: int, protocol: Protocol) -> bytes:
    """A new connection to the client sidecar; what it answered, to its EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if protocol == "http":
            writer.write(REQUEST)
            return await asyncio.wait_for(reader.read(), 60)  # bounds a hang, not a speed
        data = await asyncio.wait_for(reader.readexactly(5), 60)
        writer.write(b"ping")
        await writer.drain()
        return data
    finally:
        writer.close()
        await writer.wait_closed()


def server_sidecar(
    cert_dir: Path, app_port: int, protocol: Protocol, port: int = 0, **extra: Any
) -> Sidecar:
    inbound = InboundConfig(port=port, app=("127.0.0.1", app_port), protocol=protocol)
    return Sidecar(
        SidecarConfig(
            node=SERVER_NODE, node_id=SERVER_ID, cert_dir=cert_dir, inbound=inbound, **extra
        )
    )


def client_sidecar(cert_dir: Path, upstream: int, protocol: Protocol, **extra: Any) -> Sidecar:
    out = OutboundConfig(
        port=0,
        upstream=("127.0.0.1", upstream),
        service_host=SERVICE_HOST,
        protocol=protocol,
    )
    return Sidecar(
        SidecarConfig(
            node=CLIENT_NODE, node_id=CLIENT_ID, cert_dir=cert_dir, outbound=(out,), **extra
        )
    )


@dataclass
class Mesh:
    client: Sidecar
    server: Sidecar
    app_port: int

    @property
    def port(self) -> int:
        return self.client.outbound_ports[0]


@asynccontextmanager
async def mesh(
    certs: Certs,
    protocol: Protocol,
    client_extra: dict[str, Any] | None = None,
    server_extra: dict[str, Any] | None = None,
) -> AsyncIterator[Mesh]:
    server_app, app_port = await start_app(APPS[protocol])
    async with server_app:
        server = server_sidecar(certs.server, app_port, protocol, **(server_extra or {}))
        async with server:
            # No pooled upstream connections: each client connection is its own upstream
            # connection, so each test connection is a handshake to count.
            extra = {"upstream_idle_connections": 0, **(client_extra or {})}
            client = client_sidecar(certs.client, server.inbound_port, protocol, **extra)
            async with client:
                yield Mesh(client, server, app_port)


def counted(counters: TlsCounters) -> tuple[int, int, int]:
    return counters.handshakes, counters.resumed, counters.expired


async def settled(sidecar: Sidecar, metric: str, n: int) -> None:
    """Wait until ``n`` connections or requests are recorded (a close is recorded after it)."""

    async def check() -> bool:
        return total(await scrape(sidecar.admin_url), metric) >= n

    await eventually(check)


METRIC = {"http": "istio_requests_total", "tcp": "istio_tcp_connections_closed_total"}
EXPECTED = {"http": b"ok", "tcp": b"hello"}


@pytest.mark.parametrize("protocol", ["http", "tcp"])
def test_second_connection_resumes_with_the_same_principals(
    certs: Certs, protocol: Protocol
) -> None:
    async def main() -> None:
        async with mesh(certs, protocol) as m:
            for _ in range(3):
                assert (await one_connection(m.port, protocol)).endswith(EXPECTED[protocol])
            # The first connection is a full handshake; it brings the ticket the next resume.
            assert counted(m.client.tls_outbound) == (3, 2, 0)
            assert counted(m.server.tls_inbound) == (3, 2, 0)
            metric = METRIC[protocol]
            await settled(m.client, metric, 3)
            await settled(m.server, metric, 3)
            for sidecar, reporter, policy in (
                (m.client, "source", "unknown"),  # Istio's client never knows the policy
                (m.server, "destination", "mutual_tls"),
            ):
                samples = await scrape(sidecar.admin_url)
                # One series with all three: full and resumed connections labelled alike.
                labels = only_labels(samples, metric, reporter=reporter)
                assert total(samples, metric, reporter=reporter) == 3
                assert_labels(
                    labels,
                    source_principal=CLIENT_SA,
                    destination_principal=SERVER_SA,
                    connection_security_policy=policy,
                    source_workload="productpage-v1",
                    destination_workload="reviews-v2",
                )

    run(main())


@pytest.mark.parametrize(
    ("client_extra", "server_extra"),
    [
        ({"tls_session_resumption": False}, {}),  # the client offers no ticket
        ({}, {"tls_session_resumption": False}),  # the server issues none
    ],
)
def test_resumption_off_on_either_side_means_full_handshakes(
    certs: Certs, client_extra: dict[str, Any], server_extra: dict[str, Any]
) -> None:
    async def main() -> None:
        async with mesh(certs, "http", client_extra, server_extra) as m:
            for _ in range(3):
                assert (await one_connection(m.port, "http")).endswith(b"ok")
            assert counted(m.client.tls_outbound) == (3, 0, 0)
            assert counted(m.server.tls_inbound) == (3, 0, 0)

    run(main())


def test_clients_with_different_identities_keep_their_own_principals(certs: Certs) -> None:
    """Two client sidecars (two identities) resuming against one server, interleaved: each
    connection is recorded under its own client's principal, never the other's."""

    async def main() -> None:
        async with mesh(certs, "http") as m:
            other = client_sidecar(
                certs.rogue, m.server.inbound_port, "http", upstream_idle_connections=0
            )
            async with other:
                for _ in range(3):
                    for port in (m.port, other.outbound_ports[0]):
                        assert (await one_connection(port, "http")).endswith(b"ok")
                assert counted(m.client.tls_outbound) == (3, 2, 0)
                assert counted(other.tls_outbound) == (3, 2, 0)
                assert counted(m.server.tls_inbound) == (6, 4, 0)
                await settled(m.server, METRIC["http"], 6)
                samples = await scrape(m.server.admin_url)
                for principal in (CLIENT_SA, TESTER_SA):
                    assert total(samples, METRIC["http"], source_principal=principal) == 3
                assert len(select(samples, METRIC["http"])) == 2

    run(main())


@dataclass
class Replaced:
    client: Sidecar
    second: Sidecar  # the sidecar that took over the upstream's port
    before: list[bytes]  # the answers through the first server sidecar
    after: list[bytes]  # and through the second
    samples: list[Sample]  # the client sidecar's metrics at the end


async def _replace_upstream(
    certs: Certs, replacement: Path, client_dir: Path | None = None
) -> Replaced:
    """Two connections to the server sidecar, then the same two to ``replacement``'s
    sidecar, started on the same port (the client keeps its ticket from the first)."""
    server_app, app_port = await start_app(http_app)
    async with server_app:
        first = await server_sidecar(certs.server, app_port, "http").start()
        port = first.inbound_port
        client = client_sidecar(
            client_dir or certs.client, port, "http", upstream_idle_connections=0
        )
        async with client:
            try:
                before = [await one_connection(client.outbound_ports[0], "http") for _ in "ab"]
            finally:
                await first.stop()
            async with server_sidecar(replacement, app_port, "http", port=port) as second:
                after = [await one_connection(client.outbound_ports[0], "http") for _ in "ab"]
                samples = await scrape(client.admin_url)
                return Replaced(client, second, before, after, samples)


def test_upstream_with_another_identity_is_not_resumed(certs: Certs) -> None:
    """The client holds a ticket from ``reviews``; a ``tester`` sidecar now listens there.
    The ticket does not resume (another server, another ticket key): a full handshake
    names the new server, then its own ticket resumes."""

    async def main() -> None:
        r = await _replace_upstream(certs, certs.rogue)
        assert all(answer.endswith(b"ok") for answer in r.before + r.after)
        # 4 handshakes: full, resumed (reviews); full, resumed (tester).
        assert counted(r.client.tls_outbound) == (4, 2, 0)
        assert counted(r.second.tls_inbound) == (2, 1, 0)
        samples = r.samples
        assert total(samples, METRIC["http"], destination_principal=SERVER_SA) == 2
        assert total(samples, METRIC["http"], destination_principal=TESTER_SA) == 2

    run(main())


def test_upstream_from_an_untrusted_ca_is_refused_despite_a_session(
    certs: Certs, tmp_path: Path
) -> None:
    """The same SPIFFE identity from another CA, on the port that issued the client's
    ticket: the ticket does not resume, and the full handshake fails the client's check
    (the new server trusts the client, so only the client can refuse): 503 ``UF``."""
    other = LocalCA.create("cluster.local").issue("default", "reviews").write(tmp_path)
    (other / "ca.crt").write_bytes(certs.ca.cert_pem)  # it trusts our client

    async def main() -> None:
        r = await _replace_upstream(certs, other)
        assert all(answer.endswith(b"ok") for answer in r.before)
        assert all(answer.startswith(b"HTTP/1.1 503 ") for answer in r.after)
        assert counted(r.client.tls_outbound) == (2, 1, 0)  # failed handshakes never count
        assert counted(r.second.tls_inbound) == (0, 0, 0)
        samples = r.samples
        refused = only_labels(samples, METRIC["http"], response_code="503")
        assert_labels(refused, response_flags="UF", destination_principal="unknown")

    run(main())


def test_client_from_an_untrusted_ca_is_refused_despite_a_session(
    certs: Certs, tmp_path: Path
) -> None:
    """The server side of the same: the upstream restarts trusting only a new CA. The
    client's ticket from before does not let it skip the new server's check: refused."""
    ca2 = LocalCA.create("cluster.local")
    replacement = ca2.issue("default", "reviews").write(tmp_path / "server")
    client_dir = certs.ca.issue("default", "productpage").write(tmp_path / "client")
    # The client trusts both CAs, so only the new server's check can refuse it.
    (client_dir / "ca.crt").write_bytes(certs.ca.cert_pem + ca2.cert_pem)

    async def main() -> None:
        r = await _replace_upstream(certs, replacement, client_dir)
        assert all(answer.endswith(b"ok") for answer in r.before)
        assert all(answer.startswith(b"HTTP/1.1 503 ") for answer in r.after)
        assert r.client.tls_outbound.resumed == 1  # only with the first server's ticket
        assert counted(r.second.tls_inbound) == (0, 0, 0)

    run(main())


def test_counters_refuse_a_resumed_session_whose_certificate_expired(certs: Certs) -> None:
    """What the inbound listener does with each handshake, at two clocks: now, and three
    days on (past the 24 h client certificate). Only the resumed session is refused then:
    a full handshake would have checked the certificate against that clock itself."""
    now, later = TlsCounters(), TlsCounters()
    verdicts: list[tuple[bool, bool]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj: ssl.SSLObject = writer.get_extra_info("ssl_object")
        verdicts.append((now.count(obj), later.count(obj, time.time() + 3 * 86400)))
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(
            handle, "127.0.0.1", 0, ssl=server_context(certs.server)
        )
        port = server.sockets[0].getsockname()[1]
        client_ctx = resuming_client_context(certs.client)
        async with server:
            for _ in range(2):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_ctx, server_hostname=""
                )
                assert await asyncio.wait_for(reader.read(), 60) == b"hello"
                writer.close()

    run(main())
    assert verdicts == [(True, True), (True, False)]
    assert counted(now) == (2, 1, 0)
    assert counted(later) == (2, 1, 1)
