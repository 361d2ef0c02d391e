"""The sidecar's one-pass HTTP/2 header rules against the ``h2`` library's own pipeline.

:func:`meshstats.proxy.h2_rules.checked` replaces ``h2``'s inbound normalisation and
validation (turned off in :class:`meshstats.proxy.h2.H2Conn`), and the sidecar is a
security boundary: for every header block, request, response or trailers, both must
refuse it, or both accept it and hand on the same fields (values, order, and whether
HPACK may index them). Blocks are drawn near the rules' edges: valid blocks with a few
fields inserted, dropped or replaced, from names and values each rule is about, and
plain random bytes. 1,000 examples per kind of block in CI; ``MESHSTATS_H2_RULES_EXAMPLES``
raises them for a long run. Every test runs each backend's ``checked`` (``backend.h2_conn``:
the compiled connection's, which takes the common blocks in C and hands the rest to the
twin, and the twin's, ``h2_rules.checked`` itself).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.utilities
import hpack.hpack
import pytest
from conftest import Backend
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshstats.proxy.h2 import _connection
from meshstats.proxy.h2_rules import REQUEST, RESPONSE, TRAILERS

Header = tuple[bytes, bytes]

_FLAGS = {
    kind: h2.utilities.HeaderValidationFlags(
        is_client=False,
        is_trailer=kind == TRAILERS,
        is_response_header=kind == RESPONSE,
        is_push_promise=False,
    )
    for kind in (REQUEST, RESPONSE, TRAILERS)
}

_NAMES = [
    b":method", b":scheme", b":path", b":authority", b":status", b":protocol", b":", b":x",
    b":Method", b"::path", b"host", b"cookie", b"te", b"connection", b"proxy-connection",
    b"keep-alive", b"transfer-encoding", b"upgrade", b"accept", b"content-type", b"x-a",
    b"Host", b"a:b", b"", b"a b", b"a\x7f", b"\xc3\xa9", b"a\x00", b"TE", b"Cookie", b"!#$~",
]  # fmt: skip
_VALUES = [
    b"", b"GET", b"CONNECT", b"POST", b"trailers", b"TRAILERS", b"Trailers", b"gzip", b"a",
    b"b", b" a", b"a ", b"\ta", b"a\t", b"a b", b"a\x00b", b"a\nb", b"a\rb", b"\x00", b" ",
    b"/", b"http", b"https", b"200", b"100", b"example.com", b"x=1", b"\x7f\xff",
    b"websocket",
]  # fmt: skip

names = st.one_of(st.sampled_from(_NAMES), st.binary(max_size=6))
values = st.one_of(st.sampled_from(_VALUES), st.binary(max_size=5))


@st.composite
def fields(draw: st.DrawFn) -> Header:
    name, value = draw(names), draw(values)
    wrap = draw(st.sampled_from((tuple, HeaderTuple, NeverIndexedHeaderTuple)))
    return (name, value) if wrap is tuple else wrap(name, value)


_BASES: dict[int, list[list[Header]]] = {
    REQUEST: [
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
         (b":authority", b"example.com"), (b"accept", b"*/*")],
        [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b"host", b"a"),
         (b"te", b"trailers"), (b"content-type", b"application/grpc")],
        [(b":method", b"CONNECT"), (b":authority", b"a:443")],
        [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
         (b":path", b"/chat"), (b":authority", b"a")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
         (b":authority", b"a"), (b"cookie", b"x=1"), (b"host", b"a"), (b"cookie", b"y=2")],
    ],
    RESPONSE: [
        [(b":status", b"200"), (b"content-type", b"text/plain"), (b"cookie", b"a")],
        [(b":status", b"100")],
        [(b":status", b"200"), (b"grpc-status", b"0")],
    ],
    TRAILERS: [
        [(b"grpc-status", b"0"), (b"grpc-message", b"")],
        [(b"x-a", b"b"), (b"cookie", b"c"), (b"cookie", b"")],
        [],
    ],
}  # fmt: skip


@st.composite
def blocks(draw: st.DrawFn, kind: int) -> list[Header]:
    """A valid block of ``kind`` with a few fields inserted, dropped or replaced, or a
    block of random fields."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.lists(fields(), max_size=8))
    block = list(draw(st.sampled_from(_BASES[kind])))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(("insert", "drop", "replace", "swap")))
        at = draw(st.integers(0, len(block)))
        if op == "insert":
            block.insert(at, draw(fields()))
        elif block and at < len(block):
            if op == "drop":
                del block[at]
            elif op == "replace":
                block[at] = draw(fields())
            elif at + 1 < len(block):
                block[at], block[at + 1] = block[at + 1], block[at]
    return block


def _h2(block: list[Header], kind: int) -> list[tuple[bytes, bytes, bool]] | None:
    """What h2's inbound pipeline makes of ``block`` (None: refused)."""
    flags = _FLAGS[kind]
    try:
        out = list(
            h2.utilities.validate_headers(
                h2.utilities.normalize_inbound_headers(block, flags), flags
            )
        )
    except h2.exceptions.ProtocolError:
        return None
    return [(n, v, getattr(h, "indexable", True)) for h in out for n, v in (h,)]


_RULES: dict[str, Any] = {}  # "checked": the backend's function under test


@pytest.fixture(scope="module", autouse=True)
def rules(backend: Backend) -> Iterator[None]:
    _RULES["checked"] = backend.h2_conn.checked
    try:
        yield
    finally:
        _RULES.clear()


def _ours(block: list[Header], kind: int) -> list[tuple[bytes, bytes, bool]] | None:
    try:
        out = _RULES["checked"](block, kind)
    except h2.exceptions.ProtocolError:
        return None
    return [(n, v, getattr(h, "indexable", True)) for h in out for n, v in (h,)]


