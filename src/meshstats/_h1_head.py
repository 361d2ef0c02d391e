"""Selects the HTTP/1.1 head parser's backend once, at import (see ``_backend``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backend import load

if TYPE_CHECKING:
    COMPILED: bool
    from ._h1_head_py import NOTED, parse_fields, parse_head
else:
    _impl, COMPILED = load("_h1_head_c", "_h1_head_py")
    NOTED = _impl.NOTED
    parse_fields = _impl.parse_fields
    parse_head = _impl.parse_head

__all__ = ["COMPILED", "NOTED", "parse_fields", "parse_head"]
