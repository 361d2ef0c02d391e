"""TLS egress by SNI in passthrough (Istio's ``allow_any`` for TLS): the app's own TLS goes
through the sidecar untouched, and the server name its ClientHello asks for becomes
``destination_service``. Real TLS on 127.0.0.1; the sidecar never holds a key for it."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proxy_support import (
    Certs,
    Sample,
    eventually,
    make_certs,
    run,
    scrape,
    select,
    start_app,
    total,
)

from meshstats.certs import LocalCA, peer_principal
from meshstats.errors import ConfigError
from meshstats.proxy import OutboundConfig, Sidecar, SidecarConfig
from meshstats.proxy.sni import client_hello_for, server_name

NODE = {"WORKLOAD_NAME": "productpage-v1", "NAMESPACE": "default"}


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path)


def passthrough(port: int) -> SidecarConfig:
    out = OutboundConfig(port=0, upstream=("127.0.0.1", port), protocol="tls", mode="passthrough")
    return SidecarConfig(node=NODE, outbound=(out,))


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def closed(admin_url: str) -> list[Sample]:
    """The scrape once the connection is recorded closed (polled, with a long deadline)."""
    got: list[Sample] = []

    async def done() -> bool:
        got[:] = await scrape(admin_url)
        return bool(select(got, "istio_tcp_connections_closed_total"))

    await eventually(done)
    return got


def test_the_sni_names_the_destination_and_tls_is_not_terminated(tmp_path: Path) -> None:
    ca = LocalCA.create("example.org")
    external = ca.issue("external", "api").write(tmp_path / "api")
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(external / "cert.pem", external / "key.pem")
    client_ssl = ssl.create_default_context(cafile=str(external / "ca.crt"))
    client_ssl.check_hostname = False  # its identity is a SPIFFE URI: checked below

    async def main() -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ssl)
        port = int(server.sockets[0].getsockname()[1])
        async with server, Sidecar(passthrough(port)) as sidecar:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                sidecar.outbound_ports[0],
                ssl=client_ssl,
                server_hostname="API.Example.com",
            )
            # The certificate the app verified is the external server's own: the TLS
            # session runs end to end, through the sidecar.
            assert peer_principal(writer.get_extra_info("ssl_object")) == (
                "spiffe://example.org/ns/external/sa/api"
            )
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            await writer.wait_closed()
            samples = await closed(sidecar.admin_url)  # a moment after the client closes
            labels = select(samples, "istio_tcp_connections_closed_total")[0][1]
            assert labels["destination_service"] == "api.example.com"
            assert labels["destination_service_name"] == "PassthroughCluster"
            assert labels["reporter"] == "source"
            assert total(samples, "istio_tcp_connections_opened_total") == 1
            assert total(samples, "istio_tcp_received_bytes_total") > 4  # hello, records
            assert total(samples, "istio_tcp_sent_bytes_total") > 4

    run(main())


def test_bytes_that_are_not_tls_go_through_untouched(certs: Certs) -> None:
    async def main() -> None:
        server, port = await start_app(echo)
        async with server, Sidecar(passthrough(port)) as sidecar:
            reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.outbound_ports[0])
            writer.write(b"\x16\x03hello")  # a TLS-looking start, cut short
            writer.write_eof()
            assert await reader.read() == b"\x16\x03hello"
            writer.close()
            samples = await closed(sidecar.admin_url)
            labels = select(samples, "istio_tcp_connections_closed_total")[0][1]
            assert labels["destination_service"] == "unknown"
            assert labels["destination_service_name"] == "PassthroughCluster"
            assert total(samples, "istio_tcp_received_bytes_total") == 7
            assert total(samples, "istio_tcp_sent_bytes_total") == 7

    run(main())


def test_server_name_from_real_hellos() -> None:
    assert server_name(client_hello_for("reviews.default.svc.cluster.local")) == (
        "reviews.default.svc.cluster.local"
    )
    hello = client_hello_for("a.example")
    for cut in (0, 3, 5, 9, 40, 80, len(hello) - 1):
        assert server_name(hello[:cut]) in (None, "a.example")  # never an error
    assert server_name(b"\x16\x03\x01\x00\x05\x02abcd") is None  # a handshake, not a hello
    assert server_name(b"GET / HTTP/1.1\r\n\r\n") is None


HELLO = client_hello_for("x.example")


@settings(deadline=None)  # no clock in a test: a loaded CI machine may be slow
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=600))
def test_server_name_never_fails(noise: bytes, at: int) -> None:
    hello = HELLO
    mutated = hello[:at] + noise + hello[at + len(noise) :]
    result = server_name(mutated)
    assert result is None or isinstance(result, str)
    assert server_name(noise) is None or isinstance(server_name(noise), str)


def test_tls_is_for_passthrough_listeners() -> None:
    with pytest.raises(ConfigError, match="outbound.protocol"):
        OutboundConfig.from_mapping(
            {"port": 1, "upstream": ["127.0.0.1", 2], "service_host": "a.b.svc", "protocol": "tls"}
        )
    with pytest.raises(ConfigError, match="original destination"):
        OutboundConfig.from_mapping({"port": 1, "mode": "passthrough", "protocol": "tls"})
    cfg = OutboundConfig.from_mapping(
        {"port": 1, "mode": "passthrough", "protocol": "tls", "upstream": ["127.0.0.1", 2]}
    )
    assert cfg.protocol == "tls" and cfg.cluster_name == "PassthroughCluster"
