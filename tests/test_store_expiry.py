"""Idle-series expiry (docs/store.md, "Idle-series expiry") on both backends.

``expire_idle()`` is one tick: series recorded (or created) since the previous tick
stay visible, the others leave ``render()``/``snapshot()`` until their next record.
Expected expositions come from an independent oracle where one is needed: a second
store holding only the series that should still show, or prometheus_client's parser.
"""

from __future__ import annotations

import itertools
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from conftest import Backend
from exposition_support import openmetrics_samples, text_samples

from meshstats.errors import InvalidSampleError, UnknownSeriesError

OVERFLOW_FAMILY = "meshstats_series_overflow_total"


def both_formats(store: Any) -> tuple[bytes, bytes]:
    return store.render(), store.render(openmetrics=True)


def sample_names(store: Any) -> set[str]:
    return {name for name, _ in text_samples(store.render())}


def labels_shown(store: Any, metric_name: str) -> list[tuple[str, ...]]:
    for name, _kind, _help, _labels, _buckets, series in store.snapshot():
        if name == metric_name:
            return [values for values, _ in series]
    raise AssertionError(f"{metric_name} missing from the snapshot")


# -- one tick at a time ------------------------------------------------------------------


def test_new_series_survive_one_sweep_and_go_at_the_second(backend: Backend) -> None:
    store = backend.store.Store()
    m = store.counter("c_total", "C.", ("k",))
    sid = store.series(m, ("a",))
    assert store.expire_idle() == 0  # created since the last sweep counts as recorded
    assert labels_shown(store, "c_total") == [("a",)]
    assert store.expire_idle() == 1
    assert labels_shown(store, "c_total") == []
    assert store.expire_idle() == 0  # already hidden: not hidden again
    assert store.value(sid) == 0 and store.labels(sid) == ("a",)  # the id still works


def test_a_series_recorded_every_interval_never_goes(backend: Backend) -> None:
    store = backend.store.Store()
    c = store.series(store.counter("c_total", "", ("k",)), ("a",))
    g = store.series(store.gauge("g", "", ("k",)), ("a",))
    h = store.series(store.histogram("h", "", ("k",), buckets=(1.0,)), ("a",))
    for i in range(5):
        store.inc(c)
        store.set(g, float(i))
        store.observe(h, 0.5)
        assert store.expire_idle() == 0
    assert store.snapshot() == [
        ("c_total", "counter", "", ("k",), (), [(("a",), 5)]),
        ("g", "gauge", "", ("k",), (), [(("a",), 4.0)]),
        ("h", "histogram", "", ("k",), (1.0,), [(("a",), ((5, 0), 2.5))]),
    ]


def test_only_idle_series_go_and_the_rest_render_as_without_them(backend: Backend) -> None:
    store = backend.store.Store()
    oracle = backend.store.Store()  # the same store, never holding the idle series
    for s in (store, oracle):
        s.counter("req_total", "Requests.", ("code",))
        s.histogram("dur", "Duration.", ("code",), buckets=(1.0, 10.0))
    ids = {code: (store.series(0, (code,)), store.series(1, (code,))) for code in "123"}
    kept = {code: (oracle.series(0, (code,)), oracle.series(1, (code,))) for code in "13"}
    store.expire_idle()
    for code, (c, h) in ids.items():
        if code != "2":  # series "2" stays idle
            store.inc(c, int(code))
            store.observe(h, float(code) * 3)
            oracle.inc(kept[code][0], int(code))
            oracle.observe(kept[code][1], float(code) * 3)
    assert store.expire_idle() == 2  # req_total{code="2"} and dur{code="2"}
    assert both_formats(store) == both_formats(oracle)
    assert store.snapshot() == oracle.snapshot()


