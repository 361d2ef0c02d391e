"""The compiled series store: Cython glue over ``_core/store.c`` and ``_core/render.c``.

>>> from meshstats._store_c import Store
>>> store = Store()
>>> req = store.counter("istio_requests_total", "Requests.", ("reporter",))
>>> sid = store.series(req, ("source",))
>>> store.inc(sid, 2)
>>> store.value(sid)
2

Arguments are checked and converted here with the GIL held; the C calls that
record (single events, and whole batches under ``with nogil``) never allocate a
Python object and never take a lock. The contract is ``docs/store.md``.
"""

import operator
import os
import sys

cimport cython

from cpython.buffer cimport PyBUF_RECORDS_RO, PyBuffer_Release, PyObject_GetBuffer
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_RawCalloc, PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.errno cimport errno
from libc.math cimport isnan
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, UINT64_MAX

from . import _messages as msg
from .errors import (
    DuplicateMetricError,
    InvalidLabelsError,
    InvalidMetricError,
    InvalidSampleError,
    StoreFileError,
    UnknownSeriesError,
)

cdef extern from "Python.h":
    # Raw references: render() grows a bytes object in place, without the GIL held
    # between growths (see _grow_bytes).
    PyObject *_bytes_new "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n)
    int _PyBytes_Resize(PyObject **pv, Py_ssize_t n) except -1
    char *_bytes_data "PyBytes_AS_STRING"(PyObject *o)
    void PyErr_Clear()
    Py_ssize_t PY_SSIZE_T_MAX
    bint PyLong_Check(object o)
    bint PyLong_CheckExact(object o)
    bint PyFloat_CheckExact(object o)
    bint PyUnicode_Check(object o)
    double PyFloat_AS_DOUBLE(object o)
    double PyFloat_AsDouble(object o) except? -1.0
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1
    unsigned long long PyLong_AsUnsignedLongLong(object o) except? -1
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL

cdef extern from *:
    """
    /* A bytes object's cached hash must be forgotten before its bytes change. The field
     * is deprecated from 3.12 and may go: then renders simply do not reuse buffers. */
    #if PY_VERSION_HEX < 0x030E0000
    #if defined(__GNUC__)
    #pragma GCC diagnostic push
    #pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    #endif
    static inline void ms_bytes_forget_hash(PyObject *o) { ((PyBytesObject *)o)->ob_shash = -1; }
    #if defined(__GNUC__)
    #pragma GCC diagnostic pop
    #endif
    #define ms_bytes_reusable() 1
    #else
    static inline void ms_bytes_forget_hash(PyObject *o) { (void)o; }
    #define ms_bytes_reusable() 0
    #endif
    /* A bytes object shortened in place (n <= its length): its memory stays as it was. */
    static inline void ms_bytes_set_length(PyObject *o, Py_ssize_t n) {
        Py_SET_SIZE(o, n);
        PyBytes_AS_STRING(o)[n] = '\\0';
    }
    """
    void _bytes_forget_hash "ms_bytes_forget_hash"(PyObject *o)
    Py_ssize_t _refcnt "Py_REFCNT"(PyObject *o)  # a raw pointer: no temporary reference
    void _set_length "ms_bytes_set_length"(PyObject *o, Py_ssize_t n)
    bint _bytes_reusable "ms_bytes_reusable"()

cdef extern from "render.h" nogil:
    ctypedef struct ms_buf:
        char *data
        size_t len
        size_t cap
        char *(*grow)(void *ctx, size_t cap) noexcept nogil
        void *ctx
    ms_status ms_render(ms_store *s, int openmetrics, ms_buf *out)
    void ms_buf_free(ms_store *s, ms_buf *b)

__all__ = ["DEFAULT_BUCKETS", "DEFAULT_MAX_EXPOSITION_BYTES", "Store"]

#: Envoy's default histogram bounds (milliseconds), used by Istio's duration metrics.
DEFAULT_BUCKETS = (
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
)

#: The exposition budget unless given: why this figure is in _store_py and docs/store.md.
DEFAULT_MAX_EXPOSITION_BYTES = 256 * 1024 * 1024

# The raw domain is thread-safe without the GIL (render allocates with it released)
# and is still traced by tracemalloc.
cdef ms_allocator _ALLOCATOR
_ALLOCATOR.malloc = PyMem_RawMalloc
_ALLOCATOR.calloc = PyMem_RawCalloc
_ALLOCATOR.realloc = PyMem_RawRealloc
_ALLOCATOR.free = PyMem_RawFree

_KINDS = ("counter", "gauge", "histogram")
_OVERFLOW_FAMILY = "meshstats_series_overflow_total"
_OVERFLOW_HELP = "Label sets folded into the overflow series because the metric reached max_series."
_BUDGET_FAMILY = "meshstats_exposition_budget_overflow_total"
_BUDGET_HELP = ("Label sets folded into the overflow series because the store reached "
                "max_exposition_bytes.")
_TWO64 = 2**64
# Renders at least this large keep their buffer for the next one (smaller ones cost
# little to allocate, and the kept memory would be most of a small store's).
_SPARE_MIN = 1 << 20

# A buffer's format is native-endian if it has no prefix, '@' or '=', or the prefix
# that names this machine's byte order.
_NATIVE_PREFIXES = "@=" + ("<" if sys.byteorder == "little" else ">!")


