"""The compiled series store (Cython over ``_core/store.c``); same API as ``_store_py``.

>>> from meshstats._store_c import Store
>>> store = Store()
>>> sid = store.series(store.counter("istio_requests_total", "Requests.", ("code",)), ("200",))
>>> store.inc(sid)
>>> store.render().splitlines()[-1]
b'istio_requests_total{code="200"} 1'

The contract both backends follow is ``docs/store.md``.
"""

import os
from collections.abc import Iterable, Sequence
from typing import SupportsFloat, SupportsIndex

from typing_extensions import Buffer, Self

__all__ = ["DEFAULT_BUCKETS", "DEFAULT_MAX_EXPOSITION_BYTES", "Store"]

#: Envoy's default histogram bounds (milliseconds): 0.5 ... 3600000.
DEFAULT_BUCKETS: tuple[float, ...]
#: The exposition budget of a ``Store()`` made without one: 256 MiB.
DEFAULT_MAX_EXPOSITION_BYTES: int

HistogramValue = tuple[tuple[int, ...], float]
SnapshotEntry = tuple[
    str,
    str,
    str,
    tuple[str, ...],
    tuple[float, ...],
    list[tuple[tuple[str, ...], int | float | HistogramValue]],
]

class Store:
    """Metrics and their series; recording is lock-free C (atomics), GIL released for batches.

    >>> store = Store(default_max_series=1000)
    >>> dur = store.histogram("istio_request_duration_milliseconds", "Duration.", ("code",))
    >>> store.observe(store.series(dur, ("200",)), 12.5)

    Parameters
    ----------
    default_max_series
        The cardinality guard of metrics registered without ``max_series`` (>= 1).
    max_exposition_bytes
        The store-wide exposition budget (>= 1; 256 MiB by default): a new labelled series
        whose lines, at their widest, would take the total charged past it goes to its
        metric's overflow series instead (``budget_overflow_count``). So no scrape exceeds
        it by more than what the registered metrics fix (``docs/store.md``).
    """

    def __init__(
        self,
        default_max_series: SupportsIndex = 100_000,
        max_exposition_bytes: SupportsIndex = 268_435_456,
    ) -> None: ...
    @classmethod
    def shared(
        cls,
        path: str | os.PathLike[str],
        *,
        default_max_series: SupportsIndex = 100_000,
        max_exposition_bytes: SupportsIndex = 268_435_456,
        reserve: int = 68_719_476_736,
    ) -> Self:
        """A store in a file every process opens: one set of series for many processes.

        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "app.store")
        >>> a, b = Store.shared(path), Store.shared(path)
        >>> m = a.counter("c_total", "", ("k",))
        >>> b.counter("c_total", "", ("k",)) == m
        True

        A bare name lives in ``/dev/shm``; the file's creator fixes its settings. Raises
        ``StoreFileError`` for a file that is not a store of this layout, ``OSError`` when
        a system call fails. See ``docs/store.md``, "Shared stores".
        """
    @property
    def path(self) -> str | None:
        """The file of a shared store; ``None`` for a private one."""
    def repairs(self) -> int:
        """Times a change whose process died mid-way was repaired (shared stores)."""
    def counter(
        self,
        name: str,
        help: str = "",
        labels: Iterable[str] = (),
        *,
        max_series: SupportsIndex | None = None,
    ) -> int:
        """Register a counter (unsigned 64-bit); returns its metric id.

        >>> Store().counter("istio_requests_total", "Requests.", ("reporter",))
        0

        Raises ``InvalidMetricError`` for a bad name or label names,
        ``DuplicateMetricError`` when the name is taken.
        """
    def gauge(
        self,
        name: str,
        help: str = "",
        labels: Iterable[str] = (),
        *,
        max_series: SupportsIndex | None = None,
        per_process: bool = False,
    ) -> int:
        """Register a gauge (a float); returns its metric id.

        >>> Store().gauge("istio_build", "Build.", ("component", "tag"))
        0

        In a shared store a gauge series holds one value for every process (the last
        ``set`` wins). ``per_process=True`` gives each process its own: a last label
        ``pid`` is added, which ``series()`` fills in with this process' id.
        """
    def histogram(
        self,
        name: str,
        help: str = "",
        labels: Iterable[str] = (),
        *,
        buckets: Iterable[SupportsFloat] = ...,
        max_series: SupportsIndex | None = None,
    ) -> int:
        """Register a histogram with its own strictly increasing finite bounds.

        >>> Store().histogram("latency_ms", "Latency.", ("code",), buckets=(1, 10, 100))
        0

        ``+Inf`` is implicit; the default is ``DEFAULT_BUCKETS``; a label named ``le`` is
        refused.
        """
    def series(self, metric: int, values: Sequence[str]) -> int:
        """The series id for these label values, created on first use.

        >>> store = Store()
        >>> m = store.counter("c_total", "", ("code",))
        >>> store.series(m, ("200",)), store.series(m, ("500",)), store.series(m, ("200",))
        (0, 1, 0)

        Once the metric holds ``max_series`` series, new label sets all map to its
        overflow series (every value ``__overflow__``) and ``overflow_count`` grows. So
        does a new label set whose lines would take the store past
        ``max_exposition_bytes``; ``budget_overflow_count`` counts those.
        """
    def labels(self, series: int) -> tuple[str, ...]:
        """The label values of a series.

        >>> store = Store()
        >>> store.labels(store.series(store.gauge("g", "", ("a",)), ("x",)))
        ('x',)
        """
    def metric_of(self, series: int) -> int:
        """The metric id a series belongs to.

        >>> store = Store()
        >>> store.metric_of(store.series(store.gauge("g"), ()))
        0
        """
    def series_count(self, metric: int) -> int:
        """Real series of a metric (the overflow series not counted).

        >>> store = Store()
        >>> m = store.gauge("g", "", ("a",))
        >>> _ = store.series(m, ("x",)); store.series_count(m)
        1
        """
    def visible_series_count(self, metric: int) -> int:
        """Real series of a metric not hidden by ``expire_idle()`` (overflow not counted).

        >>> store = Store()
        >>> m = store.counter("c_total", "", ("k",))
        >>> sid = store.series(m, ("a",))
        >>> store.expire_idle(), store.expire_idle(), store.visible_series_count(m)
        (0, 1, 0)
        >>> store.inc(sid); store.visible_series_count(m)
        1

        Walks every series of the store in C (GIL released): meant for occasional calls.
        ``series_count`` keeps counting hidden series too.
        """
    def expire_idle(self) -> int:
        """Hide series not recorded since the previous call; returns how many it hid.

        >>> store = Store()
        >>> sid = store.series(store.counter("c_total"), ())
        >>> store.expire_idle(), store.expire_idle(), store.render()
        (0, 1, b'# HELP c_total \\n# TYPE c_total counter\\n')
        >>> store.inc(sid); store.render().splitlines()[-1]
        b'c_total 1'

        Called every T seconds, it drops series idle for between T and 2T from
        ``render()`` and ``snapshot()``, as Istio's metric expiry does. Any record
        (``inc``/``set``/``observe`` and the batches) shows a series again, its value
        continued; ``series()`` does not. Ids stay valid and no memory is reclaimed.
        Runs in C without the GIL while other threads keep recording.
        """
    def overflow_count(self, metric: int) -> int:
        """``series()`` calls of a full metric folded into its overflow series.

        >>> store = Store()
        >>> m = store.counter("c_total", "", ("k",), max_series=1)
        >>> _ = store.series(m, ("a",)), store.series(m, ("b",))
        >>> store.overflow_count(m)
        1
        """
    def budget_overflow_count(self, metric: int) -> int:
        """``series()`` calls the exposition budget folded into the overflow series.

        >>> store = Store(max_exposition_bytes=100)
        >>> m = store.counter("c_total", "", ("k",))
        >>> store.series(m, ("a",)), store.series(m, ("b" * 80,)), store.series(m, ("c",))
        (0, 1, 2)
        >>> store.budget_overflow_count(m), store.overflow_count(m), store.labels(1)
        (1, 0, ('__overflow__',))

        Counted apart from ``overflow_count`` (folds by ``max_series``): the budget is the
        store's, so the metric that folds need not be the one that used it up.
        """
    @property
    def max_exposition_bytes(self) -> int:
        """The exposition budget this store was made with (clamped to ``2**64 - 1``)."""
    def exposition_bytes(self) -> int:
        """Bytes charged to the exposition budget: at most ``max_exposition_bytes``.

        >>> store = Store()
        >>> m = store.counter("c_total", "", ("k",))
        >>> _ = store.series(m, ("a",))
        >>> store.exposition_bytes()  # `c_total{k="a"} `, 20 digits, a newline
        36

        Each labelled series created (hidden ones too) is charged the most its lines can
        take in a render, so a render is never larger than this plus what the metrics
        fix: HELP/TYPE lines, labelless series, overflow series and the fold families.
        """
    def memory_bytes(self) -> int:
        """Exact bytes the C store holds (allocated with ``PyMem_RawMalloc``).

        >>> Store().memory_bytes() > 0
        True
        """
    def inc(self, series: int, n: SupportsIndex = 1) -> None:
        """Add ``n`` (``0 <= n < 2**64``) to a counter series; allocates nothing.

        >>> store = Store()
        >>> sid = store.series(store.counter("c_total"), ())
        >>> store.inc(sid); store.inc(sid, 5); store.value(sid)
        6
        """
    def set(self, series: int, v: SupportsFloat) -> None:
        """Set a gauge series (any float, NaN and infinities included).

        >>> store = Store()
        >>> sid = store.series(store.gauge("g"), ())
        >>> store.set(sid, 2.5); store.value(sid)
        2.5
        """
    def observe(self, series: int, v: SupportsFloat) -> None:
        """Record ``v`` in a histogram series; ``le`` is inclusive, NaN is refused.

        >>> store = Store()
        >>> sid = store.series(store.histogram("h", buckets=(1, 2)), ())
        >>> store.observe(sid, 1); store.observe(sid, 5); store.histogram_value(sid)
        ((1, 0, 1), 6.0)
        """
    def inc_many(self, ids: Buffer, amounts: Buffer | None = None) -> None:
        """Add ``amounts[i]`` (default 1) to counter ``ids[i]``, all in C without the GIL.

        >>> import numpy as np
        >>> store = Store()
        >>> sid = store.series(store.counter("c_total"), ())
        >>> store.inc_many(np.array([sid, sid]), np.array([2, 3])); store.value(sid)
        5

        ``ids`` and ``amounts`` are 1-D int32/int64/uint32/uint64 buffers of equal length
        (else ``ArrayTypeError`` / ``BatchShapeError``). The batch is checked first: a bad
        element raises, naming its index, and nothing is recorded.
        """
    def observe_many(self, ids: Buffer, values: Buffer) -> None:
        """Record ``values[i]`` in histogram ``ids[i]``, all in C without the GIL.

        >>> import numpy as np
        >>> store = Store()
        >>> sid = store.series(store.histogram("h", buckets=(1,)), ())
        >>> store.observe_many(np.array([sid, sid]), np.array([0.5, 3.0]))
        >>> store.histogram_value(sid)
        ((1, 1), 3.5)

        ``values`` is float64; float32 and int32/int64/uint32/uint64 are converted.
        All or nothing, like ``inc_many``. Each series' ``_sum`` grows by one partial sum:
        its batch values added in index order from 0.0 (docs/store.md, "Sums in batches").
        """
    def value(self, series: int) -> int | float:
        """A counter's value (int) or a gauge's (float).

        >>> store = Store()
        >>> store.value(store.series(store.gauge("g"), ()))
        0.0
        """
    def histogram_value(self, series: int) -> HistogramValue:
        """``(counts, sum)``: non-cumulative counts per bucket, the last for ``+Inf``.

        >>> store = Store()
        >>> store.histogram_value(store.series(store.histogram("h", buckets=(1,)), ()))
        ((0, 0), 0.0)
        """
    def snapshot(self) -> list[SnapshotEntry]:
        """Every metric sorted by name: ``(name, kind, help, labels, buckets, series)``.

        >>> store = Store()
        >>> store.inc(store.series(store.counter("c_total", "C.", ("k",)), ("a",)), 3)
        >>> store.snapshot()
        [('c_total', 'counter', 'C.', ('k',), (), [(('a',), 3)])]
        """
    def render(self, openmetrics: bool = False) -> bytes:
        """Prometheus text 0.0.4, or OpenMetrics 1.0, rendered in C without the GIL.

        >>> store = Store()
        >>> store.inc(store.series(store.counter("up_total", "Up.", ("job",)), ("a",)))
        >>> print(store.render(openmetrics=True).decode(), end="")
        # HELP up Up.
        # TYPE up counter
        up_total{job="a"} 1
        # EOF
        """
