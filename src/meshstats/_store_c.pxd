# The compiled store's C face for other compiled modules (``cimport``): the _core store
# declarations and the Store class layout. The implementation is _store_c.pyx.

from libc.stdint cimport uint32_t, uint64_t

cdef extern from "store.h" nogil:
    ctypedef enum ms_status:
        MS_OK
        MS_ERR_NOMEM
        MS_ERR_INVALID_METRIC
        MS_ERR_DUPLICATE_METRIC
        MS_ERR_INVALID_LABELS
        MS_ERR_UNKNOWN_METRIC
        MS_ERR_UNKNOWN_SERIES
        MS_ERR_WRONG_KIND
        MS_ERR_INVALID_SAMPLE
        MS_ERR_LIMIT
        MS_ERR_IO
        MS_ERR_FILE
    ctypedef enum ms_file_problem:
        MS_FILE_OK
        MS_FILE_NOT_A_STORE
        MS_FILE_VERSION
        MS_FILE_TRUNCATED
    ctypedef enum ms_kind:
        MS_COUNTER
        MS_GAUGE
        MS_HISTOGRAM
    ctypedef struct ms_allocator:
        void *(*malloc)(size_t) noexcept nogil
        void *(*calloc)(size_t, size_t) noexcept nogil
        void *(*realloc)(void *, size_t) noexcept nogil
        void (*free)(void *) noexcept nogil
    ctypedef struct ms_strref:
        const char *ptr
        size_t len
    ctypedef struct ms_store:
        pass
    ctypedef struct ms_metric_info:
        ms_kind kind
        ms_strref name
        ms_strref help
        uint32_t n_labels
        uint32_t n_bounds
        const double *bounds
        uint64_t max_series
        uint64_t series_count
        uint64_t overflow_count
        uint64_t budget_overflow_count

    ms_store *ms_store_new(const ms_allocator *allocator, uint64_t default_max_series)
    ms_store *ms_store_new_budget(const ms_allocator *allocator, uint64_t default_max_series,
                                  uint64_t max_exposition_bytes)
    uint64_t ms_store_max_exposition_bytes(const ms_store *s)
    uint64_t ms_store_exposition_bytes(const ms_store *s)
    void ms_store_free(ms_store *s)
    ms_status ms_store_open_shared(const char *path, const ms_allocator *allocator,
                                   uint64_t default_max_series, uint64_t max_exposition_bytes,
                                   uint64_t reserve, ms_store **out, ms_file_problem *problem)
    int ms_store_is_shared(const ms_store *s)
    ms_status ms_metric_overflow_series(const ms_store *s, uint32_t metric, uint32_t *out_series)
    uint64_t ms_store_repairs(const ms_store *s)
    size_t ms_store_memory(const ms_store *s)
    ms_status ms_metric_add(ms_store *s, ms_kind kind, const char *name, size_t name_len,
                            const char *help, size_t help_len, const ms_strref *label_names,
                            uint32_t n_labels, const double *bounds, uint32_t n_bounds,
                            uint64_t max_series, uint32_t *out_metric)
    ms_status ms_series_get(ms_store *s, uint32_t metric, const ms_strref *values,
                            uint32_t n_values, uint32_t *out_series)
    uint32_t ms_metric_count(const ms_store *s)
    uint32_t ms_series_total(const ms_store *s)
    ms_status ms_metric_get(const ms_store *s, uint32_t metric, ms_metric_info *out)
    ms_status ms_metric_label_name(const ms_store *s, uint32_t metric, uint32_t i,
                                   ms_strref *out)
    ms_status ms_series_metric(const ms_store *s, uint64_t series, uint32_t *out_metric)
    ms_status ms_series_label(const ms_store *s, uint64_t series, uint32_t i, ms_strref *out)
    ms_status ms_inc(ms_store *s, uint64_t series, uint64_t n)
    ms_status ms_set(ms_store *s, uint64_t series, double v)
    ms_status ms_observe(ms_store *s, uint64_t series, double v)
    ctypedef enum ms_dtype:
        MS_I32
        MS_I64
        MS_U32
        MS_U64
        MS_F32
        MS_F64
    ctypedef struct ms_array:
        const void *data
        ptrdiff_t stride
        ms_dtype dtype
    ms_status ms_inc_array(ms_store *s, const ms_array *ids, const ms_array *amounts, size_t n,
                           size_t *bad_index)
    ms_status ms_observe_array(ms_store *s, const ms_array *ids, const ms_array *values,
                               size_t n, size_t *bad_index)
    ms_status ms_counter_value(const ms_store *s, uint64_t series, uint64_t *out)
    ms_status ms_gauge_value(const ms_store *s, uint64_t series, double *out)
    ms_status ms_histogram_value(const ms_store *s, uint64_t series, uint64_t *counts,
                                 double *sum)
    uint64_t ms_expire_idle(ms_store *s)
    ms_status ms_series_visible(const ms_store *s, uint64_t series, int *out_visible)
    ms_status ms_metric_visible_count(ms_store *s, uint32_t metric, uint64_t *out)

cdef extern from "store_internal.h" nogil:
    # The shared file's layout version (docs/store.md, "File layout").
    const unsigned int MS_SHARED_VERSION
    # store.c's ms_inc/ms_set/ms_observe, inline: no C call per event from here.
    ms_status ms_inc_inline(ms_store *s, uint64_t series, uint64_t n)
    ms_status ms_set_inline(ms_store *s, uint64_t series, double v)
    ms_status ms_observe_inline(ms_store *s, uint64_t series, double v)


cdef class Store:
    cdef ms_store *_s
    cdef object _path  # a shared store's file, None for a private store
    cdef set _per_process  # gauges whose series get this process' pid as a last label
    cdef dict _seen  # a shared store's (metric, values) -> series id: no lock once seen
    cdef object _spare  # the last render's bytes: reused once nobody else holds them
    cdef size_t _spare_cap  # the bytes _spare's memory can hold (at least its length)

    cdef uint32_t _add(self, ms_kind kind, object name, object help, object labels,
                       object buckets, object max_series) except? 0xffffffff
    cdef set _taken_names(self)
    cdef uint32_t _metric(self, object metric) except? 0xffffffff
    cdef uint32_t _n_labels(self, uint32_t m)
    cdef int _explain_values(self, uint32_t m, object values) except -1
    cdef tuple _labels(self, uint64_t sid, uint32_t n)
    cdef int _record_error(self, ms_status st, object series, str method, str wanted,
                           object v) except -1
    cdef int _batch_error(self, ms_status st, size_t bad, object ids, object values,
                          str method, str wanted) except -1
    cdef tuple _histogram(self, uint64_t sid, uint32_t n_bounds)
