"""Certificates for a mesh on one machine: a small CA issuing SPIFFE workload certificates.

>>> import tempfile
>>> from meshstats.certs import LocalCA, server_context, client_context, principal_of
>>> ca = LocalCA.create(trust_domain="cluster.local")
>>> cert = ca.issue("default", "reviews")
>>> cert.principal
'spiffe://cluster.local/ns/default/sa/reviews'
>>> with tempfile.TemporaryDirectory() as d:
...     path = cert.write(d)  # ca.crt, cert.pem, key.pem
...     principal_of(path), server_context(path).verify_mode.name
('spiffe://cluster.local/ns/default/sa/reviews', 'CERT_REQUIRED')

Istio's identity is the certificate's URI SAN, not a host name: both contexts require the
peer's certificate (mutual TLS) and verify its chain against ``ca.crt``, but do not check a
host name (``check_hostname=False``); :func:`peer_principal` reads the identity from the
verified peer certificate instead. Leaves are EC P-256 with EKU server *and* client auth,
an empty subject and a critical SAN, valid for 24 hours by default (Istio's workload
certificates live as long). Only the ``cryptography`` package is used (no ``openssl``).

TLS session resumption (as Envoy between Istio sidecars): :func:`server_context` issues one
TLS 1.3 session ticket per handshake, and a :class:`ResumingClientContext` (one per
upstream) offers the last ticket it got to every new connection, which then skips the
certificate exchange and its signatures. A resumed connection still knows its peer:
``getpeercert()`` returns the certificate verified in the session's full handshake, and
:func:`outlived_certificate` tells when that certificate has expired since.
"""

from __future__ import annotations

import datetime
import os
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "ALPN_DOWNSTREAM",
    "ALPN_DOWNSTREAM_WITH_MXC",
    "ALPN_HTTP10",
    "ALPN_HTTP11",
    "ALPN_H2",
    "ALPN_IN_MESH",
    "ALPN_IN_MESH_H2",
    "ALPN_IN_MESH_H2_WITH_MXC",
    "ALPN_IN_MESH_WITH_MXC",
    "CA_CERT_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "MX_ALPN",
    "LocalCA",
    "ResumingClientContext",
    "WorkloadCert",
    "client_context",
    "outlived_certificate",
    "peer_principal",
    "principal_of",
    "resuming_client_context",
    "server_context",
]

StrPath = Union[str, "os.PathLike[str]"]

#: The ALPN value both sides must negotiate for the TCP metadata exchange (§1.1).
MX_ALPN = "istio-peer-exchange"
# istio/istio pilot/pkg/networking/util/util.go, in Istio's order (reference §1.1).
#: Client side, in-mesh non-H2 upstream with metadata exchange.
ALPN_IN_MESH_WITH_MXC: tuple[str, ...] = (MX_ALPN, "istio")
#: Client side, in-mesh HTTP/2 upstream with metadata exchange.
ALPN_IN_MESH_H2_WITH_MXC: tuple[str, ...] = (MX_ALPN, "istio", "h2")
#: Client side without metadata exchange.
ALPN_IN_MESH: tuple[str, ...] = ("istio",)
ALPN_IN_MESH_H2: tuple[str, ...] = ("istio", "h2")
#: Server side (inbound) with metadata exchange.
ALPN_DOWNSTREAM_WITH_MXC: tuple[str, ...] = (MX_ALPN, "h2", "http/1.1")
#: Server side without metadata exchange.
ALPN_DOWNSTREAM: tuple[str, ...] = ("h2", "http/1.1")
#: What Istio's ``istio.alpn`` filter offers upstream per HTTP version.
ALPN_HTTP10: tuple[str, ...] = ("istio-http/1.0", "istio", "http/1.0")
ALPN_HTTP11: tuple[str, ...] = ("istio-http/1.1", "istio", "http/1.1")
ALPN_H2: tuple[str, ...] = ("istio-h2", "istio", "h2")

CA_CERT_FILE = "ca.crt"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_KEY_FILE = "ca.key"

