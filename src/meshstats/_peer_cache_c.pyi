"""The engine's peer-context cache, compiled; the same API as ``_peer_cache_py``.

>>> from meshstats._peer_cache_c import PeerCache
>>> cache = PeerCache(lambda reporter, *rest: [reporter], capacity=2)
>>> cache.peer("inbound", None, cache_key="a") is cache.peer("inbound", None, cache_key="a")
True
"""

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["PeerCache"]

class PeerCache:
    """Peer contexts by the arguments that select them, least recently used first out."""

    hits: int
    misses: int

    def __init__(self, build: Callable[..., Any], capacity: int) -> None: ...
    def __len__(self) -> int: ...
    def peer(
        self,
        reporter: str,
        metadata: Any = None,
        *,
        peer_principal: str | None = None,
        cluster_name: str | None = None,
        cluster_metadata: Mapping[str, Any] | None = None,
        route_name: str | None = None,
        upstream_metadata: Any = None,
        upstream_principal: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        peer_address: str | None = None,
        cache_key: Any = None,
    ) -> Any: ...
    def clear(self) -> None: ...