def test_a_record_shows_the_series_again_with_its_value_continued(backend: Backend) -> None:
    store = backend.store.Store()
    c = store.series(store.counter("c_total", "", ("k",)), ("a",))
    g = store.series(store.gauge("g", "", ("k",)), ("a",))
    h = store.series(store.histogram("h", "", ("k",), buckets=(1.0,)), ("a",))
    store.inc(c, 5)
    store.set(g, 2.5)
    store.observe(h, 3.0)
    store.expire_idle()
    assert store.expire_idle() == 3
    assert sample_names(store) == set()
    store.inc(c, 2)  # counters are not reset: rate() over the gap stays right
    assert text_samples(store.render()) == {("c_total", (("k", "a"),)): 7.0}
    store.set(g, 1.0)
    store.observe(h, 0.5)
    assert store.snapshot() == [
        ("c_total", "counter", "", ("k",), (), [(("a",), 7)]),
        ("g", "gauge", "", ("k",), (), [(("a",), 1.0)]),
        ("h", "histogram", "", ("k",), (1.0,), [(("a",), ((1, 1), 3.5))]),
    ]
    assert store.expire_idle() == 0  # just recorded: survives the next sweep


def test_a_zero_increment_is_a_record(backend: Backend) -> None:
    store = backend.store.Store()
    c = store.series(store.counter("c_total"), ())
    store.expire_idle()
    store.expire_idle()
    store.inc(c, 0)
    assert text_samples(store.render()) == {("c_total", ()): 0.0}


def test_failed_records_do_not_show_a_series(backend: Backend) -> None:
    store = backend.store.Store()
    c = store.series(store.counter("c_total"), ())
    h = store.series(store.histogram("h", buckets=(1.0,)), ())
    store.expire_idle()
    store.expire_idle()
    with pytest.raises(InvalidSampleError):
        store.inc(c, -1)
    with pytest.raises(InvalidSampleError):
        store.observe(h, float("nan"))
    with pytest.raises(InvalidSampleError):
        store.observe(c, 1.0)  # wrong kind
    with pytest.raises(InvalidSampleError):  # all-or-nothing: ids[1] is a histogram
        store.inc_many(np.array([c, h]))
    with pytest.raises(InvalidSampleError):
        store.observe_many(np.array([h, h]), np.array([1.0, float("nan")]))
    assert sample_names(store) == set()


def test_looking_a_series_up_does_not_show_it(backend: Backend) -> None:
    store = backend.store.Store()
    m = store.counter("c_total", "", ("k",))
    sid = store.series(m, ("a",))
    store.expire_idle()
    store.expire_idle()
    assert store.series(m, ("a",)) == sid  # ids stay valid and stable
    assert store.value(sid) == 0 and store.metric_of(sid) == m
    assert labels_shown(store, "c_total") == []


# -- families, counts and the overflow series ------------------------------------------


def test_families_whose_series_all_went_print_as_empty_families(backend: Backend) -> None:
    store = backend.store.Store()
    empty = backend.store.Store()  # same metrics, never any series: the oracle
    for s in (store, empty):
        s.counter("req_total", 'Requests "all".', ("code",))
        s.gauge("up", "Up.\n", ())
        s.histogram("dur", "Duration.", ("code",))
    store.inc(store.series(0, ("200",)))
    store.set(store.series(1, ()), 1.0)
    store.observe(store.series(2, ("200",)), 7.0)
    store.expire_idle()
    assert store.expire_idle() == 3
    assert both_formats(store) == both_formats(empty)
    assert store.snapshot() == empty.snapshot()
    assert [entry[5] for entry in store.snapshot()] == [[], [], []]


def test_series_count_keeps_counting_and_visible_series_count_drops(backend: Backend) -> None:
    store = backend.store.Store()
    m = store.counter("c_total", "", ("k",))
    other = store.gauge("g", "", ("k",))
    ids = [store.series(m, (str(i),)) for i in range(4)]
    g = store.series(other, ("x",))
    assert store.visible_series_count(m) == 4
    store.expire_idle()
    store.inc(ids[0])
    store.set(g, 1.0)
    assert store.expire_idle() == 3
    assert (store.series_count(m), store.visible_series_count(m)) == (4, 1)
    assert store.visible_series_count(other) == 1
    store.inc_many(np.array(ids[1:3], dtype=np.uint32))
    assert store.visible_series_count(m) == 3
    assert labels_shown(store, "c_total") == [("0",), ("1",), ("2",)]


