"""meshstats.grpc: real grpcio servers and channels on 127.0.0.1, sync and grpc.aio, each call
kind, both ends of every call checked against each other, on both backends; periodic
message reports stepped with a fake clock."""

from __future__ import annotations

import asyncio
import datetime
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest
from conftest import Backend
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from embed_support import (
    CLIENT_NODE,
    DEADLINE,
    SERVER_NODE,
    Sample,
    one,
    samples,
    server_exchange,
    total,
    wait_for,
)

from meshstats import StatsEngine
from meshstats._embed import Exchange
from meshstats.certs import LocalCA
from meshstats.grpc import (
    MX_GRPC_ALIAS,
    AioIstioServerInterceptor,
    IstioClientInterceptor,
    IstioServerInterceptor,
    aio_client_interceptors,
)

SERVICE = "test.Reviews"
HOST = "reviews:9080"
REQUESTS = "istio_requests_total"
# Real servers, sockets, threads and child processes (scripts/under_load.sh repeats them).
pytestmark = pytest.mark.timing
REQ_MSGS = "istio_request_messages_total"
RESP_MSGS = "istio_response_messages_total"
RATINGS_NODE = {"WORKLOAD_NAME": "ratings-v1", "NAMESPACE": "default"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Engines:
    def __init__(self, backend: Backend) -> None:
        self.clock = Clock()
        self.server = StatsEngine(SERVER_NODE, store=backend.store.Store(), clock=self.clock)
        self.client = StatsEngine(CLIENT_NODE, store=backend.store.Store(), clock=self.clock)
        self.seen: list[str] = []  # metadata keys the servicers saw
        self.release = threading.Event()  # what the slow servicer waits for

    def client_samples(self) -> list[Sample]:
        return samples(self.client.render())

    def server_samples(self) -> list[Sample]:
        return samples(self.server.render())

    def report(self) -> None:
        """One tcp_reporting_duration later, both engines' periodic reports."""
        self.clock.now += 10.0
        self.server.reporting.run_due()
        self.client.reporting.run_due()


def sync_handler(engines: Engines) -> grpc.GenericRpcHandler:
    def note(context: Any) -> None:
        engines.seen.extend(key for key, _ in context.invocation_metadata())

    def unary(request: bytes, context: Any) -> bytes:
        note(context)
        return request

    def server_stream(request: bytes, context: Any) -> Iterator[bytes]:
        note(context)
        for i in range(int(request)):
            yield b"%d" % i

    def client_stream(requests: Iterator[bytes], context: Any) -> bytes:
        note(context)
        return b"%d" % sum(1 for _ in requests)

    def bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        note(context)
        yield from requests

    def fail(request: bytes, context: Any) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such review")
        raise AssertionError("abort returned")

    def deny(request: bytes, context: Any) -> bytes:
        context.set_code(grpc.StatusCode.PERMISSION_DENIED)
        context.set_details("not yours")
        return b""

    def crash(request: bytes, context: Any) -> bytes:
        raise RuntimeError("a servicer bug")

    def slow(request: bytes, context: Any) -> bytes:
        note(context)
        engines.release.wait(DEADLINE)
        return request

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Deny": grpc.unary_unary_rpc_method_handler(deny),
            "Crash": grpc.unary_unary_rpc_method_handler(crash),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )


