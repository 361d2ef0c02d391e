"""What is known about one request or connection, in Istio's attribute vocabulary.

Istio's resolution rules live here, once: which side's metadata fills ``source.*`` and
``destination.*``, the namespace taken from a SPIFFE principal before metadata, principals
taken only from certificates (never from headers), ``destination.service.*`` from the host
header, the route and the cluster's ``istio.services`` metadata, and the black-hole and
passthrough clusters (``shared/reference/telemetry-v2.md`` §3–4).

Attributes come in two layers. :func:`peer_attributes` builds the part that depends only on
the local node, the peer and the connection (computed once per peer and cached by the
engine); :func:`request_attributes` builds the few request-scoped ones. :class:`Layered`
reads both as one mapping.

>>> from meshstats.peer_metadata import PeerMetadata
>>> local = PeerMetadata.from_struct({"WORKLOAD_NAME": "reviews-v2", "NAMESPACE": "default"})
>>> peer = PeerMetadata.from_struct({"WORKLOAD_NAME": "productpage-v1", "NAMESPACE": "shop"})
>>> attrs = peer_attributes("inbound", local, peer,
...                         peer_principal="spiffe://cluster.local/ns/default/sa/pp")
>>> attrs["source.workload.name"], attrs["source.workload.namespace"]
('productpage-v1', 'default')
>>> attrs["destination.workload.name"], attrs["connection.mtls"]
('reviews-v2', False)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .peer_metadata import PeerMetadata, namespace_from_principal

__all__ = [
    "ReporterKind",
    "REPORTER_KINDS",
    "BLACK_HOLE_CLUSTER",
    "PASSTHROUGH_CLUSTER",
    "SPECIAL_CLUSTERS",
    "REQUEST_SCOPED",
    "ServiceInfo",
    "resolve_destination_service",
    "service_attributes",
    "peer_attributes",
    "request_attributes",
    "response_flags_string",
    "is_grpc_content_type",
    "Layered",
]

#: ``outbound``: a client sidecar (reporter ``source``); ``inbound``: a server sidecar
#: (reporter ``destination``); ``gateway``: Istio's SERVER_GATEWAY (reporter ``waypoint``).
ReporterKind = Literal["outbound", "inbound", "gateway"]
REPORTER_KINDS: tuple[str, ...] = ("outbound", "inbound", "gateway")

BLACK_HOLE_CLUSTER = "BlackHoleCluster"
PASSTHROUGH_CLUSTER = "PassthroughCluster"
SPECIAL_CLUSTERS = frozenset(
    {
        BLACK_HOLE_CLUSTER,
        PASSTHROUGH_CLUSTER,
        "InboundPassthroughCluster",
        "InboundPassthroughClusterIpv4",
        "InboundPassthroughClusterIpv6",
    }
)

#: Attribute roots whose value changes per request. An expression that reads none of them
#: depends only on the peer and the local node, so the engine evaluates it once per peer.
REQUEST_SCOPED: tuple[str, ...] = (
    "request",
    "response",
    "api",
    "context.protocol",
    "context.proxy_error_code",
    "destination.service",
    "connection.sent",
    "connection.received",
)


# ---------------------------------------------------------------------------------------------
# destination_service


@dataclass(frozen=True)
class ServiceInfo:
    host: str | None
    name: str | None
    namespace: str | None


def _istio_services(cluster_metadata: Mapping[str, Any] | None) -> list[Any]:
    """``filter_metadata.istio.services`` of an xDS cluster (the bare ``istio`` map works too)."""
    if not isinstance(cluster_metadata, Mapping):
        return []
    filter_metadata = cluster_metadata.get("filter_metadata", cluster_metadata)
    istio = filter_metadata.get("istio") if isinstance(filter_metadata, Mapping) else None
    services = istio.get("services") if isinstance(istio, Mapping) else None
    return list(services) if isinstance(services, (list, tuple)) else []


def resolve_destination_service(
    *,
    host_header: str | None = None,
    route_name: str | None = None,
    cluster_name: str | None = None,
    cluster_metadata: Mapping[str, Any] | None = None,
    host_header_fallback: bool = True,
) -> ServiceInfo:
    """Istio's ``destination_service`` / ``_name`` / ``_namespace`` rules (§4.3), in order.

    >>> resolve_destination_service(host_header="127.0.0.1:9080")
    ServiceInfo(host='127.0.0.1:9080', name='127.0.0.1:9080', namespace=None)
    >>> md = {"filter_metadata": {"istio": {"services": [
    ...     {"host": "reviews.default.svc.cluster.local", "namespace": "default"}]}}}
    >>> resolve_destination_service(host_header="reviews:9080", cluster_metadata=md)
    ServiceInfo(host='reviews.default.svc.cluster.local', name='reviews', namespace='default')
    >>> resolve_destination_service(route_name="block_all", host_header="evil.com")
    ServiceInfo(host='evil.com', name='BlackHoleCluster', namespace=None)
    """
    host = name = namespace = None
    if host_header_fallback and host_header:
        host = name = host_header
    if route_name == "block_all":
        name = BLACK_HOLE_CLUSTER
    elif route_name == "allow_any":
        name = PASSTHROUGH_CLUSTER
    elif cluster_name in SPECIAL_CLUSTERS:
        name = cluster_name
        # Istio's catch-all clusters carry no metadata; meshstats gives a TLS passthrough's
        # the ClientHello's server name, the host when no Host header names one.
        services = _istio_services(cluster_metadata)
        if host is None and services and isinstance(services[0], Mapping):
            if isinstance(services[0].get("host"), str):
                host = services[0]["host"]
    else:
        services = _istio_services(cluster_metadata)
        first = services[0] if services else None
        if isinstance(first, Mapping):
            if isinstance(first.get("host"), str):
                host = first["host"]
                name = host.split(".", 1)[0]
            if isinstance(first.get("name"), str):
                name = first["name"]
            if isinstance(first.get("namespace"), str):
                namespace = first["namespace"]
    return ServiceInfo(host, name, namespace)


def service_attributes(
    reporter: str, info: ServiceInfo, peer_attrs: Mapping[str, Any]
) -> dict[str, str]:
    """``destination.service.{host,name,namespace}`` with each side's fallbacks (§4.2 rows 15-19).

    A server sidecar falls back to its own canonical service and always reports its own
    namespace; a client falls back to the peer's namespace and otherwise leaves them absent;
    a gateway (waypoint) has no fallback at all: what the route and cluster name, else absent.
    """
    out: dict[str, str] = {}
    if reporter == "inbound":
        canonical = peer_attrs.get("destination.canonical_service", "")
        out["destination.service.host"] = info.host or canonical
        out["destination.service.name"] = info.name or canonical
        out["destination.service.namespace"] = peer_attrs.get("destination.namespace", "")
        return out
    if info.host:
        out["destination.service.host"] = info.host
    if info.name:
        out["destination.service.name"] = info.name
    namespace = info.namespace
    if not namespace and reporter == "outbound":
        namespace = peer_attrs.get("destination.workload.namespace")
    if namespace:
        out["destination.service.namespace"] = namespace
    return out


# ---------------------------------------------------------------------------------------------
# peer layer


def _side(
    prefix: str,
    meta: PeerMetadata | None,
    principal: str | None,
    *,
    local: bool,
    with_labels: bool = True,
) -> dict[str, Any]:
    """``source.*`` or ``destination.*`` from one workload's metadata.

    Local values are taken verbatim (an absent field is an empty string, as Istio prints
    it); a peer's absent field is left out so that ``x | "unknown"`` falls through.
    """
    out: dict[str, Any] = {}
    # ``meta is None``, not ``not meta``: a Mapping's truth would call __len__ each time.
    if meta is None:
        fields: dict[str, str | None] = {"principal": principal}
    else:
        if local:
            # Istio reads the local node's LABELS.app/version verbatim; the
            # app.kubernetes.io precedence applies to peers only (§3.2, §3.5).
            app, version = meta.labels.get("app"), meta.labels.get("version")
        else:
            app, version = meta.app, meta.version
        namespace = meta.namespace
        fields = {
            "workload.name": meta.workload_name,
            "workload.namespace": namespace,
            "name": meta.name,
            "namespace": namespace,
            "app": app,  # type: ignore[dict-item]
            "version": version,  # type: ignore[dict-item]
            "canonical_service": meta.canonical_service,
            "canonical_revision": meta.canonical_revision,
            "cluster.id": meta.cluster_id,
            "owner": meta.owner,
            "principal": principal,
        }
    if not local:
        # The SPIFFE namespace of an authenticated peer beats what its metadata claims.
        san_ns = namespace_from_principal(principal) if principal else None
        if san_ns:
            fields["workload.namespace"] = fields["namespace"] = san_ns
    for key, value in fields.items():
        if value:
            out[f"{prefix}.{key}"] = value
        elif local and key != "principal":
            out[f"{prefix}.{key}"] = ""
    if meta is not None and with_labels:
        out[f"{prefix}.labels"] = dict(meta.labels)
    return out


def _local_side(prefix: str, local: PeerMetadata, principal: str | None) -> dict[str, Any]:
    return local.memo(
        ("side", prefix, principal), lambda: _side(prefix, local, principal, local=True)
    )


def peer_attributes(
    reporter: ReporterKind,
    local: PeerMetadata,
    peer: PeerMetadata | None,
    *,
    local_principal: str | None = None,
    peer_principal: str | None = None,
    cluster_name: str | None = None,
    cluster_metadata: Mapping[str, Any] | None = None,
    route_name: str | None = None,
    upstream_peer: PeerMetadata | None = None,
    upstream_principal: str | None = None,
    peer_state: bool = True,
    peer_labels: bool = True,
) -> dict[str, Any]:
    """Attributes fixed for a peer and connection: computed once, shared by its requests.

    ``peer`` is what the metadata exchange (or a workload registry) said about the other
    side; ``None`` when nothing was learnt. Principals come only from the TLS certificates
    (``local_principal`` from ours, ``peer_principal`` from the peer's verified chain),
    never from exchanged metadata: a plaintext client cannot claim an identity.
    ``upstream_peer`` and ``upstream_principal`` are the upstream side for a gateway
    (SERVER_GATEWAY) reporter, from the control plane (trusted), never from headers.
    ``peer_state=False`` leaves out the peers' filter state (``upstream_peer``,
    ``downstream_peer``) and ``peer_labels=False`` their ``*.labels``: an engine whose
    expressions read neither spares a new peer the work (about a third of its cost).
    """
    if reporter not in REPORTER_KINDS:
        raise ValueError(f"reporter must be one of {REPORTER_KINDS}, got {reporter!r}")
    # The local node's parts are the same for every peer: computed once per node (shared,
    # read-only) instead of once per new peer.
    node_struct = local.memo("struct", local.to_struct)
    attrs: dict[str, Any] = {
        "context.reporter.kind": reporter,
        "xds.node.metadata": node_struct,
        "node.metadata": node_struct,
    }
    if local.node_id:
        attrs["xds.node.id"] = local.node_id
    if cluster_name is not None:
        attrs["xds.cluster_name"] = cluster_name
    if cluster_metadata is not None:
        attrs["xds.cluster_metadata"] = cluster_metadata
    if route_name is not None:
        attrs["xds.route_name"] = route_name

    if reporter == "outbound":
        attrs |= _local_side("source", local, local_principal)
        attrs |= _side("destination", peer, peer_principal, local=False, with_labels=peer_labels)
        peer_key = "upstream_peer"
    elif reporter == "inbound":
        attrs |= _side("source", peer, peer_principal, local=False, with_labels=peer_labels)
        attrs |= _local_side("destination", local, local_principal)
        peer_key = "downstream_peer"
    else:  # a gateway reports both remote sides
        attrs |= _side("source", peer, peer_principal, local=False, with_labels=peer_labels)
        attrs |= _side(
            "destination", upstream_peer, upstream_principal, local=False, with_labels=peer_labels
        )
        peer_key = "downstream_peer"
        if upstream_peer is not None and peer_state:
            state = upstream_peer.to_filter_state()
            attrs["filter_state.upstream_peer"] = attrs["upstream_peer"] = state
    if peer is not None and peer_state:
        state = peer.to_filter_state()
        attrs[f"filter_state.{peer_key}"] = attrs[peer_key] = state
    if local_principal:
        attrs["connection.uri_san_local_certificate"] = local_principal
    if peer_principal:
        attrs["connection.uri_san_peer_certificate"] = peer_principal
    attrs["connection.mtls"] = bool(local_principal and peer_principal)
    return attrs


# ---------------------------------------------------------------------------------------------
# request layer

# Envoy's response-flag bits and short codes, in Envoy's order (§4.5).
_FLAG_CODES: tuple[str, ...] = (
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE",
    "DC", "URX", "SI", "IH", "DPE",
)  # fmt: skip
_FLAG_ORDER = {code: i for i, code in enumerate(_FLAG_CODES)}


def response_flags_string(flags: int | Iterable[str] | str | None) -> str:
    """Envoy's short form: ``-`` for none, else comma-joined codes in Envoy's order.

    >>> response_flags_string(0x20 | 0x2)
    'UH,UF'
    >>> response_flags_string(["UF", "UH"]), response_flags_string(None)
    ('UH,UF', '-')
    """
    if flags is None or flags == 0 or flags == "" or flags == "-":
        return "-"
    if isinstance(flags, str):
        flags = [f.strip() for f in flags.split(",") if f.strip()]
    if isinstance(flags, int):
        codes = [code for bit, code in enumerate(_FLAG_CODES) if flags & (1 << bit)]
        rest = flags & ~((1 << len(_FLAG_CODES)) - 1)
        if rest:  # bits Envoy added after this table: printed as a number, as Envoy does
            codes.append(str(rest))
        return ",".join(codes) if codes else "-"
    unique = dict.fromkeys(flags)
    known = sorted((c for c in unique if c in _FLAG_ORDER), key=_FLAG_ORDER.__getitem__)
    return ",".join(known + [c for c in unique if c not in _FLAG_ORDER]) or "-"


_GRPC_TYPES = ("application/grpc", "application/grpc+proto", "application/grpc+json")


def is_grpc_content_type(content_type: str | None) -> bool:
    """True for gRPC's content types (``application/grpc`` and its ``+suffix`` forms)."""
    if not content_type:
        return False
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/grpc" or base.startswith("application/grpc+")


