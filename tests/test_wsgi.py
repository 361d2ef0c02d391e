"""meshstats.wsgi.IstioMiddleware: a Flask app under a real gunicorn (one sync worker, in a
child process; ``MESHSTATS_NO_EXTENSIONS=1`` there for the pure-Python backend)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Backend
from embed_support import (
    DEADLINE,
    SERVICE_HOST,
    Sample,
    client_headers,
    listening_socket,
    one,
    samples,
    total,
    wait_for,
)

from meshstats import StatsEngine
from meshstats.certs import LocalCA
from meshstats.wsgi import IstioMiddleware

HERE = Path(__file__).parent
REQUESTS = "istio_requests_total"
# Real servers, sockets, threads and child processes (scripts/under_load.sh repeats them).
pytestmark = pytest.mark.timing
FROM_CLIENT = {"source_workload": "productpage-v1"}


class Gunicorn:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.port = port

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=DEADLINE) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def metrics(self) -> list[Sample]:
        return samples(self.get("/metrics")[2])


@pytest.fixture
def gunicorn(backend: Backend) -> Iterator[Gunicorn]:
    sock = listening_socket()
    sock.set_inheritable(True)
    env = dict(os.environ)
    env.pop("MESHSTATS_NO_EXTENSIONS", None)
    if backend.name == "py":
        env["MESHSTATS_NO_EXTENSIONS"] = "1"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "--bind", f"fd://{sock.fileno()}",
            "--workers", "1", "--worker-class", "sync", "--chdir", str(HERE),
            "--log-level", "warning", "flask_embed_app:app",
        ],
        pass_fds=[sock.fileno()],
        env=env,
    )  # fmt: skip
    try:
        server = Gunicorn(int(sock.getsockname()[1]))
        # The socket listens already: this waits for the worker, however slow it starts.
        assert server.get("/backend")[2].decode() == backend.name
        yield server
    finally:
        proc.terminate()
        proc.wait(DEADLINE)
        sock.close()


def test_exchange_headers_are_read_stripped_and_answered(gunicorn: Gunicorn) -> None:
    status, headers, body = gunicorn.get("/echo", client_headers())
    assert status == 200
    assert not [h for h in body.decode().split("\n") if h.startswith("x-envoy")]
    assert headers["x-envoy-peer-metadata-id"].startswith("sidecar~")
    assert headers["x-envoy-peer-metadata"]
    status, headers, _ = gunicorn.get("/echo")
    assert "x-envoy-peer-metadata" not in headers
    found = gunicorn.metrics()
    labels = one(found, REQUESTS, **FROM_CLIENT)
    assert labels == labels | {
        "reporter": "destination",
        "source_app": "productpage",
        "destination_workload": "reviews-v2",
        "destination_service": SERVICE_HOST,
        "response_code": "200",
        "response_flags": "-",
        "request_protocol": "http",
    }


def test_sizes_are_the_wire_bytes_less_what_gunicorn_adds(gunicorn: Gunicorn) -> None:
    headers = client_headers()
    request = (
        b"POST /body?x=1 HTTP/1.1\r\nHost: reviews:9080\r\n"
        b"x-envoy-peer-metadata: " + headers["x-envoy-peer-metadata"].encode() + b"\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 777\r\n\r\n" + b"b" * 777
    )
    with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=DEADLINE) as conn:
        conn.sendall(request)
        response = b""
        while data := conn.recv(65536):  # the sync worker closes after each response
            response += data
    assert response.endswith(b"\r\n\r\n777")
    head = response.split(b"\r\n\r\n")[0].split(b"\r\n")
    added = [
        line for line in head if line.split(b":")[0].lower() in (b"server", b"date", b"connection")
    ]
    assert len(added) == 3
    found = gunicorn.metrics()
    assert total(found, "istio_request_bytes_sum", **FROM_CLIENT) == len(request)
    response_bytes = total(found, "istio_response_bytes_sum", **FROM_CLIENT)
    assert response_bytes == len(response) - sum(len(line) + 2 for line in added)


def test_an_app_error_is_500(gunicorn: Gunicorn) -> None:
    assert gunicorn.get("/boom", client_headers())[0] == 500
    labels = one(gunicorn.metrics(), REQUESTS, **FROM_CLIENT)
    assert (labels["response_code"], labels["response_flags"]) == ("500", "-")


def test_a_client_gone_before_its_body_is_0_DC(gunicorn: Gunicorn) -> None:
    headers = client_headers()
    with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=DEADLINE) as conn:
        conn.sendall(
            b"POST /body HTTP/1.1\r\nHost: reviews\r\nContent-Length: 1000\r\n"
            b"x-envoy-peer-metadata: " + headers["x-envoy-peer-metadata"].encode() + b"\r\n"
            b"\r\n" + b"y" * 10
        )
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):  # whatever the server makes of it, until it closes
            pass
    labels = one(gunicorn.metrics(), REQUESTS, **FROM_CLIENT)
    assert (labels["response_code"], labels["response_flags"]) == ("0", "DC")


def test_a_client_gone_mid_response_is_200_DC(gunicorn: Gunicorn) -> None:
    headers = client_headers()
    with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=DEADLINE) as conn:
        conn.sendall(
            b"GET /stream HTTP/1.1\r\nHost: reviews\r\n"
            b"x-envoy-peer-metadata: " + headers["x-envoy-peer-metadata"].encode() + b"\r\n\r\n"
        )
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        # Closing with unread data resets the connection: the server's next writes fail.
    wait_for(lambda: total(gunicorn.metrics(), REQUESTS, **FROM_CLIENT) == 1, "the stream recorded")
    labels = one(gunicorn.metrics(), REQUESTS, **FROM_CLIENT)
    assert (labels["response_code"], labels["response_flags"]) == ("200", "DC")


def test_the_principal_comes_from_mod_ssl_keys_only(backend: Backend) -> None:
    """gunicorn exports no client certificate; a server that does (mod_wsgi under mod_ssl)
    hands it over as SSL_CLIENT_CERT, which no request header can set."""
    ca = LocalCA.create("cluster.local")
    cert = ca.issue("default", "productpage")
    engine = StatsEngine(
        {"WORKLOAD_NAME": "reviews-v2"},
        store=backend.store.Store(),
        local_principal="spiffe://cluster.local/ns/default/sa/reviews",
    )

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    mw = IstioMiddleware(app, engine)
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_PROTOCOL": "HTTP/1.1"}
    pem = cert.cert_pem.decode()
    for extra in (
        {"SSL_CLIENT_VERIFY": "SUCCESS", "SSL_CLIENT_CERT": pem},
        {"SSL_CLIENT_VERIFY": "FAILED:unknown ca", "SSL_CLIENT_CERT": pem},
        {"HTTP_SSL_CLIENT_CERT": pem, "HTTP_SSL_CLIENT_VERIFY": "SUCCESS"},
    ):
        body = mw(base | extra, lambda status, headers, exc_info=None: lambda data: None)
        assert b"".join(body) == b"ok"
        body.close()  # type: ignore[attr-defined]
    found = samples(engine.render())
    mtls = one(found, REQUESTS, connection_security_policy="mutual_tls")
    assert mtls["source_principal"] == cert.principal
    assert total(found, REQUESTS, source_principal="unknown") == 2
