/* Layout of the store, shared by store.c and render.c only (not a public API).
 *
 * Memory is the point of this layout (docs: a counter and a 19-bucket histogram
 * series over 25 label values should cost <= 400 bytes together):
 *   - every distinct label value is stored once (string table, u32 ids);
 *   - a label set (tuple of value ids) is stored once and shared by every metric
 *     that uses the same values (Istio's HTTP metrics all do);
 *   - a series is 16 bytes (slot pointer + expiry flags, metric|kind, label set) plus
 *     its slots.
 * Nothing a lock-free reader can reach ever moves: elements live in fixed pages
 * reached through a directory; a grown directory is published with a release
 * store and the old one is kept until the store dies.
 */
#ifndef MESHSTATS_STORE_INTERNAL_H
#define MESHSTATS_STORE_INTERNAL_H

#include <pthread.h>

#include "atomics.h"
#include "store.h"

#define MS_PAGE_SHIFT 8
#define MS_PAGE_MASK ((1u << MS_PAGE_SHIFT) - 1)

/* Everything a reader reaches is addressed by a ref, never by a pointer, so the same
 * structures work in a shared file that each process maps at its own address (docs/
 * store.md, "Shared stores"): a ref is an offset from the store's base. A private
 * store's base is 0, so there a ref is simply the address. */
typedef uint64_t ms_ref;

static inline void *ms_at(const char *base, ms_ref ref) {
    return (void *)((uintptr_t)base + (uintptr_t)ref);
}

/* Append-only vector of fixed-size elements in pages that never move. `dir` refers to
 * an array of page refs. */
typedef struct ms_pvec {
    uint32_t elem_size;
    uint32_t dir_cap, n_pages;
    ms_atomic_u32 count; /* published elements */
    _Atomic ms_ref dir;
} ms_pvec;

_Static_assert(sizeof(ms_pvec) == 24, "file layout: a pvec is 24 bytes");

static inline void *ms_pvec_at(const char *base, const ms_pvec *v, uint32_t i) {
    ms_ref dir = atomic_load_explicit((_Atomic ms_ref *)&v->dir, memory_order_acquire);
    const ms_ref *pages = ms_at(base, dir);
    return (char *)ms_at(base, pages[i >> MS_PAGE_SHIFT]) + (size_t)(i & MS_PAGE_MASK) * v->elem_size;
}

/* Append-only pool of variable-size records (4-aligned) in pages of MS_POOL_UNITS 4-byte
 * units that never move. A record's id is its unit offset over the pages laid end to end,
 * so, unlike a vector, it needs no directory entry of its own (8 bytes per label value and
 * per label set: the memory budget). A record never crosses a page: one that would not fit
 * goes to the next page, after an MS_POOL_GAP word that ends the page's records. A record
 * larger than a page lives elsewhere, and the pool holds MS_POOL_BIG and its ref (two u32,
 * 3 units). Neither marker can begin a record kept in a page (it would not fit one). */
#define MS_POOL_SHIFT 12
#define MS_POOL_UNITS (1u << MS_POOL_SHIFT)
#define MS_POOL_GAP 0xffffffffu
#define MS_POOL_BIG 0xfffffffeu

typedef struct ms_pool {
    uint32_t dir_cap, n_pages;
    ms_atomic_u32 next; /* the first free unit; every record below it is published */
    uint32_t count;     /* records (a table's size hint) */
    _Atomic ms_ref dir; /* page refs */
} ms_pool;

_Static_assert(sizeof(ms_pool) == 24, "file layout: a pool is 24 bytes");

/* The unit `id` of a pool as stored (a record, or a marker). */
static inline const uint32_t *ms_pool_unit(const char *base, const ms_pool *p, uint32_t id) {
    ms_ref dir = atomic_load_explicit((_Atomic ms_ref *)&p->dir, memory_order_acquire);
    const ms_ref *pages = ms_at(base, dir);
    return (const uint32_t *)ms_at(base, pages[id >> MS_POOL_SHIFT]) + (id & (MS_POOL_UNITS - 1));
}

/* The record `id` of a pool, wherever it lives. */
static inline const uint32_t *ms_pool_at(const char *base, const ms_pool *p, uint32_t id) {
    const uint32_t *rec = ms_pool_unit(base, p, id);
    if (*rec != MS_POOL_BIG) return rec;
    ms_ref ref;
    memcpy(&ref, rec + 1, sizeof ref);
    return ms_at(base, ref);
}

