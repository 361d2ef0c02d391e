"""HTTP/2 through two real sidecars: an h2c client -> client sidecar -> mTLS h2 -> server
sidecar -> h2c app, on both backends.

What is checked: the codec each hop chose (ALPN ``h2`` between the sidecars, the preface on
the plaintext sides), many streams on one connection each way, the peer-exchange headers
added, read and stripped per stream as for HTTP/1.1, trailers both ways, byte-identical
bodies larger than every window, exact sizes (Envoy's: headers + DATA + trailers), flow
control end to end (a client that reads nothing holds the app back), and resets mapped to
Envoy's response flags. The app and the client (``h2_support``) drive the ``h2`` state
machine themselves: no relay code of the sidecar's is shared. Nothing waits on a clock:
each step waits for the frames it needs (``eventually`` polls with a generous deadline).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import h2.errors
import pytest
from conftest import Backend
from h2_support import AppServer, H2Client, Headers, big_body, get, start_h2_app
from proxy_support import (
    CLIENT_ID,
    CLIENT_NODE,
    CLIENT_SA,
    SERVER_ID,
    SERVER_NODE,
    SERVER_SA,
    SERVICE_HOST,
    Certs,
    assert_labels,
    codes,
    engine,
    eventually,
    free_port,
    left_to_the_collector,
    loop_lookups,
    make_certs,
    mesh,
    only_labels,
    run,
    scrape,
    total,
)

from meshstats import encode_peer_header
from meshstats.proxy import OutboundConfig, Sidecar, SidecarConfig
from meshstats.proxy import h2 as h2_relay
from meshstats.proxy.h2 import CONNECTION_WINDOW, STREAM_WINDOW
from meshstats.proxy.interrupt import Deadline

pytestmark = pytest.mark.timing

MX = b"x-envoy-peer-metadata"
MX_ID = b"x-envoy-peer-metadata-id"
CLIENT_MX = len(MX) + len(encode_peer_header(CLIENT_NODE)) + len(MX_ID) + len(CLIENT_ID)
SERVER_MX = len(MX) + len(encode_peer_header(SERVER_NODE)) + len(MX_ID) + len(SERVER_ID)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(autouse=True)
def no_handler_failed(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A relay that fails unexpectedly is logged, and the traffic may still look right."""
    yield
    failures = [r for r in caplog.records if r.name == "meshstats.proxy" and r.levelno >= 40]
    assert not failures, [r.getMessage() for r in failures]


@asynccontextmanager
async def h2_app() -> AsyncIterator[AppServer]:
    app = await start_h2_app()
    try:
        yield app
    finally:
        app.server.close()
        for conn in app.connections:
            conn.writer.close()
        await app.server.wait_closed()


def no_mx(headers: Headers) -> bool:
    return get(headers, MX) is None and get(headers, MX_ID) is None


def size(headers: Headers) -> int:
    return sum(len(name) + len(value) for name, value in headers)


# -- plain requests -----------------------------------------------------------------------------


def test_many_streams_one_connection_headers_exchanged_and_stripped(
    certs: Certs, backend: Backend
) -> None:
    paths = ["/status/200"] * 30 + ["/status/404"] * 5 + ["/status/503"] * 4 + ["/headers"]

    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port)
            spoof: Headers = [(MX, encode_peer_header({"WORKLOAD_NAME": "evil"}).encode())]
            ids = [await client.start(p, headers=spoof + [(MX_ID, b"evil")]) for p in paths]
            replies = [await client.finish(i) for i in ids]
            await client.close()
            assert [r.status for r in replies] == [int(p.split("/")[-1]) for p in paths[:-1]] + [
                200
            ]
            assert replies[0].body == b"status 200"
            assert all(no_mx(r.headers) for r in replies)  # the app's own /headers too
            assert len(app.seen) == len(paths)
            assert all(no_mx(seen.headers) for seen in app.seen)
            assert all(get(s.headers, b":authority") == b"reviews:9080" for s in app.seen)
            # Every stream on one connection, each hop: client -> client sidecar (one),
            # client sidecar -> server sidecar (one TLS handshake), server sidecar -> app.
            assert len(app.connections) == 1
            assert m.server.tls_inbound.handshakes == 1

            expected = {("200", "-"): 31, ("404", "-"): 5, ("503", "-"): 4}
            client_samples, server_samples = await m.metrics()
            assert codes(client_samples, "source") == expected
            assert codes(server_samples, "destination") == expected
            for samples, reporter, policy in (
                (client_samples, "source", "unknown"),
                (server_samples, "destination", "mutual_tls"),
            ):
                labels = only_labels(samples, "istio_requests_total", response_code="404")
                assert_labels(
                    labels,
                    reporter=reporter,
                    source_workload="productpage-v1",
                    source_principal=CLIENT_SA,
                    destination_workload="reviews-v2",
                    destination_app="reviews",
                    destination_principal=SERVER_SA,
                    request_protocol="http",
                    response_flags="-",
                    connection_security_policy=policy,
                )
                assert total(samples, "istio_request_duration_milliseconds_count") == len(paths)
            assert_labels(
                only_labels(client_samples, "istio_requests_total", response_code="404"),
                destination_service=SERVICE_HOST,
                destination_service_name="reviews",
            )

    run(main())


