r"""HTTP/1.1 heads split into fields and checked, in Python; the same API as ``_h1_head_c``.

>>> parse_head(b"GET /ratings HTTP/1.1\r\nHost: ratings\r\n\r\n", True)
(b'GET', b'/ratings', b'1.1', [(b'Host', b'ratings')], [(b'host', b'ratings')], {b'host': [0]})
>>> parse_head(b"HTTP/1.1 404 Not Found\r\n\r\n", False)
(b'1.1', 404, b'Not Found', [], [], {})

For what the relay sends, :func:`note_fields` and :func:`write_fields` (not checked: every
field sent was parsed here or built by the sidecar):

>>> note_fields([(b"Host", b"a"), (b"X-Y", b"b")])
([(b'host', b'a'), (b'x-y', b'b')], {b'host': [0]})
>>> write_fields([(b"X-Y", b"b"), (b"Host", b"a")])
b'Host: a\r\nX-Y: b\r\n\r\n'

The grammar is RFC 9112's as h11 reads it (``_core/h1_head.h`` spells it out); the
meaning (framing, keep-alive, ``Host``) is the codec's, in ``proxy/h1.py``. What does not
parse raises ``ValueError`` with the message the codec gives its ``RemoteProtocolError``.
"""

from __future__ import annotations

import re

__all__ = ["NOTED", "note_fields", "parse_fields", "parse_head", "write_fields"]

HeaderList = list[tuple[bytes, bytes]]
Noted = dict[bytes, list[int]]

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VCHAR_OBS = rb"[^\x00\s]"  # a visible character or obs-text
_FIELD_VALUE = rb"(?:%s+(?:[ \t]+%s+)*)?" % (_VCHAR_OBS, _VCHAR_OBS)
_FIELD_LINE = rb"%s:[ \t]*%s[ \t]*" % (_TOKEN, _FIELD_VALUE)
# A whole field section (each line ending in LF or CRLF), checked by one regex call.
_FIELDS = re.compile(rb"(?:%s\r?\n)*" % _FIELD_LINE)
_REQUEST_LINE = re.compile(rb"(%s) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])" % _TOKEN)
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|%s)*))?" % _VCHAR_OBS)

#: Fields the codec itself reads: where they are is noted while the section is split.
NOTED = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect", b"host"}
)


def parse_fields(block: bytes) -> tuple[HeaderList, HeaderList, Noted]:
    """The raw and lowercased fields of a field section (its lines, each with its line end),
    and where the :data:`NOTED` ones are (lowercase name: indices)."""
    if _FIELDS.fullmatch(block) is None:
        raise ValueError(f"illegal header line in {block[:256]!r}")
    raw: HeaderList = []
    lower: HeaderList = []
    noted: Noted = {}
    for i, line in enumerate(block.split(b"\n")[:-1]):
        name, _, value = line.partition(b":")
        value = value.strip(b" \t\r")
        lname = name.lower()
        raw.append((name, value))
        lower.append((lname, value))
        if lname in NOTED:
            if lname in noted:
                noted[lname].append(i)
            else:
                noted[lname] = [i]
    return raw, lower, noted


def parse_head(
    head: bytes, request: bool
) -> tuple[bytes, bytes | int, bytes, HeaderList, HeaderList, Noted]:
    """A complete head (up to and with its blank line) as ``(method, target, version, raw,
    lower, noted)`` for a request, ``(version, status, reason, ...)`` for a response (the
    reason ``b""`` when it has none); the field section is checked before the start line."""
    if not (head.endswith(b"\n\n") or head.endswith(b"\n\r\n")):
        raise ValueError(f"not a complete head: {head[:256]!r}")
    first_end = head.find(b"\n")
    first = head[:first_end]
    if first.endswith(b"\r"):
        first = first[:-1]
    # The field lines, each with its line end (the blank line's is left out).
    raw, lower, noted = parse_fields(head[first_end + 1 : -1 if head.endswith(b"\n\n") else -2])
    if request:
        match = _REQUEST_LINE.fullmatch(first)
        if match is None:
            raise ValueError(f"illegal request line: {first[:256]!r}")
        method, target, version = match.group(1, 2, 3)
        return method, target, version, raw, lower, noted
    match = _STATUS_LINE.fullmatch(first)
    if match is None:
        raise ValueError(f"illegal status line: {first[:256]!r}")
    version, code_digits, reason = match.group(1, 2, 3)
    return version, int(code_digits), reason or b"", raw, lower, noted


def note_fields(raw: HeaderList) -> tuple[HeaderList, Noted]:
    """Fields to be sent, lowercased, and where the :data:`NOTED` ones are."""
    lower = [(name.lower(), value) for name, value in raw]
    noted: Noted = {}
    for i, (name, _) in enumerate(lower):
        if name in NOTED:
            noted.setdefault(name, []).append(i)
    return lower, noted


def write_fields(raw: HeaderList) -> bytes:
    """A field section on the wire, ``Host`` first (as h11 writes it), and its blank line."""
    first = []
    rest = []
    for name, value in raw:
        if len(name) == 4 and name.lower() == b"host":
            first.append(b"%s: %s\r\n" % (name, value))
        else:
            rest.append(b"%s: %s\r\n" % (name, value))
    if first:
        rest = first + rest
    rest.append(b"\r\n")
    return b"".join(rest)
