"""The compiled single-event recorders create no Python objects (docs/store.md, hot path).

tracemalloc sees every Python allocation; a loop of calls must peak no higher than the
same loop doing nothing, so even a temporary freed at once (a boxed int, a bound method,
an argument tuple) would show up.
"""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable

import pytest
from conftest import Backend

pytestmark = pytest.mark.c_extension
CALLS = 20_000


def _peak(loop: Callable[[], None]) -> int:
    loop()  # warm caches (method lookups, specialised bytecode) before measuring
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        loop()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_inc_set_observe_allocate_nothing(c_backend: Backend) -> None:
    store = c_backend.store.Store()
    c = store.series(store.counter("c_total", "", ("k",)), ("x",))
    g = store.series(store.gauge("g", "", ("k",)), ("x",))
    h = store.series(store.histogram("h", "", ("k",)), ("x",))
    inc, set_, observe = store.inc, store.set, store.observe
    big, v = 2**40, 12.5

    def empty() -> None:
        for _ in itertools.repeat(None, CALLS):
            pass

    def incs() -> None:
        for _ in itertools.repeat(None, CALLS):
            inc(c)
            inc(c, big)

    def sets() -> None:
        for _ in itertools.repeat(None, CALLS):
            set_(g, v)

    def observes() -> None:
        for _ in itertools.repeat(None, CALLS):
            observe(h, v)

    floor = _peak(empty)
    assert [_peak(f) for f in (incs, sets, observes)] == [floor] * 3
    assert store.value(c) == 2 * CALLS * (1 + big)  # warm-up run included


def test_a_request_on_the_fast_path_allocates_nothing(c_backend: Backend) -> None:
    """record_request for a known peer and key: the Python call, the table lookup and the
    four store updates create no Python object, not even a temporary."""
    from meshstats import StatsEngine

    engine = StatsEngine({"WORKLOAD_NAME": "pp"}, store=c_backend.store.Store())
    peer = engine.peer("outbound", {"WORKLOAD_NAME": "reviews-v2"})
    record = engine.record_request
    host, flags = "reviews:9080", "UF"

    def empty() -> None:
        for _ in itertools.repeat(None, CALLS):
            pass

    def requests() -> None:
        for _ in itertools.repeat(None, CALLS):
            record(peer, response_code=200, duration_ms=12.5, request_bytes=420,
                   response_bytes=3100, host=host)  # fmt: skip
            record(peer, response_code=503, duration_ms=None, request_bytes=420,
                   response_bytes=0, host=host, response_flags=flags)  # fmt: skip

    requests()  # the first request of each key resolves its series (and allocates)
    hits = engine.cache_stats()["series_hits"]
    assert _peak(requests) == _peak(empty)
    assert engine.cache_stats()["series_hits"] == hits + 4 * CALLS  # all on the table