# Kubernetes names (RFC 1123 labels, and service-account names may hold dots): anything
# else would make a SPIFFE path that Istio's `/ns/<ns>/sa/<sa>` parsing reads differently.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_TRUST_DOMAIN = re.compile(r"[a-z0-9]([-a-z0-9._]*[a-z0-9])?")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _read(directory: StrPath, name: str, field: str) -> bytes:
    """A file of a certificate directory; a missing one names the config ``field``."""
    path = Path(directory) / name
    try:
        return path.read_bytes()
    except OSError as exc:
        hint = (
            f"`meshstats certs ca {directory}` writes it"
            if field == "ca_dir"
            else f"`meshstats certs issue {directory} --ca CA_DIR ...` writes it"
        )
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc} ({hint})", field) from None


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable by its owner only (created so, never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True)
class WorkloadCert:
    """One workload's identity: its certificate, key and the CA that signed it (all PEM)."""

    principal: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes

    def write(self, directory: StrPath) -> Path:
        """Write ``ca.crt``, ``cert.pem`` and ``key.pem`` (mode 0600) into ``directory``.

        The directory is created if needed; returns it as a :class:`~pathlib.Path`.
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CA_CERT_FILE).write_bytes(self.ca_pem)
        (path / CERT_FILE).write_bytes(self.cert_pem)
        _write_private(path / KEY_FILE, self.key_pem)
        return path


class LocalCA:
    """A self-signed EC P-256 root that issues SPIFFE workload certificates.

    >>> ca = LocalCA.create("example.org")
    >>> ca.issue("shop", "cart").principal
    'spiffe://example.org/ns/shop/sa/cart'
    """

    def __init__(
        self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, trust_domain: str
    ) -> None:
        self.key = key
        self.cert = cert
        self.trust_domain = trust_domain

    @classmethod
    def create(
        cls,
        trust_domain: str = "cluster.local",
        *,
        validity: datetime.timedelta = datetime.timedelta(days=365),
    ) -> LocalCA:
        """A new root for ``trust_domain`` (the host part of every SPIFFE id it issues)."""
        if not isinstance(trust_domain, str) or not _TRUST_DOMAIN.fullmatch(trust_domain):
            raise ConfigError(
                f"must be a lower-case DNS-like name, got {trust_domain!r}", "trust_domain"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, "meshstats local CA"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clock skew
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert, trust_domain)

    @classmethod
    def load(cls, directory: StrPath) -> LocalCA:
        """A CA saved by :meth:`write` (``ca.crt`` and ``ca.key``)."""
        path = Path(directory)
        cert = x509.load_pem_x509_certificate(_read(path, CA_CERT_FILE, "ca_dir"))
        key = serialization.load_pem_private_key(_read(path, CA_KEY_FILE, "ca_dir"), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("is not an EC private key", str(path / CA_KEY_FILE))
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        trust_domain = str(orgs[0].value) if orgs else "cluster.local"
        return cls(key, cert, trust_domain)

    def write(self, directory: StrPath) -> Path:
        """Save the root as ``ca.crt`` and ``ca.key`` (mode 0600) for :meth:`load`."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CA_CERT_FILE).write_bytes(_pem(self.cert))
        _write_private(path / CA_KEY_FILE, _key_pem(self.key))
        return path

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    def principal(self, namespace: str, service_account: str) -> str:
        """``spiffe://<trust domain>/ns/<namespace>/sa/<service account>``."""
        for field, value in (("namespace", namespace), ("service_account", service_account)):
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise ConfigError(
                    f"must be a lower-case Kubernetes name (a-z, 0-9, '-', '.'), got {value!r}",
                    field,
                )
        return f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service_account}"

    def issue(
        self,
        namespace: str,
        service_account: str,
        *,
        validity: datetime.timedelta = datetime.timedelta(hours=24),
    ) -> WorkloadCert:
        """A workload certificate whose only identity is its SPIFFE URI SAN."""
        principal = self.principal(namespace, service_account)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        not_after = min(now + validity, self.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            # Istio's workload certificates have an empty subject, hence a critical SAN
            # (RFC 5280 4.2.1.6).
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(principal)]),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return WorkloadCert(principal, _pem(cert), _key_pem(key), _pem(self.cert))


