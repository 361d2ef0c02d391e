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

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from ..errors import ConfigError

__all__ = ["InboundConfig", "OutboundConfig", "SidecarConfig", "Protocol", "parse_address"]

Protocol = Literal["tcp", "http"]
MtlsMode = Literal["strict", "permissive"]
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


def _protocol(value: object, where: str) -> Protocol:
    if value == "tcp":
        return "tcp"
    if value == "http":
        return "http"
    raise ConfigError(f"must be 'tcp' or 'http', got {value!r}", where)


def _timeout(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"must be a number of seconds > 0, got {value!r}", where)
    return float(value)


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
    """

    port: int
    upstream: Address | None
    service_host: str
    protocol: Protocol = "tcp"
    service_port: int | None = None

    @property
    def cluster_name(self) -> str:
        return f"outbound|{self.service_port or self.port}||{self.service_host}"

    def cluster_metadata(self) -> dict[str, Any]:
        """Istio's ``filter_metadata.istio.services`` for this cluster (reference §4.3)."""
        service: dict[str, str] = {"host": self.service_host}
        parts = self.service_host.split(".")
        if len(parts) >= 3 and parts[2] == "svc":  # name.namespace.svc.<domain>
            service["name"], service["namespace"] = parts[0], parts[1]
        return {"filter_metadata": {"istio": {"services": [service]}}}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "outbound") -> OutboundConfig:
        _check_keys(data, {"port", "upstream", "service_host", "protocol", "service_port"}, where)
        host = data.get("service_host")
        if not isinstance(host, str) or not host:
            raise ConfigError(f"must be a non-empty string, got {host!r}", f"{where}.service_host")
        upstream = data.get("upstream")
        return cls(
            port=_port(data.get("port", 0), f"{where}.port", zero=True),
            upstream=None if upstream is None else parse_address(upstream, f"{where}.upstream"),
            service_host=host,
            protocol=_protocol(data.get("protocol", "tcp"), f"{where}.protocol"),
            service_port=None
            if data.get("service_port") is None
            else _port(data["service_port"], f"{where}.service_port"),
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

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: Path | None = None) -> SidecarConfig:
        """Parse a config mapping; relative paths are taken from ``base`` when given."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"must be a mapping, got {type(data).__name__}", "sidecar")
        known = {
            "node", "cert_dir", "inbound", "outbound", "admin_port", "host", "node_id",
            "stats", "exchange_timeout", "connect_timeout", "detect_timeout",
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
        host = data.get("host", "127.0.0.1")
        if not isinstance(host, str):
            raise ConfigError(f"must be a string, got {host!r}", "host")
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
        )

    @classmethod
    def from_file(cls, path: StrPath) -> SidecarConfig:
        """A JSON or YAML file; relative paths inside are relative to the file."""
        import yaml

        source = Path(path)
        text = source.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if source.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot parse: {exc}", str(source)) from exc
        return cls.from_mapping(data, base=source.parent)
