"""hpack's decoder with a short way through the field a relay sees most: an indexed one.

Between two sidecars, and between a sidecar and an app that keeps its connection, nearly
every field of a header block is already in the HPACK table after the first few streams,
and is sent as an index (RFC 7541 §6.1): one byte for the first 126 entries. hpack decodes
each through four Python calls, then copies the whole list once more; :class:`Decoder`
reads such a byte in place and hands everything else (longer indexes, literals, table
size updates, and every error) to hpack's own code, in the same order, with the same
limits: the same blocks decode to the same fields and fail the same way, which
``tests/test_proxy_h2_hpack.py`` checks against hpack's decoder.

An indexed field comes out as the table's own ``(name, value)`` tuple rather than a new
:class:`hpack.HeaderTuple`: to hpack and h2 a plain tuple is an indexable field, as a
``HeaderTuple`` is, and each ``HeaderTuple`` cost a Python call to make here and another
when h2 copied it on the way out (``utf8_encode_headers``). A never-indexed field is
never an indexed one, and keeps its class.

>>> import hpack
>>> block = hpack.Encoder().encode([(b":method", b"GET"), (b"x-a", b"1")])
>>> Decoder().decode(block, raw=True)
[(b':method', b'GET'), (b'x-a', b'1')]
"""

from __future__ import annotations

from typing import Any

import hpack
import hpack.hpack
from hpack.exceptions import HPACKDecodingError, InvalidTableIndex, OversizedHeaderListError
from hpack.table import HeaderTable

__all__ = ["Decoder", "Encoder"]

_STATIC = HeaderTable.STATIC_TABLE
_STATIC_LENGTH = len(_STATIC)
# An indexed field whose index fits the first byte (RFC 7541 §6.1), by index.
_INDEXED = [bytes([0x80 | index]) for index in range(127)]
#: Blocks of one-byte indexes the decoder keeps decoded, and the longest it keeps.
KNOWN_BLOCKS = 256
KNOWN_BLOCK_SIZE = 64
_DEFAULT_LIST_LIMIT = hpack.hpack.DEFAULT_MAX_HEADER_LIST_SIZE


class Decoder(hpack.Decoder):
    """:class:`hpack.Decoder`, faster for indexed fields when ``raw`` (as h2 calls it).

    A block made only of one-byte indexes (between sidecars, nearly every block once the
    table is warm) changes nothing in the table, so while the table stays as it is the
    same bytes decode to the same fields: such blocks are kept (at most
    :data:`KNOWN_BLOCKS`, each at most :data:`KNOWN_BLOCK_SIZE` bytes, so no peer grows
    them), and forgotten whenever a block holds anything else (which may change the table)
    or the table's size is set.
    """

    def __init__(
        self, max_header_list_size: int = hpack.hpack.DEFAULT_MAX_HEADER_LIST_SIZE
    ) -> None:
        super().__init__(max_header_list_size)
        self._known: dict[bytes, tuple[tuple[tuple[bytes, bytes], ...], int]] = {}

    @property
    def header_table_size(self) -> int:
        return int(self.header_table.maxsize)

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._known.clear()
        self.header_table.maxsize = value

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw:
            self._known.clear()
            return super().decode(data, raw)
        known = self._known.get(data) if type(data) is bytes else None
        if known is not None and known[1] <= self.max_header_list_size:
            self._assert_valid_table_size()
            return list(known[0])
        log = hpack.hpack.log  # hpack's records, if its debug logging is on
        log.debug("Decoding %s", data)
        view = memoryview(data)
        headers: list[tuple[bytes, bytes]] = []
        dynamic = self.header_table.dynamic_entries
        limit = self.max_header_list_size
        inflated = 0
        indexed_only = True
        at, size = 0, len(data)
        while at < size:
            current = data[at]
            if 0x80 < current < 0xFF:  # indexed, the index (1-126) in this byte
                index = current - 0x81
                if index < _STATIC_LENGTH:
                    header = _STATIC[index]
                else:
                    index -= _STATIC_LENGTH
                    if index >= len(dynamic):
                        raise InvalidTableIndex(f"Invalid table index {current - 0x80}")
                    header = dynamic[index]
                name, value = header
                log.debug("Decoded %s, consumed %d", header, 1)
                at += 1
            else:
                # Anything but a one-byte index may change the table (or is an error).
                self._known.clear()
                indexed_only = False
                if current & 0x80:  # index 0 (an error) or one of 127 and more
                    found, consumed = self._decode_indexed(view[at:])
                elif current & 0x40:
                    found, consumed = self._decode_literal_index(view[at:])
                elif current & 0x20:
                    if headers:
                        msg = "Table size update not at the start of the block"
                        raise HPACKDecodingError(msg)
                    at += self._update_encoding_context(view[at:])
                    continue
                else:
                    found, consumed = self._decode_literal_no_index(view[at:])
                # hpack's last pass over the list, for this field only (raw: bytes).
                name, value = bytes(found[0]), bytes(found[1])
                header = found.__class__(name, value)
                at += consumed
            headers.append(header)
            inflated += 32 + len(name) + len(value)  # RFC 7541 §4.1, as hpack counts
            if inflated > limit:
                msg = f"A header list larger than {limit} has been received"
                raise OversizedHeaderListError(msg)
        self._assert_valid_table_size()
        if indexed_only and size <= KNOWN_BLOCK_SIZE and type(data) is bytes:
            if len(self._known) >= KNOWN_BLOCKS:
                self._known.clear()
            self._known[data] = (tuple(headers), inflated)
        return headers


