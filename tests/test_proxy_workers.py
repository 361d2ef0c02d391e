"""A sidecar with ``workers: 3``: three processes on one port (SO_REUSEPORT), one shared
store, one admin port. Real processes and sockets; nothing waits on a clock but the
generous polling deadline of ``wait_until``."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Backend, wait_until
from embed_support import samples, total

NODE = {"WORKLOAD_NAME": "ratings-v1", "NAMESPACE": "default", "LABELS": {"app": "ratings"}}


class _App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b"ok"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def app() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connections_by_pid(pids: list[int], port: int) -> dict[int, int]:
    """Established connections to ``port`` each process holds (from /proc)."""
    inodes = {}
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == port and fields[3] == "01":
                inodes[fields[9]] = True
    held = {}
    for pid in pids:
        count = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                count += 1
        held[pid] = count
    return held


def test_three_workers_one_port_one_store(backend: Backend, app: int, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "sidecar.json"
    config.write_text(
        json.dumps(
            {
                "node": NODE,
                "inbound": {"port": port, "app": ["127.0.0.1", app], "protocol": "http"},
                "admin_port": 0,
                "workers": 3,
            }
        )
    )
    env = dict(os.environ)
    env.pop("MESHSTATS_NO_EXTENSIONS", None)
    if backend.name == "py":
        env["MESHSTATS_NO_EXTENSIONS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshstats", "sidecar", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("principal"):
            line = proc.stdout.readline()
            assert line, f"sidecar exited early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line.strip())
        assert lines[0] == f"inbound 127.0.0.1:{port} -> 127.0.0.1:{app} http (mtls off)"
        admin = next(line.split()[1] for line in lines if line.startswith("admin"))
        workers_line = next(line for line in lines if line.startswith("workers"))
        pids = [int(p) for p in workers_line.split("(pids ")[1].split(")")[0].split()]
        store_path = workers_line.rsplit(" ", 1)[1]
        assert len(pids) == 3 and os.path.exists(store_path)

        def scrape() -> float:
            with urllib.request.urlopen(admin, timeout=60) as resp:
                return total(samples(resp.read()), "istio_requests_total", response_code="200")

        # 12 keep-alive connections, one request each, all held open: the kernel spreads
        # them over the workers' sockets.
        conns = []
        for _ in range(12):
            c = socket.create_connection(("127.0.0.1", port), timeout=60)
            c.sendall(b"GET / HTTP/1.1\r\nhost: ratings\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
            conns.append(c)
        held = connections_by_pid(pids, port)
        assert sum(held.values()) == 12 and sum(1 for n in held.values() if n) >= 2, held
        for c in conns:
            c.close()
        wait_until(lambda: scrape() == 12, "12 requests in the one admin scrape")

        # A worker killed outright is replaced; requests go on; counts go on from 12.
        os.kill(pids[0], signal.SIGKILL)
        assert proc.stderr is not None
        replaced = proc.stderr.readline()
        assert f"worker {pids[0]} exited with status -9; starting another" in replaced
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
                c.sendall(b"GET / HTTP/1.1\r\nhost: ratings\r\nconnection: close\r\n\r\n")
                assert c.recv(4096).startswith(b"HTTP/1.1 200")
        wait_until(lambda: scrape() == 32, "32 requests after a worker was replaced")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not os.path.exists(store_path)  # its own store, removed at the end
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