def check_calls(engines: Engines) -> None:
    """The four successful calls and the failed one, as each side reports them."""
    exchange = [k for k in engines.seen if k.startswith(("x-envoy", "x-meshstats"))]
    assert engines.seen and not exchange  # the servicers never saw the exchange
    client, server = engines.client_samples(), engines.server_samples()
    ok = {"grpc_response_status": "0", "response_code": "200", "request_protocol": "grpc"}
    labels = one(client, REQUESTS, **ok)
    assert labels == labels | {
        "reporter": "source",
        "source_workload": "productpage-v1",
        "destination_workload": "reviews-v2",
        "destination_app": "reviews",
        "destination_service": HOST,
        "response_flags": "-",
    }
    assert total(client, REQUESTS, **ok) == 4
    labels = one(server, REQUESTS, **ok)
    assert labels == labels | {
        "reporter": "destination",
        "source_workload": "productpage-v1",
        "source_app": "productpage",
        "destination_workload": "reviews-v2",
    }
    assert total(server, REQUESTS, **ok) == 4
    for found in (client, server):
        assert total(found, REQUESTS, grpc_response_status="5", response_code="200") == 1
        # unary 1/1, server stream 1/5, client stream 4/1, bidi 3/3, the failed call 1/0
        assert total(found, REQ_MSGS) == 10
        assert total(found, RESP_MSGS) == 10
    assert one(client, REQ_MSGS)["destination_workload"] == "reviews-v2"
    assert one(server, REQ_MSGS)["source_workload"] == "productpage-v1"
    assert len(one(server, REQ_MSGS)) == 20  # Istio's message metrics: labels 1-20 only
    for family in ("istio_request_bytes_sum", "istio_response_bytes_sum"):
        assert total(client, family) > 0 and total(server, family) > 0


