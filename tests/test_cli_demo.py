"""``meshstats demo``: the mesh's proxies record exactly the traffic its apps exchanged.

In process (per backend): an exact number of requests through the ingress gateway into
productpage with :class:`~meshstats.cli.demo.DemoMesh`, then every edge's telemetry, on both
reporters, is compared with what the apps themselves counted (by status code, gRPC messages,
TCP connections opened and closed, TCP bytes both ways). As a command: ``python -m meshstats
demo --duration 2 --port 0`` in a subprocess, its table read back and checked for agreement
between the proxies, the apps and the edges; and once with grpcio hidden.
"""

from __future__ import annotations

import asyncio
import math
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
from meshstats.cli import demo as demo_module
from meshstats.cli.demo import (
    DETAILS,
    EDGES,
    GATEWAY,
    MONGODB,
    NOT_FOUND_EVERY,
    PRODUCTPAGE,
    RATINGS,
    RECOMMENDATIONS,
    RECOMMENDED,
    REVIEWS,
    SHOWN,
    DemoMesh,
    EdgeStats,
    Workload,
)
from meshstats.cli.demo_apps import EchoApp, HttpApp
from meshstats.errors import MissingExtraError

pytestmark = pytest.mark.timing

# Where the tests import meshstats from (the checkout or the installed package).
SRC = str(Path(meshstats.__file__).resolve().parent.parent)
SENT = 60  # requests into the gateway; a multiple of 3, so each reviews version gets 20
DB_QUERIES = 10  # per mongodb connection: ratings' 39 queries take 4 connections, 3 closed
GATEWAY_SA = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
PRODUCTPAGE_SA = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
RECOMMENDATIONS_SA = "spiffe://cluster.local/ns/default/sa/bookinfo-recommendations"
HTTP_SERVERS = (PRODUCTPAGE, DETAILS, *REVIEWS, RATINGS)


def series(mesh: DemoMesh, workload: Workload, family: str) -> list[tuple[dict[str, str], Any]]:
    out: list[tuple[dict[str, str], Any]] = []
    for name, _kind, _help, names, _b, values in mesh.engine(workload).store.snapshot():
        if name == family:
            out.extend((dict(zip(names, labels)), value) for labels, value in values)
    return out


def codes(mesh: DemoMesh, side: Workload, reporter: str, destination: Workload) -> Counter[int]:
    """``istio_requests_total`` of one side towards one workload, by response code."""
    got: Counter[int] = Counter()
    for labels, value in series(mesh, side, "istio_requests_total"):
        if labels["reporter"] == reporter and labels["destination_workload"] == destination.name:
            got[int(labels["response_code"])] += value
    return got


def total(mesh: DemoMesh, side: Workload, family: str, **want: str) -> int:
    return sum(
        v
        for labels, v in series(mesh, side, family)
        if all(labels.get(k) == x for k, x in want.items())
    )


def grpc_view(mesh: DemoMesh, side: Workload, reporter: str) -> dict[str, Any]:
    """What one end of the gRPC edge recorded: calls by (code, gRPC status, protocol), the
    message counts, and the labels that tell who the peer was."""
    calls: Counter[tuple[str, str, str]] = Counter()
    peers: set[tuple[str, ...]] = set()
    for labels, value in series(mesh, side, "istio_requests_total"):
        if (
            labels["reporter"] == reporter
            and labels["destination_workload"] == RECOMMENDATIONS.name
        ):
            key = (
                labels["response_code"],
                labels["grpc_response_status"],
                labels["request_protocol"],
            )
            calls[key] += value
            peer = ("source_workload", "source_principal", "connection_security_policy",
                    "destination_service", "destination_principal",
                    "response_flags")  # fmt: skip
            peers.add(tuple(labels[k] for k in peer))
    messages = {
        family: total(
            mesh,
            side,
            f"istio_{family}_messages_total",
            reporter=reporter,
            destination_workload=RECOMMENDATIONS.name,
        )
        for family in ("request", "response")
    }
    return {"calls": calls, "peers": peers, "messages": messages}


