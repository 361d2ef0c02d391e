"""RFC 9113's header rules (§8.2, §8.3) for a received header block, in one pass.

The sidecar is where a peer's HTTP/2 is checked before it reaches the app (or the client),
so a received block must be refused exactly as the ``h2`` library refuses it with
``validate_inbound_headers`` and ``normalize_inbound_headers`` on: the same blocks pass,
the same blocks fail, and what passes comes out the same (split ``cookie`` fields joined
into one never-indexed field at the end, RFC 9113 §8.2.3). ``h2`` does this with a chain of
eight generators per block, a good part of a relayed stream's cost; :func:`checked` walks
the block once. ``tests/test_proxy_h2_rules.py`` holds it to ``h2``'s own pipeline.

>>> block = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
...          (b":authority", b"a"), (b"cookie", b"x=1"), (b"accept", b"*/*"),
...          (b"cookie", b"y=2")]
>>> checked(block, REQUEST)[-2:]
[(b'accept', b'*/*'), (b'cookie', b'x=1; y=2')]
>>> checked([(b":status", b"200"), (b"Server", b"x")], RESPONSE)
Traceback (most recent call last):
...
h2.exceptions.ProtocolError: header name b'Server' is not allowed
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import h2.exceptions
from hpack import NeverIndexedHeaderTuple

__all__ = ["REQUEST", "RESPONSE", "TRAILERS", "checked"]

#: What a header block is, which decides the pseudo-header rules that apply to it.
REQUEST: Final = 0
RESPONSE: Final = 1  # final and informational (1xx) alike
TRAILERS: Final = 2

Header = tuple[bytes, bytes]

# A field name is visible ASCII without upper case (§8.2.1: not 0x00-0x20, 0x41-0x5a,
# 0x7f-0xff) and, but for a pseudo-header's leading one, without a colon; it is not empty.
_REGULAR_NAME = re.compile(rb"[!-9;-@\[-~]+")
# A field value holds no NUL, LF or CR, and neither starts nor ends with SP or HTAB.
_FORBIDDEN = re.compile(rb"[\x00\n\r]")
_BLANK = frozenset(b" \t")
# Names already found well-formed: a mesh's blocks repeat the same few dozen, and the
# expression was most of a short field's check. Bounded in count and length, so a peer
# sending ever new names only keeps them on the slower path.
_GOOD_NAMES: set[bytes] = set()
_GOOD_NAMES_KEPT = 512
_GOOD_NAME_LONGEST = 64
# Hop-by-hop fields, meaningless in HTTP/2 (§8.2.2); ``te`` is checked on its own.
_CONNECTION = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade")
)
_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":status", b":protocol"))
_REQUEST_ONLY = frozenset((b":scheme", b":path", b":authority", b":method", b":protocol"))


def _refuse(why: str) -> h2.exceptions.ProtocolError:
    # The message is for logs only: the peer sees a GOAWAY with PROTOCOL_ERROR either way.
    return h2.exceptions.ProtocolError(why)


def checked(headers: Sequence[Header], kind: int) -> list[Header]:
    """``headers``, a decoded block of the given ``kind``, as ``h2`` would hand it on;
    ``h2.exceptions.ProtocolError`` if ``h2`` would refuse it.

    Raises
    ------
    h2.exceptions.ProtocolError
        A field name or value with a forbidden character, a connection-specific field, a
        ``te`` other than ``trailers``, a pseudo-header that is unknown, repeated, after a
        regular field, in trailers or of the other side (request/response), a required one
        missing, an empty ``:path``, or ``:authority``/``host`` missing, repeated or
        disagreeing (requests).
    """
    pseudo: set[bytes] = set()
    regular = False  # a regular field was seen: no pseudo-header may follow
    method: bytes | None = None
    authority: bytes | None = None
    host: bytes | None = None
    cookies: list[bytes] | None = None
    # The forbidden bytes, in every value at once: three memchr scans of the joined values
    # (an expression per value cost ~38 ns a byte, and the peer metadata puts hundreds of
    # bytes in every block of the mesh). Only the ends are left to check per value.
    values = b"".join([header[1] for header in headers])
    if b"\n" in values or b"\r" in values or b"\x00" in values:
        raise _refuse(f"a header value in {_first_bad(headers)!r} is not allowed")
    for header in headers:
        name, value = header
        if name == b"cookie":
            # h2 moves split cookie fields to the end, joined, before it checks anything:
            # so they do not count as a regular field before a pseudo-header, and only
            # the joined value is checked.
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
            continue
        if value and (value[0] in _BLANK or value[-1] in _BLANK):
            raise _refuse(f"header value {value!r} of {name!r} is not allowed")
        if name[:1] == b":":
            if name not in _PSEUDO or name in pseudo or regular:
                raise _refuse(f"pseudo-header {name!r} is not allowed here")
            pseudo.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value and kind == REQUEST:
                raise _refuse("an empty :path")
            continue
        regular = True
        if name not in _GOOD_NAMES:
            if _REGULAR_NAME.fullmatch(name) is None:
                raise _refuse(f"header name {name!r} is not allowed")
            if len(_GOOD_NAMES) < _GOOD_NAMES_KEPT and len(name) <= _GOOD_NAME_LONGEST:
                _GOOD_NAMES.add(name)
        if name in _CONNECTION:
            raise _refuse(f"connection-specific header {name!r}")
        if name == b"te":
            if value.lower() != b"trailers":
                raise _refuse(f"te: {value!r}")
        elif name == b"host" and kind == REQUEST:
            if host is not None:
                raise _refuse("more than one host header")
            host = value
    if cookies is not None:
        joined = b"; ".join(cookies)
        if joined and (joined[0] in _BLANK or joined[-1] in _BLANK):
            raise _refuse(f"cookie {joined!r} is not allowed")
    if kind == TRAILERS:
        if pseudo:
            raise _refuse("a pseudo-header in trailers")
    elif kind == RESPONSE:
        if b":status" not in pseudo or not pseudo.isdisjoint(_REQUEST_ONLY):
            raise _refuse(f"response pseudo-headers {sorted(pseudo)}")
    else:
        _check_request(pseudo, method, authority, host)
    if cookies is None:
        # h2's decoder hands on hpack's tuples: kept as they are (never-indexed stays so).
        return headers if isinstance(headers, list) else list(headers)
    out = [header for header in headers if header[0] != b"cookie"]
    out.append(NeverIndexedHeaderTuple(b"cookie", joined))
    return out


def _first_bad(headers: Sequence[Header]) -> Header | None:
    """The field a refused block is refused for (for the log)."""
    return next((header for header in headers if _FORBIDDEN.search(header[1])), None)


def _check_request(
    pseudo: set[bytes], method: bytes | None, authority: bytes | None, host: bytes | None
) -> None:
    """A request's pseudo-headers (RFC 9113 §8.3.1, RFC 8441 §4 for ``:protocol``) and
    its ``:authority``/``host`` (h2's rule: at least one, equal when both)."""
    if b":method" not in pseudo:
        raise _refuse("a request without :method")
    connect = method == b"CONNECT"
    if connect and b":protocol" not in pseudo:  # ordinary CONNECT
        if b":scheme" in pseudo or b":path" in pseudo:
            raise _refuse("CONNECT with :scheme or :path")
    elif b":scheme" not in pseudo or b":path" not in pseudo:
        raise _refuse("a request without :scheme or :path")
    if b":status" in pseudo:
        raise _refuse("a request with :status")
    if not connect and b":protocol" in pseudo:
        raise _refuse(":protocol outside CONNECT")
    if authority is None and host is None:
        raise _refuse("a request without :authority or host")
    if authority is not None and host is not None and authority != host:
        raise _refuse(":authority and host disagree")
