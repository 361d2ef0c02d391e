"""A lean HTTP/1.1 codec for the sidecar's relay: h11's events and states, a fraction of its cost.

>>> server = Connection(SERVER)
>>> server.receive_data(b"GET /ratings HTTP/1.1\\r\\nHost: ratings\\r\\n\\r\\n")
>>> request = server.next_event()
>>> request.method, request.target, request.headers.get(b"host")
(b'GET', b'/ratings', b'ratings')
>>> server.next_event()
EndOfMessage(headers=[])
>>> server.send(Response(status_code=204, headers=[]))
b'HTTP/1.1 204 \\r\\n\\r\\n'

The relay (:mod:`.http`) was written against h11, and h11 was about 40 % of a sidecar's CPU
per request: a general state machine that validates every header of every event it sends,
with several Python calls per state change. This module keeps h11's events, state names and
methods (the subset the relay uses, with the same meaning), and parses the same grammar
(RFC 9112 as h11 reads it: the request line, status line and field lines by the same ABNF,
``LF`` or ``CRLF`` line ends, at most 16 KiB of an incomplete head, ``Host`` required on
HTTP/1.1 requests, ``Content-Length`` values merged when equal and refused when not, only a
final ``chunked`` transfer coding, a chunk's data followed by exactly ``CRLF``). One
difference, stricter: an obsolete line fold (a field line starting with whitespace) is
refused rather than unfolded (RFC 9112 §5.2 allows either; a sidecar passes none on).
tests/test_proxy_h1_codec.py checks the parse against h11's on generated messages.

Sending frames as h11 frames: the one framing header the relay chose, ``Transfer-Encoding:
chunked`` added to a response that has neither (``Connection: close`` instead for an HTTP/1.0
client), ``Connection: close`` when either side ended keep-alive, ``Host`` written first.
Nothing is validated on the way out: every header the relay sends was parsed here or built
by the sidecar itself.

The connection's state machine is compiled (``meshstats._h1_conn_c``, over the head parser
``meshstats._h1_head_c``) with a pure-Python twin (``_h1_conn_py``), selected once at
import as every compiled module is; the events, states and errors are one set of Python
classes (``meshstats._h1_events``) whichever backend runs.
"""

from __future__ import annotations

from .._h1_conn import Connection
from .._h1_events import (
    CLIENT,
    CLOSED,
    DONE,
    ERROR,
    IDLE,
    MIGHT_SWITCH_PROTOCOL,
    MUST_CLOSE,
    NEED_DATA,
    PAUSED,
    SEND_BODY,
    SEND_RESPONSE,
    SERVER,
    SWITCHED_PROTOCOL,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    Role,
)

__all__ = [
    "CLIENT",
    "CLOSED",
    "DONE",
    "ERROR",
    "IDLE",
    "MIGHT_SWITCH_PROTOCOL",
    "MUST_CLOSE",
    "NEED_DATA",
    "PAUSED",
    "SEND_BODY",
    "SEND_RESPONSE",
    "SERVER",
    "SWITCHED_PROTOCOL",
    "Connection",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "Headers",
    "InformationalResponse",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "Role",
]
