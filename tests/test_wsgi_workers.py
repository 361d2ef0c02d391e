"""A real gunicorn with several worker processes, all recording into one shared store
(``StatsEngine(store=Store.shared(path))``): one scrape shows the exact totals."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import Backend, wait_until
from embed_support import DEADLINE, listening_socket, samples, total

HERE = Path(__file__).parent


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=DEADLINE) as r:
        body: bytes = r.read()
        return body


def test_gunicorn_workers_share_one_store(backend: Backend, tmp_path: Path) -> None:
    store_path = str(tmp_path / "workers.store")
    sock = listening_socket()
    sock.set_inheritable(True)
    env = dict(os.environ)
    env.pop("MESHSTATS_NO_EXTENSIONS", None)
    if backend.name == "py":
        env["MESHSTATS_NO_EXTENSIONS"] = "1"
    env["MESHSTATS_TEST_STORE"] = store_path
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "--bind", f"fd://{sock.fileno()}",
            "--workers", "3", "--worker-class", "sync", "--chdir", str(HERE),
            "--log-level", "warning", "flask_embed_app:app",
        ],
        pass_fds=[sock.fileno()],
        env=env,
    )  # fmt: skip
    port = int(sock.getsockname()[1])
    try:
        assert get(port, "/backend").decode() == backend.name
        # New connections until two workers have answered (each request on its own).
        pids: dict[str, int] = {}
        sent = 1  # the /backend above
        while len(pids) < 2 or sent < 30:
            assert sent < 3000, f"only worker {list(pids)} answered"
            pid = get(port, "/pid").decode()
            pids[pid] = pids.get(pid, 0) + 1
            sent += 1
        # A request is recorded when its worker closes it, after the client has the body:
        # wait for the last ones, then any worker's engine renders everyone's requests.
        shared = backend.store.Store.shared(store_path)

        def requests() -> float:
            return total(samples(shared.render()), "istio_requests_total", response_code="200")

        wait_until(lambda: requests() == sent, f"{sent} requests in the shared store")
        via_worker = samples(get(port, "/metrics"))  # rendered before it is recorded
        sent += 1
        wait_until(lambda: requests() == sent, "the /metrics request recorded too")
        found = samples(shared.render())
    finally:
        proc.terminate()
        proc.wait(DEADLINE)
        sock.close()
    assert total(found, "istio_requests_total", response_code="200") == sent
    assert total(via_worker, "istio_requests_total", response_code="200") == sent - 1
    assert total(found, "istio_request_duration_milliseconds_count") == sent
    # One istio_build series, whichever workers set it.
    assert total(found, "istio_build") == 1
