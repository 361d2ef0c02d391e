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
"""

from __future__ import annotations

import datetime
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError

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
    "WorkloadCert",
    "client_context",
    "peer_principal",
    "principal_of",
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


def _context(purpose: int, cert_dir: StrPath, alpn: Sequence[str] | None) -> ssl.SSLContext:
    path = Path(cert_dir)
    ctx = ssl.SSLContext(purpose)
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
    cert_dir: StrPath, alpn: Sequence[str] | None = ALPN_DOWNSTREAM_WITH_MXC
) -> ssl.SSLContext:
    """A TLS 1.2+ server context that requires and verifies a client certificate.

    ``alpn`` is offered in order; the server picks its first protocol the client also
    offers, so Istio's downstream list selects ``istio-peer-exchange`` for a TCP client
    (:data:`ALPN_IN_MESH_WITH_MXC`) and ``http/1.1`` for an HTTP/1.1 one (:data:`ALPN_HTTP11`).
    """
    return _context(ssl.PROTOCOL_TLS_SERVER, cert_dir, alpn)


def client_context(
    cert_dir: StrPath, alpn: Sequence[str] | None = ALPN_IN_MESH_WITH_MXC
) -> ssl.SSLContext:
    """A TLS 1.2+ client context presenting ``cert.pem`` and verifying the server's chain.

    Host names are not checked: read the server's identity with :func:`peer_principal`.
    """
    return _context(ssl.PROTOCOL_TLS_CLIENT, cert_dir, alpn)


def peer_principal(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The first URI SAN of the peer's *verified* certificate, or ``None``.

    ``getpeercert()`` only fills in the parsed certificate once the chain was verified,
    so an unverified certificate (or none) yields ``None``, never a claimed identity.
    """
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    for entry in cert.get("subjectAltName", ()):
        if isinstance(entry, tuple) and len(entry) == 2 and entry[0] == "URI":
            return str(entry[1])
    return None


def principal_of(cert_dir: StrPath) -> str | None:
    """The first URI SAN of ``cert_dir/cert.pem`` (this proxy's own identity), or ``None``."""
    cert = x509.load_pem_x509_certificate(_read(cert_dir, CERT_FILE, "cert_dir"))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