/* A label value or name: length (31 bits) + "needs escaping" bit, then the bytes. */
typedef struct ms_str {
    uint32_t len_flags;
    char data[];
} ms_str;

#define MS_STR_ESCAPE 0x80000000u
#define MS_STR_MAXLEN 0x7fffffffu

static inline uint32_t ms_str_len(const ms_str *s) { return s->len_flags & MS_STR_MAXLEN; }

/* Idle-series expiry (docs/store.md) keeps two flags in the low bits of the slot
 * ref, which are free because slots are 8-byte aligned. So a record reads its flags
 * with the very load that yields its slots, and the series stays 16 bytes.
 *   ACTIVE: recorded (or created) since the last ms_expire_idle;
 *   HIDDEN: left out of the exposition until the next record.
 * The ref bits never change after creation, so a recorder may store a word built
 * from a stale load: only the flags can differ, and a record makes them ACTIVE. */
#define MS_SERIES_ACTIVE ((uint64_t)1)
#define MS_SERIES_HIDDEN ((uint64_t)2)
#define MS_SERIES_FLAGS (MS_SERIES_ACTIVE | MS_SERIES_HIDDEN)

typedef struct ms_series {
    _Atomic uint64_t slots_flags; /* slots ref | flags; counter/gauge: 1 word; histogram:
                                     buckets + 1, then sum */
    uint32_t metric_kind;         /* metric id << 2 | kind */
    uint32_t labelset;
} ms_series;

_Static_assert(sizeof(ms_series) == 16, "a series is 16 bytes (docs: memory budget)");
_Static_assert(_Alignof(ms_atomic_u64) > MS_SERIES_FLAGS, "flags need free ref bits");

typedef struct ms_metric {
    uint32_t kind, id, n_labels, n_bounds;
    uint32_t stride; /* slot words per series */
    ms_atomic_u32 overflow_series; /* MS_NO_SERIES until first needed */
    uint64_t max_series;
    _Atomic uint64_t n_series, overflow_count, budget_overflow_count;
    /* Exposition budget: a new series is charged charge_base + charge_lines * (the
     * escaped bytes of its values); both fixed at registration (store.c, charge_init). */
    uint64_t charge_base, charge_lines;
    ms_ref name, help;  /* ms_str */
    ms_ref label_names; /* ms_ref[n_labels] of ms_str */
    ms_ref bounds;      /* double[n_bounds] */
    ms_ref bound_text;  /* ms_ref[n_bounds] of ms_str: formatted bounds, for render */
    /* Slot pages, written under the store lock only. */
    ms_ref page;
    uint32_t page_used, page_cap; /* in series */
} ms_metric;

_Static_assert(sizeof(ms_metric) == 128, "file layout: a metric is 128 bytes");

/* Open addressing over u32 ids (slot = id + 1, 0 = empty); grows past 70% load. Read
 * and written under the store lock only. */
typedef struct ms_table {
    ms_ref slots; /* uint32_t[cap] */
    uint32_t cap, used;
} ms_table;

/* The store's shared state: in a private store, one allocation; in a shared store, the
 * first bytes of the file (docs/store.md, "Shared stores" lists every field). */
#define MS_SHARED_MAGIC 0x3165726f74736d6dULL /* "mmstore1" little-endian */
#define MS_SHARED_VERSION 2u

typedef struct ms_head {
    uint64_t magic;
    uint32_t version, head_size;
    uint64_t reserve;          /* bytes every process maps (the file's largest size) */
    _Atomic uint64_t size;     /* the file's size: whole pages */
    _Atomic uint64_t used;     /* bump allocation; memory past it is zero */
    _Atomic uint32_t writer;   /* pid changing structure under the lock, 0 when done */
    uint32_t overflow_string;  /* id of "__overflow__", MS_NO_SERIES until used */
    uint64_t seed;
    uint64_t default_max_series;
    uint64_t max_exposition_bytes; /* UINT64_MAX: no budget */
    _Atomic uint64_t exposition_bytes; /* charged; written under the lock only */
    _Atomic uint64_t render_hint;      /* bytes of the last render: the next one's first size */
    _Atomic uint64_t repairs;          /* times a dead writer's change was repaired */
    ms_pvec metrics;              /* ms_ref of ms_metric */
    ms_pvec series;               /* ms_series */
    ms_pool strings;              /* ms_str */
    ms_pool labelsets;            /* uint32_t [n, id0, id1, ...] */
    ms_table string_table, labelset_table, series_table;
    uint64_t spare[2]; /* zero; room for a later version's fields */
} ms_head;

