"""What the connection handlers (:mod:`.http`, :mod:`.tcp`) may use of their sidecar.

A leaf module (types only): the handlers depend on this small protocol instead of on
:class:`~meshstats.proxy.Sidecar` and its internals, and mypy checks both sides, that the
handlers use nothing else and that ``Sidecar`` provides all of it. A test double, or
another front end for the handlers, implements these eight members.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from ..engine import PeerContext, StatsEngine
    from ..peer_metadata import PeerMetadata
    from .config import OutboundConfig, SidecarConfig
    from .pool import UpstreamPool

__all__ = ["SidecarView"]


class SidecarView(Protocol):
    """The sidecar as its handlers see it."""

    #: Listeners, timeouts and limits.
    config: SidecarConfig
    #: Records every request and connection.
    engine: StatsEngine
    #: This node's TCP peer-exchange frame, sent first on an ``istio-peer-exchange`` stream.
    prefix: bytes
    #: The ``x-envoy-peer-metadata`` and ``-id`` headers, added to each exchanged request.
    mx_headers: list[tuple[bytes, bytes]]
    #: Idle upstream HTTP connections, kept for the next downstream connection.
    upstream_pool: UpstreamPool

    async def connect(
        self,
        address: tuple[str, int],
        protocol: Literal["tcp", "http", "h2"],
        *,
        mesh: bool = True,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str | None, bool]:
        """Open a connection upstream: streams, the server's principal, whether MX was chosen."""
        ...

    def outbound_peer(
        self,
        cfg: OutboundConfig,
        peer: PeerMetadata | None,
        principal: str | None,
        *,
        cache_key: Hashable = None,
        address: str | None = None,
    ) -> PeerContext:
        """The client-side (``reporter="source"``) context for the peer behind ``cfg``."""
        ...

    def passthrough_peer(self, cfg: OutboundConfig, sni: str, address: str | None) -> PeerContext:
        """A TLS passthrough's context, its ClientHello's server name the destination."""
        ...

    def inbound_peer(
        self,
        peer: PeerMetadata | None,
        principal: str | None,
        *,
        cache_key: Hashable = None,
        address: str | None = None,
    ) -> PeerContext:
        """The server-side (``reporter="destination"``) context for a downstream peer."""
        ...
