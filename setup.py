"""Build script: declares the compiled modules only; metadata lives in pyproject.toml.

Environment switches (read here and, for the first one, again at import):

* ``MESHSTATS_NO_EXTENSIONS=1``: build nothing compiled; the pure-Python twins run.
* ``MESHSTATS_DEBUG_BUILD=1``: ``-O0 -g3 -UNDEBUG`` and Cython's bounds checks back on.
* ``MESHSTATS_CYTHON_ANNOTATE=1``: write Cython's HTML annotation next to each ``.pyx``.
"""

from __future__ import annotations

import os
import platform
import sys

from setuptools import Extension, setup

# Each compiled module: (dotted name, its .pyx, the _core C sources it links).
EXTENSIONS: list[tuple[str, str, list[str]]] = [
    ("meshstats._store_c", "src/meshstats/_store_c.pyx", ["_core/store.c", "_core/render.c"]),
    (
        "meshstats._peer_exchange_c",
        "src/meshstats/_peer_exchange_c.pyx",
        ["_core/peer_exchange.c"],
    ),
    # Records through store_internal.h's inline calls into the store's memory: no store.c.
    ("meshstats._requests_c", "src/meshstats/_requests_c.pyx", ["_core/request_table.c"]),
    # Python objects only (contexts in a dict): compiled for the argument parsing, no _core.
    ("meshstats._peer_cache_c", "src/meshstats/_peer_cache_c.pyx", []),
]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _extensions() -> list[Extension]:
    if _flag("MESHSTATS_NO_EXTENSIONS") or platform.python_implementation() != "CPython":
        print("meshstats: building the pure-Python backend only", file=sys.stderr)
        return []
    from Cython.Build import cythonize

    debug = _flag("MESHSTATS_DEBUG_BUILD")
    cflags = ["-std=c11", "-Wall", "-Wno-unused-function"]
    cflags += ["-O0", "-g3", "-UNDEBUG"] if debug else ["-O2"]
    directives = {
        "language_level": 3,
        "embedsignature": True,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": True,
    }
    exts = [
        Extension(
            name,
            [pyx, *core],
            include_dirs=["_core"],
            extra_compile_args=cflags,
            depends=[os.path.join("_core", h) for h in os.listdir("_core") if h.endswith(".h")],
        )
        for name, pyx, core in EXTENSIONS
    ]
    print(
        f"meshstats: building the compiled backend ({'debug' if debug else 'release'})",
        file=sys.stderr,
    )
    return cythonize(
        exts,
        compiler_directives=directives,
        annotate=_flag("MESHSTATS_CYTHON_ANNOTATE"),
        quiet=True,
    )


setup(ext_modules=_extensions())
