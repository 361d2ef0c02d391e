/* The series store: metrics, interned label sets, and atomically updated samples.
 *
 * Plain C11, no Python. The contract (ids, errors, overflow rules) is
 * docs/store.md; this header is its C face. Structural calls (ms_metric_add,
 * ms_series_get, ms_expire_idle) take the store's mutex; recording calls never lock
 * and may run on any number of threads at once, also while series are being added
 * or expired. Readers (ms_render, the ms_*_info calls) take no lock either:
 * everything they read is append-only, never moves, and is published with release
 * stores.
 *
 *     ms_store *s = ms_store_new(NULL, 100000);
 *     uint32_t m, sid;
 *     ms_strref labels[] = {{"reporter", 8}}, values[] = {{"source", 6}};
 *     ms_metric_add(s, MS_COUNTER, "up_total", 8, "", 0, labels, 1, NULL, 0, 0, &m);
 *     ms_series_get(s, m, values, 1, &sid);
 *     ms_inc(s, sid, 1);
 *     ms_store_free(s);
 */
#ifndef MESHSTATS_STORE_H
#define MESHSTATS_STORE_H

#include <stddef.h>
#include <stdint.h>

typedef enum ms_status {
    MS_OK = 0,
    MS_ERR_NOMEM,            /* an allocation failed; the store is unchanged */
    MS_ERR_INVALID_METRIC,   /* bad name, label names, buckets or max_series */
    MS_ERR_DUPLICATE_METRIC, /* the exposed name is taken */
    MS_ERR_INVALID_LABELS,   /* wrong number of label values */
    MS_ERR_UNKNOWN_METRIC,   /* a metric id never handed out */
    MS_ERR_UNKNOWN_SERIES,   /* a series id never handed out */
    MS_ERR_WRONG_KIND,       /* e.g. observe() on a counter */
    MS_ERR_INVALID_SAMPLE,   /* NaN observation, negative amount */
    MS_ERR_LIMIT,            /* 2**32 ids, or 2 GiB of label text, used up */
    MS_ERR_IO,               /* a shared store's file: a system call failed (see errno) */
    MS_ERR_FILE              /* a shared store's file is not one (see ms_file_problem) */
} ms_status;

/* Why a file cannot be opened as a shared store. */
typedef enum ms_file_problem {
    MS_FILE_OK = 0,
    MS_FILE_NOT_A_STORE, /* no meshstats magic at offset 0 */
    MS_FILE_VERSION,     /* a meshstats store of another layout version */
    MS_FILE_TRUNCATED    /* shorter than its head says */
} ms_file_problem;

/* A shared store's file grows by these many bytes at least (a multiple of any page). */
#define MS_FILE_PAGE 65536u

typedef enum ms_kind { MS_COUNTER = 0, MS_GAUGE = 1, MS_HISTOGRAM = 2 } ms_kind;

/* Every byte the store holds comes from here (the Python glue passes PyMem_Raw*,
 * which are thread-safe without the GIL, so tracemalloc sees the store). */
typedef struct ms_allocator {
    void *(*malloc)(size_t);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void (*free)(void *);
} ms_allocator;

typedef struct ms_strref {
    const char *ptr;
    size_t len;
} ms_strref;

typedef struct ms_store ms_store;

#define MS_NO_SERIES UINT32_MAX

/* A read-only view of one metric; pointers stay valid for the store's life. */
typedef struct ms_metric_info {
    ms_kind kind;
    ms_strref name, help;
    uint32_t n_labels, n_bounds;
    const double *bounds;
    uint64_t max_series;
    uint64_t series_count;   /* real series, the overflow series not included */
    uint64_t overflow_count; /* series() calls folded into the overflow series */
    uint64_t budget_overflow_count; /* those folded by the exposition budget instead */
} ms_metric_info;

/* allocator NULL: the C library's. default_max_series must be >= 1. NULL on OOM.
 * No exposition budget (ms_store_new_budget with UINT64_MAX). */
