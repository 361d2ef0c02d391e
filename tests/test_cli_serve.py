"""``meshstats serve --store``: one scrape for every worker process of a shared store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import Backend
from test_store_shared import Worker, samples


def _serve(path: str, env_backend: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    if env_backend == "py":
        env["MESHSTATS_NO_EXTENSIONS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshstats", "serve", "--store", path, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith(f"serving {path} at http://127.0.0.1:"), line
    return proc, line.rsplit(" ", 1)[1]


def test_serve_renders_what_every_worker_recorded(backend: Backend, tmp_path: Path) -> None:
    path = str(tmp_path / "pool.store")
    proc, url = _serve(path, backend.name)
    try:
        workers = [Worker(backend, path, "record", f"w{k}", "200") for k in range(3)]
        for w in workers:
            w.finish()
        with urllib.request.urlopen(url, timeout=60) as response:
            got = samples(response.read())
        assert sum(v for (name, _), v in got.items() if name == "jobs_total") == 3 * 200 * 3
        assert got[("job_ms_count", (("worker", "w1-3"),))] == 10
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_serve_refuses_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"x" * 1000)
    done = subprocess.run(
        [sys.executable, "-m", "meshstats", "serve", "--store", str(junk), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr == f"meshstats serve: {junk}: not a meshstats store (no magic at offset 0)\n"
