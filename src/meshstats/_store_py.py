"""The series store in pure Python: the fallback twin of ``_store_c`` (see ``docs/store.md``).

>>> from meshstats._store_py import Store
>>> store = Store()
>>> req = store.counter("istio_requests_total", "Requests.", ("reporter", "response_code"))
>>> s = store.series(req, ("source", "200"))
>>> store.inc(s)
>>> store.inc(s, 4)
>>> store.value(s)
5
>>> print(store.render().decode(), end="")
# HELP istio_requests_total Requests.
# TYPE istio_requests_total counter
istio_requests_total{reporter="source",response_code="200"} 5

Every rule (ids, validation, overflow series, exposition bytes) is the one the compiled
store follows, so the two are interchangeable. Where the compiled store uses C11 atomics,
this twin takes one ``threading.Lock`` per update: no update is lost, but threads do not
record in parallel here.

Idle-series expiry (``expire_idle()``) keeps one state byte per series: active (recorded
or created since the last sweep), idle (visible) or hidden. Every write of that byte
holds the lock, so a record racing a sweep is never undone by it.
"""

from __future__ import annotations

import operator
import os
import sys
import threading
from bisect import bisect_left, insort
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _messages as msg
from . import _render_py
from ._render_py import (
    BUDGET_FAMILY,
    BUDGET_HELP,
    OVERFLOW_FAMILY,
    OVERFLOW_HELP,
    HistogramValue,
    Snapshot,
    SnapshotEntry,
)
from .errors import (
    DuplicateMetricError,
    InvalidSampleError,
    UnknownSeriesError,
)

__all__ = ["DEFAULT_BUCKETS", "DEFAULT_MAX_EXPOSITION_BYTES", "Store"]

#: Envoy's default histogram bounds (``histogram_impl.cc::defaultBuckets``), used by Istio.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    10000.0, 30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
)  # fmt: skip

#: The store's exposition budget unless given (docs/store.md, "Exposition budget"): above
#: the scrapes meshstats is built for (10,000 label sets of a counter and a histogram with
#: Istio's 25 labels render ~215 MB), well under Istio's 1 GiB sidecar memory limit.
DEFAULT_MAX_EXPOSITION_BYTES = 256 * 1024 * 1024

_COUNTER, _GAUGE, _HISTOGRAM = 0, 1, 2
_KIND_NAMES = ("counter", "gauge", "histogram")
_U64_MAX = (1 << 64) - 1
# The widest a value prints (a u64 in decimal; a double as format_float writes
# -2.2250738585072014e-308): the budget charges every value at these widths.
_U64_WIDTH, _DOUBLE_WIDTH = 20, 24
_OVERFLOW_VALUE = "__overflow__"
_INT_DTYPES = frozenset(np.dtype(t) for t in ("int32", "int64", "uint32", "uint64"))
_FLOAT_DTYPES = frozenset(np.dtype(t) for t in ("float64", "float32")) | _INT_DTYPES
# Non-histogram series share these empty placeholders: their kind byte keeps them unused.
_NO_COUNTS: list[int] = []
_NO_BOUNDS: tuple[float, ...] = ()
# Expiry states (one byte per series). Active is 0 so the recorders' check is a truth test.
_ACTIVE, _IDLE, _HIDDEN = 0, 1, 2
# One expiry sweep over all states at once: active -> idle, idle -> hidden, hidden stays.
_SWEEP = bytes([_IDLE, _HIDDEN, _HIDDEN]) + bytes(range(3, 256))


class _Metric:
    __slots__ = (
        "id", "name", "family", "kind", "help", "label_names", "buckets", "max_series",
        "index", "series_ids", "real_count", "overflow_key", "overflow_id", "overflow_count",
        "budget_overflow_count", "charge_base", "charge_lines",
    )  # fmt: skip

    def __init__(
        self,
        metric_id: int,
        name: str,
        kind: int,
        help_text: str,
        label_names: tuple[str, ...],
        buckets: tuple[float, ...],
        max_series: int,
    ) -> None:
        self.id = metric_id
        self.name = name
        self.family = _render_py.openmetrics_family(name, _KIND_NAMES[kind])
        self.kind = kind
        self.help = help_text
        self.label_names = label_names
        self.buckets = buckets
        self.max_series = max_series
        # Label values -> series id, the overflow series included once it exists.
        self.index: dict[tuple[str, ...], int] = {}
        self.series_ids: list[int] = []
        self.real_count = 0
        # With no labels the only label set, (), is a real series: nothing can overflow.
        self.overflow_key = (_OVERFLOW_VALUE,) * len(label_names) if label_names else None
        self.overflow_id = -1
        self.overflow_count = 0
        self.budget_overflow_count = 0
        self.charge_base, self.charge_lines = _charge_shape(name, kind, label_names, buckets)