ms_store *ms_store_new(const ms_allocator *allocator, uint64_t default_max_series);
/* With an exposition byte budget (docs/store.md, "Exposition budget"), >= 1: each new
 * series with labels is charged an upper bound of the bytes its lines add to a render
 * (ms_series_charge), and one whose charge would take the store's total past
 * max_exposition_bytes goes to its metric's overflow series instead, counted in
 * budget_overflow_count. The charge is taken under the store mutex with the series'
 * creation, so the total is exact whatever the threads. UINT64_MAX: no budget (the
 * total saturates there and never exceeds it). */
ms_store *ms_store_new_budget(const ms_allocator *allocator, uint64_t default_max_series,
                              uint64_t max_exposition_bytes);
/* The budget, and the bytes charged so far (never more than the budget). */
uint64_t ms_store_max_exposition_bytes(const ms_store *s);
uint64_t ms_store_exposition_bytes(const ms_store *s);
void ms_store_free(ms_store *s);

/* A store in a file that any number of processes open at once (docs/store.md, "Shared
 * stores"): created if absent (mode 0600) with these settings, else opened with the
 * file's own (its settings win). Every process maps `reserve` bytes of address space
 * (no memory: the file grows by whole MS_FILE_PAGEs as series are added, never past
 * reserve, which the file's creator fixes). Recording is the same lock-free atomics;
 * creating metrics and series takes a lock across processes (flock, released by the
 * kernel when its holder dies; a change its holder died in is repaired by the next).
 * A metric registered again with the same definition gets the same id.
 * MS_ERR_IO: errno says why; MS_ERR_FILE: *problem says why. */
ms_status ms_store_open_shared(const char *path, const ms_allocator *allocator,
                               uint64_t default_max_series, uint64_t max_exposition_bytes,
                               uint64_t reserve, ms_store **out, ms_file_problem *problem);
int ms_store_is_shared(const ms_store *s);
/* Times a change whose process died was repaired (shared stores; 0 otherwise). */
uint64_t ms_store_repairs(const ms_store *s);
/* Exact bytes currently requested from the allocator by this store; for a shared
 * store, the bytes of its file in use. */
size_t ms_store_memory(const ms_store *s);

/* max_series 0 means the store's default. Names are validated here (ASCII rules of
 * docs/store.md); help is any UTF-8. Bounds: strictly increasing, finite, >= 1 of
 * them, histograms only (counters and gauges must pass n_bounds 0). */
ms_status ms_metric_add(ms_store *s, ms_kind kind, const char *name, size_t name_len,
                        const char *help, size_t help_len, const ms_strref *label_names,
                        uint32_t n_labels, const double *bounds, uint32_t n_bounds,
                        uint64_t max_series, uint32_t *out_metric);

/* The series of `metric` with these label values (UTF-8, any bytes), created on first
 * use; past max_series, or past the exposition budget, the metric's overflow series. */
ms_status ms_series_get(ms_store *s, uint32_t metric, const ms_strref *values,
                        uint32_t n_values, uint32_t *out_series);
/* What a new series of `metric` with these values would be charged against the budget:
 * the most bytes its lines can take in either format (values at their widest), or 0
 * for a metric without labels (its one series is fixed at registration, like its
 * HELP and TYPE lines). Saturates at UINT64_MAX. */
ms_status ms_series_charge(const ms_store *s, uint32_t metric, const ms_strref *values,
                           uint32_t n_values, uint64_t *out_bytes);

uint32_t ms_metric_count(const ms_store *s);
uint32_t ms_series_total(const ms_store *s);
ms_status ms_metric_get(const ms_store *s, uint32_t metric, ms_metric_info *out);
ms_status ms_metric_label_name(const ms_store *s, uint32_t metric, uint32_t i, ms_strref *out);
ms_status ms_series_metric(const ms_store *s, uint64_t series, uint32_t *out_metric);
/* The metric's overflow series, MS_NO_SERIES until one was needed. */
ms_status ms_metric_overflow_series(const ms_store *s, uint32_t metric, uint32_t *out_series);
ms_status ms_series_label(const ms_store *s, uint64_t series, uint32_t i, ms_strref *out);

