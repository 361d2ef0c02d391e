"""Pure-Python twin of the peer-exchange codec (``_peer_exchange_c``), same API and results.

>>> from meshstats import _peer_exchange_py as pe
>>> frame = pe.encode_peer_prefix({"NAME": "a", "LABELS": {"app": "ratings"}}, "node-1")
>>> frame[:4].hex()
'3d230467'
>>> ex = pe.decode_peer_prefix(frame + b"GET / HTTP/1.1")
>>> ex.metadata["LABELS"]["app"], ex.metadata_id, ex.consumed == len(frame)
('ratings', 'node-1', True)
>>> pe.decode_peer_header(pe.encode_peer_header({"NAMESPACE": "default"}))
{'NAMESPACE': 'default'}

The wire walker is hand-written (no protobuf dependency) and follows the rules in
``docs/peer_exchange.md`` ("Decisions") to the byte: the same checks in the same order,
so a malformed input gets the same ``PeerExchangeError.reason`` and ``.offset`` as the
compiled backend. Groups (wire types 3 and 4) are rejected as ``bad_wire_type``, not
skipped: protobuf 3 never writes them and skipping them needs a nesting stack.
"""

from __future__ import annotations

import binascii
import operator
import re
import struct
from collections.abc import Mapping
from typing import Final

from . import _messages as msg
from .errors import DecoderFinishedError, PeerExchangeError, PeerMetadataTypeError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DONE",
    "MAGIC",
    "MAX_DEPTH",
    "METADATA_ID_KEY",
    "METADATA_KEY",
    "NEED_MORE",
    "NOT_MESH",
    "TYPE_URL",
    "PeerExchange",
    "PeerPrefixDecoder",
    "decode_peer_header",
    "decode_peer_prefix",
    "encode_peer_header",
    "encode_peer_prefix",
]

MAGIC: Final = 0x3D230467
DEFAULT_MAX_FRAME: Final = 65536
MAX_DEPTH: Final = 64
TYPE_URL: Final = "type.googleapis.com/google.protobuf.Struct"
METADATA_KEY: Final = "x-envoy-peer-metadata"
METADATA_ID_KEY: Final = "x-envoy-peer-metadata-id"
NEED_MORE: Final = "need_more"
DONE: Final = "done"
NOT_MESH: Final = "not_mesh"

_MAGIC_BYTES: Final = MAGIC.to_bytes(4, "big")
_TYPE_URL_BYTES: Final = TYPE_URL.encode("ascii")
_HEADER: Final = struct.Struct(">II")
_DOUBLE: Final = struct.Struct("<d")
_unpack_double = _DOUBLE.unpack_from
_pack_double = _DOUBLE.pack

_WS: Final = " \t\n\r\v\f"
_NOT_B64: Final = re.compile(r"[^A-Za-z0-9+/]")
_NOT_PAD: Final = re.compile(r"[^=]")

# Length varints for short strings and messages are looked up, not computed.
_SMALL_VARINTS: Final = tuple(bytes((n,)) for n in range(128))


def _varint_bytes(n: int) -> bytes:
    if n < 128:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_check_max_size = msg.check_max_size


def _as_bytes_view(data: object, what: str) -> memoryview:
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise msg.not_bytes_like(what, data) from None
    if not view.c_contiguous:
        raise msg.not_contiguous(what)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


