"""What one sidecar listens on and where it sends traffic.

>>> from meshstats.proxy import SidecarConfig
>>> cfg = SidecarConfig.from_mapping({
...     "node": {"WORKLOAD_NAME": "productpage-v1", "NAMESPACE": "default"},
...     "cert_dir": "certs/productpage",
...     "inbound": {"port": 15006, "app": "127.0.0.1:9080", "protocol": "http"},
...     "outbound": [{"port": 15001, "upstream": "127.0.0.1:16006",
...                   "service_host": "reviews.default.svc.cluster.local",
...                   "protocol": "http"}],
...     "admin_port": 15090,
... })
>>> cfg.outbound[0].upstream, cfg.inbound.mtls if cfg.inbound else None
(('127.0.0.1', 16006), 'permissive')

Files (:meth:`SidecarConfig.from_file`) hold the same mapping as JSON or YAML. Every mistake
raises :class:`~meshstats.errors.ConfigError` naming the field (``outbound[0].port``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from .._files import load_data
from ..attributes import BLACK_HOLE_CLUSTER, PASSTHROUGH_CLUSTER
from ..errors import ConfigError
from ..exposition import (
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    RENDER_BUDGET,
    WRITE_TIMEOUT,
)
from ..registry import WorkloadRegistry

__all__ = [
    "InboundConfig", "OutboundConfig", "SidecarConfig", "Protocol", "OutboundMode",
    "parse_address", "load_registry",
]  # fmt: skip

Protocol = Literal["tcp", "http", "tls"]
MtlsMode = Literal["strict", "permissive"]
# "service": a destination in the sidecar's service table. The other two are Istio's
# catch-all for destinations not in it: ALLOW_ANY forwards them (PassthroughCluster),
# REGISTRY_ONLY refuses them (BlackHoleCluster).
OutboundMode = Literal["service", "passthrough", "blackhole"]
RegistrySource = Union[str, "os.PathLike[str]", Sequence[Mapping[str, Any]], WorkloadRegistry]
Address = tuple[str, int]
StrPath = Union[str, "os.PathLike[str]"]


def parse_address(value: object, where: str) -> Address:
    """``"host:port"``, ``["host", port]`` or a bare port (on 127.0.0.1)."""
    if isinstance(value, bool):
        raise ConfigError(f"must be 'host:port', got {value!r}", where)
    if isinstance(value, int):
        return ("127.0.0.1", _port(value, where))
    if isinstance(value, str) and value.rpartition(":")[0]:
        host, _, port = value.rpartition(":")
        if port.isdigit():
            return (host.strip("[]"), _port(int(port), where))
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str):
        return (value[0], _port(value[1], where))
    raise ConfigError(f"must be 'host:port', got {value!r}", where)


def _port(value: object, where: str, *, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"must be an integer port, got {value!r}", where)
    if not (0 if zero else 1) <= value <= 65535:
        raise ConfigError(f"must be a port in {0 if zero else 1}..65535, got {value}", where)
    return value


def _count(value: object, where: str, *, most: int = 100_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"must be an integer, got {value!r}", where)
    if not 0 <= value <= most:
        raise ConfigError(f"must be in 0..{most}, got {value}", where)
    return value


def _protocol(value: object, where: str) -> Protocol:
    if value == "tcp":
        return "tcp"
    if value == "http":
        return "http"
    raise ConfigError(f"must be 'tcp' or 'http', got {value!r}", where)


def _label_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"must be a list of label names, got {value!r}", "additional_labels")
    return tuple(value)


def _off_or_timeout(value: object, where: str) -> float:
    """A timeout in seconds where 0 means none (Envoy's convention)."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return _timeout(value, where)


def _timeout(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"must be a number of seconds > 0, got {value!r}", where)
    return float(value)


def _positive_count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"must be an integer >= 1, got {value!r}", where)
    return value


def _share(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"must be a number in (0, 1], got {value!r}", where)
    return float(value)


def _flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}", where)
    return value


def load_registry(
    source: RegistrySource | None, where: str = "registry"
) -> WorkloadRegistry | None:
    """A :class:`~meshstats.WorkloadRegistry` from a file path or an inline list of entries."""
    if source is None or isinstance(source, WorkloadRegistry):
        return source
    if isinstance(source, (str, os.PathLike)):
        return WorkloadRegistry.from_file(source)
    if isinstance(source, Sequence) and not isinstance(source, str):
        try:
            return WorkloadRegistry.from_entries(source)
        except ConfigError as exc:  # "workloads[1].ip" -> "registry[1].ip"
            field = exc.field.replace("workloads", where, 1) if exc.field else where
            raise ConfigError(str(exc).split(": ", 1)[-1], field) from None
    raise ConfigError("must be a file path or a list of workloads", where)


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown field (known: {', '.join(sorted(allowed))})", prefix + unknown[0]
        )