/* Recording: lock-free, callable from any thread without the GIL. */
ms_status ms_inc(ms_store *s, uint64_t series, uint64_t n);
ms_status ms_set(ms_store *s, uint64_t series, double v);
ms_status ms_observe(ms_store *s, uint64_t series, double v);

/* For batch callers that validate everything first: MS_OK when `series` exists and
 * is of `kind`. The *_unchecked calls then skip the checks. */
ms_status ms_check(const ms_store *s, uint64_t series, ms_kind kind);
void ms_inc_unchecked(ms_store *s, uint64_t series, uint64_t n);
void ms_observe_unchecked(ms_store *s, uint64_t series, double v);

/* Whole batches: nothing is recorded unless every element is valid; on error
 * *bad_index is the first bad element (MS_ERR_NOMEM: scratch memory ran out, nothing
 * recorded, *bad_index not set). amounts NULL means 1 each.
 *
 * A batch is aggregated privately first and then applied with one atomic add per
 * touched slot: per series one count per bucket and one partial sum. The partial sum
 * of a series is its batch values added one at a time in index order, starting from
 * 0.0; it is then added to the series' sum once (docs/store.md, "Sums in batches").
 * Memory: O(n) scratch from the store's allocator, freed before returning. */
ms_status ms_inc_many(ms_store *s, const uint64_t *ids, const uint64_t *amounts, size_t n,
                      size_t *bad_index);
ms_status ms_observe_many(ms_store *s, const uint64_t *ids, const double *values, size_t n,
                          size_t *bad_index);

/* The same over typed, strided 1-D arrays (numpy buffers as they are, no copy):
 * signed ids below 0 are unknown series, signed amounts below 0 invalid samples,
 * integer values converted to double as a C cast does. Any alignment is accepted. */
typedef enum ms_dtype { MS_I32, MS_I64, MS_U32, MS_U64, MS_F32, MS_F64 } ms_dtype;
typedef struct ms_array {
    const void *data;
    ptrdiff_t stride; /* in bytes */
    ms_dtype dtype;
} ms_array;

ms_status ms_inc_array(ms_store *s, const ms_array *ids, const ms_array *amounts, size_t n,
                       size_t *bad_index);
ms_status ms_observe_array(ms_store *s, const ms_array *ids, const ms_array *values, size_t n,
                           size_t *bad_index);

/* Idle-series expiry (docs/store.md, "Idle-series expiry"). Every series carries an
 * ACTIVE flag, set at creation and by every record. ms_expire_idle clears it on active
 * series and hides the rest; it returns how many it hid. Called every T seconds it
 * hides series idle for between T and 2T. A hidden series is left out of ms_render
 * until a record shows it again, its values intact. Ids stay valid and no memory is
 * reclaimed (callers cache ids). Takes the mutex; safe while other threads record: a
 * record racing the sweep leaves its series visible one interval longer, or is seen
 * as the record of the interval before (then hidden one interval sooner); no count is
 * ever lost. */
uint64_t ms_expire_idle(ms_store *s);
/* *out_visible: 0 if the series is hidden, else 1. */
ms_status ms_series_visible(const ms_store *s, uint64_t series, int *out_visible);
/* Visible real series of a metric (the overflow series not counted); walks every
 * series of the store under the mutex. */
ms_status ms_metric_visible_count(ms_store *s, uint32_t metric, uint64_t *out);

/* Reading. counts has room for n_bounds + 1 (the last is +Inf), non-cumulative. */
ms_status ms_counter_value(const ms_store *s, uint64_t series, uint64_t *out);
ms_status ms_gauge_value(const ms_store *s, uint64_t series, double *out);
ms_status ms_histogram_value(const ms_store *s, uint64_t series, uint64_t *counts,
                             double *sum);

#endif
