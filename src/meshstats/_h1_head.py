"""Selects the HTTP/1.1 head parser's backend once, at import (see ``_backend``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backend import load

if TYPE_CHECKING:
    COMPILED: bool
    from ._h1_head_py import NOTED, note_fields, parse_fields, parse_head, write_fields
else:
    _impl, COMPILED = load("_h1_head_c", "_h1_head_py")
    NOTED = _impl.NOTED
    parse_fields = _impl.parse_fields
    parse_head = _impl.parse_head
    note_fields = _impl.note_fields
    write_fields = _impl.write_fields

__all__ = ["COMPILED", "NOTED", "note_fields", "parse_fields", "parse_head", "write_fields"]
