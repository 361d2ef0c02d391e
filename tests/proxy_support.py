"""Shared pieces of the sidecar tests: certificates, apps, reading a sidecar's metrics."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import os
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from conftest import Backend
from prometheus_client.parser import text_string_to_metric_families

from meshstats import StatsEngine, _loop
from meshstats.certs import LocalCA, principal_of
from meshstats.proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig

T = TypeVar("T")

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
CLIENT_ID = "sidecar~10.0.0.1~productpage-v1-abc.default~default.svc.cluster.local"
SERVER_ID = "sidecar~10.0.0.2~reviews-v2-xyz.default~default.svc.cluster.local"
CLIENT_SA = "spiffe://cluster.local/ns/default/sa/productpage"
SERVER_SA = "spiffe://cluster.local/ns/default/sa/reviews"
SERVICE_HOST = "reviews.default.svc.cluster.local"

# Every test body runs under this bound, so a proxy bug fails a test instead of hanging it.
TEST_TIMEOUT = 120.0
TEST_LOOP_ENV = "MESHSTATS_TEST_EVENT_LOOP"


def run(coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
    # The standard loop unless `pytest --event-loop uvloop` (or MESHSTATS_TEST_EVENT_LOOP)
    # asks for uvloop: the behaviour tests are the same on both.
    loop = os.environ.get(TEST_LOOP_ENV, "asyncio")
    return _loop.run(asyncio.wait_for(coro, timeout), _loop.choose({_loop.ENV: loop}))


@dataclass(frozen=True)
class Certs:
    ca: LocalCA
    client: Path
    server: Path
    rogue: Path  # same CA, another identity (a "client sidecar" the tests drive by hand)


def make_certs(root: Path) -> Certs:
    ca = LocalCA.create("cluster.local")
    return Certs(
        ca,
        ca.issue("default", "productpage").write(root / "client"),
        ca.issue("default", "reviews").write(root / "server"),
        ca.issue("default", "tester").write(root / "tester"),
    )


async def start_app(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


_RESERVED: list[Any] = []


def free_port() -> int:
    """A port nothing listens on, and nothing else can take for the rest of the run.

    The socket stays bound but never listens, so a connection is refused; released at
    once, the port could be handed to the next server bound to port 0 (a sidecar's admin
    port), which then answers where a test expects nobody.
    """
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _RESERVED.append(s)
    return int(s.getsockname()[1])


Sample = tuple[str, dict[str, str], float]


async def scrape(admin_url: str) -> list[Sample]:
    """Every sample a sidecar's admin port serves on /stats/prometheus."""

    def fetch() -> str:
        with urllib.request.urlopen(admin_url + "/stats/prometheus", timeout=10) as resp:
            return str(resp.read().decode("utf-8"))

    return samples(await asyncio.to_thread(fetch))


def samples(text: bytes | str) -> list[Sample]:
    """Every sample of a text exposition, parsed by prometheus_client."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def select(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in samples if s[0] == name and all(s[1].get(k) == v for k, v in labels.items())]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s[2] for s in select(samples, name, **labels))


@dataclass
class Response:
    """An HTTP/1.1 response as a raw client read it."""

    status: int
    fields: dict[bytes, bytes]
    body: bytes
    size: int  # bytes on the wire, head included


def codes(samples: list[Sample], reporter: str) -> dict[tuple[str, str], float]:
    """Requests by (response_code, response_flags)."""
    out: dict[tuple[str, str], float] = {}
    for _, labels, value in select(samples, "istio_requests_total", reporter=reporter):
        key = (labels["response_code"], labels["response_flags"])
        out[key] = out.get(key, 0) + value
    return out


def only_labels(samples: list[Sample], name: str, **labels: str) -> dict[str, str]:
    """The label set of the one series of ``name`` matching ``labels`` (asserts one)."""
    found = select(samples, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {len(found)} series: {found}"
    return found[0][1]


def assert_labels(got: Mapping[str, str], **expected: str) -> None:
    wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    assert not wrong, f"labels (got, expected): {wrong}"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Poll ``check`` until true: a closed connection is recorded just after the close."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# -- two sidecars and an app -----------------------------------------------------------------


@dataclass
class Mesh:
    client: Sidecar
    server: Sidecar

    @property
    def port(self) -> int:
        return self.client.outbound_ports[0]

    async def metrics(self) -> tuple[list[Sample], list[Sample]]:
        return await scrape(self.client.admin_url), await scrape(self.server.admin_url)


async def left_to_the_collector(work: Callable[[], Awaitable[object]]) -> tuple[int, str]:
    """How many objects ``work`` leaves in reference cycles (what only the cycle collector
    would free), with the collector off meanwhile; and the commonest kinds among them."""
    gc.collect()
    gc.disable()
    try:
        await work()
        gc.set_debug(gc.DEBUG_SAVEALL)
        found = gc.collect()
        kinds = collections.Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    return found, str(kinds.most_common(12))


async def loop_lookups(work: Callable[[], Awaitable[object]]) -> collections.Counter[str]:
    """Where the sidecar's code looked the running loop up while ``work`` ran, by function:
    ``asyncio.get_running_loop()``, and ``asyncio.current_task()`` without a loop (which
    looks it up). On 3.11 each lookup is a ``getpid()`` system call too, so the relay keeps
    its loop instead of asking per request."""
    seen: collections.Counter[str] = collections.Counter()
    get_running_loop, current_task = asyncio.get_running_loop, asyncio.current_task

    def note() -> None:
        caller = sys._getframe(2)
        if caller.f_globals.get("__name__", "").startswith("meshstats."):
            seen[f"{caller.f_globals['__name__']}.{caller.f_code.co_name}"] += 1

    def counted_get_running_loop() -> asyncio.AbstractEventLoop:
        note()
        return get_running_loop()

    def counted_current_task(
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Task[Any] | None:
        if loop is None:
            note()
        return current_task(loop)

    asyncio.get_running_loop = counted_get_running_loop
    asyncio.current_task = counted_current_task
    try:
        await work()
    finally:
        asyncio.get_running_loop, asyncio.current_task = get_running_loop, current_task
    return seen


def engine(config: SidecarConfig, backend: Backend) -> StatsEngine:
    """An engine on ``backend``'s store, for a sidecar with this config."""
    assert config.cert_dir is not None
    return StatsEngine(
        config.node, store=backend.store.Store(), local_principal=principal_of(config.cert_dir)
    )


@asynccontextmanager
async def mesh(
    certs: Certs,
    app_port: int,
    backend: Backend,
    client_settings: dict[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[Mesh]:
    """A client sidecar -> server sidecar -> app, both sidecars with ``settings`` (the client
    also with ``client_settings``, which win)."""
    inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol="http")
    server_cfg = SidecarConfig(
        node=SERVER_NODE, node_id=SERVER_ID, cert_dir=certs.server, inbound=inbound
    )
    server_cfg = dataclasses.replace(server_cfg, **settings)
    async with Sidecar(server_cfg, engine=engine(server_cfg, backend)) as server:
        out = OutboundConfig(
            port=0,
            upstream=("127.0.0.1", server.inbound_port),
            service_host=SERVICE_HOST,
            protocol="http",
        )
        client_cfg = SidecarConfig(
            node=CLIENT_NODE, node_id=CLIENT_ID, cert_dir=certs.client, outbound=(out,)
        )
        client_cfg = dataclasses.replace(client_cfg, **{**settings, **(client_settings or {})})
        async with Sidecar(client_cfg, engine=engine(client_cfg, backend)) as client:
            yield Mesh(client, server)
