"""``meshstats demo``: the mesh's sidecars record exactly the traffic its apps exchanged.

In process (per backend): an exact number of requests into productpage through
:class:`~meshstats.cli.demo.DemoMesh`, then every edge's telemetry, on both reporters, is
compared with what the apps themselves counted (by status code, TCP bytes both ways). As a
command: ``python -m meshstats demo --duration 2 --port 0`` in a subprocess, its table read
back and checked for agreement between the sidecars, the apps and the edges.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import Backend
from proxy_support import run

import meshstats
from meshstats.cli.demo import (
    DETAILS,
    EDGES,
    MONGODB,
    PRODUCTPAGE,
    RATINGS,
    REVIEWS,
    DemoMesh,
    EdgeStats,
    Workload,
)
from meshstats.cli.demo_apps import EchoApp, HttpApp

pytestmark = pytest.mark.timing

# Where the tests import meshstats from (the checkout or the installed package).
SRC = str(Path(meshstats.__file__).resolve().parent.parent)
SENT = 60  # requests into productpage; a multiple of 3, so each reviews version gets 20


def series(mesh: DemoMesh, sidecar: str, family: str) -> list[tuple[dict[str, str], Any]]:
    out: list[tuple[dict[str, str], Any]] = []
    for name, _kind, _help, names, _b, values in mesh.sidecars[sidecar].engine.store.snapshot():
        if name == family:
            out.extend((dict(zip(names, labels)), value) for labels, value in values)
    return out


def codes(mesh: DemoMesh, sidecar: str, reporter: str, destination: Workload) -> Counter[int]:
    """``istio_requests_total`` of one sidecar towards one workload, by response code."""
    got: Counter[int] = Counter()
    for labels, value in series(mesh, sidecar, "istio_requests_total"):
        if labels["reporter"] == reporter and labels["destination_workload"] == destination.name:
            got[int(labels["response_code"])] += value
    return got


async def exact_traffic(backend: Backend) -> dict[str, Any]:
    async with DemoMesh(admin_port=0, jitter=0.0, store_factory=backend.store.Store) as mesh:
        # A few at a time, as a browser would; all answered before we look.
        for _ in range(SENT // 4):
            await asyncio.gather(
                *(mesh.client.get(mesh.entry, "/productpage", "productpage:9080") for _ in "abcd")
            )
        await mesh.settle()
        served = {n: Counter(a.served) for n, a in mesh.apps.items() if isinstance(a, HttpApp)}
        echo = mesh.apps[MONGODB.name]
        assert isinstance(echo, EchoApp)
        return {
            "served": served,
            "answered": Counter(mesh.client.answered),
            "entry": mesh.entry,
            "db": (mesh.db.bytes_out, mesh.db.bytes_in, mesh.db.connections),
            "echo": (echo.bytes_in, echo.bytes_out, echo.connections),
            "source": {
                (c.name, s.name): codes(mesh, c.name, "source", s)
                for c, s in EDGES
                if c is not None and s.protocol == "http"
            },
            "destination": {
                s.name: codes(mesh, s.name, "destination", s)
                for s in (PRODUCTPAGE, DETAILS, *REVIEWS, RATINGS)
            },
            "inbound_sources": {
                s.name: Counter(
                    labels["source_workload"]
                    for labels, _ in series(mesh, s.name, "istio_requests_total")
                    if labels["reporter"] == "destination"
                )
                for s in (PRODUCTPAGE, RATINGS)
            },
            "tcp": {
                (side, reporter, family): sum(
                    v
                    for labels, v in series(mesh, side, f"istio_tcp_{family}_total")
                    if labels["reporter"] == reporter
                )
                for side, reporter in ((RATINGS.name, "source"), (MONGODB.name, "destination"))
                for family in ("sent_bytes", "received_bytes", "connections_opened")
            },
            "principals": {
                labels["source_principal"]
                for labels, _ in series(mesh, MONGODB.name, "istio_tcp_connections_opened_total")
            },
        }


def test_every_edge_counts_what_the_apps_exchanged(backend: Backend) -> None:
    got = run(exact_traffic(backend))
    served = got["served"]
    # The ingress: our client got SENT answers, all 200, and productpage's inbound says so.
    assert sum(got["answered"].values()) == SENT
    assert got["destination"][PRODUCTPAGE.name] == Counter({200: SENT}) == served[PRODUCTPAGE.name]
    # A client from outside the mesh has no identity; reviews-v2/v3 call ratings.
    assert set(got["inbound_sources"][PRODUCTPAGE.name]) == {"unknown"}
    assert set(got["inbound_sources"][RATINGS.name]) == {REVIEWS[1].name, REVIEWS[2].name}

    # Each server's sidecar and its client's sidecar both count exactly what the app served.
    for client, server in [(PRODUCTPAGE, DETAILS), *((PRODUCTPAGE, r) for r in REVIEWS)]:
        assert got["source"][client.name, server.name] == served[server.name], server.name
        assert got["destination"][server.name] == served[server.name], server.name
    assert served[DETAILS.name] == Counter({200: SENT})
    assert [sum(served[r.name].values()) for r in REVIEWS] == [SENT // 3] * 3  # round robin
    assert served[REVIEWS[2].name][503] >= 1  # reviews-v3 fails every 20th: seen here

    # ratings is called only by the reviews requests that did not fail.
    from_reviews = [got["source"][r.name, RATINGS.name] for r in REVIEWS[1:]]
    assert [c[200] for c in from_reviews] == [served[r.name][200] for r in REVIEWS[1:]]
    assert sum(from_reviews, Counter()) == got["destination"][RATINGS.name] == served[RATINGS.name]

    # TCP: one connection ratings -> mongodb; bytes as each app counted them, both reporters.
    wrote, read, opened = got["db"]
    assert got["echo"] == (wrote, read, opened) == (got["echo"][0], got["echo"][1], 1)
    assert wrote > 0 and read > 0
    for side, reporter in ((RATINGS.name, "source"), (MONGODB.name, "destination")):
        tcp = got["tcp"]
        assert tcp[side, reporter, "connections_opened"] == 1
        assert tcp[side, reporter, "received_bytes"] == wrote  # from the client (downstream)
        assert tcp[side, reporter, "sent_bytes"] == read
    assert got["principals"] == {"spiffe://cluster.local/ns/default/sa/bookinfo-ratings"}


# -- the command -------------------------------------------------------------------------------

ROW = re.compile(
    r"^(?P<client>\S+) -> (?P<server>\S+)\s+(?P<requests>\d+)\s+(?P<rate>[\d.]+)%"
    r"\s+(?P<p50>[\d.]+|nan)\s+(?P<p99>[\d.]+|nan)\s+(?P<app>\d+)\s*$"
)
TCP_ROW = re.compile(
    r"^(?P<client>\S+) -> (?P<server>\S+)\s+(?P<conns>\d+) conn\s+(?P<app>\d+)"
    r"\s+(?P<up>\d+)/(?P<down>\d+) \(app (?P<app_up>\d+)/(?P<app_down>\d+)\)\s*$"
)


def demo(*args: str, backend: str = "c", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    if backend == "py":
        env["MESHSTATS_NO_EXTENSIONS"] = "1"
    else:
        env.pop("MESHSTATS_NO_EXTENSIONS", None)
    return subprocess.run(
        [sys.executable, "-m", "meshstats", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_demo_command_prints_a_consistent_table(backend: Backend) -> None:
    result = demo("--duration", "2", "--port", "0", backend=backend.name)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    out = result.stdout
    sent = re.search(r"(\d+) requests into productpage .*: (\d+) ok, 0 not 200, 0 broken", out)
    assert sent is not None, out
    rows = {}
    tcp = None
    for line in out.splitlines():
        if m := ROW.match(line):
            rows[m["client"], m["server"]] = EdgeStats(
                m["client"], m["server"], "http", requests=int(m["requests"]),
                app_requests=int(m["app"]),
            )  # fmt: skip
        elif m := TCP_ROW.match(line):
            tcp = m
    assert len(rows) == len(EDGES) - 1 and tcp is not None, out
    for edge in rows.values():  # the sidecar counted what the calling app got answers to
        assert edge.requests == edge.app_requests > 0, edge
    entry = rows["(outside)", PRODUCTPAGE.name].requests
    assert entry == int(sent[1]) == int(sent[2])
    assert rows[PRODUCTPAGE.name, DETAILS.name].requests == entry
    per_version = [rows[PRODUCTPAGE.name, r.name].requests for r in REVIEWS]
    assert sum(per_version) == entry and max(per_version) - min(per_version) <= 1
    for r in REVIEWS[1:]:  # only reviews that did not fail call ratings
        assert 0 < rows[r.name, RATINGS.name].requests <= rows[PRODUCTPAGE.name, r.name].requests
    assert (tcp["client"], tcp["server"], tcp["conns"], tcp["app"]) == (
        RATINGS.name, MONGODB.name, "1", "1",
    )  # fmt: skip
    assert tcp["up"] == tcp["app_up"] != "0" and tcp["down"] == tcp["app_down"] != "0"
    # Without --serve the mesh is gone once the table prints: no dead URLs, a pointer instead.
    assert "http://" not in out
    assert out.rstrip().endswith(
        "`meshstats demo --serve` keeps it up and lists where each sidecar serves its metrics"
    )
    assert ("backend: compiled" in out) == (backend.name == "c"), out
    # Progress reaches 100% however short the run (stderr is not a terminal here).
    assert result.stderr.splitlines()[-1].startswith("100% "), result.stderr


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = demo("--duration", "1", "--port", str(port - 6), timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # mongodb's port (the last of the seven) is bound first, so ours is the one named.
    assert f"port {port} (mongodb-v1's metrics port) is already in use" in result.stderr
    assert "--port 0" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "bad",
    [
        ("--duration", "x"),
        ("--duration", "0"),
        ("--duration", "-1"),
        ("--duration", "nan"),
        ("--duration", "inf"),
        ("--concurrency", "0"),
        ("--concurrency", "-3"),
        ("--concurrency", "2.5"),
        ("--port", "-"),
        ("--port", "-5"),
        ("--port", "65535"),
        ("--port", "65530"),
    ],
)
def test_bad_arguments_are_usage_errors(bad: tuple[str, str]) -> None:
    result = demo(*bad, timeout=30)
    assert result.returncode == 2 and "usage:" in result.stderr
    # As argparse users expect: the last line is the one error, naming the flag; no traceback.
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"meshstats demo: error: argument {bad[0]}: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_the_highest_first_port_is_accepted() -> None:
    from meshstats.cli.demo import MAX_FIRST_PORT, PORTS_TAKEN, _first_port

    assert MAX_FIRST_PORT + PORTS_TAKEN - 1 == 65535
    assert _first_port(str(MAX_FIRST_PORT)) == MAX_FIRST_PORT
    assert _first_port("0") == 0


def test_progress_reaches_100_percent_in_a_short_run() -> None:
    import io

    from meshstats.cli.demo import Progress

    stream = io.StringIO()
    progress = Progress(0.5, stream)
    progress.update(0.0, "0 requests")
    progress.update(0.4, "9 requests")
    progress.finish("12 requests")
    assert stream.getvalue().splitlines() == ["  0% 0 requests", "100% 12 requests"]
    # A run that already printed 100% does not print it twice.
    stream = io.StringIO()
    progress = Progress(1.0, stream)
    progress.update(1.0, "5 requests")
    progress.finish("5 requests")
    assert stream.getvalue().splitlines() == ["100% 5 requests"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_keeps_the_endpoints_up_until_signalled(sig: signal.Signals) -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    process = subprocess.Popen(
        [sys.executable, "-m", "meshstats", "demo", "--duration", "0.5", "--port", "0", "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("serving until"):
                break
        out = "".join(lines)
        url = re.search(r"productpage-v1\s+(http://\S+/stats/prometheus)", out)
        assert url is not None, out
        with urllib.request.urlopen(url[1], timeout=10) as response:  # still up after the load
            assert b'istio_requests_total{reporter="destination"' in response.read()
        process.send_signal(sig)
        assert process.wait(timeout=20) == 0
        assert process.stderr is not None
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
