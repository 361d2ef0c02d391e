"""TCP through two sidecars: Istio's prefix exchange, then bytes relayed untouched.

The client sidecar opens mTLS to the server sidecar offering Istio's
``istio-peer-exchange, istio`` ALPN list. When both sides negotiated ``istio-peer-exchange``,
each writes its prefix (:func:`~meshstats.encode_peer_prefix`) as the very first bytes of
its direction and reads the peer's with a :class:`~meshstats.PeerPrefixDecoder`
(reference/telemetry-v2.md §1.3-1.4). Writing never waits for reading, so server-first
protocols work.

What counts as the peer's answer, and what happens to the bytes:

- ``done``: the peer is known; the bytes after the prefix go on to the app.
- ``not_mesh`` (bad magic, oversize length, malformed frame), ``eof`` (the peer closed
  mid-prefix) or ``timeout`` (nothing complete within ``exchange_timeout``): the peer is
  unknown and **every byte received so far is forwarded untouched**, as Istio forwards
  them when its filter gives up. Istio has no timeout (§1.4 point 4); meshstats stops
  waiting so that a stalled peer cannot hold telemetry back forever.

A plaintext connection on a permissive inbound port is read the same way: a peer that sends
the prefix without TLS is recognised by its magic (one of the gaps Istio admits); principals
stay unknown because they only ever come from a verified certificate. With
``plaintext_exchange: false`` a plaintext peer is not read at all: its bytes, a prefix
included, go to the app untouched and it is a non-mesh peer.

A peer that exchanged nothing is passed to the engine with its address (``ip:port``), so
the sidecar's workload registry can name it.

Catch-all outbound listeners (``mode``): a passthrough connects in plaintext to the original
destination and relays without any prefix; a blackhole closes the app's connection at once
with response flag ``UH`` (Envoy's tcp_proxy to a cluster without endpoints).

Byte counts are the application bytes of the downstream side, as Istio's
``istio_tcp_{sent,received}_bytes_total`` are: prefixes are not counted.

Half-close: a FIN from a plaintext side is passed on as a FIN when the other side is
plaintext too. asyncio's TLS transport cannot half-close, so when the side to pass it to is
TLS the whole connection is closed instead (a client that half-closes and then waits for
the answer sees the connection end).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._peer_exchange import DONE, NOT_MESH, PeerPrefixDecoder
from ..certs import MX_ALPN, peer_principal
from ..errors import MeshstatsError
from ..peer_metadata import PeerMetadata
from .listener import peer_address, write
from .sni import read_client_hello, server_name

if TYPE_CHECKING:
    from .config import OutboundConfig
    from .handler_api import SidecarView as Sidecar  # only what handlers may use

__all__ = ["Exchanged", "read_peer_prefix", "relay", "outbound_tcp", "inbound_tcp"]

CHUNK = 1 << 16

Outcome = Literal["done", "not_mesh", "eof", "timeout"]


@dataclass(frozen=True)
class Exchanged:
    """What reading the peer's prefix gave: the peer (or ``None``) and bytes to pass on."""

    peer: PeerMetadata | None
    forward: bytes
    outcome: Outcome
    eof: bool = False


async def read_peer_prefix(
    reader: asyncio.StreamReader, timeout: float, max_size: int | None = None
) -> Exchanged:
    """Read the peer's prefix from ``reader``, waiting at most ``timeout`` seconds in all.

    Memory is bounded: the decoder holds at most ``8 + max_size`` bytes and this function
    keeps one copy of them (to forward on ``eof``/``timeout``) plus one chunk.
    """
    loop = asyncio.get_running_loop()
    decoder = PeerPrefixDecoder() if max_size is None else PeerPrefixDecoder(max_size=max_size)
    held = bytearray()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(reader.read(CHUNK), remaining)
        except asyncio.TimeoutError:
            return Exchanged(None, bytes(held), "timeout")
        if not chunk:
            return Exchanged(None, bytes(held), "eof", eof=True)
        held += chunk
        state = decoder.feed(chunk)
        if state == DONE:
            assert decoder.exchange is not None
            try:
                peer = PeerMetadata.from_exchange(decoder.exchange)
            except MeshstatsError:  # a well-formed frame holding a non-Struct: not a peer
                return Exchanged(None, bytes(held), "not_mesh")
            return Exchanged(peer, decoder.leftover, "done")
        if state == NOT_MESH:
            return Exchanged(None, decoder.passthrough, "not_mesh")


async def _pump(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: Callable[[int], None]
) -> bool:
    """Copy until EOF; True when the EOF could be passed on as a half-close."""
    while True:
        chunk = await src.read(CHUNK)
        if not chunk:
            break
        write(dst, chunk)
        count(len(chunk))
        await dst.drain()
    return _pass_eof(dst)


def _pass_eof(dst: asyncio.StreamWriter) -> bool:
    if dst.can_write_eof():
        dst.write_eof()
        return True
    return False


async def _eof_only(dst: asyncio.StreamWriter) -> bool:
    return _pass_eof(dst)


