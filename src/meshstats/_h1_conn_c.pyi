"""The sidecar's HTTP/1.1 connection, compiled; the same API as ``_h1_conn_py``.

>>> from meshstats._h1_events import SERVER
>>> conn = Connection(SERVER)
>>> conn.receive_data(b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
>>> conn.next_event().target
b'/'
"""

from typing import Any

from ._h1_events import Role, State

__all__ = ["Connection"]

class Connection:
    """One end of an HTTP/1.1 connection: bytes in, events out, events in, bytes out."""

    @property
    def our_role(self) -> Role: ...
    @property
    def their_role(self) -> Role: ...
    our_state: State
    their_state: State
    their_http_version: bytes | None
    they_are_waiting_for_100_continue: bool

    def __init__(self, role: Role) -> None: ...
    @property
    def trailing_data(self) -> tuple[bytes, bool]: ...
    def unparsed(self) -> int: ...
    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> Any: ...
    def send(self, event: Any) -> bytes: ...
    def start_next_cycle(self) -> None: ...
