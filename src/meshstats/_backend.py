"""Decides once, at import, whether the compiled modules are used.

``MESHSTATS_NO_EXTENSIONS=1`` (any value but ``0``/``false``/``no``) forces the
pure-Python twins; so does a runtime other than CPython. A missing compiled module
(``ImportError``) falls back silently: ``meshstats.HAS_EXTENSION`` tells which ran.
"""

from __future__ import annotations

import os
import platform
from types import ModuleType


def extensions_disabled() -> bool:
    value = os.environ.get("MESHSTATS_NO_EXTENSIONS", "").strip().lower()
    if value not in ("", "0", "false", "no"):
        return True
    return platform.python_implementation() != "CPython"


def load(compiled: str, pure: str) -> tuple[ModuleType, bool]:
    """Return ``(module, is_compiled)`` for a pair like ``("_store_c", "_store_py")``."""
    import importlib

    if not extensions_disabled():
        try:
            return importlib.import_module(f"meshstats.{compiled}"), True
        except ImportError:
            pass
    return importlib.import_module(f"meshstats.{pure}"), False
