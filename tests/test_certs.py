"""The local CA and the mTLS contexts: SPIFFE SANs, real handshakes on 127.0.0.1, ALPN."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshstats.certs import (
    ALPN_DOWNSTREAM_WITH_MXC,
    ALPN_HTTP11,
    ALPN_IN_MESH_WITH_MXC,
    MX_ALPN,
    LocalCA,
    client_context,
    peer_principal,
    principal_of,
    server_context,
)
from meshstats.errors import ConfigError

pytestmark = pytest.mark.timing


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.create("cluster.local")


def test_workload_certificate_shape(ca: LocalCA) -> None:
    issued = ca.issue("bookinfo", "reviews")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/bookinfo/sa/reviews"
    ]
    assert issued.principal == "spiffe://cluster.local/ns/bookinfo/sa/reviews"
    assert len(cert.subject) == 0
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(hours=23) < lifetime <= datetime.timedelta(hours=24)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca.cert)  # raises if the signature or issuer is wrong


def test_write_files_and_key_mode(ca: LocalCA, tmp_path: Path) -> None:
    issued = ca.issue("default", "sleep")
    out = issued.write(tmp_path / "sleep")
    assert (out / "ca.crt").read_bytes() == ca.cert_pem
    assert (out / "cert.pem").read_bytes() == issued.cert_pem
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    assert principal_of(out) == "spiffe://cluster.local/ns/default/sa/sleep"


def test_ca_saved_and_loaded_keeps_signing(ca: LocalCA, tmp_path: Path) -> None:
    ca.write(tmp_path)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    again = LocalCA.load(tmp_path)
    assert again.trust_domain == "cluster.local"
    issued = again.issue("default", "x")
    x509.load_pem_x509_certificate(issued.cert_pem).verify_directly_issued_by(ca.cert)


@pytest.mark.parametrize(
    ("namespace", "sa", "field"),
    [("", "x", "namespace"), ("a/b", "x", "namespace"), ("ns", "Upper", "service_account")],
)
def test_bad_names_name_the_field(ca: LocalCA, namespace: str, sa: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        ca.issue(namespace, sa)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_bad_trust_domain() -> None:
    with pytest.raises(ConfigError, match="trust_domain"):
        LocalCA.create("has space")


def test_contexts_are_strict(ca: LocalCA, tmp_path: Path) -> None:
    d = ca.issue("default", "a").write(tmp_path)
    for ctx in (server_context(d), client_context(d)):
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert not ctx.check_hostname
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


async def _handshake(
    server_dir: Path, client_dir: Path, server_alpn: tuple[str, ...], client_alpn: tuple[str, ...]
) -> tuple[str | None, str | None, str | None, bytes]:
    """One connection; returns (server's view of the client, client's view of the server,
    the negotiated ALPN, and what the client read back)."""
    seen: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(peer_principal(writer.get_extra_info("ssl_object")))
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(
        handle, "127.0.0.1", 0, ssl=server_context(server_dir, server_alpn)
    )
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(client_dir, client_alpn)
        )
        ssl_object = writer.get_extra_info("ssl_object")
        client_view = peer_principal(ssl_object)
        alpn = ssl_object.selected_alpn_protocol()
        data = await asyncio.wait_for(reader.read(), 60)  # bounds a hang, not a speed
        writer.close()
        if not data:  # refused: the server's handler never ran
            assert not seen.done()
            return None, client_view, alpn, data
        server_view = await asyncio.wait_for(seen, 60)
        return server_view, client_view, alpn, data
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("client_alpn", "expected"), [(ALPN_IN_MESH_WITH_MXC, MX_ALPN), (ALPN_HTTP11, "http/1.1")]
)
def test_mutual_tls_identities_and_alpn(
    ca: LocalCA, tmp_path: Path, client_alpn: tuple[str, ...], expected: str
) -> None:
    server_dir = ca.issue("default", "server").write(tmp_path / "s")
    client_dir = ca.issue("default", "client").write(tmp_path / "c")
    server_view, client_view, alpn, data = asyncio.run(
        _handshake(server_dir, client_dir, ALPN_DOWNSTREAM_WITH_MXC, client_alpn)
    )
    assert server_view == "spiffe://cluster.local/ns/default/sa/client"
    assert client_view == "spiffe://cluster.local/ns/default/sa/server"
    assert alpn == expected
    assert data == b"hello"


def test_client_from_another_ca_is_refused(ca: LocalCA, tmp_path: Path) -> None:
    server_dir = ca.issue("default", "server").write(tmp_path / "s")
    rogue_dir = LocalCA.create("cluster.local").issue("default", "client").write(tmp_path / "r")
    # The rogue client also does not trust this server's CA: the handshake fails on its
    # side first. Give it the right CA so only the server's check can refuse it.
    (rogue_dir / "ca.crt").write_bytes(ca.cert_pem)

    async def attempt() -> bytes:
        try:
            return (await _handshake(server_dir, rogue_dir, ALPN_DOWNSTREAM_WITH_MXC, ()))[3]
        except (ssl.SSLError, ConnectionError):
            return b"refused"

    # With TLS 1.3 the client may finish its handshake before the server's verdict
    # arrives: it then reads EOF instead of an exception (reference/ecosystem.md §4).
    assert asyncio.run(asyncio.wait_for(attempt(), 60)) in (b"refused", b"")


def test_peer_principal_without_tls() -> None:
    assert peer_principal(None) is None
