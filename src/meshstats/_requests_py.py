"""The per-request fast path, pure Python: the same API and results as ``_requests_c``.

>>> from meshstats._store_py import Store
>>> store = Store()
>>> req = store.counter("r_total", "", ("code",))
>>> table = RequestTable(store)
>>> table.put(200, None, None, "http", "reviews:9080", [(store.series(req, ("200",)),
...                                                     "counter", "one")])
True
>>> table.record(200, None, None, "http", "reviews:9080", 12.0, 420, 3100), table.hits
(True, 1)

A dict keyed on the raw arguments, normalised exactly as the compiled table keys them, so
both backends hit and miss on the same calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .errors import InvalidSampleError, UnknownSeriesError

__all__ = ["RequestTable", "HitCounter", "BLOCK_MAX"]

#: Most series one request's block can hold (the standard HTTP metrics need 4).
BLOCK_MAX = 8
_MAX_STRING = 1024  # bytes of UTF-8 per key string, as request_table.h
_INT64 = (-(2**63), 2**63 - 1)
_VALUES = {"one": 0, "duration": 1, "request_bytes": 2, "response_bytes": 3,
           "request_messages": 4, "response_messages": 5}  # fmt: skip
_KINDS = ("counter", "gauge", "histogram")

Block = Sequence[tuple[int, str, str]]


def _holds(store: Any, sid: int, kind: str) -> bool:
    """Whether ``store`` holds series ``sid`` of ``kind``: the pure stores' own check (the
    slow path of their recorders, which a shared store also syncs its series for), its
    error taken for no. The pure table is only ever given a pure store."""
    try:
        store._series_arg(sid, _KINDS.index(kind), "record")
    except (UnknownSeriesError, InvalidSampleError):
        return False
    return True


def _int64(value: object) -> bool:
    return type(value) is int and _INT64[0] <= value <= _INT64[1]


def _text(value: object) -> bytes | None:
    if type(value) is not str:
        return None
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _number(value: object) -> float | None:
    if type(value) is float:
        out = value
    elif type(value) is int:
        try:
            out = float(value)
        except OverflowError:
            return None
    else:
        return None
    return out if math.isfinite(out) else None


def _key(
    code: object, grpc_status: object, flags: object, protocol: object, host: object
) -> tuple[Any, ...] | None:
    if not _int64(code):
        return None
    if grpc_status is not None and (not _int64(grpc_status) or grpc_status == _INT64[0]):
        return None
    if flags is None:
        flags_key: tuple[Any, ...] = ("none",)
    elif _int64(flags):
        flags_key = ("bits", flags)
    else:
        text = _text(flags)
        if text is None:
            return None
        flags_key = ("text", text)
    proto = _text(protocol)
    if proto is None:
        return None
    host_key = None if host is None else _text(host)
    if host is not None and host_key is None:
        return None
    return (code, grpc_status, flags_key, proto, host_key)


class HitCounter:
    """Hits of many tables in one number (an engine's ``series_hits``)."""

    def __init__(self) -> None:
        self.value = 0


class RequestTable:
    """A request's raw arguments -> the series ids of all of its metrics."""

    def __init__(
        self, store: Any, max_entries: int = 4096, counter: HitCounter | None = None
    ) -> None:
        if not 1 <= max_entries <= 2**30 - 1:
            raise MemoryError("cannot allocate a RequestTable")
        self._store = store
        self._counter = counter
        self._max = max_entries
        self._blocks: dict[tuple[Any, ...], list[tuple[int, str, int]]] = {}
        self.hits = 0

    def __len__(self) -> int:
        return len(self._blocks)

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
        """Record one request into its key's block; False when the key is not known (the
        block lacks an entry for a message count that is not 0, ...)."""
        key = _key(code, grpc_status, flags, protocol, host)
        if key is None:
            return False
        if duration_ms is None:
            duration = math.nan
        else:
            found = _number(duration_ms)
            if found is None:
                return False
            duration = math.trunc(found) + 0.0
        req, resp = _number(request_bytes), _number(response_bytes)
        req_msgs, resp_msgs = _number(request_messages), _number(response_messages)
        if req is None or resp is None or req_msgs is None or resp_msgs is None:
            return False
        block = self._blocks.get(key)
        if block is None:
            return False
        values = (1.0, duration, req, resp, req_msgs, resp_msgs)
        have = {value for _, _, value in block}
        if (req_msgs != 0 and 4 not in have) or (resp_msgs != 0 and 5 not in have):
            return False  # a block kept by record_request alone would drop the count
        # Checked first, as the compiled table does: a block is recorded whole or not at all,
        # an id the store does not hold or of another kind included.
        store = self._store
        for sid, kind, value in block:
            v = values[value]
            if kind == "counter":
                if v == 0:
                    continue
                if not (v > 0) or v != math.floor(v) or v >= 2.0**64:
                    return False
            elif math.isnan(v):
                continue
            if sid < 0 or not _holds(store, sid, kind):
                return False
        for sid, kind, value in block:
            v = values[value]
            if kind == "counter":
                if v != 0:
                    store.inc(sid, int(v))
            elif not math.isnan(v):
                if kind == "histogram":
                    store.observe(sid, v)
                else:
                    store.set(sid, v)
        self.hits += 1
        if self._counter is not None:
            self._counter.value += 1
        return True

    def put(
        self, code: object, grpc_status: object, flags: object, protocol: object, host: object,
        block: Block,
    ) -> bool:  # fmt: skip
        """Keep ``block`` for this key; False when the key cannot be kept."""
        if len(block) > BLOCK_MAX:
            raise ValueError(f"block: at most {BLOCK_MAX} series, got {len(block)}")
        key = _key(code, grpc_status, flags, protocol, host)
        if key is None:
            return False
        entries = []
        for sid, kind, value in block:
            if kind not in _KINDS:
                raise KeyError(kind)
            entries.append((sid if sid >= 0 else -1, kind, _VALUES[value]))
        if key in self._blocks:
            self._blocks[key] = entries
            return True
        strings = [key[3]] + [k for k in (key[2][-1], key[4]) if isinstance(k, bytes)]
        if len(self._blocks) >= self._max or any(len(s) > _MAX_STRING for s in strings):
            return False
        self._blocks[key] = entries
        return True