cdef str _family(ms_kind kind, str name):
    if kind == MS_COUNTER and name.endswith("_total"):
        return name[:len(name) - 6]
    return name


# The one table from a C status to an exception class (docs/store.md, "Errors"). A status
# missing here is a bug in the core or in this glue, never the caller's mistake: it
# becomes a SystemError instead of posing as a bad argument.
cdef dict _STATUS_ERRORS = {
    MS_ERR_NOMEM: MemoryError,
    MS_ERR_INVALID_METRIC: InvalidMetricError,
    MS_ERR_DUPLICATE_METRIC: DuplicateMetricError,
    MS_ERR_INVALID_LABELS: InvalidLabelsError,
    MS_ERR_UNKNOWN_METRIC: UnknownSeriesError,
    MS_ERR_UNKNOWN_SERIES: UnknownSeriesError,
    MS_ERR_WRONG_KIND: InvalidSampleError,
    MS_ERR_INVALID_SAMPLE: InvalidSampleError,
    # A limit of the C store (2**32 ids, 2**30 metrics, 2 GiB of label text) is the fault
    # of what was being added: a series' label set, or, with defining=True, the metric.
    MS_ERR_LIMIT: InvalidLabelsError,
}


def _status_error(int status, str message, object series_id=None, str name="",
                  bint defining=False):
    """The exception for a C status (not raised): the table above, tested on its own."""
    cls = _STATUS_ERRORS.get(status)
    if status == MS_ERR_LIMIT and defining:
        cls = InvalidMetricError
    if cls is None:
        return SystemError(f"meshstats store: unexpected status {status} ({message})")
    if cls is DuplicateMetricError:
        return DuplicateMetricError(message, name)
    if cls is UnknownSeriesError:
        return UnknownSeriesError(message, series_id)
    return cls(message)


cdef str _file_problem(ms_file_problem problem, bytes path):
    if problem == MS_FILE_VERSION:
        with open(path, "rb") as f:
            head = f.read(12)
        return msg.file_version(int.from_bytes(head[8:12], "little"), MS_SHARED_VERSION)
    if problem == MS_FILE_TRUNCATED:
        return msg.FILE_TRUNCATED
    return msg.FILE_NOT_A_STORE


cdef int _raise(ms_status status, str message, object series_id=None, str name="",
                bint defining=False) except -1:
    """The one place a C status becomes an exception."""
    if status == MS_OK:
        return 0
    raise _status_error(status, message, series_id, name, defining)


cdef inline uint64_t _series_id(object series, str what) except? 0xFFFFFFFFFFFFFFFF:
    """A series (or metric) id for C; UINT64_MAX (never a valid id) for ints out of range."""
    cdef int overflow = 0
    cdef long long v
    if PyLong_CheckExact(series) and _small_int(series):
        v = _small_int_value(series)
        return UINT64_MAX if v < 0 else <uint64_t>v
    if not PyLong_Check(series):
        try:
            series = operator.index(series)
        except TypeError:
            raise UnknownSeriesError(msg.not_an_id(what, series)) from None
    v = PyLong_AsLongLongAndOverflow(series, &overflow)
    if overflow or v < 0:
        return UINT64_MAX
    return <uint64_t>v


cdef inline uint64_t _amount(object n) except? 0xFFFFFFFFFFFFFFFF:
    cdef int overflow = 0
    cdef long long v
    if PyLong_CheckExact(n) and _small_int(n):
        v = _small_int_value(n)
        if v >= 0:
            return <uint64_t>v
    if not PyLong_Check(n):
        try:
            n = operator.index(n)
        except TypeError:
            raise InvalidSampleError(msg.not_an_int("n", n)) from None
    v = PyLong_AsLongLongAndOverflow(n, &overflow)
    if overflow == 0 and v >= 0:
        return <uint64_t>v
    if overflow > 0 and n < _TWO64:
        return PyLong_AsUnsignedLongLong(n)
    raise InvalidSampleError(msg.amount_out_of_range(n))


cdef extern from *:
    """
    /* The hot path's ints: an exact int of at most one digit (every series id and
     * the usual amounts) is read straight from its digit, as CPython's own fast paths
     * do; anything else takes the general PyLong calls. */
    #if PY_VERSION_HEX >= 0x030C0000
    #define ms_small_int(o) _PyLong_IsCompact((PyLongObject *)(o))
    #define ms_small_int_value(o) ((long)_PyLong_CompactValue((PyLongObject *)(o)))
    #else
    #define ms_small_int(o) (Py_SIZE(o) >= -1 && Py_SIZE(o) <= 1)
    #define ms_small_int_value(o) ((long)Py_SIZE(o) * (long)((PyLongObject *)(o))->ob_digit[0])
    #endif
    """
    bint _small_int "ms_small_int"(object o)
    long _small_int_value "ms_small_int_value"(object o)


cdef inline double _sample(object v) except? -1.0:
    if PyFloat_CheckExact(v):
        return PyFloat_AS_DOUBLE(v)
    if PyLong_CheckExact(v):
        try:
            return PyFloat_AsDouble(v)
        except OverflowError:
            pass  # the shared check below words it
    # Everything else (bool, numpy scalars, str, an int too large) takes the twin's rule.
    return msg.real_arg(v, "v")


