"""The per-request fast path, compiled: Cython glue over ``_core/request_table.c``.

>>> from meshstats._store_c import Store
>>> from meshstats._requests_c import RequestTable
>>> store = Store()
>>> req = store.counter("r_total", "", ("code",))
>>> dur = store.histogram("d", "", ("code",))
>>> table = RequestTable(store)
>>> table.record(200, None, None, "http", "reviews:9080", 12.0, 420, 3100)   # unknown key
False
>>> block = [(store.series(req, ("200",)), "counter", "one"),
...          (store.series(dur, ("200",)), "histogram", "duration")]
>>> table.put(200, None, None, "http", "reviews:9080", block)
True
>>> table.record(200, None, None, "http", "reviews:9080", 12.0, 420, 3100)
True
>>> store.value(block[0][0]), table.hits
(1, 1)

``record`` converts its arguments to a C key without creating a Python object (strings are
read in place as UTF-8), finds the block and records every series of it in one C call. Any
argument the C key cannot carry exactly (a flags list, a non-int code, a NaN duration, ...)
answers ``False``, and the engine takes its general path, which gives the same result or
raises the same error. The table is used with the GIL held; it is not thread-safe on its own.
"""

from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc
from libc.math cimport NAN, isfinite, trunc
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from cpython.object cimport PyObject, PyTypeObject
from types import MemberDescriptorType

from meshstats.attributes import is_grpc_content_type