async def gets_and_posts(client: H2Client, n: int) -> None:
    """``n`` GETs (each relayed in one task, with its timeouts) then ``n`` POSTs (a task
    each way), all in flight at once, all answered 200."""
    post: Headers = [(b"content-type", b"application/octet-stream")]
    ids = [await client.start("/status/200") for _ in range(n)]
    ids += [
        await client.start("/echo", method="POST", body=b"x" * 100, headers=post) for _ in range(n)
    ]
    assert [(await client.finish(i)).status for i in ids] == [200] * (2 * n)


def test_relayed_streams_leave_no_reference_cycles(certs: Certs, backend: Backend) -> None:
    """A stream's objects go as it ends (reference counting), not at the cycle collector's
    next pass: a cycle per stream (a timer closure that held itself, and with it the
    stream's exchange) made the collector a fifth of a sidecar's CPU under HTTP/2 load.
    GETs (relayed in one task, with its timeouts) and POSTs (a task each way)."""

    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port)
            await gets_and_posts(client, 3)  # connections, pools, caches: made once, kept
            found, kinds = await left_to_the_collector(lambda: gets_and_posts(client, 20))
            await client.close()
            # 40 streams through two sidecars: a cycle per stream would be hundreds.
            assert found < 40, kinds

    run(main())


def test_relayed_streams_look_the_loop_up_once_per_connection(
    certs: Certs, backend: Backend
) -> None:
    """No step of a relayed stream asks asyncio for the running loop: each lookup is a
    ``getpid()`` on 3.11, and a GET's steps made six of them per sidecar."""

    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port)
            await gets_and_posts(client, 2)  # the connections through both sidecars: kept
            seen = await loop_lookups(lambda: gets_and_posts(client, 20))
            await client.close()
            # 40 streams through two sidecars; a lookup per stream would be 80 or more.
            assert sum(seen.values()) < 10, seen

    run(main())


