"""The gaps Istio admits, closed in the sidecar, with real sockets on 127.0.0.x.

- out-of-mesh peers named by the workload registry (by the peer's address);
- the plaintext prefix recognition switch (``plaintext_exchange``);
- catch-all outbound listeners: passthrough (``PassthroughCluster``) and blackhole
  (``BlackHoleCluster``), HTTP and TCP;
- gateway mode: ``destination_service`` from the requested host.

The HTTP apps here are raw asyncio servers and the clients ``http.client`` or raw sockets,
so nothing on either end shares the proxy's parser. Registered and unregistered clients
differ by their source address: the whole of 127.0.0.0/8 is loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from proxy_support import (
    CLIENT_ID,
    CLIENT_NODE,
    SERVER_NODE,
    Certs,
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

from meshstats import encode_peer_prefix
from meshstats.errors import ConfigError
from meshstats.proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig

pytestmark = pytest.mark.timing

LEGACY = {"WORKLOAD_NAME": "legacy-billing", "NAMESPACE": "data", "LABELS": {"app": "billing"}}
REGISTRY = [{"ip": "127.0.0.2", "metadata": LEGACY}]
MX = "x-envoy-peer-metadata"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


# -- apps ---------------------------------------------------------------------------------------


@dataclass
class TcpSink:
    """Answers ``reply`` at once, then keeps everything it receives until EOF."""

    reply: bytes = b""
    received: bytearray = field(default_factory=bytearray)
    connections: int = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(self.reply)
        await writer.drain()
        while chunk := await reader.read(1 << 16):
            self.received += chunk
        writer.close()


@dataclass
class HttpApp:
    """A hand-written HTTP/1.1 server: keep-alive, content-length bodies, one reply text."""

    name: bytes
    seen: list[dict[str, str]] = field(default_factory=list)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = _headers(head)
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append(headers)
                body = b"from " + self.name
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)
    }


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def get(port: int, hosts: list[str], source: str = "127.0.0.1") -> list[tuple[int, bytes]]:
    """GET / once per Host over one keep-alive connection from ``source`` (in a thread)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20, source_address=(source, 0))
    out = []
    try:
        for host in hosts:
            conn.request("GET", "/", headers={"Host": host})
            resp = conn.getresponse()
            out.append((resp.status, resp.read()))
    finally:
        conn.close()
    return out


async def closed(sidecar: Sidecar, n: int) -> bool:
    samples = await scrape(sidecar.admin_url)
    return total(samples, "istio_tcp_connections_closed_total") >= n


def server_config(certs: Certs, app_port: int, protocol: str = "tcp", **over: Any) -> SidecarConfig:
    inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol=protocol)  # type: ignore[arg-type]
    return SidecarConfig(node=SERVER_NODE, cert_dir=certs.server, inbound=inbound, **over)


# -- 1. out-of-mesh peers: the workload registry ------------------------------------------------


def test_registry_names_a_plaintext_tcp_client_by_its_address(certs: Certs) -> None:
    async def main() -> list[Any]:
        app = TcpSink(reply=b"ok")
        server, app_port = await start_app(app)
        async with server, Sidecar(server_config(certs, app_port, registry=REGISTRY)) as sc:
            for source in ("127.0.0.2", "127.0.0.3"):  # registered, then not
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", sc.inbound_port, local_addr=(source, 0)
                )
                writer.write(b"plain bytes from " + source.encode())
                assert await reader.readexactly(2) == b"ok"
                writer.close()
            await eventually(lambda: closed(sc, 2))
            return await scrape(sc.admin_url)

    samples = run(main())
    assert_labels(
        only_labels(
            samples, "istio_tcp_connections_closed_total", source_workload="legacy-billing"
        ),
        reporter="destination",
        source_workload_namespace="data",
        source_app="billing",
        source_principal="unknown",  # a registry never vouches for an identity
        connection_security_policy="none",
    )
    assert total(
        samples, "istio_tcp_received_bytes_total", source_workload="legacy-billing"
    ) == len(b"plain bytes from 127.0.0.2")
    assert_labels(
        only_labels(samples, "istio_tcp_connections_closed_total", source_workload="unknown"),
        source_app="unknown",
        source_principal="unknown",
    )


