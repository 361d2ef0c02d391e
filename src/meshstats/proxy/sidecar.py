"""One workload's sidecar: its listeners, its certificate, its stats engine, its admin port.

>>> import asyncio
>>> from meshstats.proxy import Sidecar, SidecarConfig
>>> async def main() -> bool:
...     config = SidecarConfig(node={"WORKLOAD_NAME": "sleep", "NAMESPACE": "default"})
...     async with Sidecar(config) as sidecar:  # admin on a free port, no listeners
...         return sidecar.admin_url.startswith("http://127.0.0.1:")
>>> asyncio.run(main())
True

The sidecar records with one :class:`~meshstats.StatsEngine`: its outbound listeners report
as ``reporter="source"``, its inbound listener as ``reporter="destination"``. Its own
principal is the URI SAN of ``cert_dir/cert.pem``; a peer's principal comes only from the
peer's verified certificate. ``/stats/prometheus``, ``/metrics`` and ``/healthz`` are served
on ``admin_port`` by a :class:`~meshstats.MetricsServer` (a thread of its own: a scrape never
waits for the event loop, and scrapes share renders and cannot multiply threads; its
timeouts and limits are the config's ``admin_*`` fields). TCP byte deltas are
reported every ``tcp_reporting_duration`` from the engine's reporting thread.

Peers that exchange nothing (a plaintext client that is no mesh peer, an upstream outside
the mesh) are looked up by address in ``config.registry``, if any; principals stay unknown,
as they only come from a verified certificate. ``config.gateway`` turns the host-header
fallback on (``StatsConfig(disable_host_header_fallback=False)``) unless the stats config
sets it: every listener then reports the requested host as ``destination_service``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Literal

from .._peer_exchange import encode_peer_header, encode_peer_prefix
from .._store import Store
from ..certs import (
    ALPN_DOWNSTREAM_WITH_MXC,
    ALPN_H2,
    ALPN_HTTP11,
    ALPN_IN_MESH_WITH_MXC,
    MX_ALPN,
    ResumingClientContext,
    client_context,
    peer_principal,
    principal_of,
    resuming_client_context,
    server_context,
)
from ..config import StatsConfig
from ..engine import PeerContext, StatsEngine
from ..exposition import MetricsServer
from ..peer_metadata import PeerMetadata
from .config import Address, OutboundConfig, SidecarConfig, load_registry
from .h2 import inbound_auto, outbound_auto
from .http import MX_HEADER, MX_ID_HEADER
from .listener import Listener, TlsCounters, open_watched
from .pool import UpstreamPool
from .tcp import inbound_tcp, outbound_tcp

__all__ = ["Sidecar", "default_node_id"]


def default_node_id(node: PeerMetadata) -> str:
    """Envoy's sidecar node id: ``sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local``."""
    ips = node.instance_ips
    ns = node.namespace or "default"
    name = node.name or node.workload_name or "unknown"
    return f"sidecar~{ips[0] if ips else '127.0.0.1'}~{name}.{ns}~{ns}.svc.cluster.local"


