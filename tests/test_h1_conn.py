"""The HTTP/1.1 connection's two backends held to each other: ``meshstats._h1_conn_c`` (over
the compiled head parser) and its pure-Python twin ``_h1_conn_py``.

test_proxy_h1_codec.py holds each backend to h11 on what h11 and the codec share (events and
the status of a refusal). Here the backends must agree on everything they expose, exactly:
every event with its fields and its cut of the body, the states after each event, the bytes
not parsed yet, and a refusal's message, byte offset and status hint; and, sending, the same
bytes and states for the same events, and the same refusal of an event the state does not
allow. Hypothesis feeds them generated messages (tests/h1_messages.py), arbitrary bytes and
messages with bytes flipped, cut into pieces.

``MESHSTATS_H1_CONN_EXAMPLES`` sets how many examples each property runs (default 1000).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import pytest
from conftest import Backend
from h1_messages import NICE_VALUE, TOKEN, pieces, requests, responses
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshstats import _h1_events as ev

EXAMPLES = int(os.environ.get("MESHSTATS_H1_CONN_EXAMPLES", "1000"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _state(conn: Any) -> tuple[Any, ...]:
    return (
        conn.our_state,
        conn.their_state,
        conn.their_http_version,
        conn.they_are_waiting_for_100_continue,
        conn.unparsed(),
        conn.trailing_data,
    )


def _describe(event: Any) -> Any:
    if event is ev.NEED_DATA or event is ev.PAUSED:
        return event
    fields = [(k, getattr(event, k)) for k in getattr(type(event), "__slots__", ())]
    fields += [(k, getattr(event, k)) for k in ("status_code", "reason", "http_version")
               if hasattr(event, k) and (k, getattr(event, k)) not in fields]  # fmt: skip
    out: list[Any] = [type(event).__name__]
    for name, value in fields:
        if isinstance(value, ev.Headers):
            value = (value.raw_items(), value.lowered())
        out.append((name, value))
    return tuple(out)


def _refusal(exc: ev.ProtocolError) -> tuple[Any, ...]:
    return (type(exc).__name__, str(exc), exc.offset, exc.error_status_hint)


def receive(
    module: ModuleType, role: Any, data: list[bytes], eof: bool, method: bytes | None
) -> list[Any]:
    """Everything ``module``'s connection shows while it reads ``data`` (then its EOF), after
    sending a request with ``method`` when it is a client."""
    conn = module.Connection(role)
    trace: list[Any] = []
    if method is not None:
        trace.append(conn.send(ev.Request(method=method, target=b"/", headers=[(b"host", b"a")])))
        trace.append(conn.send(ev.EndOfMessage()))
    feed = [*data, b""] if eof else list(data)
    for _ in range(200):  # every piece, and an event per step: far more than a message has
        try:
            event = conn.next_event()
        except ev.RemoteProtocolError as exc:
            trace.append(("refused", _refusal(exc), _state(conn)))
            # Refused for good: asking again says so, the same way on both.
            with pytest.raises(ev.RemoteProtocolError) as again:
                conn.next_event()
            trace.append(_refusal(again.value))
            return trace
        trace.append((_describe(event), _state(conn)))
        if event is ev.NEED_DATA:
            if not feed:
                return trace
            piece = feed.pop(0)
            conn.receive_data(piece)
        elif event is ev.PAUSED or isinstance(event, ev.ConnectionClosed):
            return trace
    return trace


MESSAGES = st.one_of(
    requests().map(lambda m: (ev.SERVER, m, None)),
    st.tuples(
        st.just(ev.CLIENT), responses(), st.sampled_from([b"GET", b"HEAD", b"POST", b"CONNECT"])
    ),
    st.tuples(st.sampled_from([ev.SERVER, ev.CLIENT]), st.binary(max_size=80), st.just(b"GET")),
)


@st.composite
def flipped(draw: st.DrawFn) -> tuple[Any, bytes, bytes | None]:
    """A generated message with a few of its bytes changed (to CR, LF, a colon, a space, a
    digit, ...): the places where parsers go wrong."""
    role, message, method = draw(MESSAGES)
    data = bytearray(message)
    for _ in range(draw(st.integers(0, 3))):
        if data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.sampled_from(b"\r\n: \t0;aF\x00\x7f\xff,"))
    return role, bytes(data), (method if role is ev.CLIENT else None)


@pytest.mark.c_extension
@SETTINGS
@given(flipped(), st.lists(st.integers(0, 300), max_size=8), st.booleans())
@example(
    (ev.SERVER, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;x\r\nhello\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\n", None),
    [4, 60], False,
)  # fmt: skip
@example(
    (ev.SERVER, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nab", None), [], True
)
@example((ev.CLIENT, b"HTTP/1.1 200 OK\r\n\r\nuntil the end", b"GET"), [3], True)
@example((ev.CLIENT, b"HTTP/1.1 101 Go\r\nUpgrade: ws\r\n\r\nxx", b"GET"), [], False)
@example((ev.SERVER, b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"1" * 21 + b"\r\n", None), [], False)  # fmt: skip
@example((ev.SERVER, b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"fffffffffffffffffff\r\nab", None), [], True)  # fmt: skip
@example((ev.SERVER, b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3;a\nb\r\nabc\r\n", None), [], False)  # fmt: skip
@example((ev.SERVER, b"\r\nGET / HTTP/1.1\r\n\r\n", None), [], False)
@example((ev.SERVER, b"GET / HTTP/1.1\r\nHost: a\r\n\n\r\n", None), [1, 2, 3], False)
def test_both_backends_read_the_same(
    c_backend: Backend,
    py_backend: Backend,
    message: tuple[Any, bytes, bytes | None],
    cuts: list[int],
    eof: bool,
) -> None:
    role, data, method = message
    chunks = pieces(data, cuts)
    ours = receive(c_backend.h1_conn, role, chunks, eof, method)
    assert ours == receive(py_backend.h1_conn, role, chunks, eof, method)


@pytest.mark.c_extension
def test_a_head_over_16_kib_fed_in_pieces_is_refused_alike(
    c_backend: Backend, py_backend: Backend
) -> None:
    data = [b"GET / HTTP/1.1\r\nHost: a\r\n"] + [b"X-A: " + b"a" * 1000 + b"\r\n"] * 20
    ours = receive(c_backend.h1_conn, ev.SERVER, data, False, None)
    assert ours[-2][1][3] == 431  # really refused, with 431
    assert ours == receive(py_backend.h1_conn, ev.SERVER, data, False, None)


@pytest.mark.c_extension
def test_a_long_connection_drops_what_it_parsed_and_counts_offsets_alike(
    c_backend: Backend, py_backend: Backend
) -> None:
    """Past 64 KiB parsed the buffer drops its front; offsets still count from the first byte."""
    request = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40000\r\n\r\n" + b"x" * 40000
    traces = []
    for backend in (c_backend, py_backend):
        conn = backend.h1_conn.Connection(ev.SERVER)
        trace = []
        for _ in range(3):
            conn.receive_data(request[:100])
            conn.receive_data(request[100:])
            while not isinstance(event := conn.next_event(), ev.EndOfMessage):
                trace.append(_describe(event)[0])
            conn.send(ev.Response(status_code=204, headers=[]))
            conn.send(ev.EndOfMessage())
            conn.start_next_cycle()
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\x00: x\r\n\r\n")
        with pytest.raises(ev.RemoteProtocolError) as refused:
            conn.next_event()
        trace.append(_refusal(refused.value))
        traces.append(trace)
    assert traces[0][-1][2] == 3 * len(request)  # the offset of the fourth head
    assert traces[0] == traces[1]


# -- sending ---------------------------------------------------------------------------------

HEADER = st.one_of(
    st.sampled_from(
        [
            (b"Content-Length", b"3"),
            (b"content-length", b"3, 3"),
            (b"Content-Length", b"0"),
            (b"Transfer-Encoding", b"chunked"),
            (b"transfer-encoding", b"Chunked"),
            (b"Connection", b"close"),
            (b"connection", b"keep-alive, Upgrade"),
            (b"Upgrade", b"websocket"),
            (b"Host", b"reviews"),
            (b"Expect", b"100-continue"),
        ]
    ),
    st.tuples(TOKEN, NICE_VALUE),
)
BODY = st.lists(st.binary(max_size=5), max_size=3)


def send(module: ModuleType, role: Any, steps: list[tuple[Any, ...]]) -> list[Any]:
    """What ``module``'s connection gives for each step: bytes (and states) for an event
    sent, the refusal of one it may not send, the events of bytes received."""
    conn = module.Connection(role)
    trace: list[Any] = []
    for step in steps:
        kind = step[0]
        event: Any
        try:
            if kind == "receive":
                conn.receive_data(step[1])
                while (event := conn.next_event()) is not ev.NEED_DATA and event is not ev.PAUSED:
                    trace.append(_describe(event))
                    if isinstance(event, ev.ConnectionClosed):
                        break
                continue
            if kind == "request":
                event = ev.Request(method=step[1], target=b"/t", headers=list(step[2]))
            elif kind == "response":
                event = ev.Response(status_code=step[1], headers=list(step[2]), reason=b"R")
            elif kind == "informational":
                event = ev.InformationalResponse(status_code=step[1], headers=list(step[2]))
            elif kind == "data":
                event = ev.Data(data=step[1])
            elif kind == "end":
                event = ev.EndOfMessage(headers=list(step[1]))
            else:
                conn.start_next_cycle()
                trace.append(("cycle", _state(conn)))
                continue
            trace.append((conn.send(event), _state(conn)))
        except ev.ProtocolError as exc:
            trace.append(("refused", type(exc).__name__, str(exc), exc.offset, _state(conn)))
    return trace


@st.composite
def exchanges(draw: st.DrawFn) -> tuple[Any, list[tuple[Any, ...]]]:
    """One side of an exchange or two: its events sent in a plausible order, sometimes one
    out of order, with the other side's message received in between."""
    role = draw(st.sampled_from([ev.SERVER, ev.CLIENT]))
    steps: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 2))):
        method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"CONNECT"]))
        version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
        headers = draw(st.lists(HEADER, max_size=5))
        status = draw(st.sampled_from([200, 200, 204, 304, 101, 100, 404, 503]))
        if role is ev.SERVER:
            extra = b"".join(n + b": " + v + b"\r\n" for n, v in headers if n.lower() != b"host")
            steps.append(
                ("receive", method + b" / HTTP/" + version + b"\r\nHost: a\r\n" + extra + b"\r\n")
            )
            if status < 200:
                steps.append(("informational", status, draw(st.lists(HEADER, max_size=2))))
            steps.append(("response", status, draw(st.lists(HEADER, max_size=4))))
        else:
            steps.append(("request", method, [(b"Host", b"a"), *headers]))
        steps += [("data", chunk) for chunk in draw(BODY)]
        steps.append(("end", draw(st.lists(st.tuples(TOKEN, NICE_VALUE), max_size=2))))
        if role is ev.CLIENT:
            steps.append(("receive", draw(responses())))
        if draw(st.booleans()):
            steps.insert(draw(st.integers(0, len(steps))), draw(st.sampled_from(steps)))
        steps.append(("cycle",))
    return role, steps


