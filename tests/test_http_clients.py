"""Client side (reporter source): meshstats.httpx transports and the meshstats.aiohttp trace
config, against a real uvicorn whose app is behind meshstats.asgi, so both ends of one
request are checked against each other, on both backends."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from conftest import Backend
from embed_support import (
    CLIENT_NODE,
    DEADLINE,
    SERVER_NODE,
    SERVICE_HOST,
    one,
    samples,
    total,
    uvicorn_server,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from meshstats import StatsEngine
from meshstats.aiohttp import istio_trace_config
from meshstats.asgi import IstioMiddleware
from meshstats.certs import CA_CERT_FILE, CERT_FILE, KEY_FILE, LocalCA, client_context
from meshstats.httpx import AsyncIstioTransport, IstioTransport

REQUESTS = "istio_requests_total"
# Real servers, sockets, threads and child processes (scripts/under_load.sh repeats them).
pytestmark = pytest.mark.timing


class Pair:
    """A client engine and a server engine with a real uvicorn between them."""

    def __init__(self, backend: Backend, port: int, server: StatsEngine) -> None:
        self.client = StatsEngine(CLIENT_NODE, store=backend.store.Store())
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


def app_for(engine: StatsEngine) -> Starlette:
    async def echo(request: Request) -> Response:
        body = await request.body()
        seen = sorted(k for k in request.headers.keys() if k.startswith("x-envoy"))
        return JSONResponse({"seen": seen, "size": len(body)})

    async def big(request: Request) -> Response:
        async def chunks() -> Any:
            for _ in range(64):
                yield b"z" * 65536

        return StreamingResponse(chunks(), headers={"content-length": str(64 * 65536)})

    app = Starlette(routes=[Route("/echo", echo, methods=["GET", "POST"]), Route("/big", big)])
    app.add_middleware(IstioMiddleware, engine=engine)
    return app


@pytest.fixture
def pair(backend: Backend) -> Iterator[Pair]:
    server = StatsEngine(SERVER_NODE, store=backend.store.Store())
    with uvicorn_server(app_for(server), server_header=False, date_header=False) as port:
        yield Pair(backend, port, server)


def check_both_ends(pair: Pair) -> None:
    """One request seen from both sides: the same peers, the same sizes, the same code."""
    host = f"127.0.0.1:{pair.port}"
    client = samples(pair.client.render())
    labels = one(client, REQUESTS)
    assert labels == labels | {
        "reporter": "source",
        "source_workload": "productpage-v1",
        "source_app": "productpage",
        "destination_workload": "reviews-v2",
        "destination_app": "reviews",
        "destination_version": "v2",
        "destination_service": host,
        "destination_service_name": host,
        "response_code": "200",
        "response_flags": "-",
        "request_protocol": "http",
        "connection_security_policy": "unknown",
    }
    server = samples(pair.server.render())
    assert one(server, REQUESTS)["source_workload"] == "productpage-v1"
    for family in ("istio_request_bytes_sum", "istio_response_bytes_sum"):
        # uvicorn adds no headers here: the server middleware's count is the wire's too.
        assert total(client, family) == total(server, family), family
    assert total(client, "istio_request_bytes_sum") > 1500 + 200  # body and exchange headers


def test_httpx_sync(pair: Pair) -> None:
    with httpx.Client(transport=IstioTransport(pair.client), timeout=DEADLINE) as client:
        resp = client.post(f"{pair.url}/echo", content=b"q" * 1500)
    assert resp.json() == {"seen": [], "size": 1500}  # the app saw no exchange header
    assert "x-envoy-peer-metadata" not in resp.headers  # nor did the caller
    assert "x-envoy-peer-metadata-id" not in resp.headers
    check_both_ends(pair)


def test_httpx_async(pair: Pair) -> None:
    async def main() -> httpx.Response:
        transport = AsyncIstioTransport(pair.client)
        async with httpx.AsyncClient(transport=transport, timeout=DEADLINE) as client:
            return await client.post(f"{pair.url}/echo", content=b"q" * 1500)

    resp = asyncio.run(main())
    assert resp.json() == {"seen": [], "size": 1500}
    assert "x-envoy-peer-metadata" not in resp.headers
    check_both_ends(pair)


def test_httpx_caller_headers_are_replaced_and_service_host_names_the_service(
    pair: Pair,
) -> None:
    transport = IstioTransport(pair.client, service_host=SERVICE_HOST)
    with httpx.Client(transport=transport, timeout=DEADLINE) as client:
        resp = client.get(
            f"{pair.url}/echo",
            headers={"x-envoy-peer-metadata": "c3B vb2Y=", "x-envoy-peer-metadata-id": "evil"},
        )
    assert resp.status_code == 200
    labels = one(samples(pair.client.render()), REQUESTS)
    assert labels["destination_service"] == SERVICE_HOST
    assert labels["destination_service_name"] == "reviews"
    assert labels["destination_service_namespace"] == "default"
    # The server saw this workload, not what the caller put in the headers.
    assert one(samples(pair.server.render()), REQUESTS)["source_workload"] == "productpage-v1"


def test_httpx_a_response_closed_early_is_DC(pair: Pair) -> None:
    with httpx.Client(transport=IstioTransport(pair.client), timeout=DEADLINE) as client:
        with client.stream("GET", f"{pair.url}/big") as resp:
            assert len(next(resp.iter_raw())) > 0
    labels = one(samples(pair.client.render()), REQUESTS)
    assert (labels["response_code"], labels["response_flags"]) == ("200", "DC")


def refused_port() -> tuple[socket.socket, int]:
    """A port bound but not listening: connections to it are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, int(sock.getsockname()[1])


