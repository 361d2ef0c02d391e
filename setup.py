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
from setuptools.command.build_ext import build_ext as _build_ext

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
    # The sidecar's HTTP/1.1 heads: the grammar in C, the lists built by the glue.
    ("meshstats._h1_head_c", "src/meshstats/_h1_head_c.pyx", ["_core/h1_head.c"]),
    # The connection's state machine over those heads: Python objects only, no _core.
    ("meshstats._h1_conn_c", "src/meshstats/_h1_conn_c.pyx", []),
    # The HTTP/2 connection (frames, states, windows); HPACK stays hpack's.
    ("meshstats.proxy._h2_conn_c", "src/meshstats/proxy/_h2_conn_c.pyx", []),
    # Python objects only (contexts in a dict): compiled for the argument parsing, no _core.
    ("meshstats._peer_cache_c", "src/meshstats/_peer_cache_c.pyx", []),
]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _extensions() -> list[Extension]:
    if _flag("MESHSTATS_NO_EXTENSIONS") or platform.python_implementation() != "CPython":
        print("meshstats: building the pure-Python backend only", file=sys.stderr)
        return []
    debug = _flag("MESHSTATS_DEBUG_BUILD")
    cflags = ["-std=c11", "-Wall", "-Wno-unused-function"]
    # Release builds carry no debug info (-g0 after Python's own -g wins; -s strips at
    # link): it was 2.5 MB of a 2.9 MB wheel.
    cflags += ["-O0", "-g3", "-UNDEBUG"] if debug else ["-O2", "-g0"]
    return [
        Extension(
            name,
            [pyx, *core],
            include_dirs=["_core"],
            extra_compile_args=cflags,
            extra_link_args=[] if debug else ["-s"],
            depends=[os.path.join("_core", h) for h in os.listdir("_core") if h.endswith(".h")],
        )
        for name, pyx, core in EXTENSIONS
    ]


class build_ext(_build_ext):  # noqa: N801 - the command's own name
    """Cythonize when compiling, not when setup.py merely runs: an sdist ships the .pyx
    sources (and needs no Cython), so ``python -m build --sdist`` does no Cython work."""

    def run(self) -> None:
        # Here, not in finalize_options: sdist finalizes build_ext to list the sources.
        if self.extensions:
            from Cython.Build import cythonize

            debug = _flag("MESHSTATS_DEBUG_BUILD")
            directives = {
                "language_level": 3,
                "embedsignature": True,
                "boundscheck": debug,
                "wraparound": debug,
                "initializedcheck": debug,
                "cdivision": True,
            }
            print(
                f"meshstats: building the compiled backend ({'debug' if debug else 'release'})",
                file=sys.stderr,
            )
            translated = cythonize(
                self.extensions,
                compiler_directives=directives,
                annotate=_flag("MESHSTATS_CYTHON_ANNOTATE"),
                quiet=True,
            )
            # Keep the Extension objects finalize_options() prepared; take only the .c.
            sources = {ext.name: ext.sources for ext in translated}
            for ext in self.extensions:
                ext.sources = sources[ext.name]
        super().run()


setup(ext_modules=_extensions(), cmdclass={"build_ext": build_ext})
