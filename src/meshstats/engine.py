"""The stats plugin: every request and connection becomes Istio's standard metrics.

>>> from meshstats import StatsEngine
>>> engine = StatsEngine({"WORKLOAD_NAME": "reviews-v2", "NAMESPACE": "default",
...                       "LABELS": {"app": "reviews", "version": "v2"}})
>>> peer = engine.peer("inbound", {"WORKLOAD_NAME": "productpage-v1", "NAMESPACE": "default"})
>>> engine.record_request(peer, response_code=200, duration_ms=12, request_bytes=300,
...                       response_bytes=900)
>>> b'source_workload="productpage-v1"' in engine.render()
True

The engine ties the pieces together: labels are resolved by :mod:`meshstats.labels`
(once per peer for what depends only on the peer, per request for the rest, and on the
compiled per-request path not at all after a key's first request), TCP connections are
:class:`~meshstats.connections.TcpConnection`, periodic reports run on a
:class:`~meshstats.periodic.Periodic` schedule, and everything is recorded in a
:class:`~meshstats.Store`. No Python lock is taken per event.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._peer_cache import PeerCache
from ._requests import BLOCK_MAX, COMPILED_RECORD_REQUEST, Tables
from ._store import Store
from .attributes import (
    Layered,
    ReporterKind,
    is_grpc_content_type,
    peer_attributes,
    request_attributes,
)
from .config import StatsConfig
from .connections import GrpcStream, TcpConnection
from .errors import ConfigError, ExpressionError
from .expr import EvaluationFailed, Expression
from .labels import (
    Emitter,
    PeerContext,
    Plan,
    compile_cached,
    default_dimensions,
    dimensions,
    fast_path_applies,
    is_request_scoped,
)
from .peer_metadata import PeerMetadata
from .periodic import Periodic
from .registry import WorkloadRegistry
from .standard_metrics import BUILD_METRIC, STANDARD_METRICS, StandardMetric

__all__ = ["StatsEngine", "PeerContext", "TcpConnection", "GrpcStream", "default_dimensions"]

# Which standard metrics each kind of event emits, and what value each records.
_HTTP = {
    "requests_total": "one",
    "request_duration_milliseconds": "duration",
    "request_bytes": "request_bytes",
    "response_bytes": "response_bytes",
}
_GRPC = {
    "request_messages_total": "request_messages",
    "response_messages_total": "response_messages",
}
_TCP = {
    "tcp_connections_opened_total": "opened",
    "tcp_connections_closed_total": "closed",
    "tcp_sent_bytes_total": "sent",
    "tcp_received_bytes_total": "received",
}
_EVENT_METRICS = {"http": _HTTP, "grpc": _GRPC, "tcp": _TCP}
_MESSAGE_VALUES = frozenset(_GRPC.values())  # what a request's table block can also carry


class StatsEngine:
    """Turns requests and connections into Istio's metrics in a :class:`~meshstats.Store`.

    Parameters
    ----------
    local_node:
        This proxy's node metadata: a :class:`PeerMetadata`, a mapping, or a JSON/YAML file
        (bare metadata or an Istio bootstrap ``{"node": {"id", "metadata"}}``).
    config:
        Istio's stats PluginConfig (see :mod:`meshstats.config`), or ``None`` for the defaults.
    store:
        Where to record; by default a new :class:`~meshstats.Store` with the config's
        ``max_series`` and ``max_exposition_bytes`` (a store passed in keeps its own).
    local_principal:
        The URI SAN of this proxy's certificate (``spiffe://td/ns/<ns>/sa/<sa>``), if any.
    registry:
        Who is at which address, for peers that cannot exchange metadata (out of the mesh):
        :meth:`peer` consults it when given ``peer_address`` and no ``metadata``.
    clock:
        Monotonic seconds for the periodic reports (:attr:`reporting`); tests pass a fake
        one and call ``engine.reporting.run_due()`` instead of waiting on a thread.
    """

    def __init__(
        self,
        local_node: PeerMetadata | Mapping[str, Any] | str | os.PathLike[str],
        config: StatsConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        store: Any = None,
        local_principal: str | None = None,
        registry: WorkloadRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local = _as_metadata(local_node)
        self.config = StatsConfig.parse(config)
        self.store = (
            store
            if store is not None
            else Store(
                default_max_series=self.config.max_series,
                max_exposition_bytes=self.config.max_exposition_bytes,
            )
        )
        self.local_principal = local_principal
        self.registry = registry
        self.config_warnings: list[str] = []
        self.cache_hits = 0
        self.cache_misses = 0
        self._peer_cache = PeerCache(self._new_peer, self.config.peer_cache_size)
        # The instance attribute shadows the method so that a cached peer costs one compiled
        # call: no interpreted frame in between (the method below documents and delegates).
        setattr(self, "peer", self._peer_cache.peer)
        self._plans: dict[str, list[tuple[int, Plan]]] = {}
        self._tables: dict[tuple[int, tuple[str, ...]], dict[tuple[str, ...], list[Any]]] = {}
        self._connections: weakref.WeakSet[TcpConnection] = weakref.WeakSet()
        self._streams: weakref.WeakSet[GrpcStream] = weakref.WeakSet()
        self._clock = clock
        self._truncated: int | None = None  # the truncation counter, made on first use
        self._gateway = self.config.reporter == "SERVER_GATEWAY"
        self._request_tables = Tables(self.store)
        self._expressions: list[Expression] = []  # every expression the config compiled
        self._build_plans()
        # What a new peer's context must hold: the peers' filter state and label maps are
        # a third of its cost, and the default dimensions read neither.
        self._peer_state = self._reads(
            "upstream_peer", "downstream_peer", "filter_state.upstream_peer",
            "filter_state.downstream_peer",
        )  # fmt: skip
        self._peer_labels = self._reads("source.labels", "destination.labels")
        build = self.store.gauge(BUILD_METRIC.name, BUILD_METRIC.help, BUILD_METRIC.labels)
        self._build_series = self.store.series(
            build, ("proxy", self.local.istio_version or "unknown")
        )
        self.store.set(self._build_series, 1.0)
        self.reporting = Periodic(
            [
                (self.config.tcp_reporting_duration, self.report_tcp),
                # Istio runs one timer per gRPC stream with the same period.
                (self.config.tcp_reporting_duration, self.report_grpc),
                (self.config.idle_series_expiry, self.expire_idle_series),
            ],
            clock=clock,
            name="meshstats-reporting",
        )

    # -- configuration -----------------------------------------------------------------------

    def host_header_fallback(self, reporter: str) -> bool:
        """Istio enables it for client sidecars only unless the config says otherwise."""
        if self.config.disable_host_header_fallback is not None:
            return not self.config.disable_host_header_fallback
        return reporter == "outbound"

    def _compile(self, tag: str, source: str, where: str) -> Expression | None:
        try:
            expr = compile_cached(source)
        except ExpressionError as exc:
            self.config_warnings.append(f"{where}: dimension {tag!r} dropped: {exc}")
            return None
        self._expressions.append(expr)
        return expr

    def _reads(self, *keys: str) -> bool:
        """Whether an expression may read one of these keys of a context's attributes.

        An expression's ``attributes`` holds every root it may look up (``source.app`` reads
        ``source.app``, or ``source`` and then its ``app``), so a key no expression names is
        never looked up.
        """
        return any(not expr.attributes.isdisjoint(keys) for expr in self._expressions)

    def _build_plans(self) -> None:
        dropped = {e.name for e in self.config.metrics if e.drop and e.name}
        if any(e.drop and not e.name for e in self.config.metrics):
            dropped |= set(STANDARD_METRICS)
        groups: dict[tuple[str, tuple[tuple[str, str], ...]], Plan] = {}

        def plan_for(event: str, labels: dict[str, Expression]) -> Plan:
            spec = tuple((tag, e.source) for tag, e in labels.items())
            plan = groups.get((event, spec))
            if plan is None:
                exprs = tuple(labels.values())
                peer = tuple(i for i, e in enumerate(exprs) if not is_request_scoped(e))
                request = tuple(i for i in range(len(exprs)) if i not in peer)
                plan = groups[(event, spec)] = Plan(tuple(labels), exprs, peer, request)
                self._plans.setdefault(event, []).append((len(groups) - 1, plan))
            return plan

        for event, metrics in _EVENT_METRICS.items():
            for short, value in metrics.items():
                if short in dropped:
                    continue
                std: StandardMetric = STANDARD_METRICS[short]
                labels = dimensions(short, std.labels, self.config.metrics, self._compile)
                metric_id = self._register(std.name, std.help, tuple(labels), std.kind, short)
                plan_for(event, labels).emitters.append(Emitter(metric_id, std.kind, value))

        for i, definition in enumerate(self.config.definitions):
            if definition.name in STANDARD_METRICS:
                self.config_warnings.append(
                    f"definitions[{i}]: {definition.name!r} is a standard metric; ignored"
                )
                continue
            value_expr = self._compile("value", definition.value, f"definitions[{i}]")
            if value_expr is None:
                continue
            labels = dimensions(definition.name, None, self.config.metrics, self._compile)
            kind = definition.type.lower()
            metric_id = self._register(
                f"istio_{definition.name}",
                f"Custom metric {definition.name}.",
                tuple(labels),
                kind,
                definition.name,
            )
            for event in ("http", "tcp"):  # Istio emits custom metrics at request end / close
                plan_for(event, labels).emitters.append(Emitter(metric_id, kind, value_expr))
        self._fast_http = fast_path_applies(self._plans.get("http", ()))

    def _register(
        self, name: str, help_text: str, labels: tuple[str, ...], kind: str, short: str
    ) -> int:
        if kind == "histogram":
            return int(
                self.store.histogram(
                    name, help_text, labels, buckets=self.config.buckets_for(short)
                )
            )
        if kind == "gauge":
            return int(self.store.gauge(name, help_text, labels))
        return int(self.store.counter(name, help_text, labels))

    def _series_table(self, index: int, peer_values: list[str]) -> dict[tuple[str, ...], list[Any]]:
        """Request values -> series ids, one table per plan and set of peer-scoped label
        values: shared by every context with those values, so a context evicted from the
        peer cache and made again (or two connections of one peer) reuses resolved series."""
        key = (index, tuple(peer_values))
        table = self._tables.get(key)
        if table is None:
            table = {}
            if len(self._tables) < self.config.max_series:  # bounded like the series
                self._tables[key] = table
        return table

    def bound_label(self, name: str, value: str, *, count: bool = True) -> str:
        """``value`` cut to ``max_label_length`` characters, the last one "…"; with ``count``,
        the cut is counted (:meth:`count_cut`). A label value comes from peers and clients
        (exchanged metadata, a Host header): unbounded, a few thousand requests could make
        every scrape gigabytes."""
        limit = self.config.max_label_length
        if len(value) <= limit:
            return value
        if count:
            self.count_cut(name)
        return value[: limit - 1] + "…"

    def count_cut(self, name: str) -> None:
        """Count one cut value of label ``name`` in
        ``meshstats_label_values_truncated_total{label=name}`` (made on the first cut)."""
        if self._truncated is None:
            self._truncated = self.store.counter(
                "meshstats_label_values_truncated_total",
                "Label values longer than max_label_length, cut to it.",
                ("label",),
            )
        self.store.inc(self.store.series(self._truncated, (name,)))

    # -- peers ---------------------------------------------------------------------------------

    def peer(
        self,
        reporter: ReporterKind,
        metadata: PeerMetadata | Mapping[str, Any] | None = None,
        *,
        peer_principal: str | None = None,
        cluster_name: str | None = None,
        cluster_metadata: Mapping[str, Any] | None = None,
        route_name: str | None = None,
        upstream_metadata: PeerMetadata | Mapping[str, Any] | None = None,
        upstream_principal: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        peer_address: str | None = None,
        cache_key: Any = None,
    ) -> PeerContext:
        """Resolve everything that depends only on the peer and this connection.

        ``reporter`` is ``"outbound"`` for a client sidecar, ``"inbound"`` for a server
        sidecar (``"gateway"`` for Istio's SERVER_GATEWAY). ``metadata`` is what the exchange
        taught us (``None``: nothing, the labels say ``unknown``). ``peer_principal`` must come
        from the peer's verified certificate. ``attributes`` adds connection-level ones in
        Envoy's vocabulary (``source.address``, ``destination.port``, ``upstream.address``,
        ...) for custom dimensions to read. ``peer_address`` (``ip`` or ``ip:port``) finds an
        out-of-mesh peer in the engine's workload registry when ``metadata`` is ``None``. With
        ``upstream_metadata`` and ``upstream_principal`` describe the destination for a
        gateway (reporter ``waypoint``) as the control plane's workload discovery knows it:
        trusted configuration, never exchanged headers; the principal becomes
        ``destination_principal``. With
        ``cache_key`` (e.g. the peer's
        ``x-envoy-peer-metadata-id`` plus its principal), contexts are kept in a least-recently
        used cache of ``peer_cache_size`` entries. An evicted peer that comes back costs one
        context (its labels evaluated again) but not its series: the engine keeps the series
        ids per set of peer labels, so requests find them at once.
        """
        ctx: PeerContext = self._peer_cache.peer(
            reporter, metadata, peer_principal=peer_principal, cluster_name=cluster_name,
            cluster_metadata=cluster_metadata, route_name=route_name,
            upstream_metadata=upstream_metadata, upstream_principal=upstream_principal,
            attributes=attributes, peer_address=peer_address, cache_key=cache_key,
        )  # fmt: skip
        return ctx

    def _new_peer(
        self,
        reporter: ReporterKind,
        metadata: PeerMetadata | Mapping[str, Any] | None,
        peer_principal: str | None,
        cluster_name: str | None,
        cluster_metadata: Mapping[str, Any] | None,
        route_name: str | None,
        upstream_metadata: PeerMetadata | Mapping[str, Any] | None,
        upstream_principal: str | None,
        attributes: Mapping[str, Any] | None,
        peer_address: str | None,
    ) -> PeerContext:
        """A context built from scratch: what :meth:`peer` does on a cache miss."""
        if reporter == "inbound" and self._gateway:
            reporter = "gateway"
        peer = None if metadata is None else _as_metadata(metadata)
        if peer is None and self.registry is not None:
            peer = self.registry.lookup(peer_address)
        upstream = None if upstream_metadata is None else _as_metadata(upstream_metadata)
        attrs = peer_attributes(
            reporter,
            self.local,
            peer,
            local_principal=self.local_principal,
            peer_principal=peer_principal,
            cluster_name=cluster_name,
            cluster_metadata=cluster_metadata,
            route_name=route_name,
            upstream_peer=upstream,
            upstream_principal=upstream_principal,
            peer_state=self._peer_state,
            peer_labels=self._peer_labels,
        )
        if peer_address:
            attrs.setdefault(
                "source.address" if reporter != "outbound" else "destination.address", peer_address
            )
        if attributes:
            attrs.update(attributes)
        return PeerContext(self, reporter, attrs)

    @property
    def peer_cache_hits(self) -> int:
        """Calls to :meth:`peer` answered from the cache."""
        return int(self._peer_cache.hits)

    @property
    def peer_cache_misses(self) -> int:
        """Calls to :meth:`peer` with a ``cache_key`` that had to build a context."""
        return int(self._peer_cache.misses)

    # -- events --------------------------------------------------------------------------------

    def record_request(
        self,
        peer: PeerContext,
        *,
        response_code: int = 0,
        duration_ms: float | None = None,
        request_bytes: int = 0,
        response_bytes: int = 0,
        host: str | None = None,
        grpc_status: int | None = None,
        response_flags: int | Iterable[str] | str | None = None,
        protocol: str | None = None,
        content_type: str | None = None,
        method: str | None = None,
        path: str | None = None,
        request_protocol: str | None = None,
        headers: Mapping[str, str] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """One finished HTTP or gRPC request, as the access-log callback sees it.

        ``duration_ms`` is truncated to whole milliseconds as Envoy does (``None``: no
        completion time, the duration histogram is skipped). ``request_bytes`` and
        ``response_bytes`` are wire bytes (headers and body). ``protocol`` is ``"http"`` or
        ``"grpc"``; by default gRPC is detected from ``content_type``.
        """
        if protocol is None:
            protocol = "grpc" if content_type and is_grpc_content_type(content_type) else "http"
        table = peer._requests
        if table is not None and attributes is None:
            if table.record(
                response_code, grpc_status, response_flags, protocol, host, duration_ms,
                request_bytes, response_bytes,
            ):  # fmt: skip
                return
        self._resolve_request(
            peer, response_code, duration_ms, request_bytes, response_bytes, host, grpc_status,
            response_flags, protocol, method, path, request_protocol, headers, attributes,
        )  # fmt: skip

    def _resolve_request(
        self,
        peer: PeerContext,
        response_code: int,
        duration_ms: float | None,
        request_bytes: int,
        response_bytes: int,
        host: str | None,
        grpc_status: int | None,
        response_flags: int | Iterable[str] | str | None,
        protocol: str,
        method: str | None,
        path: str | None,
        request_protocol: str | None,
        headers: Mapping[str, str] | None,
        attributes: Mapping[str, Any] | None,
    ) -> list[tuple[int, str, Any]] | None:
        """:meth:`record_request`'s general path: the labels resolved, the request recorded;
        returns the block kept for the request's key in the peer's table (None: none)."""
        attrs = request_attributes(
            protocol=protocol,
            response_code=response_code,
            grpc_status=grpc_status,
            response_flags=response_flags,
            host=host,
            method=method,
            path=path,
            request_protocol=request_protocol,
            headers=headers,
            duration_ms=duration_ms,
            request_bytes=request_bytes,
            response_bytes=response_bytes,
            extra=attributes,
        )
        attrs.update(peer.service(host))
        values = {
            "one": 1,
            "duration": None if duration_ms is None else float(int(duration_ms)),
            "request_bytes": request_bytes,
            "response_bytes": response_bytes,
        }
        block = self._emit(
            "http",
            peer,
            Layered(attrs, peer.attrs),
            values,
            attributes.keys() if attributes else (),
        )
        if self._fast_http and attributes is None:
            # Every HTTP label this request resolved follows from the raw arguments: the
            # next request with the same ones records straight into this block.
            table = peer._requests
            if table is None:
                table = peer._requests = self._request_tables.new()
            if table.put(response_code, grpc_status, response_flags, protocol, host, block):
                return block
        return None

    def record_grpc_call(
        self,
        peer: PeerContext,
        *,
        request_messages: int,
        response_messages: int,
        grpc_status: int,
        duration_ms: float | None,
        request_bytes: int,
        response_bytes: int,
        response_code: int = 200,
        host: str | None = None,
        response_flags: str | None = None,
        method: str | None = "POST",
        path: str | None = None,
    ) -> None:
        """One finished gRPC call: the message counts not reported yet and the request, as
        :meth:`record_grpc_messages` then :meth:`record_request` (``protocol="grpc"``)
        record them, in one C call once the peer's table knows the call's key (the message
        metrics' series join the request's block)."""
        table = peer._requests
        if table is not None and table.record(
            response_code, grpc_status, response_flags, "grpc", host, duration_ms,
            request_bytes, response_bytes, request_messages, response_messages,
        ):  # fmt: skip
            return
        self.record_grpc_messages(peer, request_messages, response_messages, host=host)
        block = self._resolve_request(
            peer, response_code, duration_ms, request_bytes, response_bytes, host, grpc_status,
            response_flags, "grpc", method, path, None, None, None,
        )  # fmt: skip
        messages = peer._grpc.get(host)
        if block is None or messages is None or len(block) + len(messages) > BLOCK_MAX:
            return
        if all(sid >= 0 and value in _MESSAGE_VALUES for sid, _, value in messages):
            peer._requests.put(
                response_code, grpc_status, response_flags, "grpc", host, block + messages
            )

    def record_grpc_messages(
        self,
        peer: PeerContext,
        request_messages: int,
        response_messages: int,
        *,
        host: str | None = None,
    ) -> None:
        """gRPC message-count deltas (Istio reports them periodically and at stream end)."""
        values = {"request_messages": request_messages, "response_messages": response_messages}
        block = peer._grpc.get(host)
        if block is not None:
            store = self.store
            for sid, _, value in block:
                amount = values[value]
                if amount:
                    if sid < 0:
                        break  # a metric not recorded before: resolve its series below
                    store.inc(sid, amount)
                    values[value] = 0  # recorded: not again below
            else:
                return
        block = self._emit("grpc", peer, Layered(peer.service(host), peer.attrs), values)
        if len(peer._grpc) < 1024:  # hosts come from callers: bound what is kept
            peer._grpc[host] = block

    def tcp_connection(
        self, peer: PeerContext | None = None, *, reporter: ReporterKind = "inbound"
    ) -> TcpConnection:
        """A TCP connection whose telemetry is reported every ``tcp_reporting_duration``.

        Pass the peer now or later with :meth:`TcpConnection.set_peer`; labels are fixed at the
        first report, which waits for the peer (or the close), as Istio's does. ``reporter``
        is the side used when the peer never becomes known.
        """
        conn = TcpConnection(self, peer, reporter)
        self._connections.add(conn)
        return conn

    def grpc_stream(
        self,
        peer: PeerContext | None = None,
        *,
        host: str | None = None,
        reporter: ReporterKind = "inbound",
    ) -> GrpcStream:
        """A gRPC call whose message counts are reported every ``tcp_reporting_duration``
        (:meth:`report_grpc`) and at its end (:meth:`GrpcStream.close`), as Istio does.

        A client passes the peer later (:meth:`GrpcStream.set_peer`), when the server's
        metadata arrives; until then nothing is reported. ``reporter`` is the side used when
        the peer never becomes known, ``host`` the request's authority.
        """
        stream = GrpcStream(self, peer, reporter, host)
        self._streams.add(stream)
        return stream

    def _emit(
        self,
        event: str,
        peer: PeerContext,
        attrs: Mapping[str, Any],
        values: Mapping[str, Any],
        overridden: Iterable[str] = (),
    ) -> list[tuple[int, str, Any]]:
        """Record the event; returns its block: ``(series id or -1, kind, value)`` for every
        metric of the event (-1: no series yet, nothing recorded on it so far)."""
        store = self.store
        block: list[tuple[int, str, Any]] = []
        for index, plan in self._plans.get(event, ()):
            entry = peer.series(index, plan, attrs, overridden)
            for j, emitter in enumerate(plan.emitters, 1):
                value = emitter.value
                amount = values[value] if isinstance(value, str) else _custom_value(value, attrs)
                if amount is None:
                    block.append((entry[j], emitter.kind, value))
                    continue
                sid = entry[j]
                if sid < 0:
                    # Made on first use, a counter adding 0 included: Envoy's addCounter(0)
                    # creates the stat and marks it used, so Istio shows it at 0 (a TCP
                    # connection that sent nothing yet, a stream with no new messages).
                    sid = entry[j] = store.series(emitter.metric, entry[0])
                block.append((sid, emitter.kind, value))
                if emitter.kind == "counter":
                    if amount:
                        store.inc(sid, amount)
                elif emitter.kind == "histogram":
                    store.observe(sid, amount)
                else:
                    store.set(sid, float(amount))
        return block

    # -- periodic reporting ----------------------------------------------------------------------

    def report_tcp(self) -> int:
        """Report every open connection's byte deltas now; returns how many reported."""
        return sum(1 for conn in list(self._connections) if conn.flush())

    def report_grpc(self) -> int:
        """Report every open gRPC stream's message deltas now; returns how many reported."""
        return sum(1 for stream in list(self._streams) if stream.flush())

    def expire_idle_series(self) -> int:
        """Hide series not recorded since the previous call (Istio's metric expiry).

        Called every ``idle_series_expiry`` seconds by :meth:`start_reporting`, so a series
        idle for between one and two intervals leaves the exposition; recording on it again
        brings it back with its value. Returns how many series were hidden.
        """
        # istio_build describes the proxy, not traffic: it never expires.
        self.store.set(self._build_series, 1.0)
        return int(self.store.expire_idle())

    def start_reporting(self) -> None:
        """Report TCP deltas every ``tcp_reporting_duration`` and expire idle series every
        ``idle_series_expiry`` seconds, from one daemon thread (either period 0: off).

        The schedule is :attr:`reporting` (a :class:`~meshstats.periodic.Periodic`); without
        the thread, call :meth:`report_tcp` and :meth:`expire_idle_series` yourself, or
        ``engine.reporting.run_due()`` with the ``clock`` the engine was given.
        """
        self.reporting.start()

    def stop_reporting(self) -> None:
        """Stop the reporting thread and wait for a report in progress to finish."""
        self.reporting.stop()

    # -- output --------------------------------------------------------------------------------

    def render(self, openmetrics: bool = False) -> bytes:
        return bytes(self.store.render(openmetrics=openmetrics))

    def cache_stats(self) -> dict[str, int]:
        return {
            "series_hits": self.cache_hits + self._request_tables.hits,
            "series_misses": self.cache_misses,
            "peer_hits": self.peer_cache_hits,
            "peer_misses": self.peer_cache_misses,
            "peers_cached": len(self._peer_cache),
        }


