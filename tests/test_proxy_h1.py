"""HTTP/1.1 details a proxy carries, through two real sidecars (mTLS between them):

- ``Upgrade: websocket``: relayed, the upstream's 101 relayed, then a tunnel both ways until
  either side closes; the request recorded once (``101``, bytes and duration of the whole
  tunnel); the upgraded connections never go back to the upstream pools. A non-101 answer is
  an ordinary response (the connection then closes, as Envoy closes it); an upgrade type
  Istio does not enable is refused with 403; ``h2c`` is served as an ordinary request.
- Pipelined requests: answered in order, each recorded once, byte counts exact; a broken
  later request is refused (400) after the earlier responses, which stay whole.
- ``Expect: 100-continue``: a client that waits for the 100 gets it, from the app (Istio's
  ``proxy_100_continue``, the default) or from the sidecar (Envoy's own default).

The app and the clients are raw asyncio sockets (no parser shared with the sidecar's codec),
on the test's event loop with the sidecars. Every sidecar records into a store of the
backend under test. Nothing waits on a clock: each step waits for the bytes it needs, and
the one timeout test retries until a tunnel is up, then waits for the timeout to close it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from conftest import Backend
from proxy_support import (
    CLIENT_ID,
    CLIENT_NODE,
    CLIENT_SA,
    SERVER_ID,
    SERVER_NODE,
    SERVER_SA,
    SERVICE_HOST,
    Certs,
    Response,
    assert_labels,
    codes,
    eventually,
    free_port,
    make_certs,
    mesh,
    only_labels,
    run,
    start_app,
    total,
)

from meshstats import encode_peer_header

pytestmark = pytest.mark.timing

MX = b"x-envoy-peer-metadata"
MX_ID = b"x-envoy-peer-metadata-id"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# What each sidecar adds on the hop between them, and the other removes.
CLIENT_MX = len(
    f"{MX.decode()}: {encode_peer_header(CLIENT_NODE)}\r\n{MX_ID.decode()}: {CLIENT_ID}\r\n"
)
SERVER_MX = len(
    f"{MX.decode()}: {encode_peer_header(SERVER_NODE)}\r\n{MX_ID.decode()}: {SERVER_ID}\r\n"
)
STALL = 60.0  # generous: only a sidecar that never answers takes this long


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


# -- the app ------------------------------------------------------------------------------------


def parse_head(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        if b":" in line:
            name, value = line.split(b":", 1)
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


@dataclass
class App:
    """A raw HTTP/1.1 server: ``/ws`` accepts a WebSocket upgrade (101, then ``hello`` in
    the same write) and echoes until the stream ends with ``bye`` (answered ``server-bye``,
    then closed); ``/ws-refuse`` answers an upgrade with 400; ``/reject`` answers an
    ``Expect: 100-continue`` with 413 without reading the body; any other request waiting
    for a 100 gets one (with an ``x-app-continue`` header), and every request gets 200 with
    ``<target>:<body>``."""

    requests: list[tuple[bytes, dict[bytes, bytes]]] = field(default_factory=list)
    connections: int = 0
    tunnel_ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, fields = parse_head(head)
                self.requests.append((line, fields))
                target = line.split(b" ")[1]
                if target == b"/ws" and fields.get(b"upgrade", b"").lower() == b"websocket":
                    await self._websocket(reader, writer, fields[b"sec-websocket-key"])
                    return
                if target == b"/ws-refuse":
                    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 15\r\n\r\n")
                    writer.write(b"no upgrade here")
                    continue
                if fields.get(b"expect", b"").lower() == b"100-continue":
                    if target == b"/reject":
                        writer.write(
                            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n"
                            b"connection: close\r\n\r\ntoo big!"
                        )
                        await writer.drain()
                        return
                    writer.write(b"HTTP/1.1 100 Continue\r\nx-app-continue: 1\r\n\r\n")
                body = await self._body(reader, fields)
                reply = target + b":" + body
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(reply), reply)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _body(reader: asyncio.StreamReader, fields: dict[bytes, bytes]) -> bytes:
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return body
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        return await reader.readexactly(int(fields.get(b"content-length", b"0")))

    async def _websocket(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes
    ) -> None:
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\nhello" % accept
        )
        seen = b""
        try:
            while data := await reader.read(65536):
                writer.write(data)
                seen = (seen + data)[-3:]
                if seen == b"bye":
                    writer.write(b"server-bye")
                    await writer.drain()
                    return
                await writer.drain()
        finally:
            self.tunnel_ended.set()


@asynccontextmanager
async def app_server() -> AsyncIterator[tuple[App, int]]:
    app = App()
    server, port = await start_app(app)
    try:
        yield app, port
    finally:
        server.close()


# -- the mesh -----------------------------------------------------------------------------------


# -- a raw client -------------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One response as framed by its head (a 1xx or 101 has no body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STALL)
    line, fields = parse_head(head)
    status = int(line.split(b" ")[1])
    size = len(head)
    body = b""
    if status >= 200 and fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size += len(size_line)
            n = int(size_line.split(b";")[0], 16)
            chunk = await reader.readexactly(n + 2)
            size += len(chunk)
            if n == 0:
                break
            body += chunk[:-2]
    elif status >= 200:
        body = await reader.readexactly(int(fields.get(b"content-length", b"0")))
        size += len(body)
    return Response(status, fields, body, size)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), STALL)


def no_mx(fields: dict[bytes, bytes]) -> bool:
    return MX not in fields and MX_ID not in fields


def ws_request(path: bytes = b"/ws", upgrade: bytes = b"websocket") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET %s HTTP/1.1\r\nHost: reviews:9080\r\nConnection: Upgrade\r\n"
        b"Upgrade: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n"
        % (path, upgrade, key)
    )


async def fetch(port: int, path: bytes) -> Response:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: reviews:9080\r\n\r\n" % path)
        return await read_response(reader)
    finally:
        writer.close()


# -- upgrades -----------------------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["server", "client"])
def test_websocket_tunnel_recorded_once_never_pooled(
    certs: Certs, backend: Backend, closer: str
) -> None:
    blob = bytes(range(256)) * 1200  # never "bye", which ends the app's echo

    async def main() -> None:
        async with app_server() as (app, app_port), mesh(certs, app_port, backend) as m:
            # A first request leaves the client sidecar's connection to the server sidecar
            # idle in its pool (and, over it, the server sidecar's to the app open), and
            # the upgrade takes them: neither may come back.
            assert (await fetch(m.port, b"/warm")).status == 200

            async def parked() -> bool:
                return len(m.client.upstream_pool) == 1

            await eventually(parked)

            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            request = ws_request()
            writer.write(request + b"early")  # a first message sent before the 101
            sent = len(request) + 5
            switched = await read_response(reader)
            assert switched.status == 101
            assert switched.fields[b"upgrade"] == b"websocket"
            assert switched.fields[b"connection"].lower() == b"upgrade"
            assert b"sec-websocket-accept" in switched.fields
            assert no_mx(switched.fields)
            assert b"content-length" not in switched.fields
            assert b"transfer-encoding" not in switched.fields
            received = switched.size
            assert await reader.readexactly(5) == b"hello"  # sent with the 101, server first
            assert await asyncio.wait_for(reader.readexactly(5), STALL) == b"early"
            received += 10
            for message in (b"ping", blob, b"pong" * 10):
                writer.write(message)
                sent += len(message)
                assert await asyncio.wait_for(reader.readexactly(len(message)), STALL) == message
                received += len(message)
            if closer == "server":
                writer.write(b"bye")
                sent += 3
                rest = await read_to_eof(reader)
                assert rest == b"byeserver-bye"
                received += len(rest)
                writer.close()
            else:
                writer.close()
                await asyncio.wait_for(app.tunnel_ended.wait(), STALL)

            async def recorded() -> bool:
                client, server = await m.metrics()
                return (
                    codes(client, "source").get(("101", "-")) == 1
                    and codes(server, "destination").get(("101", "-")) == 1
                )

            await eventually(recorded)
            client, server = await m.metrics()
            assert codes(client, "source") == {("200", "-"): 1, ("101", "-"): 1}
            assert codes(server, "destination") == {("200", "-"): 1, ("101", "-"): 1}
            for samples, reporter, policy in (
                (client, "source", "unknown"),
                (server, "destination", "mutual_tls"),
            ):
                assert_labels(
                    only_labels(samples, "istio_requests_total", response_code="101"),
                    reporter=reporter,
                    source_workload="productpage-v1",
                    source_principal=CLIENT_SA,
                    destination_workload="reviews-v2",
                    destination_principal=SERVER_SA,
                    request_protocol="http",
                    connection_security_policy=policy,
                )
                count = total(samples, "istio_request_duration_milliseconds_count")
                assert count == 2
            assert_labels(
                only_labels(client, "istio_requests_total", response_code="101"),
                destination_service=SERVICE_HOST,
                destination_service_name="reviews",
            )
            # The whole tunnel, both ways, on top of the handshake (as Envoy counts an
            # upgraded stream's body). Known exactly when the client saw everything.
            if closer == "server":
                ws = {"response_code": "101"}
                assert total(client, "istio_request_bytes_sum", **ws) == sent
                assert total(client, "istio_response_bytes_sum", **ws) == received
                assert total(server, "istio_request_bytes_sum", **ws) == sent + CLIENT_MX
                assert total(server, "istio_response_bytes_sum", **ws) == received + SERVER_MX

            # The upgraded connections were the kept ones, and neither came back.
            assert m.client.upstream_pool.reused == 1
            assert len(m.client.upstream_pool) == len(m.server.upstream_pool) == 0
            assert (await fetch(m.port, b"/after")).status == 200
            assert app.connections == 2  # the app's first connection is gone with the tunnel
            upgrade = app.requests[1][1]
            assert upgrade[b"upgrade"] == b"websocket"
            assert upgrade[b"connection"].lower() == b"upgrade"
            assert no_mx(upgrade)

    run(main())


def test_upgrade_answered_without_101_is_an_ordinary_response(
    certs: Certs, backend: Backend
) -> None:
    async def main() -> None:
        async with app_server() as (app, app_port), mesh(certs, app_port, backend) as m:
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            writer.write(ws_request(b"/ws-refuse"))
            refused = await read_response(reader)
            assert (refused.status, refused.body) == (400, b"no upgrade here")
            assert refused.fields[b"connection"] == b"close"
            assert no_mx(refused.fields)
            assert await read_to_eof(reader) == b""  # what follows is no HTTP: closed
            writer.close()
            assert app.requests[0][1][b"upgrade"] == b"websocket"  # the app was asked

            client, server = await m.metrics()
            assert codes(client, "source") == {("400", "-"): 1}
            assert codes(server, "destination") == {("400", "-"): 1}
            assert_labels(
                only_labels(server, "istio_requests_total"),
                source_workload="productpage-v1",
                destination_workload="reviews-v2",
            )

    run(main())


def test_upgrade_types_istio_does_not_enable(certs: Certs, backend: Backend) -> None:
    async def main() -> None:
        async with app_server() as (app, app_port), mesh(certs, app_port, backend) as m:
            # Not websocket: Envoy's 403 for an upgrade the route does not allow, the
            # connection closed, the app never asked.
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            writer.write(ws_request(b"/ws", b"foo/1"))
            forbidden = await read_response(reader)
            assert (forbidden.status, forbidden.body) == (403, b"")
            assert forbidden.fields[b"connection"] == b"close"
            assert await read_to_eof(reader) == b""
            writer.close()
            # CONNECT is an upgrade of its own to Envoy, not enabled either.
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            writer.write(b"CONNECT reviews:9080 HTTP/1.1\r\nHost: reviews:9080\r\n\r\n")
            assert (await read_response(reader)).status == 403
            assert await read_to_eof(reader) == b""
            writer.close()
            assert app.requests == []

            # h2c: an ordinary request to Envoy's HTTP/1 codec, its upgrade headers dropped,
            # the connection kept.
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            h2c = (
                b"GET /h2c HTTP/1.1\r\nHost: reviews:9080\r\nConnection: Upgrade, HTTP2-Settings"
                b"\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
            )
            writer.write(h2c)
            served = await read_response(reader)
            assert (served.status, served.body) == (200, b"/h2c:")
            writer.write(b"GET /again HTTP/1.1\r\nHost: reviews:9080\r\n\r\n")
            assert (await read_response(reader)).body == b"/again:"
            writer.close()
            seen = app.requests[0][1]
            assert b"upgrade" not in seen and b"http2-settings" not in seen

            client, server = await m.metrics()
            assert codes(client, "source") == {("403", "-"): 2, ("200", "-"): 2}
            assert codes(server, "destination") == {("200", "-"): 2}

    run(main())


def test_tunnel_closed_after_stream_idle_timeout(certs: Certs, backend: Backend) -> None:
    """No byte either way for ``stream_idle_timeout``: the tunnel is cut, recorded ``SI``
    by the sidecar that cut it. The timeout also bounds the wait for the 101, so on a
    loaded machine a handshake may time out first (408): then it is tried again."""

    async def main() -> None:
        short = {"stream_idle_timeout": 1.0}
        async with app_server() as (app, app_port), mesh(certs, app_port, backend, short) as m:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STALL
            while True:
                reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
                writer.write(ws_request())
                answer = await read_response(reader)
                if answer.status == 101:
                    break
                assert answer.status == 408 and loop.time() < deadline, answer
                writer.close()
            # Nobody sends: the client sidecar closes the tunnel, and so the app's side.
            assert await read_to_eof(reader) == b"hello"
            writer.close()
            await asyncio.wait_for(app.tunnel_ended.wait(), STALL)

            async def recorded() -> bool:
                client, server = await m.metrics()
                # (a retried handshake may have left a tunnel the server sidecar saw end)
                return (
                    codes(client, "source").get(("101", "SI")) == 1
                    and codes(server, "destination").get(("101", "-"), 0) >= 1
                )

            await eventually(recorded)

    run(main())


# -- pipelining ---------------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(certs: Certs, backend: Backend) -> None:
    batch = [
        b"GET /a HTTP/1.1\r\nHost: reviews:9080\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: reviews:9080\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /chunked HTTP/1.1\r\nHost: reviews:9080\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"GET /b HTTP/1.1\r\nHost: reviews:9080\r\n\r\n",
    ]

    async def main() -> None:
        async with app_server() as (app, app_port), mesh(certs, app_port, backend) as m:
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            writer.write(b"".join(batch))  # all at once, before any answer
            answers = [await read_response(reader) for _ in batch]
            writer.close()
            assert [a.body for a in answers] == [b"/a:", b"/echo:hello", b"/chunked:abcde", b"/b:"]
            assert all(a.status == 200 and no_mx(a.fields) for a in answers)
            assert [line.split(b" ")[1] for line, _ in app.requests] == [
                b"/a",
                b"/echo",
                b"/chunked",
                b"/b",
            ]

            client, server = await m.metrics()
            n = len(batch)
            assert codes(client, "source") == {("200", "-"): n}
            assert codes(server, "destination") == {("200", "-"): n}
            sent, received = sum(map(len, batch)), sum(a.size for a in answers)
            assert total(client, "istio_request_bytes_sum") == sent
            assert total(client, "istio_response_bytes_sum") == received
            assert total(server, "istio_response_bytes_sum") == received + n * SERVER_MX
            assert total(client, "istio_request_duration_milliseconds_count") == n

    run(main())


def test_broken_later_request_leaves_earlier_responses_whole(
    certs: Certs, backend: Backend
) -> None:
    first = b"POST /echo HTTP/1.1\r\nHost: reviews:9080\r\nContent-Length: 3\r\n\r\nabc"
    second = b"GET /b HTTP/1.1\r\nHost: reviews:9080\r\n\r\n"
    broken = (
        b"GET /c HTTP/1.1\r\nHost: reviews:9080\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )

    async def main() -> None:
        async with app_server() as (app, app_port), mesh(certs, app_port, backend) as m:
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            writer.write(first + second + broken)
            answers = [await read_response(reader) for _ in range(3)]
            assert [(a.status, a.body) for a in answers[:2]] == [(200, b"/echo:abc"), (200, b"/b:")]
            assert answers[2].status == 400
            assert answers[2].fields[b"connection"] == b"close"
            assert await read_to_eof(reader) == b""
            writer.close()
            assert len(app.requests) == 2  # the broken one never reached the app

            client, server = await m.metrics()
            assert codes(client, "source") == {("200", "-"): 2, ("400", "DPE"): 1}
            assert codes(server, "destination") == {("200", "-"): 2}
            # Each request is charged its own bytes, the broken one included.
            assert total(client, "istio_request_bytes_sum") == len(first + second + broken)
            assert total(client, "istio_response_bytes_sum") == sum(a.size for a in answers)

    run(main())


# -- Expect: 100-continue -----------------------------------------------------------------------


@pytest.mark.parametrize("proxy_100", [True, False], ids=["istio", "envoy-default"])
def test_client_waiting_for_100_continue_is_not_stalled(
    certs: Certs, backend: Backend, proxy_100: bool
) -> None:
    head = (
        b"POST /upload HTTP/1.1\r\nHost: reviews:9080\r\nExpect: 100-continue\r\n"
        b"Content-Length: 11\r\n\r\n"
    )

    async def main() -> None:
        async with (
            app_server() as (app, app_port),
            mesh(certs, app_port, backend, proxy_100_continue=proxy_100) as m,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            for _ in range(2):  # twice on one connection: it stays usable
                writer.write(head)
                go_on = await read_response(reader)  # nothing else is sent until it comes
                assert go_on.status == 100
                # The app's own 100 (its header shows) when forwarded, else the sidecar's.
                assert (go_on.fields.get(b"x-app-continue") == b"1") is proxy_100
                assert no_mx(go_on.fields)
                writer.write(b"hello world")
                done = await read_response(reader)
                assert (done.status, done.body) == (200, b"/upload:hello world")
            writer.close()
            assert all(
                (seen.get(b"expect") == b"100-continue") is proxy_100 for _, seen in app.requests
            )

            client, server = await m.metrics()
            assert codes(client, "source") == {("200", "-"): 2}
            assert codes(server, "destination") == {("200", "-"): 2}
            # The 100 is part of what was sent to the client.
            assert total(client, "istio_response_bytes_sum") == 2 * (go_on.size + done.size)
            assert total(client, "istio_request_bytes_sum") == 2 * (len(head) + 11)

    run(main())


def test_final_answer_instead_of_100_ends_the_request(certs: Certs, backend: Backend) -> None:
    """An app that refuses the body (413 without a 100), or no app at all (503): the client
    gets the answer at once, never sends its body, and the connection closes (the sidecar
    cannot tell whether a body follows), as Envoy closes it."""
    head = (
        b"POST /reject HTTP/1.1\r\nHost: reviews:9080\r\nExpect: 100-continue\r\n"
        b"Content-Length: 5000000\r\n\r\n"
    )

    async def answer(port: int) -> Response:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        got = await read_response(reader)
        assert got.fields[b"connection"] == b"close"
        assert await read_to_eof(reader) == b""
        writer.close()
        return got

    async def main() -> None:
        async with app_server() as (_, app_port), mesh(certs, app_port, backend) as m:
            refused = await answer(m.port)
            assert (refused.status, refused.body) == (413, b"too big!")
            client, server = await m.metrics()
            assert codes(client, "source") == {("413", "-"): 1}
            assert codes(server, "destination") == {("413", "-"): 1}
        async with mesh(certs, free_port(), backend) as m:
            assert (await answer(m.port)).status == 503
            client, server = await m.metrics()
            assert codes(client, "source") == {("503", "-"): 1}
            assert codes(server, "destination") == {("503", "UF"): 1}

    run(main())
