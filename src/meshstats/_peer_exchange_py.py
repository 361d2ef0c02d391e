# PLACEHOLDER: replaced by the pure-Python codec.
class PeerExchange: pass
class PeerPrefixDecoder: pass
def decode_peer_header(*a): raise NotImplementedError
def decode_peer_prefix(*a): raise NotImplementedError
def encode_peer_header(*a): raise NotImplementedError
def encode_peer_prefix(*a): raise NotImplementedError
