"""What every in-process integration shares: this workload's exchange headers, the peer a
caller's headers name, and wire sizes rebuilt from what a framework hands over.

>>> from meshstats import StatsEngine
>>> from meshstats._embed import Exchange
>>> engine = StatsEngine({"WORKLOAD_NAME": "reviews-v2", "NAMESPACE": "default"})
>>> ex = Exchange(engine)
>>> client = Exchange(StatsEngine({"WORKLOAD_NAME": "productpage-v1"}))
>>> peer = ex.inbound(client.metadata, client.node_id.encode())
>>> peer.attrs["source.workload.name"]
'productpage-v1'

The integrations (:mod:`meshstats.asgi`, :mod:`meshstats.wsgi`, :mod:`meshstats.httpx`,
:mod:`meshstats.aiohttp`, :mod:`meshstats.grpc`) stand where a sidecar would, so they follow
the sidecar's rules (``proxy/http.py``): the caller's ``x-envoy-peer-metadata`` headers are
read and removed before the application sees them, a server answers with its own only when
the request carried them, and a principal comes only from a verified TLS certificate, never
from a header.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._peer_exchange import decode_peer_header, encode_peer_header
from .errors import MeshstatsError
from .peer_metadata import PeerMetadata

if TYPE_CHECKING:
    from .engine import StatsEngine
    from .labels import PeerContext

__all__ = [
    "MX_HEADER",
    "MX_ID_HEADER",
    "Exchange",
    "service_metadata",
    "principal_from_pem",
    "record_outbound",
]

MX_HEADER = "x-envoy-peer-metadata"
MX_ID_HEADER = "x-envoy-peer-metadata-id"
MX_HEADERS = frozenset({MX_HEADER, MX_ID_HEADER})
MX_HEADER_B = MX_HEADER.encode()
MX_ID_HEADER_B = MX_ID_HEADER.encode()

# Decoded peers by header values: a caller sends the same two values on every request.
_MAX_PEERS = 1024

Raw = str | bytes | None


def service_metadata(host: str | None) -> dict[str, Any] | None:
    """Istio's cluster metadata (``filter_metadata.istio.services``) for a service host.

    >>> service_metadata("reviews.default.svc.cluster.local")["filter_metadata"]["istio"]
    {'services': [{'host': 'reviews.default.svc.cluster.local', 'name': 'reviews', \
'namespace': 'default'}]}
    """
    if not host:
        return None
    service: dict[str, str] = {"host": host}
    parts = host.split(".")
    if len(parts) >= 3 and parts[2] == "svc":  # name.namespace.svc.<domain>
        service["name"], service["namespace"] = parts[0], parts[1]
    return {"filter_metadata": {"istio": {"services": [service]}}}


class Exchange:
    """This workload's side of Istio's header exchange, for one :class:`StatsEngine`.

    ``metadata`` and ``node_id`` are the values this workload sends (computed once, as
    Istio does: the reduced node of :meth:`PeerMetadata.to_exchange`). :meth:`inbound` and
    :meth:`outbound` turn a peer's header values into the engine's peer context.
    """

    def __init__(
        self,
        engine: StatsEngine,
        *,
        node_id: str | None = None,
        additional_labels: Iterable[str] = (),
    ) -> None:
        from .proxy.sidecar import default_node_id

        self.engine = engine
        node = engine.local
        self.node_id: str = node_id or node.node_id or default_node_id(node)
        self.metadata: str = encode_peer_header(node.to_exchange(additional_labels))
        self.metadata_b = self.metadata.encode("ascii")
        self.node_id_b = self.node_id.encode("latin-1")
        self._peers: dict[tuple[Raw, Raw], PeerMetadata | None] = {}

    def peer_metadata(self, metadata: Raw, metadata_id: Raw) -> PeerMetadata | None:
        """The peer the header values name; ``None`` when absent or undecodable."""
        if metadata is None:
            return None
        key = (metadata, metadata_id)
        try:
            return self._peers[key]
        except KeyError:
            pass
        try:
            node_id = metadata_id if not isinstance(metadata_id, bytes) else None
            if isinstance(metadata_id, bytes):
                node_id = metadata_id.decode("latin-1")
            peer: PeerMetadata | None = PeerMetadata.from_struct(
                decode_peer_header(metadata), node_id
            )
        except MeshstatsError:
            peer = None  # a garbled header is no peer: labelled unknown, never an error
        if len(self._peers) >= _MAX_PEERS:  # header values come from clients: bounded
            self._peers.clear()
        self._peers[key] = peer
        return peer

    def inbound(
        self,
        metadata: Raw,
        metadata_id: Raw,
        *,
        principal: str | None = None,
        address: str | None = None,
        cluster_metadata: Mapping[str, Any] | None = None,
    ) -> PeerContext:
        """The server-side context (``reporter="destination"``) for a caller's headers."""
        peer = self.peer_metadata(metadata, metadata_id)
        if peer is None and address is not None and self.engine.registry is not None:
            # Known only by address: not cached, its context carries the address.
            return self.engine.peer(
                "inbound", None, peer_principal=principal,
                cluster_metadata=cluster_metadata, peer_address=address,
            )  # fmt: skip
        return self.engine.peer(
            "inbound", peer, peer_principal=principal, cluster_metadata=cluster_metadata,
            cache_key=("inbound", metadata if peer is not None else None, metadata_id,
                       principal, id(cluster_metadata)),
        )  # fmt: skip

    def outbound(
        self,
        metadata: Raw,
        metadata_id: Raw,
        *,
        principal: str | None = None,
        cluster_metadata: Mapping[str, Any] | None = None,
    ) -> PeerContext:
        """The client-side context (``reporter="source"``) for a server's response headers."""
        peer = self.peer_metadata(metadata, metadata_id)
        return self.engine.peer(
            "outbound", peer, peer_principal=principal, cluster_metadata=cluster_metadata,
            cache_key=("outbound", metadata if peer is not None else None, metadata_id,
                       principal, id(cluster_metadata)),
        )  # fmt: skip


