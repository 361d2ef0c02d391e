"""Compiled peer-metadata-exchange codec (Istio TCP prefix and HTTP header).

>>> from meshstats._peer_exchange_c import encode_peer_prefix, decode_peer_prefix
>>> frame = encode_peer_prefix({"NAME": "pod-1", "NAMESPACE": "default"}, "sidecar~1")
>>> decode_peer_prefix(frame).metadata
{'NAME': 'pod-1', 'NAMESPACE': 'default'}

The pure-Python twin ``meshstats._peer_exchange_py`` has exactly this API and gives the
same values, bytes and errors. Every rule (error offsets, check order, duplicate fields)
is written down in ``docs/peer_exchange.md``.
"""

from collections.abc import Mapping
from typing import Final

from .errors import PeerExchangeError

Buffer = bytes | bytearray | memoryview

MAGIC: Final[int]
"""``0x3D230467``: the first four bytes of every TCP peer-exchange prefix (big-endian)."""
DEFAULT_MAX_FRAME: Final[int]
"""``65536``: default cap on the ``Any`` after the 8-byte header (Istio itself has none)."""
MAX_DEPTH: Final[int]
"""``64``: how deep Struct/ListValue may nest, counting the top-level Struct as 1."""
TYPE_URL: Final[str]
METADATA_KEY: Final[str]
METADATA_ID_KEY: Final[str]
NEED_MORE: Final[str]
DONE: Final[str]
NOT_MESH: Final[str]

class PeerExchange:
    """One decoded frame: the peer's node metadata, its id and the bytes it used.

    >>> ex = decode_peer_prefix(encode_peer_prefix({"NAME": "a"}, "id-1") + b"GET /")
    >>> ex.metadata, ex.metadata_id, ex.consumed
    ({'NAME': 'a'}, 'id-1', 132)

    Read-only and unhashable; equal when all three fields are equal.
    """

    @property
    def metadata(self) -> dict[str, object]:
        """The node Struct as a dict (``{}`` when the frame carries none)."""
    @property
    def metadata_id(self) -> str | None:
        """The sender's Envoy node id, or ``None`` when absent."""
    @property
    def consumed(self) -> int:
        """Bytes of input the frame took (8 + N); anything after it is the peer's data."""
    def __init__(
        self, metadata: dict[str, object], metadata_id: str | None, consumed: int
    ) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    __hash__: None  # type: ignore[assignment]

def encode_peer_prefix(metadata: Mapping[str, object], metadata_id: str | None = None) -> bytes:
    """Encode the TCP prefix a sidecar writes first on an ``istio-peer-exchange`` connection.

    >>> frame = encode_peer_prefix({"NAME": "a"}, "id-1")
    >>> frame[:4].hex(), int.from_bytes(frame[4:8], "big") == len(frame) - 8
    ('3d230467', True)

    Bytes are identical to Envoy's (C++ protobuf deterministic serialization: map keys in
    byte order, a key that is a prefix of another first). Values: None, bool, int/float
    (as a double), str, Mapping, list/tuple. ``metadata_id`` of ``None`` or ``""`` is omitted.

    Raises
    ------
    PeerMetadataTypeError
        A non-str key, an unsupported value type, an int too large for a double, a string
        that is not encodable as UTF-8, or nesting deeper than ``MAX_DEPTH``.
    """

def decode_peer_prefix(data: Buffer, *, max_size: int = 65536) -> PeerExchange:
    """Decode one complete prefix frame at the start of ``data`` (trailing bytes allowed).

    >>> decode_peer_prefix(encode_peer_prefix({"NAME": "a"})).metadata
    {'NAME': 'a'}

    Unknown protobuf fields are skipped; groups (wire types 3/4) are rejected with
    ``bad_wire_type``. Use ``.consumed`` to find where the peer's own bytes start.

    Raises
    ------
    PeerExchangeError
        With ``.reason`` (``bad_magic``, ``truncated``, ``oversize``, ``bad_varint``,
        ``bad_wire_type``, ``too_deep``, ``bad_utf8``, ``wrong_type_url``, ``bad_field``)
        and ``.offset`` counted from the magic's first byte.
    InvalidArgumentTypeError
        ``data`` is not a C-contiguous bytes-like object (also a ``TypeError``).
    InvalidArgumentError
        ``max_size`` outside ``0 .. 2**31 - 1`` (also a ``ValueError``).

    A ``bytes`` input over 16 KiB is walked with the GIL released; any other buffer
    (which another thread could change meanwhile) is walked with it held.
    """

