"""Out-of-mesh peers: who is at an address, when the peer cannot say so itself.

A peer without a sidecar never exchanges metadata, so Istio labels its traffic ``unknown``
(istio.io FAQ, istio/istio#23963). A workload registry fills that gap: a file mapping IP
addresses or CIDR blocks to node metadata, looked up by the peer's address when the exchange
did not happen. The most specific block wins.

>>> registry = WorkloadRegistry.from_entries([
...     {"cidr": "10.0.0.0/8", "metadata": {"WORKLOAD_NAME": "legacy-vms"}},
...     {"ip": "10.1.2.3", "metadata": {"WORKLOAD_NAME": "billing-db", "NAMESPACE": "data"}},
... ])
>>> registry.lookup("10.1.2.3").workload_name
'billing-db'
>>> registry.lookup("10.9.9.9").workload_name
'legacy-vms'
>>> registry.lookup("192.168.1.1") is None
True

The file (JSON or YAML) is a list of such entries, or ``{"workloads": [...]}``::

    workloads:
      - cidr: 203.0.113.0/24
        metadata: {WORKLOAD_NAME: partner-api, NAMESPACE: external, CLUSTER_ID: partner}
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ._files import load_data
from .errors import ConfigError
from .peer_metadata import PeerMetadata

__all__ = ["WorkloadRegistry"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class WorkloadRegistry:
    """IP/CIDR → :class:`PeerMetadata`, longest prefix first."""

    def __init__(self, entries: Iterable[tuple[Network, PeerMetadata]] = ()) -> None:
        # Most specific first, so the first match is the best one.
        self._entries = sorted(entries, key=lambda e: e[0].prefixlen, reverse=True)

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_entries(cls, entries: Iterable[Mapping[str, Any]]) -> WorkloadRegistry:
        parsed = []
        for i, entry in enumerate(entries):
            where = f"workloads[{i}]"
            if not isinstance(entry, Mapping):
                raise ConfigError(f"expected a mapping, got {type(entry).__name__}", where)
            unknown = set(entry) - {"ip", "cidr", "metadata"}
            if unknown:
                raise ConfigError(f"unknown field(s) {sorted(unknown)}", where)
            if ("ip" in entry) == ("cidr" in entry):
                raise ConfigError("give exactly one of 'ip' or 'cidr'", where)
            key = "ip" if "ip" in entry else "cidr"
            try:
                network = ipaddress.ip_network(str(entry[key]), strict=True)
            except ValueError as exc:
                raise ConfigError(str(exc), f"{where}.{key}") from None
            metadata = entry.get("metadata")
            if not isinstance(metadata, Mapping):
                raise ConfigError("expected a mapping of node metadata", f"{where}.metadata")
            parsed.append((network, PeerMetadata.from_struct(dict(metadata))))
        return cls(parsed)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> WorkloadRegistry:
        path = os.fspath(path)
        data = load_data(path, "a workload registry")
        if isinstance(data, Mapping):
            data = data.get("workloads", [])
        if not isinstance(data, list):
            raise ConfigError("expected a list of workloads", path)
        return cls.from_entries(data)

    def lookup(self, address: str | None) -> PeerMetadata | None:
        """The metadata registered for ``address`` (``"ip"`` or ``"ip:port"``), else None."""
        if not address:
            return None
        try:
            ip = ipaddress.ip_address(_strip_port(address))
        except ValueError:
            return None
        for network, metadata in self._entries:
            if ip.version == network.version and ip in network:
                return metadata
        return None


def _strip_port(address: str) -> str:
    if address.startswith("["):  # [v6]:port
        return address[1 : address.index("]")]
    if address.count(":") == 1:  # v4:port
        return address.split(":", 1)[0]
    return address
