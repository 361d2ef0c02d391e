"""Shared pieces of the integration tests (ASGI, WSGI, httpx, aiohttp, gRPC): nodes, the
client's and server's exchange headers, a real uvicorn in a thread, reading an engine."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from conftest import wait_until
from prometheus_client.parser import text_string_to_metric_families

from meshstats import StatsEngine
from meshstats._embed import Exchange

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

Sample = tuple[str, dict[str, str], float]


def client_headers() -> dict[str, str]:
    """What a client sidecar (or meshstats' client hooks) sends for productpage-v1."""
    ex = Exchange(StatsEngine(CLIENT_NODE))
    return {"x-envoy-peer-metadata": ex.metadata, "x-envoy-peer-metadata-id": ex.node_id}


def server_exchange() -> Exchange:
    return Exchange(StatsEngine(SERVER_NODE))


def samples(text: bytes | str) -> list[Sample]:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def select(found: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in found if s[0] == name and all(s[1].get(k) == v for k, v in labels.items())]


def total(found: list[Sample], name: str, **labels: str) -> float:
    return sum(s[2] for s in select(found, name, **labels))


def one(found: list[Sample], name: str, **labels: str) -> dict[str, str]:
    """The label set of the one series of ``name`` matching ``labels`` (asserts one)."""
    matched = select(found, name, **labels)
    assert len(matched) == 1, f"{name}{labels}: {len(matched)} series: {matched}"
    return matched[0][1]


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
