"""The HTTP/1.1 relay's callbacks (``proxy/http_direct.py``) against its task, request by request.

Between requests on a keep-alive connection, the callbacks relay plain requests themselves
and hand anything else to the connection's task where they left off. Every test here runs
with the callbacks on and off (``relay``), and on both backends, and must see the same
thing: the same bytes at the client and the app, the same series. Each starts with a
warm-up request on the connection (the first request of a connection is always the task's:
it connects upstream), then drives one case of the callbacks' hand-over: a whole request
and response, a body or a response still arriving, a 1xx, a chunked response, the upstream
letting go, the client leaving, the timeouts, a client pipelining far ahead, a client that
does not read, an upgrade and an expectation after plain requests.

Nothing waits on a clock: where a case needs bytes to arrive in two pieces, the second is
sent only after the other side has shown that it received the first.
"""

from __future__ import annotations

import asyncio
import gc
import random
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from conftest import Backend
from proxy_support import Certs, Mesh, Response, codes, eventually, make_certs, mesh, run, total

from meshstats.proxy import http
from meshstats.proxy.listener import Watched

pytestmark = pytest.mark.timing

HOST = b"Host: reviews:9080\r\n"
STALL = 60.0  # generous: only a relay that never answers takes this long
# A timeout the timeout tests wait out. It also runs over the warm-up request and the gap
# before the next one, which must never meet it: 1 s, not 0.3, for a loaded 2-core machine.
SHORT = 1.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(params=["callbacks", "task"])
def relay(request: pytest.FixtureRequest) -> Iterator[str]:
    """The relay with its callbacks (the default) and without (every request the task's)."""
    saved = http._DIRECT
    http._DIRECT = request.param == "callbacks"
    try:
        yield str(request.param)
    finally:
        http._DIRECT = saved


# -- the app ---------------------------------------------------------------------------------


