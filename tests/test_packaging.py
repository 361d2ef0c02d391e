"""What a wheel and an sdist carry: the license, stripped modules, a quiet manifest.

The compiled modules in use must have no debug sections (release builds are made with
``-g0`` and linked with ``-s``; debug info was 2.5 MB of a 2.9 MB wheel). Every pattern in
``MANIFEST.in`` must match a tracked file, since setuptools warns about each one that does
not (twice per sdist build).
"""

from __future__ import annotations

import fnmatch
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

import meshstats

ROOT = Path(__file__).resolve().parent.parent


def _section_names(path: Path) -> list[str]:
    """Section names of a 64-bit little-endian ELF file (all this project builds)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, path
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]
    names = []
    for name_offset, *_rest in headers:
        end = data.index(b"\0", strtab + name_offset)
        names.append(data[strtab + name_offset : end].decode())
    return names


@pytest.mark.c_extension
def test_compiled_modules_carry_no_debug_info() -> None:
    from meshstats import (
        _h1_conn_c,
        _h1_head_c,
        _peer_cache_c,
        _peer_exchange_c,
        _requests_c,
        _store_c,
    )
    from meshstats.proxy import _h2_conn_c

    debug_build = os.environ.get("MESHSTATS_DEBUG_BUILD", "") not in ("", "0")
    compiled = (
        _store_c, _peer_exchange_c, _requests_c, _peer_cache_c, _h1_head_c, _h1_conn_c, _h2_conn_c
    )  # fmt: skip
    for module in compiled:
        assert module.__file__ is not None
        names = _section_names(Path(module.__file__))
        assert ".text" in names  # really parsed
        debug = [n for n in names if n.startswith(".debug") or n == ".symtab"]
        assert bool(debug) == debug_build, (module.__name__, debug)


def test_the_license_is_the_one_the_metadata_names() -> None:
    project = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+; 3.10 is supported
    assert '\nlicense = "Apache-2.0"\n' in project
    assert '\nlicense-files = ["LICENSE"]\n' in project
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text


def test_every_manifest_pattern_matches_a_tracked_file() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        command, args = words[0], words[1:]
        # Only includes: an exclude or prune that matches nothing warns as well.
        assert command in ("include", "recursive-include"), line
        if command == "include":
            for name in args:
                assert name in tracked, line
            continue
        folder, patterns = args[0], args[1:]
        inside = [f[len(folder) + 1 :] for f in tracked if f.startswith(folder + "/")]
        for pattern in patterns:
            assert any(fnmatch.fnmatch(Path(f).name, pattern) for f in inside), (line, pattern)


def test_the_package_version_is_the_project_version() -> None:
    version = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None and meshstats.__version__ == version[1]