@dataclass(frozen=True)
class OutboundConfig:
    """Local app -> this sidecar (plaintext, ``port``) -> the remote sidecar at ``upstream``.

    ``upstream=None`` models a cluster without a healthy endpoint: every request gets a 503
    with response flag ``UH``. ``service_host`` is the destination service as Istio's
    cluster metadata names it (``reviews.default.svc.cluster.local``).

    ``mode`` other than ``"service"`` makes this a catch-all listener for destinations not in
    the sidecar's service table (Istio's ``outboundTrafficPolicy``; no ``service_host``):

    - ``"passthrough"`` (ALLOW_ANY) forwards plainly (no TLS, no peer exchange, no peer
      headers: the destination is outside the mesh) to ``upstream``, the original
      destination, or for HTTP without ``upstream`` to the request's ``Host``; reported as
      ``cluster_name="PassthroughCluster"`` (HTTP route ``allow_any``). With ``protocol:
      tls`` the app's own TLS goes through untouched and the server name its ClientHello
      asks for (SNI) is the ``destination_service``, as the Host header is for HTTP.
    - ``"blackhole"`` (REGISTRY_ONLY) refuses: HTTP gets Envoy's direct response, a 502 with
      an empty body and no response flag (route ``block_all``); TCP is closed with ``UH``
      (an upstream cluster without endpoints); reported as ``BlackHoleCluster``.
    """

    port: int
    upstream: Address | None
    service_host: str = ""
    protocol: Protocol = "tcp"
    service_port: int | None = None
    mode: OutboundMode = "service"

    @property
    def cluster_name(self) -> str:
        if self.mode == "passthrough":
            return PASSTHROUGH_CLUSTER
        if self.mode == "blackhole":
            return BLACK_HOLE_CLUSTER
        return f"outbound|{self.service_port or self.port}||{self.service_host}"

    @property
    def route_name(self) -> str | None:
        """Istio's route names for the catch-all HTTP routes (reference §4.3 step 2)."""
        if self.protocol != "http":
            return None
        return {"passthrough": "allow_any", "blackhole": "block_all"}.get(self.mode)

    def cluster_metadata(self) -> dict[str, Any] | None:
        """Istio's ``filter_metadata.istio.services`` for this cluster (reference §4.3)."""
        if self.mode != "service":
            return None  # Istio's catch-all clusters carry no service metadata
        service: dict[str, str] = {"host": self.service_host}
        parts = self.service_host.split(".")
        if len(parts) >= 3 and parts[2] == "svc":  # name.namespace.svc.<domain>
            service["name"], service["namespace"] = parts[0], parts[1]
        return {"filter_metadata": {"istio": {"services": [service]}}}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "outbound") -> OutboundConfig:
        keys = {"port", "upstream", "service_host", "protocol", "service_port", "mode"}
        _check_keys(data, keys, where)
        mode = data.get("mode", "service")
        if mode not in ("service", "passthrough", "blackhole"):
            raise ConfigError(
                f"must be 'service', 'passthrough' or 'blackhole', got {mode!r}", f"{where}.mode"
            )
        raw_protocol = data.get("protocol", "tcp")
        if raw_protocol == "tls":  # TLS passthrough: the SNI read, the TLS not terminated
            if mode != "passthrough":
                raise ConfigError(
                    "'tls' is for a passthrough listener (mode: passthrough)", f"{where}.protocol"
                )
            protocol: Protocol = "tls"
        else:
            protocol = _protocol(raw_protocol, f"{where}.protocol")
        host = data.get("service_host")
        if mode == "service":
            if not isinstance(host, str) or not host:
                raise ConfigError(
                    f"must be a non-empty string, got {host!r}", f"{where}.service_host"
                )
        elif host is not None:
            raise ConfigError(f"a {mode} listener has no service", f"{where}.service_host")
        upstream = data.get("upstream")
        if mode == "blackhole" and upstream is not None:
            raise ConfigError("a blackhole listener has no upstream", f"{where}.upstream")
        if mode == "passthrough" and protocol != "http" and upstream is None:
            raise ConfigError(
                "a TCP passthrough needs the original destination", f"{where}.upstream"
            )
        return cls(
            port=_port(data.get("port", 0), f"{where}.port", zero=True),
            upstream=None if upstream is None else parse_address(upstream, f"{where}.upstream"),
            service_host=host or "",
            protocol=protocol,
            service_port=None
            if data.get("service_port") is None
            else _port(data["service_port"], f"{where}.service_port"),
            mode=mode,
        )


