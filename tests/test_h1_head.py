"""The HTTP/1.1 head parser's two backends (``meshstats._h1_head``) held to each other.

The compiled one checks the grammar in C (``_core/h1_head.c``); the pure one with the regular
expressions the codec had. Whatever the bytes, both must give the same parts, the same
fields (names as received and lowercased, values, order), the same notes of the fields the
codec reads, or the same refusal with the same message. tests/test_proxy_h1_codec.py holds
each to h11 through the codec.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from conftest import Backend
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("MESHSTATS_H1_HEAD_EXAMPLES", "1500"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Pieces a head is made of, the ones its grammar turns on among them.
PIECES = st.sampled_from(
    [
        b"GET", b"get", b"POST", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.x", b"200",
        b"99", b"1000", b" ", b"  ", b"\t", b"/", b"/a?b=c", b"*", b"\x7f", b"\x80", b"\xff",
        b"\x00", b"\x01", b"\x0b", b"\x0c", b"\r", b"\n", b"\r\n", b":", b"Host", b"host",
        b"Content-Length", b"TRANSFER-ENCODING", b"Connection", b"Upgrade", b"Expect",
        b"X-Envoy-Peer-Metadata", b"x(y)", b"a b", b"5", b"close", b"chunked", b"OK",
    ]
)  # fmt: skip
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FIELD_LINES = st.builds(
    lambda name, value: name.encode() + b":" + value,
    st.text(TCHAR, min_size=1, max_size=20),
    st.binary(max_size=30).map(lambda v: bytes(c for c in v if c not in b"\0\n\v\f\r")),
)
ENDS = st.sampled_from([b"\r\n\r\n", b"\n\n", b"\n\r\n", b"\r\n", b"\n", b""])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """A start line and field lines, each made of pieces or of any bytes, and an end."""
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.integers(0, 4)) == 0:
            lines.append(draw(st.binary(max_size=20)))
        else:
            lines.append(b"".join(draw(st.lists(PIECES, max_size=6))))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    return eol.join(lines) + draw(ENDS)


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A head that parses, for a request or a response."""
    request = draw(st.booleans())
    if request:
        start = b"%s %s HTTP/1.%d" % (
            draw(st.sampled_from([b"GET", b"POST", b"M-SEARCH", b"get"])),
            draw(st.sampled_from([b"/", b"/reviews/0?x=1", b"*", b"http://a/b"])),
            draw(st.integers(0, 1)),
        )
    else:
        start = b"HTTP/1.1 %d" % draw(st.integers(100, 599)) + draw(
            st.sampled_from([b"", b" ", b" OK", b" Not \t Found ", b" \xff\x01"])
        )
    # Sometimes more lines than the compiled parser keeps on its stack (64).
    fields = draw(st.lists(FIELD_LINES, max_size=draw(st.sampled_from([6, 6, 6, 70]))))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    return eol.join([start, *fields]) + eol + draw(st.sampled_from([b"\r\n", b"\n"])), request