def test_a_closed_connection_leaves_no_stream_timer_armed(
    certs: Certs, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each connection keeps one timer for its streams' timeouts (``interrupt.Deadline``),
    armed from stream to stream; the loop would hold it, and with it the connection's
    timers, up to the stream idle timeout, had the relay not cancelled it as its connection
    ended. Once the client left and the sidecars stopped, none is armed."""
    made: weakref.WeakSet[Deadline] = weakref.WeakSet()

    class Counted(Deadline):
        __slots__ = ("__weakref__",)

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            super().__init__(loop)
            made.add(self)

    monkeypatch.setattr(h2_relay, "Deadline", Counted)

    async def main() -> tuple[int, list[bool]]:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port)
            ids = [await client.start("/status/200") for _ in range(5)]
            assert [(await client.finish(i)).status for i in ids] == [200] * 5
            armed_meanwhile = sum(timers.armed for timers in made)
            await client.close()
        gc.collect()
        return armed_meanwhile, [timers.armed for timers in made]

    armed_meanwhile, after = run(main())
    # One per relayed connection, armed while it served (so the test counts the right
    # class): the client's at its sidecar, that sidecar's at the other.
    assert len(after) >= 2 and armed_meanwhile >= 2
    assert not any(after)


def test_bodies_trailers_and_exact_sizes(certs: Certs, backend: Backend) -> None:
    big = big_body(3 * CONNECTION_WINDOW // 2 + 12_345)  # larger than every window
    trailers: Headers = [(b"x-checksum", hashlib.sha256(big).hexdigest().encode())]

    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port)
            post: Headers = [(b"content-type", b"application/octet-stream")]
            first = await client.start("/echo", method="POST", body=big, headers=post)
            second = await client.start(
                "/echo", method="POST", body=b"small", headers=post, trailers=trailers
            )
            one, two = await client.finish(first), await client.finish(second)
            await client.close()
            assert one.status == 200 and bytes(one.body) == big and one.trailers == []
            assert bytes(two.body) == b"small"
            assert two.trailers == trailers + [(b"x-echo-trailer", b"yes")]
            assert app.seen[1].trailers == trailers  # request trailers reached the app
            client_samples, server_samples = await m.metrics()

        requests = [app.seen[0], app.seen[1]]
        # Envoy's sizes: headers (pseudo-headers included) + DATA + trailers, as received
        # from (request) and sent to (response) the downstream of each sidecar.
        sent_heads = [size(s.headers) for s in requests]  # what the app got = sent by the
        # client, minus nothing: the client sent no exchange headers
        request_total = sum(sent_heads) + len(big) + 5 + size(trailers)
        response_heads = size([(b":status", b"200")]) * 2
        response_total = (
            response_heads + len(big) + 5 + size(trailers) + len(b"x-echo-trailer") + len(b"yes")
        )
        assert total(client_samples, "istio_request_bytes_sum") == request_total
        assert total(client_samples, "istio_response_bytes_sum") == response_total
        assert total(server_samples, "istio_request_bytes_sum") == request_total + 2 * CLIENT_MX
        assert total(server_samples, "istio_response_bytes_sum") == response_total + 2 * SERVER_MX

    run(main())


def test_a_client_that_does_not_read_holds_the_app_back(certs: Certs, backend: Backend) -> None:
    """Flow control end to end: no sidecar acknowledges DATA it has not passed on, so the
    app can send at most the windows of the three hops before it must wait."""
    n = 4 * 1024 * 1024

    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port, auto_ack=False)
            stream = await client.start(f"/big/{n}")

            async def app_waits() -> bool:
                return app.blocked.is_set() and app.sent[0] > STREAM_WINDOW

            await eventually(app_waits)
            # The client's window, and one stream window held by each sidecar.
            assert app.sent[0] <= 3 * STREAM_WINDOW
            client.consume()
            reply = await client.finish(stream)
            await client.close()
            assert reply.status == 200 and bytes(reply.body) == big_body(n)

    run(main())


def test_app_down_gives_503_uf(certs: Certs, backend: Backend) -> None:
    async def main() -> None:
        async with mesh(certs, free_port(), backend) as m:
            client = await H2Client.connect(m.port)
            replies = [await client.request("/") for _ in range(2)]
            await client.close()
            assert [r.status for r in replies] == [503, 503]
            assert b"connection failure" in bytes(replies[0].body)
            client_samples, server_samples = await m.metrics()
        assert codes(server_samples, "destination") == {("503", "UF"): 2}
        # The client sidecar got a 503 from its upstream: no flag of its own.
        assert codes(client_samples, "source") == {("503", "-"): 2}
        assert_labels(
            only_labels(client_samples, "istio_requests_total"),
            destination_workload="reviews-v2",
        )

    run(main())


def test_http11_and_h2_on_the_same_ports(certs: Certs, backend: Backend) -> None:
    """An HTTP/1.1 client still gets HTTP/1.1 (and its app HTTP/1.1): the codec is picked
    per connection."""

    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            writer.write(b"GET /status/200 HTTP/1.1\r\nHost: reviews:9080\r\n\r\n")
            # The h2c app cannot read HTTP/1.1: the server sidecar relays HTTP/1.1 to it,
            # which it refuses (its h2 state machine wants the preface) -> 503 UC.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            writer.close()
            assert head.startswith(b"HTTP/1.1 503 ")
            client = await H2Client.connect(m.port)
            assert (await client.request("/status/200")).status == 200
            await client.close()

    run(main())


# -- resets -------------------------------------------------------------------------------------


def test_downstream_reset_is_dc_and_resets_upstream(certs: Certs, backend: Backend) -> None:
    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port)
            stream = await client.start("/hang")

            async def app_has_it() -> bool:
                return len(app.seen) == 1

            await eventually(app_has_it)
            client.reset(stream)

            async def app_saw_reset() -> bool:
                return app.seen[0].reset is not None

            await eventually(app_saw_reset)
            assert app.seen[0].reset == h2.errors.ErrorCodes.CANCEL

            async def recorded() -> bool:
                client_samples, server_samples = await m.metrics()
                return (
                    total(client_samples, "istio_requests_total") == 1
                    and total(server_samples, "istio_requests_total") == 1
                )

            await eventually(recorded)
            # The connection goes on.
            assert (await client.request("/status/200")).status == 200
            await client.close()
            client_samples, server_samples = await m.metrics()
        assert codes(client_samples, "source") == {("0", "DC"): 1, ("200", "-"): 1}
        assert codes(server_samples, "destination") == {("0", "DC"): 1, ("200", "-"): 1}

    run(main())


@pytest.mark.parametrize("when", ["before", "after"])
def test_upstream_reset_is_ur(certs: Certs, backend: Backend, when: str) -> None:
    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port)
            reply = await client.request(f"/reset-{when}")
            assert (await client.request("/status/200")).status == 200
            await client.close()
            client_samples, server_samples = await m.metrics()
            assert len(app.connections) == 1  # a reset stream is not a broken connection
        if when == "before":
            # Envoy's local reply: 503 UR from the server sidecar, an ordinary 503 to the
            # client sidecar.
            assert reply.status == 503 and b"reset" in bytes(reply.body)
            assert codes(server_samples, "destination") == {("503", "UR"): 1, ("200", "-"): 1}
            assert codes(client_samples, "source") == {("503", "-"): 1, ("200", "-"): 1}
        else:
            # Headers and 5 bytes went through, then the stream was reset on each hop.
            assert reply.status == 200 and bytes(reply.body) == b"hello"
            assert reply.reset == h2.errors.ErrorCodes.INTERNAL_ERROR
            assert codes(server_samples, "destination") == {("200", "UR"): 1, ("200", "-"): 1}
            assert codes(client_samples, "source") == {("200", "UR"): 1, ("200", "-"): 1}

    run(main())


def test_app_connection_lost_is_uc(certs: Certs, backend: Backend) -> None:
    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port)
            stream = await client.start("/hang")

            async def app_has_it() -> bool:
                return len(app.seen) == 1

            await eventually(app_has_it)
            app.connections[0].writer.transport.abort()  # the app dies
            reply = await client.finish(stream)
            assert reply.status == 503
            # A new connection to the app for the next stream.
            assert (await client.request("/status/200")).status == 200
            await client.close()
            client_samples, server_samples = await m.metrics()
        assert codes(server_samples, "destination") == {("503", "UC"): 1, ("200", "-"): 1}
        assert codes(client_samples, "source") == {("503", "-"): 1, ("200", "-"): 1}

    run(main())


def test_plaintext_h2c_client_on_a_permissive_inbound_port(certs: Certs, backend: Backend) -> None:
    """Straight to the server sidecar, h2c with prior knowledge (the preface tells it): a
    header metadata is read for labels, never for a principal; the answer carries the
    sidecar's own headers only when asked for, as over HTTP/1.1."""
    evil = encode_peer_header({"WORKLOAD_NAME": "evil", "NAMESPACE": "default"}).encode()

    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.server.inbound_port)
            asked = await client.finish(
                await client.start("/status/200", headers=[(MX, evil), (MX_ID, b"someone")])
            )
            plain = await client.request("/status/200")
            await client.close()
            assert asked.status == plain.status == 200
            assert get(asked.headers, MX) == encode_peer_header(SERVER_NODE).encode()
            assert get(asked.headers, MX_ID) == SERVER_ID.encode()
            assert no_mx(plain.headers)
            assert all(no_mx(seen.headers) for seen in app.seen)
            _, server_samples = await m.metrics()
        assert_labels(
            only_labels(server_samples, "istio_requests_total", source_workload="evil"),
            reporter="destination",
            source_principal="unknown",
            destination_principal=SERVER_SA,
            connection_security_policy="none",
            request_protocol="http",
        )
        assert total(server_samples, "istio_requests_total") == 2

    run(main())


