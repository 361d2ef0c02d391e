"""TCP through two real sidecars on 127.0.0.1 with real mTLS: bytes, exchange, metrics, faults.

The app behind the server sidecar reads a known number of bytes and answers with its own
payload, so each direction has its own size and digest. Fault tests drive the server
sidecar's inbound port by hand, as a misbehaving client sidecar (with a valid certificate
and Istio's ALPN) or as a plaintext client.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

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
    assert_labels,
    eventually,
    free_port,
    make_certs,
    only_labels,
    run,
    scrape,
    start_app,
    total,
)

from meshstats import DONE, PeerPrefixDecoder, encode_peer_prefix
from meshstats.certs import ALPN_IN_MESH_WITH_MXC, MX_ALPN, client_context
from meshstats.proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig

pytestmark = pytest.mark.timing

MAGIC = bytes.fromhex("3d230467")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@dataclass
class SinkApp:
    """Reads everything until EOF, hashing it; answers with ``reply`` first."""

    reply: bytes = b""
    received: bytearray = field(default_factory=bytearray)
    connections: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(self.reply)
        await writer.drain()
        while chunk := await reader.read(1 << 16):
            self.received += chunk
        writer.close()
        self.done.set()


@dataclass
class Mesh:
    client: Sidecar
    server: Sidecar

    @property
    def port(self) -> int:
        return self.client.outbound_ports[0]


def server_config(certs: Certs, app_port: int, exchange_timeout: float = 5.0) -> SidecarConfig:
    inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol="tcp")
    return SidecarConfig(
        node=SERVER_NODE,
        node_id=SERVER_ID,
        cert_dir=certs.server,
        inbound=inbound,
        exchange_timeout=exchange_timeout,
    )


@asynccontextmanager
async def mesh(certs: Certs, app_port: int) -> AsyncIterator[Mesh]:
    async with Sidecar(server_config(certs, app_port)) as server:
        out = OutboundConfig(
            port=0, upstream=("127.0.0.1", server.inbound_port), service_host=SERVICE_HOST
        )
        config = SidecarConfig(
            node=CLIENT_NODE, node_id=CLIENT_ID, cert_dir=certs.client, outbound=(out,)
        )
        async with Sidecar(config) as client:
            yield Mesh(client, server)


async def closed_count(sidecar: Sidecar, n: int) -> bool:
    samples = await scrape(sidecar.admin_url)
    return total(samples, "istio_tcp_connections_closed_total") >= n


def test_bytes_identical_both_ways_and_labels(certs: Certs) -> None:
    up = os.urandom(3_000_003)  # client -> app
    down = os.urandom(5_000_011)  # app -> client

    async def main() -> None:
        app = SinkApp(reply=down)
        server, app_port = await start_app(app)
        async with server, mesh(certs, app_port) as m:
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)

            async def send() -> None:
                writer.write(up)
                await writer.drain()

            sending = asyncio.create_task(send())
            got = await reader.readexactly(len(down))
            await sending
            await eventually(lambda: _received(app, len(up)))
            writer.close()
            await app.done.wait()
            assert hashlib.sha256(got).digest() == hashlib.sha256(down).digest()
            assert hashlib.sha256(app.received).digest() == hashlib.sha256(up).digest()
            await eventually(lambda: closed_count(m.client, 1))
            await eventually(lambda: closed_count(m.server, 1))

            for sidecar, reporter, policy in (
                (m.client, "source", "unknown"),
                (m.server, "destination", "mutual_tls"),
            ):
                samples = await scrape(sidecar.admin_url)
                labels = only_labels(samples, "istio_tcp_connections_opened_total")
                assert_labels(
                    labels,
                    reporter=reporter,
                    source_workload="productpage-v1",
                    source_app="productpage",
                    source_version="v1",
                    source_principal=CLIENT_SA,
                    destination_workload="reviews-v2",
                    destination_app="reviews",
                    destination_version="v2",
                    destination_principal=SERVER_SA,
                    request_protocol="tcp",
                    response_flags="-",
                    connection_security_policy=policy,
                )
                # Downstream view: the client sidecar's downstream is the app that sent `up`;
                # the server sidecar's downstream is the client sidecar, which sent `up` too.
                assert total(samples, "istio_tcp_received_bytes_total") == len(up)
                assert total(samples, "istio_tcp_sent_bytes_total") == len(down)
                assert total(samples, "istio_tcp_connections_opened_total") == 1
                assert total(samples, "istio_tcp_connections_closed_total") == 1
            client_samples = await scrape(m.client.admin_url)
            assert_labels(
                only_labels(client_samples, "istio_tcp_sent_bytes_total"),
                destination_service=SERVICE_HOST,
                destination_service_name="reviews",
                destination_service_namespace="default",
            )

    run(main())


async def _received(app: SinkApp, n: int) -> bool:
    return len(app.received) >= n


def test_many_connections_are_counted_exactly(certs: Certs) -> None:
    sizes = [1, 70_000, 12_345, 0, 999]

    async def main() -> None:
        app = SinkApp(reply=b"pong")
        server, app_port = await start_app(app)
        async with server, mesh(certs, app_port) as m:
            for size in sizes:
                reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
                assert await reader.readexactly(4) == b"pong"
                writer.write(b"x" * size)
                await writer.drain()
                expected = sum(sizes[: sizes.index(size) + 1])
                await eventually(lambda: _received(app, expected))
                writer.close()
            await eventually(lambda: closed_count(m.server, len(sizes)))
            await eventually(lambda: closed_count(m.client, len(sizes)))
            for sidecar in (m.client, m.server):
                samples = await scrape(sidecar.admin_url)
                assert total(samples, "istio_tcp_connections_opened_total") == len(sizes)
                assert total(samples, "istio_tcp_received_bytes_total") == sum(sizes)
                assert total(samples, "istio_tcp_sent_bytes_total") == 4 * len(sizes)

    run(main())


# -- faults: a hand-driven peer on the server sidecar's inbound port ------------------------


async def mtls_peer(certs: Certs, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that looks like a client sidecar: valid certificate, Istio's ALPN."""
    ctx: ssl.SSLContext = client_context(certs.rogue, ALPN_IN_MESH_WITH_MXC)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == MX_ALPN
    return reader, writer


