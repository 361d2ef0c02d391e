"""The demo's gRPC edge: productpage asks "recommendations", a grpcio service, through sidecars.

As in a mesh: productpage's grpcio client calls its own sidecar's outbound listener in
plaintext (h2c with prior knowledge, what ``grpc.aio.insecure_channel`` sends), which carries
the call over mTLS h2 to recommendations' sidecar, which calls the grpcio server over h2c.
The sidecars report the edge as Envoy does (``request_protocol="grpc"``,
``grpc_response_status`` from the trailers, the message counters from the length-prefixed
frames): ``reporter="source"`` on productpage's metrics port, ``reporter="destination"`` on
recommendations'. ``ForProduct`` is a server-streaming call: one request message,
:attr:`Recommendations.items` response messages, so ``istio_request_messages_total`` and
``istio_response_messages_total`` differ.

Neither end has meshstats' gRPC interceptors (:mod:`meshstats.grpc`, for proxyless gRPC):
they would record the same calls a second time into series the sidecars already report on
the same metrics ports. What the apps count themselves (calls, messages) is plain Python
counters here, shown beside the sidecars' numbers.

Importing this module needs grpcio (``pip install 'meshstats[grpc]'``); without it the
import raises :class:`~meshstats.errors.MissingExtraError` and the demo leaves the edge out.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..errors import MissingExtraError

try:
    import grpc
    import grpc.aio
except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
    raise MissingExtraError("grpc", "grpc") from exc

if TYPE_CHECKING:
    from .demo_apps import Address

__all__ = ["Recommendations", "RecommendationsClient", "SERVICE", "METHOD"]

SERVICE = "bookinfo.Recommendations"
METHOD = f"/{SERVICE}/ForProduct"


class Recommendations:
    """The gRPC service: ``ForProduct(product)`` waits ``latency_ms``, then streams ``items``
    recommendations back. Plaintext on loopback: its sidecar's inbound listener calls it
    over h2c and terminates the caller's mTLS, as an Istio sidecar does for its app.

    A ``grpc.aio`` server on the demo's event loop: with grpcio's blocking API instead (a
    server thread pool, client calls on threads) a demo page cost 9.3-10.2 ms of CPU against
    6.7-7.6 ms (two runs each), the threads and the loop taking turns at the GIL.
    :attr:`served` counts the calls it finished, :attr:`messages_in` and
    :attr:`messages_out` the messages it read and wrote.
    """

    def __init__(self, *, items: int = 3, latency_ms: float = 0.0) -> None:
        self.items = items
        self.latency_ms = latency_ms
        self.port = 0
        self.served = 0
        self.messages_in = 0
        self.messages_out = 0
        self._server: grpc.aio.Server | None = None

    async def start(self, host: str = "127.0.0.1") -> Recommendations:
        server = grpc.aio.server()
        handler = grpc.unary_stream_rpc_method_handler(self._for_product)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"ForProduct": handler}),)
        )
        self.port = server.add_insecure_port(f"{host}:0")
        self._server = server
        await server.start()
        return self

    async def _for_product(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.messages_in += 1
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000.0)
        product = request.decode(errors="replace")
        for rank in range(1, self.items + 1):
            yield json.dumps({"product": product, "rank": rank}).encode()
            self.messages_out += 1
        self.served += 1

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
            self._server = None


class RecommendationsClient:
    """productpage's side: one plaintext ``grpc.aio`` channel to ``address``, its own
    sidecar's outbound listener for recommendations, with ``authority`` as ``:authority``
    (the service's name, not the loopback address a sidecar happens to listen on).

    :attr:`answered` counts the finished calls by gRPC status name (``"OK"``, ...),
    :attr:`messages_out` and :attr:`messages_in` the messages sent and received.
    """

    def __init__(self, address: Address, *, authority: str, timeout: float = 30.0) -> None:
        self.answered: Counter[str] = Counter()
        self.messages_out = 0
        self.messages_in = 0
        self.timeout = timeout
        self.address = address
        self._channel = grpc.aio.insecure_channel(
            f"{address[0]}:{address[1]}", options=[("grpc.default_authority", authority)]
        )
        self._for_product = self._channel.unary_stream(METHOD)

    @property
    def calls(self) -> int:
        """Calls finished, whatever their status."""
        return sum(self.answered.values())

    async def ask(self, product: int) -> tuple[str, list[bytes]]:
        """The status name and the recommendations for ``product`` (none when it failed)."""
        items: list[bytes] = []
        call = self._for_product(str(product).encode(), timeout=self.timeout)
        self.messages_out += 1
        try:
            async for item in call:
                items.append(item)
                self.messages_in += 1
        except grpc.aio.AioRpcError as exc:
            self.answered[exc.code().name] += 1
            return exc.code().name, []
        self.answered["OK"] += 1
        return "OK", items

    async def close(self) -> None:
        await self._channel.close()
