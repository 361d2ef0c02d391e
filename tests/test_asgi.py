"""meshstats.asgi.IstioMiddleware under a real uvicorn (Starlette apps and a plain ASGI app),
on both backends: the exchange, wire sizes, when a request is recorded, disconnects, errors,
and where a principal may come from."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

import httpx
import pytest
from conftest import Backend
from embed_support import (
    CLIENT_NODE,
    DEADLINE,
    SERVER_NODE,
    SERVICE_HOST,
    client_headers,
    one,
    samples,
    select,
    total,
    uvicorn_server,
    wait_for,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from meshstats import StatsEngine
from meshstats._embed import Exchange
from meshstats.asgi import IstioMiddleware
from meshstats.certs import LocalCA

SERVER_SA = "spiffe://cluster.local/ns/default/sa/reviews"
REQUESTS = "istio_requests_total"
# Real servers, sockets, threads and child processes (scripts/under_load.sh repeats them).
pytestmark = pytest.mark.timing


def engine_for(backend: Backend, **kw: Any) -> StatsEngine:
    return StatsEngine(SERVER_NODE, store=backend.store.Store(), **kw)


class Gates:
    """Events the test thread sets and the app awaits (and the other way round)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.streaming = threading.Event()


def starlette_app(engine: StatsEngine, gates: Gates, **mw: Any) -> Starlette:
    async def echo(request: Request) -> Response:
        return JSONResponse(sorted(k for k in request.headers.keys()))

    async def body(request: Request) -> Response:
        return PlainTextResponse(str(len(await request.body())))

    async def slow(request: Request) -> Response:
        async def chunks() -> Any:
            yield b"first"
            gates.streaming.set()
            await asyncio.to_thread(gates.release.wait, DEADLINE)
            yield b"last"

        return StreamingResponse(chunks())

    async def forever(request: Request) -> Response:
        async def chunks() -> Any:
            yield b"x" * 10
            gates.streaming.set()
            await asyncio.Event().wait()  # until the client's disconnect cancels it
            yield b"never"

        return StreamingResponse(chunks())

    async def boom(request: Request) -> Response:
        raise RuntimeError("the app failed")

    app = Starlette(
        routes=[
            Route("/echo", echo),
            Route("/body", body, methods=["POST"]),
            Route("/slow", slow),
            Route("/forever", forever),
            Route("/boom", boom),
        ]
    )
    app.add_middleware(IstioMiddleware, engine=engine, **mw)
    return app


def test_exchange_headers_are_read_stripped_and_answered(backend: Backend) -> None:
    engine = engine_for(backend)
    with uvicorn_server(starlette_app(engine, Gates(), service_host=SERVICE_HOST)) as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            resp = client.get("/echo", headers=client_headers())
            bare = client.get("/echo")
            id_only = client.get(
                "/echo", headers={"x-envoy-peer-metadata-id": client_headers()[
                    "x-envoy-peer-metadata-id"]}
            )  # fmt: skip
    assert resp.status_code == 200
    assert not [h for h in resp.json() if h.startswith("x-envoy")]  # the app never saw them
    own = Exchange(engine)
    assert resp.headers["x-envoy-peer-metadata"] == own.metadata
    assert resp.headers["x-envoy-peer-metadata-id"] == own.node_id
    # Istio's server answers only with what it was asked with.
    assert "x-envoy-peer-metadata" not in bare.headers
    assert "x-envoy-peer-metadata-id" not in bare.headers
    assert "x-envoy-peer-metadata" not in id_only.headers
    assert id_only.headers["x-envoy-peer-metadata-id"] == own.node_id

    found = samples(engine.render())
    labels = one(found, REQUESTS, source_workload="productpage-v1")
    assert labels == labels | {
        "reporter": "destination",
        "source_app": "productpage",
        "source_version": "v1",
        "source_workload_namespace": "default",
        "source_principal": "unknown",
        "destination_workload": "reviews-v2",
        "destination_app": "reviews",
        "destination_service": SERVICE_HOST,
        "destination_service_name": "reviews",
        "request_protocol": "http",
        "response_code": "200",
        "response_flags": "-",
        "connection_security_policy": "none",
    }
    assert total(found, REQUESTS, source_workload="unknown") == 2


