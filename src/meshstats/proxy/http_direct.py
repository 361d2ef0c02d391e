"""A keep-alive connection's common HTTP/1.1 requests, relayed in the event loop's callbacks.

The relay (:mod:`.http`) is a task per downstream connection: it waits for a request, sends
it upstream, waits for the response, sends it downstream. Each wait is a wake-up of the task
(a future made and resolved, a step of the task) and a timed block (:mod:`.interrupt`): on
the standard loop that machinery cost more per request than parsing it
(``benchmarks/bench_relay_floor.py``). A :class:`DirectRelay` takes over between requests,
while both connections are open and idle: the bytes each side sends are parsed in the
protocol's ``data_received`` (:attr:`.listener.Watched.direct`), and a request whose head
and body are all there goes upstream at once, its response downstream as soon as it is all
there, recorded there and then, with no task woken.

What it takes is only the plain case: an HTTP/1.1 request with no upgrade, CONNECT,
expectation or ambiguous framing, to the upstream the connection already has; a final
response; each message whole in what has arrived; both transports taking the bytes without
buffering. Anything else is handed to the connection's task where the callbacks left off
(:class:`Handover`): the events taken so far pushed back on their :class:`.http.HttpStream`
and the exchange's state with them, so the task's code answers it exactly as if it had read
every byte itself. Each FIN or loss is handed over too (it reached the stream's reader), and
so are the timeouts, timed on the relay's one :class:`.interrupt.Deadline`: between requests
``idle_timeout`` (each piece of a head arriving restarts it, as each read of the task's
does), waiting for a response the shorter of ``request_timeout`` and ``stream_idle_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import h1
from .listener import STREAM_LIMIT

if TYPE_CHECKING:
    from .http import Headers, HttpStream, UpstreamError, _Exchange, _Proxy

__all__ = ["DirectRelay", "Handover"]

_IDLE, _WAITING = 0, 1  # between requests; a request sent, its response not relayed yet


class Handover:
    """Where the task takes over: ``kind`` is ``"request"`` (read the next request; ``ex``
    given when its event was pushed back), ``"response"`` (``request`` went upstream with
    ``headers``, the upstream having been fed ``fed`` bytes before it: wait for its response,
    or raise ``failure``), ``"flush"`` (``request``'s response is written whole and waits
    in the transport's buffer) or ``"closed"`` (the connection is done)."""

    __slots__ = ("kind", "ex", "request", "headers", "fed", "failure")

    def __init__(
        self,
        kind: str,
        ex: _Exchange | None = None,
        request: h1.Request | None = None,
        headers: Headers | None = None,
        fed: int = 0,
        failure: UpstreamError | None = None,
    ) -> None:
        self.kind = kind
        self.ex = ex
        self.request = request
        self.headers = headers
        self.fed = fed
        self.failure = failure


def _rest_of(stream: HttpStream, head: h1.Request | h1.Response) -> list[h1.Event] | None:
    """The rest of the message ``head`` began (its body's events, then its end) when all of
    it is in ``stream``'s codec; else None, with what was taken pushed back on ``stream``
    (a refusal last, to be raised), for the task to go on from."""
    conn = stream.conn
    rest: list[h1.Event] = []
    while True:
        try:
            event = conn.next_event()
        except h1.ProtocolError as exc:
            stream.push(head, *rest, exc)
            return None
        if type(event) is not h1.Data and type(event) is not h1.EndOfMessage:
            stream.push(head, *rest)  # NEED_DATA: the rest is still on its way
            return None
        rest.append(event)
        if type(event) is h1.EndOfMessage:
            return rest


class DirectRelay:
    """The callbacks' side of one downstream connection's relay (see the module's text).

    ``await relay.run()`` hooks both connections' protocols and returns the
    :class:`Handover` the task goes on with; its connections are the ``proxy``'s.
    """

    __slots__ = (
        "proxy",
        "loop",
        "down",
        "up",
        "_future",
        "_state",
        "_ex",
        "_request",
        "_headers",
        "_fed",
        "_due",
        "_watched",
        "_idle",
        "_wait",
    )

    def __init__(self, proxy: _Proxy) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.down = proxy.down
        self.up: HttpStream | None = None
        self._future: asyncio.Future[Handover] | None = None
        self._state = _IDLE
        self._ex: _Exchange | None = None  # the request in flight (_WAITING)
        self._request: h1.Request | None = None
        self._headers: Headers | None = None
        self._fed = 0  # the upstream's bytes fed before the request in flight went
        self._due: float | None = None  # when the current wait runs out
        self._watched: float | None = None  # when the deadline looks at this relay next
        self._idle: float | None = None
        self._wait: float | None = None

    async def run(self) -> Handover:
        """Relay requests from the callbacks until the task must take over."""
        proxy = self.proxy
        up = self.up = proxy.up
        assert up is not None and up.tap is not None and self.down.tap is not None
        idle = proxy.config.idle_timeout
        self._idle = idle if idle > 0 else None
        self._wait = proxy.response_timeout()
        future: asyncio.Future[Handover] = self.loop.create_future()
        self._future = future
        self.down.tap.direct = self._from_down
        up.tap.direct = self._from_up
        self._between_requests()
        self._guarded(self._relay_requests)  # one may have come pipelined
        try:
            return await future
        finally:
            self._unhook()

    # -- the protocols' callbacks ---------------------------------------------------------

    def _from_down(self, data: bytes) -> bool:
        if not data:  # the client's FIN or loss: the task sees it in its reader
            self._hand(Handover("request") if self._state == _IDLE else self._in_flight())
            return False
        down = self.down
        down.fed += len(data)
        down.conn.receive_data(data)
        if self._state == _IDLE:
            self._guarded(self._relay_requests)
        elif down.conn.unparsed() > STREAM_LIMIT:
            # A client pipelining that far ahead is held back by the task's reader.
            self._hand(self._in_flight())
        return True

    def _from_up(self, data: bytes) -> bool:
        if self._state != _WAITING:
            # Bytes, a FIN or a loss with no request in flight: the task's next request
            # reads them, as it always did.
            self._hand(Handover("request"))
            return False
        if not data:
            self._hand(self._in_flight())
            return False
        up = self.up
        assert up is not None
        up.fed += len(data)
        up.conn.receive_data(data)
        self._guarded(self._relay_responses)
        return True

    def fire(self, reason: str) -> None:
        """The deadline's call (see :class:`.interrupt.Deadline`): the wait ran out."""
        self._watched = None
        if reason != "timeout" or self._future is None:
            return  # (lapsed: nothing was waiting)
        if self._state == _IDLE:
            self._hand(Handover("closed"))  # an idle connection closes, unrecorded
        else:
            self._hand(self._in_flight(self.proxy.timed_out()))

    # -- the relay's steps ----------------------------------------------------------------

    def _relay_requests(self) -> None:
        # A loop, not steps calling each other: an upstream answering ahead of a client's
        # pipelined requests would otherwise nest a call per request.
        while self._take_request() and self._take_response():
            pass

    def _relay_responses(self) -> None:
        if self._take_response():
            self._relay_requests()

    def _take_request(self) -> bool:
        """Send the next request upstream if all of it is here; True when the upstream's
        bytes are there to be read at once (its answer may have come ahead)."""
        proxy, down = self.proxy, self.down
        conn = down.conn
        ex = proxy.exchange()
        try:
            event = conn.next_event()
        except h1.ProtocolError as exc:
            down.push(exc)
            self._hand(Handover("request", ex))
            return False
        if event is h1.NEED_DATA:
            if conn.unparsed():
                self._set_due(self._idle)  # a head trickling in: each piece restarts it
            return False
        headers = proxy.direct_headers(event, ex) if type(event) is h1.Request else None
        if headers is None:
            down.push(event)
            self._hand(Handover("request", ex))
            return False
        rest = _rest_of(down, event)
        if rest is None:
            self._hand(Handover("request", ex))
            return False
        up = self.up
        assert up is not None
        self._state, self._ex, self._request, self._headers = _WAITING, ex, event, headers
        self._fed = up.fed
        self._set_due(self._wait)
        up.queue(h1.Request(method=event.method, target=event.target, headers=headers))
        for part in rest:
            up.queue(part)
        if up.write_queued():
            # The upstream reads slowly or is closing: the task waits for it.
            self._hand(self._in_flight())
            return False
        return up.conn.unparsed() > 0  # (bytes the upstream sent ahead of the request)

    def _take_response(self) -> bool:
        """Relay the response if all of it is here; True when it was, and the relay can
        take the next request."""
        up = self.up
        assert up is not None
        conn = up.conn
        try:
            response = conn.next_event()
        except h1.ProtocolError as exc:
            up.push(exc)
            self._hand(self._in_flight())
            return False
        if response is h1.NEED_DATA:
            return False
        if type(response) is not h1.Response:  # a 1xx
            up.push(response)
            self._hand(self._in_flight())
            return False
        rest = _rest_of(up, response)
        if rest is None:
            self._hand(self._in_flight())
            return False
        proxy, down, ex, request = self.proxy, self.down, self._ex, self._request
        assert ex is not None and request is not None
        down.queue(proxy.response_head(response, ex))
        for part in rest:
            down.queue(part)
        self._state = _IDLE
        if down.write_queued():
            self._hand(Handover("flush", ex, request))  # a client reading slowly, or gone
        elif not proxy.finish(request, ex):
            self._hand(Handover("closed"))
        elif proxy.up is not up:
            self._hand(Handover("request"))  # let go: the next request connects anew
        else:
            self._between_requests()
            return True
        return False

    # -- state ----------------------------------------------------------------------------

    def _between_requests(self) -> None:
        self._state = _IDLE
        self._ex = self._request = self._headers = None
        self._set_due(self._idle)

    def _in_flight(self, failure: UpstreamError | None = None) -> Handover:
        return Handover("response", self._ex, self._request, self._headers, self._fed, failure)

    def _set_due(self, timeout: float | None) -> None:
        """Time the current wait out ``timeout`` seconds from now (None: never). The
        deadline is told only when that is sooner than it was going to look anyway."""
        if timeout is None:
            self._due = None
            return
        due = self._due = self.loop.time() + timeout
        if self._watched is None or due < self._watched:
            self._watched = due
            self.proxy.deadline.watch_until(self, due, self._check)

    def _check(self, now: float) -> str | float:
        due = self._due
        if due is None:
            return "lapsed"
        if now + 0.001 >= due:  # (uvloop's timers are in milliseconds: up to one early)
            return "timeout"
        self._watched = due
        return due

    def _hand(self, handover: Handover) -> None:
        future = self._future
        self._unhook()
        if future is not None and not future.done():
            future.set_result(handover)

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run ``step``; a failure in it is the task's (raised from :meth:`run`), not the
        transport's, which would only log it and drop the connection."""
        try:
            step()
        except Exception as exc:
            future = self._future
            self._unhook()
            if future is not None and not future.done():
                future.set_exception(exc)

    def _unhook(self) -> None:
        self._future = None
        if self.down.tap is not None:
            self.down.tap.direct = None
        if self.up is not None and self.up.tap is not None:
            self.up.tap.direct = None
        self.proxy.deadline.unwatch(self)
        self._watched = None
