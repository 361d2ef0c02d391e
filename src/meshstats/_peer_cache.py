"""Selects the peer-context cache: compiled unless the extensions are off or missing."""

from __future__ import annotations

from . import _peer_cache_py
from ._backend import load

__all__ = ["PeerCache", "COMPILED"]

_impl, COMPILED = load("_peer_cache_c", "_peer_cache_py")
PeerCache: type[_peer_cache_py.PeerCache] = _impl.PeerCache