@dataclass
class App:
    """A raw HTTP/1.1 app. Every request is answered ``200`` with ``<target>:<body>``,
    except: ``/chunked`` (the same, chunked, one write), ``/hints`` (a ``103`` first, in the
    same write), ``/close`` (``connection: close``, then closed), ``/quiet-close`` (closed
    after the answer, without saying so: an app's keep-alive timeout), ``/drop-next`` (the
    next request on the connection read, then the connection closed: a close that crossed
    it), ``/ahead`` (the answers to the next ``x-ahead`` requests at once, those then read
    and not answered), ``/silent`` (never answered), ``/split`` (its head and half its
    body, then the rest once ``release`` is set), ``/held`` (nothing until then),
    ``/large`` and ``/big`` (``LARGE`` and ``BIG`` bytes: less and more than the server
    sidecar reads at once). ``heads`` is set when a request head arrived (its body perhaps
    not yet); ``closed`` when a connection ended."""

    requests: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0
    heads: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    BIG = 300_000
    LARGE = 200_000

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        owed = 0  # requests answered ahead (/ahead), to be read without an answer
        dropping = False  # the next request is read and the connection closed (/drop-next)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                target = lines[0].split(b" ")[1]
                fields = dict(
                    (name.strip().lower(), value.strip())
                    for name, _, value in (line.partition(b":") for line in lines[1:] if line)
                )
                self.requests.append(head)
                self.heads.set()
                if fields.get(b"expect", b"").lower() == b"100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await self._body(reader, fields)
                self.bodies.append(body)
                if owed:
                    owed -= 1
                    continue
                if dropping:
                    return  # (a close that crossed this request: never answered)
                if target == b"/ahead":
                    owed = int(fields[b"x-ahead"]) - 1
                    writer.write(
                        b"".join(
                            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\nahead:%d"
                            % (6 + len(b"%d" % i), i)
                            for i in range(owed + 1)
                        )
                    )
                    await writer.drain()
                    continue
                reply = target + b":" + body
                if target == b"/silent":
                    await reader.read()  # until the sidecar lets go
                    return
                if target == b"/chunked":
                    half = len(reply) // 2
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                        b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
                        % (half, reply[:half], len(reply) - half, reply[half:])
                    )
                elif target == b"/hints":
                    writer.write(
                        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n"
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(reply), reply)
                    )
                elif target == b"/drop-next":
                    dropping = True
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(reply), reply)
                    )
                elif target == b"/quiet-close":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(reply), reply)
                    )
                    await writer.drain()
                    return
                elif target == b"/close":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(reply), reply)
                    )
                    await writer.drain()
                    return
                elif target == b"/held":
                    await self.release.wait()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(reply), reply)
                    )
                elif target == b"/split":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst")
                    await writer.drain()
                    await self.release.wait()
                    writer.write(b"-last")
                elif target.startswith(b"/cut/"):
                    await self._cut_answer(writer, target, reply)
                elif target == b"/large":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % self.LARGE)
                    writer.write(b"l" * self.LARGE)
                elif target == b"/big":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % self.BIG)
                    writer.write(b"b" * self.BIG)
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(reply), reply if not head.startswith(b"HEAD ") else b"")
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()

    @staticmethod
    async def _cut_answer(writer: asyncio.StreamWriter, target: bytes, reply: bytes) -> None:
        """``/cut/<seed>``: the reply framed by length or chunked, written in pieces, as
        the seed says (the relay sees it arrive whole or in any cut)."""
        rng = random.Random(target)
        if rng.random() < 0.5:
            wire = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(reply), reply)
        else:
            cut = rng.randrange(len(reply) + 1)
            wire = (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                + b"".join(
                    b"%x\r\n%s\r\n" % (len(part), part)
                    for part in (reply[:cut], reply[cut:])
                    if part
                )
                + b"0\r\n\r\n"
            )
        for piece in _pieces(rng, wire):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0)  # (a piece may or may not be read before the next)

    @staticmethod
    async def _body(reader: asyncio.StreamReader, fields: dict[bytes, bytes]) -> bytes:
        if fields.get(b"transfer-encoding", b"").lower() != b"chunked":
            return await reader.readexactly(int(fields.get(b"content-length", b"0")))
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n\r\n") if await reader.readexactly(2) != b"\r\n" else None
        return body