_Static_assert(sizeof(ms_head) == 256, "file layout: the head is 256 bytes");

typedef struct ms_block {
    struct ms_block *next;
    size_t size; /* whole block, header included */
} ms_block;

/* The process-local part. */
struct ms_store {
    char *base;   /* refs are offsets from here; NULL in a private store */
    ms_head *h;
    ms_allocator al;
    _Atomic size_t mem;           /* private: bytes from the allocator */
    pthread_mutex_t lock;         /* this process' threads; a shared store adds flock */
    /* private stores */
    ms_block *blocks;             /* every never-moving allocation, freed at the end */
    char *arena, *arena_end;      /* bump area for small never-moving items */
    size_t arena_next;            /* size of the next arena block */
    /* shared stores */
    int fd;                       /* -1 for a private store */
    int pid;                      /* the process that opened fd (flock is per open file) */
    size_t map_len;
};

static inline const ms_metric *ms_metric_at(const ms_store *s, uint32_t id) {
    return ms_at(s->base, *(const ms_ref *)ms_pvec_at(s->base, &s->h->metrics, id));
}

static inline const ms_str *ms_str_at(const ms_store *s, ms_ref ref) {
    return ms_at(s->base, ref);
}

static inline const ms_str *ms_string_at(const ms_store *s, uint32_t id) {
    return (const ms_str *)ms_pool_at(s->base, &s->h->strings, id);
}

static inline const uint32_t *ms_labelset_at(const ms_store *s, uint32_t id) {
    return ms_pool_at(s->base, &s->h->labelsets, id);
}

static inline const ms_series *ms_series_at(const ms_store *s, uint32_t id) {
    return (const ms_series *)ms_pvec_at(s->base, &s->h->series, id);
}

/* A metric's name, a label name, a bound's text, a bound. */
static inline const ms_str *ms_metric_name(const ms_store *s, const ms_metric *m) {
    return ms_str_at(s, m->name);
}

static inline const ms_str *ms_metric_label(const ms_store *s, const ms_metric *m, uint32_t i) {
    return ms_str_at(s, ((const ms_ref *)ms_at(s->base, m->label_names))[i]);
}

static inline const ms_str *ms_metric_bound_text(const ms_store *s, const ms_metric *m,
                                                 uint32_t i) {
    return ms_str_at(s, ((const ms_ref *)ms_at(s->base, m->bound_text))[i]);
}

static inline const double *ms_metric_bounds(const ms_store *s, const ms_metric *m) {
    return ms_at(s->base, m->bounds);
}

static inline uint64_t ms_series_word(const ms_series *r) {
    return atomic_load_explicit((_Atomic uint64_t *)&r->slots_flags, memory_order_relaxed);
}

static inline ms_atomic_u64 *ms_word_slots(const ms_store *s, uint64_t word) {
    return ms_at(s->base, word & ~MS_SERIES_FLAGS);
}

/* For readers: the slots of a series (its flags masked off). */
static inline ms_atomic_u64 *ms_series_slots(const ms_store *s, const ms_series *r) {
    return ms_word_slots(s, ms_series_word(r));
}

/* ---- single-event recording ------------------------------------------------------
 * Inline, so the Python glue makes no C function call per event (store.c's ms_inc &
 * co. are these same functions). Lock-free: see store.h. */

/* Index of the first bound >= v (`le` is inclusive); n means +Inf. v is not NaN.
 * Branching on purpose: the bucket add after it is a locked instruction that waits for
 * the search, and a predicted branch lets it issue early (43 ns per Python call against
 * 61 ns with store.c's branch-free search, random values included). Batches, with no
 * atomics per element, use the branch-free one. */