def test_registry_names_a_plaintext_http_client(certs: Certs) -> None:
    async def main() -> list[Any]:
        app = HttpApp(b"reviews")
        server, app_port = await start_app(app)
        config = server_config(certs, app_port, "http", registry=REGISTRY)
        async with server, Sidecar(config) as sc:
            assert await asyncio.to_thread(get, sc.inbound_port, ["reviews"], "127.0.0.2") == [
                (200, b"from reviews")
            ]
            assert await asyncio.to_thread(get, sc.inbound_port, ["reviews"] * 2, "127.0.0.3")
            return await scrape(sc.admin_url)

    samples = run(main())
    assert total(samples, "istio_requests_total", source_workload="legacy-billing") == 1
    assert total(samples, "istio_requests_total", source_workload="unknown") == 2
    assert_labels(
        only_labels(samples, "istio_requests_total", source_workload="legacy-billing"),
        source_workload_namespace="data",
        source_principal="unknown",
    )


def test_a_mesh_peer_is_never_overridden_by_the_registry(certs: Certs) -> None:
    """The registry fills in only what the exchange did not give."""

    async def main() -> list[Any]:
        app = TcpSink(reply=b"ok")
        server, app_port = await start_app(app)
        async with server, Sidecar(server_config(certs, app_port, registry=REGISTRY)) as sc:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", sc.inbound_port, local_addr=("127.0.0.2", 0)
            )
            writer.write(encode_peer_prefix(CLIENT_NODE, CLIENT_ID) + b"data")
            assert await reader.readexactly(2) == b"ok"
            writer.close()
            await eventually(lambda: closed(sc, 1))
            return await scrape(sc.admin_url)

    labels = only_labels(run(main()), "istio_tcp_connections_closed_total")
    assert_labels(labels, source_workload="productpage-v1", source_principal="unknown")


def test_registry_config_from_a_file_and_errors_naming_the_entry(tmp_path: Path) -> None:
    (tmp_path / "registry.yaml").write_text(
        "workloads:\n  - cidr: 127.0.0.0/30\n    metadata: {WORKLOAD_NAME: vm}\n"
    )
    path = tmp_path / "sidecar.yaml"
    path.write_text("node: {WORKLOAD_NAME: a}\nregistry: registry.yaml\n")
    registry = SidecarConfig.from_file(path).registry
    assert registry is not None and not isinstance(registry, (str, list))
    found = registry.lookup("127.0.0.3:5000")  # type: ignore[union-attr]
    assert found is not None and found.workload_name == "vm"
    bad = {
        "node": {"WORKLOAD_NAME": "a"},
        "registry": [REGISTRY[0], {"ip": "300.1.1.1", "metadata": {}}],
    }
    with pytest.raises(ConfigError) as info:
        SidecarConfig.from_mapping(bad)
    assert info.value.field == "registry[1].ip"
    with pytest.raises(ConfigError) as info:
        SidecarConfig.from_mapping({"node": {}, "registry": str(tmp_path / "missing.json")})
    assert "missing.json" in str(info.value)


# -- 2. plaintext prefix recognition switch -----------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_plaintext_exchange_switch(certs: Certs, enabled: bool) -> None:
    frame = encode_peer_prefix(CLIENT_NODE, CLIENT_ID)
    payload = frame + b"data after the prefix" + os.urandom(10_000)

    async def main() -> tuple[bytes, list[Any]]:
        app = TcpSink(reply=b"ok")
        server, app_port = await start_app(app)
        config = server_config(certs, app_port, plaintext_exchange=enabled)
        async with server, Sidecar(config) as sc:
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.inbound_port)
            writer.write(payload)
            await writer.drain()
            assert await reader.readexactly(2) == b"ok"  # never a prefix to a plaintext peer
            writer.write_eof()
            await eventually(lambda: closed(sc, 1))
            writer.close()
            return bytes(app.received), await scrape(sc.admin_url)

    got, samples = run(main())
    labels = only_labels(samples, "istio_tcp_connections_closed_total")
    if enabled:
        assert got == payload[len(frame) :]
        assert_labels(labels, source_workload="productpage-v1", source_principal="unknown")
    else:
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert_labels(labels, source_workload="unknown", source_principal="unknown")
    assert total(samples, "istio_tcp_received_bytes_total") == len(got)


def test_plaintext_exchange_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError) as info:
        SidecarConfig.from_mapping({"node": {}, "plaintext_exchange": "no"})
    assert info.value.field == "plaintext_exchange"


# -- 3. black hole and passthrough --------------------------------------------------------------


def client_config(certs: Certs, out: OutboundConfig, **over: Any) -> SidecarConfig:
    return SidecarConfig(node=CLIENT_NODE, cert_dir=certs.client, outbound=(out,), **over)


