"""Selects the series store backend once, at import (see ``_backend``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backend import load

if TYPE_CHECKING:
    COMPILED: bool
    from ._store_py import DEFAULT_BUCKETS, DEFAULT_MAX_EXPOSITION_BYTES, Store
else:
    _impl, COMPILED = load("_store_c", "_store_py")
    Store = _impl.Store
    DEFAULT_BUCKETS = _impl.DEFAULT_BUCKETS
    DEFAULT_MAX_EXPOSITION_BYTES = _impl.DEFAULT_MAX_EXPOSITION_BYTES

__all__ = ["DEFAULT_BUCKETS", "DEFAULT_MAX_EXPOSITION_BYTES", "Store"]
