"""The engine's peer-context cache, pure Python; ``_peer_cache_c`` is the same class compiled.

>>> from meshstats._peer_cache_py import PeerCache
>>> built = []
>>> def build(reporter, metadata, *rest):
...     built.append(reporter)
...     return object()
>>> cache = PeerCache(build, capacity=2)
>>> a = cache.peer("inbound", {"NAME": "a"}, cache_key="a")
>>> cache.peer("inbound", {"NAME": "a"}, cache_key="a") is a, cache.hits, cache.misses
(True, 1, 1)
>>> _ = cache.peer("inbound", None)  # no cache key: always built, never kept
>>> len(built), len(cache)
(2, 1)

A hit is one lookup keyed on the arguments that select a context (reporter, cache key,
principals, cluster and route names); the metadata itself is not compared: the cache key
stands for it, as ``x-envoy-peer-metadata-id`` stands for the peer's metadata. The cache is
least recently used: a hit moves its entry to the young end (a dict keeps insertion order,
so popping and inserting again is the move), and an insertion beyond ``capacity`` drops
the oldest. Not thread-safe on its own; the engine is used from one thread or under the GIL
(a race costs at most a context built twice).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["PeerCache"]

Build = Callable[..., Any]


class PeerCache:
    """Peer contexts by the arguments that select them, least recently used first out."""

    def __init__(self, build: Build, capacity: int) -> None:
        self._build = build
        self._capacity = capacity
        self._entries: dict[Any, Any] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

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
    ) -> Any:
        """The context for these arguments: kept if ``cache_key`` is given, else built anew."""
        if cache_key is None:
            return self._build(
                reporter, metadata, peer_principal, cluster_name, cluster_metadata,
                route_name, upstream_metadata, upstream_principal, attributes, peer_address,
            )  # fmt: skip
        key = (reporter, cache_key, peer_principal, cluster_name, route_name, upstream_principal)
        entries = self._entries
        ctx = entries.pop(key, None)
        if ctx is not None:
            entries[key] = ctx
            self.hits += 1
            return ctx
        self.misses += 1
        ctx = self._build(
            reporter, metadata, peer_principal, cluster_name, cluster_metadata,
            route_name, upstream_metadata, upstream_principal, attributes, peer_address,
        )  # fmt: skip
        entries[key] = ctx
        if len(entries) > self._capacity:
            del entries[next(iter(entries))]
        return ctx

    def clear(self) -> None:
        """Forget every context (counters kept)."""
        self._entries.clear()
