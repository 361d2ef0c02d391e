"""MetricsServer over real HTTP on 127.0.0.1, and content negotiation."""

from __future__ import annotations

import gzip
import http.client
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from conftest import Backend, wait_until
from exposition_support import openmetrics_samples, text_samples

from meshstats.exposition import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    MetricsServer,
    negotiate,
    serve_in_background,
)

pytestmark = pytest.mark.timing

# What Prometheus 2.x sends by default (scrape/scrape.go, acceptHeader) and with OM off.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_TEXT_ONLY = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        response = urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    with response:
        return response.status, dict(response.headers), response.read()


@pytest.fixture
def store(backend: Backend) -> Any:
    store = backend.store.Store()
    req = store.counter("istio_requests_total", "Requests.", ("code",))
    store.inc(store.series(req, ("200",)), 3)
    dur = store.histogram("istio_request_duration_milliseconds", "Duration.", ())
    store.observe(store.series(dur, ()), 42)
    return store


def test_negotiate() -> None:
    assert negotiate(None) == (False, CONTENT_TYPE_TEXT)
    assert negotiate("") == (False, CONTENT_TYPE_TEXT)
    assert negotiate(PROMETHEUS_ACCEPT) == (True, CONTENT_TYPE_OPENMETRICS)
    assert negotiate(PROMETHEUS_TEXT_ONLY) == (False, CONTENT_TYPE_TEXT)
    assert negotiate("Application/OpenMetrics-Text; version=1.0.0")[0] is True
    assert negotiate("text/plain, application/openmetrics-text;q=0")[0] is False
    assert negotiate("application/openmetrics-text;q=bogus")[0] is False
    assert negotiate("*/*")[0] is False
    assert CONTENT_TYPE_TEXT == "text/plain; version=0.0.4; charset=utf-8"
    assert CONTENT_TYPE_OPENMETRICS == "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.mark.parametrize("path", ["/stats/prometheus", "/metrics", "/metrics?usedonly"])
def test_text_scrape(store: Any, path: str) -> None:
    with MetricsServer(store) as server:
        status, headers, body = get(server.url + path)
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_TEXT
    assert body == store.render()
    assert int(headers["Content-Length"]) == len(body)


def test_openmetrics_scrape(store: Any) -> None:
    with MetricsServer(store) as server:
        status, headers, body = get(server.url + "/stats/prometheus", {"Accept": PROMETHEUS_ACCEPT})
        _, text_headers, text_body = get(server.url + "/metrics", {"Accept": PROMETHEUS_TEXT_ONLY})
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_OPENMETRICS
    assert body == store.render(openmetrics=True)
    assert body.endswith(b"# EOF\n")
    assert openmetrics_samples(body)[("istio_requests_total", (("code", "200"),))] == 3
    assert text_headers["Content-Type"] == CONTENT_TYPE_TEXT
    assert text_body == store.render()


def test_gzip_when_accepted(store: Any) -> None:
    with MetricsServer(store) as server:
        _, headers, body = get(server.url + "/metrics", {"Accept-Encoding": "gzip"})
        _, plain_headers, _ = get(server.url + "/metrics", {"Accept-Encoding": "gzip;q=0"})
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == store.render()
    assert "Content-Encoding" not in plain_headers


def test_healthz_404_and_head(store: Any) -> None:
    with MetricsServer(store) as server:
        assert get(server.url + "/healthz")[0::2] == (200, b"ok")
        status, _, body = get(server.url + "/nope")
        assert status == 404 and body
        assert get(server.url + "/metrics/extra")[0] == 404
        status, headers, body = get(server.url + "/metrics", method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["Content-Length"]) == len(store.render())


def test_values_follow_recording(store: Any) -> None:
    with MetricsServer(store) as server:
        before = text_samples(get(server.url + "/metrics")[2])
        store.inc(0, 10)
        after = text_samples(get(server.url + "/metrics")[2])
    key = ("istio_requests_total", (("code", "200"),))
    assert (before[key], after[key]) == (3, 13)