@dataclass(frozen=True)
class InboundConfig:
    """A remote sidecar (mTLS) or a plaintext client -> this sidecar (``port``) -> ``app``.

    ``mtls="permissive"`` (Istio's default) accepts both mTLS and plaintext on the port,
    told apart by the first byte (a TLS handshake record starts with 0x16); ``"strict"``
    accepts mTLS only.
    """

    port: int
    app: Address
    protocol: Protocol = "tcp"
    mtls: MtlsMode = "permissive"
    service_host: str | None = None

    def cluster_metadata(self) -> dict[str, Any] | None:
        if self.service_host is None:
            return None
        return OutboundConfig(0, None, self.service_host).cluster_metadata()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "inbound") -> InboundConfig:
        _check_keys(data, {"port", "app", "protocol", "mtls", "service_host"}, where)
        mtls = data.get("mtls", "permissive")
        if mtls not in ("strict", "permissive"):
            raise ConfigError(f"must be 'strict' or 'permissive', got {mtls!r}", f"{where}.mtls")
        host = data.get("service_host")
        if host is not None and (not isinstance(host, str) or not host):
            raise ConfigError(f"must be a non-empty string, got {host!r}", f"{where}.service_host")
        if "app" not in data:
            raise ConfigError("is required", f"{where}.app")
        return cls(
            port=_port(data.get("port", 0), f"{where}.port", zero=True),
            app=parse_address(data["app"], f"{where}.app"),
            protocol=_protocol(data.get("protocol", "tcp"), f"{where}.protocol"),
            mtls="strict" if mtls == "strict" else "permissive",
            service_host=host,
        )