@pytest.fixture
def sync_pair(backend: Backend) -> Iterator[tuple[Engines, grpc.Channel]]:
    engines = Engines(backend)
    server = grpc.server(
        futures.ThreadPoolExecutor(4), interceptors=[IstioServerInterceptor(engines.server)]
    )
    server.add_generic_rpc_handlers((sync_handler(engines),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.intercept_channel(
        grpc.insecure_channel(f"127.0.0.1:{port}"),
        IstioClientInterceptor(engines.client, host=HOST),
    )
    try:
        yield engines, channel
    finally:
        channel.close()
        server.stop(None).wait(DEADLINE)


def method(channel: Any, kind: str, name: str) -> Callable[..., Any]:
    return getattr(channel, kind)(f"/{SERVICE}/{name}")  # type: ignore[no-any-return]


def test_sync_every_call_kind(sync_pair: tuple[Engines, grpc.Channel]) -> None:
    engines, channel = sync_pair
    assert method(channel, "unary_unary", "Unary")(b"hi", timeout=DEADLINE) == b"hi"
    got = list(method(channel, "unary_stream", "ServerStream")(b"5", timeout=DEADLINE))
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    counted = method(channel, "stream_unary", "ClientStream")(iter([b"a"] * 4), timeout=DEADLINE)
    assert counted == b"4"
    echoed = list(method(channel, "stream_stream", "Bidi")(iter([b"x", b"y", b"z"])))
    assert echoed == [b"x", b"y", b"z"]
    with pytest.raises(grpc.RpcError) as failed:
        method(channel, "unary_unary", "Fail")(b"1", timeout=DEADLINE)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    check_calls(engines)


def test_sync_a_status_set_or_raised_is_reported_by_both_ends(
    sync_pair: tuple[Engines, grpc.Channel],
) -> None:
    engines, channel = sync_pair
    for name, code in (("Deny", grpc.StatusCode.PERMISSION_DENIED),
                       ("Crash", grpc.StatusCode.UNKNOWN)):  # fmt: skip
        with pytest.raises(grpc.RpcError) as failed:
            method(channel, "unary_unary", name)(b"1", timeout=DEADLINE)
        assert failed.value.code() == code
    for found in (engines.client_samples(), engines.server_samples()):
        assert total(found, REQUESTS, grpc_response_status="7", response_code="200") == 1
        assert total(found, REQUESTS, grpc_response_status="2", response_code="200") == 1
    # the failed calls' status carried the server's metadata: the client knows who failed
    assert total(engines.client_samples(), REQUESTS, destination_workload="reviews-v2") == 2


def test_sync_a_unary_future_the_client_cancels_is_reported_DC(
    sync_pair: tuple[Engines, grpc.Channel],
) -> None:
    """The done callback of a cancelled future (whose exception() raises) still records."""
    engines, channel = sync_pair
    slow: Any = method(channel, "unary_unary", "Slow")
    future = slow.future(b"1", timeout=DEADLINE)
    try:
        wait_for(lambda: bool(engines.seen), "the call reaching the servicer")
        assert future.cancel()
    finally:
        engines.release.set()
    wait_for(lambda: total(engines.client_samples(), REQUESTS) == 1, "the client's record")
    labels = one(engines.client_samples(), REQUESTS)
    assert (labels["response_flags"], labels["grpc_response_status"]) == ("DC", "1")
    assert labels["response_code"] == "200"


def test_sync_a_unary_answer_is_read_from_the_trailing_metadata_then_the_initial(
    backend: Backend,
) -> None:
    """Where each server answers: a meshstats server in the trailing metadata of a unary
    response, Envoy in its headers (the initial metadata); with both, the trailing wins."""
    engine = StatsEngine(CLIENT_NODE, store=backend.store.Store())
    envoy = Exchange(StatsEngine(RATINGS_NODE))  # what a sidecar in front would answer
    server_mx = server_exchange()

    def answer(where: str) -> Callable[[bytes, Any], bytes]:
        def behavior(request: bytes, context: Any) -> bytes:
            if where in ("initial", "both"):
                context.send_initial_metadata(((MX_GRPC_ALIAS, envoy.metadata),))
            if where in ("trailing", "both"):
                context.set_trailing_metadata(((MX_GRPC_ALIAS, server_mx.metadata),))
            return request

        return behavior

    server = grpc.server(futures.ThreadPoolExecutor(2))  # not intercepted: answers by hand
    handlers = {w: grpc.unary_unary_rpc_method_handler(answer(w)) for w in ("initial", "both")}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.intercept_channel(
        grpc.insecure_channel(f"127.0.0.1:{port}"), IstioClientInterceptor(engine, host=HOST)
    )
    try:
        for where in ("initial", "both"):
            assert method(channel, "unary_unary", where)(b"hi", timeout=DEADLINE) == b"hi"
    finally:
        channel.close()
        server.stop(None).wait(DEADLINE)
    found = samples(engine.render())
    assert one(found, REQUESTS, destination_workload="ratings-v1")  # initial only: read
    assert one(found, REQUESTS, destination_workload="reviews-v2")  # both: the trailing


def test_sync_message_counts_are_reported_periodically(
    sync_pair: tuple[Engines, grpc.Channel],
) -> None:
    engines, channel = sync_pair
    outbox: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (item := outbox.get(timeout=DEADLINE)) is not None:
            yield item

    responses = method(channel, "stream_stream", "Bidi")(requests(), timeout=DEADLINE)
    for item in (b"a", b"b"):
        outbox.put(item)
        assert next(responses) == item
    assert total(engines.server_samples(), REQ_MSGS) == 0  # nothing reported yet
    engines.report()  # the stream is open: its deltas so far
    for found in (engines.client_samples(), engines.server_samples()):
        assert total(found, REQ_MSGS) == 2 and total(found, RESP_MSGS) == 2
        assert total(found, REQUESTS) == 0  # the call itself is recorded at its end
    assert one(engines.client_samples(), REQ_MSGS)["destination_workload"] == "reviews-v2"
    outbox.put(b"c")
    assert next(responses) == b"c"
    outbox.put(None)
    assert list(responses) == []
    for found in (engines.client_samples(), engines.server_samples()):
        assert total(found, REQ_MSGS) == 3 and total(found, RESP_MSGS) == 3
        assert total(found, REQUESTS, grpc_response_status="0") == 1
    engines.report()  # a finished stream reports no more
    assert total(engines.server_samples(), REQ_MSGS) == 3


def test_sync_a_server_that_is_not_there_is_503_UF(backend: Backend) -> None:
    engine = StatsEngine(CLIENT_NODE, store=backend.store.Store())
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: refused
        port = sock.getsockname()[1]
        channel = grpc.intercept_channel(
            grpc.insecure_channel(f"127.0.0.1:{port}"), IstioClientInterceptor(engine, host=HOST)
        )
        with channel, pytest.raises(grpc.RpcError) as failed:
            method(channel, "unary_unary", "Unary")(b"hi", timeout=DEADLINE)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    labels = one(samples(engine.render()), REQUESTS)
    assert (labels["response_code"], labels["response_flags"]) == ("503", "UF")
    assert labels["grpc_response_status"] == "14"


def aio_handler(engines: Engines) -> grpc.GenericRpcHandler:
    def note(context: Any) -> None:
        engines.seen.extend(key for key, _ in context.invocation_metadata())

    async def unary(request: bytes, context: Any) -> bytes:
        note(context)
        return request

    async def server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        note(context)
        for i in range(int(request)):
            yield b"%d" % i

    async def client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
        note(context)
        n = 0
        async for _ in requests:
            n += 1
        return b"%d" % n

    async def bidi(requests: AsyncIterator[bytes], context: Any) -> None:
        note(context)
        async for request in requests:  # the write() style of streaming
            await context.write(request)

    async def fail(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such review")
        raise AssertionError("abort returned")

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )


def test_aio_every_call_kind(backend: Backend) -> None:
    engines = Engines(backend)

    async def main() -> None:
        server = grpc.aio.server(interceptors=[AioIstioServerInterceptor(engines.server)])
        server.add_generic_rpc_handlers((aio_handler(engines),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        interceptors = aio_client_interceptors(engines.client, host=HOST)
        try:
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", interceptors=interceptors
            ) as channel:
                assert await method(channel, "unary_unary", "Unary")(b"hi") == b"hi"
                call = method(channel, "unary_stream", "ServerStream")(b"5")
                assert [m async for m in call] == [b"0", b"1", b"2", b"3", b"4"]
                counted = await method(channel, "stream_unary", "ClientStream")(iter([b"a"] * 4))
                assert counted == b"4"

                async def three() -> AsyncIterator[bytes]:
                    for item in (b"x", b"y", b"z"):
                        yield item

                call = method(channel, "stream_stream", "Bidi")(three())
                assert [m async for m in call] == [b"x", b"y", b"z"]
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await method(channel, "unary_unary", "Fail")(b"1")
                assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), DEADLINE))
    check_calls(engines)


