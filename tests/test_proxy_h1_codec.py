"""The sidecar's HTTP/1.1 codec (``meshstats.proxy.h1``) against h11, its oracle.

The relay was built on h11 and now runs on its own codec (a fraction of h11's CPU). These
tests hold the codec to h11's reading of HTTP/1.1: hypothesis generates request and
response heads (valid ones and ones broken in the ways request smuggling uses: duplicate and
conflicting ``Content-Length``, transfer codings, bad characters, bare line ends, folded
lines, oversized heads) with bodies in any framing, cut into arbitrary pieces, and both
parsers must agree event for event: the same request line or status, the same fields (names
as received, values, order), the same body bytes and trailers, the same end, and the same
refusals with the same status hint. The one place the codec is stricter, a folded field
line (h11 unfolds it, the codec refuses it), is checked as such.

What the codec writes is checked the other way round: h11 parses it back to the events sent,
and for the messages the relay sends the bytes are h11's own.

Every test here runs with each backend's connection (``meshstats._h1_conn``: compiled over
the compiled head parser, or the pure-Python twin over the pure one); tests/test_h1_head.py
and tests/test_h1_conn.py hold the two to each other directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import h11
import pytest
from conftest import Backend
from h1_messages import pieces, requests, responses
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshstats.proxy import h1


@pytest.fixture(scope="module", autouse=True)
def connection(backend: Backend) -> Iterator[None]:
    """The codec runs ``backend``'s connection for the module's tests: the compiled one
    (over the compiled head parser) or the pure twin (over the pure one)."""
    saved = h1.Connection
    h1.Connection = backend.h1_conn.Connection  # type: ignore[misc]
    try:
        yield
    finally:
        h1.Connection = saved  # type: ignore[misc]


# -- running both parsers ------------------------------------------------------------------------


def h11_events(role: Any, data: list[bytes], method: bytes | None, eof: bool) -> list[Any]:
    """Events h11 gives for ``data`` (``method``: the request a client connection sent)."""
    conn = h11.Connection(role)
    if method is not None:
        conn.send(h11.Request(method=method, target="/", headers=[("host", "a")]))
        conn.send(h11.EndOfMessage())
    return _drain(conn, data, eof, h11)


def h1_events(role: Any, data: list[bytes], method: bytes | None, eof: bool) -> list[Any]:
    conn = h1.Connection(role)
    if method is not None:
        conn.send(h1.Request(method=method, target=b"/", headers=[(b"host", b"a")]))
        conn.send(h1.EndOfMessage())
    return _drain(conn, data, eof, h1)


def _drain(conn: Any, data: list[bytes], eof: bool, mod: Any) -> list[Any]:
    """Feed the pieces one at a time, then EOF (``eof``), and describe every event up to the
    first PAUSED, NEED_DATA after the last piece, ConnectionClosed or error."""
    out: list[Any] = []
    feed = [*data, b""] if eof else list(data)
    try:
        while True:
            event = conn.next_event()
            if event is mod.NEED_DATA:
                if not feed:
                    out.append("need-data")
                    return _merge(out)
                conn.receive_data(feed.pop(0))
                continue
            if event is mod.PAUSED:
                out.append("paused")
                return _merge(out)
            out.append(_describe(event))
            if type(event).__name__ == "ConnectionClosed":
                return _merge(out)
            if type(event).__name__ == "InformationalResponse" and event.status_code == 101:
                return _merge(out)  # switched: the rest is another protocol's
    except mod.RemoteProtocolError as exc:
        out.append(("error", exc.error_status_hint))
        return _merge(out)


def _describe(event: Any) -> Any:
    name = type(event).__name__
    if name == "Request":
        return (name, event.method, event.target, event.http_version, _fields(event.headers))
    if name in ("Response", "InformationalResponse"):
        return (
            name,
            event.status_code,
            bytes(event.reason),
            event.http_version,
            _fields(event.headers),
        )
    if name == "Data":
        return ("Data", bytes(event.data))
    if name == "EndOfMessage":
        return (name, _fields(event.headers))
    return (name,)


def _fields(headers: Any) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in headers.raw_items()]


def _merge(events: list[Any]) -> list[Any]:
    """Consecutive Data merged: the parsers may cut a body differently."""
    out: list[Any] = []
    for e in events:
        if isinstance(e, tuple) and e[0] == "Data" and out and out[-1][0:1] == ("Data",):
            out[-1] = ("Data", out[-1][1] + e[1])
        else:
            out.append(e)
    return [e for e in out if e != ("Data", b"")]


def folded(message: bytes) -> bool:
    """A field line starting with whitespace (obs-fold): h11 unfolds it, the codec refuses it."""
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    return any(line[:1] in (b" ", b"\t") for line in head.split(b"\n")[1:])


def agree(ours: list[Any], theirs: list[Any], message: bytes) -> None:
    if ours == theirs:
        return
    # The one deliberate difference: a folded field line is refused, where h11 unfolds it.
    if folded(message) and ours and ours[-1] == ("error", 400):
        prefix = ours[:-1]
        assert theirs[: len(prefix)] == prefix
        return
    assert ours == theirs, message


SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(requests(), st.lists(st.integers(0, 200), max_size=6), st.booleans())
@example(
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", [], True
)
@example(
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    [3, 40],
    False,
)
@example(b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", [], False)
def test_requests_parse_as_h11_parses_them(message: bytes, cuts: list[int], eof: bool) -> None:
    data = pieces(message, cuts)
    agree(h1_events(h1.SERVER, data, None, eof), h11_events(h11.SERVER, data, None, eof), message)


@SETTINGS
@given(
    responses(),
    st.sampled_from([b"GET", b"HEAD", b"POST"]),
    st.lists(st.integers(0, 200), max_size=6),
    st.booleans(),
)
@example(
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    b"GET",
    [],
    False,
)
@example(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", b"GET", [5], True)
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD", [], False)
def test_responses_parse_as_h11_parses_them(
    message: bytes, method: bytes, cuts: list[int], eof: bool
) -> None:
    data = pieces(message, cuts)
    ours = h1_events(h1.CLIENT, data, method, eof)
    theirs = h11_events(h11.CLIENT, data, method, eof)
    agree(ours, theirs, message)


@pytest.mark.parametrize("eof", [False, True])
def test_an_incomplete_head_over_16_kib_is_refused_with_431(eof: bool) -> None:
    for mod in (h1, h11):
        conn = mod.Connection(mod.SERVER)
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 17000)
        if eof:
            conn.receive_data(b"")
        with pytest.raises(mod.RemoteProtocolError) as info:
            conn.next_event()
        assert info.value.error_status_hint == 431


def test_a_refusal_says_at_which_byte_of_the_connection() -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    conn = h1.Connection(h1.SERVER)
    conn.receive_data(head + b"2\r\nhi\r\nzz\r\n")
    assert isinstance(conn.next_event(), h1.Request)
    assert isinstance(conn.next_event(), h1.Data)
    with pytest.raises(h1.RemoteProtocolError) as info:
        conn.next_event()  # the chunk's CRLF, then a chunk header that is not hex
    assert info.value.offset == len(head) + 5
    assert f"at byte {len(head) + 5}" in str(info.value)
    # a bad head after 40,000 bytes the connection has already dropped from its buffer
    conn = h1.Connection(h1.SERVER)
    body = b"x" * 40_000
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40000\r\n\r\n")
    first = len(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40000\r\n\r\n")
    assert isinstance(conn.next_event(), h1.Request)
    for part in (body[:20_000], body[20_000:]):
        conn.receive_data(part)
        assert isinstance(conn.next_event(), h1.Data)
    assert isinstance(conn.next_event(), h1.EndOfMessage)
    conn.send(h1.Response(status_code=204, headers=[]))
    conn.send(h1.EndOfMessage())
    conn.start_next_cycle()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")
    with pytest.raises(h1.RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.offset == first + len(body)


def test_a_long_value_that_fails_late_is_refused() -> None:
    """A field value of alternating words that breaks only at its end: refused (the regex
    over the field section must not backtrack without end; pytest-timeout guards it)."""
    conn = h1.Connection(h1.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a " * 8000 + b"\x00\r\n\r\n")
    with pytest.raises(h1.RemoteProtocolError):
        conn.next_event()


# -- writing -------------------------------------------------------------------------------------

RELAYED = [
    # (request method, the request as h1 events, the response as h1 events)
    (
        b"GET",
        [(b"host", b"reviews:9080"), (b"x-b3-traceid", b"abc")],
        200,
        [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        [b"hello"],
        [],
    ),
    (
        b"POST",
        [(b"Host", b"r"), (b"transfer-encoding", b"chunked")],
        201,
        [(b"transfer-encoding", b"chunked")],
        [b"ab", b"", b"cde"],
        [(b"grpc-status", b"0")],
    ),
    (b"HEAD", [(b"host", b"r")], 200, [(b"content-length", b"10")], [], []),
    (b"GET", [(b"host", b"r"), (b"connection", b"close")], 200, [], [b"no length"], []),
    (
        b"GET",
        [(b"host", b"r")],
        503,
        [(b"connection", b"close"), (b"content-length", b"0")],
        [],
        [],
    ),
]


@pytest.mark.parametrize("method,req_headers,status,resp_headers,chunks,trailers", RELAYED)
def test_what_the_codec_writes_is_what_h11_writes(
    method: bytes,
    req_headers: list[tuple[bytes, bytes]],
    status: int,
    resp_headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    trailers: list[tuple[bytes, bytes]],
) -> None:
    """Both sides of an exchange written by the codec and by h11 from the same events: the
    same bytes, and h11 reads the codec's back as the events sent."""
    body = [b"x"] if any(n.lower() == b"transfer-encoding" for n, _ in req_headers) else []
    ours = _write(h1, method, req_headers, body, status, resp_headers, chunks, trailers)
    theirs = _write(h11, method, req_headers, body, status, resp_headers, chunks, trailers)
    assert ours == theirs
    server = h11.Connection(h11.SERVER)
    server.receive_data(ours[0])
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert (request.method, list(request.headers.raw_items())[0][1]) == (method, req_headers[0][1])


