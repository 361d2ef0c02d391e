"""HTTP/1.1 heads split into fields and checked, compiled; the same API as ``_h1_head_py``.

>>> parse_head(b"GET /ratings HTTP/1.1\\r\\nHost: ratings\\r\\n\\r\\n", True)
(b'GET', b'/ratings', b'1.1', [(b'Host', b'ratings')], [(b'host', b'ratings')], {b'host': [0]})

The grammar is checked and the head split by ``_core/h1_head.c``; this glue only builds the
lists. Compiled because the pure twin's regular expression over every byte of the field
section, and the split of each line, were the largest part of the codec's cost per request.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

__all__ = ["NOTED", "note_fields", "parse_fields", "parse_head", "write_fields"]


cdef extern from "h1_head.h" nogil:
    ctypedef enum h1_status:
        H1_OK
        H1_BAD_FIELD_LINE
        H1_BAD_START_LINE
        H1_TOO_MANY_FIELDS
        H1_BAD_HEAD

    ctypedef struct h1_range:
        size_t at
        size_t len

    ctypedef struct h1_field:
        h1_range name
        h1_range value

    ctypedef struct h1_head:
        h1_range part[3]
        size_t fields
        h1_range start_line
        h1_range field_section

    size_t h1_max_fields(const uint8_t *head, size_t len)
    h1_status h1_parse_fields(const uint8_t *buf, size_t at, size_t end, h1_field *fields,
                              size_t max_fields, size_t *count)
    h1_status h1_parse_head(const uint8_t *head, size_t len, int request, h1_head *out,
                            h1_field *fields, size_t max_fields)


cdef bytes _HOST = b"host"
cdef bytes _EXPECT = b"expect"
cdef bytes _UPGRADE = b"upgrade"
cdef bytes _CONNECTION = b"connection"
cdef bytes _CONTENT_LENGTH = b"content-length"
cdef bytes _TRANSFER_ENCODING = b"transfer-encoding"

#: Fields the codec itself reads: where they are is noted while the section is split.
NOTED = frozenset({_CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _UPGRADE, _EXPECT, _HOST})

cdef enum:
    _ON_STACK = 64  # heads with up to this many lines are split without a malloc


cdef inline object _noted(const char *lname, size_t n):
    """The NOTED name ``lname`` is (the shared object), or None."""
    cdef bytes known
    if n == 4:
        known = _HOST
    elif n == 6:
        known = _EXPECT
    elif n == 7:
        known = _UPGRADE
    elif n == 10:
        known = _CONNECTION
    elif n == 14:
        known = _CONTENT_LENGTH
    elif n == 17:
        known = _TRANSFER_ENCODING
    else:
        return None
    if memcmp(PyBytes_AS_STRING(known), lname, n) == 0:
        return known
    return None


cdef inline bytes _slice(const char *buf, h1_range r):
    return PyBytes_FromStringAndSize(buf + r.at, r.len)


cdef inline bytes _lowercase(bytes name):
    """``name.lower()``, or ``name`` itself when it has no capital."""
    cdef const char *text = PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name), j
    cdef char *out
    for j in range(n):
        if 65 <= text[j] <= 90:
            break
    else:
        return name
    lowered = PyBytes_FromStringAndSize(NULL, n)
    out = PyBytes_AS_STRING(lowered)
    for j in range(n):
        out[j] = text[j] + 32 if 65 <= text[j] <= 90 else text[j]
    return lowered


cdef inline bytes _note(dict noted, bytes lname, Py_ssize_t i):
    """Note field ``i`` when ``lname`` is a NOTED name; the name to keep (NOTED's own object
    for those)."""
    known = _noted(PyBytes_AS_STRING(lname), <size_t>PyBytes_GET_SIZE(lname))
    if known is None:
        return lname
    if known in noted:
        (<list>noted[known]).append(i)
    else:
        noted[known] = [i]
    return <bytes>known


cdef tuple _split(const char *buf, h1_field *fields, size_t count):
    """``(raw, lower, noted)`` of ``count`` parsed fields of ``buf``."""
    cdef list raw = []
    cdef list lower = []
    cdef dict noted = {}
    cdef size_t i
    cdef bytes raw_name, value
    for i in range(count):
        raw_name = _slice(buf, fields[i].name)
        value = _slice(buf, fields[i].value)
        raw.append((raw_name, value))
        lower.append((_note(noted, _lowercase(raw_name), i), value))
    return raw, lower, noted


cdef h1_field *_field_array(
    const char *buf, size_t size, h1_field *on_stack, size_t *room
) except NULL:
    """Room for every field line ``buf`` can hold: ``on_stack``, or an array to ``free``."""
    room[0] = h1_max_fields(<const uint8_t *>buf, size)
    if room[0] <= _ON_STACK:
        return on_stack
    cdef h1_field *fields = <h1_field *>malloc(room[0] * sizeof(h1_field))
    if fields == NULL:
        raise MemoryError()
    return fields


def parse_fields(bytes block not None):
    """The raw and lowercased fields of a field section (its lines, each with its line end),
    and where the :data:`NOTED` ones are (lowercase name: indices)."""
    cdef const char *buf = PyBytes_AS_STRING(block)
    cdef size_t size = <size_t>PyBytes_GET_SIZE(block)
    cdef h1_field on_stack[_ON_STACK]
    cdef size_t room
    cdef size_t count = 0
    cdef h1_status status
    cdef h1_field *fields = _field_array(buf, size, on_stack, &room)
    try:
        status = h1_parse_fields(<const uint8_t *>buf, 0, size, fields, room, &count)
        if status != H1_OK:
            raise ValueError(f"illegal header line in {block[:256]!r}")
        return _split(buf, fields, count)
    finally:
        if fields != on_stack:
            free(fields)


def parse_head(bytes head not None, bint request):
    """A complete head (up to and with its blank line) as ``(method, target, version, raw,
    lower, noted)`` for a request, ``(version, status, reason, ...)`` for a response (the
    reason ``b""`` when it has none); the field section is checked before the start line."""
    cdef const char *buf = PyBytes_AS_STRING(head)
    cdef size_t size = <size_t>PyBytes_GET_SIZE(head)
    cdef h1_field on_stack[_ON_STACK]
    cdef size_t room
    cdef h1_head parsed
    cdef h1_status status
    cdef const char *digits
    cdef h1_field *fields = _field_array(buf, size, on_stack, &room)
    try:
        status = h1_parse_head(<const uint8_t *>buf, size, request, &parsed, fields, room)
        if status == H1_BAD_HEAD:
            raise ValueError(f"not a complete head: {head[:256]!r}")
        if status == H1_BAD_START_LINE:
            line = _slice(buf, parsed.start_line)
            kind = "request" if request else "status"
            raise ValueError(f"illegal {kind} line: {line[:256]!r}")
        if status != H1_OK:
            section = _slice(buf, parsed.field_section)
            raise ValueError(f"illegal header line in {section[:256]!r}")
        raw, lower, noted = _split(buf, fields, parsed.fields)
        if request:
            return (
                _slice(buf, parsed.part[0]), _slice(buf, parsed.part[1]),
                _slice(buf, parsed.part[2]), raw, lower, noted,
            )
        digits = buf + parsed.part[1].at
        status_code = (digits[0] - 48) * 100 + (digits[1] - 48) * 10 + (digits[2] - 48)
        return (
            _slice(buf, parsed.part[0]), status_code, _slice(buf, parsed.part[2]),
            raw, lower, noted,
        )
    finally:
        if fields != on_stack:
            free(fields)


def note_fields(list raw not None):
    """Fields to be sent, lowercased, and where the :data:`NOTED` ones are."""
    cdef list lower = []
    cdef dict noted = {}
    cdef Py_ssize_t i
    for i in range(len(raw)):
        name, value = raw[i]
        lname = _lowercase(name if type(name) is bytes else bytes(name))
        lower.append((_note(noted, lname, i), value))
    return lower, noted


cdef inline bint _is_host(bytes name):
    cdef const char *text = PyBytes_AS_STRING(name)
    return (
        PyBytes_GET_SIZE(name) == 4 and (text[0] | 32) == 104 and (text[1] | 32) == 111
        and (text[2] | 32) == 115 and (text[3] | 32) == 116
    )  # h, o, s, t in either case


cdef inline char *_put(char *out, bytes name, bytes value):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name), m = PyBytes_GET_SIZE(value)
    memcpy(out, PyBytes_AS_STRING(name), n)
    out[n] = 58  # ":"
    out[n + 1] = 32
    memcpy(out + n + 2, PyBytes_AS_STRING(value), m)
    out[n + 2 + m] = 13
    out[n + 3 + m] = 10
    return out + n + 4 + m


def write_fields(list raw not None):
    """A field section on the wire, ``Host`` first (as h11 writes it), and its blank line."""
    cdef Py_ssize_t size = 2, i
    cdef list names = [], values = []
    cdef bytes name, value
    for i in range(len(raw)):
        item_name, item_value = raw[i]
        name = item_name if type(item_name) is bytes else bytes(item_name)
        value = item_value if type(item_value) is bytes else bytes(item_value)
        names.append(name)
        values.append(value)
        size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
    wire = PyBytes_FromStringAndSize(NULL, size)
    cdef char *out = PyBytes_AS_STRING(wire)
    for i in range(len(names)):
        if _is_host(<bytes>names[i]):
            out = _put(out, <bytes>names[i], <bytes>values[i])
    for i in range(len(names)):
        if not _is_host(<bytes>names[i]):
            out = _put(out, <bytes>names[i], <bytes>values[i])
    out[0] = 13
    out[1] = 10
    return wire