def test_keep_alive_connection_serves_several_scrapes(store: Any) -> None:
    with MetricsServer(store) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            bodies = []
            for _ in range(3):
                connection.request("GET", "/stats/prometheus")
                bodies.append(connection.getresponse().read())
        finally:
            connection.close()
    assert bodies == [store.render()] * 3


def test_scrapes_while_threads_record(backend: Backend) -> None:
    store = backend.store.Store()
    s = store.series(store.counter("c_total", "C."), ())
    ids = np.full(1000, s, dtype=np.int64)
    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            store.inc_many(ids)

    recorder = threading.Thread(target=record)
    with MetricsServer(store) as server:
        recorder.start()
        try:
            scrapes = [get(server.url + "/metrics")[2] for _ in range(5)]
        finally:
            stop.set()
            recorder.join()
    seen = [text_samples(body)[("c_total", ())] for body in scrapes]
    assert seen == sorted(seen)  # a counter never goes back
    assert seen[-1] <= store.value(s)


def test_start_stop_lifecycle(store: Any) -> None:
    server = MetricsServer(store, port=0)
    assert server.port == 0
    server.start()
    port = server.port
    assert port > 0 and server.url == f"http://127.0.0.1:{port}"
    with pytest.raises(RuntimeError):
        server.start()
    server.stop()
    server.stop()  # twice is fine
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_serve_in_background(store: Any) -> None:
    server = serve_in_background(store)
    try:
        assert get(server.url + "/metrics")[2] == store.render()
    finally:
        server.stop()


def test_no_request_logging_by_default(store: Any, capfd: pytest.CaptureFixture[str]) -> None:
    with MetricsServer(store) as server:
        get(server.url + "/metrics")
        get(server.url + "/nope")
    assert capfd.readouterr().err == ""
    with MetricsServer(store, log_requests=True) as server:
        get(server.url + "/nope")
    assert "GET /nope" in capfd.readouterr().err


def test_render_failure_is_a_500() -> None:
    class Broken:
        def snapshot(self) -> list[Any]:
            return []

        def render(self, openmetrics: bool = False) -> bytes:
            raise RuntimeError("boom")

    with MetricsServer(Broken()) as server:
        status, _, body = get(server.url + "/metrics")
        assert get(server.url + "/healthz")[0] == 200  # the server survived
    assert status == 500 and b"boom" in body


# -- serving many scrapers, and stalled connections (issue 10.6) -----------------------------

DEADLINE = 60.0  # generous: only a broken server takes this long; nothing asserts speed


