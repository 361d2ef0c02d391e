"""The compiled store and the pure-Python twin agree: same ids, same errors, same bytes.

Hypothesis drives both through one random sequence of calls (valid and invalid) and
compares every result, the error class *and message* of every failure (both backends word
their errors through ``meshstats._messages``), and at the end the snapshots and both
expositions byte for byte. There is no float tolerance: both must do the same
IEEE additions in the same order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from conftest import Backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.c_extension

NAMES = [
    "a_total", "a", "b", "lat_ms", "meshstats_series_overflow_total", "bad-name", "c_total",
    "meshstats_exposition_budget_overflow",
]  # fmt: skip
LABELS = [(), ("k",), ("k", "v"), ("le",), ("__x",), ("k", "k")]
VALUES = ["", "x", "y", 'q"\\\n', "日本", "__overflow__"]
floats_any = st.floats() | st.sampled_from([0.5, 1.0, -0.0, 3600000.0, math.nextafter(1.0, 2.0)])
buckets = st.lists(st.floats(-10, 1e7) | st.sampled_from([math.inf, math.nan]), max_size=4)

op = st.one_of(
    st.tuples(
        st.just("register"),
        st.sampled_from(["counter", "gauge", "histogram"]),
        st.sampled_from(NAMES),
        st.sampled_from(LABELS),
        buckets,
        st.integers(0, 3),
    ),
    st.tuples(
        st.just("series"),
        st.integers(-1, 6),
        st.lists(st.sampled_from(VALUES) | st.just(1), max_size=3),
    ),
    # Series that usually exist: one of the first metrics, as many values as its likely
    # label names (the arbitrary form above almost never matches a metric's arity).
    *[
        st.tuples(
            st.just("series"),
            st.integers(0, 2),
            st.lists(st.sampled_from(VALUES), min_size=n, max_size=n),
        )
        for n in (1, 1, 2)
    ],
    st.tuples(
        st.just("register"),
        st.just("counter"),
        st.just("c_total"),
        st.just(("k",)),
        st.just([]),
        st.just(0),
    ),  # fmt: skip
    st.tuples(
        st.just("register"),
        st.just("histogram"),
        st.just("lat_ms"),
        st.just(("k",)),
        st.just([1.0, 5.0]),
        st.just(0),
    ),  # fmt: skip
    st.tuples(st.just("inc"), st.integers(-1, 12), st.integers(-1, 2**64)),
    st.tuples(st.just("set"), st.integers(-1, 12), floats_any),
    st.tuples(st.just("observe"), st.integers(-1, 12), floats_any),
    st.tuples(
        st.just("inc_many"),
        st.lists(st.integers(-1, 12), max_size=6),
        st.sampled_from(["int64", "uint32", "none", "negative"]),
    ),
    st.tuples(
        st.just("observe_many"),
        st.lists(st.integers(-1, 12), max_size=6),
        st.lists(floats_any, min_size=6, max_size=6),
    ),
)


def outcome_of(exc: Exception) -> tuple[Any, ...]:
    return (
        type(exc).__name__,
        str(exc),
        getattr(exc, "name", None),
        getattr(exc, "series_id", None),
    )


def apply(store: Any, step: tuple[Any, ...]) -> Any:
    """Run one step; the outcome is the result, or the error class (and name if any)."""
    try:
        kind = step[0]
        if kind == "register":
            _, metric_kind, name, labels, bounds, max_series = step
            kwargs: dict[str, Any] = {"max_series": max_series or None}
            if metric_kind == "histogram":
                kwargs["buckets"] = bounds
            return getattr(store, metric_kind)(name, "help", labels, **kwargs)
        if kind == "series":
            return store.series(step[1], tuple(step[2]))
        if kind == "inc":
            return store.inc(step[1], step[2])
        if kind == "set":
            return store.set(step[1], step[2])
        if kind == "observe":
            return store.observe(step[1], step[2])
        if kind == "inc_many":
            ids = step[1]
            if step[2] == "none":
                return store.inc_many(np.array(ids, dtype=np.int64))
            if step[2] == "negative":
                amounts = np.arange(len(ids), dtype=np.int64) - 1
                return store.inc_many(np.array(ids, dtype=np.int64), amounts)
            dtype = np.dtype(step[2])
            safe = [max(i, 0) for i in ids] if dtype.kind == "u" else ids
            amounts = np.arange(len(ids), dtype=dtype) * 7
            return store.inc_many(np.array(safe, dtype=dtype), amounts)
        ids, values = step[1], step[2][: len(step[1])]
        return store.observe_many(np.array(ids, dtype=np.int32), np.array(values))
    except Exception as exc:  # class, message and attributes: all must agree
        return outcome_of(exc)


def state(store: Any) -> tuple[str, bytes, bytes, int, int]:
    # repr() keeps NaN comparable and shows every float exactly.
    return (
        repr(store.snapshot()),
        store.render(),
        store.render(openmetrics=True),
        store.exposition_bytes(),
        store.max_exposition_bytes,
    )


# Exposition budgets that bite after a few series (the metrics here charge ~30-600 bytes
# a series), and two that never do (the second clamped to 2**64 - 1 by both).
budgets = st.integers(1, 3000) | st.sampled_from([2**64 - 1, 2**70])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(op, min_size=8, max_size=40), default=st.integers(1, 3), budget=budgets)
def test_backends_agree(
    c_backend: Backend,
    py_backend: Backend,
    steps: list[tuple[Any, ...]],
    default: int,
    budget: int,
) -> None:
    c_store = c_backend.store.Store(default_max_series=default, max_exposition_bytes=budget)
    py_store = py_backend.store.Store(default_max_series=default, max_exposition_bytes=budget)
    for step in steps:
        assert apply(c_store, step) == apply(py_store, step), step
        assert c_store.exposition_bytes() == py_store.exposition_bytes(), step
    assert state(c_store) == state(py_store)
    for metric in range(8):
        for method in ("series_count", "overflow_count", "budget_overflow_count"):
            try:
                c_result: Any = getattr(c_store, method)(metric)
            except Exception as exc:
                c_result = outcome_of(exc)
            try:
                py_result: Any = getattr(py_store, method)(metric)
            except Exception as exc:
                py_result = outcome_of(exc)
            assert c_result == py_result, (method, metric)
    for sid in range(14):
        for method in ("value", "histogram_value", "labels", "metric_of"):
            outcomes = []
            for store in (c_store, py_store):
                try:
                    outcomes.append(repr(getattr(store, method)(sid)))
                except Exception as exc:
                    outcomes.append(repr(outcome_of(exc)))
            assert outcomes[0] == outcomes[1], (method, sid)


def test_same_bytes_for_an_istio_like_workload(c_backend: Backend, py_backend: Backend) -> None:
    stores = [c_backend.store.Store(), py_backend.store.Store()]
    for store in stores:
        req = store.counter("istio_requests_total", "Requests.", ("code", "peer"))
        dur = store.histogram("istio_request_duration_milliseconds", "Duration.", ("code",))
        codes = ["200", "404", "503"]
        req_ids = np.array([store.series(req, (c, p)) for c in codes for p in "ab"])
        dur_ids = np.array([store.series(dur, (c,)) for c in codes])
        rng = np.random.default_rng(1)  # the same draws for both stores
        store.inc_many(rng.choice(req_ids, 5000), rng.integers(0, 3, 5000))
        store.observe_many(rng.choice(dur_ids, 5000), rng.lognormal(3, 2, 5000))
    assert stores[0].render() == stores[1].render()
    assert stores[0].render(openmetrics=True) == stores[1].render(openmetrics=True)


# ---- random definitions, random Unicode label values, typed and strided batches --------

label_value = st.text(
    st.characters(codec="utf-8") | st.sampled_from(['"', "\\", "\n"]),
    max_size=6,
) | st.just("__overflow__")
metric_def = st.tuples(
    st.sampled_from(["counter", "gauge", "histogram"]),
    st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,6}", fullmatch=True),
    st.text(max_size=12),
    st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,4}", fullmatch=True), max_size=3, unique=True),
    st.lists(st.floats(-1e6, 1e9), min_size=1, max_size=5, unique=True).map(sorted),
    st.integers(1, 4),
)
INT_DTYPES = ["int32", "int64", "uint32", "uint64"]
VALUE_DTYPES = ["float64", "float32", *INT_DTYPES]
event = st.one_of(
    st.tuples(st.just("series"), st.integers(0, 3), st.lists(label_value, max_size=3)),
    st.tuples(st.just("inc"), st.integers(0, 20), st.integers(0, 2**40)),
    st.tuples(st.just("set"), st.integers(0, 20), st.floats(allow_nan=True)),
    st.tuples(st.just("observe"), st.integers(0, 20), st.floats(allow_nan=False)),
    st.tuples(
        st.just("inc_many"),
        st.lists(st.integers(0, 20), max_size=8),
        st.sampled_from(INT_DTYPES),
        st.sampled_from(INT_DTYPES + ["none"]),
        st.booleans(),
    ),
    st.tuples(
        st.just("observe_many"),
        st.lists(st.integers(0, 20), max_size=8),
        st.sampled_from(INT_DTYPES),
        st.sampled_from(VALUE_DTYPES),
        st.booleans(),
        st.lists(st.floats(-1e6, 1e6), min_size=8, max_size=8),
    ),
)


def _array(items: list[Any], dtype: str, strided: bool) -> Any:
    """A read-only array, every other element of a larger one when ``strided``."""
    arr = np.array(items, dtype=dtype)
    if strided:
        wide = np.zeros(2 * len(items), dtype=dtype)
        wide[::2] = arr
        arr = wide[::2]
    arr.flags.writeable = False
    return arr


def play(store: Any, defs: list[tuple[Any, ...]], events: list[tuple[Any, ...]]) -> list[Any]:
    outcomes: list[Any] = []

    def attempt(call: Any) -> None:
        try:
            outcomes.append(call())
        except Exception as exc:
            outcomes.append(outcome_of(exc))

    for kind, name, help_text, labels, bounds, max_series in defs:
        extra = {"buckets": bounds} if kind == "histogram" else {}
        attempt(lambda: getattr(store, kind)(
            name, help_text, tuple(labels), max_series=max_series, **extra))  # fmt: skip
    for ev in events:
        op_name = ev[0]
        if op_name == "series":
            attempt(lambda: store.series(ev[1], tuple(ev[2])))
        elif op_name in ("inc", "set", "observe"):
            attempt(lambda: getattr(store, op_name)(ev[1], ev[2]))
        elif op_name == "inc_many":
            ids, id_dtype, amount_dtype, strided = ev[1:]
            amounts = (
                None
                if amount_dtype == "none"
                else _array(list(range(len(ids))), amount_dtype, strided)
            )
            attempt(lambda: store.inc_many(_array(ids, id_dtype, strided), amounts))
        else:
            ids, id_dtype, value_dtype, strided, floats = ev[1:]
            raw = floats[: len(ids)]
            items = raw if value_dtype.startswith("float") else [abs(int(v)) for v in raw]
            attempt(lambda: store.observe_many(
                _array(ids, id_dtype, strided), _array(items, value_dtype, strided)))  # fmt: skip
    return outcomes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    defs=st.lists(metric_def, min_size=1, max_size=4),
    events=st.lists(event, max_size=60),
    budget=budgets,
)
def test_random_definitions_and_text_agree(
    c_backend: Backend,
    py_backend: Backend,
    defs: list[tuple[Any, ...]],
    events: list[tuple[Any, ...]],
    budget: int,
) -> None:
    """Random names, bounds and Unicode values: the budget's charges count UTF-8 bytes
    and escapes, so any difference in how the two count would change a decision."""
    c_store = c_backend.store.Store(max_exposition_bytes=budget)
    py_store = py_backend.store.Store(max_exposition_bytes=budget)
    assert play(c_store, defs, events) == play(py_store, defs, events)
    assert state(c_store) == state(py_store)
    for metric in range(len(defs)):
        for method in ("overflow_count", "budget_overflow_count"):
            outcomes = []
            for store in (c_store, py_store):
                try:
                    outcomes.append(getattr(store, method)(metric))
                except Exception as exc:
                    outcomes.append(type(exc).__name__)
            assert outcomes[0] == outcomes[1], (method, metric)


# ---- idle-series expiry: random expire_idle() calls in the event stream ----------------

EXPIRE = ("expire_idle",)


def apply_or_expire(store: Any, step: tuple[Any, ...]) -> Any:
    """``apply()``, plus the expiry tick; its outcome is how many series it hid."""
    if step == EXPIRE:
        return store.expire_idle()
    return apply(store, step)


def visible_counts(store: Any) -> list[Any]:
    outcomes: list[Any] = []
    for metric in range(8):
        try:
            outcomes.append(store.visible_series_count(metric))
        except Exception as exc:
            outcomes.append(outcome_of(exc))
    return outcomes


# One metric of each kind with two series each (ids 0-5, some folded when max_series is
# 1), so that random records often hit a valid series that an earlier tick hid.
PREAMBLE = [
    ("register", "counter", "a_total", ("k",), [], 0),
    ("register", "gauge", "b", ("k",), [], 0),
    ("register", "histogram", "lat_ms", ("k",), [1.0, 5.0], 0),
] + [("series", m, [v]) for m in range(3) for v in ("x", "y")]


# Records that are valid after PREAMBLE (ids 0-1 counters, 2-3 gauges, 4-5 histograms).
valid_record = st.one_of(
    st.tuples(st.just("inc"), st.sampled_from([0, 1]), st.integers(0, 3)),
    st.tuples(st.just("set"), st.sampled_from([2, 3]), floats_any),
    st.tuples(st.just("observe"), st.sampled_from([4, 5]), st.floats(allow_nan=False)),
    st.tuples(
        st.just("inc_many"),
        st.lists(st.sampled_from([0, 1]), min_size=1, max_size=3),
        st.sampled_from(["int64", "uint32", "none"]),
    ),
    st.tuples(
        st.just("observe_many"),
        st.lists(st.sampled_from([4, 5]), min_size=1, max_size=3),
        st.lists(st.floats(-10, 10), min_size=6, max_size=6),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.one_of(op, valid_record, st.just(EXPIRE)), max_size=50),
    default=st.integers(1, 3),
    budget=budgets,
)
def test_backends_agree_with_expiry(
    c_backend: Backend,
    py_backend: Backend,
    steps: list[tuple[Any, ...]],
    default: int,
    budget: int,
) -> None:
    c_store = c_backend.store.Store(default_max_series=default, max_exposition_bytes=budget)
    py_store = py_backend.store.Store(default_max_series=default, max_exposition_bytes=budget)
    for step in PREAMBLE + steps:
        assert apply_or_expire(c_store, step) == apply_or_expire(py_store, step), step
        if step == EXPIRE:  # what each tick leaves visible, not only the end state
            assert state(c_store) == state(py_store)
            assert visible_counts(c_store) == visible_counts(py_store)
    assert state(c_store) == state(py_store)
    assert visible_counts(c_store) == visible_counts(py_store)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    defs=st.lists(metric_def, min_size=1, max_size=4),
    chunks=st.lists(st.lists(event, max_size=20), min_size=1, max_size=5),
)
def test_random_definitions_agree_across_expiry_ticks(
    c_backend: Backend,
    py_backend: Backend,
    defs: list[tuple[Any, ...]],
    chunks: list[list[tuple[Any, ...]]],
) -> None:
    """``play()`` each chunk of events, with an ``expire_idle()`` tick between chunks."""
    stores = [c_backend.store.Store(), py_backend.store.Store()]
    outcomes: list[list[Any]] = [[], []]
    for i, chunk in enumerate(chunks):
        for store, out in zip(stores, outcomes):
            if i:
                out.append(store.expire_idle())
            out.extend(play(store, [] if i else defs, chunk))
        assert outcomes[0] == outcomes[1]
        assert state(stores[0]) == state(stores[1])
    assert visible_counts(stores[0]) == visible_counts(stores[1])


# ---- the exposition budget: many series, random sizes, folds by either limit -----------

# Registered up front so that most series() calls are valid and create series (the
# budget only decides on creation). Labelless metrics are never charged; names may
# clash, and then series() on that id fails alike in both.
budget_metric = st.tuples(
    st.sampled_from(["counter", "gauge", "histogram"]),
    st.from_regex(r"[a-z][a-z0-9_]{0,5}(_total)?", fullmatch=True),
    st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,4}", fullmatch=True), max_size=3, unique=True),
    st.lists(st.floats(-1e6, 1e9), min_size=1, max_size=4, unique=True).map(sorted),
    st.sampled_from([1, 3, 1000, 1000]),
)
# Label sets of three values, cut to the metric's label count when played: runs of
# series() calls, most steps, so that stores fill up (hypothesis favours short lists).
# Many distinct values (each label set new, so created or folded) with repeats (found);
# Unicode and escapes (charged in UTF-8 bytes, escapes twice); the overflow label set
# now and then.
_text = st.text(st.characters(codec="utf-8") | st.sampled_from(['"', "\\", "\n"]), max_size=12)
_numbered = st.integers(0, 99).map(lambda i: f"v{i}")
budget_value = st.one_of(_text, _text, _text, _numbered, _numbered, _numbered, _numbered,
                         st.just("__overflow__"))  # fmt: skip
series_run = st.tuples(
    st.just("series"),
    st.integers(0, 3),
    st.lists(st.lists(budget_value, min_size=3, max_size=3), min_size=2, max_size=16),
)
budget_step = st.one_of(
    series_run,
    series_run,
    series_run,
    st.tuples(st.just("inc"), st.integers(0, 30), st.integers(0, 3)),
    st.tuples(st.just("observe"), st.integers(0, 30), st.floats(-10, 10)),
    st.just(EXPIRE),
)


def play_budget(store: Any, defs: list[tuple[Any, ...]], steps: list[tuple[Any, ...]]) -> list[Any]:
    outcomes: list[Any] = []

    def attempt(call: Any) -> None:
        try:
            outcomes.append(call())
        except Exception as exc:
            outcomes.append((type(exc).__name__, getattr(exc, "name", None)))
        outcomes.append(store.exposition_bytes())  # after every step, not only at the end

    for kind, name, labels, bounds, max_series in defs:
        extra = {"buckets": bounds} if kind == "histogram" else {}
        attempt(lambda: getattr(store, kind)(
            name, "", tuple(labels), max_series=max_series, **extra))  # fmt: skip
    for step in steps:
        if step == EXPIRE:
            attempt(store.expire_idle)
        elif step[0] == "series":
            n = len(defs[step[1]][2]) if step[1] < len(defs) else 0
            for values in step[2]:
                attempt(lambda: store.series(step[1], tuple(values[:n])))
        else:
            attempt(lambda: getattr(store, step[0])(step[1], step[2]))
    for metric in range(len(defs)):
        for method in ("series_count", "overflow_count", "budget_overflow_count"):
            attempt(lambda: getattr(store, method)(metric))
    return outcomes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    defs=st.lists(budget_metric, min_size=2, max_size=4),
    steps=st.lists(budget_step, min_size=3, max_size=40),
    percent=st.integers(0, 120),
)
def test_budget_decisions_agree(
    c_backend: Backend,
    py_backend: Backend,
    defs: list[tuple[Any, ...]],
    steps: list[tuple[Any, ...]],
    percent: int,
) -> None:
    """Same label sets in, same series created or folded (and by which limit), same bytes
    charged after every step, same exposition.

    The budget is a share of what the whole workload would be charged without one (a
    fixed range of budgets mostly either folds everything or nothing), so that stores
    fill up part way and then fold."""
    unbounded = py_backend.store.Store()
    play_budget(unbounded, defs, steps)
    budget = max(1, unbounded.exposition_bytes() * percent // 100)
    c_store = c_backend.store.Store(max_exposition_bytes=budget)
    py_store = py_backend.store.Store(max_exposition_bytes=budget)
    assert play_budget(c_store, defs, steps) == play_budget(py_store, defs, steps)
    assert state(c_store) == state(py_store)