def _context(
    purpose: int,
    cert_dir: StrPath,
    alpn: Sequence[str] | None,
    cls: type[ssl.SSLContext] = ssl.SSLContext,
) -> ssl.SSLContext:
    path = Path(cert_dir)
    ctx = cls(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Identity is the URI SAN, checked by the caller: there is no DNS name to match.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Read here (not by path in OpenSSL) so a missing file names cert_dir, not just errno 2.
    ca_pem = _read(path, CA_CERT_FILE, "cert_dir")
    for name in (CERT_FILE, KEY_FILE):
        _read(path, name, "cert_dir")
    try:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
        ctx.load_cert_chain(str(path / CERT_FILE), str(path / KEY_FILE))
    except ssl.SSLError as exc:
        raise ConfigError(f"unusable certificate or key in {path}: {exc}", "cert_dir") from None
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def server_context(
    cert_dir: StrPath,
    alpn: Sequence[str] | None = ALPN_DOWNSTREAM_WITH_MXC,
    *,
    session_tickets: bool = True,
) -> ssl.SSLContext:
    """A TLS 1.2+ server context that requires and verifies a client certificate.

    ``alpn`` is offered in order; the server picks its first protocol the client also
    offers, so Istio's downstream list selects ``istio-peer-exchange`` for a TCP client
    (:data:`ALPN_IN_MESH_WITH_MXC`) and ``http/1.1`` for an HTTP/1.1 one (:data:`ALPN_HTTP11`).

    ``session_tickets`` issues one TLS 1.3 ticket per handshake (stateless: encrypted with
    a key this context made, so a ticket is good only here); off, none. A resumed
    session keeps the client certificate of its full handshake, so
    :func:`peer_principal` still names the client.
    """
    ctx = _context(ssl.PROTOCOL_TLS_SERVER, cert_dir, alpn)
    # OpenSSL sends two tickets by default; a client sidecar keeps one per upstream, and
    # each ticket costs the server an encryption of the session with the client's
    # certificate in it (a tenth of a millisecond or more, per handshake).
    ctx.num_tickets = 1 if session_tickets else 0
    return ctx


def client_context(
    cert_dir: StrPath, alpn: Sequence[str] | None = ALPN_IN_MESH_WITH_MXC
) -> ssl.SSLContext:
    """A TLS 1.2+ client context presenting ``cert.pem`` and verifying the server's chain.

    Host names are not checked: read the server's identity with :func:`peer_principal`.
    """
    return _context(ssl.PROTOCOL_TLS_CLIENT, cert_dir, alpn)


def resuming_client_context(
    cert_dir: StrPath, alpn: Sequence[str] | None = ALPN_IN_MESH_WITH_MXC
) -> ResumingClientContext:
    """:func:`client_context` for one upstream, resuming its TLS session on every connection.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = LocalCA.create().issue("default", "sleep").write(d)
    ...     ctx = resuming_client_context(path)
    >>> ctx.session is None  # until a connection to the upstream received a ticket
    True
    """
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, cert_dir, alpn, ResumingClientContext)
    assert isinstance(ctx, ResumingClientContext)
    return ctx


class _SessionTaker(ssl.SSLObject):
    """The SSLObject of a :class:`ResumingClientContext`: hands its session to the context
    once, on its first read that returns data (the server sends its tickets right after
    the handshake, ahead of any data, so by then they have been read)."""

    offered: ssl.SSLSession | None = None
    _seen_data = False

    def read(self, len: int = 1024, buffer: WriteableBuffer | None = None) -> bytes:
        data = super().read(len, buffer)
        if data and not self._seen_data:
            self._seen_data = True
            context = self.context
            if isinstance(context, ResumingClientContext):
                context.take_session(self)
        return data