def test_message_deltas_add_up_whichever_metric_comes_first(backend: Backend) -> None:
    """record_grpc_messages keeps each (peer, host)'s series: a metric first seen later
    (a zero delta earlier) is resolved then, and nothing is counted twice."""
    engine = StatsEngine(CLIENT_NODE, store=backend.store.Store())
    peer = engine.peer("outbound", SERVER_NODE)
    for request, response in ((0, 1), (2, 0), (1, 1), (0, 0), (5, 7)):
        engine.record_grpc_messages(peer, request, response, host=HOST)
    engine.record_grpc_messages(peer, 1, 0, host="other:80")
    found = samples(engine.render())
    assert total(found, REQ_MSGS) == 8 + 1 and total(found, RESP_MSGS) == 9
    assert total(found, REQ_MSGS, destination_service=HOST) == 8
    assert total(found, RESP_MSGS, destination_service=HOST) == 9
    assert total(found, REQ_MSGS, destination_service="other:80") == 1


def server_cert_with_dns(ca: LocalCA, dns: str, principal: str) -> tuple[bytes, bytes]:
    """A server certificate gRPC's client accepts: gRPC checks the target name against a
    DNS SAN, which meshstats' workload certificates (URI SAN only, as Istio's) lack."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(dns), x509.UniformResourceIdentifier(principal)]
            ),
            critical=True,
        )
        .sign(ca.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def test_sync_the_server_principal_is_the_verified_client_certificate(backend: Backend) -> None:
    ca = LocalCA.create("cluster.local")
    client_cert = ca.issue("default", "productpage")
    server_sa = ca.principal("default", "reviews")
    key_pem, cert_pem = server_cert_with_dns(ca, "reviews.default.svc.cluster.local", server_sa)
    engines = Engines(backend)
    engines.server.local_principal = server_sa
    server = grpc.server(
        futures.ThreadPoolExecutor(2), interceptors=[IstioServerInterceptor(engines.server)]
    )
    server.add_generic_rpc_handlers((sync_handler(engines),))
    credentials = grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca.cert_pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    channel = grpc.intercept_channel(
        grpc.secure_channel(
            f"127.0.0.1:{port}",
            grpc.ssl_channel_credentials(ca.cert_pem, client_cert.key_pem, client_cert.cert_pem),
            options=[("grpc.ssl_target_name_override", "reviews.default.svc.cluster.local")],
        ),
        IstioClientInterceptor(engines.client, host=HOST),
    )
    try:
        assert method(channel, "unary_unary", "Unary")(b"hi", timeout=DEADLINE) == b"hi"
        # a plaintext caller claiming the same identity in its metadata gets none
        plain = grpc.insecure_channel(f"127.0.0.1:{port}")
        with plain, pytest.raises(grpc.RpcError):
            method(plain, "unary_unary", "Unary")(b"hi", timeout=DEADLINE)
    finally:
        channel.close()
        server.stop(None).wait(DEADLINE)
    labels = one(engines.server_samples(), REQUESTS)
    assert labels["source_principal"] == client_cert.principal
    assert labels["destination_principal"] == server_sa
    assert labels["connection_security_policy"] == "mutual_tls"
    assert labels["source_workload"] == "productpage-v1"


def test_aio_message_counts_are_reported_periodically(backend: Backend) -> None:
    engines = Engines(backend)

    async def main() -> None:
        server = grpc.aio.server(interceptors=[AioIstioServerInterceptor(engines.server)])
        server.add_generic_rpc_handlers((aio_handler(engines),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        outbox: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[bytes]:
            while (item := await outbox.get()) is not None:
                yield item

        try:
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", interceptors=aio_client_interceptors(engines.client, host=HOST)
            ) as channel:
                call = method(channel, "stream_stream", "Bidi")(requests())
                replies = call.__aiter__()
                for item in (b"a", b"b"):
                    await outbox.put(item)
                    assert await replies.__anext__() == item
                engines.report()  # the stream is open: its deltas so far
                for found in (engines.client_samples(), engines.server_samples()):
                    assert total(found, REQ_MSGS) == 2 and total(found, RESP_MSGS) == 2
                    assert total(found, REQUESTS) == 0
                await outbox.put(b"c")
                assert await replies.__anext__() == b"c"
                await outbox.put(None)
                assert [m async for m in replies] == []
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), DEADLINE))
    for found in (engines.client_samples(), engines.server_samples()):
        assert total(found, REQ_MSGS) == 3 and total(found, RESP_MSGS) == 3
        assert total(found, REQUESTS, grpc_response_status="0") == 1
    assert one(engines.client_samples(), REQ_MSGS)["destination_workload"] == "reviews-v2"


# -- the exchange's form on the wire: what each kind of peer sends and reads -------------------


EXCHANGE = ("x-envoy-peer-metadata", "x-envoy-peer-metadata-id", MX_GRPC_ALIAS)


def h2_unary(port: int, path: str, headers: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """One unary gRPC call over raw HTTP/2 (h2c), as an Envoy sidecar makes it: gRPC core
    on this end keeps nothing from us. The exchange entries of the response's headers (a
    trailers-only response's included: Envoy reads those) and of its trailers, apart."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    conn.send_headers(1, [
        (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", HOST),
        ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "h2"), *headers,
    ])  # fmt: skip
    conn.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    answered: dict[str, dict[str, str]] = {"headers": {}, "trailers": {}}
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            assert data, "the server closed the connection before answering"
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    where = (
                        "headers" if isinstance(event, h2.events.ResponseReceived) else "trailers"
                    )
                    answered[where].update(
                        (str(k), str(v)) for k, v in event.headers if k in EXCHANGE
                    )
                ended = ended or isinstance(event, h2.events.StreamEnded)
            sock.sendall(conn.data_to_send())
    return answered