static inline uint32_t ms_bucket_of(const double *bounds, uint32_t n, double v) {
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (v <= bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* The series `series` if it exists and is of `kind`, else NULL with *st saying why. */
static inline ms_series *ms_series_of_kind(ms_store *s, uint64_t series, ms_kind kind,
                                           ms_status *st) {
    const ms_head *h = s->h;
    if (series >= ms_load_acquire_u32(&h->series.count)) {
        *st = MS_ERR_UNKNOWN_SERIES;
        return NULL;
    }
    ms_series *r = (ms_series *)ms_pvec_at(s->base, &h->series, (uint32_t)series);
    if ((r->metric_kind & 3u) != (uint32_t)kind) {
        *st = MS_ERR_WRONG_KIND;
        return NULL;
    }
    return r;
}

/* The slots of a series being recorded, marked ACTIVE (and no longer HIDDEN). The load
 * is needed for the slot pointer anyway; the store happens once per expiry interval,
 * so the series' shared cache line is not written on every event. */
static inline ms_atomic_u64 *ms_record_slots(const ms_store *s, ms_series *r) {
    uint64_t word = ms_series_word(r);
    if (!(word & MS_SERIES_ACTIVE))
        atomic_store_explicit(&r->slots_flags, (word & ~MS_SERIES_HIDDEN) | MS_SERIES_ACTIVE,
                              memory_order_relaxed);
    return ms_word_slots(s, word);
}

/* ms_record_slots for a caller that keeps the slots pointer itself: the series marked
 * ACTIVE (and no longer HIDDEN). */
static inline void ms_mark_active(ms_series *r) {
    uint64_t word = ms_series_word(r);
    if (!(word & MS_SERIES_ACTIVE))
        atomic_store_explicit(&r->slots_flags, (word & ~MS_SERIES_HIDDEN) | MS_SERIES_ACTIVE,
                              memory_order_relaxed);
}

static inline ms_status ms_inc_inline(ms_store *s, uint64_t series, uint64_t n) {
    ms_status st = MS_OK;
    ms_series *r = ms_series_of_kind(s, series, MS_COUNTER, &st);
    if (r) ms_atomic_add_u64(ms_record_slots(s, r), n);
    return st;
}

static inline ms_status ms_set_inline(ms_store *s, uint64_t series, double v) {
    ms_status st = MS_OK;
    ms_series *r = ms_series_of_kind(s, series, MS_GAUGE, &st);
    if (r) ms_atomic_store_double(ms_record_slots(s, r), v);
    return st;
}

static inline void ms_observe_slots(const ms_store *s, const ms_metric *m, ms_atomic_u64 *slots,
                                    double v) {
    ms_atomic_add_u64(&slots[ms_bucket_of(ms_metric_bounds(s, m), m->n_bounds, v)], 1);
    ms_atomic_add_double(&slots[m->n_bounds + 1], v);
}

static inline ms_status ms_observe_inline(ms_store *s, uint64_t series, double v) {
    ms_status st = MS_OK;
    ms_series *r = ms_series_of_kind(s, series, MS_HISTOGRAM, &st);
    if (!r) return st;
    if (v != v) return MS_ERR_INVALID_SAMPLE; /* NaN */
    ms_observe_slots(s, ms_metric_at(s, r->metric_kind >> 2), ms_record_slots(s, r), v);
    return MS_OK;
}

/* The widest a sample's value can print: a u64 in decimal, and a double as
 * ms_format_double writes it ("-1.2345678901234567e-308"). The exposition budget
 * charges every value at these widths, so a charge bounds what render writes. */
#define MS_U64_WIDTH 20u
#define MS_DOUBLE_WIDTH 24u

/* The extra families render adds when a metric has folded label sets (docs/store.md). */
#define MS_OVERFLOW_FAMILY "meshstats_series_overflow_total"
#define MS_OVERFLOW_HELP \
    "Label sets folded into the overflow series because the metric reached max_series."
#define MS_BUDGET_FAMILY "meshstats_exposition_budget_overflow_total"
#define MS_BUDGET_HELP                                                                   \
    "Label sets folded into the overflow series because the store reached " \
    "max_exposition_bytes."

/* Counted allocation through the store's allocator (render uses these too). */
void *ms_alloc(ms_store *s, size_t n);
void *ms_realloc(ms_store *s, void *p, size_t old_n, size_t new_n);
void ms_dealloc(ms_store *s, void *p, size_t n);

/* Shortest of %.15g/%.16g/%.17g that reads back exactly; +Inf/-Inf/NaN. out >= 32 bytes.
 * Returns the length. */
size_t ms_format_double(double v, char *out);

#endif
