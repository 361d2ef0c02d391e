"""TCP connection telemetry: opened, bytes both ways, closed, with periodic reports.

>>> from meshstats import StatsEngine
>>> engine = StatsEngine({"WORKLOAD_NAME": "reviews-v2"})
>>> conn = engine.tcp_connection(engine.peer("inbound", {"WORKLOAD_NAME": "productpage-v1"}))
>>> conn.add_bytes(sent=512, received=64)
>>> engine.report_tcp()   # what the periodic report does every tcp_reporting_duration
1
>>> conn.close()          # the rest of the bytes, and istio_tcp_connections_closed_total
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .attributes import Layered, ReporterKind, request_attributes

if TYPE_CHECKING:
    from .engine import StatsEngine
    from .labels import PeerContext

__all__ = ["TcpConnection", "GrpcStream"]


class TcpConnection:
    """Telemetry of one TCP connection: opened, bytes both ways, closed.

    Byte totals only grow and are written only by the caller's thread; the reporter keeps
    what it has reported and emits the difference, so :meth:`add_bytes` needs no lock.
    """

    def __init__(
        self, engine: StatsEngine, peer: PeerContext | None, reporter: ReporterKind = "inbound"
    ) -> None:
        self._engine = engine
        self._reporter: ReporterKind = reporter  # used when the peer never became known
        self._peer = peer
        self._peer_known = peer is not None
        self.sent = 0
        self.received = 0
        self._reported_sent = 0
        self._reported_received = 0
        self._opened_reported = False
        self.closed = False
        self._flush_lock = threading.Lock()  # serialises the reporter thread and close()
        self.opened_at = engine._clock()

    def set_peer(self, peer: PeerContext) -> None:
        """The peer is known (exchange done, or known to be absent: an ``unknown`` context)."""
        if not self._opened_reported:
            self._peer = peer
        self._peer_known = True

    def add_bytes(self, sent: int = 0, received: int = 0) -> None:
        self.sent += sent
        self.received += received

    def flush(self, *, closing: bool = False, response_flags: Any = None) -> bool:
        """Report what changed since the last report (needs the peer unless closing)."""
        with self._flush_lock:
            if self.closed or not (self._peer_known or closing):
                return False
            engine = self._engine
            if self._peer is None:
                self._peer = engine.peer(self._reporter, None)
            sent, received = self.sent, self.received
            # None: not added at all (Istio adds opened once and closed at the end); the byte
            # deltas are added even when 0, which makes their series appear at 0, as in Envoy.
            values = {
                "opened": None if self._opened_reported else 1,
                "closed": 1 if closing else None,
                "sent": sent - self._reported_sent,
                "received": received - self._reported_received,
            }
            self._reported_sent, self._reported_received = sent, received
            self._opened_reported = True
            attrs = request_attributes(protocol="tcp", response_flags=response_flags)
            attrs.update(self._peer.service(None))
            engine._emit("tcp", self._peer, Layered(attrs, self._peer.attrs), values)
            if closing:
                self.closed = True
            return True

    def close(self, response_flags: Any = None) -> None:
        """Final report: remaining bytes and ``tcp_connections_closed_total`` + 1."""
        self.flush(closing=True, response_flags=response_flags)
        self._engine._connections.discard(self)


class GrpcStream:
    """The message counts of one gRPC call, reported as Istio reports them: the deltas every
    ``tcp_reporting_duration`` once the peer is known, and the rest when the call ends.

    >>> from meshstats import StatsEngine
    >>> engine = StatsEngine({"WORKLOAD_NAME": "reviews-v2"})
    >>> stream = engine.grpc_stream(engine.peer("inbound", {"WORKLOAD_NAME": "productpage-v1"}))
    >>> stream.add(request_messages=3)
    >>> engine.report_grpc()   # what the periodic report does
    1
    >>> stream.add(response_messages=2); stream.close()
    >>> b"istio_response_messages_total" in engine.render()
    True

    Each count is written by one thread (the one reading requests, the one writing
    responses) and only grows; the reporter keeps what it reported and emits differences,
    so :meth:`add` takes no lock.
    """

    def __init__(
        self,
        engine: StatsEngine,
        peer: PeerContext | None,
        reporter: ReporterKind = "inbound",
        host: str | None = None,
    ) -> None:
        self._engine = engine
        self._peer = peer
        self._reporter: ReporterKind = reporter
        self.host = host
        self.request_messages = 0
        self.response_messages = 0
        self._reported_request = 0
        self._reported_response = 0
        self.closed = False
        self._flush_lock = threading.Lock()

    def set_peer(self, peer: PeerContext) -> None:
        """The peer became known (a client learns it from the response's metadata)."""
        if self._peer is None:
            self._peer = peer

    @property
    def peer(self) -> PeerContext | None:
        return self._peer

    def add(self, request_messages: int = 0, response_messages: int = 0) -> None:
        self.request_messages += request_messages
        self.response_messages += response_messages

    def flush(self, *, closing: bool = False) -> bool:
        """Report the counts since the last report (needs the peer unless closing)."""
        with self._flush_lock:
            if self.closed or (self._peer is None and not closing):
                return False
            engine = self._engine
            if self._peer is None:
                self._peer = engine.peer(self._reporter, None)
            request, response = self.request_messages, self.response_messages
            engine.record_grpc_messages(
                self._peer,
                request - self._reported_request,
                response - self._reported_response,
                host=self.host,
            )
            self._reported_request, self._reported_response = request, response
            if closing:
                self.closed = True
            return True

    def close(self) -> None:
        """The call ended: report what is left, and stop reporting this stream."""
        self.flush(closing=True)
        self._engine._streams.discard(self)