def _charge_shape(
    name: str, kind: int, label_names: tuple[str, ...], buckets: tuple[float, ...]
) -> tuple[int, int]:
    """``(base, lines)``: a new series is charged ``base + lines * escaped bytes of its values``.

    The charge is the most the series' lines can take in either format, every value at
    its widest, exactly as the compiled store's ``charge_init`` works it out. With ``L``
    the label block ``a="v",b="w"`` (metric and label names are ASCII: a character is a byte):
    a counter's ``S{L} <u64>`` (``S`` gains ``_total`` in OpenMetrics if the name lacks
    it), a gauge's ``name{L} <double>``, a histogram's ``name_bucket{L,le="<bound>"}
    <u64>`` per bound and ``+Inf``, ``name_sum{L} <double>``, ``name_count{L} <u64>``,
    each with its newline. A metric without labels is not charged: its one series is
    fixed at registration, like its HELP line.
    """
    if not label_names:
        return 0, 0
    names = len(label_names) - 1 + sum(len(label) + 3 for label in label_names)  # a="",
    braced = names + 2
    n = len(name)
    if kind == _COUNTER:
        suffix = 0 if name.endswith("_total") else 6
        return braced + n + suffix + 1 + _U64_WIDTH + 1, 1
    if kind == _GAUGE:
        return braced + n + 1 + _DOUBLE_WIDTH + 1, 1
    bucket = names + n + len('_bucket{,le=""} ') + _U64_WIDTH + 1
    base = bucket * (len(buckets) + 1) + len("+Inf")
    base += sum(len(_render_py.format_float(b)) for b in buckets)
    base += braced + n + len("_sum ") + _DOUBLE_WIDTH + 1
    base += braced + n + len("_count ") + _U64_WIDTH + 1
    return base, len(buckets) + 3


def _escaped_bytes(values: tuple[str, ...]) -> int:
    r"""UTF-8 bytes of the values as a render escapes them: ``\``, ``"`` and newline take two."""
    # One joined string: per-value calls were most of the cost of creating a series.
    text = "".join(values)
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if "\\" in text or '"' in text or "\n" in text:
        size += text.count("\\") + text.count('"') + text.count("\n")
    return size


def _series_number(value: object, param: str) -> int:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise UnknownSeriesError(msg.not_an_id(param, value)) from None


def _batch_array(obj: object, param: str, dtypes: frozenset[np.dtype[Any]]) -> npt.NDArray[Any]:
    try:
        view = memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        raise msg.array_type(param, obj) from None
    if view.ndim != 1:
        raise msg.array_ndim(param, view.ndim)
    arr = obj if isinstance(obj, np.ndarray) else np.asarray(view)
    if arr.dtype not in dtypes:
        raise msg.array_dtype(param, dtypes is _FLOAT_DTYPES, view.format)
    return arr