def outcome(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except ValueError as exc:
        return ("refused", str(exc))


@pytest.mark.c_extension
@SETTINGS
@given(heads(), st.booleans())
@example(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True)
@example(b"HTTP/1.1 200\r\n\r\n", False)
@example(b"HTTP/1.1 200 \r\n\r\n", False)
@example(b"GET / HTTP/1.1\r\n\r\n", True)
@example(b"GET / HTTP/1.1\n\r\n", True)
@example(b"GET / HTTP/1.1\r\r\n\r\n", True)
@example(b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", True)
@example(b"GET / HTTP/1.1\r\nA:\x00\r\n\r\n", True)
@example(b"GET / HTTP/1.1\r\n folded\r\n\r\n", True)
@example(b"GET / HTTP/1.1\r\nA : b\r\n\r\n", True)
@example(b"GET  / HTTP/1.1\r\n\r\n", True)
@example(b"HTTP/1.1 200 OK\r\nA: \t v \t \r\n\r\n", False)
def test_the_backends_agree_on_any_head(
    c_backend: Backend, py_backend: Backend, head: bytes, request: bool
) -> None:
    ours = outcome(c_backend.h1_head.parse_head, head, request)
    assert ours == outcome(py_backend.h1_head.parse_head, head, request)
    # The same bytes as a trailer section (no start line).
    section = head.rstrip(b"\r\n") + b"\n" if head.strip() else b""
    fields = outcome(c_backend.h1_head.parse_fields, section)
    assert fields == outcome(py_backend.h1_head.parse_fields, section)


@pytest.mark.c_extension
@SETTINGS
@given(well_formed())
def test_the_backends_agree_on_heads_that_parse(
    c_backend: Backend, py_backend: Backend, case: tuple[bytes, bool]
) -> None:
    head, request = case
    ours = c_backend.h1_head.parse_head(head, request)
    assert ours == py_backend.h1_head.parse_head(head, request)


FIELDS_TO_SEND = st.lists(
    st.tuples(
        st.sampled_from([b"Host", b"HOST", b"host", b"hosts", b"Content-Length", b"UPGRADE",
                         b"Connection", b"expect", b"Transfer-Encoding", b"X-Y", b"ho\xd3t"]),
        st.binary(max_size=12),
    ),
    max_size=10,
)  # fmt: skip


@pytest.mark.c_extension
@SETTINGS
@given(FIELDS_TO_SEND)
def test_the_backends_note_and_write_fields_alike(
    c_backend: Backend, py_backend: Backend, raw: list[tuple[bytes, bytes]]
) -> None:
    assert c_backend.h1_head.note_fields(raw) == py_backend.h1_head.note_fields(raw)
    assert c_backend.h1_head.write_fields(raw) == py_backend.h1_head.write_fields(raw)


def test_fields_to_send_are_written_host_first(backend: Backend) -> None:
    raw = [(b"X-Y", b"1"), (b"Host", b"a"), (b"connection", b"close"), (b"HOST", b"b")]
    assert backend.h1_head.write_fields(raw) == (
        b"Host: a\r\nHOST: b\r\nX-Y: 1\r\nconnection: close\r\n\r\n"
    )
    assert backend.h1_head.write_fields([]) == b"\r\n"
    lower, noted = backend.h1_head.note_fields(raw)
    assert lower == [(b"x-y", b"1"), (b"host", b"a"), (b"connection", b"close"), (b"host", b"b")]
    assert noted == {b"host": [1, 3], b"connection": [2]}


def test_a_head_splits_into_its_parts(backend: Backend) -> None:
    head = (
        b"POST /reviews/0?x=1 HTTP/1.1\r\nHost: reviews:9080\r\nX-Trace:  a  b \t\r\n"
        b"content-length: 5\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
        b"Empty:\r\nhost: second\r\n\r\n"
    )
    method, target, version, raw, lower, noted = backend.h1_head.parse_head(head, True)
    assert (method, target, version) == (b"POST", b"/reviews/0?x=1", b"1.1")
    assert raw == [
        (b"Host", b"reviews:9080"),
        (b"X-Trace", b"a  b"),
        (b"content-length", b"5"),
        (b"Connection", b"keep-alive, Upgrade"),
        (b"Upgrade", b"websocket"),
        (b"Empty", b""),
        (b"host", b"second"),
    ]
    assert lower == [(name.lower(), value) for name, value in raw]
    assert noted == {
        b"host": [0, 6],
        b"content-length": [2],
        b"connection": [3],
        b"upgrade": [4],
    }
    assert set(noted) <= backend.h1_head.NOTED


def test_a_status_line_gives_its_code_and_reason(backend: Backend) -> None:
    parse = backend.h1_head.parse_head
    assert parse(b"HTTP/1.0 503 Service Unavailable\r\n\r\n", False)[:3] == (
        b"1.0",
        503,
        b"Service Unavailable",
    )
    assert parse(b"HTTP/1.1 204\n\n", False)[:3] == (b"1.1", 204, b"")


@pytest.mark.parametrize(
    ("head", "request_", "message"),
    [
        (b"GET / HTTP/1.1\r\nA b: c\r\n\r\n", True, "illegal header line in b'A b: c\\r\\n'"),
        (b"GET / HTTP/1.1\r\nA: b\x00\r\n\r\n", True, "illegal header line"),
        (b"GET / HTTP/1.1\r\n folded\r\n\r\n", True, "illegal header line"),
        (b"GET /a b HTTP/1.1\r\n\r\n", True, "illegal request line: b'GET /a b HTTP/1.1'"),
        (b"GET / HTTP/1.1 \r\n\r\n", True, "illegal request line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", False, "illegal status line: b'HTTP/1.1 20 OK'"),
        (b"HTTP/1.1 200 O\rK\r\n\r\n", False, "illegal status line"),
        (b"GET / HTTP/1.1\r\n", True, "not a complete head"),
        # The field section is checked first: a bad line there is what is named.
        (b"BAD LINE\r\nA b\r\n\r\n", True, "illegal header line"),
    ],
)
def test_what_does_not_parse_is_refused_with_what_was_wrong(
    backend: Backend, head: bytes, request_: bool, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        backend.h1_head.parse_head(head, request_)
    assert str(info.value).startswith(message)


def test_a_head_of_many_fields_parses_whole(backend: Backend) -> None:
    # More lines than the compiled parser keeps on its stack (64): its array is allocated.
    lines = [b"X-%d: %d" % (i, i) for i in range(1000)]
    head = b"\r\n".join([b"GET / HTTP/1.1", b"Host: a", *lines]) + b"\r\n\r\n"
    *_, raw, lower, noted = backend.h1_head.parse_head(head, True)
    assert len(raw) == len(lower) == 1001
    assert raw[-1] == (b"X-999", b"999")
    assert noted == {b"host": [0]}
    section = b"".join(line + b"\r\n" for line in lines)
    assert backend.h1_head.parse_fields(section)[0] == raw[1:]
