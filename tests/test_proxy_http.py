"""HTTP/1.1 through two real sidecars on 127.0.0.1 with real mTLS.

The app is the standard library's HTTP server and the client ``http.client`` or a raw
socket, so nothing on either end shares the proxy's parser (h11). They run in threads;
the sidecars run on the test's event loop.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import http.client
import os
import socket
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from proxy_support import (
    CLIENT_ID,
    CLIENT_NODE,
    CLIENT_SA,
    SERVER_ID,
    SERVER_NODE,
    SERVER_SA,
    SERVICE_HOST,
    Certs,
    Sample,
    assert_labels,
    free_port,
    left_to_the_collector,
    loop_lookups,
    make_certs,
    only_labels,
    run,
    scrape,
    select,
    total,
)

from meshstats import encode_peer_header
from meshstats.proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig
from meshstats.proxy import http as http_relay
from meshstats.proxy.interrupt import Deadline

pytestmark = pytest.mark.timing

MX = "x-envoy-peer-metadata"
MX_ID = "x-envoy-peer-metadata-id"
EVIL_NODE = {"WORKLOAD_NAME": "evil", "NAMESPACE": "default", "LABELS": {"app": "evil"}}
EVIL = encode_peer_header(EVIL_NODE)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


# -- the app ------------------------------------------------------------------------------------


@dataclass
class Seen:
    headers: list[dict[str, str]] = field(default_factory=list)
    ports: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int(handler.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            body += handler.rfile.read(size)
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length", "0")))


def make_handler(seen: Seen) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _serve(self) -> None:
            with seen.lock:
                seen.headers.append({k.lower(): v for k, v in self.headers.items()})
                seen.ports.add(self.client_address[1])
            url = urlsplit(self.path)
            body = _read_body(self)
            if url.path.startswith("/status/"):
                code = int(url.path.rsplit("/", 1)[1])
                self._reply(code, f"status {code}".encode())
            elif url.path == "/echo" and url.query == "chunked=1":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(body), 300_007):
                    part = body[i : i + 300_007]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            elif url.path == "/echo":
                self._reply(200, body)
            elif url.path == "/spoof":  # an app trying to speak for its sidecar
                self._reply(200, b"spoof", [(MX, EVIL), (MX_ID, "evil")])
            else:
                self._reply(404, b"no")

        def _reply(
            self, code: int, body: bytes, extra: list[tuple[str, str]] | None = None
        ) -> None:
            self.send_response(code)
            for name, value in extra or []:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _serve

    return Handler


@contextmanager
def http_app() -> Iterator[tuple[Seen, int]]:
    seen = Seen()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(seen))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield seen, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- the mesh -----------------------------------------------------------------------------------


@dataclass
class Mesh:
    client: Sidecar
    server: Sidecar

    @property
    def port(self) -> int:
        return self.client.outbound_ports[0]


def server_config(certs: Certs, app_port: int) -> SidecarConfig:
    inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol="http")
    return SidecarConfig(
        node=SERVER_NODE, node_id=SERVER_ID, cert_dir=certs.server, inbound=inbound
    )


def client_config(certs: Certs, upstream: tuple[str, int] | None) -> SidecarConfig:
    out = OutboundConfig(port=0, upstream=upstream, service_host=SERVICE_HOST, protocol="http")
    return SidecarConfig(
        node=CLIENT_NODE, node_id=CLIENT_ID, cert_dir=certs.client, outbound=(out,)
    )


@asynccontextmanager
async def mesh(certs: Certs, app_port: int) -> AsyncIterator[Mesh]:
    async with Sidecar(server_config(certs, app_port)) as server:
        upstream = ("127.0.0.1", server.inbound_port)
        async with Sidecar(client_config(certs, upstream)) as client:
            yield Mesh(client, server)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def requests(
    port: int, calls: list[tuple[str, str, bytes | Iterator[bytes] | None, dict[str, str]]]
) -> list[Reply]:
    """Send ``calls`` over one keep-alive ``http.client`` connection (in a thread)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    replies = []
    try:
        for method, path, body, headers in calls:
            chunked = body is not None and not isinstance(body, bytes)
            conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
            resp = conn.getresponse()
            replies.append(
                Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
            )
    finally:
        conn.close()
    return replies