def request_attributes(
    *,
    protocol: str = "http",
    response_code: int | None = None,
    grpc_status: int | None = None,
    response_flags: int | Iterable[str] | str | None = None,
    host: str | None = None,
    method: str | None = None,
    path: str | None = None,
    request_protocol: str | None = None,
    headers: Mapping[str, str] | None = None,
    duration_ms: float | None = None,
    request_bytes: int | None = None,
    response_bytes: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The request-scoped attributes of one finished request (or a TCP connection).

    ``protocol`` is Istio's ``request_protocol`` label value (``http``, ``grpc``, ``tcp``);
    ``request_protocol`` is Envoy's ``request.protocol`` (``HTTP/1.1``, ``HTTP/2``).
    """
    attrs: dict[str, Any] = {
        "api.protocol": protocol,
        "context.protocol": protocol,
        "context.proxy_error_code": response_flags_string(response_flags),
        "response.flags": response_flags_string(response_flags),
    }
    if response_code is not None:
        attrs["response.code"] = int(response_code)
    if grpc_status is not None:
        attrs["response.grpc_status"] = int(grpc_status)
    if host is not None:
        attrs["request.host"] = host
    if method is not None:
        attrs["request.method"] = method
    if path is not None:
        attrs["request.path"] = attrs["request.url_path"] = path.split("?", 1)[0]
    if request_protocol is not None:
        attrs["request.protocol"] = request_protocol
    if headers is not None:
        attrs["request.headers"] = {k.lower(): v for k, v in headers.items()}
    if duration_ms is not None:
        attrs["response.duration"] = attrs["request.duration"] = duration_ms
    if request_bytes is not None:
        attrs["request.total_size"] = request_bytes
    if response_bytes is not None:
        attrs["response.total_size"] = response_bytes
    if extra:
        attrs.update(extra)
    return attrs


class Layered(dict[str, Any]):
    """A request's attributes, falling back to the peer's for keys it lacks.

    A dict subclass so that a present key costs one C-level lookup; only a miss runs
    ``__missing__``. Iteration and ``len`` cover the request layer only.
    """

    __slots__ = ("_base",)

    def __init__(self, top: Mapping[str, Any], base: Mapping[str, Any]) -> None:
        super().__init__(top)
        self._base = base

    def __missing__(self, key: str) -> Any:
        return self._base[key]

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self._base

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default
