"""What a downstream does wrong, at the sidecar (a security boundary; issue 10.1, 10.2).

Failures are recorded against the side that caused them, with Envoy's response flags: a
client that goes away is ``0``/``DC`` (or the upstream's code with ``DC`` once the response
began), one that sends something malformed ``400``/``DPE``, HTTP/1.0 ``426``/``DPE``; none of
them is an upstream ``503``/``UC``, which Istio's dashboards would count against the app.

HTTP/1.1 framing (RFC 9112 §6.1, §6.3):

A request whose body two parsers could frame differently (Content-Length and
Transfer-Encoding together, repeated Content-Length, a coding other than a final chunked,
Transfer-Encoding on HTTP/1.0) is refused with 400 before anything reaches the upstream,
the connection is closed, and the request is recorded as Envoy records it (400, ``DPE``).
Framing headers are never forwarded as received: each hop gets exactly one, for the framing
the sidecar parsed. The app here is a raw socket that frames by Content-Length only when it
sees no Transfer-Encoding, and records every byte it got, so a smuggled request would show.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
from proxy_support import (
    SERVER_ID,
    SERVER_NODE,
    Certs,
    make_certs,
    run,
    scrape,
    select,
    start_app,
    total,
)

from meshstats.proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig
from meshstats.proxy.http import BODY_EVENTS_PER_STEP

pytestmark = pytest.mark.timing

SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@dataclass
class RawApp:
    """Reads requests as a naive server does (Content-Length unless chunked), keeps the raw
    bytes, answers each with ``reply``."""

    reply: bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    received: bytearray = field(default_factory=bytearray)
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received += head
                self.heads.append(head)
                fields = {
                    line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
                    for line in head.split(b"\r\n")[1:]
                    if b":" in line
                }
                if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                    self.received += await reader.readuntil(b"0\r\n\r\n")
                else:
                    self.received += await reader.readexactly(
                        int(fields.get(b"content-length", b"0"))
                    )
                writer.write(self.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def inbound_config(certs: Certs, app_port: int) -> SidecarConfig:
    inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol="http")
    return SidecarConfig(node=SERVER_NODE, node_id=SERVER_ID, cert_dir=certs.server,
                         inbound=inbound, accept_http_10=True)  # fmt: skip


def passthrough_config(certs: Certs, app_port: int) -> SidecarConfig:
    """An outbound listener straight to the app (plaintext, as to a service outside)."""
    out = OutboundConfig(port=0, upstream=("127.0.0.1", app_port), protocol="http",
                         mode="passthrough")  # fmt: skip
    return SidecarConfig(node=SERVER_NODE, node_id=SERVER_ID, cert_dir=certs.server,
                         outbound=(out,), accept_http_10=True)  # fmt: skip


def exchange(port: int, data: bytes, half_close: bool = True) -> bytes:
    """Send ``data`` raw (and end the write side), read until the sidecar closes. A sidecar,
    as Envoy, takes a half-close while a response is awaited for a client gone."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


def port_of(sidecar: Sidecar, listener: str) -> int:
    return sidecar.inbound_port if listener == "inbound" else sidecar.outbound_ports[0]


