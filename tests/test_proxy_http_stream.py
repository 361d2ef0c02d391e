"""``proxy.http.HttpStream``: one HTTP/1.1 connection of the relay, over a real socket.

The relay parses a body's next event ahead of time (``ready()``: is there more to relay
before a read?), and merges body events; an event held that way belongs to its message only.
When a message ends another way (the relay failed and drained the rest of the request), the
next request on the keep-alive connection must start from its own events.
"""

from __future__ import annotations

import asyncio

from proxy_support import run

from meshstats.proxy import h1
from meshstats.proxy.http import HttpStream


async def _connected(
    payload: bytes,
) -> tuple[HttpStream, asyncio.StreamReader, asyncio.StreamWriter]:
    """A server-side stream of a real connection whose client sent ``payload``."""
    accepted: asyncio.Future[HttpStream] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(HttpStream(reader, writer, h1.SERVER))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, client = await asyncio.open_connection("127.0.0.1", port)
    client.write(payload)
    await client.drain()
    stream = await accepted
    server.close()
    return stream, reader, client


def test_a_body_event_held_ahead_does_not_outlive_its_message() -> None:
    async def main() -> list[str]:
        stream, _, client = await _connected(
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
            b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nbye"
        )
        seen = []
        first = await stream.next_event()
        assert isinstance(first, h1.Request) and first.target == b"/a"
        assert stream.ready()  # "hi" parsed and held, as the relay does before a flush
        while stream.conn.their_state is h1.SEND_BODY:  # drained instead (a failed relay)
            await stream.next_event()
        await stream.send(h1.Response(status_code=503, headers=[(b"content-length", b"0")]))
        await stream.send(h1.EndOfMessage())
        assert stream.reusable()
        second = await stream.next_event()
        assert isinstance(second, h1.Request) and second.target == b"/b"
        while True:
            event = await stream.next_body_event()
            if isinstance(event, h1.Data):
                seen.append(event.data.decode())
            else:
                seen.append(type(event).__name__)
                break
        stream.close()
        client.close()
        return seen

    assert asyncio.run(main()) == ["bye", "EndOfMessage"]


def test_a_body_that_breaks_while_parsed_ahead_is_refused_with_its_own_error() -> None:
    async def main() -> tuple[bool, int | None, str]:
        head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        stream, _, client = await _connected(head + b"zz\r\n")
        await stream.next_event()
        ready = stream.ready()  # the chunk header does not parse: nothing ready
        try:
            await stream.next_body_event()
        except h1.RemoteProtocolError as exc:
            failed: h1.RemoteProtocolError = exc
        stream.close()
        client.close()
        return ready, failed.offset, str(failed)

    ready, offset, message = asyncio.run(main())
    head_size = len(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert not ready
    assert offset == head_size and "illegal chunk header" in message


def test_sends_wait_for_the_flush_and_go_out_in_one_write() -> None:
    async def main() -> tuple[bytes, int]:
        stream, reader, client = await _connected(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await stream.next_event()
        await stream.next_event()
        await stream.send(
            h1.Response(status_code=200, headers=[(b"content-length", b"2")]), flush=False
        )
        await stream.send(h1.Data(data=b"ok"), flush=False)
        assert stream.pending and stream.sent == 0  # nothing written yet
        await stream.send(h1.EndOfMessage())  # a flushing send writes them all
        assert not stream.pending
        sent = stream.sent
        stream.close()
        data = await reader.read()
        client.close()
        return data, sent

    data, sent = asyncio.run(main())
    assert data == b"HTTP/1.1 200 \r\ncontent-length: 2\r\n\r\nok"
    assert sent == len(data)


def test_a_flush_waits_for_a_peer_that_does_not_read() -> None:
    """Flow control: bytes written that the peer has not read hold the relay back. A flush
    that has handed everything to the socket returns at once (it skips ``drain()``); one
    that could not waits until the peer reads, so no relay buffers a body without bound."""

    async def main() -> tuple[bool, int, int]:
        stream, received, client = await _connected(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await stream.next_event()
        await stream.next_event()
        # Far more than the kernel's buffers on both ends of a loopback connection hold.
        body = b"x" * (48 << 20)
        head = h1.Response(status_code=200, headers=[(b"content-length", b"%d" % len(body))])
        await stream.send(head, flush=False)
        await stream.send(h1.Data(data=body), flush=False)
        flushing = asyncio.ensure_future(stream.flush())
        await asyncio.sleep(0)
        held_back = not flushing.done()
        got = 0
        while not flushing.done() or got < stream.sent:
            data = await received.read(1 << 20)
            if not data:
                break
            got += len(data)
        await flushing
        stream.close()
        client.close()
        return held_back, got, stream.sent

    held_back, got, sent = run(main())
    assert held_back
    assert got == sent > 48 << 20
