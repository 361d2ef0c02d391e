"""MetricsServer over real HTTP on 127.0.0.1, and content negotiation."""

from __future__ import annotations

import gzip
import http.client
import threading
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from conftest import Backend
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
