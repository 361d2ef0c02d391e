"""The engine's peer-context cache, compiled; the same class and API as ``_peer_cache_py``.

>>> from meshstats._peer_cache_c import PeerCache
>>> cache = PeerCache(lambda reporter, *rest: [reporter], capacity=2)
>>> a = cache.peer("inbound", None, cache_key="a")
>>> cache.peer("inbound", None, cache_key="a") is a, cache.hits, cache.misses
(True, 1, 1)

Compiled because a proxy asks for a cached peer once per connection (or per request), and
a Python-level call with eleven keyword parameters costs as much as the lookup itself: here
the arguments are parsed in C and a hit runs no bytecode. See ``_peer_cache_py`` for the
semantics (least recently used, keyed on the selecting arguments, not thread-safe alone).
"""

cdef class PeerCache:
    cdef object _build
    cdef Py_ssize_t _capacity
    cdef dict _entries
    cdef public Py_ssize_t hits
    cdef public Py_ssize_t misses

    def __init__(self, build, Py_ssize_t capacity):
        self._build = build
        self._capacity = capacity
        self._entries = {}
        self.hits = 0
        self.misses = 0

    def __len__(self):
        return len(self._entries)

    def peer(
        self,
        reporter,
        metadata=None,
        *,
        peer_principal=None,
        cluster_name=None,
        cluster_metadata=None,
        route_name=None,
        upstream_metadata=None,
        upstream_principal=None,
        attributes=None,
        peer_address=None,
        cache_key=None,
    ):
        """The context for these arguments: kept if ``cache_key`` is given, else built anew."""
        if cache_key is None:
            return self._build(
                reporter, metadata, peer_principal, cluster_name, cluster_metadata,
                route_name, upstream_metadata, upstream_principal, attributes, peer_address,
            )
        key = (reporter, cache_key, peer_principal, cluster_name, route_name, upstream_principal)
        cdef dict entries = self._entries
        ctx = entries.pop(key, None)
        if ctx is not None:
            entries[key] = ctx
            self.hits += 1
            return ctx
        self.misses += 1
        ctx = self._build(
            reporter, metadata, peer_principal, cluster_name, cluster_metadata,
            route_name, upstream_metadata, upstream_principal, attributes, peer_address,
        )
        entries[key] = ctx
        if len(entries) > self._capacity:
            del entries[next(iter(entries))]
        return ctx

    def clear(self):
        """Forget every context (counters kept)."""
        self._entries.clear()