def test_http_passthrough_follows_the_host_header(certs: Certs) -> None:
    async def main() -> tuple[list[tuple[int, bytes]], HttpApp, HttpApp, list[Any], list[str]]:
        one, two = HttpApp(b"one"), HttpApp(b"two")
        s1, s2 = (
            await asyncio.start_server(one, "127.0.0.1", 0),
            await asyncio.start_server(two, "127.0.0.2", 0),
        )
        hosts = [f"127.0.0.1:{_port(s1)}", f"127.0.0.2:{_port(s2)}", f"127.0.0.2:{_port(s2)}"]
        out = OutboundConfig(port=0, upstream=None, protocol="http", mode="passthrough")
        # The registry knows who is behind 127.0.0.2 (an upstream outside the mesh).
        async with s1, s2, Sidecar(client_config(certs, out, registry=REGISTRY)) as sc:
            replies = await asyncio.to_thread(get, sc.outbound_ports[0], hosts)
            return replies, one, two, await scrape(sc.admin_url), hosts

    replies, one, two, samples, hosts = run(main())
    assert replies == [(200, b"from one"), (200, b"from two"), (200, b"from two")]
    assert len(one.seen) == 1 and len(two.seen) == 2
    # Plaintext, and no node metadata handed to a destination outside the mesh.
    assert all(MX not in h for h in one.seen + two.seen)
    assert [h["host"] for h in one.seen + two.seen] == hosts
    for host, n, workload in ((hosts[0], 1, "unknown"), (hosts[1], 2, "legacy-billing")):
        labels = only_labels(samples, "istio_requests_total", destination_service=host)
        assert_labels(
            labels,
            reporter="source",
            destination_service_name="PassthroughCluster",
            destination_workload=workload,
            destination_principal="unknown",
            response_code="200",
            response_flags="-",
        )
        assert total(samples, "istio_requests_total", destination_service=host) == n


def test_http_passthrough_to_a_configured_destination_and_without_host(certs: Certs) -> None:
    async def main() -> tuple[list[tuple[int, bytes]], bytes, list[Any]]:
        app = HttpApp(b"origin")
        server = await asyncio.start_server(app, "127.0.0.1", 0)
        out = OutboundConfig(
            port=0, upstream=("127.0.0.1", _port(server)), protocol="http", mode="passthrough"
        )
        catch_all = OutboundConfig(port=0, upstream=None, protocol="http", mode="passthrough")
        config = SidecarConfig(
            node=CLIENT_NODE, cert_dir=certs.client, outbound=(out, catch_all),
            accept_http_10=True,
        )  # fmt: skip
        async with server, Sidecar(config) as sc:
            replies = await asyncio.to_thread(get, sc.outbound_ports[0], ["anything.example"])
            # HTTP/1.0 (served here) needs no Host: nothing to go by, no upstream (UH).
            raw = await asyncio.to_thread(_raw, sc.outbound_ports[1], b"GET / HTTP/1.0\r\n\r\n")
            return replies, raw, await scrape(sc.admin_url)

    replies, raw, samples = run(main())
    assert replies == [(200, b"from origin")]
    assert raw.startswith(b"HTTP/1.1 503 ")  # h11 answers as 1.1
    assert raw.endswith(b"no healthy upstream")
    assert_labels(
        only_labels(samples, "istio_requests_total", response_code="200"),
        destination_service="anything.example",
        destination_service_name="PassthroughCluster",
    )
    assert_labels(
        only_labels(samples, "istio_requests_total", response_code="503"),
        destination_service="unknown",
        destination_service_name="PassthroughCluster",
        response_flags="UH",
    )


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_http_blackhole_answers_502_and_reports_black_hole(certs: Certs) -> None:
    async def main() -> tuple[list[tuple[int, bytes]], list[Any]]:
        out = OutboundConfig(port=0, upstream=None, protocol="http", mode="blackhole")
        async with Sidecar(client_config(certs, out)) as sc:
            replies = await asyncio.to_thread(get, sc.outbound_ports[0], ["evil.example"] * 2)
            return replies, await scrape(sc.admin_url)

    replies, samples = run(main())
    assert replies == [(502, b"")] * 2  # Envoy's direct response for Istio's block_all route
    assert_labels(
        only_labels(samples, "istio_requests_total"),
        reporter="source",
        destination_service="evil.example",
        destination_service_name="BlackHoleCluster",
        destination_workload="unknown",
        response_code="502",
        response_flags="-",
    )
    assert total(samples, "istio_requests_total") == 2