class Store:
    """Counters, gauges and histograms keyed by small integer series ids.

    >>> store = Store(default_max_series=2)
    >>> dur = store.histogram("d", "Duration.", ("code",), buckets=(1, 10))
    >>> store.observe(store.series(dur, ("200",)), 3.0)
    >>> store.histogram_value(store.series(dur, ("200",)))
    ((0, 1, 0), 3.0)

    Parameters
    ----------
    default_max_series
        The cardinality bound of metrics registered without ``max_series``.
    max_exposition_bytes
        The store-wide exposition budget (>= 1; 256 MiB by default): a new labelled series
        whose lines, at their widest, would take the total charged past it goes to its
        metric's overflow series instead (``budget_overflow_count``).
    """

    def __init__(
        self,
        default_max_series: int = 100_000,
        max_exposition_bytes: int = DEFAULT_MAX_EXPOSITION_BYTES,
    ) -> None:
        self._default_max_series = msg.check_max_series(default_max_series, "default_max_series")
        # Clamped as the compiled store's u64 is: 2**64 - 1 bytes is never reached anyway.
        self._max_bytes = min(
            msg.check_max_series(max_exposition_bytes, "max_exposition_bytes"), _U64_MAX
        )
        self._charged = 0  # bytes charged to the budget; written under the lock
        self._lock = threading.Lock()
        self._metrics: list[_Metric] = []
        # Sorted (name, metric id) pairs: exposition order without sorting at every scrape.
        self._order: list[tuple[str, int]] = []
        self._taken: set[str] = {
            OVERFLOW_FAMILY, OVERFLOW_FAMILY[:-6], BUDGET_FAMILY, BUDGET_FAMILY[:-6]
        }  # fmt: skip
        # One entry per series id; the kind byte is appended last, so a series whose kind
        # is visible has all its other slots in place (readers check it without the lock).
        self._kind = bytearray()
        self._metric_of: list[int] = []
        self._labels: list[tuple[str, ...]] = []
        self._vals: list[Any] = []  # counter int, gauge float, histogram sum
        self._counts: list[list[int]] = []
        self._bounds: list[tuple[float, ...]] = []  # the metric's own tuple, shared
        self._state = bytearray()  # _ACTIVE / _IDLE / _HIDDEN; written under the lock
        self._per_process: set[int] = set()  # gauges whose label sets end with our pid

    def __repr__(self) -> str:
        return f"<meshstats.Store: {len(self._metrics)} metrics, {len(self._kind)} series>"

    @classmethod
    def shared(
        cls,
        path: str | os.PathLike[str],
        *,
        default_max_series: int = 100_000,
        max_exposition_bytes: int = DEFAULT_MAX_EXPOSITION_BYTES,
        reserve: int = msg.DEFAULT_SHARED_RESERVE,
    ) -> Store:
        """A store in a file every process opens: one set of series for many processes.

        >>> import os, tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> path = os.path.join(folder.name, "app.store")
        >>> a, b = Store.shared(path), Store.shared(path)  # two processes, or one
        >>> m = a.counter("c_total", "", ("k",))
        >>> b.counter("c_total", "", ("k",)) == m, b.series(m, ("x",)) == a.series(m, ("x",))
        (True, True)
        >>> a.inc(a.series(m, ("x",)), 2); b.value(b.series(m, ("x",))), a.path == path
        (2, True)
        >>> folder.cleanup()

        A bare name lives in ``/dev/shm``. The file's creator fixes its settings; later
        openers get the file's. The file is the compiled store's (docs/store.md, "Shared
        stores"): a pure-Python process and a compiled one can share it. Recording needs
        libatomic (``libatomic1``), loaded through ctypes.
        """
        from ._store_shared_py import open_shared

        return open_shared(path, default_max_series, max_exposition_bytes, reserve)

    @property
    def path(self) -> str | None:
        """The file of a shared store (``Store.shared``); ``None`` for a private one."""
        return None

    def repairs(self) -> int:
        """Times a change whose process died mid-way was repaired (shared stores).

        >>> Store().repairs()
        0
        """
        return 0

    # -- metrics ----------------------------------------------------------------------------

    def counter(
        self,
        name: str,
        help: str = "",  # noqa: A002 - the contract's parameter name
        labels: Sequence[str] = (),
        *,
        max_series: int | None = None,
    ) -> int:
        """Register a counter; returns its metric id.

        >>> Store().counter("istio_requests_total", "Requests.", ("reporter",))
        0
        """
        return self._register(_COUNTER, name, help, labels, (), max_series)

    def gauge(
        self,
        name: str,
        help: str = "",  # noqa: A002
        labels: Sequence[str] = (),
        *,
        max_series: int | None = None,
        per_process: bool = False,
    ) -> int:
        """Register a gauge; returns its metric id.

        >>> Store().gauge("istio_build", "Build.", ("component", "tag"))
        0

        In a shared store a gauge series holds one value for every process (the last
        ``set`` wins). ``per_process=True`` gives each process its own: a last label
        ``pid`` is added, which ``series()`` fills in with this process' id (combine them
        in PromQL: ``max without (pid) (...)``).

        >>> store = Store()
        >>> inflight = store.gauge("inflight", "", ("app",), per_process=True)
        >>> store.labels(store.series(inflight, ("web",))) == ("web", str(os.getpid()))
        True
        """
        names: object = msg.per_process_labels(labels) if per_process else labels
        metric = self._register(_GAUGE, name, help, names, (), max_series)
        if per_process:
            self._per_process.add(metric)
        return metric

    def histogram(
        self,
        name: str,
        help: str = "",  # noqa: A002
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        max_series: int | None = None,
    ) -> int:
        """Register a histogram with finite, strictly increasing ``buckets`` (+Inf implied).

        >>> Store().histogram("istio_request_bytes", "Bytes.", (), buckets=(1, 10, 100))
        0
        """
        return self._register(_HISTOGRAM, name, help, labels, buckets, max_series)

    def _register(
        self,
        kind: int,
        name: object,
        help_text: object,
        labels: object,
        buckets: object,
        max_series: object,
    ) -> int:
        # One check, shared with the compiled store: same order, same messages.
        help_text, label_names, bounds, limit = msg.check_definition(
            _KIND_NAMES[kind], name, help_text, labels, buckets, max_series
        )
        name = str(name)
        family = _render_py.openmetrics_family(name, _KIND_NAMES[kind])
        with self._lock:
            for taken in (name, family):
                if taken in self._taken:
                    raise DuplicateMetricError(msg.duplicate_metric(taken), name=taken)
            metric = _Metric(
                len(self._metrics),
                name,
                kind,
                help_text,
                label_names,
                bounds,
                self._default_max_series if limit is None else limit,
            )
            self._metrics.append(metric)
            self._taken.update((name, family))
            insort(self._order, (name, metric.id))
            return metric.id

    def _metric(self, metric: object) -> _Metric:
        number = metric if type(metric) is int else _series_number(metric, "metric")
        metrics = self._metrics
        if not 0 <= number < len(metrics):
            raise UnknownSeriesError(msg.unknown_metric(number), number)
        return metrics[number]

    # -- series ------------------------------------------------------------------------------

    def series(self, metric: int, values: Sequence[str]) -> int:
        """The series id of ``values`` (one ``str`` per label) in ``metric``; stable.

        >>> store = Store()
        >>> m = store.counter("c_total", "", ("code",))
        >>> store.series(m, ("200",)), store.series(m, ["404"]), store.series(m, ("200",))
        (0, 1, 0)
        """
        m = self._metric(metric)
        if self._per_process and m.id in self._per_process:
            values = self._with_pid(m.name, m.label_names, values)
        if type(values) is tuple:
            try:
                found = m.index.get(values)
            except TypeError:  # unhashable member: validation below says what is wrong
                found = None
            if found is not None:
                return found
        key = msg.check_values(m.name, m.label_names, values)
        with self._lock:
            found = m.index.get(key)
            if found is not None:
                return found
            if key == m.overflow_key:
                return self._overflow_series(m)
            if m.real_count >= m.max_series:
                m.overflow_count += 1
                return self._overflow_series(m)
            charged = self._charged
            if m.charge_lines:  # a labelled metric (docs/store.md, "Exposition budget")
                charged += m.charge_base + m.charge_lines * _escaped_bytes(key)
                charged = min(charged, _U64_MAX)  # as the compiled store saturates
                if charged > self._max_bytes:
                    m.budget_overflow_count += 1
                    return self._overflow_series(m)
            m.real_count += 1
            sid = self._new_series(m, key)
            self._charged = charged
            return sid

    @staticmethod
    def _with_pid(name: str, label_names: tuple[str, ...], values: object) -> tuple[Any, ...]:
        """A per-process gauge's label values: the caller's, then this process' id."""
        if isinstance(values, (tuple, list)):
            return (*values, str(os.getpid()))
        return msg.check_values(name, label_names, values)  # raises, worded as for any metric

    def _overflow_series(self, m: _Metric) -> int:
        # Called with the lock held.
        if m.overflow_id < 0:
            assert m.overflow_key is not None
            m.overflow_id = self._new_series(m, m.overflow_key)
        return m.overflow_id

    def _new_series(self, m: _Metric, key: tuple[str, ...]) -> int:
        # Called with the lock held.
        sid = len(self._kind)
        if m.kind == _HISTOGRAM:
            self._vals.append(0.0)
            self._counts.append([0] * (len(m.buckets) + 1))
            self._bounds.append(m.buckets)
        else:
            self._vals.append(0 if m.kind == _COUNTER else 0.0)
            self._counts.append(_NO_COUNTS)
            self._bounds.append(_NO_BOUNDS)
        self._labels.append(key)
        self._state.append(_ACTIVE)  # a new series counts as recorded
        self._metric_of.append(m.id)
        m.series_ids.append(sid)
        m.index[key] = sid
        self._kind.append(m.kind)  # last: publishes the series to lock-free readers
        return sid

    def _series_arg(self, series: object, kind: int, method: str) -> int:
        """Slow path of the recorders: convert ``series`` and explain what is wrong."""
        sid = series if type(series) is int else _series_number(series, "series")
        if not 0 <= sid < len(self._kind):
            raise UnknownSeriesError(msg.unknown_series(sid), sid)
        actual = self._kind[sid]
        if kind >= 0 and actual != kind:
            raise InvalidSampleError(msg.wrong_kind(sid, _KIND_NAMES[actual], _KIND_NAMES[kind]))
        return sid

    def series_count(self, metric: int) -> int:
        """How many real series ``metric`` holds (the overflow series not counted)."""
        return self._metric(metric).real_count

    def visible_series_count(self, metric: int) -> int:
        """Real series of ``metric`` not hidden by ``expire_idle()`` (overflow not counted).

        >>> store = Store()
        >>> m = store.counter("c_total", "", ("k",))
        >>> sid = store.series(m, ("a",))
        >>> store.expire_idle(), store.expire_idle(), store.visible_series_count(m)
        (0, 1, 0)
        >>> store.inc(sid); store.visible_series_count(m)
        1
        """
        m = self._metric(metric)
        with self._lock:
            state = self._state
            return sum(1 for sid in m.series_ids if sid != m.overflow_id and state[sid] != _HIDDEN)

    def expire_idle(self) -> int:
        """Hide series not recorded since the previous call; returns how many it hid.

        Called every T seconds, it drops series idle for between T and 2T from
        ``render()`` and ``snapshot()``, as Istio's metric expiry does. A record shows a
        series again with its value continued.

        >>> store = Store()
        >>> sid = store.series(store.counter("c_total"), ())
        >>> store.expire_idle(), store.expire_idle(), store.render()
        (0, 1, b'# HELP c_total \\n# TYPE c_total counter\\n')
        >>> store.inc(sid); store.render().splitlines()[-1]
        b'c_total 1'
        """
        with self._lock:
            state = self._state
            hidden = state.count(_IDLE)
            state[:] = state.translate(_SWEEP)
        return hidden

    def overflow_count(self, metric: int) -> int:
        """How many ``series()`` calls were folded into ``metric``'s overflow series."""
        return self._metric(metric).overflow_count

    def budget_overflow_count(self, metric: int) -> int:
        """How many ``series()`` calls the exposition budget folded into the overflow series.

        Counted apart from ``overflow_count`` (which counts folds by ``max_series``): the
        budget is the store's, so the metric that folds need not be the one that used it.

        >>> store = Store(max_exposition_bytes=100)
        >>> m = store.counter("c_total", "", ("k",))
        >>> store.series(m, ("a",)), store.series(m, ("b" * 80,)), store.series(m, ("c",))
        (0, 1, 2)
        >>> store.budget_overflow_count(m), store.overflow_count(m), store.labels(1)
        (1, 0, ('__overflow__',))
        """
        return self._metric(metric).budget_overflow_count

    @property
    def max_exposition_bytes(self) -> int:
        """The exposition budget this store was made with."""
        return self._max_bytes

    def exposition_bytes(self) -> int:
        """Bytes charged to the exposition budget: at most ``max_exposition_bytes``.

        The sum, over every labelled series created (hidden ones included: a record shows
        them again), of the most its lines can take in a render. So a render is never
        larger than this plus what the metrics themselves fix: HELP and TYPE lines, the
        series of metrics without labels, the overflow series and the fold families.

        >>> store = Store()
        >>> m = store.counter("c_total", "", ("k",))
        >>> _ = store.series(m, ("a",))
        >>> store.exposition_bytes()  # `c_total{k="a"} `, 20 digits, a newline
        36
        """
        return self._charged

    def labels(self, series: int) -> tuple[str, ...]:
        """The label values of ``series``.

        >>> store = Store()
        >>> store.labels(store.series(store.gauge("g", "", ("a",)), ("x",)))
        ('x',)
        """
        return self._labels[self._series_arg(series, -1, "labels")]

    def metric_of(self, series: int) -> int:
        """The metric id ``series`` belongs to."""
        return self._metric_of[self._series_arg(series, -1, "metric_of")]

    # -- recording -----------------------------------------------------------------------

    def inc(self, series: int, n: int = 1) -> None:
        """Add ``n`` (``0 <= n < 2**64``) to a counter series.

        >>> store = Store()
        >>> s = store.series(store.counter("c_total"), ())
        >>> store.inc(s); store.inc(s, 2); store.value(s)
        3
        """
        if type(n) is not int or n < 0 or n > _U64_MAX:
            n = self._check_amount(n)
        kind = self._kind
        if type(series) is not int or not 0 <= series < len(kind) or kind[series] != _COUNTER:
            series = self._series_arg(series, _COUNTER, "inc")
        vals, state = self._vals, self._state
        with self._lock:
            total = vals[series] + n
            vals[series] = total if total <= _U64_MAX else total & _U64_MAX
            state[series] = _ACTIVE

    @staticmethod
    def _check_amount(n: object) -> int:
        try:
            number = operator.index(n)  # type: ignore[arg-type]
        except TypeError:
            raise InvalidSampleError(msg.not_an_int("n", n)) from None
        if not 0 <= number <= _U64_MAX:
            raise InvalidSampleError(msg.amount_out_of_range(number))
        return number

    def set(self, series: int, v: float) -> None:
        """Set a gauge series to ``v`` (any float, NaN and infinities included)."""
        if type(v) is not float:
            v = msg.real_arg(v, "v")
        kind = self._kind
        if type(series) is not int or not 0 <= series < len(kind) or kind[series] != _GAUGE:
            series = self._series_arg(series, _GAUGE, "set")
        # One list store is atomic: no lock needed for a plain overwrite. The state byte
        # is written under the lock, and only once per expiry interval.
        self._vals[series] = v
        if self._state[series]:
            with self._lock:
                self._state[series] = _ACTIVE

    def observe(self, series: int, v: float) -> None:
        """Record ``v`` in a histogram series (``le`` inclusive; NaN is rejected).

        >>> store = Store()
        >>> s = store.series(store.histogram("h", buckets=(1, 2)), ())
        >>> store.observe(s, 1.0); store.observe(s, 1.5); store.observe(s, float("inf"))
        >>> store.histogram_value(s)
        ((1, 1, 1), inf)
        """
        if type(v) is not float:
            v = msg.real_arg(v, "v")
        if v != v:
            raise InvalidSampleError(msg.observe_nan())
        kind = self._kind
        if type(series) is not int or not 0 <= series < len(kind) or kind[series] != _HISTOGRAM:
            series = self._series_arg(series, _HISTOGRAM, "observe")
        # bisect_left finds the first bound >= v, which is the inclusive-le bucket.
        bucket = bisect_left(self._bounds[series], v)
        with self._lock:
            self._counts[series][bucket] += 1
            self._vals[series] += v
            self._state[series] = _ACTIVE

    # -- batches -------------------------------------------------------------------------

    def _check_ids(self, ids_arr: npt.NDArray[Any], kind: int) -> int:
        """Index of the first id that is unknown or of the wrong kind, or -1."""
        nseries = len(self._kind)
        kinds = np.frombuffer(bytes(self._kind), dtype=np.uint8)
        unknown = ids_arr >= nseries
        if ids_arr.dtype.kind == "i":
            unknown |= ids_arr < 0
        safe = np.where(unknown, 0, ids_arr) if nseries else np.zeros(0, np.intp)
        wrong = unknown.copy()
        if nseries:
            wrong |= kinds[safe] != kind
        bad = np.flatnonzero(wrong)
        return int(bad[0]) if bad.size else -1

    def _raise_bad_id(self, ids_arr: npt.NDArray[Any], i: int, kind: int, method: str) -> None:
        sid = int(ids_arr[i])
        if not 0 <= sid < len(self._kind):
            raise UnknownSeriesError(msg.batch_unknown_series(i, sid), sid)
        raise InvalidSampleError(
            msg.batch_wrong_kind(i, sid, _KIND_NAMES[self._kind[sid]], _KIND_NAMES[kind])
        )

    def inc_many(self, ids: object, amounts: object = None) -> None:
        """``inc(ids[i], amounts[i])`` for every ``i``, all or nothing.

        >>> import numpy as np
        >>> store = Store()
        >>> m = store.counter("c_total", "", ("k",))
        >>> a, b = store.series(m, ("a",)), store.series(m, ("b",))
        >>> store.inc_many(np.array([a, b, a]), np.array([1, 2, 3]))
        >>> store.value(a), store.value(b)
        (4, 2)
        """
        ids_arr = _batch_array(ids, "ids", _INT_DTYPES)
        amounts_arr = None if amounts is None else _batch_array(amounts, "amounts", _INT_DTYPES)
        if amounts_arr is not None and len(amounts_arr) != len(ids_arr):
            raise msg.batch_length("amounts", len(ids_arr), len(amounts_arr))
        bad_id = self._check_ids(ids_arr, _COUNTER)
        bad_amount = -1
        if amounts_arr is not None and amounts_arr.dtype.kind == "i":
            negative = np.flatnonzero(amounts_arr < 0)
            bad_amount = int(negative[0]) if negative.size else -1
        if bad_id >= 0 and (bad_amount < 0 or bad_id <= bad_amount):
            self._raise_bad_id(ids_arr, bad_id, _COUNTER, "inc_many")
        if bad_amount >= 0:
            amount = int(amounts_arr[bad_amount])  # type: ignore[index]
            raise InvalidSampleError(msg.batch_negative_amount(bad_amount, amount))
        id_list: list[int] = ids_arr.tolist()
        vals, state = self._vals, self._state
        with self._lock:
            if amounts_arr is None:
                for sid in id_list:
                    vals[sid] += 1
            else:
                for sid, amount in zip(id_list, amounts_arr.tolist()):
                    vals[sid] += amount
            # Wrap like the compiled store's uint64 slots (checked once per touched series).
            for sid in set(id_list):
                state[sid] = _ACTIVE
                if vals[sid] > _U64_MAX:
                    vals[sid] &= _U64_MAX

    def observe_many(self, ids: object, values: object) -> None:
        """``observe(ids[i], values[i])`` for every ``i``, all or nothing.

        >>> import numpy as np
        >>> store = Store()
        >>> s = store.series(store.histogram("h", buckets=(1,)), ())
        >>> store.observe_many(np.array([s, s], dtype=np.int32), np.array([0.5, 7.0]))
        >>> store.histogram_value(s)
        ((1, 1), 7.5)
        """
        ids_arr = _batch_array(ids, "ids", _INT_DTYPES)
        values_arr = _batch_array(values, "values", _FLOAT_DTYPES)
        if len(values_arr) != len(ids_arr):
            raise msg.batch_length("values", len(ids_arr), len(values_arr))
        floats = values_arr.astype(np.float64, copy=False)
        bad_id = self._check_ids(ids_arr, _HISTOGRAM)
        nan = np.flatnonzero(np.isnan(floats))
        bad_value = int(nan[0]) if nan.size else -1
        if bad_id >= 0 and (bad_value < 0 or bad_id <= bad_value):
            self._raise_bad_id(ids_arr, bad_id, _HISTOGRAM, "observe_many")
        if bad_value >= 0:
            raise InvalidSampleError(msg.batch_nan(bad_value))
        vals, counts, bounds, state = self._vals, self._counts, self._bounds, self._state
        # The compiled store's rule (docs/store.md, "Sums in batches"): each series' values
        # summed in index order from 0.0, then added to its _sum once. Same float
        # operations in the same order, so the twin's sums equal C's bit for bit.
        partial: dict[int, float] = {}
        for sid, value in zip(ids_arr.tolist(), floats.tolist()):
            partial[sid] = partial.get(sid, 0.0) + value
        with self._lock:
            for sid, value in zip(ids_arr.tolist(), floats.tolist()):
                counts[sid][bisect_left(bounds[sid], value)] += 1
            for sid, total in partial.items():
                vals[sid] += total
                state[sid] = _ACTIVE

    # -- reading -------------------------------------------------------------------------

    def value(self, series: int) -> int | float:
        """A counter's (``int``) or gauge's (``float``) current value."""
        kind = self._kind
        if type(series) is not int or not 0 <= series < len(kind) or kind[series] == _HISTOGRAM:
            series = self._series_arg(series, -1, "value")
            if kind[series] == _HISTOGRAM:
                raise InvalidSampleError(msg.histogram_value_read(series))
        value: int | float = self._vals[series]
        return value

    def histogram_value(self, series: int) -> HistogramValue:
        """``(non-cumulative counts per bucket, last is +Inf; sum)`` of a histogram series."""
        series = self._series_arg(series, _HISTOGRAM, "histogram_value")
        with self._lock:
            return tuple(self._counts[series]), float(self._vals[series])

    def snapshot(self) -> Snapshot:
        """Every family sorted by name: ``(name, kind, help, label_names, buckets, series)``.

        The fold families (``meshstats_series_overflow_total`` for ``max_series``,
        ``meshstats_exposition_budget_overflow_total`` for the exposition budget) are
        included, sorted like the others, when any metric has folded label sets: they are
        what ``render()`` prints.
        """
        entries: Snapshot = []
        overflow: list[tuple[tuple[str, ...], Any]] = []
        budget: list[tuple[tuple[str, ...], Any]] = []
        with self._lock:
            order = list(self._order)
            vals, counts, labels, state = self._vals, self._counts, self._labels, self._state
            for metric in self._metrics:
                if metric.overflow_count:
                    overflow.append(((metric.name,), metric.overflow_count))
                if metric.budget_overflow_count:
                    budget.append(((metric.name,), metric.budget_overflow_count))
            for name, metric_id in order:
                m = self._metrics[metric_id]
                shown = [s for s in m.series_ids if state[s] != _HIDDEN]  # expire_idle()
                if m.kind == _HISTOGRAM:
                    rows: list[tuple[tuple[str, ...], Any]] = [
                        (labels[s], (tuple(counts[s]), vals[s])) for s in shown
                    ]
                else:
                    rows = [(labels[s], vals[s]) for s in shown]
                entry: SnapshotEntry = (
                    name, _KIND_NAMES[m.kind], m.help, m.label_names, m.buckets, rows
                )  # fmt: skip
                entries.append(entry)
        for family, help_text, rows in (
            (OVERFLOW_FAMILY, OVERFLOW_HELP, overflow),
            (BUDGET_FAMILY, BUDGET_HELP, budget),
        ):
            if rows:
                extra: SnapshotEntry = (family, "counter", help_text, ("metric",), (), rows)
                entries.insert(bisect_left([e[0] for e in entries], family), extra)
        return entries

    def render(self, openmetrics: bool = False) -> bytes:
        """The exposition: Prometheus text 0.0.4, or OpenMetrics 1.0 if ``openmetrics``."""
        return _render_py.render(self.snapshot(), openmetrics=openmetrics)

    def memory_bytes(self) -> int:
        """Approximate bytes held by the store (``sys.getsizeof`` over its containers).

        An estimate, not an exact figure: objects Python shares (small ints, interned
        strings) are counted where the store refers to them, each distinct object once.
        """
        size = sys.getsizeof
        seen: set[int] = set()

        def once(obj: object) -> int:
            if id(obj) in seen:
                return 0
            seen.add(id(obj))
            return size(obj)

        with self._lock:
            total = size(self) + size(self._kind) + size(self._order) + size(self._taken)
            total += size(self._state)
            containers = (self._metric_of, self._labels, self._vals, self._counts, self._bounds)
            total += sum(size(c) for c in containers)
            for value in self._vals:
                total += once(value)
            for counts in self._counts:
                total += once(counts) + sum(once(c) for c in counts)
            for bounds in self._bounds:
                total += once(bounds)
            for key in self._labels:
                total += once(key) + sum(once(v) for v in key)
            for m in self._metrics:
                total += size(m) + size(m.index) + size(m.series_ids) + once(m.name)
                total += once(m.help) + once(m.label_names) + once(m.buckets)
        return total