_PRINCIPALS: dict[str, str | None] = {}


def principal_from_pem(pem: str | bytes | None) -> str | None:
    """The first URI SAN of a PEM certificate that the server already verified, or ``None``.

    Servers hand over the peer's verified chain this way (the ASGI TLS extension's
    ``client_cert_chain``, mod_ssl's ``SSL_CLIENT_CERT``); parsed once per certificate.
    """
    if not pem:
        return None
    key = pem if isinstance(pem, str) else pem.decode("ascii", "replace")
    if key in _PRINCIPALS:
        return _PRINCIPALS[key]
    from cryptography import x509

    principal: str | None = None
    try:
        cert = x509.load_pem_x509_certificate(key.encode("ascii"))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        principal = uris[0] if uris else None
    except (ValueError, x509.ExtensionNotFound):
        principal = None
    if len(_PRINCIPALS) >= _MAX_PEERS:
        _PRINCIPALS.clear()
    _PRINCIPALS[key] = principal
    return principal


#: How a failed upstream exchange is recorded on the client side: Envoy's local reply code
#: and response flag (connection failure, timeout, the connection broken off).
UPSTREAM_CONNECT_FAILURE = (503, "UF")
UPSTREAM_TIMEOUT = (504, "UT")
UPSTREAM_RESET = (503, "UC")


def record_outbound(
    exchange: Exchange,
    *,
    metadata: Raw,
    metadata_id: Raw,
    principal: str | None,
    started: float,
    ended: float,
    code: int,
    flags: str | None,
    request_bytes: int,
    response_bytes: int,
    host: str | None,
    method: str | None,
    path: str | None,
    content_type: str | None,
    cluster_metadata: Mapping[str, Any] | None = None,
) -> None:
    """One finished client-side request (``reporter="source"``), as a client sidecar
    records it: the peer is what the server's response headers said."""
    peer = exchange.outbound(
        metadata, metadata_id, principal=principal, cluster_metadata=cluster_metadata
    )
    exchange.engine.record_request(
        peer,
        response_code=code,
        duration_ms=(ended - started) * 1000.0,
        request_bytes=request_bytes,
        response_bytes=response_bytes,
        host=host,
        response_flags=flags,
        method=method,
        path=path,
        content_type=content_type,
    )