def test_visible_series_count_of_an_unknown_metric(backend: Backend) -> None:
    store = backend.store.Store()
    store.counter("c_total")
    for bad in (1, -1, "0", None):
        with pytest.raises(UnknownSeriesError):
            store.visible_series_count(bad)


def test_the_overflow_series_expires_but_the_overflow_family_stays(backend: Backend) -> None:
    store = backend.store.Store()
    m = store.counter("c_total", "", ("k",), max_series=1)
    real = store.series(m, ("a",))
    folded = store.series(m, ("b",))  # folded into the overflow series
    store.inc(folded, 3)
    store.expire_idle()
    store.inc(real)
    assert store.expire_idle() == 1  # the overflow series
    overflow_line = (OVERFLOW_FAMILY, (("metric", "c_total"),))
    assert text_samples(store.render()) == {("c_total", (("k", "a"),)): 1.0, overflow_line: 1.0}
    assert store.expire_idle() == 1  # the real one; the overflow family is never hidden
    assert text_samples(store.render()) == {overflow_line: 1.0}
    assert openmetrics_samples(store.render(openmetrics=True)) == {overflow_line: 1.0}
    assert [e[0] for e in store.snapshot()] == ["c_total", OVERFLOW_FAMILY]
    # Folding again is a lookup, not a record: the overflow series stays hidden.
    assert store.series(m, ("c",)) == folded
    assert store.overflow_count(m) == 2 and store.visible_series_count(m) == 0
    store.inc(folded)
    assert text_samples(store.render()) == {
        ("c_total", (("k", "__overflow__"),)): 4.0,
        overflow_line: 2.0,
    }
    assert store.visible_series_count(m) == 0  # counts real series only, like series_count


def test_batches_show_their_series_again(backend: Backend) -> None:
    store = backend.store.Store()
    m = store.counter("c_total", "", ("k",))
    h = store.histogram("h", "", ("k",), buckets=(1.0,))
    cs = [store.series(m, (k,)) for k in "abc"]
    hs = [store.series(h, (k,)) for k in "abc"]
    store.inc_many(np.array(cs), np.array([1, 2, 3]))
    store.observe_many(np.array(hs), np.array([0.5, 2.0, 0.5]))
    store.expire_idle()
    assert store.expire_idle() == 6
    store.inc_many(np.array([cs[2], cs[0]], dtype=np.int32), np.array([10, 10], dtype=np.uint64))
    store.observe_many(np.array([hs[1]], dtype=np.uint64), np.array([3], dtype=np.int64))
    assert labels_shown(store, "c_total") == [("a",), ("c",)]
    assert labels_shown(store, "h") == [("b",)]
    assert store.value(cs[0]) == 11 and store.value(cs[2]) == 13
    assert store.histogram_value(hs[1]) == ((0, 2), 5.0)
    store.inc_many(np.array([cs[1]]))  # amounts=None: 1 each
    assert store.visible_series_count(m) == 3


def test_series_created_after_a_sweep_are_not_hidden_by_the_next(backend: Backend) -> None:
    store = backend.store.Store()
    m = store.counter("c_total", "", ("k",))
    old = store.series(m, ("old",))
    store.expire_idle()
    store.series(m, ("new",))
    assert store.expire_idle() == 1
    assert labels_shown(store, "c_total") == [("new",)]
    store.inc(old)
    assert labels_shown(store, "c_total") == [("old",), ("new",)]  # series-id order kept


def test_expire_idle_on_an_empty_store(backend: Backend) -> None:
    store = backend.store.Store()
    assert store.expire_idle() == 0
    store.gauge("g")
    assert store.expire_idle() == 0
    assert store.render() == b"# HELP g \n# TYPE g gauge\n"


