"""Selects the peer-exchange codec backend once, at import (see ``_backend``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backend import load

if TYPE_CHECKING:
    COMPILED: bool
    from ._peer_exchange_py import (
        DEFAULT_MAX_FRAME,
        DONE,
        NEED_MORE,
        NOT_MESH,
        PeerExchange,
        PeerPrefixDecoder,
        decode_peer_header,
        decode_peer_prefix,
        encode_peer_header,
        encode_peer_prefix,
    )
else:
    _impl, COMPILED = load("_peer_exchange_c", "_peer_exchange_py")
    DEFAULT_MAX_FRAME = _impl.DEFAULT_MAX_FRAME
    DONE = _impl.DONE
    NEED_MORE = _impl.NEED_MORE
    NOT_MESH = _impl.NOT_MESH
    PeerExchange = _impl.PeerExchange
    PeerPrefixDecoder = _impl.PeerPrefixDecoder
    decode_peer_header = _impl.decode_peer_header
    decode_peer_prefix = _impl.decode_peer_prefix
    encode_peer_header = _impl.encode_peer_header
    encode_peer_prefix = _impl.encode_peer_prefix

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DONE",
    "NEED_MORE",
    "NOT_MESH",
    "PeerExchange",
    "PeerPrefixDecoder",
    "decode_peer_header",
    "decode_peer_prefix",
    "encode_peer_header",
    "encode_peer_prefix",
]