cdef uint64_t _max_series(object value, str what) except 0:
    cdef object n = msg.check_max_series(value, what)
    return <uint64_t>min(n, _TWO64 - 1)


cdef int _array(object array, Py_buffer *view, str what, bint floats, ms_array *out) except -1:
    """Fill ``view`` (the caller releases it) and ``out`` from a 1-D buffer, or raise
    ArrayTypeError. Strided and read-only buffers are used in place, without a copy."""
    try:
        PyObject_GetBuffer(array, view, PyBUF_RECORDS_RO)
    except (TypeError, BufferError):
        raise msg.array_type(what, array) from None
    try:
        if view.ndim != 1:
            raise msg.array_ndim(what, view.ndim)
        fmt = (<bytes>view.format).decode("ascii") if view.format is not NULL else "B"
        shown = fmt
        if len(fmt) == 2 and fmt[0] in _NATIVE_PREFIXES:
            fmt = fmt[1:]
        size = view.itemsize
        out.data = view.buf
        out.stride = view.strides[0]
        if len(fmt) == 1 and size in (4, 8):
            if fmt in "ilqn":
                out.dtype = MS_I32 if size == 4 else MS_I64
                return 0
            if fmt in "ILQN":
                out.dtype = MS_U32 if size == 4 else MS_U64
                return 0
            if floats and fmt == "f" and size == 4:
                out.dtype = MS_F32
                return 0
            if floats and fmt == "d" and size == 8:
                out.dtype = MS_F64
                return 0
        raise msg.array_dtype(what, floats, shown)
    except BaseException:
        PyBuffer_Release(view)
        raise


cdef int _same_length(Py_ssize_t n, Py_ssize_t m, str other) except -1:
    if n != m:
        raise msg.batch_length(other, n, m)
    return 0