async def read_server_prefix(reader: asyncio.StreamReader) -> tuple[str | None, bytes]:
    """The server sidecar writes its prefix first: decode it; return its id and leftover."""
    decoder = PeerPrefixDecoder()
    while decoder.feed(await reader.read(4096)) != DONE:
        pass
    assert decoder.exchange is not None
    return decoder.exchange.metadata_id, decoder.leftover


def _fault_case(
    certs: Certs, send: bytes, *, close: bool, exchange_timeout: float = 5.0, then: bytes = b""
) -> tuple[bytes, dict[str, str], float]:
    """Send ``send`` (then close, or wait for the timeout and send ``then``); returns what
    the app received, the server's TCP labels and its received-bytes total."""

    async def main() -> tuple[bytes, dict[str, str], float]:
        app = SinkApp(reply=b"hi")
        server, app_port = await start_app(app)
        config = server_config(certs, app_port, exchange_timeout=exchange_timeout)
        async with server, Sidecar(config) as sidecar:
            reader, writer = await mtls_peer(certs, sidecar.inbound_port)
            writer.write(send)
            await writer.drain()
            node_id, rest = await read_server_prefix(reader)
            assert node_id == SERVER_ID
            if not close:
                # The exchange gives up when its timeout fires: the moment the held bytes
                # reach the app. Waiting for that event (not a sleep) proves "then" is sent
                # after the give-up, however slow the machine is.
                await eventually(lambda: _received(app, len(send)), timeout=60)
                writer.write(then)
                await writer.drain()
                await eventually(lambda: _received(app, len(send) + len(then)))
                # The app's reply came after the server's prefix, untouched.
                rest += await reader.readexactly(2 - len(rest))
                assert rest == b"hi"
            writer.close()
            await app.done.wait()
            await eventually(lambda: closed_count(sidecar, 1))
            samples = await scrape(sidecar.admin_url)
            labels = only_labels(samples, "istio_tcp_connections_closed_total")
            received = total(samples, "istio_tcp_received_bytes_total")
            return bytes(app.received), labels, received

    return run(main())