_GET: list[Header] = [(b":method", b"GET"), (b":scheme", b"h"), (b":path", b"/"), (b"host", b"a")]
_EXAMPLES = int(os.environ.get("MESHSTATS_H2_RULES_EXAMPLES", "1000"))
_CASES = settings(
    max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_CASES
@given(blocks(REQUEST))
# a cookie before the pseudo-headers is moved after them (h2 joins cookies first)
@example([(b"cookie", b"a"), *_GET])
# an empty cookie joined last leaves the joined value ending in a space
@example([*_GET, (b"cookie", b"a"), (b"cookie", b"")])
@example([(b":method", b"GET"), (b":scheme", b"h"), (b":path", b""), (b"host", b"a")])
def test_requests_as_h2(block: list[Header]) -> None:
    assert _ours(block, REQUEST) == _h2(block, REQUEST)


@_CASES
@given(blocks(RESPONSE))
@example([(b":status", b"200"), (b":path", b"")])
@example([(b":status", b"200"), (b"te", b"Trailers")])
def test_responses_as_h2(block: list[Header]) -> None:
    assert _ours(block, RESPONSE) == _h2(block, RESPONSE)


@_CASES
@given(blocks(TRAILERS))
@example([(b"te", b"gzip")])
@example([(b"x", b"a"), (b":status", b"200")])
def test_trailers_as_h2(block: list[Header]) -> None:
    assert _ours(block, TRAILERS) == _h2(block, TRAILERS)


@pytest.mark.parametrize("kind", [REQUEST, RESPONSE, TRAILERS])
@settings(max_examples=500, deadline=None)
@given(block=st.lists(fields(), max_size=6))
def test_random_fields_as_h2(kind: int, block: list[Header]) -> None:
    assert _ours(block, kind) == _h2(block, kind)


@pytest.mark.parametrize("kind", [REQUEST, RESPONSE, TRAILERS])
def test_every_byte_in_a_name_and_a_value_as_h2(kind: int) -> None:
    """Each of the 256 bytes at the start, in the middle and at the end of a field name and
    of a value: the character classes' edges (``@``/``A``, ``Z``/``[``, ``:``, DEL, ...)
    taken or refused as h2 does."""
    base = {REQUEST: _GET, RESPONSE: [(b":status", b"200")], TRAILERS: []}[kind]
    for byte in (bytes((c,)) for c in range(256)):
        for name in (byte + b"x", b"x" + byte + b"x", b"x" + byte):
            block = [*base, (name, b"v")]
            assert _ours(block, kind) == _h2(block, kind), (kind, name)
        for value in (byte + b"v", b"v" + byte + b"v", b"v" + byte, byte):
            block = [*base, (b"x-a", value)]
            assert _ours(block, kind) == _h2(block, kind), (kind, value)


def _h2_conn(client: bool, checks: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=client,
            header_encoding=None,
            validate_inbound_headers=checks,
            normalize_inbound_headers=checks,
            validate_outbound_headers=checks,
            normalize_outbound_headers=checks,
        )
    )
    conn.initiate_connection()
    return conn


@pytest.mark.parametrize("ours", [False, True], ids=["h2", "sidecar"])
@pytest.mark.parametrize(
    "extra",
    [[(b"X-Upper", b"1")], [(b"connection", b"close")], [(b"x", b" padded")]],
    ids=["uppercase", "connection", "whitespace"],
)
def test_a_refused_block_is_the_connection_error_h2_makes_it(
    ours: bool, extra: list[Header]
) -> None:
    """Through the connection :class:`~meshstats.proxy.h2.H2Conn` uses, a bad request
    ends the connection as h2's own checks end it: GOAWAY, PROTOCOL_ERROR, last stream 3,
    and the good request before it in the same read is not handed on either."""
    server = _connection(False) if ours else _h2_conn(False, True)
    server.initiate_connection()
    client = _h2_conn(True, False)
    server.receive_data(client.data_to_send())
    server.data_to_send()
    good: list[Header] = [
        (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")
    ]  # fmt: skip
    client.send_headers(1, good, end_stream=True)
    client.send_headers(3, good + extra, end_stream=True)
    with pytest.raises(h2.exceptions.ProtocolError):
        server.receive_data(client.data_to_send())
    events = client.receive_data(server.data_to_send())
    ended = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert len(ended) == 1
    assert ended[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert ended[0].last_stream_id == 3


def test_a_good_block_arrives_as_with_h2() -> None:
    server, client = _connection(False), _h2_conn(True, False)
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    block: list[Header] = [
        (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a"),
        (b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2"), (b"te", b"trailers"),
    ]  # fmt: skip
    client.send_headers(1, block, end_stream=True)
    (request,) = [
        e for e in server.receive_data(client.data_to_send())
        if isinstance(e, h2.events.RequestReceived)
    ]  # fmt: skip
    assert request.headers is not None
    got = [(n, v, getattr(h, "indexable", True)) for h in request.headers for n, v in (h,)]
    assert got == _h2(block, REQUEST)
    assert got[-1] == (b"cookie", b"a=1; b=2", False)


def test_hpack_logs_again_once_its_debug_logging_is_on() -> None:
    """hpack's logger is swapped for a silent one only while it drops debug records;
    turning hpack's debug logging on takes effect from the next connection."""
    logger = logging.getLogger("hpack.hpack")
    level = logger.level
    try:
        logger.setLevel(logging.WARNING)
        _connection(True)
        assert hpack.hpack.log is not logger
        logger.setLevel(logging.DEBUG)
        _connection(True)
        assert hpack.hpack.log is logger
    finally:
        logger.setLevel(level)
        _connection(True)
