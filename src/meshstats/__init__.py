"""meshstats: Istio Telemetry V2 (peer metadata exchange + stats plugin) for Python.

>>> import meshstats
>>> store = meshstats.Store()
>>> req = store.counter("istio_requests_total", "Requests.", ("reporter",))
>>> store.inc(store.series(req, ("source",)))
>>> b'istio_requests_total{reporter="source"} 1' in store.render()
True

``meshstats.HAS_EXTENSION`` says whether the compiled core is in use; set
``MESHSTATS_NO_EXTENSIONS=1`` before import to force the pure-Python twins.
"""

from __future__ import annotations

from . import _h1_conn, _h1_head, _peer_cache, _peer_exchange, _requests, _store
from ._peer_exchange import (
    DEFAULT_MAX_FRAME,
    DONE,
    NEED_MORE,
    NOT_MESH,
    PeerExchange,
    PeerPrefixDecoder,
    decode_peer_header,
    decode_peer_prefix,
    encode_peer_header,
    encode_peer_prefix,
)
from ._store import DEFAULT_BUCKETS, Store
from .config import StatsConfig
from .engine import GrpcStream, PeerContext, StatsEngine, TcpConnection
from .errors import (
    ArrayTypeError,
    BatchShapeError,
    ConfigError,
    DecoderFinishedError,
    DuplicateMetricError,
    ExpressionError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidLabelsError,
    InvalidMetricError,
    InvalidSampleError,
    MeshstatsError,
    MissingExtraError,
    PeerExchangeError,
    PeerMetadataTypeError,
    StoreFileError,
    UnknownSeriesError,
)
from .exposition import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    MeshstatsCollector,
    MetricsServer,
    ServerStats,
    negotiate,
    serve_in_background,
)
from .peer_metadata import PeerMetadata, namespace_from_principal
from .registry import WorkloadRegistry

#: True when every compiled module loaded (neither disabled nor missing).
HAS_EXTENSION: bool = all(
    module.COMPILED
    for module in (_store, _peer_exchange, _requests, _peer_cache, _h1_head, _h1_conn)
)

__version__ = "0.1.0"

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "DEFAULT_BUCKETS",
    "DEFAULT_MAX_FRAME",
    "DONE",
    "HAS_EXTENSION",
    "NEED_MORE",
    "NOT_MESH",
    "ArrayTypeError",
    "BatchShapeError",
    "ConfigError",
    "DecoderFinishedError",
    "DuplicateMetricError",
    "ExpressionError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "InvalidLabelsError",
    "InvalidMetricError",
    "InvalidSampleError",
    "MeshstatsCollector",
    "GrpcStream",
    "MeshstatsError",
    "MetricsServer",
    "MissingExtraError",
    "ServerStats",
    "PeerContext",
    "PeerExchange",
    "PeerExchangeError",
    "PeerMetadata",
    "PeerMetadataTypeError",
    "StoreFileError",
    "PeerPrefixDecoder",
    "StatsConfig",
    "StatsEngine",
    "Store",
    "TcpConnection",
    "UnknownSeriesError",
    "WorkloadRegistry",
    "decode_peer_header",
    "decode_peer_prefix",
    "encode_peer_header",
    "encode_peer_prefix",
    "namespace_from_principal",
    "negotiate",
    "serve_in_background",
]