from meshstats._store_c cimport (
    MS_COUNTER, MS_ERR_NOMEM, MS_GAUGE, MS_HISTOGRAM, MS_OK, Store, ms_allocator,
    ms_status, ms_store, ms_strref,
)

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member
    PyTypeObject *Py_TYPE(object o)
    bint PyLong_CheckExact(object o)
    bint PyFloat_CheckExact(object o)
    bint PyUnicode_CheckExact(object o)
    double PyFloat_AS_DOUBLE(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL

cdef extern from *:
    """
    #ifndef Py_T_OBJECT_EX /* before 3.12: PyMemberDef's fields and the T_ names live here */
    #include "structmember.h"
    #define Py_T_OBJECT_EX T_OBJECT_EX
    #endif

    /* A type's version tag, 0 while it has none valid (a type just modified: CPython 3.11
     * clears a flag, later versions the tag itself). */
    static inline unsigned int meshstats_type_version(PyTypeObject *tp) {
    #ifdef Py_TPFLAGS_VALID_VERSION_TAG
        if (!(tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) return 0;
    #endif
        return tp->tp_version_tag;
    }
    """
    int Py_T_OBJECT_EX
    unsigned int meshstats_type_version(PyTypeObject *tp)

cdef extern from "request_table.h" nogil:
    ctypedef enum ms_flags_kind:
        MS_FLAGS_NONE
        MS_FLAGS_BITS
        MS_FLAGS_TEXT
    ctypedef struct ms_block_entry:
        uint32_t series
        uint8_t kind
        uint8_t value
    ctypedef struct ms_series_block:
        uint32_t n
        ms_block_entry e[8]
    ctypedef struct ms_request_key:
        int64_t code
        int64_t grpc
        ms_flags_kind flags_kind
        int64_t flags_bits
        ms_strref flags_text
        ms_strref protocol
        ms_strref host
    ctypedef struct ms_rtable:
        pass
    int MS_BLOCK_MAX
    int MS_VALUE_REQUEST_MESSAGES
    int MS_VALUE_RESPONSE_MESSAGES
    int64_t MS_NO_GRPC
    uint32_t MS_NO_SERIES
    ms_rtable *ms_rtable_new(const ms_allocator *allocator, uint32_t max_entries)
    void ms_rtable_free(ms_rtable *t)
    uint32_t ms_rtable_len(const ms_rtable *t)
    const ms_series_block *ms_rtable_find(const ms_rtable *t, const ms_request_key *key)
    ms_status ms_rtable_put(ms_rtable *t, const ms_request_key *key, const ms_series_block *b)
    ms_status ms_record_block(ms_store *s, const ms_series_block *b, const double *values)
    ms_status ms_rtable_record(ms_rtable *t, ms_store *s, const ms_request_key *key,
                               const double *values, uint32_t needed)

__all__ = ["RequestTable", "HitCounter", "BLOCK_MAX", "record_request"]

#: Most series one request's block can hold (the standard HTTP metrics need 4).
BLOCK_MAX = MS_BLOCK_MAX

cdef ms_allocator _ALLOCATOR
_ALLOCATOR.malloc = PyMem_RawMalloc
_ALLOCATOR.calloc = PyMem_RawCalloc
_ALLOCATOR.realloc = PyMem_RawRealloc
_ALLOCATOR.free = PyMem_RawFree

_KINDS = {"counter": MS_COUNTER, "gauge": MS_GAUGE, "histogram": MS_HISTOGRAM}
_VALUES = {"one": 0, "duration": 1, "request_bytes": 2, "response_bytes": 3,
           "request_messages": 4, "response_messages": 5}


cdef bint _int64(object value, int64_t *out):
    """An exact int that fits int64 (bool is not one: its label differs)."""
    cdef int overflow = 0
    if not PyLong_CheckExact(value):
        return False
    out[0] = PyLong_AsLongLongAndOverflow(value, &overflow)
    return not overflow


cdef bint _text(object value, ms_strref *out):
    cdef Py_ssize_t size
    if not PyUnicode_CheckExact(value):
        return False
    try:
        out.ptr = PyUnicode_AsUTF8AndSize(value, &size)
    except UnicodeEncodeError:  # lone surrogates: the general path says what is wrong
        return False
    out.len = <size_t>size
    return True


cdef bint _number(object value, double *out):
    if PyFloat_CheckExact(value):
        out[0] = PyFloat_AS_DOUBLE(value)
    elif PyLong_CheckExact(value):
        try:
            out[0] = <double>value
        except OverflowError:
            return False
    else:
        return False
    return isfinite(out[0])


cdef bint _key(ms_request_key *k, object code, object grpc_status, object flags,
               object protocol, object host):
    """Fill ``k`` from the arguments; False when one cannot be keyed exactly."""
    if not _int64(code, &k.code):
        return False
    if grpc_status is None:
        k.grpc = MS_NO_GRPC
    elif not _int64(grpc_status, &k.grpc) or k.grpc == MS_NO_GRPC:
        return False
    if flags is None:
        k.flags_kind = MS_FLAGS_NONE
    elif _int64(flags, &k.flags_bits):
        k.flags_kind = MS_FLAGS_BITS
    elif _text(flags, &k.flags_text):
        k.flags_kind = MS_FLAGS_TEXT
    else:
        return False
    if not _text(protocol, &k.protocol):
        return False
    if host is None:
        k.host.ptr = NULL
        k.host.len = 0
    elif not _text(host, &k.host):
        return False
    return True


cdef class HitCounter:
    """Hits of many tables in one number (an engine's ``series_hits``), counted in C."""

    cdef readonly uint64_t value


cdef class RequestTable:
    """A request's raw arguments -> the series ids of all of its metrics (see module doc).

    Parameters
    ----------
    store:
        The compiled :class:`~meshstats._store_c.Store` the ids belong to.
    max_entries:
        Most keys kept; beyond it, new keys are simply not cached (``put`` returns False).
    counter:
        A :class:`HitCounter` that every hit also counts in (shared by an engine's tables).
    """

    cdef ms_rtable *_t
    cdef Store _store
    cdef ms_store *_s  # _store's, kept here: one object fewer to reach per record
    cdef HitCounter _counter
    cdef readonly uint64_t hits

    def __cinit__(self, Store store not None, uint32_t max_entries=4096,
                  HitCounter counter=None):
        self._store = store
        self._s = store._s
        self._counter = counter
        self._t = ms_rtable_new(&_ALLOCATOR, max_entries)
        if self._t is NULL:
            raise MemoryError("cannot allocate a RequestTable")

    def __dealloc__(self):
        ms_rtable_free(self._t)

    def __len__(self):
        return ms_rtable_len(self._t)

    def record(self, code, grpc_status, flags, protocol, host, duration_ms, request_bytes,
               response_bytes, request_messages=0, response_messages=0):
        """Record one request into its key's block; False when the key is not known (or
        the block lacks a series this event needs, or an argument is not keyable).
        ``request_messages`` / ``response_messages``: a gRPC call's message counts, recorded
        with it when its block carries them (False when one is not 0 and it does not)."""
        return self._record(code, grpc_status, flags, protocol, host, duration_ms,
                            request_bytes, response_bytes, request_messages, response_messages)

    cdef bint _record(self, code, grpc_status, flags, protocol, host, duration_ms,
                      request_bytes, response_bytes, request_messages,
                      response_messages) except -1:
        cdef ms_request_key k
        cdef double values[6]
        if not _key(&k, code, grpc_status, flags, protocol, host):
            return False
        values[0] = 1.0
        if duration_ms is None:
            values[1] = NAN  # no completion time: the duration histogram is skipped
        elif _number(duration_ms, &values[1]):
            values[1] = trunc(values[1]) + 0.0  # whole milliseconds, as Envoy; no -0.0
        else:
            return False
        if not _number(request_bytes, &values[2]) or not _number(response_bytes, &values[3]):
            return False
        if not (_number(request_messages, &values[4])
                and _number(response_messages, &values[5])):
            return False
        # A message count to record needs its entry: a block kept by record_request alone
        # (the same key, no messages) would drop it.
        cdef unsigned int need = 0
        if values[4] != 0:
            need |= 1u << MS_VALUE_REQUEST_MESSAGES
        if values[5] != 0:
            need |= 1u << MS_VALUE_RESPONSE_MESSAGES
        if ms_rtable_record(self._t, self._s, &k, values, need) != MS_OK:
            return False
        self.hits += 1
        if self._counter is not None:
            self._counter.value += 1
        return True

    def put(self, code, grpc_status, flags, protocol, host, block):
        """Keep ``block`` (``(series id or -1, kind, value)`` triples) for this key; False
        when the key cannot be kept (not keyable, a string over 1 KiB, the table full)."""
        cdef ms_request_key k
        cdef ms_series_block b
        cdef Py_ssize_t i, n = len(block)
        if n > BLOCK_MAX:
            raise ValueError(f"block: at most {BLOCK_MAX} series, got {n}")
        if not _key(&k, code, grpc_status, flags, protocol, host):
            return False
        b.n = <uint32_t>n
        for i in range(n):
            sid, kind, value = block[i]
            b.e[i].series = MS_NO_SERIES if sid < 0 else <uint32_t>sid
            b.e[i].kind = _KINDS[kind]
            b.e[i].value = _VALUES[value]
        cdef ms_status st = ms_rtable_put(self._t, &k, &b)
        if st == MS_ERR_NOMEM:
            raise MemoryError("cannot grow a RequestTable")
        return st == MS_OK


# Where the peer context's table lives: the exact type whose __slots__ member "_requests"
# was last looked up, its version tag then, and the member's offset in its instances. A
# live sidecar finds the generic attribute lookup's lines (the type's method cache entry,
# the descriptor, its member definition) evicted on every request; this reads the slot
# directly while the type is unchanged, as CPython's own LOAD_ATTR_SLOT does (a changed
# type gets a new version tag, so a stale offset is never used). Called with the GIL held
# (the module is not free-threading compatible): the three change together.
cdef PyTypeObject *_peer_type = NULL
cdef unsigned int _peer_version = 0
cdef Py_ssize_t _peer_offset = 0


cdef inline object _table_of(object peer):
    """``peer._requests``."""
    global _peer_type, _peer_version, _peer_offset
    cdef PyTypeObject *tp = Py_TYPE(peer)
    cdef PyObject *value
    if tp == _peer_type and _peer_version != 0 and meshstats_type_version(tp) == _peer_version:
        value = (<PyObject **>((<char *><PyObject *>peer) + _peer_offset))[0]
        if value is not NULL:
            return <object>value
    descr = getattr(type(peer), "_requests", None)  # (gives the type a version tag)
    _peer_type = NULL
    if (type(descr) is MemberDescriptorType
            and (<PyMemberDescrObject *><PyObject *>descr).d_member.type == Py_T_OBJECT_EX):
        _peer_type = tp
        _peer_version = meshstats_type_version(tp)
        _peer_offset = (<PyMemberDescrObject *><PyObject *>descr).d_member.offset
    return peer._requests  # unset or not a slot: what the attribute lookup says


def record_request(self, peer, *, response_code=0, duration_ms=None, request_bytes=0,
                   response_bytes=0, host=None, grpc_status=None, response_flags=None,
                   protocol=None, content_type=None, method=None, path=None,
                   request_protocol=None, headers=None, attributes=None):
    """One finished HTTP or gRPC request, as the access-log callback sees it.

    ``duration_ms`` is truncated to whole milliseconds as Envoy does (``None``: no
    completion time, the duration histogram is skipped). ``request_bytes`` and
    ``response_bytes`` are wire bytes (headers and body). ``protocol`` is ``"http"`` or
    ``"grpc"``; by default gRPC is detected from ``content_type``.
    """
    # StatsEngine.record_request, compiled (engine.py has the same code in Python, used
    # with the pure backend). Why: in a live sidecar every call finds its code and data
    # evicted by the request's other work, and a Python frame, its bytecode and the
    # attribute and method lookups on the way to the table cost more cold than the
    # recording itself; here the keywords are parsed in C, the table is read from the
    # peer's slot and called directly.
    if protocol is None:
        protocol = "grpc" if content_type and is_grpc_content_type(content_type) else "http"
    table = _table_of(peer)
    if table is not None and attributes is None:
        if type(table) is RequestTable:
            if (<RequestTable>table)._record(response_code, grpc_status, response_flags,
                                             protocol, host, duration_ms, request_bytes,
                                             response_bytes, 0, 0):
                return None
        elif table.record(response_code, grpc_status, response_flags, protocol, host,
                          duration_ms, request_bytes, response_bytes):
            return None
    self._resolve_request(peer, response_code, duration_ms, request_bytes, response_bytes,
                          host, grpc_status, response_flags, protocol, method, path,
                          request_protocol, headers, attributes)