async def exact_traffic(backend: Backend) -> dict[str, Any]:
    async with DemoMesh(
        admin_port=0,
        jitter=0.0,
        store_factory=backend.store.Store,
        db_queries_per_connection=DB_QUERIES,
    ) as mesh:
        assert mesh.has_grpc  # grpcio is a test requirement
        # A few at a time, as a browser would; all answered before we look.
        for _ in range(SENT // 4):
            await asyncio.gather(
                *(mesh.client.get(mesh.entry, "/productpage", "productpage:9080") for _ in "abcd")
            )
        await mesh.settle()
        served = {n: Counter(a.served) for n, a in mesh.apps.items() if isinstance(a, HttpApp)}
        echo = mesh.apps[MONGODB.name]
        assert isinstance(echo, EchoApp)
        assert mesh.recommendations is not None and mesh.recommender is not None
        rec, asked = mesh.recommendations, mesh.recommender
        inbound = mesh.sidecars[RECOMMENDATIONS.name].config.inbound
        assert inbound is not None
        return {
            "served": served,
            "answered": Counter(mesh.client.answered),
            "db": (mesh.db.bytes_out, mesh.db.bytes_in, mesh.db.connections, mesh.db.closed),
            "echo": (echo.bytes_in, echo.bytes_out, echo.connections),
            "grpc_app": {
                "client": (dict(asked.answered), asked.messages_out, asked.messages_in),
                "server": (rec.served, rec.messages_in, rec.messages_out),
            },
            # productpage's client calls its own sidecar; recommendations has one in front
            "grpc_sidecars": (
                asked.address == ("127.0.0.1", mesh.sidecars[PRODUCTPAGE.name].outbound_ports[-1]),
                inbound.app == ("127.0.0.1", rec.port),
            ),
            "grpc": {
                "source": grpc_view(mesh, PRODUCTPAGE, "source"),
                "destination": grpc_view(mesh, RECOMMENDATIONS, "destination"),
            },
            "source": {
                (c.name, s.name): codes(mesh, c, "source", s)
                for c, s in EDGES
                if s.protocol == "http"
            },
            "destination": {s.name: codes(mesh, s, "destination", s) for s in HTTP_SERVERS},
            "inbound_sources": {
                s.name: Counter(
                    (labels["source_workload"], labels["source_principal"])
                    for labels, _ in series(mesh, s, "istio_requests_total")
                    if labels["reporter"] == "destination"
                )
                for s in (PRODUCTPAGE, RATINGS)
            },
            "gateway_labels": {
                (
                    labels["source_workload"],
                    labels["source_workload_namespace"],
                    labels["source_app"],
                    labels["source_canonical_revision"],
                    labels["destination_service"],
                )
                for labels, _ in series(mesh, GATEWAY, "istio_requests_total")
            },
            "gateway_reporters": {
                labels["reporter"] for labels, _ in series(mesh, GATEWAY, "istio_requests_total")
            },
            "tcp": {
                (side.name, reporter, family): total(
                    mesh, side, f"istio_tcp_{family}_total", reporter=reporter
                )
                for side, reporter in ((RATINGS, "source"), (MONGODB, "destination"))
                for family in (
                    "sent_bytes",
                    "received_bytes",
                    "connections_opened",
                    "connections_closed",
                )  # fmt: skip
            },
            "principals": {
                labels["source_principal"]
                for labels, _ in series(mesh, MONGODB, "istio_tcp_connections_opened_total")
            },
        }


def test_every_edge_counts_what_the_apps_exchanged(backend: Backend) -> None:
    got = run(exact_traffic(backend))
    served = got["served"]
    # The entry: our client got SENT answers, all 200, and both ends of the gateway's
    # edge say so: the gateway reports as a client (reporter=source) only, as Istio's does.
    assert sum(got["answered"].values()) == SENT
    entry = got["source"][GATEWAY.name, PRODUCTPAGE.name]
    assert entry == got["destination"][PRODUCTPAGE.name] == served[PRODUCTPAGE.name]
    assert entry == Counter({200: SENT})
    assert got["gateway_reporters"] == {"source"}
    assert got["gateway_labels"] == {
        ("istio-ingressgateway", "istio-system", "istio-ingressgateway", "latest",
         PRODUCTPAGE.service_host),
    }  # fmt: skip
    # productpage knows its caller by its certificate; reviews-v2/v3 call ratings.
    assert set(got["inbound_sources"][PRODUCTPAGE.name]) == {("istio-ingressgateway", GATEWAY_SA)}
    assert {w for w, _ in got["inbound_sources"][RATINGS.name]} == {
        REVIEWS[1].name, REVIEWS[2].name,
    }  # fmt: skip

    # Each server's sidecar and its client's sidecar both count exactly what the app served.
    for client, server in [(PRODUCTPAGE, DETAILS), *((PRODUCTPAGE, r) for r in REVIEWS)]:
        assert got["source"][client.name, server.name] == served[server.name], server.name
        assert got["destination"][server.name] == served[server.name], server.name
    # every 10th page asks details for a product it does not know: a 404 on both sides
    assert served[DETAILS.name] == Counter({200: SENT - SENT // NOT_FOUND_EVERY,
                                            404: SENT // NOT_FOUND_EVERY})  # fmt: skip
    assert [sum(served[r.name].values()) for r in REVIEWS] == [SENT // 3] * 3  # round robin
    assert served[REVIEWS[2].name][503] >= 1  # reviews-v3 fails every 20th: seen here

    # ratings is called only by the reviews requests that did not fail.
    from_reviews = [got["source"][r.name, RATINGS.name] for r in REVIEWS[1:]]
    assert [c[200] for c in from_reviews] == [served[r.name][200] for r in REVIEWS[1:]]
    assert sum(from_reviews, Counter()) == got["destination"][RATINGS.name] == served[RATINGS.name]

    # TCP: ratings retires its mongodb connection every DB_QUERIES queries; opened, closed
    # and bytes as each app counted them, on both reporters.
    queries = served[RATINGS.name][200]
    wrote, read, opened, closed = got["db"]
    assert (opened, closed) == (math.ceil(queries / DB_QUERIES), queries // DB_QUERIES)
    assert closed >= 1 and opened - closed in (0, 1)
    assert got["echo"] == (wrote, read, opened)
    assert wrote > 0 and read > 0
    for side, reporter in ((RATINGS.name, "source"), (MONGODB.name, "destination")):
        tcp = got["tcp"]
        assert tcp[side, reporter, "connections_opened"] == opened
        assert tcp[side, reporter, "connections_closed"] == closed
        assert tcp[side, reporter, "received_bytes"] == wrote  # from the client (downstream)
        assert tcp[side, reporter, "sent_bytes"] == read
    assert got["principals"] == {"spiffe://cluster.local/ns/default/sa/bookinfo-ratings"}

    # gRPC, through both sidecars: one server-streaming call per page; productpage's sidecar
    # (source) and recommendations' (destination) count every call and message the apps
    # counted, once (no interceptor on either app records them a second time), as Envoy
    # reports gRPC (HTTP 200, the gRPC status from the trailers).
    answered, sent, received = got["grpc_app"]["client"]
    assert answered == {"OK": SENT} and (sent, received) == (SENT, RECOMMENDED * SENT)
    assert got["grpc_app"]["server"] == (SENT, SENT, RECOMMENDED * SENT)
    for reporter in ("source", "destination"):
        view = got["grpc"][reporter]
        assert view["calls"] == Counter({("200", "0", "grpc"): SENT}), reporter
        assert view["messages"] == {"request": SENT, "response": RECOMMENDED * SENT}, reporter
    # Each sidecar knows the other end by its verified certificate (mTLS between the
    # sidecars); as in Istio, only the destination reports the security policy.
    assert got["grpc"]["destination"]["peers"] == {
        (PRODUCTPAGE.name, PRODUCTPAGE_SA, "mutual_tls", RECOMMENDATIONS.service_host,
         RECOMMENDATIONS_SA, "-")
    }  # fmt: skip
    assert got["grpc"]["source"]["peers"] == {
        (PRODUCTPAGE.name, PRODUCTPAGE_SA, "unknown", RECOMMENDATIONS.service_host,
         RECOMMENDATIONS_SA, "-")
    }  # fmt: skip
    assert got["grpc_sidecars"] == (True, True)


def test_the_grpc_edge_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without grpcio (as grpc_edge() finds it) the mesh leaves the edge out, unless the
    caller insists on it; nothing is started either way."""
    monkeypatch.setattr(demo_module, "grpc_edge", lambda: None)
    mesh = DemoMesh()
    assert not mesh.has_grpc and RECOMMENDATIONS not in mesh.workloads
    assert (PRODUCTPAGE, RECOMMENDATIONS) not in mesh.edge_pairs
    assert len(mesh.edge_pairs) == len(EDGES) - 1
    with pytest.raises(MissingExtraError, match=r"pip install 'meshstats\[grpc\]'"):
        DemoMesh(grpc=True)
    monkeypatch.undo()
    assert not DemoMesh(grpc=False).has_grpc and DemoMesh().has_grpc


# -- the command -------------------------------------------------------------------------------

ROW = re.compile(
    r"^(?P<client>\S+) -> (?P<server>\S+)(?: \((?P<protocol>grpc)\))?\s+(?P<requests>\d+)"
    r"\s+(?P<c4xx>[\d.]+%)\s+(?P<c5xx>[\d.]+%)\s+(?P<p50>[\d.]+|nan)\s+(?P<p99>[\d.]+|nan)"
    r"\s+(?P<app>\d+)\s*$"
)
MESSAGES = re.compile(
    r"^    messages in/out (?P<req>\d+)/(?P<resp>\d+) \(app (?P<app_req>\d+)/(?P<app_resp>\d+)\)$"
)
TCP_ROW = re.compile(
    r"^(?P<client>\S+) -> (?P<server>\S+) \(tcp\)\s+(?P<conns>\d+) conn\s+(?P<app>\d+)\s*$"
)
TCP_MORE = re.compile(
    r"^    (?P<closed>\d+) closed \(app (?P<app_closed>\d+)\), bytes up/down (?P<up>\d+)/"
    r"(?P<down>\d+) \(app (?P<app_up>\d+)/(?P<app_down>\d+)\)$"
)


def demo(
    *args: str, backend: str = "c", timeout: float = 60, pythonpath: str = SRC
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
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


def read_table(out: str) -> tuple[dict[tuple[str, str], re.Match[str]], dict[str, re.Match[str]]]:
    """The table's rows by (client, server), and the second lines by what they follow."""
    rows: dict[tuple[str, str], re.Match[str]] = {}
    more: dict[str, re.Match[str]] = {}
    for line in out.splitlines():
        if m := ROW.match(line) or TCP_ROW.match(line):
            rows[m["client"], m["server"]] = m
        elif m := MESSAGES.match(line):
            more["grpc"] = m
        elif m := TCP_MORE.match(line):
            more["tcp"] = m
    return rows, more


def test_demo_command_prints_a_consistent_table(backend: Backend) -> None:
    result = demo("--duration", "2", "--port", "0", backend=backend.name)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    out = result.stdout
    sent = re.search(r"(\d+) requests into productpage .*: (\d+) ok, 0 not 200, 0 broken", out)
    assert sent is not None, out
    rows, more = read_table(out)
    assert len(rows) == len(EDGES) and set(more) == {"grpc", "tcp"}, out
    edges = {
        key: EdgeStats(*key, "http", requests=int(m["requests"]), app_requests=int(m["app"]))
        for key, m in rows.items()
        if "requests" in m.groupdict()
    }
    for edge in edges.values():  # the proxy counted what the calling app got answers to
        assert edge.requests == edge.app_requests > 0, edge
    entry = edges[GATEWAY.name, PRODUCTPAGE.name].requests
    assert entry == int(sent[1]) == int(sent[2])
    assert edges[PRODUCTPAGE.name, DETAILS.name].requests == entry
    # every 10th page's product is unknown to details: exactly that share of 404s
    assert rows[PRODUCTPAGE.name, DETAILS.name]["c4xx"] == f"{entry // NOT_FOUND_EVERY / entry:.1%}"
    assert all(
        m["c4xx"] == "0.0%"
        for k, m in rows.items()
        if k[1] != DETAILS.name and "c4xx" in m.groupdict()
    )
    per_version = [edges[PRODUCTPAGE.name, r.name].requests for r in REVIEWS]
    assert sum(per_version) == entry and max(per_version) - min(per_version) <= 1
    for r in REVIEWS[1:]:  # only reviews that did not fail call ratings
        assert 0 < edges[r.name, RATINGS.name].requests <= edges[PRODUCTPAGE.name, r.name].requests
    # gRPC: a call per page, one request message and RECOMMENDED responses each
    assert rows[PRODUCTPAGE.name, RECOMMENDATIONS.name]["protocol"] == "grpc"
    assert edges[PRODUCTPAGE.name, RECOMMENDATIONS.name].requests == entry
    counted = tuple(int(more["grpc"][k]) for k in ("req", "resp", "app_req", "app_resp"))
    assert counted == (entry, RECOMMENDED * entry) * 2
    # TCP: ratings retires its connection every 10 queries (one per ratings request)
    queries = sum(edges[r.name, RATINGS.name].requests for r in REVIEWS[1:])
    tcp, closed = rows[RATINGS.name, MONGODB.name], more["tcp"]
    assert int(tcp["conns"]) == int(tcp["app"]) == math.ceil(queries / 10)
    assert int(closed["closed"]) == int(closed["app_closed"]) == queries // 10
    assert closed["up"] == closed["app_up"] != "0" and closed["down"] == closed["app_down"] != "0"
    # Without --serve the mesh is gone once the table prints: no dead URLs, a pointer instead.
    assert "http://" not in out and "grpcio is not installed" not in out
    assert out.rstrip().endswith(
        "`meshstats demo --serve` keeps it up and lists where each workload serves its metrics"
    )
    assert ("backend: compiled" in out) == (backend.name == "c"), out
    # Progress reaches 100% however short the run (stderr is not a terminal here).
    assert result.stderr.splitlines()[-1].startswith("100% "), result.stderr


def test_without_grpcio_the_demo_runs_and_says_how_to_get_the_grpc_edge(tmp_path: Path) -> None:
    hidden = tmp_path / "grpc"  # found before the real one: importing grpc fails
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('No module named grpc')\n")
    result = demo("--duration", "0.5", "--port", "0", pythonpath=f"{tmp_path}{os.pathsep}{SRC}")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    out = result.stdout
    notes = [line for line in out.splitlines() if "gRPC edge" in line]
    assert notes == [
        "the gRPC edge (productpage -> recommendations) is left out: grpcio is not installed "
        "(pip install 'meshstats[grpc]')"
    ]
    rows, more = read_table(out)
    assert len(rows) == len(EDGES) - 1 and set(more) == {"tcp"}, out
    assert (PRODUCTPAGE.name, RECOMMENDATIONS.name) not in rows


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        offset = SHOWN.index(MONGODB)
        result = demo("--duration", "1", "--port", str(port - offset), timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # mongodb is started first, so its port is the first one bound: the one named.
    assert f"port {port} (mongodb-v1's metrics port) is already in use" in result.stderr
    assert "--port 0" in result.stderr and "the next 8" in result.stderr
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
        urls = dict(re.findall(r"^  (\S+)\s+(http://\S+/stats/prometheus)$", out, re.M))
        assert list(urls) == [w.name for w in SHOWN], out
        wanted = {  # still up after the load, each with its own side of its edges
            PRODUCTPAGE.name: b'istio_requests_total{reporter="destination"',
            GATEWAY.name: b'istio_requests_total{reporter="source",source_workload="istio-ingr',
            RECOMMENDATIONS.name: b'istio_response_messages_total{reporter="destination"',
        }
        for name, text in wanted.items():
            with urllib.request.urlopen(urls[name], timeout=10) as response:
                assert text in response.read(), name
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