@pytest.mark.c_extension
@SETTINGS
@given(exchanges())
@example(
    (
        ev.SERVER,
        [
            ("receive", b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"),
            ("response", 200, [(b"Connection", b"keep-alive")]),
            ("data", b"abc"),
            ("end", []),
            ("cycle",),
        ],
    )
)
@example(
    (
        ev.CLIENT,
        [
            ("request", b"POST", [(b"Host", b"a"), (b"Content-Length", b"3")]),
            ("data", b"abcd"),
            ("end", []),
        ],
    )
)
def test_both_backends_send_the_same(
    c_backend: Backend, py_backend: Backend, exchange: tuple[Any, list[tuple[Any, ...]]]
) -> None:
    role, steps = exchange
    ours = send(c_backend.h1_conn, role, steps)
    assert ours == send(py_backend.h1_conn, role, steps)


# -- each backend on its own ------------------------------------------------------------------


def test_a_relayed_exchange_on_either_backend(backend: Backend) -> None:
    """The exchange the relay does most, written out: the bytes and states each step gives."""
    server = backend.h1_conn.Connection(ev.SERVER)
    server.receive_data(b"GET /r HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    request = server.next_event()
    assert (request.method, request.target, request.headers.get(b"host")) == (b"GET", b"/r", b"a")
    assert isinstance(server.next_event(), ev.EndOfMessage)
    assert server.their_state is ev.DONE
    head = server.send(ev.Response(status_code=200, headers=[(b"Content-Length", b"2")]))
    assert head == b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\n"
    assert server.send(ev.Data(data=b"ok")) == b"ok"
    assert server.send(ev.EndOfMessage()) == b""
    assert (server.our_state, server.their_state) == (ev.DONE, ev.DONE)
    server.start_next_cycle()
    assert (server.our_state, server.their_state) == (ev.IDLE, ev.IDLE)
    server.receive_data(b"")
    assert isinstance(server.next_event(), ev.ConnectionClosed)


def test_a_chunked_body_and_its_trailers_on_either_backend(backend: Backend) -> None:
    client = backend.h1_conn.Connection(ev.CLIENT)
    client.send(ev.Request(method=b"POST", target=b"/", headers=[(b"host", b"a")]))
    client.send(ev.EndOfMessage())
    client.receive_data(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=1\r\nabc\r\n10\r\n" + b"d" * 16 + b"\r\n0\r\ngrpc-status: 0\r\n\r\n"
    )
    events = []
    while not isinstance(event := client.next_event(), ev.EndOfMessage):
        events.append(event)
    assert [e.data for e in events[1:]] == [b"abc", b"d" * 16]
    assert event.headers.raw_items() == [(b"grpc-status", b"0")]
    assert client.their_state is ev.DONE


def test_a_refusal_names_its_byte_on_either_backend(backend: Backend) -> None:
    conn = backend.h1_conn.Connection(ev.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert isinstance(conn.next_event(), ev.Request)
    with pytest.raises(ev.RemoteProtocolError) as refused:
        conn.next_event()
    assert refused.value.offset == 56
    assert str(refused.value) == "illegal chunk header: b'zz\\r\\n' (at byte 56)"
    assert conn.their_state is ev.ERROR


def test_sending_out_of_turn_is_refused_on_either_backend(backend: Backend) -> None:
    conn = backend.h1_conn.Connection(ev.SERVER)
    with pytest.raises(ev.LocalProtocolError, match="cannot send a response in state IDLE"):
        conn.send(ev.Response(status_code=200, headers=[]))
    with pytest.raises(ev.LocalProtocolError, match="cannot send str"):
        conn.send("x")
