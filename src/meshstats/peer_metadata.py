"""``PeerMetadata``: a read-only view over a decoded Istio node-metadata Struct.

>>> from meshstats.peer_metadata import PeerMetadata
>>> peer = PeerMetadata.from_struct({
...     "WORKLOAD_NAME": "reviews-v2",
...     "NAMESPACE": "bookinfo",
...     "OWNER": "kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/reviews-v2",
...     "LABELS": {"app": "reviews", "app.kubernetes.io/version": "2.1", "version": "v2"},
... })
>>> peer.workload_name, peer.workload_type, peer.app, peer.version
('reviews-v2', 'deployment', 'reviews', '2.1')
>>> peer["NAMESPACE"], peer.cluster_id is None
('bookinfo', True)
>>> PeerMetadata.namespace_from_principal("spiffe://cluster.local/ns/bookinfo/sa/reviews")
'bookinfo'

The accessors follow Istio's ``convertStructToWorkloadMetadata`` (reference/telemetry-v2.md
§3.2) and the labels the stats filter reads (§3.5). A missing field, or one holding
something other than a string, reads as ``None`` (never ``KeyError``); ``labels`` and
``platform_metadata`` read as empty mappings and ``instance_ips`` as an empty list.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, Union

from ._files import load_data, parse_data
from .errors import PeerMetadataTypeError

T = TypeVar("T")

__all__ = ["PeerMetadata", "namespace_from_principal"]

StrPath = Union[str, "os.PathLike[str]"]

#: The labels Istio reads for canonical service and revision (§3.2).
CANONICAL_NAME_LABEL = "service.istio.io/canonical-name"
CANONICAL_REVISION_LABEL = "service.istio.io/canonical-revision"

# OWNER's type segment (plural, as in the Kubernetes API path) -> Istio's workload type.
_WORKLOAD_TYPES = {"deployment", "pod", "job", "cronjob"}

_EMPTY: Mapping[str, object] = MappingProxyType({})


def namespace_from_principal(principal: str | None) -> str | None:
    """The namespace in a SPIFFE identity: the text after ``/ns/`` up to the next ``/``.

    >>> namespace_from_principal("spiffe://td/ns/default/sa/sleep")
    'default'
    >>> namespace_from_principal("spiffe://td/sa/sleep") is None
    True

    Same rule as Istio's ``getNamespace`` (§4.4): the first ``/ns/`` wins, and an empty
    namespace (``.../ns//sa/x``) is returned as ``""``.
    """
    if not principal:
        return None
    begin = principal.find("/ns/")
    if begin < 0:
        return None
    begin += 4
    end = principal.find("/", begin)
    return principal[begin:] if end < 0 else principal[begin:end]


def _freeze(value: object, where: str) -> object:
    """Deep read-only copy: dicts -> MappingProxyType, lists -> tuples, ints -> floats.

    Ints become floats because that is what they are on the wire (a Struct number), so
    a PeerMetadata built from JSON equals one decoded from the peer's bytes.
    """
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None:
        return value
    if kind is dict or isinstance(value, Mapping):  # dict first: no ABC check for it
        frozen = {}
        for key, item in value.items():  # type: ignore[attr-defined]
            if not isinstance(key, str):
                raise PeerMetadataTypeError(f"{where}: keys must be str, got {key!r}")
            frozen[key] = _freeze(item, where if type(item) in _CANNOT_FAIL else f"{where}.{key}")
        return MappingProxyType(frozen)
    if isinstance(value, str):  # a str subclass: kept as the plain str the wire carries
        return str.__str__(value)
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            raise PeerMetadataTypeError(f"{where}: int too large for a double") from None
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item, f"{where}[{i}]") for i, item in enumerate(value))
    raise PeerMetadataTypeError(
        f"{where}: a Struct value must be None, bool, number, str, mapping or list; "
        f"got {type(value).__name__}"
    )


# Values _freeze takes as they are: no error can name their path, so it is not formatted.
_CANNOT_FAIL = (str, float, bool, type(None))


def _thaw(value: object) -> object:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


def _same(a: object, b: object) -> bool:
    # NaN equals NaN here: two views of the same bytes must compare equal.
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


class PeerMetadata(Mapping[str, object]):
    """Read-only view of one peer's node metadata, with Istio's accessors.

    >>> peer = PeerMetadata.from_struct({"NAME": "ratings-v1-7d9", "CLUSTER_ID": "Kubernetes"})
    >>> peer.name, peer.cluster_id, dict(peer.labels)
    ('ratings-v1-7d9', 'Kubernetes', {})
    >>> peer.to_filter_state()
    {'name': 'ratings-v1-7d9', 'cluster': 'Kubernetes'}

    Build one with :meth:`from_struct`, :meth:`from_exchange`, :meth:`from_json`,
    :meth:`from_yaml` or :meth:`from_file`. Nested mappings read as read-only mappings and
    lists as tuples; :meth:`to_struct` gives back plain, mutable ``dict``/``list`` values.
    """

    __slots__ = ("_data", "_node_id", "_memo")

    _data: Mapping[str, object]
    _node_id: str | None
    # Values derived from the (immutable) data, computed once: a local node's are read for
    # every new peer.
    _memo: dict[object, object]

    def __init__(
        self, struct: Mapping[str, object] | None = None, node_id: str | None = None
    ) -> None:
        if struct is None:
            struct = {}
        if type(struct) is not dict and not isinstance(struct, Mapping):  # dict: no ABC check
            raise PeerMetadataTypeError(
                f"node metadata must be a mapping, got {type(struct).__name__}"
            )
        if node_id is not None and not isinstance(node_id, str):
            raise PeerMetadataTypeError(f"node_id must be str or None, got {node_id!r}")
        frozen = _freeze(struct, "metadata")
        assert isinstance(frozen, Mapping)
        object.__setattr__(self, "_data", frozen)
        object.__setattr__(self, "_node_id", node_id)
        object.__setattr__(self, "_memo", {})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"PeerMetadata is read-only (cannot set {name!r})")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_struct(cls, struct: Mapping[str, object], node_id: str | None = None) -> PeerMetadata:
        """Wrap a node-metadata mapping (as ``decode_peer_header`` returns it).

        An Istio bootstrap-like mapping ``{"node": {"id": ..., "metadata": {...}}}`` is
        unwrapped too, keeping the id as :attr:`node_id`.
        """
        if type(struct) is not dict and not isinstance(struct, Mapping):  # dict: no ABC check
            raise PeerMetadataTypeError(
                f"node metadata must be a mapping, got {type(struct).__name__}"
            )
        node = _bootstrap_node(struct)
        if node is not None:
            metadata = node.get("metadata", {})
            found_id = node.get("id")
            if node_id is None and isinstance(found_id, str):
                node_id = found_id
            if not isinstance(metadata, Mapping):
                raise PeerMetadataTypeError(
                    f"node.metadata must be a mapping, got {type(metadata).__name__}"
                )
            struct = metadata
        return cls(struct, node_id)

    @classmethod
    def from_exchange(cls, exchange: Any) -> PeerMetadata:
        """Wrap a decoded ``PeerExchange`` (its metadata, and its id as :attr:`node_id`)."""
        return cls(exchange.metadata, exchange.metadata_id)

    @classmethod
    def from_json(cls, source: StrPath) -> PeerMetadata:
        """From JSON text, or from a JSON file when ``source`` is a path.

        A ``str`` starting (after whitespace) with ``{`` is JSON text; any other ``str``
        or ``os.PathLike`` is a file name. A file that cannot be read or parsed raises
        :class:`~meshstats.errors.ConfigError` naming it.
        """
        if isinstance(source, str) and source.lstrip().startswith("{"):
            loaded = parse_data(source, "json", "node metadata", "<text>")
        else:
            loaded = load_data(source, "node metadata", "json")
        return cls.from_struct(_top_mapping(loaded, "JSON"))

    @classmethod
    def from_yaml(cls, path: StrPath) -> PeerMetadata:
        """From a YAML file (needs PyYAML: ``pip install pyyaml``)."""
        return cls.from_struct(_top_mapping(load_data(path, "node metadata", "yaml"), "YAML"))

    @classmethod
    def from_file(cls, path: StrPath) -> PeerMetadata:
        """From ``.json``, ``.yaml`` or ``.yml`` by suffix; other suffixes are sniffed
        (JSON when the first non-blank character is ``{``, else YAML)."""
        return cls.from_struct(_top_mapping(load_data(path, "node metadata"), os.fspath(path)))

    # ------------------------------------------------------------------ Mapping

    def __getitem__(self, key: str) -> object:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PeerMetadata):
            return self._node_id == other._node_id and _same(self._data, other._data)
        if isinstance(other, Mapping):
            try:
                return _same(self._data, _freeze(other, "other"))
            except PeerMetadataTypeError:
                return False
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = repr(self.to_struct())
        return f"PeerMetadata({inner}, node_id={self._node_id!r})"

    def to_struct(self) -> dict[str, object]:
        """A fresh, mutable copy of the node metadata (``dict``/``list`` all the way down)."""
        thawed = _thaw(self._data)
        assert isinstance(thawed, dict)
        return thawed

    # ------------------------------------------------------------------ accessors

    def _str(self, key: str) -> str | None:
        value = self._data.get(key)
        return value if type(value) is str else None  # frozen: str subclasses are str

    def _label(self, key: str) -> str | None:
        value = self.labels.get(key)
        return value if type(value) is str else None

    @property
    def node_id(self) -> str | None:
        """The Envoy ``node.id`` (from a bootstrap file or the prefix's metadata id)."""
        return self._node_id

    @property
    def name(self) -> str | None:
        """``NAME``: the pod (instance) name."""
        return self._str("NAME")

    @property
    def namespace(self) -> str | None:
        """``NAMESPACE`` as the peer declared it (a SPIFFE SAN takes precedence in labels)."""
        return self._str("NAMESPACE")

    @property
    def workload_name(self) -> str | None:
        """``WORKLOAD_NAME`` (the ``*_workload`` label)."""
        return self._str("WORKLOAD_NAME")

    @property
    def cluster_id(self) -> str | None:
        """``CLUSTER_ID`` (the ``*_cluster`` label)."""
        return self._str("CLUSTER_ID")

    @property
    def owner(self) -> str | None:
        """``OWNER``, e.g. ``kubernetes://apis/apps/v1/namespaces/ns/deployments/name``."""
        return self._str("OWNER")

    @property
    def identity(self) -> str | None:
        """``IDENTITY``: the SPIFFE principal a peer may declare (used when no cert SAN)."""
        return self._str("IDENTITY")

    @property
    def mesh_id(self) -> str | None:
        return self._str("MESH_ID")

    @property
    def istio_version(self) -> str | None:
        """``ISTIO_VERSION`` (the ``istio_build{tag}`` label for the local node)."""
        return self._str("ISTIO_VERSION")

    @property
    def service_account(self) -> str | None:
        return self._str("SERVICE_ACCOUNT")

    @property
    def region(self) -> str | None:
        return self._str("REGION")

    @property
    def availability_zone(self) -> str | None:
        return self._str("AVAILABILITY_ZONE")

    @property
    def labels(self) -> Mapping[str, object]:
        """``LABELS`` as a read-only mapping (empty when absent)."""
        value = self._data.get("LABELS")
        # Frozen mappings are MappingProxyType: the exact check spares the ABC machinery.
        return value if type(value) is MappingProxyType or isinstance(value, Mapping) else _EMPTY

    def memo(self, key: object, make: Callable[[], T]) -> T:
        """``make()``, computed once per metadata object and kept (the data never changes).

        For values derived from the metadata that are costly and needed often, such as the
        local node's attributes, which every new peer's context includes. The value is
        shared: treat it as read-only.
        """
        try:
            return self._memo[key]  # type: ignore[return-value]
        except KeyError:
            value = self._memo[key] = make()
            return value

    @property
    def platform_metadata(self) -> Mapping[str, object]:
        """``PLATFORM_METADATA`` as a read-only mapping (empty when absent)."""
        value = self._data.get("PLATFORM_METADATA")
        return value if isinstance(value, Mapping) else _EMPTY

    @property
    def instance_ips(self) -> list[str]:
        """``INSTANCE_IPS`` split on commas (a list on the wire is accepted too)."""
        value = self._data.get("INSTANCE_IPS")
        if isinstance(value, str):
            return [ip.strip() for ip in value.split(",") if ip.strip()]
        if isinstance(value, tuple):
            return [ip for ip in value if isinstance(ip, str) and ip]
        return []

    @property
    def app(self) -> str | None:
        """``app.kubernetes.io/name`` if that label is present, else the ``app`` label."""
        if "app.kubernetes.io/name" in self.labels:
            return self._label("app.kubernetes.io/name")
        return self._label("app")

    @property
    def version(self) -> str | None:
        """``app.kubernetes.io/version`` if that label is present, else ``version``."""
        if "app.kubernetes.io/version" in self.labels:
            return self._label("app.kubernetes.io/version")
        return self._label("version")

    @property
    def canonical_service(self) -> str | None:
        """The ``service.istio.io/canonical-name`` label (no fallback, as in Istio)."""
        return self._label(CANONICAL_NAME_LABEL)

    @property
    def canonical_revision(self) -> str | None:
        """The ``service.istio.io/canonical-revision`` label (no fallback)."""
        return self._label(CANONICAL_REVISION_LABEL)

    @property
    def workload_type(self) -> str | None:
        """``deployment``, ``pod``, ``job`` or ``cronjob`` parsed from OWNER, else None.

        Istio strips ``s/<WORKLOAD_NAME>`` from the end of OWNER and takes the last
        path segment: ``.../deployments/reviews-v2`` -> ``deployment``. Other kinds
        (statefulsets, daemonsets, replicasets) and OWNERs not ending in the workload
        name give ``None`` here, where Envoy would fall back to ``pod``.
        """
        owner, workload = self.owner, self.workload_name
        if not owner or workload is None:
            return None
        suffix = f"s/{workload}"
        if not owner.endswith(suffix):
            return None
        head = owner[: -len(suffix)]
        slash = head.rfind("/")
        if slash < 0:
            return None
        kind = head[slash + 1 :]
        return kind if kind in _WORKLOAD_TYPES else None

    namespace_from_principal = staticmethod(namespace_from_principal)

    def to_exchange(self, additional_labels: Iterable[str] = ()) -> dict[str, object]:
        """The reduced node metadata today's Istio sends in the exchange (§3, NOW).

        >>> PeerMetadata.from_struct({"NAME": "r-1", "WORKLOAD_NAME": "r", "NAMESPACE": "ns",
        ...     "OWNER": "kubernetes://apis/apps/v1/namespaces/ns/deployments/r",
        ...     "LABELS": {"app.kubernetes.io/name": "reviews", "pod-template-hash": "x"},
        ...     "INSTANCE_IPS": "10.0.0.1", "PLATFORM_METADATA": {"gcp": "x"}}).to_exchange()
        ... # doctest: +NORMALIZE_WHITESPACE
        {'NAME': 'r-1', 'NAMESPACE': 'ns', 'WORKLOAD_NAME': 'r', 'LABELS': {'app': 'reviews'},
         'OWNER': 'kubernetes://apis/apps/v1/namespaces/ns/deployments/r'}

        Only NAME, NAMESPACE, WORKLOAD_NAME, CLUSTER_ID, IDENTITY, LABELS, OWNER, REGION and
        AVAILABILITY_ZONE, empty ones left out. LABELS keeps the canonical name and revision,
        ``app`` and ``version`` as resolved (``app.kubernetes.io/*`` first), and the
        ``additional_labels`` asked for; OWNER is written again from the workload type (left
        out when the type is not known). Smaller than the whole node, and it exposes less:
        no IPs, platform metadata, service account or environment.
        """
        labels: dict[str, object] = {}
        for key, resolved in (
            (CANONICAL_NAME_LABEL, self.canonical_service),
            (CANONICAL_REVISION_LABEL, self.canonical_revision),
            ("app", self.app),
            ("version", self.version),
        ):
            if resolved:
                labels[key] = resolved
        for key in additional_labels:
            extra = self.labels.get(key)
            if type(extra) is str and extra:
                labels[key] = extra
        kind, namespace, workload = self.workload_type, self.namespace, self.workload_name
        owner = (
            f"kubernetes://apis/apps/v1/namespaces/{namespace}/{kind}s/{workload}"
            if kind and namespace and workload
            else None
        )
        out: dict[str, object] = {}
        fields: tuple[tuple[str, object], ...] = (
            ("NAME", self.name),
            ("NAMESPACE", namespace),
            ("WORKLOAD_NAME", workload),
            ("CLUSTER_ID", self.cluster_id),
            ("IDENTITY", self.identity),
            ("LABELS", labels),
            ("OWNER", owner),
            ("REGION", self.region),
            ("AVAILABILITY_ZONE", self.availability_zone),
        )
        for key, field_value in fields:
            if field_value:
                out[key] = field_value
        return out

    def to_filter_state(self, additional_labels: Iterable[str] | None = None) -> dict[str, object]:
        """The lower-case-key Struct Istio stores as ``downstream_peer``/``upstream_peer``.

        >>> PeerMetadata.from_struct({"WORKLOAD_NAME": "w", "LABELS": {"app": "a", "role": "db"}}
        ...     ).to_filter_state(additional_labels=["role"])
        {'workload': 'w', 'app': 'a', 'labels': {'role': 'db'}}

        Keys (§3.3): ``type``, ``workload``, ``name``, ``cluster``, ``namespace``,
        ``service``, ``revision``, ``app``, ``version``, ``identity``, ``region``,
        ``availability_zone``, ``labels``; empty or missing fields are left out.
        ``labels`` holds the ``additional_labels`` present; with ``None``, every label
        but ``app``, ``version`` and the two canonical ones (already top-level keys).
        Unlike Envoy (which writes ``name`` only when ``cluster`` is set), ``name`` is
        written whenever known.
        """
        fields: list[tuple[str, str | None]] = [
            ("type", self.workload_type),
            ("workload", self.workload_name),
            ("name", self.name),
            ("cluster", self.cluster_id),
            ("namespace", self.namespace),
            ("service", self.canonical_service),
            ("revision", self.canonical_revision),
            ("app", self.app),
            ("version", self.version),
            ("identity", self.identity),
            ("region", self.region),
            ("availability_zone", self.availability_zone),
        ]
        state: dict[str, object] = {key: value for key, value in fields if value}
        labels = self.labels
        if additional_labels is None:
            standard = {"app", "version", CANONICAL_NAME_LABEL, CANONICAL_REVISION_LABEL}
            wanted: Iterable[str] = [key for key in labels if key not in standard]
        else:
            wanted = additional_labels
        picked = {key: _thaw(labels[key]) for key in wanted if key in labels}
        if picked:
            state["labels"] = picked
        return state


def _bootstrap_node(data: Mapping[str, object]) -> Mapping[str, object] | None:
    """The ``node`` of an Envoy bootstrap (or config dump) mapping, if it is one."""
    node = data.get("node")
    if node is not None and isinstance(node, Mapping) and ("metadata" in node or "id" in node):
        return node
    bootstrap = data.get("bootstrap")
    if bootstrap is not None and isinstance(bootstrap, Mapping):
        return _bootstrap_node(bootstrap)
    configs = data.get("configs")
    if isinstance(configs, list):
        for config in configs:
            if isinstance(config, Mapping) and isinstance(config.get("bootstrap"), Mapping):
                return _bootstrap_node(config["bootstrap"])
    return None


def _top_mapping(loaded: object, what: str) -> Mapping[str, object]:
    if not isinstance(loaded, Mapping):
        raise PeerMetadataTypeError(
            f"{what} document must be a mapping of node metadata, got {type(loaded).__name__}"
        )
    return loaded