def encode_peer_header(metadata: Mapping[str, object]) -> str:
    """Encode the ``x-envoy-peer-metadata`` HTTP header value (padded standard base64).

    >>> encode_peer_header({"NAME": "a"})
    'CgsKBE5BTUUSAxoBYQ=='

    Raises ``PeerMetadataTypeError`` for what a Struct cannot carry (see ``encode_peer_prefix``).
    """

def decode_peer_header(
    value: str | bytes | bytearray, *, max_size: int = 65536
) -> dict[str, object]:
    """Decode an ``x-envoy-peer-metadata`` header value to the node metadata dict.

    >>> decode_peer_header("CgsKBE5BTUUSAxoBYQ")
    {'NAME': 'a'}

    Padded or unpadded standard base64, surrounding ASCII whitespace ignored; urlsafe
    base64 is rejected. Errors: ``bad_base64`` (offset = character index in ``value``),
    ``oversize`` (decoded size above ``max_size``, offset 0), or any Struct error with the
    offset counted in the decoded bytes.
    """

class PeerPrefixDecoder:
    """Streaming prefix decoder for a proxy: feed chunks as they arrive.

    >>> dec = PeerPrefixDecoder()
    >>> frame = encode_peer_prefix({"NAME": "a"})
    >>> dec.feed(frame[:5]), dec.feed(frame[5:] + b"GET /")
    ('need_more', 'done')
    >>> dec.exchange.metadata, dec.leftover
    ({'NAME': 'a'}, b'GET /')
    >>> plain = PeerPrefixDecoder()
    >>> plain.feed(b"GET / HTTP/1.1"), plain.passthrough, plain.error.reason
    ('not_mesh', b'GET / HTTP/1.1', 'bad_magic')

    A wrong magic is detected at the first byte that differs, an oversize length as soon as
    the 8-byte header is in (nothing of the body is buffered), a malformed body once it is
    complete. Never holds more than ``8 + max_size`` bytes.
    """

    def __init__(self, *, max_size: int = 65536) -> None: ...
    def feed(self, chunk: Buffer) -> str:
        """Take the next bytes; return ``NEED_MORE``, ``DONE`` or ``NOT_MESH``.

        >>> PeerPrefixDecoder().feed(bytes.fromhex("3d23"))
        'need_more'

        Raises ``RuntimeError`` once the decoder is ``DONE`` or ``NOT_MESH``.
        """
    @property
    def state(self) -> str:
        """``NEED_MORE`` until the frame is complete, then ``DONE`` or ``NOT_MESH``."""
    @property
    def exchange(self) -> PeerExchange | None:
        """The decoded frame once ``DONE``, else ``None``."""
    @property
    def leftover(self) -> bytes:
        """After ``DONE``: every byte fed after the frame, untouched (else ``b""``)."""
    @property
    def passthrough(self) -> bytes:
        """After ``NOT_MESH``: every byte ever fed, untouched, to forward (else ``b""``)."""
    @property
    def error(self) -> PeerExchangeError | None:
        """After ``NOT_MESH``: the ``PeerExchangeError`` saying why (else ``None``)."""
    @property
    def buffered(self) -> int:
        """Bytes held while ``NEED_MORE`` (at most ``8 + max_size``); 0 once finished."""
    @property
    def max_size(self) -> int:
        """The cap on the frame body given at construction."""

def _releases_gil(data: Buffer) -> bool:
    """Whether ``decode_peer_prefix(data)`` would walk ``data`` without the GIL.

    >>> _releases_gil(bytes(20000)), _releases_gil(bytearray(20000)), _releases_gil(b"")
    (True, False, False)
    """

def _walk_only(data: Buffer, *, max_size: int = 65536) -> int:
    """Benchmark-only: validate a prefix frame in C, build nothing; return the token count.

    >>> _walk_only(encode_peer_prefix({"NAME": "a"})) > 0
    True
    """
