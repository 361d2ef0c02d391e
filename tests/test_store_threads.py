"""No update is lost when several threads record into the same series at once.

The compiled store releases the GIL for batches (C atomics then race for real) and
records single events with plain atomic adds; the Python twin takes a lock. Both must
end with the exact totals: counts are integers, and the histogram observations are small
integers, so every ``_sum`` is exact in a double whatever the order of the additions.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from conftest import Backend
from test_store_budget import OVERFLOW, charge

THREADS = 4  # recorders; the first test adds a fifth thread that creates series
VALUES = np.arange(8, dtype=np.float64)  # cycles through every bucket of BOUNDS
BOUNDS = (1.0, 3.0, 5.0)  # 0,1 | 2,3 | 4,5 | 6,7 (+Inf): two values per bucket


def _sizes(backend: Backend) -> tuple[int, int, int]:
    """(single events, batches, batch length) per thread: millions in C, fewer in Python."""
    return (500_000, 40, 25_000) if backend.name == "c" else (8_000, 8, 2_000)


@pytest.fixture
def busy_switching() -> Iterator[None]:
    # Switch threads as often as possible so single-event recording interleaves too.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _run(workers: list[Callable[[], None]]) -> None:
    start = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def wrap(work: Callable[[], None]) -> None:
        try:
            start.wait()
            work()
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.usefixtures("busy_switching")
def test_counters_and_histograms_lose_nothing(backend: Backend) -> None:
    singles, batches, length = _sizes(backend)
    store = backend.store.Store()
    req = store.counter("requests_total", "", ("code",))
    dur = store.histogram("duration_ms", "", ("code",), buckets=BOUNDS)
    c = store.series(req, ("200",))
    h = store.series(dur, ("200",))
    c_ids = np.full(length, c, dtype=np.int64)
    h_ids = np.full(length, h, dtype=np.uint32)
    amounts = np.full(length, 3, dtype=np.uint64)
    values = np.resize(VALUES, length)

    def singles_worker() -> None:
        inc, observe = store.inc, store.observe
        for i in range(singles):
            inc(c)
            observe(h, float(i % 8))

    def batch_worker() -> None:
        for _ in range(batches):
            store.inc_many(c_ids, amounts)
            store.observe_many(h_ids, values)

    def mixed_worker() -> None:
        singles_worker()
        batch_worker()

    # New series appear while others record: slots must never move under a writer.
    def grower() -> None:
        for i in range(2_000):
            store.inc(store.series(req, (f"g{i}",)))

    _run([singles_worker, batch_worker, mixed_worker, batch_worker, grower])

    single_threads, batch_threads = 2, 3  # singles + mixed; batch x2 + mixed
    expected_inc = single_threads * singles + batch_threads * batches * length * 3
    assert store.value(c) == expected_inc
    observations = single_threads * singles + batch_threads * batches * length
    counts, total = store.histogram_value(h)
    assert sum(counts) == observations
    assert counts == (observations // 4,) * 4  # singles and length are multiples of 8
    assert total == 3.5 * observations  # mean of 0..7
    assert store.series_count(req) == 2_001
    assert all(store.value(store.series(req, (f"g{i}",))) == 1 for i in range(0, 2_000, 97))


def test_many_threads_on_many_series(backend: Backend) -> None:
    """Each thread batches over all series; the totals per series are exact."""
    _, batches, length = _sizes(backend)
    store = backend.store.Store()
    m = store.counter("c_total", "", ("k",))
    ids = np.array([store.series(m, (str(k),)) for k in range(64)], dtype=np.int32)
    batch = np.resize(ids, length)
    per_batch = np.bincount(batch - ids[0], minlength=64)

    def worker() -> None:
        for _ in range(batches):
            store.inc_many(batch)

    _run([worker] * THREADS)
    got = [store.value(int(s)) for s in ids]
    assert got == [int(n) * batches * THREADS for n in per_batch]


@pytest.mark.usefixtures("busy_switching")
def test_budget_charges_exactly_while_threads_add_series(backend: Backend) -> None:
    """The exposition budget's total is the sum of the charges of the series that exist,
    never over the budget, and every label set is either a series or a counted fold.
    (The compiled store's mutex is raced without the GIL in _core/tests/test_store.c.)"""
    budget, tries = 40_000, 1500
    store = backend.store.Store(max_exposition_bytes=budget)
    metrics = [
        store.counter("c_total", "", ("k",)),
        store.histogram("h", "", ("k",), buckets=(1.0,)),
    ]

    def adder(thread: int) -> Callable[[], None]:
        def work() -> None:
            for i in range(tries):  # quotes: escapes count twice
                store.series(metrics[thread % 2], (f"t{thread}-{i}" + '"' * (i % 3),))

        return work

    _run([adder(t) for t in range(THREADS)])
    kind_of = {"c_total": "counter", "h": "histogram"}
    charged = real = 0
    for name, _, _, _, _, rows in store.snapshot():
        for values, _ in rows if name in kind_of else []:
            if values != (OVERFLOW,):
                charged += charge(kind_of[name], name, ("k",), values, (1.0,))
                real += 1
    assert charged == store.exposition_bytes() <= budget
    assert real == sum(store.series_count(m) for m in metrics)
    folds = sum(store.budget_overflow_count(m) for m in metrics)
    assert folds > 0 and folds + real == THREADS * tries
