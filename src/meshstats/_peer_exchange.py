"""Selects the peer-exchange codec backend once, at import (see ``_backend``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backend import load

if TYPE_CHECKING:
    COMPILED: bool
    from ._peer_exchange_py import (
        PeerExchange,
        PeerPrefixDecoder,
        decode_peer_header,
        decode_peer_prefix,
        encode_peer_header,
        encode_peer_prefix,
    )
else:
    _impl, COMPILED = load("_peer_exchange_c", "_peer_exchange_py")
    PeerExchange = _impl.PeerExchange
    PeerPrefixDecoder = _impl.PeerPrefixDecoder
    decode_peer_header = _impl.decode_peer_header
    decode_peer_prefix = _impl.decode_peer_prefix
    encode_peer_header = _impl.encode_peer_header
    encode_peer_prefix = _impl.encode_peer_prefix

__all__ = [
    "PeerExchange",
    "PeerPrefixDecoder",
    "decode_peer_header",
    "decode_peer_prefix",
    "encode_peer_header",
    "encode_peer_prefix",
]