def test_sync_the_server_answers_each_caller_in_the_form_it_reads(backend: Backend) -> None:
    """An Envoy caller (x-envoy-peer-metadata and -id; gRPC core keeps the first from us)
    gets Istio's headers; a meshstats client that knows this server (the alias alone) gets
    the alias alone; one still learning (both), or behind its own sidecar, gets both where
    that sidecar reads them (a failure's trailers-only response: headers), and the alias
    alone in trailers that follow a message (no Envoy reads those); a caller that did not
    ask, none."""
    engines = Engines(backend)
    server = grpc.server(
        futures.ThreadPoolExecutor(2), interceptors=[IstioServerInterceptor(engines.server)]
    )
    server.add_generic_rpc_handlers((sync_handler(engines),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ours, caller = server_exchange(), Exchange(StatsEngine(CLIENT_NODE))
    envoy = [
        ("x-envoy-peer-metadata", caller.metadata),
        ("x-envoy-peer-metadata-id", caller.node_id),
    ]
    alias = [(MX_GRPC_ALIAS, caller.metadata)]
    callers = (("envoy", envoy), ("lean", alias), ("learning", envoy + alias), ("none", []))
    try:
        answers = {
            (name, method): h2_unary(port, f"/{SERVICE}/{method}", sent)
            for name, sent in callers
            for method in ("Unary", "Fail")
        }
    finally:
        server.stop(None).wait(DEADLINE)
    istio = {"x-envoy-peer-metadata": ours.metadata, "x-envoy-peer-metadata-id": ours.node_id}
    ours_alias = {MX_GRPC_ALIAS: ours.metadata}
    nothing: dict[str, str] = {}
    # a unary response: headers, the message, then trailers with the answer
    assert answers["envoy", "Unary"] == {"headers": nothing, "trailers": istio}
    assert answers["lean", "Unary"] == {"headers": nothing, "trailers": ours_alias}
    assert answers["learning", "Unary"] == {"headers": nothing, "trailers": ours_alias}
    assert answers["none", "Unary"] == {"headers": nothing, "trailers": nothing}
    # a failure before any message: trailers-only, which Envoy reads as the headers
    assert answers["envoy", "Fail"] == {"headers": istio, "trailers": nothing}
    assert answers["lean", "Fail"] == {"headers": ours_alias, "trailers": nothing}
    assert answers["learning", "Fail"] == {"headers": istio | ours_alias, "trailers": nothing}
    assert answers["none", "Fail"] == {"headers": nothing, "trailers": nothing}
    assert engines.seen and not [k for k in engines.seen if k in EXCHANGE]
    # the alias named the caller, with or without the id, on both methods
    assert total(engines.server_samples(), REQUESTS, source_workload="productpage-v1") == 4


class Sent(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Inside IstioClientInterceptor: the exchange keys each call carries to the wire."""

    def __init__(self) -> None:
        self.keys: list[set[str]] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.keys.append({key for key, _ in details.metadata or ()})
        return continuation(details, request)


FULL = {"x-envoy-peer-metadata", "x-envoy-peer-metadata-id", MX_GRPC_ALIAS}


@pytest.mark.parametrize("istio_headers", ["auto", "always", None])
def test_sync_a_client_sends_the_alias_alone_once_a_meshstats_server_answered(
    backend: Backend, istio_headers: str | None
) -> None:
    """With ``istio_headers="auto"``, Istio's headers go out until a meshstats server has
    answered (the alias), then the alias alone; no answer sends them again on the next call,
    and an Istio server's answer (Envoy's id without the alias) for good. ``"always"`` and
    the default (None): always."""
    opt_in = {} if istio_headers is None else {"istio_headers": istio_headers}
    engine = StatsEngine(CLIENT_NODE, store=backend.store.Store())
    server_mx, envoy = server_exchange(), Exchange(StatsEngine(RATINGS_NODE))

    def meshstats(request: bytes, context: Any) -> bytes:
        context.set_trailing_metadata(((MX_GRPC_ALIAS, server_mx.metadata),))
        return request

    def istio(request: bytes, context: Any) -> bytes:  # Envoy answers in the headers
        context.send_initial_metadata((("x-envoy-peer-metadata", envoy.metadata),
                                       ("x-envoy-peer-metadata-id", envoy.node_id)))  # fmt: skip
        return request

    def plain(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.server(futures.ThreadPoolExecutor(2))  # not intercepted: answers by hand
    handlers = {f.__name__: grpc.unary_unary_rpc_method_handler(f)
                for f in (meshstats, istio, plain)}  # fmt: skip
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sent = Sent()
    channel = grpc.intercept_channel(
        grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}"), sent),
        IstioClientInterceptor(engine, host=HOST, **opt_in),
    )
    calls = ["meshstats", "meshstats", "plain", "meshstats", "meshstats", "istio", "meshstats",
             "meshstats"]  # fmt: skip
    try:
        for name in calls:
            assert method(channel, "unary_unary", name)(b"hi", timeout=DEADLINE) == b"hi"
    finally:
        channel.close()
        server.stop(None).wait(DEADLINE)
    lean = {MX_GRPC_ALIAS}
    if istio_headers == "auto":
        assert sent.keys == [FULL, lean, lean, FULL, lean, lean, FULL, FULL]
    else:
        assert sent.keys == [FULL] * len(calls)
    found = samples(engine.render())
    assert total(found, REQUESTS, destination_workload="reviews-v2") == 6  # lean or not
    # Envoy's metadata gRPC core keeps from us, and no answer: an unknown destination
    assert total(found, REQUESTS, destination_workload="unknown") == 2


def test_a_client_takes_istio_headers_auto_or_always(backend: Backend) -> None:
    engine = StatsEngine(CLIENT_NODE, store=backend.store.Store())
    with pytest.raises(ValueError, match="istio_headers must be 'auto' or 'always'"):
        IstioClientInterceptor(engine, istio_headers="never")
    with pytest.raises(ValueError, match="istio_headers"):
        aio_client_interceptors(engine, istio_headers="sometimes")


class AioSent(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """:class:`Sent` for ``grpc.aio`` (after meshstats' in the channel's list)."""

    def __init__(self) -> None:
        self.keys: list[set[str]] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.keys.append({key for key, _ in details.metadata or ()})
        return await continuation(details, request)


@pytest.mark.parametrize("istio_headers", ["auto", None])
def test_aio_a_client_sends_the_alias_alone_once_a_meshstats_server_answered(
    backend: Backend, istio_headers: str | None
) -> None:
    """With ``istio_headers="auto"``; by default (None) Istio's headers go on every call."""
    engines = Engines(backend)
    opt_in = {} if istio_headers is None else {"istio_headers": istio_headers}
    sent = AioSent()

    async def main() -> None:
        server = grpc.aio.server(interceptors=[AioIstioServerInterceptor(engines.server)])
        server.add_generic_rpc_handlers((aio_handler(engines),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        interceptors = [*aio_client_interceptors(engines.client, host=HOST, **opt_in), sent]
        try:
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", interceptors=interceptors
            ) as channel:
                for _ in range(3):
                    assert await method(channel, "unary_unary", "Unary")(b"hi") == b"hi"
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), DEADLINE))
    if istio_headers == "auto":
        assert sent.keys == [FULL, {MX_GRPC_ALIAS}, {MX_GRPC_ALIAS}]
    else:
        assert sent.keys == [FULL, FULL, FULL]
    for found in (engines.client_samples(), engines.server_samples()):
        labels = one(found, REQUESTS)  # one series: the lean calls found the same peers
        assert (labels["source_workload"], labels["destination_workload"]) == (
            "productpage-v1", "reviews-v2",
        )  # fmt: skip
        assert total(found, REQUESTS) == 3
