"""The sidecar's HTTP/2 connection (a lean, sans-I/O ``h2``): its backend, selected once at
import (see ``meshstats._backend``).

``Connection`` is ``_h2_conn_c``'s when the compiled modules are in use, else the pure
twin's (``_h2_conn_py``, which says what each step does and where it follows h2).

>>> server, client = Connection(client=False), Connection(client=True)
>>> client.initiate_connection(); server.initiate_connection()
>>> client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"),
...                         (b":path", b"/"), (b":authority", b"a")], end_stream=True)
>>> [type(event).__name__ for event in server.receive_data(client.data_to_send())]
['RemoteSettingsChanged', 'RequestReceived', 'StreamEnded']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._backend import load

if TYPE_CHECKING:
    COMPILED: bool
    from ._h2_conn_py import Connection
else:
    _impl, COMPILED = load("proxy._h2_conn_c", "proxy._h2_conn_py")
    Connection = _impl.Connection

__all__ = ["COMPILED", "Connection"]
