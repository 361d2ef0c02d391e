"""The server name a TLS client asks for (SNI), read from its ClientHello without
terminating TLS: what a sidecar in TLS passthrough (Istio's ``allow_any`` for TLS) reports
as ``destination_service``.

>>> import ssl
>>> hello = client_hello_for("api.example.com")
>>> server_name(hello)
'api.example.com'
>>> server_name(b"GET / HTTP/1.1\\r\\n\\r\\n") is None  # not TLS: nothing to read
True

Only the first TLS record is read (every ClientHello this side of post-quantum key shares
fits in one; a larger one is still relayed whole, with its name when it is in the first
record). Anything malformed gives ``None``: the bytes are relayed untouched all the same.
"""

from __future__ import annotations

import asyncio
import ssl

__all__ = ["MAX_HELLO", "client_hello_for", "read_client_hello", "server_name"]

#: The most read before relaying: one TLS record (2**14 bytes) and its 5-byte header.
MAX_HELLO = 5 + (1 << 14)
_HANDSHAKE, _CLIENT_HELLO, _SERVER_NAME, _HOST_NAME = 0x16, 0x01, 0x0000, 0x00


def record_length(head: bytes) -> int | None:
    """The whole first record's size from its first 5 bytes, ``None`` if it is not TLS."""
    if len(head) < 5 or head[0] != _HANDSHAKE or head[1] != 3:
        return None
    return 5 + int.from_bytes(head[3:5], "big")


def server_name(data: bytes) -> str | None:
    """The SNI host name in a ClientHello's first record, or ``None``."""
    size = record_length(data[:5])
    if size is None or len(data) < 9 or data[5] != _CLIENT_HELLO:
        return None
    body = data[9 : min(size, len(data))]  # the hello so far (its 4-byte header skipped)
    at = 2 + 32  # client_version, random
    try:
        at += 1 + body[at]  # session_id
        at += 2 + int.from_bytes(body[at : at + 2], "big")  # cipher_suites
        at += 1 + body[at]  # compression_methods
        end = min(len(body), at + 2 + int.from_bytes(body[at : at + 2], "big"))
        at += 2
        while at + 4 <= end:
            kind = int.from_bytes(body[at : at + 2], "big")
            length = int.from_bytes(body[at + 2 : at + 4], "big")
            at += 4
            if kind == _SERVER_NAME:
                return _host_name(body[at : at + length])
            at += length
    except IndexError:
        return None
    return None


def _host_name(ext: bytes) -> str | None:
    at, end = 2, min(len(ext), 2 + int.from_bytes(ext[:2], "big"))
    while at + 3 <= end:
        kind, length = ext[at], int.from_bytes(ext[at + 1 : at + 3], "big")
        name = ext[at + 3 : at + 3 + length]
        if kind == _HOST_NAME and len(name) == length and name:
            try:
                text = name.decode("ascii")
            except UnicodeDecodeError:
                return None
            # A DNS name (RFC 6066 §3): letters, digits, '-', '.', and no trailing dot.
            ok = all(c.isalnum() or c in "-._" for c in text) and not text.endswith(".")
            return text.lower() if ok else None
        at += 3 + length
    return None


async def read_client_hello(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """The bytes of the first TLS record (or what came of it within ``timeout``): all of
    them go on to the upstream, whatever they are."""
    data = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    want = 5
    while len(data) < want:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            chunk = await asyncio.wait_for(reader.read(want - len(data)), left)
        except asyncio.TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        if len(data) >= 5 and want == 5:
            size = record_length(data)
            if size is None:
                break  # not TLS: relayed as it is
            want = min(size, MAX_HELLO)
    return data


def client_hello_for(host: str) -> bytes:
    """A real ClientHello naming ``host`` (Python's own TLS), for tests and examples."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()
