"""gRPC through two sidecars, with a real grpcio client and server on both backends:

client -> client sidecar outbound (h2c) -> mTLS h2 -> server sidecar inbound -> h2c -> server

Each call kind (unary, server-streaming, client-streaming, bidirectional), an error status
(a trailers-only response), a deadline exceeded and a cancelled stream; both sidecars'
series checked exactly (labels and counts): ``request_protocol="grpc"``,
``grpc_response_status`` from the trailers, the message counters from the length-prefixed
frames, and a periodic report in the middle of a stream. The calls run in a thread
(grpcio's sync API), the sidecars on the test's event loop; every step waits for what it
needs (a message, a queue), never for a clock, except the deadline the test is about.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from contextlib import asynccontextmanager
from typing import Any

import grpc
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
    Sample,
    assert_labels,
    eventually,
    free_port,
    make_certs,
    only_labels,
    run,
    scrape,
    select,
    total,
)

from meshstats import StatsEngine
from meshstats.certs import principal_of
from meshstats.proxy import InboundConfig, OutboundConfig, Sidecar, SidecarConfig

pytestmark = pytest.mark.timing

SERVICE = "test.Reviews"
REQUESTS = "istio_requests_total"
REQ_MSGS = "istio_request_messages_total"
RESP_MSGS = "istio_response_messages_total"
CALL_TIMEOUT = 60.0  # generous: only a broken proxy takes this long


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(autouse=True)
def no_handler_failed(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A relay that fails unexpectedly is logged, and the traffic may still look right."""
    yield
    failures = [r for r in caplog.records if r.name == "meshstats.proxy" and r.levelno >= 40]
    assert not failures, [r.getMessage() for r in failures]


class Servicer:
    """The server's methods; ``Hang`` and ``Slow`` wait until their call is over."""

    def __init__(self) -> None:
        self.metadata: list[str] = []  # every metadata key the methods saw
        self.hung = threading.Event()  # Hang has sent its first message

    def note(self, context: Any) -> None:
        self.metadata.extend(key for key, _ in context.invocation_metadata())

    def unary(self, request: bytes, context: Any) -> bytes:
        self.note(context)
        return request

    def server_stream(self, request: bytes, context: Any) -> Iterator[bytes]:
        self.note(context)
        for i in range(int(request)):
            yield b"%d" % i

    def client_stream(self, requests: Iterator[bytes], context: Any) -> bytes:
        self.note(context)
        return b"%d" % sum(1 for _ in requests)

    def bidi(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        self.note(context)
        yield from requests

    def fail(self, request: bytes, context: Any) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such review")
        raise AssertionError("abort returned")

    def slow(self, request: bytes, context: Any) -> bytes:
        done = threading.Event()
        context.add_callback(done.set)
        done.wait(CALL_TIMEOUT)  # until the call is over (its deadline)
        return b""

    def hang(self, request: bytes, context: Any) -> Iterator[bytes]:
        done = threading.Event()
        context.add_callback(done.set)
        yield b"first"
        self.hung.set()
        done.wait(CALL_TIMEOUT)  # until the client cancels

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
                "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
                "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
                "Hang": grpc.unary_stream_rpc_method_handler(self.hang),
            },
        )


@dataclasses.dataclass
class Mesh:
    client: Sidecar
    server: Sidecar
    servicer: Servicer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.client.outbound_ports[0]}"

    async def metrics(self) -> tuple[list[Sample], list[Sample]]:
        return await scrape(self.client.admin_url), await scrape(self.server.admin_url)


def engine(config: SidecarConfig, backend: Backend) -> StatsEngine:
    assert config.cert_dir is not None
    return StatsEngine(
        config.node, store=backend.store.Store(), local_principal=principal_of(config.cert_dir)
    )


