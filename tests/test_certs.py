"""The local CA and the mTLS contexts: SPIFFE SANs, real handshakes on 127.0.0.1, ALPN."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshstats.certs import (
    ALPN_DOWNSTREAM_WITH_MXC,
    ALPN_H2,
    ALPN_HTTP11,
    ALPN_IN_MESH_WITH_MXC,
    MX_ALPN,
    LocalCA,
    ResumingClientContext,
    client_context,
    outlived_certificate,
    peer_principal,
    principal_of,
    resuming_client_context,
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
    ("client_alpn", "expected"),
    [(ALPN_IN_MESH_WITH_MXC, MX_ALPN), (ALPN_HTTP11, "http/1.1"), (ALPN_H2, "h2")],
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


# -- TLS session resumption ---------------------------------------------------------------------

# Past any certificate issued here (24 h) and any session (2 h): everything has expired then.
LATER = 3 * 86400.0


@dataclass(frozen=True)
class Seen:
    """One connection from both ends, read while it was open."""

    reused: tuple[bool, bool]  # (client, server)
    principals: tuple[str | None, str | None]  # client's view of the server, and vice versa
    outlived_now: tuple[bool, bool]
    outlived_later: tuple[bool, bool]


def _facts(obj: ssl.SSLObject) -> tuple[bool, str | None, bool, bool]:
    later = time.time() + LATER
    return (
        obj.session_reused,
        peer_principal(obj),
        outlived_certificate(obj),
        (outlived_certificate(obj, later)),
    )


async def _connections(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, n: int
) -> list[Seen]:
    """``n`` connections one after another, each reading the server's greeting to EOF."""
    server_views: asyncio.Queue[tuple[bool, str | None, bool, bool]] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server_views.put(_facts(writer.get_extra_info("ssl_object")))
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    seen = []
    try:
        for _ in range(n):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname=""
            )
            c = _facts(writer.get_extra_info("ssl_object"))
            assert await asyncio.wait_for(reader.read(), 60) == b"hello"  # bounds a hang
            writer.close()
            s = await asyncio.wait_for(server_views.get(), 60)
            seen.append(Seen((c[0], s[0]), (c[1], s[1]), (c[2], s[2]), (c[3], s[3])))
    finally:
        server.close()
        await server.wait_closed()
    return seen


def test_resumed_session_keeps_both_principals(ca: LocalCA, tmp_path: Path) -> None:
    server_dir = ca.issue("default", "server").write(tmp_path / "s")
    client_dir = ca.issue("default", "client").write(tmp_path / "c")
    client_ctx = resuming_client_context(client_dir, ALPN_HTTP11)
    assert client_ctx.session is None and client_ctx.session_expires == 0.0
    seen = asyncio.run(_connections(server_context(server_dir), client_ctx, 3))
    assert [s.reused for s in seen] == [(False, False), (True, True), (True, True)]
    principals = (
        "spiffe://cluster.local/ns/default/sa/server",
        "spiffe://cluster.local/ns/default/sa/client",
    )
    assert all(s.principals == principals for s in seen)
    assert client_ctx.session is not None and client_ctx.session.has_ticket


def test_outlived_certificate_only_on_resumed_sessions(ca: LocalCA, tmp_path: Path) -> None:
    """A full handshake verified the certificate just now; a resumed session carries one
    verified earlier, which may have expired since (here: at a time 3 days on)."""
    server_dir = ca.issue("default", "server").write(tmp_path / "s")
    client_dir = ca.issue("default", "client").write(tmp_path / "c")
    ctx = resuming_client_context(client_dir)
    seen = asyncio.run(_connections(server_context(server_dir), ctx, 2))
    assert [s.outlived_now for s in seen] == [(False, False), (False, False)]
    assert [s.outlived_later for s in seen] == [(False, False), (True, True)]


def test_refused_session_is_replaced(ca: LocalCA, tmp_path: Path) -> None:
    """A new server context (a restarted sidecar: a new ticket key) refuses the ticket;
    the context keeps the new server's session from then on."""
    server_dir = ca.issue("default", "server").write(tmp_path / "s")
    ctx = resuming_client_context(ca.issue("default", "client").write(tmp_path / "c"))
    first = asyncio.run(_connections(server_context(server_dir), ctx, 2))
    kept = ctx.session
    second = asyncio.run(_connections(server_context(server_dir), ctx, 2))
    assert [s.reused[0] for s in first + second] == [False, True, False, True]
    assert ctx.session is not None and ctx.session.id != getattr(kept, "id", None)


def test_session_not_offered_past_the_server_certificate(ca: LocalCA, tmp_path: Path) -> None:
    """A server certificate valid one more hour caps the two-hour session at that hour."""
    client_dir = ca.issue("default", "client").write(tmp_path / "c")
    for hours in (1, 24):
        issued = ca.issue("default", f"server{hours}", validity=datetime.timedelta(hours=hours))
        server_dir = issued.write(tmp_path / f"s{hours}")
        not_after = x509.load_pem_x509_certificate(issued.cert_pem).not_valid_after_utc
        ctx = resuming_client_context(client_dir)
        asyncio.run(_connections(server_context(server_dir), ctx, 1))
        assert ctx.session is not None
        limit = min(not_after.timestamp(), ctx.session.time + ctx.session.timeout)
        assert ctx.session_expires == pytest.approx(limit, abs=1.0)
        assert (hours == 1) == (ctx.session_expires < ctx.session.time + ctx.session.timeout)
        ctx.forget_session()
        assert ctx.session is None


def test_server_tickets_and_plain_client(ca: LocalCA, tmp_path: Path) -> None:
    """One ticket per handshake (a client keeps one), none when off; a plain client context
    never resumes."""
    d = ca.issue("default", "a").write(tmp_path)
    assert server_context(d).num_tickets == 1
    assert server_context(d, session_tickets=False).num_tickets == 0
    assert isinstance(resuming_client_context(d), ResumingClientContext)
    seen = asyncio.run(_connections(server_context(d), client_context(d), 2))
    assert [s.reused for s in seen] == [(False, False), (False, False)]
    off = resuming_client_context(d)
    seen = asyncio.run(_connections(server_context(d, session_tickets=False), off, 2))
    assert [s.reused for s in seen] == [(False, False), (False, False)]
    assert off.session is None  # the server gave no ticket to keep