def codes(samples: list[Sample], reporter: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, labels, value in select(samples, "istio_requests_total", reporter=reporter):
        out[labels["response_code"]] = out.get(labels["response_code"], 0) + value
    return out


def no_mx(headers: dict[str, str]) -> bool:
    return MX not in headers and MX_ID not in headers


# -- tests --------------------------------------------------------------------------------------


def test_counts_labels_and_headers_never_reach_the_app(certs: Certs) -> None:
    spoof = {MX: EVIL, MX_ID: "evil", "Host": "reviews:9080"}
    calls: list[tuple[str, str, bytes | Iterator[bytes] | None, dict[str, str]]] = [
        ("GET", path, None, spoof)
        for path in ["/status/200"] * 3 + ["/status/404", "/status/503", "/status/503", "/spoof"]
    ]

    async def main() -> None:
        with http_app() as (seen, app_port):
            async with mesh(certs, app_port) as m:
                replies = await asyncio.to_thread(requests, m.port, calls)
                assert [r.status for r in replies] == [200, 200, 200, 404, 503, 503, 200]
                assert replies[0].body == b"status 200"
                assert all(no_mx(r.headers) for r in replies)  # incl. the app's own /spoof
                assert len(seen.headers) == len(calls)
                assert all(no_mx(h) for h in seen.headers)
                assert all(h["host"] == "reviews:9080" for h in seen.headers)
                assert len(seen.ports) == 1  # one upstream connection, reused (keep-alive)

                expected = {"200": 4, "404": 1, "503": 2}
                client = await scrape(m.client.admin_url)
                server = await scrape(m.server.admin_url)
                assert codes(client, "source") == expected
                assert codes(server, "destination") == expected
                assert codes(client, "destination") == codes(server, "source") == {}
                for samples, reporter, policy in (
                    (client, "source", "unknown"),
                    (server, "destination", "mutual_tls"),
                ):
                    labels = only_labels(samples, "istio_requests_total", response_code="404")
                    assert_labels(
                        labels,
                        reporter=reporter,
                        source_workload="productpage-v1",
                        source_app="productpage",
                        source_principal=CLIENT_SA,
                        destination_workload="reviews-v2",
                        destination_app="reviews",
                        destination_version="v2",
                        destination_principal=SERVER_SA,
                        request_protocol="http",
                        response_flags="-",
                        connection_security_policy=policy,
                    )
                    count = total(samples, "istio_request_duration_milliseconds_count")
                    assert count == len(calls)
                assert_labels(
                    only_labels(client, "istio_requests_total", response_code="404"),
                    destination_service=SERVICE_HOST,
                    destination_service_name="reviews",
                )

    run(main())


def test_relayed_requests_leave_no_reference_cycles(certs: Certs) -> None:
    """A request's objects go as it ends (reference counting), not at the cycle
    collector's next pass (as for HTTP/2: ``test_proxy_h2``): GETs and POSTs, one
    keep-alive connection, through two sidecars."""
    calls: list[tuple[str, str, bytes | Iterator[bytes] | None, dict[str, str]]] = [
        ("GET", "/status/200", None, {}),
        ("POST", "/echo", b"x" * 100, {}),
    ]

    async def main() -> None:
        with http_app() as (_, app_port):
            async with mesh(certs, app_port) as m:
                # Two connections' worth first: pools and caches are made once, kept.
                for _ in range(2):
                    await asyncio.to_thread(requests, m.port, calls)
                replies: list[Reply] = []

                async def relay() -> None:
                    replies.extend(await asyncio.to_thread(requests, m.port, calls * 20))

                found, kinds = await left_to_the_collector(relay)
                assert [r.status for r in replies] == [200] * 40
                # 40 requests through two sidecars: a cycle per request would be hundreds.
                assert found < 40, kinds

    run(main())


def test_relayed_requests_look_the_loop_up_once_per_connection(certs: Certs) -> None:
    """No step of a relayed request asks asyncio for the running loop (a ``getpid()`` each
    on 3.11; strace counted 3.3 per request per sidecar before the relay kept its own)."""
    calls: list[tuple[str, str, bytes | Iterator[bytes] | None, dict[str, str]]] = [
        ("GET", "/status/200", None, {}),
        ("POST", "/echo", b"x" * 100, {}),
    ]

    async def main() -> None:
        with http_app() as (_, app_port):
            async with mesh(certs, app_port) as m:
                await asyncio.to_thread(requests, m.port, calls)  # connections, pools: made once
                replies: list[Reply] = []

                async def relay() -> None:
                    replies.extend(await asyncio.to_thread(requests, m.port, calls * 20))

                seen = await loop_lookups(relay)
                assert [r.status for r in replies] == [200] * 40
                # One keep-alive connection, 40 requests through two sidecars: a lookup per
                # request would be 80 or more; the connection's own setup is a handful.
                assert sum(seen.values()) < 10, seen

    run(main())


def test_a_closed_connection_leaves_no_timer_armed(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each relay keeps one timer armed from request to request (``interrupt.Deadline``);
    the loop would hold it, and the relay with it, up to the idle timeout (an hour), had the
    relay not cancelled it as its connection ended. Once the sidecars stopped, none is
    armed."""
    made: weakref.WeakSet[Deadline] = weakref.WeakSet()
    created = [0]

    class Counted(Deadline):
        __slots__ = ("__weakref__",)

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            super().__init__(loop)
            made.add(self)
            created[0] += 1

    monkeypatch.setattr(http_relay, "Deadline", Counted)

    async def main() -> list[bool]:
        with http_app() as (_, app_port):
            async with mesh(certs, app_port) as m:
                for _ in range(3):  # three client connections, the upstream one reused
                    await asyncio.to_thread(requests, m.port, [("GET", "/status/200", None, {})])
        # Each relay made one (so the test counts the right class): three client-side, one
        # or more server-side.
        assert created[0] >= 4
        gc.collect()
        return [deadline.armed for deadline in made]

    assert not any(run(main()))


def test_chunked_and_large_bodies_byte_identical(certs: Certs) -> None:
    big = os.urandom(2_000_003)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(big), 65_521):
            yield big[i : i + 65_521]

    calls: list[tuple[str, str, bytes | Iterator[bytes] | None, dict[str, str]]] = [
        ("POST", "/echo?chunked=1", pieces(), {}),  # chunked both ways
        ("POST", "/echo", big, {}),  # content-length both ways
        ("POST", "/echo?chunked=1", b"", {}),  # an empty chunked response
    ]

    async def main() -> None:
        with http_app() as (seen, app_port):
            async with mesh(certs, app_port) as m:
                replies = await asyncio.to_thread(requests, m.port, calls)
                digest = hashlib.sha256(big).digest()
                assert hashlib.sha256(replies[0].body).digest() == digest
                assert replies[0].headers.get("transfer-encoding") == "chunked"
                assert hashlib.sha256(replies[1].body).digest() == digest
                assert replies[2].status == 200 and replies[2].body == b""
                assert seen.headers[0].get("transfer-encoding") == "chunked"
                assert len(seen.ports) == 1
                for sidecar, reporter in ((m.client, "source"), (m.server, "destination")):
                    samples = await scrape(sidecar.admin_url)
                    assert codes(samples, reporter) == {"200": 3}
                    # Each request and each response carried the body at least once.
                    assert total(samples, "istio_request_bytes_sum") > 2 * len(big)
                    assert total(samples, "istio_response_bytes_sum") > 2 * len(big)

    run(main())


def _raw_exchange(port: int, requests_: list[bytes]) -> tuple[int, int]:
    """Send raw requests on one connection, read each content-length response whole;
    returns (bytes sent, bytes received)."""
    received = 0
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        stream = sock.makefile("rb")
        for req in requests_:
            sock.sendall(req)
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = stream.readline()
                assert line, "connection closed before the response"
                head += line
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            received += len(head) + len(stream.read(length))
    return sum(map(len, requests_)), received


def test_wire_bytes_exact_on_both_sides(certs: Certs) -> None:
    reqs = [
        b"GET /status/200 HTTP/1.1\r\nHost: reviews:9080\r\nX-Test: 1\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: reviews:9080\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /status/404 HTTP/1.1\r\nHost: reviews:9080\r\n\r\n",
    ]
    # What each sidecar adds on the hop between them, and the other removes.
    client_mx = f"{MX}: {encode_peer_header(CLIENT_NODE)}\r\n{MX_ID}: {CLIENT_ID}\r\n"
    server_mx = f"{MX}: {encode_peer_header(SERVER_NODE)}\r\n{MX_ID}: {SERVER_ID}\r\n"

    async def main() -> None:
        with http_app() as (_, app_port):
            async with mesh(certs, app_port) as m:
                sent, received = await asyncio.to_thread(_raw_exchange, m.port, reqs)
                client = await scrape(m.client.admin_url)
                server = await scrape(m.server.admin_url)
        n = len(reqs)
        assert total(client, "istio_request_bytes_sum") == sent
        assert total(client, "istio_response_bytes_sum") == received
        assert total(server, "istio_request_bytes_sum") == sent + n * len(client_mx)
        assert total(server, "istio_response_bytes_sum") == received + n * len(server_mx)
        assert total(client, "istio_request_bytes_count") == n

    run(main())


def test_app_down_gives_503_uf_recorded_on_both_sides(certs: Certs) -> None:
    async def main() -> None:
        async with mesh(certs, free_port()) as m:
            calls: list[tuple[str, str, bytes | Iterator[bytes] | None, dict[str, str]]] = [
                ("GET", "/", None, {}),
                ("POST", "/", b"body that must be drained", {}),
            ]
            replies = await asyncio.to_thread(requests, m.port, calls)
            assert [r.status for r in replies] == [503, 503]
            assert b"connection failure" in replies[0].body
            server = await scrape(m.server.admin_url)
            client = await scrape(m.client.admin_url)
        assert_labels(
            only_labels(server, "istio_requests_total"),
            reporter="destination",
            response_code="503",
            response_flags="UF",
            source_workload="productpage-v1",
        )
        assert total(server, "istio_requests_total") == 2
        # The client got a 503 from its upstream: no flag of its own, and the local reply
        # still told it who the server is.
        assert_labels(
            only_labels(client, "istio_requests_total"),
            reporter="source",
            response_code="503",
            response_flags="-",
            destination_workload="reviews-v2",
        )

    run(main())


@pytest.mark.parametrize("flag", ["UF", "UH"])
def test_upstream_sidecar_missing(certs: Certs, flag: str) -> None:
    upstream = ("127.0.0.1", free_port()) if flag == "UF" else None

    async def main() -> None:
        async with Sidecar(client_config(certs, upstream)) as client:
            port = client.outbound_ports[0]
            get: list[tuple[str, str, bytes | Iterator[bytes] | None, dict[str, str]]] = [
                ("GET", "/", None, {})
            ] * 2
            replies = await asyncio.to_thread(requests, port, get)
            assert [r.status for r in replies] == [503, 503]
            samples = await scrape(client.admin_url)
        assert_labels(
            only_labels(samples, "istio_requests_total"),
            reporter="source",
            response_code="503",
            response_flags=flag,
            destination_workload="unknown",
            destination_principal="unknown",
        )
        assert total(samples, "istio_requests_total") == 2

    run(main())


def _plaintext_inbound(
    certs: Certs, extra_headers: str
) -> tuple[bytes, dict[str, str], list[Sample]]:
    """One raw plaintext request straight to the server sidecar's (permissive) inbound."""

    def call(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(
                b"GET /status/200 HTTP/1.1\r\nHost: reviews:9080\r\n"
                + extra_headers.encode()
                + b"Connection: close\r\n\r\n"
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

    async def main() -> tuple[bytes, dict[str, str], list[Sample]]:
        with http_app() as (seen, app_port):
            async with Sidecar(server_config(certs, app_port)) as server:
                data = await asyncio.to_thread(call, server.inbound_port)
                return data, seen.headers[0], await scrape(server.admin_url)

    return run(main())


def test_spoofed_metadata_from_plaintext_client_sets_no_principal(certs: Certs) -> None:
    identity = "spiffe://cluster.local/ns/default/sa/admin"
    evil = encode_peer_header({**EVIL_NODE, "IDENTITY": identity})
    response, app_saw, samples = _plaintext_inbound(certs, f"{MX}: {evil}\r\n{MX_ID}: x\r\n")
    assert response.startswith(b"HTTP/1.1 200 ")
    assert no_mx(app_saw)
    labels = only_labels(samples, "istio_requests_total")
    # Istio takes header metadata from anyone (so does meshstats: labels), but an identity
    # only from a verified certificate: a plaintext client has none.
    assert_labels(
        labels,
        reporter="destination",
        source_workload="evil",
        source_principal="unknown",
        destination_principal=SERVER_SA,
        connection_security_policy="none",
    )


@pytest.mark.parametrize(
    ("sent", "answered"),
    [("", ()), (f"{MX_ID}: someone\r\n", (MX_ID,)), (f"{MX}: {EVIL}\r\n", (MX,))],
)
def test_server_answers_with_its_headers_only_when_asked(
    certs: Certs, sent: str, answered: tuple[str, ...]
) -> None:
    response, app_saw, _ = _plaintext_inbound(certs, sent)
    head = response.split(b"\r\n\r\n", 1)[0].decode().lower().split("\r\n")
    names = {line.split(":", 1)[0] for line in head[1:]}
    assert {MX, MX_ID} & names == set(answered)
    if MX_ID in answered:
        assert f"{MX_ID}: {SERVER_ID}".lower() in head
    assert no_mx(app_saw)
