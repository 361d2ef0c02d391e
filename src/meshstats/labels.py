"""The label resolver: Istio's dimension rules, which labels are fixed per peer and which
change per request, and the per-peer context that caches resolved series.

>>> from meshstats.labels import default_dimensions, is_request_scoped, compile_cached
>>> is_request_scoped(compile_cached(default_dimensions()["response_code"]))
True
>>> is_request_scoped(compile_cached(default_dimensions()["source_workload"]))
False

How a label is resolved (``shared/DESIGN.md``, "Label resolver"): each label is an
expression (the packaged ``default_dimensions.yaml``, then the user's overrides, by
:func:`dimensions`). Expressions that read only the peer and the local node
(:func:`is_request_scoped` is false) are evaluated once per peer, in
:meth:`PeerContext.series`'s first call, and kept; per event only the request-scoped ones
run, then one dictionary lookup gives the series ids. When every request-scoped label of a
plan reads only what ``record_request`` receives as keyed arguments
(:func:`fast_path_applies`), the engine skips even that through a compiled request table.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._requests import BLOCK_MAX
from .attributes import (
    REQUEST_SCOPED,
    ReporterKind,
    resolve_destination_service,
    service_attributes,
)
from .config import MetricConfig
from .expr import Expression, compile_expression

if TYPE_CHECKING:
    from .engine import StatsEngine

__all__ = [
    "KEYED_ROOTS",
    "PEER_ROOTS",
    "Emitter",
    "PeerContext",
    "Plan",
    "compile_cached",
    "default_dimensions",
    "dimensions",
    "fast_path_applies",
    "is_request_scoped",
    "reads_any",
]


def default_dimensions() -> dict[str, str]:
    """Istio's standard labels as expressions (the packaged ``default_dimensions.yaml``)."""
    return dict(_packaged_dimensions())


@functools.cache
def _packaged_dimensions() -> Mapping[str, str]:
    # Parsed once per process: YAML parsing was most of StatsEngine()'s cost when every
    # metric read the file again.
    text = (
        importlib.resources.files("meshstats")
        .joinpath("default_dimensions.yaml")
        .read_text(encoding="utf-8")
    )
    import yaml

    data = yaml.safe_load(text)
    return MappingProxyType({str(k): str(v) for k, v in data.items()})


# Expressions are immutable (frozen, pure closures), so engines share compiled ones: the
# packaged defaults and a config's dimensions are compiled once per process, not per engine
# and per metric. Failures are not cached; they raise again with their column.
compile_cached = functools.lru_cache(maxsize=4096)(compile_expression)


def dimensions(
    metric: str,
    standard: tuple[str, ...] | None,
    entries: Iterable[MetricConfig],
    compile_tag: Callable[[str, str, str], Expression | None],
) -> dict[str, Expression]:
    """Istio's rules (§5) turning defaults plus ``metrics[]`` entries into one label list.

    ``standard`` is the metric's standard tags (``None``: a custom metric, which carries only
    configured labels); ``compile_tag(tag, source, where)`` compiles one expression or
    returns ``None`` for one that does not parse (the caller records why).
    """
    defaults = _packaged_dimensions()
    labels: dict[str, Expression] = {}
    if standard is not None:
        for tag in standard:
            expr = compile_tag(tag, defaults[tag], "default_dimensions.yaml")
            assert expr is not None, f"packaged default for {tag} does not parse"
            labels[tag] = expr
    appended: dict[str, Expression] = {}
    for i, entry in enumerate(entries):
        if entry.name not in ("", metric):
            continue
        if standard is not None:
            for tag in entry.tags_to_remove:
                labels.pop(tag, None)
        for tag in sorted(entry.dimensions):
            expr = compile_tag(tag, entry.dimensions[tag], f"metrics[{i}].dimensions")
            if standard is not None and tag in standard:
                if expr is None:  # Istio: an unparsable override removes the standard tag
                    labels.pop(tag, None)
                else:  # set again after a tags_to_remove: back, in its standard place
                    labels[tag] = expr
            elif expr is not None:
                appended[tag] = expr
            else:
                appended.pop(tag, None)
    if standard is not None:  # standard tags keep Istio's order, wherever set again
        labels = {tag: labels[tag] for tag in standard if tag in labels}
    for tag in sorted(appended):
        labels.pop(tag, None)
        labels[tag] = appended[tag]
    return labels


# Attribute roots fixed for a peer and connection (PeerContext.attrs).
PEER_ROOTS = (
    "source",
    "destination",
    "connection",
    "context.reporter",
    "xds",
    "node",
    "filter_state",
    "upstream_peer",
    "downstream_peer",
)
# Request attributes that record_request derives from its keyed arguments alone (response
# code, gRPC status, flags, protocol, host); request.method, paths, headers, sizes and
# durations are not among them.
KEYED_ROOTS = (
    "response.code",
    "response.grpc_status",
    "response.flags",
    "context.proxy_error_code",
    "api.protocol",
    "context.protocol",
    "request.host",
    "destination.service",
)


def is_request_scoped(expr: Expression) -> bool:
    """Whether ``expr`` may change from one request to the next: it reads a request
    attribute, or an attribute that is not among the peer's (a user's own: assume it can).
    Otherwise it is evaluated once per peer."""
    if not expr.attributes:
        return False
    return not expr.depends_only_on(PEER_ROOTS) or reads_any(expr, REQUEST_SCOPED)


def reads_any(expr: Expression, names: Iterable[str]) -> bool:
    """Whether ``expr`` reads one of ``names`` (an attribute, or one inside or around it)."""
    for read in expr.attributes:
        for name in names:
            if read == name or read.startswith(name + ".") or name.startswith(read + "."):
                return True
    return False