def test_a_header_never_gives_a_principal(backend: Backend) -> None:
    engine = engine_for(backend, local_principal=SERVER_SA)
    claims = dict(CLIENT_NODE, IDENTITY="spiffe://cluster.local/ns/default/sa/admin")
    spoofed = Exchange(StatsEngine(claims))
    with uvicorn_server(starlette_app(engine, Gates())) as port:
        resp = httpx.get(
            f"http://127.0.0.1:{port}/echo",
            headers={"x-envoy-peer-metadata": spoofed.metadata},
        )
    assert resp.status_code == 200
    labels = one(samples(engine.render()), REQUESTS)
    assert labels["source_workload"] == "productpage-v1"
    assert labels["source_principal"] == "unknown"
    assert labels["destination_principal"] == SERVER_SA
    assert labels["connection_security_policy"] == "none"


async def plain_app(scope: Any, receive: Any, send: Any) -> None:
    """A bare ASGI app: reads its body, answers a fixed one with a content-length."""
    assert scope["type"] == "http"
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b"0123456789" * 30
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body[:100], "more_body": True})
    await send({"type": "http.response.body", "body": body[100:]})


def read_response(conn: socket.socket) -> bytes:
    """One response with a content-length, read whole from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, "connection closed before the response head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk
        rest += chunk
    return head + b"\r\n\r\n" + rest


def test_sizes_are_the_wire_bytes_of_a_plain_asgi_app(backend: Backend) -> None:
    engine = engine_for(backend)
    headers = client_headers()
    body = b"x" * 1234
    request = (
        b"POST /upload?id=7&x=y HTTP/1.1\r\nHost: reviews:9080\r\n"
        b"x-envoy-peer-metadata: " + headers["x-envoy-peer-metadata"].encode() + b"\r\n"
        b"x-envoy-peer-metadata-id: " + headers["x-envoy-peer-metadata-id"].encode() + b"\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Length: 1234\r\n\r\n" + body
    )
    # Without the headers uvicorn adds on its own, what the middleware counts is the wire.
    app = IstioMiddleware(plain_app, engine)
    with uvicorn_server(app, server_header=False, date_header=False) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as conn:
            conn.sendall(request)
            response = read_response(conn)
    assert response.startswith(b"HTTP/1.1 201 ")
    assert b"x-envoy-peer-metadata-id: " in response
    found = samples(engine.render())
    labels = {"source_workload": "productpage-v1", "response_code": "201"}
    assert total(found, "istio_request_bytes_sum", **labels) == len(request)
    assert total(found, "istio_response_bytes_sum", **labels) == len(response)
    assert total(found, "istio_request_bytes_count", **labels) == 1


def test_recorded_when_the_last_body_byte_is_sent(backend: Backend) -> None:
    engine = engine_for(backend)
    gates = Gates()
    with uvicorn_server(starlette_app(engine, gates)) as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=DEADLINE) as client:
            with client.stream("GET", "/slow", headers=client_headers()) as resp:
                stream = resp.iter_bytes()
                assert next(stream).startswith(b"first")
                assert gates.streaming.wait(DEADLINE)
                # Headers and a first chunk are out, the response is not over: not recorded.
                assert total(samples(engine.render()), REQUESTS) == 0
                gates.release.set()
                rest = b"".join(stream)
            assert rest.endswith(b"last")
    found = samples(engine.render())
    assert total(found, REQUESTS, response_code="200", response_flags="-") == 1


def test_a_client_gone_before_the_response_is_0_DC(backend: Backend) -> None:
    engine = engine_for(backend)
    headers = client_headers()
    with uvicorn_server(starlette_app(engine, Gates())) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as conn:
            conn.sendall(
                b"POST /body HTTP/1.1\r\nHost: reviews\r\nContent-Length: 100\r\n"
                b"x-envoy-peer-metadata: " + headers["x-envoy-peer-metadata"].encode() + b"\r\n"
                b"\r\n" + b"y" * 10
            )
        wait_for(lambda: total(samples(engine.render()), REQUESTS) == 1, "the request recorded")
    labels = one(samples(engine.render()), REQUESTS)
    assert (labels["response_code"], labels["response_flags"]) == ("0", "DC")
    assert labels["source_workload"] == "productpage-v1"


def test_a_client_gone_mid_response_keeps_the_status_with_DC(backend: Backend) -> None:
    engine = engine_for(backend)
    gates = Gates()
    with uvicorn_server(starlette_app(engine, gates)) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as conn:
            conn.sendall(b"GET /forever HTTP/1.1\r\nHost: reviews\r\n\r\n")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
            assert gates.streaming.wait(DEADLINE)
        wait_for(lambda: total(samples(engine.render()), REQUESTS) == 1, "the request recorded")
    labels = one(samples(engine.render()), REQUESTS)
    assert (labels["response_code"], labels["response_flags"]) == ("200", "DC")


def test_an_app_error_is_recorded_as_the_500_the_server_sends(backend: Backend) -> None:
    engine = engine_for(backend)
    with uvicorn_server(starlette_app(engine, Gates())) as port:
        resp = httpx.get(f"http://127.0.0.1:{port}/boom", headers=client_headers())
    assert resp.status_code == 500
    labels = one(samples(engine.render()), REQUESTS)
    assert (labels["response_code"], labels["response_flags"]) == ("500", "-")


def test_the_principal_comes_from_the_tls_extension_only(backend: Backend) -> None:
    """No server available here exposes the ASGI TLS extension (uvicorn and hypercorn do
    not), so the scope a server such as Daphne would build is given by hand."""
    ca = LocalCA.create("cluster.local")
    cert = ca.issue("default", "productpage")
    engine = engine_for(backend, local_principal=SERVER_SA)
    app = IstioMiddleware(plain_app, engine)
    sent: list[Any] = []

    async def call(tls: dict[str, Any] | None) -> None:
        scope: dict[str, Any] = {
            "type": "http", "method": "GET", "path": "/", "raw_path": b"/", "query_string": b"",
            "http_version": "1.1", "headers": [(b"host", b"reviews")], "client": ("10.0.0.1", 5),
        }  # fmt: skip
        if tls is not None:
            scope["extensions"] = {"tls": tls}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        await app(scope, receive, send)

    pem = cert.cert_pem.decode()
    asyncio.run(call({"client_cert_chain": [pem], "client_cert_error": None}))
    asyncio.run(call({"client_cert_chain": [pem], "client_cert_error": "unverified"}))
    asyncio.run(call(None))
    found = samples(engine.render())
    mtls = one(found, REQUESTS, connection_security_policy="mutual_tls")
    assert mtls["source_principal"] == cert.principal
    plain = {"source_principal": "unknown", "connection_security_policy": "none"}
    assert total(found, REQUESTS, **plain) == 2
    assert len(select(found, REQUESTS)) == 2


def test_non_http_scopes_pass_through_untouched(backend: Backend) -> None:
    engine = engine_for(backend)
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    asyncio.run(IstioMiddleware(app, engine)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]
    assert total(samples(engine.render()), REQUESTS) == 0


def test_echo_body_roundtrip_counts_an_unread_body(backend: Backend) -> None:
    """A body the app reads is counted as read; the request is one series per outcome."""
    engine = engine_for(backend)
    with uvicorn_server(starlette_app(engine, Gates())) as port:
        resp = httpx.post(f"http://127.0.0.1:{port}/body", content=b"z" * 5000)
    assert json.loads(resp.text) == 5000
    found = samples(engine.render())
    assert total(found, "istio_request_bytes_sum") > 5000
    assert total(found, "istio_request_bytes_count") == 1