def test_tcp_passthrough_relays_plainly(certs: Certs) -> None:
    up = os.urandom(300_001)

    async def main() -> tuple[bytes, TcpSink, list[Any]]:
        app = TcpSink(reply=b"origin says hi")
        server, app_port = await start_app(app)
        out = OutboundConfig(port=0, upstream=("127.0.0.1", app_port), mode="passthrough")
        async with server, Sidecar(client_config(certs, out)) as sc:
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.outbound_ports[0])
            writer.write(up)
            writer.write_eof()
            back = await reader.read()  # the origin closes after our EOF
            writer.close()
            await eventually(lambda: closed(sc, 1))
            return back, app, await scrape(sc.admin_url)

    back, app, samples = run(main())
    assert back == b"origin says hi"  # no prefix either way: the origin is no mesh peer
    assert hashlib.sha256(app.received).digest() == hashlib.sha256(up).digest()
    assert_labels(
        only_labels(samples, "istio_tcp_connections_closed_total"),
        reporter="source",
        destination_service="unknown",
        destination_service_name="PassthroughCluster",
        destination_workload="unknown",
        response_flags="-",
    )
    assert total(samples, "istio_tcp_received_bytes_total") == len(up)
    assert total(samples, "istio_tcp_sent_bytes_total") == len(b"origin says hi")


def test_tcp_blackhole_closes_and_reports_black_hole(certs: Certs) -> None:
    async def main() -> tuple[bytes, list[Any]]:
        out = OutboundConfig(port=0, upstream=None, mode="blackhole")
        async with Sidecar(client_config(certs, out)) as sc:
            reader, writer = await asyncio.open_connection("127.0.0.1", sc.outbound_ports[0])
            writer.write(b"let me out")
            try:
                data = await reader.read()
            except ConnectionResetError:  # closed with our bytes unread: the kernel resets
                data = b""
            writer.close()
            await eventually(lambda: closed(sc, 1))
            return data, await scrape(sc.admin_url)

    data, samples = run(main())
    assert data == b""
    assert_labels(
        only_labels(samples, "istio_tcp_connections_closed_total"),
        reporter="source",
        destination_service_name="BlackHoleCluster",
        response_flags="UH",
    )


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"mode": "allow_any"}, "outbound[0].mode"),
        ({"mode": "blackhole", "upstream": 80}, "outbound[0].upstream"),
        ({"mode": "passthrough"}, "outbound[0].upstream"),  # TCP needs the original destination
        (
            {"mode": "passthrough", "protocol": "http", "service_host": "x"},
            "outbound[0].service_host",
        ),
    ],
)
def test_catch_all_config_errors(entry: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SidecarConfig.from_mapping({"node": {}, "outbound": [{"port": 0, **entry}]})
    assert info.value.field == field


def test_catch_all_config_parses() -> None:
    cfg = SidecarConfig.from_mapping(
        {"node": {}, "outbound": [{"port": 0, "mode": "passthrough", "protocol": "http"}]}
    )
    out = cfg.outbound[0]
    assert (out.mode, out.upstream, out.cluster_name, out.route_name) == (
        "passthrough",
        None,
        "PassthroughCluster",
        "allow_any",
    )
    assert out.cluster_metadata() is None


# -- 4. gateway mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("gateway", [True, False])
def test_gateway_reports_the_requested_host(certs: Certs, gateway: bool) -> None:
    async def main() -> list[Any]:
        app = HttpApp(b"egress")
        server, app_port = await start_app(app)
        config = server_config(certs, app_port, "http", gateway=gateway)
        async with server, Sidecar(config) as sc:
            hosts = ["httpbin.org", "api.example.com:8443"]
            assert [r[0] for r in await asyncio.to_thread(get, sc.inbound_port, hosts)] == [200] * 2
            return await scrape(sc.admin_url)

    samples = run(main())
    services = {s[1]["destination_service"] for s in select(samples, "istio_requests_total")}
    if gateway:
        assert services == {"httpbin.org", "api.example.com:8443"}
        labels = only_labels(samples, "istio_requests_total", destination_service="httpbin.org")
        assert_labels(labels, destination_service_name="httpbin.org", reporter="destination")
    else:  # a sidecar's inbound names its own service whatever the host
        assert len(services) == 1
        labels = only_labels(samples, "istio_requests_total")
        assert labels["destination_service"] == labels["destination_canonical_service"]


def test_gateway_keeps_an_explicit_fallback_setting(certs: Certs) -> None:
    config = SidecarConfig(
        node=SERVER_NODE, gateway=True, stats={"disable_host_header_fallback": True}
    )
    assert Sidecar(config).engine.config.disable_host_header_fallback is True
    assert (
        Sidecar(
            SidecarConfig(node=SERVER_NODE, gateway=True)
        ).engine.config.disable_host_header_fallback
        is False
    )