AMBIGUOUS = {
    "CL then TE": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 43\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "TE then CL": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 43\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "two equal CL": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
    b"Content-Length: 2\r\n\r\nhi",
    "a CL list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nhi",
    "conflicting CL": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
    b"Content-Length: 33\r\n\r\nhi" + SMUGGLED,
    "a coding before chunked": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "chunked twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE on HTTP/1.0": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


# Codings the sidecar does not implement: 501 (RFC 9112 §6.1), as Envoy answers.
NOT_IMPLEMENTED = {"a coding before chunked", "chunked twice"}


@pytest.mark.parametrize("listener", ["inbound", "outbound"])
@pytest.mark.parametrize("case", sorted(AMBIGUOUS))
def test_ambiguous_framing_is_refused_and_recorded(certs: Certs, listener: str, case: str) -> None:
    async def main() -> None:
        app = RawApp()
        server, app_port = await start_app(app)
        config = (inbound_config if listener == "inbound" else passthrough_config)(certs, app_port)
        async with server, Sidecar(config) as sidecar:
            got = await asyncio.to_thread(exchange, port_of(sidecar, listener), AMBIGUOUS[case])
            code = b"501" if case in NOT_IMPLEMENTED else b"400"
            assert got.startswith(b"HTTP/1.1 " + code + b" ")
            assert b"connection: close" in got.lower()
            assert got.count(b"HTTP/1.1") == 1  # one answer, then closed: nothing smuggled
            assert app.connections == 0 and bytes(app.received) == b""
            samples = await scrape(sidecar.admin_url)
            rejected = select(samples, "istio_requests_total", response_code=code.decode())
            assert [(s[1]["response_flags"], s[2]) for s in rejected] == [("DPE", 1.0)]
            assert total(samples, "istio_requests_total") == 1

    run(main())


@pytest.mark.parametrize("listener", ["inbound", "outbound"])
def test_each_hop_gets_one_framing_header(certs: Certs, listener: str) -> None:
    """Valid requests pass with exactly the framing the sidecar parsed; a response with both
    headers reaches the client chunked, without its Content-Length (§6.3)."""
    both = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
    requests_ = [
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
        b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ]

    async def main() -> None:
        app = RawApp(reply=both + b"2\r\nok\r\n0\r\n\r\n")
        server, app_port = await start_app(app)
        config = (inbound_config if listener == "inbound" else passthrough_config)(certs, app_port)
        async with server, Sidecar(config) as sidecar:
            # No half-close: the last request asks to close, and the sidecar does.
            data = b"".join(requests_)
            got = await asyncio.to_thread(exchange, port_of(sidecar, listener), data, False)
            framing = [
                sorted(
                    line.split(b":")[0].lower()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith((b"content-length", b"transfer-encoding"))
                )
                for head in app.heads
            ]
            assert framing == [[b"transfer-encoding"], [b"content-length"], []]
            responses = got.split(b"HTTP/1.1 200 OK\r\n")[1:]
            assert len(responses) == 3
            for response in responses:
                head = response.split(b"\r\n\r\n")[0].lower()
                assert b"transfer-encoding: chunked" in head
                assert b"content-length" not in head
            samples = await scrape(sidecar.admin_url)
            assert total(samples, "istio_requests_total", response_code="200") == 3

    run(main())


def test_a_request_that_does_not_parse_is_recorded(certs: Certs) -> None:
    async def main() -> None:
        app = RawApp()
        server, app_port = await start_app(app)
        async with server, Sidecar(inbound_config(certs, app_port)) as sidecar:
            got = await asyncio.to_thread(
                exchange, sidecar.inbound_port, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"
            )
            assert got.startswith(b"HTTP/1.1 400 ")
            assert app.connections == 0
            samples = await scrape(sidecar.admin_url)
            rejected = select(samples, "istio_requests_total", response_code="400")
            assert [(s[1]["response_flags"], s[2]) for s in rejected] == [("DPE", 1.0)]
            # Nothing at all arriving is no request: a connection closed at once is not.
            await asyncio.to_thread(exchange, sidecar.inbound_port, b"")
            samples = await scrape(sidecar.admin_url)
            assert total(samples, "istio_requests_total") == 1

    run(main())


# -- a client that goes away, or sends a broken body ---------------------------------------


def send_then(port: int, data: bytes, how: str, read_head: bool = False) -> bytes:
    """Send ``data``, then close (FIN) or reset (RST); returns what came back first."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    got = b""
    try:
        sock.sendall(data)
        if read_head:
            while b"\r\n\r\n" not in got:
                chunk = sock.recv(65536)
                assert chunk, "closed before the response head"
                got += chunk
        if how == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                got += chunk
    finally:
        sock.close()
    return got


async def recorded(sidecar: Sidecar, n: int = 1) -> list[tuple[str, str, float]]:
    """(code, flags, count) of istio_requests_total once ``n`` requests are recorded."""
    from proxy_support import eventually

    async def done() -> bool:
        return total(await scrape(sidecar.admin_url), "istio_requests_total") >= n

    await eventually(done)
    samples = select(await scrape(sidecar.admin_url), "istio_requests_total")
    return sorted((s[1]["response_code"], s[1]["response_flags"], s[2]) for s in samples)


@pytest.mark.parametrize("listener", ["inbound", "outbound"])
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_a_client_gone_mid_body_is_a_downstream_disconnect(
    certs: Certs, listener: str, how: str
) -> None:
    partial = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10

    async def main() -> None:
        app = RawApp()
        server, app_port = await start_app(app)
        config = (inbound_config if listener == "inbound" else passthrough_config)(certs, app_port)
        async with server, Sidecar(config) as sidecar:
            got = await asyncio.to_thread(send_then, port_of(sidecar, listener), partial, how)
            assert b"503" not in got  # nobody is told the upstream failed
            assert await recorded(sidecar) == [("0", "DC", 1.0)]
            assert b"/upload" not in bytes(app.received) or len(app.received) < 1000

    run(main())


@pytest.mark.parametrize("listener", ["inbound", "outbound"])
def test_a_malformed_chunk_is_a_downstream_protocol_error(certs: Certs, listener: str) -> None:
    broken = (
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nZZ\r\n"
    )

    async def main() -> None:
        app = RawApp()
        server, app_port = await start_app(app)
        config = (inbound_config if listener == "inbound" else passthrough_config)(certs, app_port)
        async with server, Sidecar(config) as sidecar:
            got = await asyncio.to_thread(send_then, port_of(sidecar, listener), broken, "fin")
            assert got.startswith(b"HTTP/1.1 400 ")
            assert await recorded(sidecar) == [("400", "DPE", 1.0)]

    run(main())


def test_http_10_is_upgrade_required_by_default(certs: Certs) -> None:
    async def main() -> None:
        app = RawApp()
        server, app_port = await start_app(app)
        config = inbound_config(certs, app_port)
        config = SidecarConfig(node=config.node, cert_dir=config.cert_dir,
                               inbound=config.inbound)  # fmt: skip
        assert not config.accept_http_10
        async with server, Sidecar(config) as sidecar:
            got = await asyncio.to_thread(exchange, sidecar.inbound_port, b"GET / HTTP/1.0\r\n\r\n")
            assert got.startswith(b"HTTP/1.1 426 Upgrade Required")
            assert app.connections == 0
            assert await recorded(sidecar) == [("426", "DPE", 1.0)]

    run(main())


def test_a_client_gone_mid_response_keeps_the_code_with_dc(certs: Certs) -> None:
    """The response had begun: its status stands, the flag says the client left."""
    big = 64 * 1024 * 1024  # more than every socket buffer on the way can hold

    async def main() -> None:
        async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % big)
            block = b"y" * (1 << 20)
            try:
                for _ in range(big >> 20):
                    writer.write(block)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        server, app_port = await start_app(huge)
        async with server, Sidecar(inbound_config(certs, app_port)) as sidecar:
            got = await asyncio.to_thread(
                send_then,
                sidecar.inbound_port,
                b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n",
                "rst",
                True,
            )
            assert got.startswith(b"HTTP/1.1 200 ")
            assert await recorded(sidecar) == [("200", "DC", 1.0)]

    run(main())


def test_a_head_over_the_limit_is_431(certs: Certs) -> None:
    async def main() -> None:
        app = RawApp()
        server, app_port = await start_app(app)
        async with server, Sidecar(inbound_config(certs, app_port)) as sidecar:
            huge = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n"
            got = await asyncio.to_thread(exchange, sidecar.inbound_port, huge)
            assert got.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
            assert app.connections == 0
            assert await recorded(sidecar) == [("431", "DPE", 1.0)]

    run(main())


# -- timeouts, and a client that gives up (issue 10.3) ---------------------------------------


@dataclass
class SilentApp:
    """Reads a request head, never answers; says when its connection ends."""

    connections: int = 0
    asked: asyncio.Event = field(default_factory=asyncio.Event)  # a request head arrived
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.asked.set()
            await reader.read()  # until the sidecar lets go of the connection
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()


def timeouts_config(certs: Certs, app_port: int, **timeouts: Any) -> SidecarConfig:
    inbound = InboundConfig(port=0, app=("127.0.0.1", app_port), protocol="http")
    return SidecarConfig(
        node=SERVER_NODE, node_id=SERVER_ID, cert_dir=certs.server, inbound=inbound, **timeouts
    )


GET = b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"


def response_head(port: int, data: bytes) -> bytes:
    """Send ``data``, return the head of the first response (the connection may stay)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = sock.recv(65536)
            assert chunk, f"closed before a response head: {got!r}"
            got += chunk
        return got


@pytest.mark.parametrize(
    ("timeouts", "status", "flags"),
    [
        ({"request_timeout": 0.3}, b"504", "UT"),
        ({"stream_idle_timeout": 0.3}, b"408", "SI"),
    ],
)
def test_an_app_that_never_answers_times_out(
    certs: Certs, timeouts: dict[str, float], status: bytes, flags: str
) -> None:
    async def main() -> None:
        app = SilentApp()
        server, app_port = await start_app(app)
        async with server, Sidecar(timeouts_config(certs, app_port, **timeouts)) as sidecar:
            got = await asyncio.to_thread(response_head, sidecar.inbound_port, GET)
            assert got.startswith(b"HTTP/1.1 " + status)
            await asyncio.wait_for(app.closed.wait(), 60)  # the upstream was let go
            assert await recorded(sidecar) == [(status.decode(), flags, 1.0)]

    run(main())


def test_a_client_that_gives_up_resets_the_upstream(certs: Certs) -> None:
    """No timeout configured: the client leaving is what ends it (Envoy: 0/DC), and the
    app's connection is closed instead of held forever."""

    async def main() -> None:
        app = SilentApp()
        server, app_port = await start_app(app)
        async with server, Sidecar(timeouts_config(certs, app_port)) as sidecar:
            sock = socket.create_connection(("127.0.0.1", sidecar.inbound_port), timeout=20)
            sock.sendall(GET)
            await asyncio.wait_for(app.asked.wait(), 60)  # it reached the app: now give up
            sock.close()
            await asyncio.wait_for(app.closed.wait(), 60)
            assert await recorded(sidecar) == [("0", "DC", 1.0)]

    run(main())


def test_a_stalled_request_body_is_408(certs: Certs) -> None:
    async def main() -> None:
        app = RawApp()
        server, app_port = await start_app(app)
        config = timeouts_config(certs, app_port, stream_idle_timeout=0.3)
        async with server, Sidecar(config) as sidecar:
            stalled = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab"
            got = await asyncio.to_thread(exchange, sidecar.inbound_port, stalled, False)
            assert got.startswith(b"HTTP/1.1 408 Request Timeout")
            assert await recorded(sidecar) == [("408", "SI", 1.0)]

    run(main())


def test_an_idle_keep_alive_connection_is_closed(certs: Certs) -> None:
    async def main() -> None:
        app = RawApp()
        server, app_port = await start_app(app)
        config = timeouts_config(certs, app_port, idle_timeout=0.3)
        async with server, Sidecar(config) as sidecar:
            # One request, then nothing: the sidecar closes the connection by itself.
            got = await asyncio.to_thread(exchange, sidecar.inbound_port, GET, False)
            assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"ok")
            assert await recorded(sidecar) == [("200", "-", 1.0)]

    run(main())