#: The Python method, which the tests compare with the compiled one.
_PY_RECORD_REQUEST = StatsEngine.record_request

if COMPILED_RECORD_REQUEST is not None:
    # The same method compiled (_requests_c.record_request: the code above, keywords parsed
    # in C, the compiled table called without a lookup). A live sidecar calls it with its
    # caches cold, where the Python frame and lookups cost more than the recording does.
    StatsEngine.record_request = COMPILED_RECORD_REQUEST  # type: ignore[method-assign]


def _custom_value(expr: Expression, attrs: Mapping[str, Any]) -> int:
    """A custom metric's value: an unsigned integer, else 0 (Istio's rule)."""
    try:
        value = expr.evaluate(attrs)
    except EvaluationFailed:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _as_metadata(node: PeerMetadata | Mapping[str, Any] | str | os.PathLike[str]) -> PeerMetadata:
    if type(node) is dict:  # the usual case first: isinstance against ABCs is slow
        return PeerMetadata.from_struct(node)
    if isinstance(node, PeerMetadata):
        return node
    if isinstance(node, Mapping):
        return PeerMetadata.from_struct(dict(node))
    if isinstance(node, (str, os.PathLike)):
        return PeerMetadata.from_file(node)
    raise ConfigError(f"node metadata must be a mapping or a file, got {type(node).__name__}")
