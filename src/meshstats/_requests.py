"""Selects the request tables for a store: compiled for the compiled store, else the twin.

The choice follows the store, not only the import-time backend: an engine may be given
either backend's store (the tests give both), and the compiled table records through the
compiled store's C pointer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _requests_py
from ._backend import load
from ._requests_py import BLOCK_MAX

__all__ = ["BLOCK_MAX", "COMPILED_RECORD_REQUEST", "Tables"]

_impl, COMPILED = load("_requests_c", "_requests_py")

#: ``StatsEngine.record_request`` compiled (``_requests_c.record_request``), which the engine
#: uses in place of its Python method; None with the pure backend.
COMPILED_RECORD_REQUEST: Callable[..., None] | None = _impl.record_request if COMPILED else None


class Tables:
    """Makes an engine's request tables, of the store's kind, counting hits in one place."""

    def __init__(self, store: Any, max_entries: int = 4096) -> None:
        impl: Any = _requests_py
        if COMPILED:
            from ._store_c import Store as CStore

            if type(store) is CStore:
                impl = _impl
        self._impl, self._store, self._max = impl, store, max_entries
        self._hits = impl.HitCounter()

    @property
    def hits(self) -> int:
        """Requests recorded through any of the tables made here."""
        return int(self._hits.value)

    def new(self) -> Any:
        """A new, empty table."""
        return self._impl.RequestTable(self._store, self._max, self._hits)