def _write(
    mod: Any,
    method: bytes,
    req_headers: Any,
    body: list[bytes],
    status: int,
    resp_headers: Any,
    chunks: list[bytes],
    trailers: Any,
) -> tuple[bytes, bytes]:
    client = mod.Connection(mod.CLIENT)
    request = client.send(mod.Request(method=method, target=b"/x", headers=req_headers))
    request += b"".join(client.send(mod.Data(data=c)) or b"" for c in body)
    request += client.send(mod.EndOfMessage()) or b""
    server = mod.Connection(mod.SERVER)
    server.receive_data(request)
    while not isinstance(server.next_event(), mod.EndOfMessage):
        pass
    response = server.send(mod.Response(status_code=status, headers=resp_headers, reason=b"R"))
    for chunk in chunks if method != b"HEAD" else []:
        response += server.send(mod.Data(data=chunk)) or b""
    response += server.send(mod.EndOfMessage(headers=trailers)) or b""
    return request, response


def test_keep_alive_and_close_states_follow_h11() -> None:
    """After one exchange both codecs agree on whether the connection can go on."""
    for close in (False, True):
        states = []
        for mod in (h1, h11):
            server = mod.Connection(mod.SERVER)
            extra = b"Connection: close\r\n" if close else b""
            server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n")
            server.next_event()
            server.next_event()
            server.send(mod.Response(status_code=200, headers=[(b"content-length", b"0")]))
            server.send(mod.EndOfMessage())
            states.append((repr(server.our_state), repr(server.their_state)))
        assert states[0] == states[1]