class GatedStore:
    """A store whose renders wait for ``release``, counting them."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.entered = threading.Event()
        self.release = threading.Event()
        self.renders = 0

    def snapshot(self) -> Any:
        return self.store.snapshot()

    def render(self, openmetrics: bool = False) -> bytes:
        self.renders += 1
        self.entered.set()
        assert self.release.wait(DEADLINE)
        return bytes(self.store.render(openmetrics=openmetrics))


class BigStore:
    """A render too large for the socket buffers, to stall a client that does not read."""

    def snapshot(self) -> list[Any]:
        return []

    def render(self, openmetrics: bool = False) -> bytes:
        return b"x" * (64 << 20)


def connect(server: MetricsServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes; True at EOF or a reset (the server let go)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_concurrent_scrapes_share_one_render(store: Any) -> None:
    gated = GatedStore(store)
    results: list[Any] = []

    def scrape() -> None:
        results.append(get(server.url + "/metrics"))

    with MetricsServer(gated) as server:
        threads = [threading.Thread(target=scrape) for _ in range(5)]
        threads[0].start()
        assert gated.entered.wait(DEADLINE)
        for thread in threads[1:]:
            thread.start()
        wait_until(lambda: server.stats().waiting == 5, "5 scrapes waiting")
        gated.release.set()
        for thread in threads:
            thread.join(DEADLINE)
        assert [r[0::2] for r in results] == [(200, store.render())] * 5
        assert (gated.renders, server.stats().renders, server.stats().scrapes) == (1, 1, 5)
        # Nothing is cached once the render is done: the next scrape renders again.
        assert get(server.url + "/metrics")[2] == store.render()
        assert gated.renders == 2


def test_scrapes_of_different_formats_do_not_share(store: Any) -> None:
    gated = GatedStore(store)
    gated.release.set()
    with MetricsServer(gated) as server:
        text = get(server.url + "/metrics")[2]
        om = get(server.url + "/metrics", {"Accept": PROMETHEUS_ACCEPT})[2]
        zipped = get(server.url + "/metrics", {"Accept-Encoding": "gzip"})[2]
    assert (text, om) == (store.render(), store.render(openmetrics=True))
    assert gzip.decompress(zipped) == text
    assert gated.renders == 3


def test_a_stalled_request_head_is_closed(store: Any) -> None:
    with MetricsServer(store, header_timeout=0.3) as server:
        silent = connect(server)  # sends nothing at all
        partial = connect(server)
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n")  # no blank line, ever
        with silent, partial:
            assert closed_by_server(silent) and closed_by_server(partial)
            wait_until(lambda: server.stats().connections == 0, "closed")
            assert server.stats().timed_out == 2
            assert get(server.url + "/healthz")[0] == 200  # the server itself is fine


def test_an_idle_keep_alive_connection_is_closed(store: Any) -> None:
    with MetricsServer(store, idle_timeout=0.3) as server, connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        got = b""
        while not got.endswith(b"\r\n\r\nok"):
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" not in got
        assert closed_by_server(sock)
        wait_until(lambda: server.stats().connections == 0, "closed")
        assert server.stats().timed_out == 1


def test_a_client_that_does_not_read_is_cut_off() -> None:
    with MetricsServer(BigStore(), write_timeout=0.3) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with sock:
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            wait_until(lambda: server.stats().scrapes == 1, "rendered")
            wait_until(lambda: server.stats().connections == 0, "cut off")  # never read
        assert server.stats().timed_out == 1


def test_stalled_connections_take_no_threads(store: Any) -> None:
    before = threading.active_count()
    with MetricsServer(store) as server:
        get(server.url + "/metrics")  # the render worker exists from now on
        running = threading.active_count()
        assert running <= before + 2  # the loop and the render worker
        stalled = []
        try:
            for i in range(1000):
                sock = connect(server)
                if i % 2:
                    sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # half a head
                stalled.append(sock)
            status, _, body = get(server.url + "/stats/prometheus")
            assert (status, body) == (200, store.render())
            assert threading.active_count() == running
            stats = server.stats()
            assert stats.connections <= 256
            assert stats.evicted >= 1000 - 256  # the oldest stalled ones made room
        finally:
            for sock in stalled:
                sock.close()
        wait_until(lambda: server.stats().connections == 0, "all closed")
    wait_until(lambda: threading.active_count() == before, "threads gone after stop()")


def test_at_the_limit_the_longest_waiting_connection_makes_room(store: Any) -> None:
    with MetricsServer(store, max_connections=2) as server:
        first, second = connect(server), connect(server)
        with first, second:
            wait_until(lambda: server.stats().connections == 2, "both accepted")
            assert get(server.url + "/metrics")[0::2] == (200, store.render())
            assert closed_by_server(first)  # the oldest went
            assert server.stats().evicted == 1 and server.stats().refused == 0


def test_at_the_limit_with_every_connection_busy_a_new_one_gets_503(store: Any) -> None:
    gated = GatedStore(store)
    with MetricsServer(gated, max_connections=2) as server:
        busy = [connect(server) for _ in range(2)]
        try:
            for sock in busy:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            wait_until(lambda: server.stats().waiting == 2, "both waiting for the render")
            with connect(server) as extra:
                got = b""
                while chunk := extra.recv(65536):
                    got += chunk
            assert got.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            assert server.stats().refused == 1
            gated.release.set()
            for sock in busy:
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
        finally:
            for sock in busy:
                sock.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/2.0\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"400"),
        (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400"),
        (b"POST /metrics HTTP/1.1\r\nHost: a\r\n\r\n", b"501"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
        (b"GET /healthz HTTP/1.0\r\n\r\n", b"200"),
        (b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", b"200"),
    ],
)
def test_requests_that_end_the_connection(store: Any, request_bytes: bytes, status: bytes) -> None:
    with MetricsServer(store) as server, connect(server) as sock:
        sock.sendall(request_bytes)
        got = b""
        while chunk := sock.recv(65536):  # the server closes after this one answer
            got += chunk
    assert got.startswith(b"HTTP/1.1 " + status + b" ")
    assert got.count(b"HTTP/1.1 ") == 1


def test_http10_keep_alive_and_pipelining(store: Any) -> None:
    with MetricsServer(store) as server, connect(server) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    assert got.count(b"HTTP/1.1 200 OK\r\n") == 2 and got.count(b"HTTP/1.1 404 ") == 1
    assert b"Connection: keep-alive" in got


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("header_timeout", 0),
        ("write_timeout", -1),
        ("idle_timeout", "10"),
        ("max_connections", 0),
        ("max_connections", True),
        ("render_niceness", 20),
        ("render_niceness", 1.5),
        ("render_budget", 0),
        ("render_budget", 1.5),
        ("render_budget", True),
    ],
)
def test_limits_are_validated(store: Any, option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        MetricsServer(store, **{option: value})


class BusyStore:
    """Each render burns 20 ms of its thread's CPU, and notes when it ran and for how long."""

    def __init__(self) -> None:
        self.runs: list[tuple[float, float, float]] = []  # start, end (monotonic), CPU

    def snapshot(self) -> list[Any]:
        return []

    def render(self, openmetrics: bool = False) -> bytes:
        start, cpu = time.monotonic(), time.thread_time()
        while time.thread_time() - cpu < 0.02:
            pass
        self.runs.append((start, time.monotonic(), time.thread_time() - cpu))
        return b"x"