@dataclass(frozen=True)
class SidecarConfig:
    """One sidecar: its node metadata, certificate, listeners and admin port.

    ``node`` is the workload's node metadata (a mapping, or a JSON/YAML file as
    :class:`~meshstats.StatsEngine` takes); ``node_id`` is sent as
    ``x-envoy-peer-metadata-id`` (default ``sidecar~<ip>~<name>.<ns>~<ns>.svc.cluster.local``).
    Without ``cert_dir`` nothing is encrypted: outbound connections are plaintext and the
    inbound port takes plaintext only. ``admin_port=None`` serves no metrics endpoint.
    ``exchange_timeout`` bounds the wait for a TCP peer's prefix; ``connect_timeout`` a
    connection (and TLS handshake) to an upstream; ``detect_timeout`` the wait for a
    permissive inbound connection's first byte (after it, plaintext is assumed).

    ``registry`` (a :class:`~meshstats.WorkloadRegistry` file, or its entries inline) names
    peers that cannot exchange metadata, by address. ``plaintext_exchange`` (default on)
    recognises a TCP peer's prefix on a plaintext inbound connection by its magic; off, a
    plaintext peer is never a mesh peer and its bytes, prefix included, go to the app
    untouched. ``gateway`` turns on the host-header fallback for every listener, so that
    ``destination_service`` is the requested host (an egress or ingress gateway).
    ``accept_http_10`` (default off, as Envoy's and Istio's ``ISTIO_META_HTTP10``) serves
    HTTP/1.0 requests; off, they are answered ``426 Upgrade Required``.
    ``proxy_100_continue`` (default on, as Istio's ``ENABLE_100_CONTINUE_HEADERS`` since
    1.23) forwards ``Expect: 100-continue`` to the upstream and its ``100 Continue`` back;
    off (Envoy's own default) the sidecar answers 100 itself and strips the ``Expect``.
    ``additional_labels`` names pod labels sent in the exchange besides the canonical
    name/revision, ``app`` and ``version`` (Istio's metadata-exchange ``additional_labels``).
    ``tls_session_resumption`` (default on, as Envoy's between Istio sidecars) lets a new
    mTLS connection resume a TLS 1.3 session instead of a full handshake: the inbound
    port issues one session ticket per handshake, and each outbound upstream's last
    ticket is offered to its next connections. Off, no tickets are issued or offered.
    ``upstream_idle_connections`` (64; 0: none) is how many idle HTTP connections per
    upstream (a server sidecar, the app) are kept for the next downstream connection, as
    Envoy's connection pools keep them, so that a new client connection does not cost a
    new upstream connection and its TLS handshake.

    HTTP timeouts, with Envoy's defaults (0 turns one off): ``request_timeout`` (off, as
    Istio's routes) bounds the wait for an upstream's response headers once the request is
    sent (then ``504``/``UT``); ``stream_idle_timeout`` (300 s) the time a request may see no
    bytes either way (``408``/``SI`` before a response began, else the stream is cut with
    ``SI``); ``idle_timeout`` (3600 s) how long a connection may wait for its next request.

    The admin port's limits (:class:`~meshstats.MetricsServer`; each > 0): an admin
    connection is closed when its request head takes longer than ``admin_header_timeout``
    (10 s), when it waits ``admin_idle_timeout`` (120 s) for its next request, or when a
    response takes longer than ``admin_write_timeout`` (30 s) to send; at most
    ``admin_max_connections`` (256) are open, a new one closing the one that has waited
    longest for a request head (a ``503`` if all are busy answering); renders use at most
    ``admin_render_budget`` (0.25) of one core, however often scrapers ask.

    ``workers`` (1) processes serve the listeners: each binds every listener port with
    ``SO_REUSEPORT`` (the kernel spreads connections over them) and records into one
    shared store (``Store.shared``), which one admin port serves. ``store`` names that
    file (a bare name lives in ``/dev/shm``); without it, ``meshstats sidecar`` makes a
    private one for its run and removes it at the end. With ``workers`` above 1, every
    listener needs a fixed port (not 0).
    """

    node: Mapping[str, Any] | str | os.PathLike[str]
    cert_dir: str | os.PathLike[str] | None = None
    inbound: InboundConfig | None = None
    outbound: tuple[OutboundConfig, ...] = ()
    admin_port: int | None = 0
    host: str = "127.0.0.1"
    node_id: str | None = None
    stats: Mapping[str, Any] | str | os.PathLike[str] | None = None
    exchange_timeout: float = 5.0
    connect_timeout: float = 5.0
    detect_timeout: float = 5.0
    registry: RegistrySource | None = None
    plaintext_exchange: bool = True
    gateway: bool = False
    accept_http_10: bool = False
    proxy_100_continue: bool = True
    additional_labels: tuple[str, ...] = ()
    request_timeout: float = 0.0
    stream_idle_timeout: float = 300.0
    idle_timeout: float = 3600.0
    tls_session_resumption: bool = True
    upstream_idle_connections: int = 64
    admin_header_timeout: float = HEADER_TIMEOUT
    admin_write_timeout: float = WRITE_TIMEOUT
    admin_idle_timeout: float = IDLE_TIMEOUT
    admin_max_connections: int = MAX_CONNECTIONS
    admin_render_budget: float = RENDER_BUDGET
    workers: int = 1
    store: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: Path | None = None) -> SidecarConfig:
        """Parse a config mapping; relative paths are taken from ``base`` when given."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"must be a mapping, got {type(data).__name__}", "sidecar")
        known = {
            "node", "cert_dir", "inbound", "outbound", "admin_port", "host", "node_id",
            "stats", "exchange_timeout", "connect_timeout", "detect_timeout", "registry",
            "plaintext_exchange", "gateway", "accept_http_10", "proxy_100_continue",
            "additional_labels",
            "request_timeout", "stream_idle_timeout", "idle_timeout", "tls_session_resumption",
            "upstream_idle_connections",
            "admin_header_timeout",
            "admin_write_timeout", "admin_idle_timeout", "admin_max_connections",
            "admin_render_budget", "workers", "store",
        }  # fmt: skip
        _check_keys(data, known, "")

        def path(value: object, where: str) -> object:
            if isinstance(value, str) and base is not None and not os.path.isabs(value):
                return str(base / value)
            return value

        node = path(data.get("node"), "node")
        if not isinstance(node, (str, Mapping)):
            raise ConfigError("is required: node metadata (a mapping or a file)", "node")
        cert_dir = path(data.get("cert_dir"), "cert_dir")
        if cert_dir is not None and not isinstance(cert_dir, str):
            raise ConfigError(f"must be a directory path, got {cert_dir!r}", "cert_dir")
        inbound = data.get("inbound")
        if inbound is not None and not isinstance(inbound, Mapping):
            raise ConfigError("must be a mapping", "inbound")
        outbound = data.get("outbound", [])
        if not isinstance(outbound, list):
            raise ConfigError("must be a list", "outbound")
        for i, entry in enumerate(outbound):
            if not isinstance(entry, Mapping):
                raise ConfigError("must be a mapping", f"outbound[{i}]")
        admin = data.get("admin_port", 0)
        node_id = data.get("node_id")
        if node_id is not None and not isinstance(node_id, str):
            raise ConfigError(f"must be a string, got {node_id!r}", "node_id")
        stats = path(data.get("stats"), "stats")
        if stats is not None and not isinstance(stats, (str, Mapping)):
            raise ConfigError("must be a mapping or a file", "stats")
        registry = path(data.get("registry"), "registry")
        if registry is not None and not isinstance(registry, (str, list)):
            raise ConfigError("must be a file path or a list of workloads", "registry")
        host = data.get("host", "127.0.0.1")
        if not isinstance(host, str):
            raise ConfigError(f"must be a string, got {host!r}", "host")
        workers = _positive_count(data.get("workers", 1), "workers")
        store = data.get("store")
        if store is not None and (not isinstance(store, str) or not store):
            raise ConfigError(f"must be a file path or name, got {store!r}", "store")
        if store is not None and os.sep in store and base is not None:
            store = os.path.join(base, store)  # a bare name stays one: it means /dev/shm
        if workers > 1:
            ports = [("inbound.port", (inbound or {}).get("port"))] if inbound else []
            ports += [(f"outbound[{i}].port", e.get("port")) for i, e in enumerate(outbound)]
            for where, port in ports:
                if port == 0:
                    raise ConfigError("must be a fixed port (not 0) with workers > 1", where)
        return cls(
            node=node,
            cert_dir=cert_dir,
            inbound=None if inbound is None else InboundConfig.from_mapping(inbound),
            outbound=tuple(
                OutboundConfig.from_mapping(e, f"outbound[{i}]") for i, e in enumerate(outbound)
            ),
            admin_port=None if admin is None else _port(admin, "admin_port", zero=True),
            host=host,
            node_id=node_id,
            stats=stats,
            exchange_timeout=_timeout(data.get("exchange_timeout", 5.0), "exchange_timeout"),
            connect_timeout=_timeout(data.get("connect_timeout", 5.0), "connect_timeout"),
            detect_timeout=_timeout(data.get("detect_timeout", 5.0), "detect_timeout"),
            # Loaded now, so a bad entry or an unreadable file is reported with the config.
            registry=load_registry(registry),
            plaintext_exchange=_flag(data.get("plaintext_exchange", True), "plaintext_exchange"),
            gateway=_flag(data.get("gateway", False), "gateway"),
            accept_http_10=_flag(data.get("accept_http_10", False), "accept_http_10"),
            proxy_100_continue=_flag(data.get("proxy_100_continue", True), "proxy_100_continue"),
            additional_labels=_label_names(data.get("additional_labels", [])),
            request_timeout=_off_or_timeout(data.get("request_timeout", 0), "request_timeout"),
            stream_idle_timeout=_off_or_timeout(
                data.get("stream_idle_timeout", 300), "stream_idle_timeout"
            ),
            idle_timeout=_off_or_timeout(data.get("idle_timeout", 3600), "idle_timeout"),
            tls_session_resumption=_flag(
                data.get("tls_session_resumption", True), "tls_session_resumption"
            ),
            upstream_idle_connections=_count(
                data.get("upstream_idle_connections", 64), "upstream_idle_connections"
            ),
            admin_header_timeout=_timeout(
                data.get("admin_header_timeout", HEADER_TIMEOUT), "admin_header_timeout"
            ),
            admin_write_timeout=_timeout(
                data.get("admin_write_timeout", WRITE_TIMEOUT), "admin_write_timeout"
            ),
            admin_idle_timeout=_timeout(
                data.get("admin_idle_timeout", IDLE_TIMEOUT), "admin_idle_timeout"
            ),
            admin_max_connections=_positive_count(
                data.get("admin_max_connections", MAX_CONNECTIONS), "admin_max_connections"
            ),
            admin_render_budget=_share(
                data.get("admin_render_budget", RENDER_BUDGET), "admin_render_budget"
            ),
            workers=workers,
            store=store,
        )

    @classmethod
    def from_file(cls, path: StrPath) -> SidecarConfig:
        """A JSON or YAML file; relative paths inside are relative to the file."""
        data = load_data(path, "a sidecar config")  # the one loader: same rules, same words
        return cls.from_mapping(data, base=Path(path).parent)
