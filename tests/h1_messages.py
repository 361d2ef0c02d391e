"""HTTP/1.1 messages for hypothesis: heads mostly well formed, some broken in the ways request
smuggling uses (duplicate and conflicting ``Content-Length``, transfer codings, bad
characters, bare line ends, folded lines), with bodies in any framing, and cut into pieces.

Shared by the codec's oracle tests (test_proxy_h1_codec.py) and the differential tests of
its two backends (test_h1_conn.py).
"""

from __future__ import annotations

from hypothesis import strategies as st

__all__ = [
    "EOL",
    "NICE_VALUE",
    "TOKEN",
    "VALUE",
    "bodies",
    "field_lines",
    "pieces",
    "requests",
    "responses",
]

TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~",
    min_size=1,
    max_size=12,
).map(str.encode)
VALUE = st.binary(max_size=12).filter(lambda v: b"\n" not in v)
NICE_VALUE = st.text("abcdefghij 0123456789,;=/\t", max_size=16).map(str.encode)
EOL = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])


@st.composite
def field_lines(draw: st.DrawFn) -> list[bytes]:
    """Field lines, mostly well formed, some with the framing fields smuggling plays with."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append(
                b"Content-Length: "
                + draw(
                    st.sampled_from(
                        [
                            b"0",
                            b"3",
                            b"5",
                            b"5, 5",
                            b"5,6",
                            b"+5",
                            b"-1",
                            b"",
                            b"0x5",
                            b" 7 ",
                            b"1" * 21,
                        ]
                    )
                )
            )
        elif kind == 1:
            lines.append(
                b"Transfer-Encoding: "
                + draw(
                    st.sampled_from(
                        [
                            b"chunked",
                            b"Chunked",
                            b"gzip, chunked",
                            b"chunked, gzip",
                            b"identity",
                            b"",
                        ]
                    )
                )
            )
        elif kind == 2:
            lines.append(
                draw(
                    st.sampled_from(
                        [
                            b"Connection: close",
                            b"connection: keep-alive",
                            b"Expect: 100-continue",
                            b"Upgrade: websocket",
                            b"Host: other",
                            b"Host:",
                            b"Host: a,b",
                        ]
                    )
                )
            )
        elif kind == 3:  # anything at all in a value
            lines.append(draw(TOKEN) + b":" + draw(VALUE))
        elif kind == 4:  # a folded line, a line without a colon, whitespace before the colon
            lines.append(draw(st.sampled_from([b" folded", b"\tfolded", b"nocolon", b"Name : v"])))
        else:
            lines.append(
                draw(TOKEN) + b":" + draw(st.sampled_from([b"", b" ", b"\t"])) + draw(NICE_VALUE)
            )
    return lines


@st.composite
def bodies(draw: st.DrawFn, framing: str) -> bytes:
    if framing == "chunked":
        out = b""
        for _ in range(draw(st.integers(0, 3))):
            data = draw(st.binary(min_size=1, max_size=9))
            size = b"%x" % len(data)
            size = draw(st.sampled_from([size, size.upper(), size + b";ext=1", size + b" "]))
            out += size + b"\r\n" + data + draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"xx"]))
        out += b"0\r\n"
        for _ in range(draw(st.integers(0, 2))):
            out += draw(TOKEN) + b": " + draw(NICE_VALUE) + b"\r\n"
        return out + b"\r\n"
    return draw(st.binary(max_size=12))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"get", b"G T"]))
    target = draw(st.sampled_from([b"/", b"/reviews/0?x=1", b"*", b"/a b", b"/\x7f", b""]))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1"]))
    eol = draw(EOL)
    lines = [method + b" " + target + b" " + version]
    if draw(st.booleans()):
        lines.append(b"Host: reviews:9080")
    lines += draw(field_lines())
    head = eol.join(lines) + eol + draw(EOL)
    framing = "chunked" if any(b"chunked" in line.lower() for line in lines) else "length"
    body: bytes = draw(bodies(framing))
    after: bytes = draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n"]))  # pipelined
    return head + body + after


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(
        st.sampled_from(
            [
                b"200 OK",
                b"204 No Content",
                b"304 x",
                b"404",
                b"100 Continue",
                b"101 Switching",
                b"503 Service Unavailable",
                b"99 x",
                b"200 \xff\xfe",
            ]
        )
    )
    version = draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/1.1x"]))
    eol = draw(EOL)
    lines = [version + b" " + status, *draw(field_lines())]
    head = eol.join(lines) + eol + draw(EOL)
    framing = "chunked" if any(b"chunked" in line.lower() for line in lines) else "length"
    body: bytes = draw(bodies(framing))
    return head + body


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [p for p in out if p]
