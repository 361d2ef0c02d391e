"""The demo's gRPC edge: productpage asks "recommendations", a grpcio service, over mTLS.

This edge does not go through the demo's sidecars (which carry HTTP/2 and gRPC as well): it
is what Istio calls proxyless gRPC. productpage's app talks to the gRPC server directly, and
meshstats' interceptors report each call as an Istio sidecar reports a gRPC stream. The client's
interceptors record into productpage's sidecar engine (its calls show on productpage's
metrics port, ``reporter="source"``); the server has an engine of its own and a metrics
port (``reporter="destination"``). ``ForProduct`` is a server-streaming call: one request
message, :attr:`Recommendations.items` response messages, so
``istio_request_messages_total`` and ``istio_response_messages_total`` differ.

Importing this module needs grpcio (``pip install 'meshstats[grpc]'``); without it the
import raises :class:`~meshstats.errors.MissingExtraError` and the demo leaves the edge out.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..grpc import AioIstioServerInterceptor, aio_client_interceptors

if TYPE_CHECKING:
    from ..certs import LocalCA, WorkloadCert
    from ..engine import StatsEngine
    from .demo_apps import Address

__all__ = ["Recommendations", "RecommendationsClient", "serving_cert", "SERVICE", "METHOD"]

SERVICE = "bookinfo.Recommendations"
METHOD = f"/{SERVICE}/ForProduct"


def serving_cert(ca: LocalCA, namespace: str, service_account: str, dns: str) -> WorkloadCert:
    """A workload certificate that also names ``dns``: gRPC's client checks the target's
    name against a DNS SAN, which workload certificates (a URI SAN only, as Istio's) lack.
    The SPIFFE URI SAN is still there, so the server's principal is the usual one."""
    from ..certs import WorkloadCert

    principal = ca.principal(namespace, service_account)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(hours=24), ca.cert.not_valid_after_utc))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(dns), x509.UniformResourceIdentifier(principal)]
            ),
            critical=True,
        )
        .sign(ca.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return WorkloadCert(
        principal, cert.public_bytes(serialization.Encoding.PEM), key_pem, ca.cert_pem
    )


class Recommendations:
    """The gRPC service: ``ForProduct(product)`` waits ``latency_ms``, then streams ``items``
    recommendations back. It asks for client certificates (mTLS), so the server's
    ``source_principal`` is the caller's verified SPIFFE id.

    A ``grpc.aio`` server on the demo's event loop: with grpcio's blocking API instead (a
    server thread pool, client calls on threads) a demo page cost 9.3-10.2 ms of CPU against
    6.7-7.6 ms (two runs each), the threads and the loop taking turns at the GIL.
    :attr:`served` counts the calls it finished, :attr:`messages_in` and
    :attr:`messages_out` the messages it read and wrote.
    """

    def __init__(
        self,
        engine: StatsEngine,
        *,
        service_host: str,
        items: int = 3,
        latency_ms: float = 0.0,
    ) -> None:
        self.engine = engine
        self.service_host = service_host
        self.items = items
        self.latency_ms = latency_ms
        self.port = 0
        self.served = 0
        self.messages_in = 0
        self.messages_out = 0
        self._server: grpc.aio.Server | None = None

    async def start(self, cert: WorkloadCert, host: str = "127.0.0.1") -> Recommendations:
        server = grpc.aio.server(
            interceptors=[AioIstioServerInterceptor(self.engine, service_host=self.service_host)]
        )
        handler = grpc.unary_stream_rpc_method_handler(self._for_product)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"ForProduct": handler}),)
        )
        credentials = grpc.ssl_server_credentials(
            [(cert.key_pem, cert.cert_pem)], root_certificates=cert.ca_pem, require_client_auth=True
        )
        self.port = server.add_secure_port(f"{host}:0", credentials)
        self._server = server
        await server.start()
        return self

    async def _for_product(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.messages_in += 1
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000.0)
        product = request.decode(errors="replace")
        for rank in range(1, self.items + 1):
            yield json.dumps({"product": product, "rank": rank}).encode()
            self.messages_out += 1
        self.served += 1

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
            self._server = None


class RecommendationsClient:
    """productpage's side: one mTLS ``grpc.aio`` channel, its calls reported into ``engine``.

    :attr:`answered` counts the finished calls by gRPC status name (``"OK"``, ...),
    :attr:`messages_out` and :attr:`messages_in` the messages sent and received.
    """

    def __init__(
        self,
        engine: StatsEngine,
        address: Address,
        cert: WorkloadCert,
        *,
        service_host: str,
        authority: str,
        timeout: float = 30.0,
    ) -> None:
        self.answered: Counter[str] = Counter()
        self.messages_out = 0
        self.messages_in = 0
        self.timeout = timeout
        credentials = grpc.ssl_channel_credentials(cert.ca_pem, cert.key_pem, cert.cert_pem)
        self._channel = grpc.aio.secure_channel(
            f"{address[0]}:{address[1]}",
            credentials,
            # The server's certificate names the service, not the loopback address.
            options=[("grpc.ssl_target_name_override", service_host)],
            interceptors=aio_client_interceptors(engine, host=authority, service_host=service_host),
        )
        self._for_product = self._channel.unary_stream(METHOD)

    @property
    def calls(self) -> int:
        """Calls finished, whatever their status."""
        return sum(self.answered.values())

    async def ask(self, product: int) -> tuple[str, list[bytes]]:
        """The status name and the recommendations for ``product`` (none when it failed)."""
        items: list[bytes] = []
        call = self._for_product(str(product).encode(), timeout=self.timeout)
        self.messages_out += 1
        try:
            async for item in call:
                items.append(item)
                self.messages_in += 1
        except grpc.aio.AioRpcError as exc:
            self.answered[exc.code().name] += 1
            return exc.code().name, []
        self.answered["OK"] += 1
        return "OK", items

    async def close(self) -> None:
        await self._channel.close()