@asynccontextmanager
async def setup(
    certs: Certs,
    backend: Backend,
    *,
    receive_buffer: int = 0,
    settings: dict[str, float] | None = None,
    client_settings: dict[str, float] | None = None,
) -> AsyncIterator[tuple[App, Mesh, Client]]:
    """The app behind two sidecars (both with ``settings``, the client sidecar also with
    ``client_settings``), and a client connection warmed up by one request (its socket's
    ``SO_RCVBUF`` set to ``receive_buffer`` when given)."""
    app = App()
    server = await asyncio.start_server(app, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with mesh(certs, port, backend, client_settings, **(settings or {})) as m:
            sock = socket.socket()
            # (asyncio sets it only on a socket made with IPPROTO_TCP: without it, a request
            # written in pieces waits for delayed ACKs, 40 ms each)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if receive_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", m.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            client = Client(reader, writer)
            try:
                warm = await client.ask(b"GET /warm HTTP/1.1\r\n" + HOST + b"\r\n")
                assert (warm.status, warm.body) == (200, b"/warm:")
                yield app, m, client
            finally:
                writer.close()
    finally:
        server.close()


def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` cut at up to three random places."""
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(4)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)]) if b > a]


# -- a raw client ----------------------------------------------------------------------------


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent: int = 0
    received: int = 0

    def send(self, data: bytes) -> None:
        self.writer.write(data)
        self.sent += len(data)

    async def ask(self, request: bytes) -> Response:
        self.send(request)
        return await self.response()

    async def head(self) -> tuple[int, dict[bytes, bytes], int]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), STALL)
        lines = head.split(b"\r\n")
        fields = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(b":") for line in lines[1:] if line)
        )
        return int(lines[0].split(b" ")[1]), fields, len(head)

    async def response(self, head_request: bool = False) -> Response:
        """One response, framed by its head (content-length or chunked; none for HEAD)."""
        status, fields, size = await self.head()
        body = b""
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), STALL)
                n = int(line.split(b";")[0], 16)
                chunk = await asyncio.wait_for(self.reader.readexactly(n + 2), STALL)
                size += len(line) + len(chunk)
                if n == 0:
                    break
                body += chunk[:-2]
        elif status >= 200 and not head_request:
            n = int(fields.get(b"content-length", b"0"))
            body = await asyncio.wait_for(self.reader.readexactly(n), STALL)
            size += n
        self.received += size
        return Response(status, fields, body, size)

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), STALL) == b""


async def bytes_recorded(m: Mesh) -> tuple[float, float]:
    """The client sidecar's request and response bytes, summed over the series."""
    client, _ = await m.metrics()
    return total(client, "istio_request_bytes_sum"), total(client, "istio_response_bytes_sum")


async def ask_after(client: Client) -> None:
    """One more plain request on the connection, answered by the app."""
    again = await client.ask(b"GET /after HTTP/1.1\r\n" + HOST + b"\r\n")
    assert again.body == b"/after:"


async def served_plainly(m: Mesh, client: Client, n: int) -> None:
    """The client sidecar recorded ``n`` requests answered 200, with the bytes the client
    sent and received."""
    client_samples, _ = await m.metrics()
    assert codes(client_samples, "source") == {("200", "-"): n}
    assert await bytes_recorded(m) == (client.sent, client.received)


# -- whole requests ----------------------------------------------------------------------------


def test_plain_requests_exact_on_both_sides(certs: Certs, backend: Backend, relay: str) -> None:
    """GETs, a HEAD, bodies by length and chunked, one at a time and pipelined: each
    answered whole, recorded once on each side, every byte counted, the peer headers
    exchanged and stripped as always."""
    one_by_one = [
        b"GET /a HTTP/1.1\r\n" + HOST + b"\r\n",
        b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nhello",
        b"POST /c HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n",
        b"HEAD /h HTTP/1.1\r\n" + HOST + b"\r\n",
        b"GET /chunked HTTP/1.1\r\n" + HOST + b"\r\n",
    ]
    pipelined = [b"GET /p%d HTTP/1.1\r\n%s\r\n" % (i, HOST) for i in range(20)]

    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            answers = []
            for request in one_by_one:
                client.send(request)
                answers.append(await client.response(head_request=request.startswith(b"HEAD")))
            client.send(b"".join(pipelined))
            answers += [await client.response() for _ in pipelined]
            assert [a.body for a in answers[:5]] == [
                b"/a:",
                b"/echo:hello",
                b"/c:abcde",
                b"",  # (HEAD: no body)
                b"/chunked:",
            ]
            assert [a.body for a in answers[5:]] == [b"/p%d:" % i for i in range(20)]
            assert all(a.status == 200 for a in answers)
            assert all(b"x-envoy-peer-metadata" not in a.fields for a in answers)
            assert not any(b"x-envoy-peer-metadata" in head for head in app.requests)
            assert app.bodies[3] == b"abcde" and app.connections == 1
            n = 1 + len(one_by_one) + len(pipelined)
            client_samples, server_samples = await m.metrics()
            assert codes(client_samples, "source") == {("200", "-"): n}
            assert codes(server_samples, "destination") == {("200", "-"): n}
            assert await bytes_recorded(m) == (client.sent, client.received)

    run(main())


# -- handed to the task --------------------------------------------------------------------------


def test_a_request_body_still_arriving(certs: Certs, backend: Backend, relay: str) -> None:
    """The head and part of the body reach the app before the rest is sent."""

    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            app.heads.clear()
            client.send(b"POST /up HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\nfirst")
            await asyncio.wait_for(app.heads.wait(), STALL)
            client.send(b"-last")
            answer = await client.response()
            assert (answer.status, answer.body) == (200, b"/up:first-last")
            again = await client.ask(b"GET /after HTTP/1.1\r\n" + HOST + b"\r\n")
            assert again.body == b"/after:" and app.connections == 1
            await served_plainly(m, client, 3)

    run(main())


def test_a_response_still_arriving(certs: Certs, backend: Backend, relay: str) -> None:
    """The head and part of the body reach the client before the app sends the rest."""

    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            client.send(b"GET /split HTTP/1.1\r\n" + HOST + b"\r\n")
            status, fields, size = await client.head()
            first = await asyncio.wait_for(client.reader.readexactly(5), STALL)
            assert (status, fields[b"content-length"], first) == (200, b"10", b"first")
            app.release.set()
            rest = await asyncio.wait_for(client.reader.readexactly(5), STALL)
            assert rest == b"-last"
            client.received += size + 10
            await ask_after(client)
            await served_plainly(m, client, 3)

    run(main())


def test_an_informational_response_is_not_forwarded(
    certs: Certs, backend: Backend, relay: str
) -> None:
    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            answer = await client.ask(b"GET /hints HTTP/1.1\r\n" + HOST + b"\r\n")
            assert (answer.status, answer.body) == (200, b"/hints:")
            await ask_after(client)
            await served_plainly(m, client, 3)

    run(main())


def test_an_upstream_that_lets_go_is_replaced(certs: Certs, backend: Backend, relay: str) -> None:
    """``connection: close`` from the app: the answer is relayed, the next request goes on
    a new connection, the client's stays open."""

    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            answer = await client.ask(b"GET /close HTTP/1.1\r\n" + HOST + b"\r\n")
            assert (answer.status, answer.body) == (200, b"/close:")
            assert b"connection" not in answer.fields  # the client's connection goes on
            await ask_after(client)
            assert app.connections == 2
            client_samples, _ = await m.metrics()
            assert codes(client_samples, "source") == {("200", "-"): 3}

    run(main())


def test_a_client_that_asks_to_close(certs: Certs, backend: Backend, relay: str) -> None:
    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            answer = await client.ask(
                b"GET /last HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
            )
            assert (answer.status, answer.body) == (200, b"/last:")
            assert answer.fields[b"connection"] == b"close"
            assert await client.closed()
            client_samples, _ = await m.metrics()
            assert codes(client_samples, "source") == {("200", "-"): 2}

    run(main())


def test_a_client_gone_while_waiting_is_dc(certs: Certs, backend: Backend, relay: str) -> None:
    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            app.heads.clear()
            client.send(b"GET /silent HTTP/1.1\r\n" + HOST + b"\r\n")
            await asyncio.wait_for(app.heads.wait(), STALL)
            client.writer.close()
            await asyncio.wait_for(app.closed.wait(), STALL)  # the upstream was let go
            client_samples, server_samples = await m.metrics()
            assert codes(client_samples, "source") == {("200", "-"): 1, ("0", "DC"): 1}
            assert codes(server_samples, "destination") == {("200", "-"): 1, ("0", "DC"): 1}

    run(main())


@pytest.mark.parametrize(
    ("timeouts", "status", "flag"),
    [({"request_timeout": SHORT}, 504, "UT"), ({"stream_idle_timeout": SHORT}, 408, "SI")],
)
def test_an_app_that_never_answers_times_out(
    certs: Certs,
    backend: Backend,
    relay: str,
    timeouts: dict[str, float],
    status: int,
    flag: str,
) -> None:
    """The second request times out as the first would: a local reply, the connection
    kept, the next request on a new upstream connection. (The server sidecar's timeout:
    the client sidecar's are Envoy's defaults, so that it does not give up first.)"""
    defaults = {"request_timeout": 0.0, "stream_idle_timeout": 300.0}

    async def main() -> None:
        async with setup(certs, backend, settings=timeouts, client_settings=defaults) as (
            app,
            m,
            client,
        ):
            answer = await client.ask(b"GET /silent HTTP/1.1\r\n" + HOST + b"\r\n")
            assert answer.status == status
            again = await client.ask(b"GET /after HTTP/1.1\r\n" + HOST + b"\r\n")
            assert again.body == b"/after:" and app.connections == 2
            _, server_samples = await m.metrics()
            assert codes(server_samples, "destination") == {("200", "-"): 2, (str(status), flag): 1}

    run(main())


def test_an_idle_connection_is_closed_after_requests(
    certs: Certs, backend: Backend, relay: str
) -> None:
    async def main() -> None:
        async with setup(certs, backend, settings={"idle_timeout": SHORT}) as (app, m, client):
            answer = await client.ask(b"GET /second HTTP/1.1\r\n" + HOST + b"\r\n")
            assert answer.body == b"/second:"
            assert await client.closed()  # then nothing: the client sidecar lets go
            client_samples, _ = await m.metrics()
            assert codes(client_samples, "source") == {("200", "-"): 2}

    run(main())


def test_a_client_pipelining_far_ahead_and_not_reading(
    certs: Certs, backend: Backend, relay: str
) -> None:
    """Far more pipelined than a read holds, each answer bigger than the socket takes at
    once, none read until all are sent: every answer whole, in order."""
    requests = [b"GET /big HTTP/1.1\r\n" + HOST + b"x-n: %06d\r\n\r\n" % i for i in range(40)]
    requests += [b"POST /p%d HTTP/1.1\r\n%sContent-Length: 3000\r\n\r\n" % (i, HOST) + b"q" * 3000
                 for i in range(40)]  # fmt: skip

    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            client.send(b"".join(requests))
            answers = [await client.response() for _ in requests]
            assert all(a.body == b"b" * App.BIG for a in answers[:40])
            assert [a.body for a in answers[40:]] == [b"/p%d:" % i + b"q" * 3000 for i in range(40)]
            await served_plainly(m, client, 1 + len(requests))

    run(main())


def test_an_expectation_after_plain_requests(certs: Certs, backend: Backend, relay: str) -> None:
    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            client.send(
                b"POST /e HTTP/1.1\r\n"
                + HOST
                + b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n"
            )
            status, _, size = await client.head()
            assert status == 100
            client.received += size
            answer = await client.ask(b"body")
            assert (answer.status, answer.body) == (200, b"/e:body")
            await ask_after(client)
            assert await bytes_recorded(m) == (client.sent, client.received)

    run(main())


def test_a_malformed_request_after_plain_ones_is_400(
    certs: Certs, backend: Backend, relay: str
) -> None:
    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            answer = await client.ask(b"GET /a HTTP/1.1\r\n" + HOST + b"\r\n")
            assert answer.status == 200
            bad = await client.ask(b"GET /b HTTP/1.1\r\n" + HOST + b"bad header\r\n\r\n")
            assert bad.status == 400 and await client.closed()
            client_samples, _ = await m.metrics()
            assert codes(client_samples, "source") == {("200", "-"): 2, ("400", "DPE"): 1}
            assert await bytes_recorded(m) == (client.sent, client.received)

    run(main())


def test_a_client_that_reads_late(certs: Certs, backend: Backend, relay: str) -> None:
    """Answers pile up while the client reads nothing: each relayed whole, in order, once
    it reads. The client reads nothing until the app answered 3 requests of 200 kB, each of
    which reaches the server sidecar whole: its TLS connection to the client sidecar, which
    only buffers what its client does not read, soon takes no more at once."""
    requests = [b"GET /large HTTP/1.1\r\n" + HOST + b"x-n: %06d\r\n\r\n" % i for i in range(40)]

    async def main() -> None:
        async with setup(certs, backend, receive_buffer=4096) as (app, m, client):
            client.send(b"".join(requests))

            async def answered() -> bool:
                return len(app.requests) >= 4  # (the warm-up's, and 3)

            await eventually(answered)  # nothing read until then
            answers = [await client.response() for _ in requests]
            assert all(a.body == b"l" * App.LARGE for a in answers)
            await served_plainly(m, client, 1 + len(requests))

    run(main())


def test_an_upstream_answering_ahead_of_pipelined_requests(
    certs: Certs, backend: Backend, relay: str
) -> None:
    """A client pipelining a thousand requests to the server sidecar (plaintext, straight to
    its inbound port) and an app that answers them all at the first: each answer relayed
    once, in order, each request recorded once (the callbacks take one request and one
    answer after the other in a loop, never nesting a call per request)."""
    n = 1000
    requests = [b"GET /ahead HTTP/1.1\r\n" + HOST + b"x-ahead: %d\r\n\r\n" % n]
    requests += [b"GET /x HTTP/1.1\r\n" + HOST + b"\r\n"] * (n - 1)
    assert sum(map(len, requests)) < 65536  # (less than the callbacks hold while they wait)

    async def main() -> None:
        async with setup(certs, backend) as (app, m, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", m.server.inbound_port)
            client = Client(reader, writer)
            try:
                warm = await client.ask(b"GET /warm HTTP/1.1\r\n" + HOST + b"\r\n")
                assert warm.body == b"/warm:"
                client.send(b"".join(requests))
                answers = [await client.response() for _ in requests]
                assert [a.body for a in answers] == [b"ahead:%d" % i for i in range(n)]
                assert len(app.requests) == 2 + n  # (the two warm-ups, then these)
            finally:
                writer.close()
            _, server_samples = await m.metrics()
            assert codes(server_samples, "destination") == {("200", "-"): 2 + n}

    run(main())


@pytest.mark.parametrize("seed", range(3))
def test_requests_and_answers_in_random_cuts(
    certs: Certs, backend: Backend, relay: str, seed: int
) -> None:
    """Forty requests of every framing (none, by length, chunked with a trailer), sent one
    by one or pipelined in twos, the client's bytes and the app's answers (by length or
    chunked) each cut at random places: whichever piece each relay step sees, every answer
    arrives whole and in order, and every byte is counted once."""
    rng = random.Random(seed)

    def request(i: int) -> tuple[bytes, bytes]:
        body = rng.randbytes(rng.choice([0, 1, 7, 300, 5000]))
        target = b"/cut/%d-%d" % (seed, i)
        kind = rng.randrange(3)
        if kind == 0 and not body:
            return b"GET %s HTTP/1.1\r\n%s\r\n" % (target, HOST), target + b":"
        if kind == 2:
            framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in _pieces(rng, body))
            head = b"POST %s HTTP/1.1\r\n%sTransfer-Encoding: chunked\r\n\r\n" % (target, HOST)
            return head + framed + b"0\r\nx-t: 1\r\n\r\n", target + b":" + body
        head = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (target, HOST, len(body))
        return head + body, target + b":" + body

    exchanges = [request(i) for i in range(40)]

    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            i = 0
            while i < len(exchanges):
                batch = exchanges[i : i + rng.choice([1, 1, 2])]
                for piece in _pieces(rng, b"".join(wire for wire, _ in batch)):
                    client.send(piece)
                    await asyncio.sleep(0)
                for _, expected in batch:
                    answer = await client.response()
                    assert (answer.status, answer.body) == (200, expected)
                i += len(batch)
            assert app.connections == 1
            client_samples, server_samples = await m.metrics()
            assert codes(client_samples, "source") == {("200", "-"): 1 + len(exchanges)}
            assert codes(server_samples, "destination") == {("200", "-"): 1 + len(exchanges)}
            assert await bytes_recorded(m) == (client.sent, client.received)

    run(main())


def test_an_upstream_that_closed_while_idle_is_replaced(
    certs: Certs, backend: Backend, relay: str
) -> None:
    """An app that closes a kept connection between requests (its keep-alive timeout, as
    uvicorn's 5 s) without saying so: the next request goes on a new connection, as Envoy
    sends it, never a 503 for an app that is up."""

    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            app.closed.clear()
            answer = await client.ask(b"GET /quiet-close HTTP/1.1\r\n" + HOST + b"\r\n")
            assert (answer.status, answer.body) == (200, b"/quiet-close:")
            await asyncio.wait_for(app.closed.wait(), STALL)  # closed between requests
            again = await client.ask(b"GET /after HTTP/1.1\r\n" + HOST + b"\r\n")
            assert (again.status, again.body) == (200, b"/after:")
            assert app.connections == 2
            client_samples, server_samples = await m.metrics()
            assert codes(client_samples, "source") == {("200", "-"): 3}
            assert codes(server_samples, "destination") == {("200", "-"): 3}

    run(main())


def test_a_request_that_crossed_an_upstream_close_is_sent_again(
    certs: Certs, backend: Backend, relay: str
) -> None:
    """The app closes a kept connection as the next request arrives, reading it and
    answering nothing: the request had no body and got no byte back, so it goes once more
    on a new connection (as HTTP clients do on a kept connection, and as the relay did for
    a pooled one), and is recorded once."""

    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            answer = await client.ask(b"GET /drop-next HTTP/1.1\r\n" + HOST + b"\r\n")
            assert answer.status == 200
            again = await client.ask(b"GET /after HTTP/1.1\r\n" + HOST + b"\r\n")
            assert (again.status, again.body) == (200, b"/after:")
            targets = [head.split(b" ")[1] for head in app.requests]
            assert targets == [b"/warm", b"/drop-next", b"/after", b"/after"]
            assert app.connections == 2
            client_samples, server_samples = await m.metrics()
            assert codes(client_samples, "source") == {("200", "-"): 3}
            assert codes(server_samples, "destination") == {("200", "-"): 3}

    run(main())


def _peer(watched: Watched) -> object:
    """The peer of an open connection's protocol (None for a closed one: earlier tests'
    connections may still be in memory, and a closed TLS transport cannot be asked)."""
    transport = watched.transport
    if transport is None or transport.is_closing():
        return None
    return transport.get_extra_info("peername")


def test_a_client_pipelining_megabytes_while_it_waits_is_held_back(
    certs: Certs, backend: Backend, relay: str
) -> None:
    """While an answer is awaited, what a client pipelines is read only up to the relay's
    bounds (64 KiB parsed ahead, then the reader's limit), after which the client sidecar
    stops reading its socket: no client can make it buffer without limit. Once the answer
    comes, every request is answered, in order."""
    body = b"p" * 65536
    burst = [b"POST /p%d HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (i, HOST, len(body), body)
             for i in range(128)]  # fmt: skip

    async def main() -> None:
        async with setup(certs, backend) as (app, m, client):
            app.heads.clear()
            client.send(b"GET /held HTTP/1.1\r\n" + HOST + b"\r\n")
            await asyncio.wait_for(app.heads.wait(), STALL)  # its answer is held back
            client.send(b"".join(burst))  # 8 MB
            # The client sidecar's end of this connection, found by its address among the
            # protocols the sidecars read with (uvloop's transports are not asyncio's class).
            ours = client.writer.get_extra_info("sockname")
            ends = [o for o in gc.get_objects() if isinstance(o, Watched) and _peer(o) == ours]
            assert len(ends) == 1
            end = ends[0]

            async def paused() -> bool:
                return not end.transport.is_reading()

            await eventually(paused)
            assert end.received < 1 << 20  # of the 8 MB sent
            app.release.set()
            first = await client.response()
            assert first.body == b"/held:"
            answers = [await client.response() for _ in burst]
            assert [a.body for a in answers] == [b"/p%d:" % i + body for i in range(128)]
            client_samples, _ = await m.metrics()
            assert codes(client_samples, "source") == {("200", "-"): 2 + len(burst)}

    run(main())
