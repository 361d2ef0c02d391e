"""The per-request fast path, compiled (Cython over ``_core/request_table.c``); the same API
as ``_requests_py``.

>>> from meshstats._store_c import Store
>>> from meshstats._requests_c import RequestTable
>>> table = RequestTable(Store())
>>> table.record(200, None, None, "http", None, 1.0, 0, 0)  # nothing kept yet
False
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._store_c import Store

__all__ = ["RequestTable", "HitCounter", "BLOCK_MAX", "record_request"]

#: Most series one request's block can hold (the standard HTTP metrics need 4).
BLOCK_MAX: int

class HitCounter:
    """Hits of many tables in one number (an engine's ``series_hits``), counted in C."""

    @property
    def value(self) -> int: ...

class RequestTable:
    """A request's raw arguments -> the series ids of all of its metrics.

    ``put`` keeps a block of ``(series id or -1, kind, value)`` for a key, ``record`` records
    one request into its key's block in one C call and says whether it could.
    """

    #: Requests recorded through the table.
    hits: int

    def __init__(
        self, store: Store, max_entries: int = 4096, counter: HitCounter | None = None
    ) -> None: ...
    def __len__(self) -> int: ...
    def record(
        self,
        code: object,
        grpc_status: object,
        flags: object,
        protocol: object,
        host: object,
        duration_ms: object,
        request_bytes: object,
        response_bytes: object,
        request_messages: object = 0,
        response_messages: object = 0,
    ) -> bool:
        """Record into the key's block; False when the key is unknown or not keyable, or
        the block lacks a series this event needs (or an entry for a message count that is
        not 0: a gRPC call's counts are recorded with it when its block carries them)."""

    def put(
        self,
        code: object,
        grpc_status: object,
        flags: object,
        protocol: object,
        host: object,
        block: Sequence[tuple[int, str, str]],
    ) -> bool:
        """Keep ``block`` for the key; False when it cannot be kept (not keyable, a string
        over 1 KiB, the table full)."""

def record_request(
    self: Any,
    peer: Any,
    *,
    response_code: int = 0,
    duration_ms: float | None = None,
    request_bytes: int = 0,
    response_bytes: int = 0,
    host: str | None = None,
    grpc_status: int | None = None,
    response_flags: int | Iterable[str] | str | None = None,
    protocol: str | None = None,
    content_type: str | None = None,
    method: str | None = None,
    path: str | None = None,
    request_protocol: str | None = None,
    headers: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """``StatsEngine.record_request`` compiled, which the engine uses in its place when
    this module is built: the same code, with the keywords parsed in C and the compiled
    table called directly (a live sidecar calls it with cold caches, where the Python
    frame and lookups on the way to the table cost more than the recording)."""