class Sidecar:
    """Runs the listeners of one :class:`SidecarConfig` on the current event loop.

    Use ``async with Sidecar(config) as sidecar:`` or ``await sidecar.start()`` /
    ``await sidecar.stop()``. After start, :attr:`inbound_port`, :attr:`outbound_ports`
    and :attr:`admin_url` give the bound ports (useful with port 0).
    """

    def __init__(
        self,
        config: SidecarConfig,
        *,
        engine: StatsEngine | None = None,
        reuse_port: bool = False,
        expire_idle: bool = True,
    ) -> None:
        self.config = config
        self.local_principal = principal_of(config.cert_dir) if config.cert_dir else None
        self.registry = load_registry(config.registry)
        if engine is None:
            stats = _stats_config(config)
            if not expire_idle:  # one process sweeps a shared store (proxy/workers.py)
                stats = dataclasses.replace(stats, idle_series_expiry=0.0)
            engine = StatsEngine(
                config.node,
                stats,
                store=shared_store(config, stats),
                local_principal=self.local_principal,
                registry=self.registry,
            )
        self.engine = engine
        self._reuse_port = reuse_port
        node = self.engine.local
        self.node_id = config.node_id or node.node_id or default_node_id(node)
        # What today's Istio sends: the reduced node (no IPs, platform metadata, env...).
        struct = node.to_exchange(config.additional_labels)
        # Both encodings are constant for the sidecar's life: computed once (as Istio does).
        self.prefix = encode_peer_prefix(struct, self.node_id)
        self.mx_headers: list[tuple[bytes, bytes]] = [
            (MX_HEADER, encode_peer_header(struct).encode("ascii")),
            (MX_ID_HEADER, self.node_id.encode("latin-1")),
        ]
        #: TLS handshakes of the inbound listener and of connections to upstreams.
        self.tls_inbound = TlsCounters()
        self.tls_outbound = TlsCounters()
        self._client_ssl: dict[tuple[str, Address | None], ssl.SSLContext] = {}
        self._server_ssl: ssl.SSLContext | None = None
        if config.cert_dir is not None:
            self._server_ssl = server_context(
                config.cert_dir,
                ALPN_DOWNSTREAM_WITH_MXC,
                session_tickets=config.tls_session_resumption,
            )
            for out in config.outbound:  # certificates read now, not on a first connection
                if out.mode == "service" and out.upstream is not None and out.protocol != "tls":
                    self._client_context(out.protocol, out.upstream)
                    if out.protocol == "http":  # HTTP/2 offers another ALPN list
                        self._client_context("h2", out.upstream)
        #: Idle upstream HTTP connections (to server sidecars, to the app) for reuse.
        self.upstream_pool = UpstreamPool(max_idle=config.upstream_idle_connections)
        self._listeners: list[Listener] = []
        self._inbound: Listener | None = None
        self._outbound: list[Listener] = []
        self._admin: MetricsServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> Sidecar:
        config = self.config
        try:
            if config.inbound is not None:
                handler = inbound_auto if config.inbound.protocol == "http" else inbound_tcp
                sidecar = self

                async def inbound(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                    await handler(sidecar, r, w)

                self._inbound = await Listener(
                    inbound,
                    ssl_context=self._server_ssl,
                    detect_tls=config.inbound.mtls == "permissive",
                    detect_timeout=config.detect_timeout,
                    handshake_timeout=config.connect_timeout,
                    tls=self.tls_inbound,
                ).start(config.host, config.inbound.port, reuse_port=self._reuse_port)
                self._listeners.append(self._inbound)
            for out in config.outbound:
                listener = await Listener(self._outbound_handler(out)).start(
                    config.host, out.port, reuse_port=self._reuse_port
                )
                self._outbound.append(listener)
                self._listeners.append(listener)
            if config.admin_port is not None:
                self._admin = admin_server(config, self.engine.store).start()
            self.engine.start_reporting()
        except BaseException:
            await self.stop()
            raise
        return self

    def _outbound_handler(
        self, out: OutboundConfig
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        handler = outbound_auto if out.protocol == "http" else outbound_tcp

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await handler(self, out, reader, writer)

        return serve

    async def stop(self) -> None:
        """Close every listener and connection, then report the last TCP bytes."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            await listener.close()
        self._inbound, self._outbound = None, []
        self.upstream_pool.close()
        if self._admin is not None:
            self._admin.stop()
            self._admin = None
        self.engine.stop_reporting()

    async def __aenter__(self) -> Sidecar:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- addresses -----------------------------------------------------------------------------

    @property
    def inbound_port(self) -> int:
        if self._inbound is None:
            raise RuntimeError("no inbound listener is running")
        return self._inbound.port

    @property
    def outbound_ports(self) -> list[int]:
        """The outbound listeners' ports, in the config's order."""
        return [listener.port for listener in self._outbound]

    @property
    def admin_url(self) -> str:
        if self._admin is None:
            raise RuntimeError("no admin server is running")
        return self._admin.url

    # -- used by the protocol handlers -----------------------------------------------------

    async def connect(
        self,
        address: tuple[str, int],
        protocol: Literal["tcp", "http", "h2"],
        *,
        mesh: bool = True,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str | None, bool]:
        """Open a connection to a remote sidecar (mTLS when this sidecar has a certificate).

        ``protocol`` picks the ALPN offered, as Istio's sidecars offer it: TCP with the
        metadata exchange (``istio-peer-exchange, istio``), HTTP/1.1 (``istio-http/1.1,
        istio, http/1.1``) or HTTP/2 (``istio-h2, istio, h2``).

        Returns the streams, the server's verified principal and whether both sides chose
        ``istio-peer-exchange``. ``mesh=False`` (a passthrough destination) connects in
        plaintext. Raises ``OSError`` or ``asyncio.TimeoutError``; also a
        ``ConnectionError`` when a resumed session's server certificate has expired since.
        """
        context = self._client_context(protocol, address) if mesh else None
        reader, writer = await asyncio.wait_for(
            open_watched(
                *address, ssl=context, server_hostname="" if context is not None else None
            ),
            self.config.connect_timeout,
        )
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None and not self.tls_outbound.count(ssl_object):
            writer.close()
            if isinstance(context, ResumingClientContext):
                context.forget_session()
            raise ConnectionError("resumed TLS session outlived the upstream's certificate")
        mx = ssl_object is not None and ssl_object.selected_alpn_protocol() == MX_ALPN
        return reader, writer, peer_principal(ssl_object), mx

    def _client_context(
        self, protocol: Literal["tcp", "http", "h2"], address: Address
    ) -> ssl.SSLContext | None:
        """The client TLS context for ``address``: one per upstream with session resumption
        (a session belongs to one server), one per protocol without; None without certs."""
        cert_dir = self.config.cert_dir
        if cert_dir is None:
            return None
        resume = self.config.tls_session_resumption
        key = (protocol, address if resume else None)
        context = self._client_ssl.get(key)
        if context is None:
            alpn = {"http": ALPN_HTTP11, "h2": ALPN_H2}.get(protocol, ALPN_IN_MESH_WITH_MXC)
            make = resuming_client_context if resume else client_context
            context = self._client_ssl[key] = make(cert_dir, alpn)
        return context

    def outbound_peer(
        self,
        cfg: OutboundConfig,
        peer: PeerMetadata | None,
        principal: str | None,
        *,
        cache_key: Hashable = None,
        address: str | None = None,
    ) -> PeerContext:
        """The client-side context for a peer behind ``cfg`` (``reporter="source"``).

        ``address`` (the upstream's ``ip:port``) names a peer that exchanged nothing.
        """
        key = _key(peer, cache_key, address)
        return self.engine.peer(
            "outbound",
            peer,
            peer_principal=principal,
            cluster_name=cfg.cluster_name,
            cluster_metadata=cfg.cluster_metadata(),
            route_name=cfg.route_name,
            peer_address=address if peer is None else None,
            cache_key=None if key is None else (cfg.cluster_name, key),
        )

    def passthrough_peer(self, cfg: OutboundConfig, sni: str, address: str | None) -> PeerContext:
        """A TLS passthrough's context: the ClientHello's server name is the destination
        service (``connection.requested_server_name`` too, for custom dimensions)."""
        return self.engine.peer(
            "outbound",
            None,
            cluster_name=cfg.cluster_name,
            cluster_metadata={"filter_metadata": {"istio": {"services": [{"host": sni}]}}},
            attributes={"connection.requested_server_name": sni},
            peer_address=address,
        )

    def inbound_peer(
        self,
        peer: PeerMetadata | None,
        principal: str | None,
        *,
        cache_key: Hashable = None,
        address: str | None = None,
    ) -> PeerContext:
        """The server-side context for a peer (``reporter="destination"``).

        ``address`` (the downstream's ``ip:port``) names a peer that exchanged nothing.
        """
        inbound = self.config.inbound
        key = _key(peer, cache_key, address)
        return self.engine.peer(
            "inbound",
            peer,
            peer_principal=principal,
            cluster_metadata=inbound.cluster_metadata() if inbound is not None else None,
            peer_address=address if peer is None else None,
            cache_key=None if key is None else ("inbound", key),
        )


def _key(peer: PeerMetadata | None, given: Hashable, address: str | None) -> Hashable:
    """A cache key that changes whenever the peer's metadata does (not just its id).

    A peer known only by its address is not cached (``None``): its context carries the
    address (``source.address``), and client ports change with every connection.
    """
    if peer is None and address is not None:
        return None
    if given is not None:
        return given
    if peer is None:
        return "unknown"
    return json.dumps(peer.to_struct(), sort_keys=True, default=str)


def admin_server(config: SidecarConfig, store: Store) -> MetricsServer:
    """The admin port's server for ``store``, with the config's ``admin_*`` limits."""
    assert config.admin_port is not None
    return MetricsServer(
        store,
        config.host,
        config.admin_port,
        header_timeout=config.admin_header_timeout,
        write_timeout=config.admin_write_timeout,
        idle_timeout=config.admin_idle_timeout,
        max_connections=config.admin_max_connections,
        render_budget=config.admin_render_budget,
    )


def shared_store(config: SidecarConfig, stats: StatsConfig) -> Store | None:
    """The shared store the config names (``store``), or ``None`` for a private one."""
    if config.store is None:
        return None
    return Store.shared(
        config.store,
        default_max_series=stats.max_series,
        max_exposition_bytes=stats.max_exposition_bytes,
    )


def _stats_config(config: SidecarConfig) -> StatsConfig:
    """The stats config, with the host-header fallback on for a gateway unless it says."""
    stats = StatsConfig.parse(config.stats)
    if config.gateway and stats.disable_host_header_fallback is None:
        stats = dataclasses.replace(stats, disable_host_header_fallback=False)
    return stats