def test_an_app_that_does_not_read_holds_the_client_back(certs: Certs, backend: Backend) -> None:
    """Flow control the other way: the client can send at most the app's window and one
    stream window per sidecar; then it resets its stream (DC on both sidecars, the app's
    stream reset too)."""

    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port)
            stream = client.conn.get_next_available_stream_id()
            upload = asyncio.ensure_future(
                client.start("/noread", method="POST", body=big_body(4 * 1024 * 1024))
            )

            async def client_waits() -> bool:
                return (
                    client.blocked.is_set()
                    and len(app.seen) == 1
                    and len(app.seen[0].body) == STREAM_WINDOW  # the app's whole window
                )

            await eventually(client_waits)
            assert client.sent_data <= 3 * STREAM_WINDOW
            client.reset(stream)
            upload.cancel()
            await asyncio.gather(upload, return_exceptions=True)

            async def app_saw_reset() -> bool:
                return app.seen[0].reset is not None

            await eventually(app_saw_reset)
            assert (await client.request("/status/200")).status == 200  # the connection lives
            await client.close()

            async def recorded() -> bool:
                client_samples, server_samples = await m.metrics()
                return (
                    codes(client_samples, "source")
                    == codes(server_samples, "destination")
                    == {("0", "DC"): 1, ("200", "-"): 1}
                )

            await eventually(recorded)

    run(main())