@asynccontextmanager
async def mesh(certs: Certs, backend: Backend) -> AsyncIterator[Mesh]:
    servicer = Servicer()
    server = grpc.server(futures.ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((servicer.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        inbound = InboundConfig(port=0, app=("127.0.0.1", port), protocol="http")
        server_cfg = SidecarConfig(
            node=SERVER_NODE, node_id=SERVER_ID, cert_dir=certs.server, inbound=inbound
        )
        async with Sidecar(server_cfg, engine=engine(server_cfg, backend)) as server_sidecar:
            out = OutboundConfig(
                port=0,
                upstream=("127.0.0.1", server_sidecar.inbound_port),
                service_host=SERVICE_HOST,
                protocol="http",
            )
            client_cfg = SidecarConfig(
                node=CLIENT_NODE, node_id=CLIENT_ID, cert_dir=certs.client, outbound=(out,)
            )
            async with Sidecar(client_cfg, engine=engine(client_cfg, backend)) as client:
                yield Mesh(client, server_sidecar, servicer)
    finally:
        server.stop(None)


def calls(samples: list[Sample], reporter: str) -> dict[tuple[str, str, str], float]:
    """Requests by (response_code, grpc_response_status, response_flags)."""
    out: dict[tuple[str, str, str], float] = {}
    for _, labels, value in select(samples, REQUESTS, reporter=reporter):
        key = (labels["response_code"], labels["grpc_response_status"], labels["response_flags"])
        out[key] = out.get(key, 0) + value
    return out


def test_every_call_kind_an_error_a_deadline_and_a_cancel(certs: Certs, backend: Backend) -> None:
    async def main() -> None:
        async with mesh(certs, backend) as m:

            def drive() -> dict[str, Any]:
                got: dict[str, Any] = {}
                with grpc.insecure_channel(m.target) as channel:
                    method = f"/{SERVICE}/"
                    got["unary"] = channel.unary_unary(method + "Unary")(
                        b"hi", timeout=CALL_TIMEOUT
                    )
                    got["server"] = list(
                        channel.unary_stream(method + "ServerStream")(b"5", timeout=CALL_TIMEOUT)
                    )
                    got["client"] = channel.stream_unary(method + "ClientStream")(
                        iter([b"a", b"b", b"c", b"d"]), timeout=CALL_TIMEOUT
                    )
                    got["bidi"] = list(
                        channel.stream_stream(method + "Bidi")(
                            iter([b"x", b"y", b"z"]), timeout=CALL_TIMEOUT
                        )
                    )
                    try:
                        channel.unary_unary(method + "Fail")(b"", timeout=CALL_TIMEOUT)
                    except grpc.RpcError as failed:
                        got["fail"] = (failed.code(), failed.details())
                    try:
                        # The one wait on a clock: the deadline is the point.
                        channel.unary_unary(method + "Slow")(b"", timeout=0.5)
                    except grpc.RpcError as late:
                        got["slow"] = late.code()
                    call = channel.unary_stream(method + "Hang")(b"", timeout=CALL_TIMEOUT)
                    got["hang"] = next(call)
                    assert m.servicer.hung.wait(CALL_TIMEOUT)
                    call.cancel()
                    got["cancelled"] = call.code()
                return got

            got = await asyncio.to_thread(drive)
            assert got["unary"] == b"hi"
            assert got["server"] == [b"0", b"1", b"2", b"3", b"4"]
            assert got["client"] == b"4"
            assert got["bidi"] == [b"x", b"y", b"z"]
            assert got["fail"] == (grpc.StatusCode.NOT_FOUND, "no such review")
            assert got["slow"] == grpc.StatusCode.DEADLINE_EXCEEDED
            assert got["hang"] == b"first"
            assert got["cancelled"] == grpc.StatusCode.CANCELLED
            # The servicer never saw the exchange headers.
            assert m.servicer.metadata
            assert not [k for k in m.servicer.metadata if k.startswith("x-envoy-peer")]

            async def all_recorded() -> bool:
                client, server = await m.metrics()
                return total(client, REQUESTS) == 7 and total(server, REQUESTS) == 7

            await eventually(all_recorded)
            client, server = await m.metrics()

        for samples, reporter in ((client, "source"), (server, "destination")):
            found = calls(samples, reporter)
            # The deadline: the client resets its stream when its deadline passes (DC on
            # both sidecars); grpcio's server, which got the same deadline in grpc-timeout,
            # may answer DEADLINE_EXCEEDED (4) just before that reset reaches it.
            late = found.pop(("0", "", "DC"), 0) + found.pop(("200", "4", "-"), 0)
            assert late == 1, (reporter, found)
            assert found == {
                ("200", "0", "-"): 4,  # the four call kinds
                ("200", "5", "-"): 1,  # NOT_FOUND, in a trailers-only response
                # cancelled after the response headers: no grpc-status, so Envoy's mapping
                # of the HTTP status (200 -> UNKNOWN)
                ("200", "2", "DC"): 1,
            }, reporter
            ok = only_labels(samples, REQUESTS, grpc_response_status="0")
            assert_labels(
                ok,
                reporter=reporter,
                request_protocol="grpc",
                source_workload="productpage-v1",
                source_principal=CLIENT_SA,
                destination_workload="reviews-v2",
                destination_principal=SERVER_SA,
            )
            # unary 1/1, server stream 1/5, client stream 4/1, bidi 3/3, the error 1/0,
            # the deadline 1/0, the cancelled stream 1/1
            assert total(samples, REQ_MSGS) == 12
            assert total(samples, RESP_MSGS) == 11
            # (A deadline the client sidecar saw as DC left it without the server's
            # metadata: that call's series names an unknown destination workload.)
            labels = only_labels(samples, REQ_MSGS, destination_workload="reviews-v2")
            assert_labels(
                labels,
                reporter=reporter,
                source_workload="productpage-v1",
                destination_workload="reviews-v2",
                destination_principal=SERVER_SA,
            )
            # Istio's message metrics carry the peer labels only (20), none of the request's.
            assert "response_code" not in labels and "request_protocol" not in labels
        assert_labels(
            only_labels(client, REQUESTS, grpc_response_status="5"),
            destination_service=SERVICE_HOST,
            connection_security_policy="unknown",
        )
        assert_labels(
            only_labels(server, REQUESTS, grpc_response_status="5"),
            connection_security_policy="mutual_tls",
        )

    run(main())


def test_long_stream_reported_periodically_then_at_its_end(certs: Certs, backend: Backend) -> None:
    async def main() -> None:
        async with mesh(certs, backend) as m:
            requests: queue.Queue[bytes | None] = queue.Queue()

            def messages() -> Iterator[bytes]:
                while (item := requests.get()) is not None:
                    yield item

            channel = grpc.insecure_channel(m.target)
            responses = channel.stream_stream(f"/{SERVICE}/Bidi")(messages(), timeout=CALL_TIMEOUT)

            def exchange(message: bytes) -> bytes:
                requests.put(message)
                reply: bytes = next(responses)
                return reply

            try:
                assert await asyncio.to_thread(exchange, b"one") == b"one"
                assert await asyncio.to_thread(exchange, b"two") == b"two"
                # What the periodic report (tcp_reporting_duration) does, now.
                for sidecar in (m.client, m.server):
                    assert sidecar.engine.report_grpc() == 1
                client, server = await m.metrics()
                for samples in (client, server):
                    assert total(samples, REQ_MSGS) == 2
                    assert total(samples, RESP_MSGS) == 2
                    assert total(samples, REQUESTS) == 0  # the call is still open
                assert await asyncio.to_thread(exchange, b"three") == b"three"
                requests.put(None)
                rest = await asyncio.to_thread(list, responses)
                assert rest == []
            finally:
                channel.close()

            async def ended() -> bool:
                client, server = await m.metrics()
                return total(client, REQUESTS) == 1 and total(server, REQUESTS) == 1

            await eventually(ended)
            client, server = await m.metrics()
        for samples in (client, server):
            assert total(samples, REQ_MSGS) == 3 and total(samples, RESP_MSGS) == 3
            assert len(select(samples, REQ_MSGS)) == 1  # the same series, continued

    run(main())


def test_many_concurrent_calls_share_the_connections(certs: Certs, backend: Backend) -> None:
    n = 64

    async def main() -> None:
        async with mesh(certs, backend) as m:

            def drive() -> list[bytes]:
                with grpc.insecure_channel(m.target) as channel:
                    unary = channel.unary_unary(f"/{SERVICE}/Unary")
                    pending = [unary.future(b"%d" % i, timeout=CALL_TIMEOUT) for i in range(n)]
                    return [call.result() for call in pending]

            assert await asyncio.to_thread(drive) == [b"%d" % i for i in range(n)]

            async def recorded() -> bool:
                client, server = await m.metrics()
                return total(client, REQUESTS) == n and total(server, REQUESTS) == n

            await eventually(recorded)
            client, server = await m.metrics()
            # One connection between the sidecars (one TLS handshake) carried every call.
            assert m.server.tls_inbound.handshakes == 1
        for samples, reporter in ((client, "source"), (server, "destination")):
            assert calls(samples, reporter) == {("200", "0", "-"): n}
            assert total(samples, REQ_MSGS) == total(samples, RESP_MSGS) == n

    run(main())


@pytest.mark.parametrize("flag", ["UF", "UH"])
def test_no_upstream_is_a_trailers_only_unavailable(
    certs: Certs, backend: Backend, flag: str
) -> None:
    """Envoy's local reply to a gRPC request: ``:status`` 200, ``grpc-status`` 14, the
    reason in ``grpc-message``; recorded as Envoy records it (200, 14, the flag)."""
    upstream = ("127.0.0.1", free_port()) if flag == "UF" else None

    async def main() -> None:
        out = OutboundConfig(port=0, upstream=upstream, service_host=SERVICE_HOST, protocol="http")
        cfg = SidecarConfig(
            node=CLIENT_NODE, node_id=CLIENT_ID, cert_dir=certs.client, outbound=(out,)
        )
        async with Sidecar(cfg, engine=engine(cfg, backend)) as client:

            def call() -> grpc.RpcError:
                with grpc.insecure_channel(f"127.0.0.1:{client.outbound_ports[0]}") as channel:
                    try:
                        channel.unary_unary(f"/{SERVICE}/Unary")(b"hi", timeout=CALL_TIMEOUT)
                    except grpc.RpcError as failed:
                        return failed
                raise AssertionError("the call succeeded")

            failed = await asyncio.to_thread(call)
            samples = await scrape(client.admin_url)
        assert failed.code() == grpc.StatusCode.UNAVAILABLE
        reason = "no healthy upstream" if flag == "UH" else "connection failure"
        assert reason in failed.details()
        assert calls(samples, "source") == {("200", "14", flag): 1}
        assert_labels(
            only_labels(samples, REQUESTS),
            request_protocol="grpc",
            destination_workload="unknown",
            destination_service=SERVICE_HOST,
        )
        # Answered on the request's headers: its body was never relayed, nor counted (as
        # Envoy's filter chain stops decoding a stream its router has answered).
        assert total(samples, REQ_MSGS) == total(samples, RESP_MSGS) == 0

    run(main())
