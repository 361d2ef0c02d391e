"""Shared pieces of the integration tests (ASGI, WSGI, httpx, aiohttp, gRPC): nodes, the
client's and server's exchange headers, a real uvicorn in a thread, reading an engine."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from conftest import wait_until
from proxy_support import Sample, samples, select, total
from proxy_support import only_labels as one

from meshstats import StatsEngine
from meshstats._embed import Exchange

__all__ = [
    "CLIENT_NODE", "DEADLINE", "SERVER_NODE", "SERVICE_HOST", "Sample", "client_headers",
    "listening_socket", "one", "raw_exchange", "samples", "select", "server_exchange", "total",
    "uvicorn_server", "wait_for",
]  # fmt: skip

CLIENT_NODE: dict[str, Any] = {
    "NAME": "productpage-v1-abc",
    "WORKLOAD_NAME": "productpage-v1",
    "NAMESPACE": "default",
    "LABELS": {"app": "productpage", "version": "v1"},
}
SERVER_NODE: dict[str, Any] = {
    "NAME": "reviews-v2-xyz",
    "WORKLOAD_NAME": "reviews-v2",
    "NAMESPACE": "default",
    "LABELS": {"app": "reviews", "version": "v2"},
}
SERVICE_HOST = "reviews.default.svc.cluster.local"
DEADLINE = 60.0


def client_headers() -> dict[str, str]:
    """What a client sidecar (or meshstats' client hooks) sends for productpage-v1."""
    ex = Exchange(StatsEngine(CLIENT_NODE))
    return {"x-envoy-peer-metadata": ex.metadata, "x-envoy-peer-metadata-id": ex.node_id}


def server_exchange() -> Exchange:
    return Exchange(StatsEngine(SERVER_NODE))


def wait_for(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Wait until ``check()`` holds (a request is recorded just after its connection ends)."""
    wait_until(check, what, timeout)


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextlib.contextmanager
def uvicorn_server(app: Any, **config: Any) -> Iterator[int]:
    """A real uvicorn serving ``app`` on 127.0.0.1 from a thread; yields its port."""
    import uvicorn

    sock = listening_socket()
    port = int(sock.getsockname()[1])
    cfg = uvicorn.Config(app, log_level="warning", lifespan="off", **config)
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "uvicorn started")
        yield port
    finally:
        server.should_exit = True
        thread.join(DEADLINE)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` as is and read the whole response (the server closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as conn:
        conn.sendall(request)
        chunks = []
        while True:
            data = conn.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)