# --------------------------------------------------------------------------- decoding
#
# Every walker takes the whole input ``buf`` plus a region [pos, end), so offsets in
# errors are absolute without any rebasing. Errors are raised where they are met,
# walking front to back, which is what makes "the first problem in byte order" hold.


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    start = pos
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise PeerExchangeError("truncated", start)
        b = buf[pos]
        pos += 1
        if shift == 63:
            # The 10th byte may only carry bit 63.
            if b > 1:
                raise PeerExchangeError("bad_varint", start)
            return result | (b << 63), pos
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _tag(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        tag = b
        new_pos = pos + 1
    else:
        tag, new_pos = _varint(buf, pos, end)
    if tag < 8 or tag > 0xFFFFFFFF:
        raise PeerExchangeError("bad_field", pos)
    wire_type = tag & 7
    if wire_type in (3, 4, 6, 7):
        raise PeerExchangeError("bad_wire_type", pos)
    return tag, new_pos


def _length(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a length varint and bounds-check it; return ``(payload_start, payload_end)``."""
    b = buf[pos] if pos < end else 0x80
    if b < 0x80:
        length = b
        start = pos + 1
    else:
        length, start = _varint(buf, pos, end)
    if length > end - start:
        raise PeerExchangeError("truncated", pos)
    return start, start + length


def _skip(buf: bytes, tag: int, pos: int, end: int) -> int:
    wire_type = tag & 7
    if wire_type == 0:
        return _varint(buf, pos, end)[1]
    if wire_type == 2:
        return _length(buf, pos, end)[1]
    size = 8 if wire_type == 1 else 4
    if end - pos < size:
        raise PeerExchangeError("truncated", pos)
    return pos + size


def _string(buf: bytes, start: int, end: int) -> str:
    try:
        return buf[start:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PeerExchangeError("bad_utf8", start + exc.start) from None


def _wrong_wire_type(tag: int, pos: int) -> PeerExchangeError:
    return PeerExchangeError("bad_field", pos)


def _struct(buf: bytes, pos: int, end: int, depth: int) -> dict[str, object]:
    """Decode Struct fields in [pos, end); ``depth`` is this Struct's own depth."""
    out: dict[str, object] = {}
    while pos < end:
        tag_pos = pos
        tag, pos = _tag(buf, pos, end)
        if tag == 0x0A:
            start, pos = _length(buf, pos, end)
            key, value = _entry(buf, start, pos, depth)
            out[key] = value
        elif tag >> 3 == 1:
            raise _wrong_wire_type(tag, tag_pos)
        else:
            pos = _skip(buf, tag, pos, end)
    return out


def _entry(buf: bytes, pos: int, end: int, depth: int) -> tuple[str, object]:
    key = ""
    value: object = None
    while pos < end:
        tag_pos = pos
        tag, pos = _tag(buf, pos, end)
        if tag == 0x0A:
            start, pos = _length(buf, pos, end)
            key = _string(buf, start, pos)
        elif tag == 0x12:
            start, pos = _length(buf, pos, end)
            value = _value(buf, start, pos, depth)
        elif tag >> 3 in (1, 2):
            raise _wrong_wire_type(tag, tag_pos)
        else:
            pos = _skip(buf, tag, pos, end)
    return key, value


def _value(buf: bytes, pos: int, end: int, depth: int) -> object:
    """Decode a Value inside a container at ``depth``; the last kind field wins."""
    result: object = None
    while pos < end:
        tag_pos = pos
        tag, pos = _tag(buf, pos, end)
        if tag == 0x1A:  # string_value, by far the most common
            start, pos = _length(buf, pos, end)
            result = _string(buf, start, pos)
        elif tag == 0x11:  # number_value
            if end - pos < 8:
                raise PeerExchangeError("truncated", pos)
            result = _unpack_double(buf, pos)[0]
            pos += 8
        elif tag == 0x2A or tag == 0x32:  # struct_value, list_value
            start, pos = _length(buf, pos, end)
            if depth >= MAX_DEPTH:
                raise PeerExchangeError("too_deep", tag_pos)
            if tag == 0x2A:
                result = _struct(buf, start, pos, depth + 1)
            else:
                result = _list(buf, start, pos, depth + 1)
        elif tag == 0x20:  # bool_value
            flag, pos = _varint(buf, pos, end)
            result = flag != 0
        elif tag == 0x08:  # null_value: any enum number still means null
            pos = _varint(buf, pos, end)[1]
            result = None
        elif 1 <= tag >> 3 <= 6:
            raise _wrong_wire_type(tag, tag_pos)
        else:
            pos = _skip(buf, tag, pos, end)
    return result


def _list(buf: bytes, pos: int, end: int, depth: int) -> list[object]:
    out: list[object] = []
    while pos < end:
        tag_pos = pos
        tag, pos = _tag(buf, pos, end)
        if tag == 0x0A:
            start, pos = _length(buf, pos, end)
            out.append(_value(buf, start, pos, depth))
        elif tag >> 3 == 1:
            raise _wrong_wire_type(tag, tag_pos)
        else:
            pos = _skip(buf, tag, pos, end)
    return out


def _any(buf: bytes, pos: int, end: int) -> dict[str, object]:
    """Walk the Any in [pos, end), check its type_url, return the outer Struct."""
    any_start = pos
    type_url: tuple[int, int, int] | None = None
    value: tuple[int, int] | None = None
    while pos < end:
        tag_pos = pos
        tag, pos = _tag(buf, pos, end)
        if tag == 0x0A:
            start, pos = _length(buf, pos, end)
            type_url = (tag_pos, start, pos)
        elif tag == 0x12:
            start, pos = _length(buf, pos, end)
            value = (start, pos)
        elif tag >> 3 in (1, 2):
            raise _wrong_wire_type(tag, tag_pos)
        else:
            pos = _skip(buf, tag, pos, end)
    if type_url is None:
        raise PeerExchangeError("wrong_type_url", any_start)
    if buf[type_url[1] : type_url[2]] != _TYPE_URL_BYTES:
        raise PeerExchangeError("wrong_type_url", type_url[0])
    if value is None:
        return {}
    return _struct(buf, value[0], value[1], 1)


class PeerExchange:
    """One decoded TCP prefix: the peer's node metadata, its node id, and the frame size.

    >>> ex = PeerExchange({"NAME": "pod-1"}, "sidecar~10.0.0.1~pod-1.ns~ns.svc.cluster.local", 650)
    >>> ex.metadata["NAME"], ex.consumed
    ('pod-1', 650)
    >>> ex == PeerExchange({"NAME": "pod-1"}, ex.metadata_id, 650)
    True
    """

    __slots__ = ("_metadata", "_metadata_id", "_consumed")
    __hash__ = None  # type: ignore[assignment]

    _metadata: dict[str, object]
    _metadata_id: str | None
    _consumed: int

    def __init__(self, metadata: dict[str, object], metadata_id: str | None, consumed: int) -> None:
        object.__setattr__(self, "_metadata", metadata)
        object.__setattr__(self, "_metadata_id", metadata_id)
        object.__setattr__(self, "_consumed", operator.index(consumed))

    @property
    def metadata(self) -> dict[str, object]:
        """The node metadata Struct (``{}`` when the frame carried none)."""
        return self._metadata

    @property
    def metadata_id(self) -> str | None:
        """The sender's Envoy ``node.id``, or ``None`` when absent."""
        return self._metadata_id

    @property
    def consumed(self) -> int:
        """Bytes of input the frame took: ``8 + N``."""
        return self._consumed

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"PeerExchange is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"PeerExchange is immutable (cannot delete {name!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PeerExchange):
            return NotImplemented
        return (
            self._consumed == other._consumed
            and self._metadata_id == other._metadata_id
            and self._metadata == other._metadata
        )

    def __repr__(self) -> str:
        return (
            f"PeerExchange(metadata={self._metadata!r}, "
            f"metadata_id={self._metadata_id!r}, consumed={self._consumed!r})"
        )


def _prefix(buf: bytes) -> PeerExchange:
    """Decode the body of a frame that passed the framing checks (``buf`` holds 8+N bytes)."""
    frame_len = _HEADER.unpack_from(buf, 0)[1]
    outer = _any(buf, 8, 8 + frame_len)
    metadata = outer.get(METADATA_KEY)
    metadata_id = outer.get(METADATA_ID_KEY)
    return PeerExchange(
        metadata if type(metadata) is dict else {},
        metadata_id if type(metadata_id) is str else None,
        8 + frame_len,
    )


def _frame_check(head: bytes | memoryview, size: int, max_size: int) -> int:
    """Framing checks 1-4 on the first bytes of the input; returns N."""
    for i in range(min(4, len(head))):
        if head[i] != _MAGIC_BYTES[i]:
            raise PeerExchangeError("bad_magic", i)
    if size < 8:
        raise PeerExchangeError("truncated", size)
    frame_len: int = _HEADER.unpack_from(head, 0)[1]
    if frame_len > max_size:
        raise PeerExchangeError("oversize", 4)
    if size < 8 + frame_len:
        raise PeerExchangeError("truncated", size)
    return frame_len


def decode_peer_prefix(
    data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_FRAME
) -> PeerExchange:
    """Decode the peer-exchange frame at the start of ``data``; trailing bytes are left alone.

    >>> frame = encode_peer_prefix({"NAME": "pod-1"})
    >>> ex = decode_peer_prefix(frame + b"payload")
    >>> ex.metadata, ex.metadata_id, ex.consumed == len(frame)
    ({'NAME': 'pod-1'}, None, True)
    >>> try:
    ...     decode_peer_prefix(b"GET / HTTP/1.1\\r\\n")
    ... except PeerExchangeError as exc:
    ...     exc.reason, exc.offset
    ('bad_magic', 0)

    Raises ``PeerExchangeError`` (a ``ValueError``) with ``.reason`` and ``.offset``.
    """
    limit = _check_max_size(max_size)
    if type(data) is bytes:
        _frame_check(data, len(data), limit)
        return _prefix(data)
    view = _as_bytes_view(data, "data")
    frame_len = _frame_check(view[:8], len(view), limit)
    # Copy only the frame: the caller's buffer may hold megabytes of payload after it.
    return _prefix(view[: 8 + frame_len].tobytes())


def decode_peer_header(
    value: str | bytes, *, max_size: int = DEFAULT_MAX_FRAME
) -> dict[str, object]:
    """Decode an ``x-envoy-peer-metadata`` header value (base64 of the node Struct).

    >>> decode_peer_header(" Cg8KBE5BTUUSBxoFcG9kLTE ")  # unpadded, whitespace around
    {'NAME': 'pod-1'}
    >>> decode_peer_header("Cg8KBE5BTUUSBxoFcG9k-TE=")
    Traceback (most recent call last):
    ...
    meshstats.errors.PeerExchangeError: bad_base64 at byte 20: not standard base64

    Standard base64, padded or not, surrounding ASCII whitespace ignored; urlsafe
    ``-``/``_`` are invalid characters. Base64 errors give the character offset in
    ``value``, Struct errors the byte offset in the decoded bytes.
    """
    limit = _check_max_size(max_size)
    if isinstance(value, str):
        text = value
    elif isinstance(value, (bytes, bytearray)):
        # latin-1 maps byte i to character i, so offsets stay byte offsets and every
        # non-ASCII byte becomes a character outside the alphabet.
        text = bytes(value).decode("latin-1")
    else:
        raise msg.value_not_text(value)
    stripped = text.strip(_WS)
    lead = len(text) - len(text.lstrip(_WS)) if stripped else 0
    data_len = len(stripped.rstrip("="))
    if data_len * 3 // 4 > limit:
        raise PeerExchangeError("oversize", 0)
    bad = _NOT_B64.search(stripped)
    if bad is not None:
        i = bad.start()
        if stripped[i] != "=":
            raise PeerExchangeError("bad_base64", lead + i)
        after = _NOT_PAD.search(stripped, i)
        if after is not None:
            j = after.start()
            raise PeerExchangeError("bad_base64", lead + j)
        pads = len(stripped) - i
        if pads > 2 or i % 4 + pads != 4:
            raise PeerExchangeError("bad_base64", lead + i)
    elif data_len % 4 == 1:
        raise PeerExchangeError("bad_base64", lead + data_len - 1)
    core = stripped[:data_len]
    raw = binascii.a2b_base64(core + "=" * (-data_len % 4)) if core else b""
    return _struct(raw, 0, len(raw), 1)


# --------------------------------------------------------------------------- encoding


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PeerMetadataTypeError(msg.not_unicode(text, exc)) from None


def _enc_struct(mapping: Mapping[object, object], depth: int) -> bytes:
    """Serialized fields of a Struct at ``depth`` (entries sorted by key bytes)."""
    if depth > MAX_DEPTH:
        raise PeerMetadataTypeError(msg.too_deep(MAX_DEPTH))
    # Key, then value, in the mapping's own order (as the compiled encoder walks it), so
    # the first of several problems is the same one; sorting comes after.
    entries: dict[bytes, bytes] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise PeerMetadataTypeError(msg.key_not_str(key))
        kb = _utf8(key)  # before the value: `d[f()] = g()` would call g() first
        entries[kb] = _enc_value(value, depth)
    parts = []
    varint = _varint_bytes
    for kb in sorted(entries):
        vb = entries[kb]
        body = b"\x0a" + varint(len(kb)) + kb + b"\x12" + varint(len(vb)) + vb
        parts.append(b"\x0a" + varint(len(body)) + body)
    return b"".join(parts)


def _enc_value(value: object, depth: int) -> bytes:
    """A serialized Value found in a container at ``depth``."""
    kind = type(value)
    if kind is str:
        raw = _utf8(value)  # type: ignore[arg-type]
        return b"\x1a" + _varint_bytes(len(raw)) + raw
    if value is None:
        return b"\x08\x00"
    if kind is bool:
        return b"\x20\x01" if value else b"\x20\x00"
    if kind is float:
        return b"\x11" + _pack_double(value)
    if kind is dict:
        raw = _enc_struct(value, depth + 1)  # type: ignore[arg-type]
        return b"\x2a" + _varint_bytes(len(raw)) + raw
    if kind is int:
        return b"\x11" + _pack_double(_int_to_float(value))  # type: ignore[arg-type]
    if kind is list or kind is tuple:
        raw = _enc_list(value, depth + 1)  # type: ignore[arg-type]
        return b"\x32" + _varint_bytes(len(raw)) + raw
    # Subclasses, in the same precedence as the exact types above.
    if isinstance(value, str):
        return _enc_value(str(value), depth)
    if isinstance(value, float):
        return b"\x11" + _pack_double(float(value))
    if isinstance(value, int):
        return b"\x11" + _pack_double(_int_to_float(value))
    if isinstance(value, Mapping):
        raw = _enc_struct(value, depth + 1)
        return b"\x2a" + _varint_bytes(len(raw)) + raw
    if isinstance(value, (list, tuple)):
        raw = _enc_list(value, depth + 1)
        return b"\x32" + _varint_bytes(len(raw)) + raw
    raise PeerMetadataTypeError(msg.unsupported_value(value))


def _int_to_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        raise PeerMetadataTypeError(msg.int_too_large(value)) from None


def _enc_list(items: list[object] | tuple[object, ...], depth: int) -> bytes:
    if depth > MAX_DEPTH:
        raise PeerMetadataTypeError(msg.too_deep(MAX_DEPTH))
    parts = []
    for item in items:
        vb = _enc_value(item, depth)
        parts.append(b"\x0a" + _varint_bytes(len(vb)) + vb)
    return b"".join(parts)


def _check_metadata(metadata: object) -> Mapping[object, object]:
    if not isinstance(metadata, Mapping):
        raise PeerMetadataTypeError(msg.metadata_not_mapping(metadata))
    return metadata


def encode_peer_prefix(metadata: Mapping[str, object], metadata_id: str | None = None) -> bytes:
    """Build the TCP prefix frame Istio's ``istio.metadata_exchange`` filter writes.

    >>> node_id = "sidecar~10.0.0.1~pod-1.ns~ns.svc.cluster.local"
    >>> frame = encode_peer_prefix({"NAME": "pod-1"}, node_id)
    >>> frame[:4].hex(), int.from_bytes(frame[4:8], "big") == len(frame) - 8
    ('3d230467', True)

    Bytes are identical to C++ protobuf's deterministic serialization (keys sorted by
    their UTF-8 bytes). ``metadata_id`` ``None`` or ``""`` leaves the id key out.
    """
    mapping = _check_metadata(metadata)
    if metadata_id is not None and not isinstance(metadata_id, str):
        raise PeerMetadataTypeError(msg.metadata_id_type(metadata_id))
    node = _enc_struct(mapping, 2)
    value = b"\x2a" + _varint_bytes(len(node)) + node
    body = b"\x0a\x15x-envoy-peer-metadata\x12" + _varint_bytes(len(value)) + value
    outer = b"\x0a" + _varint_bytes(len(body)) + body
    if metadata_id:
        raw = _utf8(metadata_id)
        value = b"\x1a" + _varint_bytes(len(raw)) + raw
        body = b"\x0a\x18x-envoy-peer-metadata-id\x12" + _varint_bytes(len(value)) + value
        outer += b"\x0a" + _varint_bytes(len(body)) + body
    any_msg = b"\x0a\x2a" + _TYPE_URL_BYTES + b"\x12" + _varint_bytes(len(outer)) + outer
    if len(any_msg) > 0xFFFFFFFF:
        raise PeerMetadataTypeError(msg.frame_too_large())
    return _HEADER.pack(MAGIC, len(any_msg)) + any_msg


def encode_peer_header(metadata: Mapping[str, object]) -> str:
    """Build the ``x-envoy-peer-metadata`` header value: padded base64 of the node Struct.

    >>> encode_peer_header({"NAME": "pod-1"})
    'Cg8KBE5BTUUSBxoFcG9kLTE='
    """
    node = _enc_struct(_check_metadata(metadata), 1)
    return binascii.b2a_base64(node, newline=False).decode("ascii")


# --------------------------------------------------------------------------- streaming


class PeerPrefixDecoder:
    """Feed it a connection's first bytes; it says whether a peer-exchange frame came.

    >>> frame = encode_peer_prefix({"NAME": "pod-1"})
    >>> dec = PeerPrefixDecoder()
    >>> dec.feed(frame[:5]), dec.feed(frame[5:] + b"hello")
    ('need_more', 'done')
    >>> dec.exchange.metadata, dec.leftover
    ({'NAME': 'pod-1'}, b'hello')
    >>> other = PeerPrefixDecoder()
    >>> other.feed(b"GET / HTTP/1.1"), other.passthrough, other.error.reason
    ('not_mesh', b'GET / HTTP/1.1', 'bad_magic')

    After ``NOT_MESH`` every byte fed so far is in ``.passthrough``, untouched, so a
    proxy can forward it. The buffer never holds more than ``8 + max_size`` bytes, and
    the length is checked against ``max_size`` before any body byte is buffered.
    """

    __slots__ = (
        "_max_size",
        "_state",
        "_buf",
        "_frame_len",
        "_exchange",
        "_leftover",
        "_passthrough",
        "_error",
    )

    def __init__(self, *, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self._max_size = _check_max_size(max_size)
        self._state: str = NEED_MORE
        self._buf = bytearray()
        self._frame_len = -1
        self._exchange: PeerExchange | None = None
        self._leftover = b""
        self._passthrough = b""
        self._error: PeerExchangeError | None = None

    @property
    def state(self) -> str:
        """``NEED_MORE`` (initially), ``DONE`` or ``NOT_MESH``."""
        return self._state

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def exchange(self) -> PeerExchange | None:
        """The decoded frame once ``DONE``, else ``None``."""
        return self._exchange

    @property
    def leftover(self) -> bytes:
        """Bytes fed after the frame (``DONE`` only), untouched."""
        return self._leftover

    @property
    def passthrough(self) -> bytes:
        """Every byte fed, in order (``NOT_MESH`` only)."""
        return self._passthrough

    @property
    def error(self) -> PeerExchangeError | None:
        """Why the peer is ``NOT_MESH``, else ``None``."""
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes held while ``NEED_MORE``; 0 once the decoder has finished."""
        return len(self._buf)

    def _not_mesh(self, error: PeerExchangeError, rest: memoryview) -> str:
        self._passthrough = bytes(self._buf) + rest.tobytes()
        self._buf = bytearray()
        self._error = error
        self._state = NOT_MESH
        return NOT_MESH

    def feed(self, chunk: bytes | bytearray | memoryview) -> str:
        """Take the next bytes received; return the new state."""
        if self._state != NEED_MORE:
            raise DecoderFinishedError(msg.feed_after_finish(self._state))
        view = _as_bytes_view(chunk, "chunk")
        if not len(view):
            return NEED_MORE
        buf = self._buf
        held = len(buf)
        if held < 4:
            for i in range(min(4 - held, len(view))):
                if view[i] != _MAGIC_BYTES[held + i]:
                    err = PeerExchangeError("bad_magic", held + i)
                    return self._not_mesh(err, view)
        if held < 8:
            need = 8 - held
            if len(view) < need:
                buf += view
                return NEED_MORE
            buf += view[:need]
            view = view[need:]
            frame_len = _HEADER.unpack_from(buf, 0)[1]
            if frame_len > self._max_size:
                err = PeerExchangeError("oversize", 4)
                return self._not_mesh(err, view)
            self._frame_len = frame_len
        need = 8 + self._frame_len - len(buf)
        if len(view) < need:
            buf += view
            return NEED_MORE
        buf += view[:need]
        rest = view[need:]
        frame = bytes(buf)
        try:
            exchange = _prefix(frame)
        except PeerExchangeError as exc:
            return self._not_mesh(exc, rest)
        self._buf = bytearray()
        self._exchange = exchange
        self._leftover = rest.tobytes()
        self._state = DONE
        return DONE
