"""One error story: both backends raise the same class with the same message.

Every mistake below is made once against the compiled store and once against the twin,
and the outcomes (class, ``str(exc)``, ``.name``, ``.series_id``) must be equal. The
hypothesis tests in ``test_store_differential.py`` do the same over random call
sequences; this list pins the argument mistakes a random sequence rarely makes. The C
status table of ``_store_c`` is checked on its own, unknown statuses included.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import Backend
from hypothesis import given, settings
from hypothesis import strategies as st

import meshstats
from meshstats import errors
from meshstats.errors import (
    DuplicateMetricError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidLabelsError,
    InvalidMetricError,
    InvalidSampleError,
    MeshstatsError,
    PeerExchangeError,
    PeerMetadataTypeError,
    UnknownSeriesError,
)


def _setup(store: Any) -> dict[str, int]:
    c = store.counter("c_total", "C.", ("k",))
    g = store.gauge("g", "G.", ())
    h = store.histogram("h", "H.", ("k",), buckets=(1.0, 5.0))
    return {
        "c": c,
        "g": g,
        "h": h,
        "cs": store.series(c, ("a",)),
        "gs": store.series(g, ()),
        "hs": store.series(h, ("a",)),
    }


Call = Callable[[Any, dict[str, int]], object]
MISTAKES: dict[str, Call] = {
    # defining metrics
    "Store(default_max_series=0)": lambda s, i: type(s)(default_max_series=0),
    "Store(default_max_series='1')": lambda s, i: type(s)(default_max_series="1"),
    "name 1": lambda s, i: s.counter(1),
    "name bad-name": lambda s, i: s.counter("bad-name"),
    "name _total": lambda s, i: s.counter("_total"),
    "help bytes": lambda s, i: s.gauge("x", b"help"),
    "help lone surrogate": lambda s, i: s.gauge("x", "\udc80"),
    "labels str": lambda s, i: s.gauge("x", "", "k"),
    "labels bad": lambda s, i: s.gauge("x", "", ("ok", "no-no")),
    "labels reserved": lambda s, i: s.gauge("x", "", ("__k",)),
    "labels le": lambda s, i: s.histogram("x", "", ("le",)),
    "labels twice": lambda s, i: s.gauge("x", "", ("k", "k")),
    "buckets str": lambda s, i: s.histogram("x", buckets="12"),
    "buckets empty": lambda s, i: s.histogram("x", buckets=()),
    "buckets inf": lambda s, i: s.histogram("x", buckets=(1, math.inf)),
    "buckets nan first": lambda s, i: s.histogram("x", buckets=(math.nan, "x")),
    "buckets not a number": lambda s, i: s.histogram("x", buckets=(1, "2")),
    "buckets decreasing": lambda s, i: s.histogram("x", buckets=(2, 1)),
    "buckets huge int": lambda s, i: s.histogram("x", buckets=(2**2000,)),
    "max_series 0": lambda s, i: s.counter("x_total", max_series=0),
    "max_series float": lambda s, i: s.counter("x_total", max_series=1.5),
    "duplicate name": lambda s, i: s.gauge("g"),
    "duplicate family": lambda s, i: s.gauge("c"),
    "reserved family": lambda s, i: s.gauge("meshstats_series_overflow"),
    # series
    "metric str": lambda s, i: s.series("0", ("a",)),
    "metric unknown": lambda s, i: s.series(99, ("a",)),
    "metric negative": lambda s, i: s.series(-1, ("a",)),
    "values str": lambda s, i: s.series(i["c"], "a"),
    "values count": lambda s, i: s.series(i["c"], ("a", "b")),
    "values int": lambda s, i: s.series(i["c"], (1,)),
    "values surrogate": lambda s, i: s.series(i["c"], ("\ud800",)),
    "values count before type": lambda s, i: s.series(i["c"], (1, 2)),
    # recording
    "inc float n": lambda s, i: s.inc(i["cs"], 1.0),
    "inc negative n": lambda s, i: s.inc(i["cs"], -1),
    "inc n 2**64": lambda s, i: s.inc(i["cs"], 2**64),
    "inc n before series": lambda s, i: s.inc("x", -1),
    "inc str series": lambda s, i: s.inc("3"),
    "inc float series": lambda s, i: s.inc(3.0),
    "inc unknown": lambda s, i: s.inc(99),
    "inc huge series": lambda s, i: s.inc(2**70),
    "inc gauge": lambda s, i: s.inc(i["gs"]),
    "set str": lambda s, i: s.set(i["gs"], "1"),
    "set bytes": lambda s, i: s.set(i["gs"], b"1"),
    "set bytearray": lambda s, i: s.set(i["gs"], bytearray(b"1")),
    "set object": lambda s, i: s.set(i["gs"], object()),
    "set huge int": lambda s, i: s.set(i["gs"], 2**2000),
    "set counter": lambda s, i: s.set(i["cs"], 1.0),
    "observe nan": lambda s, i: s.observe(i["hs"], math.nan),
    "observe none": lambda s, i: s.observe(i["hs"], None),
    "observe counter": lambda s, i: s.observe(i["cs"], 1.0),
    "observe unknown": lambda s, i: s.observe(-1, 1.0),
    # reading
    "value histogram": lambda s, i: s.value(i["hs"]),
    "value unknown": lambda s, i: s.value(42),
    "value None": lambda s, i: s.value(None),
    "histogram_value counter": lambda s, i: s.histogram_value(i["cs"]),
    "histogram_value unknown": lambda s, i: s.histogram_value(42),
    "labels unknown": lambda s, i: s.labels(42),
    "metric_of unknown": lambda s, i: s.metric_of(-3),
    "series_count unknown": lambda s, i: s.series_count(7),
    "overflow_count str": lambda s, i: s.overflow_count("0"),
    # batches
    "inc_many list": lambda s, i: s.inc_many([i["cs"]]),
    "inc_many 2-D": lambda s, i: s.inc_many(np.zeros((2, 2), dtype=np.int64)),
    "inc_many 0-D": lambda s, i: s.inc_many(np.int64(3)),
    "inc_many float ids": lambda s, i: s.inc_many(np.array([0.0])),
    "inc_many bool ids": lambda s, i: s.inc_many(np.array([True])),
    "inc_many big-endian": lambda s, i: s.inc_many(np.array([0], dtype=">i8")),
    "inc_many float amounts": lambda s, i: s.inc_many(np.array([i["cs"]]), np.array([1.0])),
    "inc_many lengths": lambda s, i: s.inc_many(np.array([i["cs"]]), np.array([1, 2])),
    "inc_many unknown": lambda s, i: s.inc_many(np.array([i["cs"], 77])),
    "inc_many gauge": lambda s, i: s.inc_many(np.array([i["cs"], i["gs"]])),
    "inc_many negative": lambda s, i: s.inc_many(np.array([i["cs"]] * 2), np.array([1, -2])),
    "observe_many float16": lambda s, i: s.observe_many(
        np.array([i["hs"]]), np.array([1.0], dtype=np.float16)
    ),
    "observe_many lengths": lambda s, i: s.observe_many(np.array([i["hs"]]), np.ones(2)),
    "observe_many nan": lambda s, i: s.observe_many(
        np.array([i["hs"]] * 2), np.array([1.0, math.nan])
    ),
    "observe_many counter": lambda s, i: s.observe_many(np.array([i["cs"]]), np.ones(1)),
}


def outcome(store: Any, call: Call) -> tuple[Any, ...]:
    ids = _setup(store)
    try:
        call(store, ids)
    except Exception as exc:
        return (
            type(exc).__name__,
            str(exc),
            getattr(exc, "name", None),
            getattr(exc, "series_id", None),
        )
    return ("no error",)


@pytest.mark.c_extension
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_both_backends_word_each_mistake_alike(
    c_backend: Backend, py_backend: Backend, mistake: str
) -> None:
    c = outcome(c_backend.store.Store(), MISTAKES[mistake])
    py = outcome(py_backend.store.Store(), MISTAKES[mistake])
    assert c == py
    assert c[0] != "no error", mistake
    assert issubclass(getattr(errors, c[0], Exception), MeshstatsError) or c[0] == "no error"


def test_messages_name_what_is_wrong(backend: Backend) -> None:
    """A few messages in full: the parameter or index is named, never a bare class."""
    expected = {
        "metric str": "metric must be an int id, got str",
        "inc str series": "series must be an int id, got str",
        "values count": "values has 2 items but metric 'c_total' has 1 labels ('k',)",
        "labels twice": "labels[1] = 'k' is given twice",
        "inc gauge": "series 1 is a gauge, not a counter",
        "inc_many gauge": "ids[1] = 1 is a gauge, not a counter",
        "value histogram": "series 2 is a histogram: read it with histogram_value()",
    }
    for mistake, text in expected.items():
        assert outcome(backend.store.Store(), MISTAKES[mistake])[1] == text, mistake


# ---- the compiled store's C status table ---------------------------------------------------

# _core/store.h's ms_status, in enum order.
STATUSES = {
    1: MemoryError,  # MS_ERR_NOMEM
    2: InvalidMetricError,  # MS_ERR_INVALID_METRIC
    3: DuplicateMetricError,  # MS_ERR_DUPLICATE_METRIC
    4: InvalidLabelsError,  # MS_ERR_INVALID_LABELS
    5: UnknownSeriesError,  # MS_ERR_UNKNOWN_METRIC
    6: UnknownSeriesError,  # MS_ERR_UNKNOWN_SERIES
    7: InvalidSampleError,  # MS_ERR_WRONG_KIND
    8: InvalidSampleError,  # MS_ERR_INVALID_SAMPLE
    9: InvalidLabelsError,  # MS_ERR_LIMIT while adding a series
}


@pytest.mark.c_extension
@pytest.mark.parametrize("status", sorted(STATUSES))
def test_each_c_status_has_its_class(c_backend: Backend, status: int) -> None:
    exc = c_backend.store._status_error(status, "why", 5, "n")
    assert type(exc) is STATUSES[status]
    assert "why" in str(exc)
    if isinstance(exc, UnknownSeriesError):
        assert exc.series_id == 5
    if isinstance(exc, DuplicateMetricError):
        assert exc.name == "n"


@pytest.mark.c_extension
def test_the_metric_count_limit_is_an_invalid_metric(c_backend: Backend) -> None:
    # docs/store.md: past the C store's limits, a metric definition is InvalidMetricError.
    exc = c_backend.store._status_error(9, "too many metrics", defining=True)
    assert type(exc) is InvalidMetricError


@pytest.mark.c_extension
@pytest.mark.parametrize("status", [0, 10, 99, -1])
def test_an_unknown_c_status_is_a_system_error(c_backend: Backend, status: int) -> None:
    exc = c_backend.store._status_error(status, "why")
    assert type(exc) is SystemError
    assert f"status {status}" in str(exc)


# ---- peer exchange: argument errors are meshstats errors -------------------------------------


@pytest.mark.parametrize(
    ("call", "cls", "text"),
    [
        (lambda pe: pe.decode_peer_prefix(b"", max_size=-1), InvalidArgumentError,
         "max_size must be in 0..2147483647, got -1"),
        (lambda pe: pe.decode_peer_prefix(b"", max_size=2**31), InvalidArgumentError,
         "max_size must be in 0..2147483647, got 2147483648"),
        (lambda pe: pe.decode_peer_header("", max_size="1"), InvalidArgumentTypeError,
         "max_size must be an int, got str"),
        (lambda pe: pe.PeerPrefixDecoder(max_size=1.5), InvalidArgumentTypeError,
         "max_size must be an int, got float"),
        (lambda pe: pe.decode_peer_prefix("3d230467"), InvalidArgumentTypeError,
         "data must be a bytes-like object, got str"),
        (lambda pe: pe.decode_peer_prefix(12), InvalidArgumentTypeError,
         "data must be a bytes-like object, got int"),
        (lambda pe: pe.decode_peer_prefix(memoryview(bytes(8))[::2]), InvalidArgumentTypeError,
         "data must be a C-contiguous bytes-like object"),
        (lambda pe: pe.PeerPrefixDecoder().feed("x"), InvalidArgumentTypeError,
         "chunk must be a bytes-like object, got str"),
        (lambda pe: pe.decode_peer_header(12), InvalidArgumentTypeError,
         "value must be str, bytes or bytearray, got int"),
    ],
)  # fmt: skip
def test_peer_exchange_argument_errors(
    backend: Backend, call: Callable[[Any], object], cls: type[Exception], text: str
) -> None:
    with pytest.raises(cls) as info:
        call(backend.peer_exchange)
    assert str(info.value) == text
    assert isinstance(info.value, MeshstatsError)
    # Still what code unaware of meshstats catches.
    builtin = ValueError if cls is InvalidArgumentError else TypeError
    assert isinstance(info.value, builtin)


def test_new_classes_are_exported() -> None:
    assert meshstats.InvalidArgumentError is InvalidArgumentError
    assert meshstats.InvalidArgumentTypeError is InvalidArgumentTypeError
    assert {"InvalidArgumentError", "InvalidArgumentTypeError"} <= set(meshstats.__all__)


# ---- peer exchange: encoding errors, same class and text from both encoders ------------------

leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.text(max_size=4),
    st.sampled_from(["\ud800", 2**1100, b"x", {1, 2}, 3 + 0j, object()]),
)
bad_metadata = st.recursive(
    leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(
            st.text(max_size=3) | st.sampled_from([1, None, "\udfff", b"k"]), children, max_size=3
        ),
    ),
    max_leaves=12,
)


def encode_outcome(call: Callable[[], object]) -> tuple[Any, ...]:
    try:
        return ("ok", call())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


@pytest.mark.c_extension
@settings(max_examples=300, deadline=None)
@given(
    metadata=bad_metadata | st.dictionaries(st.text(max_size=3), bad_metadata, max_size=3),
    metadata_id=st.none() | st.text(max_size=3) | st.just(7) | st.just("\ud800"),
)
def test_encoders_fail_alike(
    c_backend: Backend, py_backend: Backend, metadata: Any, metadata_id: Any
) -> None:
    c, py = c_backend.peer_exchange, py_backend.peer_exchange
    for name in ("encode_peer_prefix", "encode_peer_header"):
        args = (metadata, metadata_id) if name == "encode_peer_prefix" else (metadata,)
        c_out = encode_outcome(lambda: getattr(c, name)(*args))
        assert c_out == encode_outcome(lambda: getattr(py, name)(*args))
        assert c_out[0] in ("ok", "PeerMetadataTypeError"), c_out


@pytest.mark.c_extension
def test_encoders_name_the_first_problem_in_mapping_order(
    c_backend: Backend, py_backend: Backend
) -> None:
    # "b" comes first in the mapping, "a" first in the bytes: the mapping's order wins.
    metadata = {"b": {1, 2}, "a": object()}
    for pe in (c_backend.peer_exchange, py_backend.peer_exchange):
        with pytest.raises(PeerMetadataTypeError) as info:
            pe.encode_peer_header(metadata)
        assert str(info.value).endswith("got set")
        # A bad key is named before its own bad value (hypothesis found the twin reversed).
        with pytest.raises(PeerMetadataTypeError) as info:
            pe.encode_peer_header({"\udfff": "\ud800"})
        assert str(info.value).endswith("'\\udfff'")


# ---- peer exchange: big inputs are walked without the GIL only when immutable ---------------


@pytest.mark.c_extension
def test_only_bytes_are_walked_without_the_gil(c_backend: Backend) -> None:
    pe = c_backend.peer_exchange
    big = pe.encode_peer_prefix({"k": "A" * 40_000})
    assert pe._releases_gil(big)
    assert not pe._releases_gil(bytearray(big))
    assert not pe._releases_gil(memoryview(big))
    assert not pe._releases_gil(memoryview(bytearray(big)).toreadonly())
    assert not pe._releases_gil(big[:100])  # small: the release would cost more


def test_a_bytearray_changed_by_another_thread_never_yields_a_broken_str(
    backend: Backend,
) -> None:
    """Another thread flips one byte of a value between "A" and 0x80 while we decode.

    Each decode must see one consistent state: the value as it was (all "A") or a
    ``bad_utf8`` error, never a ``str`` holding a 0x80 byte under an ASCII flag (what
    walking a bytearray without the GIL allowed).
    """
    pe = backend.peer_exchange
    size = 1 << 20
    frame = bytearray(pe.encode_peer_prefix({"k": "A" * size}, None))
    where = frame.index(b"A" * 16)  # the value's first byte: checked first, copied last
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            frame[where] ^= 0xC1  # "A" (0x41) <-> 0x80, a lone continuation byte

    flipper = threading.Thread(target=flip)
    flipper.start()
    seen = set()
    try:
        for _ in range(30):
            try:
                value = pe.decode_peer_prefix(frame, max_size=2 * size).metadata["k"]
            except PeerExchangeError as exc:
                seen.add(exc.reason)
                continue
            seen.add("ok")
            assert value == "A" * size
    finally:
        stop.set()
        flipper.join()
    assert seen <= {"ok", "bad_utf8"}