cdef class Store:
    """Metrics and their series, recorded with C atomics; see ``docs/store.md``.

    >>> store = Store(default_max_series=1000)
    >>> dur = store.histogram("istio_request_duration_milliseconds", "Duration.", ("code",))
    >>> store.observe(store.series(dur, ("200",)), 12.5)
    >>> store.histogram_value(0)[1]
    12.5
    """

    # Attributes and cdef methods are declared in _store_c.pxd (other modules cimport Store).

    def __cinit__(self, default_max_series=100_000,
                  max_exposition_bytes=DEFAULT_MAX_EXPOSITION_BYTES):
        cdef uint64_t n = _max_series(default_max_series, "default_max_series")
        # Same rule as max_series: an int >= 1, clamped to 2**64 - 1 (never reached).
        cdef uint64_t budget = _max_series(max_exposition_bytes, "max_exposition_bytes")
        self._s = ms_store_new_budget(&_ALLOCATOR, n, budget)
        self._per_process = set()
        if self._s is NULL:
            raise MemoryError("cannot allocate a Store")

    def __dealloc__(self):
        ms_store_free(self._s)

    @classmethod
    def shared(cls, path, *, default_max_series=100_000,
               max_exposition_bytes=DEFAULT_MAX_EXPOSITION_BYTES,
               reserve=msg.DEFAULT_SHARED_RESERVE):
        """A store in a file every process opens: one set of series for many processes.

        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "app.store")
        >>> a, b = Store.shared(path), Store.shared(path)  # two processes, or one
        >>> m = a.counter("c_total", "", ("k",))
        >>> b.counter("c_total", "", ("k",)) == m, b.series(m, ("x",)) == a.series(m, ("x",))
        (True, True)
        >>> a.inc(a.series(m, ("x",)), 2); b.value(b.series(m, ("x",)))
        2

        A bare name lives in ``/dev/shm``. The file's creator fixes its settings; later
        openers get the file's. See ``docs/store.md``, "Shared stores".
        """
        resolved = msg.shared_store_path(path)
        cdef uint64_t n = _max_series(default_max_series, "default_max_series")
        cdef uint64_t budget = _max_series(max_exposition_bytes, "max_exposition_bytes")
        cdef uint64_t span = msg.check_reserve(reserve)
        cdef bytes encoded = os.fsencode(resolved)
        cdef const char *c_path = encoded
        cdef ms_store *s = NULL
        cdef ms_file_problem problem = MS_FILE_OK
        cdef ms_status st
        cdef int err = 0
        with nogil:
            st = ms_store_open_shared(c_path, &_ALLOCATOR, n, budget, span, &s, &problem)
            if st == MS_ERR_IO:
                err = errno
        if st == MS_ERR_IO:
            raise OSError(err, os.strerror(err), resolved)
        if st == MS_ERR_FILE:
            raise StoreFileError(resolved, _file_problem(problem, encoded))
        _raise(st, f"cannot open the shared store {resolved!r}")
        cdef Store store = cls.__new__(cls)
        ms_store_free(store._s)
        store._s = s
        store._path = resolved
        store._seen = {}
        return store

    @property
    def path(self):
        """The file of a shared store (``Store.shared``); ``None`` for a private one."""
        return self._path

    def repairs(self):
        """Times a change whose process died mid-way was repaired (shared stores).

        >>> Store().repairs()
        0
        """
        return ms_store_repairs(self._s)

    def __repr__(self):
        where = "" if self._path is None else f" shared in {self._path!r}"
        return (f"<meshstats.Store{where}: {ms_metric_count(self._s)} metrics, "
                f"{ms_series_total(self._s)} series>")

    # ---- metrics ---------------------------------------------------------------------

    cdef uint32_t _add(self, ms_kind kind, object name, object help, object labels,
                       object buckets, object max_series) except? 0xffffffff:
        # The twin's check, shared: the same mistakes found in the same order, worded once.
        help, labels, bounds, max_series = msg.check_definition(
            _KINDS[kind], name, help, labels, buckets, max_series)
        cdef uint64_t limit = 0 if max_series is None else <uint64_t>min(max_series, _TWO64 - 1)
        cdef Py_ssize_t name_len, help_len, n = len(labels), nb = len(bounds), size
        # Names are ASCII by now and help is encodable: these cannot fail.
        cdef const char *name_p = PyUnicode_AsUTF8AndSize(name, &name_len)
        cdef const char *help_p = PyUnicode_AsUTF8AndSize(help, &help_len)
        cdef ms_strref *refs = <ms_strref *>PyMem_Malloc((n + 1) * sizeof(ms_strref))
        cdef double *b_arr = <double *>PyMem_Malloc((nb + 1) * sizeof(double))
        cdef uint32_t out = 0
        cdef ms_status st
        try:
            if refs is NULL or b_arr is NULL:
                raise MemoryError()
            for i in range(n):
                refs[i].ptr = PyUnicode_AsUTF8AndSize(labels[i], &size)
                refs[i].len = <size_t>size
            for i in range(nb):
                b_arr[i] = bounds[i]
            st = ms_metric_add(self._s, kind, name_p, <size_t>name_len, help_p,
                               <size_t>help_len, refs, <uint32_t>n, b_arr, <uint32_t>nb,
                               limit, &out)
            if st == MS_ERR_DUPLICATE_METRIC:
                taken = name if name in self._taken_names() else _family(kind, name)
                _raise(st, msg.duplicate_metric(taken), None, taken)
            # Only the C store's own limits are left (docs/store.md, "Hard limits").
            _raise(st, f"cannot register metric {name!r}: a limit of the compiled store",
                   None, "", True)
        finally:
            PyMem_Free(refs)
            PyMem_Free(b_arr)
        return out

    cdef set _taken_names(self):
        cdef ms_metric_info info
        taken = {_OVERFLOW_FAMILY, _family(MS_COUNTER, _OVERFLOW_FAMILY),
                 _BUDGET_FAMILY, _family(MS_COUNTER, _BUDGET_FAMILY)}
        for m in range(ms_metric_count(self._s)):
            ms_metric_get(self._s, m, &info)
            name = PyUnicode_DecodeUTF8(info.name.ptr, <Py_ssize_t>info.name.len, NULL)
            taken.update((name, _family(info.kind, name)))
        return taken

    def counter(self, name, help="", labels=(), *, max_series=None):
        """Register a counter; returns its metric id.

        >>> Store().counter("istio_requests_total", "Requests.", ("reporter",))
        0
        """
        return self._add(MS_COUNTER, name, help, labels, None, max_series)

    def gauge(self, name, help="", labels=(), *, max_series=None, per_process=False):
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
        if per_process:
            labels = msg.per_process_labels(labels)
        m = self._add(MS_GAUGE, name, help, labels, None, max_series)
        if per_process:
            self._per_process.add(m)
        return m

    def histogram(self, name, help="", labels=(), *, buckets=DEFAULT_BUCKETS,
                  max_series=None):
        """Register a histogram with its own bounds (``+Inf`` implied); returns its id.

        >>> Store().histogram("latency_ms", "Latency.", ("code",), buckets=(1, 10, 100))
        0
        """
        return self._add(MS_HISTOGRAM, name, help, labels, buckets, max_series)

    # ---- series ----------------------------------------------------------------------

    cdef uint32_t _metric(self, object metric) except? 0xffffffff:
        cdef uint64_t m = _series_id(metric, "metric")
        if m >= ms_metric_count(self._s):
            number = operator.index(metric)
            raise UnknownSeriesError(msg.unknown_metric(number), number)
        return <uint32_t>m

    def series(self, metric, values):
        """The series id of ``metric`` with these label values (created on first use).

        >>> store = Store()
        >>> m = store.counter("c_total", "", ("code",))
        >>> store.series(m, ("200",)), store.series(m, ("500",)), store.series(m, ("200",))
        (0, 1, 0)
        """
        cdef uint32_t m = self._metric(metric)
        if not isinstance(values, (tuple, list)):
            self._explain_values(m, values)
        if self._per_process and m in self._per_process:
            values = (*values, str(os.getpid()))
        cdef object key = None
        if self._seen is not None:
            # A shared store's lookups take a lock across processes (flock, ~3 us): a label
            # set this process has resolved is answered from here, as ids never change.
            key = (m, tuple(values))
            found = self._seen.get(key)
            if found is not None:
                return found
        cdef Py_ssize_t n = len(values), size, i
        cdef ms_strref stack[32]
        cdef ms_strref *refs = stack
        cdef uint32_t out = 0, overflow = 0
        cdef ms_status st
        if n > 32:
            refs = <ms_strref *>PyMem_Malloc(n * sizeof(ms_strref))
            if refs is NULL:
                raise MemoryError()
        try:
            for i in range(n):
                v = values[i]
                if not PyUnicode_Check(v):
                    self._explain_values(m, values)
                try:
                    refs[i].ptr = PyUnicode_AsUTF8AndSize(v, &size)
                except UnicodeEncodeError:
                    self._explain_values(m, values)
                refs[i].len = <size_t>size
            st = ms_series_get(self._s, m, refs, <uint32_t>n, &out)
            if st == MS_ERR_INVALID_LABELS:
                self._explain_values(m, values)
            if st != MS_OK:
                _raise(st, f"cannot create a series of metric {metric}: a limit of the "
                       "compiled store")
        finally:
            if refs is not stack:
                PyMem_Free(refs)
        if key is not None:
            ms_metric_overflow_series(self._s, m, &overflow)
            if out != overflow:  # a fold is counted on every call: never remembered
                self._seen[key] = out
        return out

    cdef int _explain_values(self, uint32_t m, object values) except -1:
        """Raise what is wrong with ``values``, worded as the twin words it."""
        cdef ms_metric_info info
        cdef ms_strref ref
        ms_metric_get(self._s, m, &info)
        names = []
        for i in range(info.n_labels):
            ms_metric_label_name(self._s, m, i, &ref)
            names.append(PyUnicode_DecodeUTF8(ref.ptr, <Py_ssize_t>ref.len, NULL))
        msg.check_values(PyUnicode_DecodeUTF8(info.name.ptr, <Py_ssize_t>info.name.len, NULL),
                         tuple(names), values)
        raise SystemError(f"meshstats store: label values {values!r} refused without a reason")

    cdef uint32_t _n_labels(self, uint32_t m):
        cdef ms_metric_info info
        ms_metric_get(self._s, m, &info)
        return info.n_labels

    def labels(self, series):
        """The label values of a series.

        >>> store = Store()
        >>> store.labels(store.series(store.gauge("g", "", ("a", "b")), ("x", "y")))
        ('x', 'y')
        """
        cdef uint64_t sid = _series_id(series, "series")
        cdef uint32_t m
        cdef ms_status st = ms_series_metric(self._s, sid, &m)
        if st != MS_OK:
            number = operator.index(series)
            _raise(st, msg.unknown_series(number), number)
        return self._labels(sid, self._n_labels(m))

    cdef tuple _labels(self, uint64_t sid, uint32_t n):
        cdef ms_strref ref
        cdef uint32_t i
        out = []
        for i in range(n):
            ms_series_label(self._s, sid, i, &ref)
            out.append(PyUnicode_DecodeUTF8(ref.ptr, <Py_ssize_t>ref.len, NULL))
        return tuple(out)

    def metric_of(self, series):
        """The metric id a series belongs to.

        >>> store = Store()
        >>> store.metric_of(store.series(store.gauge("g"), ()))
        0
        """
        cdef uint32_t m
        cdef ms_status st = ms_series_metric(self._s, _series_id(series, "series"), &m)
        if st != MS_OK:
            number = operator.index(series)
            _raise(st, msg.unknown_series(number), number)
        return m

    def series_count(self, metric):
        """Real series of a metric (its overflow series not counted).

        >>> store = Store()
        >>> m = store.counter("c_total", "", ("k",), max_series=1)
        >>> _ = store.series(m, ("a",)), store.series(m, ("b",))
        >>> store.series_count(m), store.overflow_count(m)
        (1, 1)
        """
        cdef ms_metric_info info
        ms_metric_get(self._s, self._metric(metric), &info)
        return info.series_count

    def visible_series_count(self, metric):
        """Real series of a metric not hidden by ``expire_idle()`` (overflow not counted).

        >>> store = Store()
        >>> m = store.counter("c_total", "", ("k",))
        >>> sid = store.series(m, ("a",))
        >>> store.expire_idle(), store.expire_idle(), store.visible_series_count(m)
        (0, 1, 0)
        >>> store.inc(sid); store.visible_series_count(m)
        1
        """
        cdef uint32_t m = self._metric(metric)
        cdef uint64_t n = 0
        with nogil:  # walks every series under the store mutex
            ms_metric_visible_count(self._s, m, &n)
        return n

    def expire_idle(self):
        """Hide series not recorded since the previous call; returns how many it hid.

        Called every T seconds, it drops series idle for between T and 2T from
        ``render()`` and ``snapshot()``, as Istio's metric expiry does. A record shows a
        series again with its value continued. Runs in C without the GIL; other threads
        may keep recording.

        >>> store = Store()
        >>> sid = store.series(store.counter("c_total"), ())
        >>> store.expire_idle(), store.expire_idle(), store.render()
        (0, 1, b'# HELP c_total \\n# TYPE c_total counter\\n')
        >>> store.inc(sid); store.render().splitlines()[-1]
        b'c_total 1'
        """
        cdef uint64_t n
        with nogil:
            n = ms_expire_idle(self._s)
        return n

    def overflow_count(self, metric):
        """How many ``series()`` calls of a full metric were folded into its overflow series.

        >>> store = Store()
        >>> m = store.counter("c_total", "", ("k",), max_series=1)
        >>> _ = store.series(m, ("a",)), store.series(m, ("b",)), store.series(m, ("c",))
        >>> store.overflow_count(m), store.labels(store.series(m, ("d",)))
        (2, ('__overflow__',))
        """
        cdef ms_metric_info info
        ms_metric_get(self._s, self._metric(metric), &info)
        return info.overflow_count

    def budget_overflow_count(self, metric):
        """How many ``series()`` calls the exposition budget folded into the overflow series.

        >>> store = Store(max_exposition_bytes=100)
        >>> m = store.counter("c_total", "", ("k",))
        >>> store.series(m, ("a",)), store.series(m, ("b" * 80,)), store.series(m, ("c",))
        (0, 1, 2)
        >>> store.budget_overflow_count(m), store.overflow_count(m), store.labels(1)
        (1, 0, ('__overflow__',))
        """
        cdef ms_metric_info info
        ms_metric_get(self._s, self._metric(metric), &info)
        return info.budget_overflow_count

    @property
    def max_exposition_bytes(self):
        """The exposition budget this store was made with."""
        return ms_store_max_exposition_bytes(self._s)

    def exposition_bytes(self):
        """Bytes charged to the exposition budget: at most ``max_exposition_bytes``.

        >>> store = Store()
        >>> m = store.counter("c_total", "", ("k",))
        >>> _ = store.series(m, ("a",))
        >>> store.exposition_bytes()  # `c_total{k="a"} `, 20 digits, a newline
        36
        """
        return ms_store_exposition_bytes(self._s)

    def memory_bytes(self):
        """Exact bytes this store holds in C (all through ``PyMem_RawMalloc``).

        >>> Store().memory_bytes() > 0
        True
        """
        return ms_store_memory(self._s)

    # ---- recording -------------------------------------------------------------------

    cdef int _record_error(self, ms_status st, object series, str method, str wanted,
                           object v) except -1:
        cdef uint32_t m
        cdef ms_metric_info info
        number = operator.index(series)
        if st == MS_ERR_WRONG_KIND:
            ms_series_metric(self._s, _series_id(series, "series"), &m)
            ms_metric_get(self._s, m, &info)
            _raise(st, msg.wrong_kind(number, _KINDS[info.kind], wanted))
        if st == MS_ERR_INVALID_SAMPLE:
            _raise(st, msg.observe_nan())
        return _raise(st, msg.unknown_series(number), number)

    # Plain method descriptors, not Cython 3's default binding functions: a call then
    # skips the cyfunction dispatch, ~5 ns of a ~25 ns call (measured with no-op
    # methods). The three single-event recorders are the hot path.
    @cython.binding(False)
    def inc(self, series, n=1):
        """Add ``n`` (an int, ``0 <= n < 2**64``) to a counter series.

        >>> store = Store()
        >>> sid = store.series(store.counter("c_total"), ())
        >>> store.inc(sid); store.inc(sid, 5); store.value(sid)
        6
        """
        cdef uint64_t amount = _amount(n)
        cdef ms_status st = ms_inc_inline(self._s, _series_id(series, "series"), amount)
        if st != MS_OK:
            self._record_error(st, series, "inc", "counter", n)

    @cython.binding(False)
    def set(self, series, v):
        """Set a gauge series to ``v`` (any float, NaN and infinities included).

        >>> store = Store()
        >>> sid = store.series(store.gauge("g"), ())
        >>> store.set(sid, 2.5); store.value(sid)
        2.5
        """
        cdef double value = _sample(v)
        cdef ms_status st = ms_set_inline(self._s, _series_id(series, "series"), value)
        if st != MS_OK:
            self._record_error(st, series, "set", "gauge", v)

    @cython.binding(False)
    def observe(self, series, v):
        """Record ``v`` in a histogram series (``le`` inclusive; NaN is refused).

        >>> store = Store()
        >>> sid = store.series(store.histogram("h", buckets=(1, 2)), ())
        >>> store.observe(sid, 1); store.observe(sid, 5); store.histogram_value(sid)
        ((1, 0, 1), 6.0)
        """
        cdef double value = _sample(v)
        if isnan(value):
            raise InvalidSampleError(msg.observe_nan())
        cdef ms_status st = ms_observe_inline(self._s, _series_id(series, "series"), value)
        if st != MS_OK:
            self._record_error(st, series, "observe", "histogram", v)

    cdef int _batch_error(self, ms_status st, size_t bad, object ids, object values,
                          str method, str wanted) except -1:
        """Name the first bad element as ``ids[i]``, ``amounts[i]`` or ``values[i]``."""
        cdef uint32_t m
        cdef ms_metric_info info
        if st == MS_ERR_NOMEM:
            _raise(st, f"{method}: out of memory for the batch's scratch")
        sid = int(ids[bad])
        if st == MS_ERR_UNKNOWN_SERIES:
            _raise(st, msg.batch_unknown_series(bad, sid), sid)
        if st == MS_ERR_WRONG_KIND:
            ms_series_metric(self._s, <uint64_t>sid, &m)
            ms_metric_get(self._s, m, &info)
            _raise(st, msg.batch_wrong_kind(bad, sid, _KINDS[info.kind], wanted))
        if wanted == "counter":
            _raise(st, msg.batch_negative_amount(bad, int(values[bad])))
        return _raise(st, msg.batch_nan(bad))

    def inc_many(self, ids, amounts=None):
        """Add ``amounts[i]`` (default 1) to counter ``ids[i]`` for every ``i``, in C.

        All-or-nothing: a bad element raises, naming its index, and nothing is recorded.
        The batch is summed per series privately (GIL released), then added with one
        atomic add per series.

        >>> import numpy as np
        >>> store = Store()
        >>> sid = store.series(store.counter("c_total"), ())
        >>> store.inc_many(np.array([sid, sid]), np.array([2, 3])); store.value(sid)
        5
        """
        cdef Py_buffer iview, aview
        cdef ms_array ia, aa
        cdef const ms_array *ap = NULL
        cdef ms_status st = MS_OK
        cdef size_t bad = 0, n
        _array(ids, &iview, "ids", False, &ia)
        try:
            n = <size_t>iview.shape[0]
            if amounts is not None:
                _array(amounts, &aview, "amounts", False, &aa)
                ap = &aa
            try:
                if ap is not NULL:
                    _same_length(iview.shape[0], aview.shape[0], "amounts")
                with nogil:
                    st = ms_inc_array(self._s, &ia, ap, n, &bad)
            finally:
                if ap is not NULL:
                    PyBuffer_Release(&aview)
        finally:
            PyBuffer_Release(&iview)
        if st != MS_OK:
            self._batch_error(st, bad, ids, amounts, "inc_many", "counter")

    def observe_many(self, ids, values):
        """Record ``values[i]`` in histogram ``ids[i]`` for every ``i``, in C.

        ``values`` is float64 (float32 and integer arrays are converted); NaN refuses
        the whole batch. Each series' ``_sum`` grows by the batch's values for it, added
        in index order into a partial sum first (``docs/store.md``, "Sums in batches").

        >>> import numpy as np
        >>> store = Store()
        >>> sid = store.series(store.histogram("h", buckets=(1,)), ())
        >>> store.observe_many(np.array([sid, sid]), np.array([0.5, 3.0]))
        >>> store.histogram_value(sid)
        ((1, 1), 3.5)
        """
        cdef Py_buffer iview, vview
        cdef ms_array ia, va
        cdef ms_status st = MS_OK
        cdef size_t bad = 0, n
        _array(ids, &iview, "ids", False, &ia)
        try:
            n = <size_t>iview.shape[0]
            _array(values, &vview, "values", True, &va)
            try:
                _same_length(iview.shape[0], vview.shape[0], "values")
                with nogil:
                    st = ms_observe_array(self._s, &ia, &va, n, &bad)
            finally:
                PyBuffer_Release(&vview)
        finally:
            PyBuffer_Release(&iview)
        if st != MS_OK:
            self._batch_error(st, bad, ids, values, "observe_many", "histogram")

    # ---- reading ---------------------------------------------------------------------

    def value(self, series):
        """A counter's value (int) or a gauge's (float).

        >>> store = Store()
        >>> store.value(store.series(store.gauge("g"), ()))
        0.0
        """
        cdef uint64_t sid = _series_id(series, "series")
        cdef uint64_t count
        cdef double v
        cdef ms_status st = ms_counter_value(self._s, sid, &count)
        if st == MS_OK:
            return count
        number = operator.index(series)
        if st == MS_ERR_WRONG_KIND:
            st = ms_gauge_value(self._s, sid, &v)
            if st == MS_OK:
                return v
            _raise(st, msg.histogram_value_read(number))
        _raise(st, msg.unknown_series(number), number)

    def histogram_value(self, series):
        """``(counts, sum)``: non-cumulative counts per bucket (the last is ``+Inf``).

        >>> store = Store()
        >>> store.histogram_value(store.series(store.histogram("h", buckets=(1,)), ()))
        ((0, 0), 0.0)
        """
        cdef uint64_t sid = _series_id(series, "series")
        cdef uint32_t m
        cdef ms_metric_info info
        cdef ms_status st = ms_series_metric(self._s, sid, &m)
        number = operator.index(series)
        _raise(st, msg.unknown_series(number), number)
        ms_metric_get(self._s, m, &info)
        if info.kind != MS_HISTOGRAM:
            _raise(MS_ERR_WRONG_KIND, msg.wrong_kind(number, _KINDS[info.kind], "histogram"))
        return self._histogram(sid, info.n_bounds)

    cdef tuple _histogram(self, uint64_t sid, uint32_t n_bounds):
        cdef uint64_t *counts = <uint64_t *>PyMem_Malloc((n_bounds + 1) * sizeof(uint64_t))
        cdef double total = 0
        cdef uint32_t i
        if counts is NULL:
            raise MemoryError()
        try:
            ms_histogram_value(self._s, sid, counts, &total)
            return tuple([counts[i] for i in range(n_bounds + 1)]), total
        finally:
            PyMem_Free(counts)

    def snapshot(self):
        """Every metric, sorted by name, with its series in id order.

        When a metric has folded label sets, the fold families that ``render()`` prints
        (``meshstats_series_overflow_total``, ``meshstats_exposition_budget_overflow_total``)
        are included too, sorted like the others.

        >>> store = Store()
        >>> store.inc(store.series(store.counter("c_total", "C.", ("k",)), ("a",)), 3)
        >>> store.snapshot()
        [('c_total', 'counter', 'C.', ('k',), (), [(('a',), 3)])]
        """
        cdef uint32_t n_metrics = ms_metric_count(self._s)
        cdef uint32_t n_series = ms_series_total(self._s)
        cdef uint32_t m, i, sid
        cdef ms_metric_info info
        cdef ms_strref ref
        cdef uint64_t count
        cdef double v
        cdef int visible
        infos = []
        folded = []
        budget_folded = []
        per_metric = [[] for _ in range(n_metrics)]
        for sid in range(n_series):
            ms_series_metric(self._s, sid, &m)
            if m >= n_metrics:
                continue  # registered after we started reading
            ms_series_visible(self._s, sid, &visible)
            if not visible:
                continue  # hidden by expire_idle()
            ms_metric_get(self._s, m, &info)
            if info.kind == MS_COUNTER:
                ms_counter_value(self._s, sid, &count)
                value = count
            elif info.kind == MS_GAUGE:
                ms_gauge_value(self._s, sid, &v)
                value = v
            else:
                value = self._histogram(sid, info.n_bounds)
            per_metric[m].append((self._labels(sid, info.n_labels), value))
        for m in range(n_metrics):
            ms_metric_get(self._s, m, &info)
            names = []
            for i in range(info.n_labels):
                ms_metric_label_name(self._s, m, i, &ref)
                names.append(PyUnicode_DecodeUTF8(ref.ptr, <Py_ssize_t>ref.len, NULL))
            infos.append((
                PyUnicode_DecodeUTF8(info.name.ptr, <Py_ssize_t>info.name.len, NULL),
                _KINDS[info.kind],
                PyUnicode_DecodeUTF8(info.help.ptr, <Py_ssize_t>info.help.len, NULL),
                tuple(names),
                tuple([info.bounds[i] for i in range(info.n_bounds)]),
                per_metric[m],
            ))
            folded.append(info.overflow_count)
            budget_folded.append(info.budget_overflow_count)
        extra = []
        for family, help_text, counts in ((_OVERFLOW_FAMILY, _OVERFLOW_HELP, folded),
                                          (_BUDGET_FAMILY, _BUDGET_HELP, budget_folded)):
            rows = [((entry[0],), count) for entry, count in zip(infos, counts) if count]
            if rows:
                # The extra families render() prints, so collectors built on snapshot()
                # see them.
                extra.append((family, "counter", help_text, ("metric",), (), rows))
        infos.extend(extra)
        infos.sort(key=lambda entry: entry[0])
        return infos

    def render(self, openmetrics=False):
        """Prometheus text 0.0.4 (or OpenMetrics 1.0) bytes, rendered in C without the GIL.

        >>> store = Store()
        >>> store.inc(store.series(store.counter("up_total", "Up.", ("job",)), ("a",)))
        >>> print(store.render().decode(), end="")
        # HELP up_total Up.
        # TYPE up_total counter
        up_total{job="a"} 1
        """
        cdef ms_buf buf
        cdef int om = 1 if openmetrics else 0
        cdef ms_status st
        cdef PyObject *out = NULL
        buf.data = NULL
        buf.len = buf.cap = 0
        buf.grow = _grow_bytes
        buf.ctx = &out
        # The last render's bytes, if every other reference is gone: writing into memory
        # that is already mapped saves faulting in a fresh buffer (a page fault per 4 KiB:
        # most of a large scrape's time without huge pages). A bytes object nobody else
        # can see may be changed, as CPython's own resize does.
        if (self._spare is not None and _refcnt(<PyObject *>self._spare) == 1
                and _bytes_reusable()):
            out = <PyObject *>self._spare
            Py_INCREF(<object>out)
            self._spare = None
            _bytes_forget_hash(out)
            buf.data = _bytes_data(out)
            buf.cap = self._spare_cap
        try:
            with nogil:
                st = ms_render(self._s, om, &buf)
            _raise(st, "render: out of memory")
            if buf.len >= _SPARE_MIN and buf.cap - buf.len <= buf.cap // 8:
                # Kept whole for the next render: the object is just shorter than its
                # memory (a realloc to shrink and grow again could copy it all).
                _set_length(out, <Py_ssize_t>buf.len)
                self._spare_cap = buf.cap
            else:
                _PyBytes_Resize(&out, <Py_ssize_t>buf.len)
                self._spare_cap = buf.len
            result = <object>out
            self._spare = result if buf.len >= _SPARE_MIN else None
            return result
        finally:
            Py_XDECREF(out)


cdef char *_grow_bytes(void *ctx, size_t cap) noexcept nogil:
    """ms_buf.grow for render(): the output is a bytes object from the start, resized
    (realloc: big ones move by remapping, not copying), so no final copy is made."""
    with gil:
        return _grow_bytes_gil(<PyObject **>ctx, cap)


cdef char *_grow_bytes_gil(PyObject **slot, size_t cap) noexcept:
    if cap > <size_t>PY_SSIZE_T_MAX:
        return NULL
    if slot[0] is NULL:
        slot[0] = _bytes_new(NULL, <Py_ssize_t>cap)
    else:
        try:
            _PyBytes_Resize(slot, <Py_ssize_t>cap)  # on failure frees it, sets NULL
        except MemoryError:
            pass
    if slot[0] is NULL:
        PyErr_Clear()  # render() raises MemoryError itself from the C status
        return NULL
    return _bytes_data(slot[0])