async def relay(
    sidecar: Sidecar,
    peer: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    local: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    *,
    send_prefix: bool,
    read_prefix: bool,
    to_peer: Callable[[int], None],
    to_local: Callable[[int], None],
    on_peer: Callable[[PeerMetadata | None], None],
) -> None:
    """Exchange prefixes with the peer side (as asked), then relay both ways until done.

    ``to_peer``/``to_local`` count the application bytes of each direction; ``on_peer``
    is called once, as soon as the peer is known (or known to be unknown).
    """
    peer_reader, peer_writer = peer
    local_reader, local_writer = local
    loop = asyncio.get_running_loop()
    if send_prefix:
        write(peer_writer, sidecar.prefix)  # our first bytes, ahead of any relayed ones
    # The local side's bytes flow at once; only the peer's direction waits for its prefix.
    tasks = {loop.create_task(_pump(local_reader, peer_writer, to_peer))}
    try:
        back: Coroutine[Any, Any, bool]
        if read_prefix:
            got = await read_peer_prefix(peer_reader, sidecar.config.exchange_timeout)
            on_peer(got.peer)
            if got.forward:
                write(local_writer, got.forward)
                to_local(len(got.forward))
                await local_writer.drain()
            back = (
                _eof_only(local_writer) if got.eof else _pump(peer_reader, local_writer, to_local)
            )
        else:
            on_peer(None)
            back = _pump(peer_reader, local_writer, to_local)
        tasks.add(loop.create_task(back))
        while tasks:
            done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                # A failed direction, or an EOF we could not pass on, ends the connection.
                if task.exception() is not None or not task.result():
                    return
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def outbound_tcp(
    sidecar: Sidecar,
    cfg: OutboundConfig,
    app_reader: asyncio.StreamReader,
    app_writer: asyncio.StreamWriter,
) -> None:
    """Local app -> (plaintext) -> this sidecar -> (mTLS + prefix exchange) -> upstream."""
    conn = sidecar.engine.tcp_connection(reporter="outbound")
    flags: str | None = None
    principal: str | None = None
    up_writer: asyncio.StreamWriter | None = None
    address: str | None = None
    known = False

    hello = b""
    sni: str | None = None

    def on_peer(peer: PeerMetadata | None) -> None:
        nonlocal known
        known = True
        if sni is not None:  # TLS passthrough: the ClientHello named the destination
            conn.set_peer(sidecar.passthrough_peer(cfg, sni, address))
        else:
            conn.set_peer(sidecar.outbound_peer(cfg, peer, principal, address=address))

    try:
        if cfg.upstream is None:  # no endpoint, or a blackhole
            flags = "UH"
            return
        if cfg.protocol == "tls":
            hello = await read_client_hello(app_reader, sidecar.config.detect_timeout)
            sni = server_name(hello)
        try:
            up_reader, up_writer, principal, mx = await sidecar.connect(
                cfg.upstream, "tcp", mesh=cfg.mode == "service"
            )
        except (OSError, asyncio.TimeoutError):
            flags = "UF"
            return
        address = peer_address(up_writer)
        if hello:  # read to find the name; relayed first, and counted, as any app bytes
            write(up_writer, hello)
            conn.add_bytes(received=len(hello))
        await relay(
            sidecar,
            (up_reader, up_writer),
            (app_reader, app_writer),
            send_prefix=mx,
            read_prefix=mx,
            to_peer=lambda n: conn.add_bytes(received=n),
            to_local=lambda n: conn.add_bytes(sent=n),
            on_peer=on_peer,
        )
    finally:
        if not known:
            on_peer(None)
        conn.close(response_flags=flags)
        _close(up_writer, app_writer)


async def inbound_tcp(
    sidecar: Sidecar, down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter
) -> None:
    """Remote sidecar -> (mTLS or plaintext) -> this sidecar -> (plaintext) -> the app."""
    assert sidecar.config.inbound is not None
    conn = sidecar.engine.tcp_connection()
    ssl_object = down_writer.get_extra_info("ssl_object")
    principal = peer_principal(ssl_object)
    # Over TLS the exchange happens only when both sides chose Istio's ALPN. In plaintext
    # the prefix is recognised by its magic alone, and ours is not sent: a plaintext
    # client may be no mesh peer at all, and would receive bytes it never asked for.
    mx_tls = ssl_object is not None and ssl_object.selected_alpn_protocol() == MX_ALPN
    read_plain = ssl_object is None and sidecar.config.plaintext_exchange
    address = peer_address(down_writer)
    flags: str | None = None
    app_writer: asyncio.StreamWriter | None = None
    known = False

    def on_peer(peer: PeerMetadata | None) -> None:
        nonlocal known
        known = True
        conn.set_peer(sidecar.inbound_peer(peer, principal, address=address))

    try:
        try:
            app_reader, app = await asyncio.wait_for(
                asyncio.open_connection(*sidecar.config.inbound.app),
                sidecar.config.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError):
            flags = "UF"
            return
        app_writer = app
        await relay(
            sidecar,
            (down_reader, down_writer),
            (app_reader, app),
            send_prefix=mx_tls,
            read_prefix=mx_tls or read_plain,
            to_peer=lambda n: conn.add_bytes(sent=n),
            to_local=lambda n: conn.add_bytes(received=n),
            on_peer=on_peer,
        )
    finally:
        if not known:
            conn.set_peer(sidecar.inbound_peer(None, principal, address=address))
        conn.close(response_flags=flags)
        _close(app_writer, down_writer)


def _close(*writers: asyncio.StreamWriter | None) -> None:
    for writer in writers:
        if writer is not None:
            writer.close()
