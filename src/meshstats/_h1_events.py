"""The HTTP/1.1 codec's events, states and errors, shared by both backends of its connection.

>>> Request(method=b"GET", target=b"/", headers=[(b"Host", b"a")]).headers.get(b"host")
b'a'

They are h11's (the subset the relay uses, with the same meaning). Plain Python classes,
built by ``_h1_conn_c`` and ``_h1_conn_py`` alike, so that the relay's ``isinstance`` checks
and the tests see one set of types whichever connection parsed the bytes. Users import them
from :mod:`meshstats.proxy.h1`. ``_h1_conn_c`` makes the events it receives without calling
``__init__`` (it sets their slots itself): a slot added here must be set there too, which
tests/test_h1_conn.py checks by comparing every slot with the twin's.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "CLIENT",
    "CLOSED",
    "DONE",
    "ERROR",
    "IDLE",
    "MAX_INCOMPLETE_EVENT_SIZE",
    "MIGHT_SWITCH_PROTOCOL",
    "MUST_CLOSE",
    "NEED_DATA",
    "PAUSED",
    "SEND_BODY",
    "SEND_RESPONSE",
    "SERVER",
    "SWITCHED_PROTOCOL",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "HeaderList",
    "Headers",
    "InformationalResponse",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "Role",
    "State",
]

#: The most bytes of an incomplete head (or chunk header) a connection holds before it
#: refuses the message (431), as h11's default.
MAX_INCOMPLETE_EVENT_SIZE = 16 * 1024


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


Role = _Sentinel  # CLIENT or SERVER
State = _Sentinel  # IDLE, SEND_BODY, ... (and NEED_DATA, PAUSED from next_event)
CLIENT: Final = _Sentinel("CLIENT")
SERVER: Final = _Sentinel("SERVER")
IDLE: Final = _Sentinel("IDLE")
SEND_RESPONSE: Final = _Sentinel("SEND_RESPONSE")
SEND_BODY: Final = _Sentinel("SEND_BODY")
DONE: Final = _Sentinel("DONE")
MUST_CLOSE: Final = _Sentinel("MUST_CLOSE")
CLOSED: Final = _Sentinel("CLOSED")
ERROR: Final = _Sentinel("ERROR")
MIGHT_SWITCH_PROTOCOL: Final = _Sentinel("MIGHT_SWITCH_PROTOCOL")
SWITCHED_PROTOCOL: Final = _Sentinel("SWITCHED_PROTOCOL")
NEED_DATA: Final = _Sentinel("NEED_DATA")
PAUSED: Final = _Sentinel("PAUSED")


class ProtocolError(Exception):
    """A message that breaks HTTP/1.1; ``error_status_hint`` is the status to answer with,
    ``offset`` (for what was received) the byte of the connection where the part that broke
    it starts (a head, a chunk header, a chunk's end), also named in the message."""

    offset: int | None = None

    def __init__(self, msg: str, error_status_hint: int = 400) -> None:
        super().__init__(msg)
        self.error_status_hint = error_status_hint


class RemoteProtocolError(ProtocolError):
    """The peer sent something that is not HTTP/1.1 (or that this codec refuses)."""


class LocalProtocolError(ProtocolError):
    """The relay tried to send something the connection's state does not allow."""


HeaderList = list[tuple[bytes, bytes]]


class Headers:
    """A message's fields: iterating gives ``(lowercase name, value)``, :meth:`raw_items`
    the names as received (or as given)."""

    __slots__ = ("_raw", "_lower")

    def __init__(self, raw: HeaderList, lower: HeaderList | None = None) -> None:
        self._raw = raw
        self._lower = lower

    def lowered(self) -> HeaderList:
        if self._lower is None:
            self._lower = [(name.lower(), value) for name, value in self._raw]
        return self._lower

    def __iter__(self) -> Any:
        return iter(self.lowered())

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return repr(self._raw)

    def raw_items(self) -> HeaderList:
        return self._raw

    def get(self, name: bytes) -> bytes | None:
        """The first value of the (lowercase) ``name``; None when absent."""
        for key, value in self.lowered():
            if key == name:
                return value
        return None


def _headers(headers: Headers | HeaderList) -> Headers:
    return headers if isinstance(headers, Headers) else Headers(headers)


class Request:
    """A request head. ``content_lengths``: how many ``Content-Length`` values a received
    request carried before they were merged (fields and list members; 0 when none, and on a
    request built to be sent), for a relay that refuses what another parser could read
    differently."""

    __slots__ = ("method", "target", "headers", "http_version", "content_lengths")

    def __init__(
        self,
        *,
        method: bytes,
        target: bytes,
        headers: Headers | HeaderList,
        http_version: bytes = b"1.1",
    ) -> None:
        self.method = method
        self.target = target
        self.headers = _headers(headers)
        self.http_version = http_version
        self.content_lengths = 0

    def __repr__(self) -> str:
        return f"Request(method={self.method!r}, target={self.target!r}, headers={self.headers!r})"


class _Head:
    __slots__ = ("status_code", "headers", "reason", "http_version")

    def __init__(
        self,
        *,
        status_code: int,
        headers: Headers | HeaderList,
        reason: bytes = b"",
        http_version: bytes = b"1.1",
    ) -> None:
        self.status_code = status_code
        self.headers = _headers(headers)
        self.reason = reason
        self.http_version = http_version

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, headers={self.headers!r})"


class Response(_Head):
    __slots__ = ()


class InformationalResponse(_Head):
    __slots__ = ()


class Data:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Data(data={self.data[:32]!r}{'...' if len(self.data) > 32 else ''})"


class EndOfMessage:
    __slots__ = ("headers",)

    def __init__(self, headers: Headers | HeaderList | None = None) -> None:
        self.headers = _headers(headers if headers is not None else [])

    def __repr__(self) -> str:
        return f"EndOfMessage(headers={self.headers!r})"


class ConnectionClosed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ConnectionClosed()"


Event = Request | Response | InformationalResponse | Data | EndOfMessage | ConnectionClosed