def test_httpx_connection_refused_is_503_UF(backend: Backend) -> None:
    engine = StatsEngine(CLIENT_NODE, store=backend.store.Store())
    sock, port = refused_port()
    with sock, httpx.Client(transport=IstioTransport(engine)) as client:
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{port}/")
    labels = one(samples(engine.render()), REQUESTS)
    assert (labels["response_code"], labels["response_flags"]) == ("503", "UF")
    assert labels["destination_workload"] == "unknown"
    assert labels["destination_service"] == f"127.0.0.1:{port}"


def test_aiohttp(pair: Pair) -> None:
    async def main() -> Any:
        config = istio_trace_config(pair.client)
        async with aiohttp.ClientSession(trace_configs=[config]) as session:
            async with session.post(f"{pair.url}/echo", data=b"q" * 1500) as resp:
                return await resp.json()

    assert asyncio.run(main()) == {"seen": [], "size": 1500}
    check_both_ends(pair)


def test_aiohttp_connection_refused_is_503_UF(backend: Backend) -> None:
    engine = StatsEngine(CLIENT_NODE, store=backend.store.Store())
    sock, port = refused_port()

    async def main() -> None:
        config = istio_trace_config(engine)
        async with aiohttp.ClientSession(trace_configs=[config]) as session:
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f"http://127.0.0.1:{port}/")

    with sock:
        asyncio.run(main())
    labels = one(samples(engine.render()), REQUESTS)
    assert (labels["response_code"], labels["response_flags"]) == ("503", "UF")


def test_the_destination_principal_is_the_verified_server_certificate(
    backend: Backend, tmp_path: Path
) -> None:
    ca = LocalCA.create("cluster.local")
    server_dir = ca.issue("default", "reviews").write(tmp_path / "server")
    client_dir = ca.issue("default", "productpage").write(tmp_path / "client")
    server = StatsEngine(SERVER_NODE, store=backend.store.Store())
    client = StatsEngine(CLIENT_NODE, store=backend.store.Store())
    tls = {
        "ssl_certfile": str(server_dir / CERT_FILE),
        "ssl_keyfile": str(server_dir / KEY_FILE),
        "ssl_ca_certs": str(server_dir / CA_CERT_FILE),
    }
    with uvicorn_server(app_for(server), **tls) as port:
        verify = client_context(client_dir, ["http/1.1"])
        transport = IstioTransport(client, httpx.HTTPTransport(verify=verify))
        with httpx.Client(transport=transport, timeout=DEADLINE) as http:
            assert http.get(f"https://127.0.0.1:{port}/echo").status_code == 200

        async def main() -> int:
            config = istio_trace_config(client)
            async with aiohttp.ClientSession(trace_configs=[config]) as session:
                async with session.get(f"https://127.0.0.1:{port}/echo", ssl=verify) as resp:
                    await resp.read()
                    return resp.status

        assert asyncio.run(main()) == 200
    found = samples(client.render())
    assert total(found, REQUESTS, destination_principal=ca.principal("default", "reviews")) == 2
    assert total(found, REQUESTS, destination_workload="reviews-v2") == 2
