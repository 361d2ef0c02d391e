"""Selects the HTTP/1.1 connection's backend once, at import (see ``_backend``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backend import load

if TYPE_CHECKING:
    COMPILED: bool
    from ._h1_conn_py import Connection
else:
    _impl, COMPILED = load("_h1_conn_c", "_h1_conn_py")
    Connection = _impl.Connection

__all__ = ["COMPILED", "Connection"]