class Encoder(hpack.Encoder):
    """:class:`hpack.Encoder`, faster for a field the table holds (name and value) at an
    index below 127: its one byte, without hpack's calls to find and make it.

    The bytes of such fields are kept while the table stays as it is (an index names a
    field only for one state of the table): any field that is not a hit, which may add to
    the table and evict from it, and any change of the table's size forget them all.
    Between two sidecars, nearly every block is hits only, and is then one dictionary
    lookup a field. Every other field goes through hpack's own :meth:`~hpack.Encoder.add`;
    the blocks and the table are hpack's, which ``tests/test_proxy_h2_hpack.py`` checks.

    >>> Encoder().encode([(b":method", b"GET")]) == hpack.Encoder().encode([(b":method", b"GET")])
    True
    """

    def __init__(self) -> None:
        super().__init__()
        self._hits: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if self.header_table.resized or isinstance(headers, dict):
            # A size change (announced at the block's start; a smaller table evicts) or a
            # dict (hpack's own reordering): hpack's way, the indexes forgotten.
            self._hits.clear()
            return bytes(super().encode(headers, huffman))
        hits = self._hits
        out = []
        for header in headers:
            # A plain or Header tuple of two bytes values equals its key; a never-indexed
            # one too, and a hit is sent as its index, sensitive or not, as hpack sends it.
            try:
                piece = hits.get(header)
            except TypeError:  # (not hashable: a list, a bytearray value)
                piece = None
            if piece is None:
                sensitive = (
                    not header.indexable
                    if isinstance(header, hpack.HeaderTuple)
                    else len(header) > 2 and bool(header[2])
                )
                field = (hpack.hpack._to_bytes(header[0]), hpack.hpack._to_bytes(header[1]))
                piece = self.add(field, sensitive, huffman)
            out.append(piece)
        return b"".join(out)

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        name, value = to_add
        match = self.header_table.search(name, value)
        # hpack sends a field the table holds as its index, sensitive or not.
        if match is not None and match[2] is not None and match[0] < 127:
            piece = _INDEXED[match[0]]
            self._hits[(name, value)] = piece
            return piece
        self._hits.clear()  # the table may change
        return bytes(super().add(to_add, sensitive, huffman))