# -- threads -------------------------------------------------------------------------------


@pytest.fixture
def busy_switching() -> Iterator[None]:
    # Switch threads as often as possible so records interleave with the sweeps.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.mark.usefixtures("busy_switching")
def test_recording_while_another_thread_sweeps_loses_nothing(backend: Backend) -> None:
    rounds = 100_000 if backend.name == "c" else 4_000  # multiples of 8
    keys = [str(k) for k in range(8)]
    store = backend.store.Store()
    req = store.counter("req_total", "", ("k",))
    dur = store.histogram("dur", "", ("k",), buckets=(1.0, 3.0))
    cs = [store.series(req, (k,)) for k in keys]
    hs = [store.series(dur, (k,)) for k in keys]
    c_batch, h_batch = np.array(cs, dtype=np.int64), np.array(hs, dtype=np.uint32)
    twos = np.full(len(keys), 2.0)
    stop = threading.Event()
    errors: list[BaseException] = []
    sweeps = 0

    def recorder() -> None:
        inc, observe = store.inc, store.observe
        for i in range(rounds):
            k = i % len(keys)
            inc(cs[k])
            observe(hs[k], 2.0)
            if i % 64 == 0:
                store.inc_many(c_batch)
                store.observe_many(h_batch, twos)

    def sweeper() -> None:
        nonlocal sweeps
        while not stop.is_set():
            store.expire_idle()
            store.render()  # a scrape racing the records and the sweeps
            sweeps += 1

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # re-raised in the main thread below
                errors.append(exc)

        return run

    recorders = [threading.Thread(target=guarded(recorder)) for _ in range(3)]
    sweep_thread = threading.Thread(target=guarded(sweeper))
    sweep_thread.start()
    for t in recorders:
        t.start()
    for t in recorders:
        t.join()
    stop.set()
    sweep_thread.join()
    if errors:
        raise errors[0]
    assert sweeps > 0

    per_key = 3 * (rounds // len(keys) + len(range(0, rounds, 64)))
    assert [store.value(c) for c in cs] == [per_key] * len(keys)
    assert [store.histogram_value(h) for h in hs] == [((0, per_key, 0), 2.0 * per_key)] * len(keys)
    # Quiet now: two sweeps hide everything, one more record each shows all of it exactly.
    store.expire_idle()
    store.expire_idle()
    assert store.visible_series_count(req) == 0 and store.visible_series_count(dur) == 0
    for c, h in zip(cs, hs):
        store.inc(c)
        store.observe(h, 0.0)
    samples = text_samples(store.render())
    assert {v for (name, _), v in samples.items() if name == "req_total"} == {per_key + 1.0}
    assert {v for (name, _), v in samples.items() if name == "dur_count"} == {per_key + 1.0}
    assert len(samples) == len(keys) * (1 + 3 + 2)  # counter; 3 buckets, _sum, _count


# -- the compiled hot path stays allocation-free on its unhide branch ----------------------


@pytest.mark.c_extension
def test_recording_on_hidden_series_allocates_nothing(c_backend: Backend) -> None:
    store = c_backend.store.Store()
    c = store.series(store.counter("c_total"), ())
    h = store.series(store.histogram("h"), ())
    inc, observe, expire = store.inc, store.observe, store.expire_idle
    calls = 5_000

    def empty() -> None:
        for _ in itertools.repeat(None, calls):
            expire()
            expire()

    def records() -> None:
        # Each round hides both series, then both records take the "not active" branch.
        for _ in itertools.repeat(None, calls):
            expire()
            expire()
            inc(c)
            observe(h, 12.5)

    def peak(loop: Callable[[], None]) -> int:
        loop()  # warm-up, as in test_store_c_hotpath
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            loop()
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    recorded = peak(records)
    assert store.value(c) == 2 * calls
    assert store.visible_series_count(0) == 1  # the last inc showed it again
    assert recorded == peak(empty)