@pytest.mark.parametrize(
    ("setting", "status", "body", "flag"),
    [
        ("stream_idle_timeout", 408, b"stream timeout", "SI"),
        ("request_timeout", 504, b"upstream request timeout", "UT"),
    ],
)
def test_a_timeout_before_the_response(
    certs: Certs, backend: Backend, setting: str, status: int, body: bytes, flag: str
) -> None:
    """No frame either way for ``stream_idle_timeout`` (Envoy's 408 ``SI``), or no response
    within ``request_timeout`` (504 ``UT``), from an app that never answers: the upstream
    stream is reset. The server sidecar waits longer, so the client sidecar's timeout is the
    one that fires (the server sidecar sees its downstream go: DC)."""

    async def main() -> None:
        short = {setting: 0.3}
        async with (
            h2_app() as app,
            mesh(certs, app.port, backend, client_settings=short) as m,
        ):
            client = await H2Client.connect(m.port)
            reply = await client.request("/hang")
            assert reply.status == status and bytes(reply.body) == body

            async def app_saw_reset() -> bool:
                return len(app.seen) == 1 and app.seen[0].reset is not None

            await eventually(app_saw_reset)
            await client.close()

            async def recorded() -> bool:
                client_samples, server_samples = await m.metrics()
                return codes(client_samples, "source") == {(str(status), flag): 1} and codes(
                    server_samples, "destination"
                ) == {("0", "DC"): 1}

            await eventually(recorded)

    run(main())


def test_stream_idle_timeout_after_the_response_began(certs: Certs, backend: Backend) -> None:
    """The response's headers went downstream, then nothing moves (a client that does not
    read): the downstream stream is reset (NO_ERROR) and recorded with its status and
    ``SI``."""

    async def main() -> None:
        short = {"stream_idle_timeout": 0.3}
        async with (
            h2_app() as app,
            mesh(certs, app.port, backend, client_settings=short) as m,
        ):
            client = await H2Client.connect(m.port, auto_ack=False)
            stream = await client.start(f"/big/{4 * 1024 * 1024}")
            reply = await client.finish(stream)
            assert reply.status == 200
            assert reply.reset == h2.errors.ErrorCodes.NO_ERROR
            await client.close()

            async def recorded() -> bool:
                client_samples, _ = await m.metrics()
                return codes(client_samples, "source") == {("200", "SI"): 1}

            await eventually(recorded)

    run(main())