class ResumingClientContext(ssl.SSLContext):
    """A client context for one upstream that offers its last TLS session to each connection.

    asyncio wraps every connection with :meth:`wrap_bio` and passes no ``session``; this
    context passes its own. Tickets are reused across connections (OpenSSL's stateless
    tickets allow it; RFC 8446 §C.4 advises against it for privacy, which an observer who
    already sees both sidecars' addresses does not gain) so that a burst of new connections
    all resume with one ticket instead of one ticket each. Sessions stay with the context
    that made them (Python refuses another's), so one context per upstream keeps a session
    from ever being offered to a different server.

    A session is taken from a connection only when needed, because reading
    ``SSLObject.session`` costs 0.1-0.2 ms (CPython copies the session, the server's
    certificate in it, through DER; offering one costs as much again): when there is none,
    when the server refused the one offered (it restarted: its ticket key is new), or when
    half of the session's lifetime has passed. It is not offered past its lifetime or past
    the server certificate's expiry. A server that issues no tickets is asked again at
    most every ``RETRY`` seconds.
    """

    RETRY = 10.0

    sslobject_class = _SessionTaker
    _session: ssl.SSLSession | None = None
    _expires = 0.0
    _refresh_at = 0.0
    _retry_at = 0.0

    @property
    def session(self) -> ssl.SSLSession | None:
        """The session offered to the next connection (``None``: a full handshake)."""
        if self._session is not None and time.time() >= self._expires:
            self._session = None
        return self._session

    @property
    def session_expires(self) -> float:
        """Unix time after which :attr:`session` is no longer offered (0.0: no session): the
        session's lifetime or the server certificate's expiry, whichever comes first."""
        return self._expires if self.session is not None else 0.0

    def forget_session(self) -> None:
        """Offer no session until a connection brings a new one."""
        self._session = None
        self._retry_at = 0.0

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and not server_side:
            session = self.session
        obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        assert isinstance(obj, _SessionTaker)
        obj.offered = session
        return obj

    def take_session(self, obj: ssl.SSLObject) -> None:
        """Keep ``obj``'s session for the next connections, if this context needs one."""
        now = time.time()
        stored = self._session
        if stored is not None:
            if getattr(obj, "offered", None) is stored and not obj.session_reused:
                self._session = None  # refused: offering it again would only cost time
            elif now < self._refresh_at:
                return
        elif now < self._retry_at:
            return
        session = obj.session
        if session is None or not session.has_ticket:
            self._retry_at = now + self.RETRY
            return
        lifetime = min(session.timeout, session.ticket_lifetime_hint or session.timeout)
        expires = float(session.time + lifetime)
        facts = _peer_facts(obj)
        if facts is not None:
            expires = min(expires, facts[1])
        self._session = session
        self._expires = expires
        self._refresh_at = session.time + (expires - session.time) / 2


def outlived_certificate(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, now: float | None = None
) -> bool:
    """Whether ``ssl_object`` resumed a session whose peer certificate has expired since.

    A full handshake verifies the peer's certificate against the clock; resuming a session
    does not look at it again (OpenSSL checks only the session's own lifetime, two hours),
    so a session could carry a peer past its certificate's expiry. A resumed session
    without a verified peer certificate counts as expired: with ``CERT_REQUIRED`` it cannot
    happen.
    """
    if not ssl_object.session_reused:
        return False
    facts = _peer_facts(ssl_object)
    if facts is None:
        return True
    return (time.time() if now is None else now) >= facts[1]


def peer_principal(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The first URI SAN of the peer's *verified* certificate, or ``None``.

    Only a context that verifies peers (not ``CERT_NONE``) names one: its handshake fails
    on a certificate that does not verify, so an unverified certificate (or none) yields
    ``None``, never a claimed identity. On a resumed session it is the certificate
    verified in the session's full handshake.
    """
    if ssl_object is None:
        return None
    facts = _peer_facts(ssl_object)
    return None if facts is None else facts[0]


# Per verified peer certificate (its DER bytes): its first URI SAN and expiry. Every
# connection from one peer presents the same certificate, and decoding it (getpeercert()
# builds a dict, strptime reads the date) costs more than looking the bytes up.
_PEER_FACTS_MAX = 1024
_peer_facts_cache: dict[bytes, tuple[str | None, float]] = {}


def _peer_facts(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[str | None, float] | None:
    """(first URI SAN, expiry as a Unix time) of the verified peer certificate, or None."""
    # The check getpeercert() makes before it decodes: without peer verification a
    # certificate is only a claim, and a cached answer must not turn it into an identity.
    if ssl_object.context.verify_mode == ssl.CERT_NONE:
        return None
    # Positional: the low-level _ssl._SSLSocket (httpx exposes it) takes no keywords.
    der = ssl_object.getpeercert(True)
    if not der:
        return None
    facts = _peer_facts_cache.get(der)
    if facts is None:
        cert = ssl_object.getpeercert()
        if not cert:
            return None
        principal = None
        for entry in cert.get("subjectAltName", ()):
            if isinstance(entry, tuple) and len(entry) == 2 and entry[0] == "URI":
                principal = str(entry[1])
                break
        not_after = cert.get("notAfter")
        expires = ssl.cert_time_to_seconds(str(not_after)) if not_after else 0.0
        facts = (principal, expires)
        if len(_peer_facts_cache) >= _PEER_FACTS_MAX:
            _peer_facts_cache.clear()  # rare: many distinct peers or rotations
        _peer_facts_cache[der] = facts
    return facts


def principal_of(cert_dir: StrPath) -> str | None:
    """The first URI SAN of ``cert_dir/cert.pem`` (this proxy's own identity), or ``None``."""
    cert = x509.load_pem_x509_certificate(_read(cert_dir, CERT_FILE, "cert_dir"))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
