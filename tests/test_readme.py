"""The README's code runs as written, and its demo sample has the demo's shape.

Covered: every ```python block (each in a fresh interpreter, from a folder holding a copy
of ``examples/``), the ```bash blocks of "Exchange peer metadata" (``meshstats decode``)
and "Run a sidecar" (certificates, two sidecars, a request through them, the metrics), and
the demo's sample output (line by line, numbers and column widths aside). Not run here:
the quick start (it makes a virtualenv and installs from PyPI, and its second command is
what ``.ci/run`` runs anyway) and the benchmark commands (minutes of measuring; CI runs
each benchmark once through ``pytest benchmarks``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import meshstats

ROOT = Path(__file__).resolve().parent.parent
SRC = str(Path(meshstats.__file__).resolve().parent.parent)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)

pytestmark = pytest.mark.timing  # real sockets and child processes


def blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [body for lang, body in FENCE.findall(text) if lang == language]


def not_run(body: str) -> str | None:
    """Why a bash block is left out, or None."""
    if re.search(r"pip install '?\.", body):
        return "the quick start: a virtualenv and PyPI (its test command is .ci/run)"
    if "benchmark" in body or "bench_table" in body:
        return "benchmarks take minutes"
    return None


BASH = [b for b in blocks("bash") if not_run(b) is None]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder like the checkout's root, as far as the README's code needs one."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # `meshstats` and `python3` are this interpreter with this meshstats, not whatever
    # PATH would find: the test checks this checkout (or the installed sdist).
    for name, command in (("meshstats", "-m meshstats"), ("python3", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {command} "$@"\n')
        shim.chmod(0o755)
    return tmp_path


def environment(workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": SRC,
        "PATH": f"{workdir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def test_the_blocks_are_found() -> None:
    assert len(blocks("python")) >= 3
    assert [b for b in blocks("bash") if not_run(b)]  # the left-out ones exist, and are named
    assert any("meshstats sidecar" in b for b in BASH)
    assert any("meshstats decode" in b for b in BASH)


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs(index: int, workdir: Path) -> None:
    code = blocks("python")[index]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=workdir,
        env=environment(workdir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{code}\n{result.stderr}"


@pytest.mark.parametrize("index", range(len(BASH)))
def test_bash_block_runs(index: int, workdir: Path) -> None:
    code = BASH[index]
    # The harness's own lines: stop at the first failure, and leave no background job.
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + code
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=workdir,
        env=environment(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so cleanup reaches every job
    )
    try:
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, f"{code}\n--- stdout\n{out}\n--- stderr\n{err}"
    if "meshstats sidecar" in code:
        line = next(x for x in out.splitlines() if x.startswith("istio_requests_total{"))
        assert 'reporter="source"' in line and 'response_code="200"' in line
        assert (
            'source_principal="spiffe://cluster.local/ns/default/sa/bookinfo-productpage"' in line
        )
        assert 'destination_workload="reviews-v1"' in line
    if "meshstats decode" in code:
        assert '"NAME": "pod-1"' in out


def _pattern(line: str) -> re.Pattern[str]:
    """A sample line as a regex: any number where it has one, any run of blanks."""
    parts = re.split(r"(\d+(?:\.\d+)?|\s+)", line.strip())
    out = []
    for part in parts:
        if not part:
            continue
        if part.isspace():
            out.append(r"\s+")
        elif re.fullmatch(r"\d+(?:\.\d+)?", part):
            out.append(r"\d+(?:\.\d+)?")
        else:
            out.append(re.escape(part))
    # The pure-Python leg prints its own backend name there.
    regex = "".join(out).replace(r"backend:\s+compiled", r"backend:\s+.+")
    return re.compile(regex + r"\Z")


def test_the_demo_sample_is_what_the_demo_prints() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = text[text.index("## Quick start") :]
    sample = next(body for lang, body in FENCE.findall(quick_start) if lang == "")
    lines = [x for x in sample.splitlines() if x.strip()]
    result = subprocess.run(
        [sys.executable, "-m", "meshstats", "demo", "--duration", "1", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert result.returncode == 0, result.stderr
    err = [x for x in result.stderr.splitlines() if x.strip()]
    out = [x for x in result.stdout.splitlines() if x.strip()]
    # stderr: the banner first, the progress last; then stdout, line for line.
    assert _pattern(lines[0]).match(err[0].strip()), (lines[0], err[0])
    assert _pattern(lines[1]).match(err[-1].strip()), (lines[1], err[-1])
    assert len(out) == len(lines) - 2, (out, lines)
    for expected, got in zip(lines[2:], out):
        assert _pattern(expected).match(got.strip()), (expected, got)