def fast_path_applies(plans: Iterable[tuple[int, Plan]]) -> bool:
    """Whether every HTTP label follows from record_request's keyed arguments and the peer,
    and every HTTP metric records one of the event's own values (no custom value
    expression): then equal arguments always land on the same series."""
    allowed = KEYED_ROOTS + PEER_ROOTS
    emitters = 0
    for _, plan in plans:
        for pos in plan.request_pos:
            if not plan.exprs[pos].depends_only_on(allowed):
                return False
        if any(not isinstance(e.value, str) for e in plan.emitters):
            return False
        emitters += len(plan.emitters)
    return emitters <= BLOCK_MAX


@dataclass
class Emitter:
    metric: int  # store metric id
    kind: str  # counter | gauge | histogram
    value: str | Expression  # a named event value, or a custom metric's expression


@dataclass
class Plan:
    """Metrics of one event kind that share one label list: resolved once per event."""

    labels: tuple[str, ...]
    exprs: tuple[Expression, ...]
    peer_pos: tuple[int, ...]
    request_pos: tuple[int, ...]
    emitters: list[Emitter] = field(default_factory=list)
    # Bound ``label`` methods of the request-scoped expressions: the per-event work.
    request_labels: tuple[Callable[[Mapping[str, Any]], str], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.request_labels = tuple(self.exprs[pos].label for pos in self.request_pos)


class PeerContext:
    """Everything fixed for one peer and connection, resolved once and reused per event.

    Obtain it from :meth:`StatsEngine.peer`; keep it for the life of the connection (or let the
    engine's bounded cache keep it for a peer id).
    """

    __slots__ = (
        "reporter", "attrs", "_engine", "_plans", "_services", "_requests", "_grpc",
        "__weakref__",
    )  # fmt: skip

    def __init__(self, engine: StatsEngine, reporter: ReporterKind, attrs: dict[str, Any]) -> None:
        self.reporter = reporter
        self.attrs = attrs
        self._engine = engine
        # plan index -> (peer-scoped values by position, request values -> [labels, ids...])
        self._plans: dict[int, tuple[list[str], dict[tuple[str, ...], list[Any]]]] = {}
        self._services: dict[str | None, dict[str, str]] = {}
        # Raw request arguments -> series block (the compiled fast path), made on the first
        # request when the engine's HTTP labels allow it. Per context, not shared: how a
        # host maps to destination_service depends on this peer's cluster and route too.
        self._requests: Any = None
        # Host -> the gRPC message metrics' series block: their labels follow from the peer
        # and the host alone (record_grpc_messages takes no other attribute).
        self._grpc: dict[str | None, list[tuple[int, str, Any]]] = {}

    def service(self, host: str | None) -> dict[str, str]:
        """``destination.service.*`` for a request's host (cached per host)."""
        found = self._services.get(host)
        if found is None:
            engine = self._engine
            info = resolve_destination_service(
                host_header=host,
                route_name=self.attrs.get("xds.route_name"),
                cluster_name=self.attrs.get("xds.cluster_name"),
                cluster_metadata=self.attrs.get("xds.cluster_metadata"),
                host_header_fallback=engine.host_header_fallback(self.reporter),
            )
            found = service_attributes(self.reporter, info, self.attrs)
            if len(self._services) < 1024:  # hosts come from clients: bound what we keep
                self._services[host] = found
        return found

    def series(
        self,
        index: int,
        plan: Plan,
        attrs: Mapping[str, Any],
        overridden: Iterable[str] = (),
    ) -> list[Any]:
        """``[labels, id_0, id_1, ...]`` for the plan's metrics for this event.

        Request-scoped label values come from ``attrs``. ``overridden`` names attributes
        this event sets itself (``record_request(attributes=...)``): labels that read them
        are evaluated for this event, even those otherwise fixed per peer. An id is ``-1``
        until that metric is first recorded, a counter adding zero included (Envoy's
        ``addCounter(0)`` creates the stat and marks it used, so it shows at 0); a value
        that is not recorded at all (``None``: no duration, a TCP report that is not the
        connection's first or last) leaves it at ``-1``.
        """
        engine = self._engine
        bound = engine.bound_label
        cached = self._plans.get(index)
        if cached is None:
            values = [""] * len(plan.labels)
            for pos in plan.peer_pos:
                values[pos] = bound(plan.labels[pos], plan.exprs[pos].label(self.attrs))
            cached = self._plans[index] = (values, engine._series_table(index, values))
        base, by_request = cached
        if overridden:
            redo = [pos for pos in plan.peer_pos if reads_any(plan.exprs[pos], overridden)]
            if redo:
                base = list(base)
                for pos in redo:
                    base[pos] = bound(plan.labels[pos], plan.exprs[pos].label(attrs))
                by_request = engine._series_table(index, base)
        key = tuple([label(attrs) for label in plan.request_labels])
        limit = engine.config.max_label_length
        cut: list[str] = []
        if any(len(value) > limit for value in key):  # bounded before it is kept as a key
            names = [plan.labels[pos] for pos in plan.request_pos]
            cut = [name for name, value in zip(names, key) if len(value) > limit]
            key = tuple(bound(name, value, count=False) for name, value in zip(names, key))
        entry = by_request.get(key)
        if entry is None:
            engine.cache_misses += 1
            for name in cut:  # counted once per series resolved, as peer values are
                engine.count_cut(name)
            full = list(base)
            for pos, value in zip(plan.request_pos, key):
                full[pos] = value
            entry = [tuple(full)] + [-1] * len(plan.emitters)
            if len(by_request) < engine.config.max_series:
                by_request[key] = entry
        else:
            engine.cache_hits += 1
        return entry