def test_timeouts_default_to_envoys() -> None:
    cfg = SidecarConfig.from_mapping({"node": {"WORKLOAD_NAME": "w"}})
    assert (cfg.request_timeout, cfg.stream_idle_timeout, cfg.idle_timeout) == (0, 300, 3600)
    cfg = SidecarConfig.from_mapping({"node": {"WORKLOAD_NAME": "w"}, "idle_timeout": 0})
    assert cfg.idle_timeout == 0  # off


def test_tiny_chunks_are_relayed_coalesced(certs: Certs) -> None:
    """Issue 10.4: a body sent as 10,000 one-byte chunks reaches the app whole, re-chunked
    into as many chunks as the sidecar made relay steps, not one relay step per chunk."""
    n = 10_000
    body = b"".join(b"1\r\n%c\r\n" % (97 + i % 26) for i in range(n)) + b"0\r\n\r\n"
    request = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body

    async def main() -> None:
        app = RawApp()
        server, app_port = await start_app(app)
        async with server, Sidecar(inbound_config(certs, app_port)) as sidecar:
            got = await asyncio.to_thread(response_head, sidecar.inbound_port, request)
            assert got.startswith(b"HTTP/1.1 200 ")
        relayed = bytes(app.received).split(b"\r\n\r\n", 1)[1]
        data, sizes, at = b"", [], 0
        while True:
            end = relayed.index(b"\r\n", at)
            size = int(relayed[at:end], 16)
            if size == 0:
                break
            data += relayed[end + 2 : end + 2 + size]
            sizes.append(size)
            at = end + 2 + size + 2
        assert data == bytes(97 + i % 26 for i in range(n))
        assert len(sizes) < n // 10, len(sizes)
        # One relay step merges at most BODY_EVENTS_PER_STEP chunks (about a millisecond of
        # h11's work), so no step holds the event loop, and every other connection, for the
        # parse of a whole read (about 11,000 such chunks).
        assert max(sizes) <= BODY_EVENTS_PER_STEP <= 1024, max(sizes)

    run(main())