def _assert_unknown_peer(labels: dict[str, str]) -> None:
    assert_labels(
        labels,
        reporter="destination",
        source_workload="unknown",
        source_app="unknown",
        # The certificate still names the peer: principals never come from the exchange.
        source_principal="spiffe://cluster.local/ns/default/sa/tester",
        destination_workload="reviews-v2",
        connection_security_policy="mutual_tls",
    )


def test_peer_closing_mid_prefix(certs: Certs) -> None:
    frame = encode_peer_prefix(CLIENT_NODE, CLIENT_ID)
    partial = frame[:20]
    got, labels, received = _fault_case(certs, partial, close=True)
    assert got == partial  # what arrived is forwarded untouched
    assert received == len(partial)
    _assert_unknown_peer(labels)


def test_peer_sending_garbage(certs: Certs) -> None:
    garbage = b"\x00GARBAGE, not a prefix" + os.urandom(50_000)
    got, labels, received = _fault_case(certs, garbage, close=True)
    assert hashlib.sha256(got).digest() == hashlib.sha256(garbage).digest()
    assert received == len(garbage)
    _assert_unknown_peer(labels)


def test_peer_announcing_a_huge_length(certs: Certs) -> None:
    huge = MAGIC + (0xFFFFFFF0).to_bytes(4, "big") + b"rest of the stream"
    got, labels, received = _fault_case(certs, huge, close=True)
    assert got == huge  # not buffered waiting for 4 GiB: passed on at once
    assert received == len(huge)
    _assert_unknown_peer(labels)


def test_peer_stalling_mid_prefix_is_handled_as_non_mesh(certs: Certs) -> None:
    stalled = MAGIC + (100).to_bytes(4, "big") + b"\x0a"  # a frame that never completes
    got, labels, received = _fault_case(
        certs, stalled, close=False, exchange_timeout=0.5, then=b"later bytes"
    )
    assert got == stalled + b"later bytes"
    assert received == len(got)
    _assert_unknown_peer(labels)


def test_valid_prefix_then_data_in_one_write(certs: Certs) -> None:
    frame = encode_peer_prefix(CLIENT_NODE, CLIENT_ID)
    got, labels, received = _fault_case(certs, frame + b"payload", close=True)
    assert got == b"payload"  # the prefix is consumed, never reaches the app
    assert received == len(b"payload")
    assert_labels(
        labels,
        source_workload="productpage-v1",
        source_principal="spiffe://cluster.local/ns/default/sa/tester",
        connection_security_policy="mutual_tls",
    )


def _plaintext_case(certs: Certs, send: bytes) -> tuple[bytes, bytes, dict[str, str]]:
    """A plaintext client on the permissive inbound port: what the app got, what the
    client got back, and the server's labels."""

    async def main() -> tuple[bytes, bytes, dict[str, str]]:
        app = SinkApp(reply=b"app says hi")
        server, app_port = await start_app(app)
        async with server, Sidecar(server_config(certs, app_port)) as sidecar:
            reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.inbound_port)
            writer.write(send)
            await writer.drain()
            back = await reader.readexactly(len(b"app says hi"))
            await eventually(lambda: _received(app, len(send) - _prefix_len(send)))
            writer.close()
            await app.done.wait()
            await eventually(lambda: closed_count(sidecar, 1))
            samples = await scrape(sidecar.admin_url)
            return (
                bytes(app.received),
                back,
                only_labels(samples, "istio_tcp_connections_closed_total"),
            )

    return run(main())


def _prefix_len(data: bytes) -> int:
    return 8 + int.from_bytes(data[4:8], "big") if data[:4] == MAGIC else 0


def test_plaintext_non_mesh_client_bytes_untouched(certs: Certs) -> None:
    payload = b"PLAIN" + os.urandom(200_000)
    got, back, labels = _plaintext_case(certs, payload)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert back == b"app says hi"  # no prefix is sent to a plaintext client
    assert_labels(
        labels,
        source_workload="unknown",
        source_principal="unknown",
        connection_security_policy="none",
    )


def test_plaintext_client_sending_the_prefix_is_recognised(certs: Certs) -> None:
    frame = encode_peer_prefix(CLIENT_NODE, CLIENT_ID)
    got, back, labels = _plaintext_case(certs, frame + b"data")
    assert got == b"data"
    assert back == b"app says hi"
    # Full workload telemetry, but no identity: nothing was verified.
    assert_labels(
        labels,
        source_workload="productpage-v1",
        source_app="productpage",
        source_principal="unknown",
        connection_security_policy="none",
    )