def test_renders_stay_within_their_budget() -> None:
    store = BusyStore()
    with MetricsServer(store, render_budget=0.1) as server:
        for _ in range(3):  # back to back, as a scraper in a loop
            assert get(server.url + "/metrics")[0::2] == (200, b"x")
        assert get(server.url + "/healthz")[0] == 200
    assert len(store.runs) == 3
    # A lower bound only: a slow machine can widen the gap, never narrow it.
    for (_, end, cpu), (start, _, _) in zip(store.runs, store.runs[1:]):
        assert start - end >= cpu * (1 / 0.1 - 1) - 0.001


def render_thread_niceness(server: MetricsServer) -> int:
    get(server.url + "/metrics")
    worker = next(t for t in threading.enumerate() if t.name.startswith("meshstats-render"))
    assert worker.native_id is not None
    return os.getpriority(os.PRIO_PROCESS, worker.native_id)


def test_renders_run_at_a_lower_priority(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    if not sys.platform.startswith("linux"):
        # Elsewhere a thread id could name another process: nothing may be changed.
        def refuse(*args: Any) -> None:
            raise AssertionError("setpriority called")

        monkeypatch.setattr(os, "setpriority", refuse)
        with MetricsServer(store) as server:
            assert get(server.url + "/metrics")[0] == 200
        return
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with MetricsServer(store) as server:
        assert render_thread_niceness(server) == min(base + 10, 19)
    with MetricsServer(store, render_niceness=0) as server:
        assert render_thread_niceness(server) == base