def test_client_connection_lost_mid_stream_is_dc(certs: Certs, backend: Backend) -> None:
    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port)
            await client.start("/hang")
            await client.start("/hang")

            async def app_has_them() -> bool:
                return len(app.seen) == 2

            await eventually(app_has_them)
            client.writer.transport.abort()

            async def app_saw_resets() -> bool:
                return all(seen.reset is not None for seen in app.seen)

            await eventually(app_saw_resets)
            await client.close()

            async def recorded() -> bool:
                client_samples, server_samples = await m.metrics()
                return (
                    codes(client_samples, "source")
                    == codes(server_samples, "destination")
                    == {("0", "DC"): 2}
                )

            await eventually(recorded)
            assert len(app.connections) == 1  # the app's connection is not the client's

    run(main())


def test_upstream_lost_while_a_slow_client_holds_the_response(
    certs: Certs, backend: Backend
) -> None:
    """The app dies while its response waits for a client that does not read: each sidecar
    resets its downstream stream at once (it does not wait for window that would carry
    nothing): UC at the server sidecar, UR (its upstream reset the stream) at the client's."""

    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port, auto_ack=False)
            stream = await client.start(f"/big/{4 * 1024 * 1024}")

            async def app_waits() -> bool:
                return app.blocked.is_set() and app.sent[0] > STREAM_WINDOW

            await eventually(app_waits)
            app.connections[0].writer.transport.abort()
            reply = await client.finish(stream)  # without reading: the reset arrives
            assert reply.status == 200
            assert reply.reset == h2.errors.ErrorCodes.INTERNAL_ERROR
            assert len(reply.body) < 4 * 1024 * 1024
            await client.close()

            async def recorded() -> bool:
                client_samples, server_samples = await m.metrics()
                return codes(server_samples, "destination") == {("200", "UC"): 1} and codes(
                    client_samples, "source"
                ) == {("200", "UR"): 1}

            await eventually(recorded)

    run(main())


def test_concurrent_large_streams_interleave_intact(certs: Certs, backend: Backend) -> None:
    """Twenty echoes of 200 KB at once on one connection: every body crosses every window
    (stream and connection) many times, interleaved, and arrives whole on its own stream."""
    bodies = [bytes([i]) * 7 + big_body(200_000 + i) for i in range(20)]

    async def main() -> None:
        async with h2_app() as app, mesh(certs, app.port, backend) as m:
            client = await H2Client.connect(m.port)
            sends = [client.start("/echo", method="POST", body=body) for body in bodies]
            ids = await asyncio.gather(*sends)
            replies = [await client.finish(i) for i in ids]
            await client.close()
            assert [bytes(r.body) for r in replies] == bodies
            client_samples, server_samples = await m.metrics()
        for samples, reporter in ((client_samples, "source"), (server_samples, "destination")):
            assert codes(samples, reporter) == {("200", "-"): 20}

    run(main())


@pytest.mark.parametrize(
    ("mode", "code", "flag"), [("service", 503, "UH"), ("blackhole", 502, "-")]
)
def test_no_upstream_and_blackhole(
    certs: Certs, backend: Backend, mode: str, code: int, flag: str
) -> None:
    async def main() -> None:
        out = OutboundConfig(port=0, upstream=None, service_host=SERVICE_HOST, protocol="http")
        if mode == "blackhole":
            out = OutboundConfig(port=0, upstream=None, protocol="http", mode="blackhole")
        cfg = SidecarConfig(
            node=CLIENT_NODE, node_id=CLIENT_ID, cert_dir=certs.client, outbound=(out,)
        )
        async with Sidecar(cfg, engine=engine(cfg, backend)) as sidecar:
            client = await H2Client.connect(sidecar.outbound_ports[0])
            replies = [
                await client.request("/"),
                await client.request("/", method="POST", body=b"x" * 100_000),
            ]
            await client.close()
            samples = await scrape(sidecar.admin_url)
        assert [r.status for r in replies] == [code, code]
        assert bytes(replies[0].body) == (b"no healthy upstream" if flag == "UH" else b"")
        assert codes(samples, "source") == {(str(code), flag): 2}

    run(main())