# -- upstream failures ----------------------------------------------------------------------


def _client_flags(certs: Certs, upstream: tuple[str, int] | None) -> tuple[bytes, dict[str, str]]:
    async def main() -> tuple[bytes, dict[str, str]]:
        out = OutboundConfig(port=0, upstream=upstream, service_host=SERVICE_HOST)
        config = SidecarConfig(node=CLIENT_NODE, cert_dir=certs.client, outbound=(out,))
        async with Sidecar(config) as client:
            reader, writer = await asyncio.open_connection("127.0.0.1", client.outbound_ports[0])
            data = await reader.read()  # the sidecar closes the connection
            writer.close()
            await eventually(lambda: closed_count(client, 1))
            samples = await scrape(client.admin_url)
            return data, only_labels(samples, "istio_tcp_connections_closed_total")

    return run(main())


def test_upstream_refusing_is_uf(certs: Certs) -> None:
    data, labels = _client_flags(certs, ("127.0.0.1", free_port()))
    assert data == b""
    assert_labels(labels, reporter="source", response_flags="UF", destination_workload="unknown")


def test_no_upstream_is_uh(certs: Certs) -> None:
    data, labels = _client_flags(certs, None)
    assert data == b""
    assert_labels(labels, reporter="source", response_flags="UH")


def test_app_down_behind_server_sidecar_is_uf(certs: Certs) -> None:
    async def main() -> dict[str, str]:
        async with mesh(certs, free_port()) as m:
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            writer.write(b"hello?")
            assert await reader.read() == b""
            writer.close()
            await eventually(lambda: closed_count(m.server, 1))
            samples = await scrape(m.server.admin_url)
            return only_labels(samples, "istio_tcp_connections_closed_total")

    labels = run(main())
    assert_labels(labels, reporter="destination", response_flags="UF")


def test_strict_inbound_refuses_plaintext(certs: Certs, tmp_path: Path) -> None:
    async def main() -> bytes:
        app = SinkApp()
        server, app_port = await start_app(app)
        inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol="tcp", mtls="strict")
        config = SidecarConfig(node=SERVER_NODE, cert_dir=certs.server, inbound=inbound)
        async with server, Sidecar(config) as sidecar:
            reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.inbound_port)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            try:
                data = await reader.read()
            except ConnectionError:
                data = b""
            writer.close()
            assert app.connections == 0
            return data

    assert run(main()) == b""


def test_long_connection_is_reported_before_it_closes(certs: Certs) -> None:
    async def main() -> None:
        app = SinkApp(reply=b"ready")
        server, app_port = await start_app(app)
        inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol="tcp")
        config = SidecarConfig(
            node=SERVER_NODE,
            cert_dir=certs.server,
            inbound=inbound,
            # Periodic reports off: the test reports by hand, at the moments it chooses.
            stats={"tcp_reporting_duration": "0"},
        )
        async with server, Sidecar(config) as sidecar:
            reader, writer = await mtls_peer(certs, sidecar.inbound_port)
            writer.write(encode_peer_prefix(CLIENT_NODE, CLIENT_ID) + b"12345")
            await writer.drain()

            # The sidecar counts bytes as it forwards them, before the app can read them.
            await eventually(lambda: _received(app, 5))
            samples = await scrape(sidecar.admin_url)
            assert total(samples, "istio_tcp_received_bytes_total") == 0  # not reported yet
            assert sidecar.engine.report_tcp() == 1  # what the periodic report does
            samples = await scrape(sidecar.admin_url)
            assert total(samples, "istio_tcp_connections_opened_total") == 1
            assert total(samples, "istio_tcp_connections_closed_total") == 0
            assert_labels(
                only_labels(samples, "istio_tcp_received_bytes_total"),
                source_workload="productpage-v1",
            )
            writer.write(b"678")
            await writer.drain()
            writer.close()
            await eventually(lambda: closed_count(sidecar, 1))
            samples = await scrape(sidecar.admin_url)
            assert total(samples, "istio_tcp_received_bytes_total") == 8
            assert total(samples, "istio_tcp_connections_opened_total") == 1

    run(main())
