/* The series store (see store.h for the API, store_internal.h for the layout). */
#include "store.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store_internal.h"

#define ARENA_FIRST 1024u
#define ARENA_MAX 65536u
#define ARENA_BIG 1024u      /* larger requests get a block of their own */
#define SLOT_PAGE_BYTES 16384u
#define MAX_METRICS (1u << 30) /* metric id shares a word with the kind */
#define STACK_LABELS 64u

static const char OVERFLOW_VALUE[] = "__overflow__";

/* ---- counted allocation ------------------------------------------------------ */

static void *libc_calloc(size_t n, size_t size) { return calloc(n, size); }

void *ms_alloc(ms_store *s, size_t n) {
    void *p = s->al.malloc(n ? n : 1);
    if (p) atomic_fetch_add_explicit(&s->mem, n, memory_order_relaxed);
    return p;
}

void *ms_realloc(ms_store *s, void *p, size_t old_n, size_t new_n) {
    void *q = s->al.realloc(p, new_n ? new_n : 1);
    if (q) {
        atomic_fetch_add_explicit(&s->mem, new_n, memory_order_relaxed);
        atomic_fetch_sub_explicit(&s->mem, old_n, memory_order_relaxed);
    }
    return q;
}

void ms_dealloc(ms_store *s, void *p, size_t n) {
    if (!p) return;
    s->al.free(p);
    atomic_fetch_sub_explicit(&s->mem, n, memory_order_relaxed);
}

/* A zeroed allocation that lives until the store dies. */
static void *block_alloc(ms_store *s, size_t n) {
    size_t total = sizeof(ms_block) + n;
    ms_block *b = s->al.calloc(1, total);
    if (!b) return NULL;
    atomic_fetch_add_explicit(&s->mem, total, memory_order_relaxed);
    b->size = total;
    b->next = s->blocks;
    s->blocks = b;
    return b + 1;
}

/* Small never-moving items (strings, label sets, metric data, slot pages): a bump
 * pointer over blocks that double up to ARENA_MAX so small stores stay small. */
static void *arena_alloc(ms_store *s, size_t n, size_t align) {
    if (n > ARENA_BIG) return block_alloc(s, n);
    uintptr_t at = ((uintptr_t)s->arena + (align - 1)) & ~(uintptr_t)(align - 1);
    if (!s->arena || at + n > (uintptr_t)s->arena_end) {
        size_t size = s->arena_next;
        char *p = block_alloc(s, size);
        if (!p) return NULL;
        s->arena = p;
        s->arena_end = p + size;
        if (s->arena_next < ARENA_MAX) s->arena_next *= 2;
        at = (uintptr_t)p; /* block data is 16-aligned: header is two words */
    }
    s->arena = (char *)(at + n);
    return (void *)at;
}

/* ---- append-only paged vectors ------------------------------------------------ */

static void pvec_init(ms_pvec *v, size_t elem_size) {
    v->elem_size = elem_size;
    atomic_init(&v->dir, NULL);
    v->dir_cap = v->n_pages = 0;
    atomic_init(&v->count, 0);
}

/* Room for element `count` (zeroed); visible to readers only after pvec_publish. */
static void *pvec_reserve(ms_store *s, ms_pvec *v) {
    uint32_t n = atomic_load_explicit(&v->count, memory_order_relaxed);
    uint32_t page = n >> MS_PAGE_SHIFT;
    char **dir = atomic_load_explicit(&v->dir, memory_order_relaxed);
    if (page == v->n_pages) {
        if (v->n_pages == v->dir_cap) {
            /* Readers may still hold the old directory: it stays in the arena. */
            uint32_t cap = v->dir_cap ? v->dir_cap * 2 : 4;
            char **grown = arena_alloc(s, cap * sizeof *grown, sizeof(void *));
            if (!grown) return NULL;
            if (v->n_pages) memcpy(grown, dir, v->n_pages * sizeof *grown);
            atomic_store_explicit(&v->dir, grown, memory_order_release);
            dir = grown;
            v->dir_cap = cap;
        }
        char *p = block_alloc(s, v->elem_size << MS_PAGE_SHIFT);
        if (!p) return NULL;
        dir[page] = p;
        v->n_pages++;
    }
    return dir[page] + (size_t)(n & MS_PAGE_MASK) * v->elem_size;
}

static uint32_t pvec_publish(ms_pvec *v) {
    uint32_t n = atomic_load_explicit(&v->count, memory_order_relaxed);
    ms_store_release_u32(&v->count, n + 1);
    return n;
}

/* ---- hashing and tables --------------------------------------------------------- */

static inline uint64_t mix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Seeded per store, so label values an attacker picks cannot be aimed at a
 * fixed probe sequence. */
static uint64_t hash_bytes(uint64_t seed, const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = seed ^ (n * 0x9e3779b97f4a7c15ULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ mix64(w)) * 0x9e3779b97f4a7c15ULL;
        p += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, p, n);
        h = (h ^ mix64(w ^ ((uint64_t)n << 56))) * 0x9e3779b97f4a7c15ULL;
    }
    return mix64(h);
}

typedef int (*eq_fn)(const ms_store *, uint32_t id, const void *key);
typedef uint64_t (*rehash_fn)(const ms_store *, uint32_t id);

/* The slot holding `key`, or the empty slot where it would go. */
static uint32_t *table_find(const ms_store *s, const ms_table *t, uint64_t h, eq_fn eq,
                            const void *key) {
    uint32_t mask = t->cap - 1, i = (uint32_t)h & mask;
    for (;;) {
        uint32_t *slot = &t->slots[i];
        if (*slot == 0 || eq(s, *slot - 1, key)) return slot;
        i = (i + 1) & mask;
    }
}

static ms_status table_reserve(ms_store *s, ms_table *t, rehash_fn rehash) {
    if ((uint64_t)(t->used + 1) * 10 <= (uint64_t)t->cap * 7) return MS_OK;
    if (t->cap >= (1u << 31)) return MS_ERR_LIMIT;
    uint32_t cap = t->cap ? t->cap * 2 : 16;
    uint32_t *slots = s->al.calloc(cap, sizeof *slots);
    if (!slots) return MS_ERR_NOMEM;
    atomic_fetch_add_explicit(&s->mem, (size_t)cap * sizeof *slots, memory_order_relaxed);
    for (uint32_t i = 0; i < t->cap; i++) {
        uint32_t v = t->slots[i];
        if (!v) continue;
        uint32_t j = (uint32_t)rehash(s, v - 1) & (cap - 1);
        while (slots[j]) j = (j + 1) & (cap - 1);
        slots[j] = v;
    }
    ms_dealloc(s, t->slots, (size_t)t->cap * sizeof *slots);
    t->slots = slots;
    t->cap = cap;
    return MS_OK;
}

static uint32_t table_get(const ms_store *s, const ms_table *t, uint64_t h, eq_fn eq,
                          const void *key) {
    if (!t->cap) return MS_NO_SERIES;
    uint32_t slot = *table_find(s, t, h, eq, key);
    return slot ? slot - 1 : MS_NO_SERIES;
}

static void table_free(ms_store *s, ms_table *t) {
    ms_dealloc(s, t->slots, (size_t)t->cap * sizeof *t->slots);
    t->slots = NULL;
    t->cap = t->used = 0;
}

/* strings */
static int string_eq(const ms_store *s, uint32_t id, const void *key) {
    const ms_strref *k = key;
    const ms_str *str = ms_string_at(s, id);
    return ms_str_len(str) == k->len && memcmp(str->data, k->ptr, k->len) == 0;
}

static uint64_t string_rehash(const ms_store *s, uint32_t id) {
    const ms_str *str = ms_string_at(s, id);
    return hash_bytes(s->seed, str->data, ms_str_len(str));
}

/* label sets: [n, id...] */
typedef struct labelset_key {
    const uint32_t *ids;
    uint32_t n;
} labelset_key;

static int labelset_eq(const ms_store *s, uint32_t id, const void *key) {
    const labelset_key *k = key;
    const uint32_t *ls = ms_labelset_at(s, id);
    return ls[0] == k->n && memcmp(ls + 1, k->ids, k->n * sizeof *k->ids) == 0;
}

static uint64_t labelset_hash(const ms_store *s, const uint32_t *ids, uint32_t n) {
    return hash_bytes(s->seed ^ 0x5bd1e995u, ids, n * sizeof *ids);
}

static uint64_t labelset_rehash(const ms_store *s, uint32_t id) {
    const uint32_t *ls = ms_labelset_at(s, id);
    return labelset_hash(s, ls + 1, ls[0]);
}

/* series: (metric, label set) */
typedef struct series_key {
    uint32_t metric, labelset;
} series_key;

static int series_eq(const ms_store *s, uint32_t id, const void *key) {
    const series_key *k = key;
    const ms_series *r = ms_series_at(s, id);
    return (r->metric_kind >> 2) == k->metric && r->labelset == k->labelset;
}

static uint64_t series_hash(const ms_store *s, uint32_t metric, uint32_t labelset) {
    return mix64(s->seed ^ (((uint64_t)metric << 32) | labelset));
}

static uint64_t series_rehash(const ms_store *s, uint32_t id) {
    const ms_series *r = ms_series_at(s, id);
    return series_hash(s, r->metric_kind >> 2, r->labelset);
}

/* ---- store life ------------------------------------------------------------------ */

ms_store *ms_store_new(const ms_allocator *allocator, uint64_t default_max_series) {
    static const ms_allocator libc = {malloc, libc_calloc, realloc, free};
    static _Atomic uint64_t stores_made;
    const ms_allocator *al = allocator ? allocator : &libc;
    if (default_max_series < 1) return NULL;
    ms_store *s = al->calloc(1, sizeof *s);
    if (!s) return NULL;
    s->al = *al;
    atomic_init(&s->mem, sizeof *s);
    if (pthread_mutex_init(&s->lock, NULL) != 0) {
        al->free(s);
        return NULL;
    }
    uint64_t n = atomic_fetch_add(&stores_made, 1);
    s->seed = mix64((uint64_t)(uintptr_t)s ^ ((uint64_t)time(NULL) << 20) ^ (n << 40));
    s->default_max_series = default_max_series;
    s->arena_next = ARENA_FIRST;
    s->overflow_string = MS_NO_SERIES;
    pvec_init(&s->metrics, sizeof(ms_metric *));
    pvec_init(&s->series, sizeof(ms_series));
    pvec_init(&s->strings, sizeof(ms_str *));
    pvec_init(&s->labelsets, sizeof(uint32_t *));
    return s;
}

void ms_store_free(ms_store *s) {
    if (!s) return;
    table_free(s, &s->string_table);
    table_free(s, &s->labelset_table);
    table_free(s, &s->series_table);
    ms_block *b = s->blocks;
    while (b) {
        ms_block *next = b->next;
        s->al.free(b);
        b = next;
    }
    pthread_mutex_destroy(&s->lock);
    s->al.free(s);
}

size_t ms_store_memory(const ms_store *s) {
    return atomic_load_explicit((_Atomic size_t *)&s->mem, memory_order_relaxed);
}

/* ---- metrics --------------------------------------------------------------------- */

static int is_name_char(unsigned char c, int first, int colon) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return 1;
    if (colon && c == ':') return 1;
    return !first && c >= '0' && c <= '9';
}

static int valid_name(const char *p, size_t n, int colon) {
    if (n == 0 || n > MS_STR_MAXLEN) return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_name_char((unsigned char)p[i], i == 0, colon)) return 0;
    return 1;
}

static const ms_str *str_copy(ms_store *s, const char *p, size_t n) {
    ms_str *str = arena_alloc(s, sizeof(ms_str) + n, sizeof(uint32_t));
    if (!str) return NULL;
    uint32_t flags = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\\' || p[i] == '"' || p[i] == '\n') {
            flags = MS_STR_ESCAPE;
            break;
        }
    str->len_flags = (uint32_t)n | flags;
    if (n) memcpy(str->data, p, n);
    return str;
}

/* The OpenMetrics family name is the name minus one trailing _total for counters. */
static size_t family_len(ms_kind kind, const char *name, size_t len) {
    if (kind == MS_COUNTER && len >= 6 && memcmp(name + len - 6, "_total", 6) == 0)
        return len - 6;
    return len;
}

static int same(const char *a, size_t a_len, const char *b, size_t b_len) {
    return a_len == b_len && memcmp(a, b, a_len) == 0;
}

/* Both the name and the OpenMetrics family of every metric are taken, so the two
 * formats never show two families under one name; so are the overflow family's. */
static int name_taken(const ms_store *s, uint32_t n_metrics, const char *name, size_t len) {
    static const char overflow[] = "meshstats_series_overflow_total";
    if (same(name, len, overflow, sizeof overflow - 1) ||
        same(name, len, overflow, sizeof overflow - 7))
        return 1;
    for (uint32_t i = 0; i < n_metrics; i++) {
        const ms_metric *m = ms_metric_at(s, i);
        size_t n = ms_str_len(m->name);
        if (same(name, len, m->name->data, n) ||
            same(name, len, m->name->data, family_len(m->kind, m->name->data, n)))
            return 1;
    }
    return 0;
}

static ms_status validate_metric(ms_kind kind, const char *name, size_t name_len,
                                 size_t help_len, const ms_strref *labels, uint32_t n_labels,
                                 const double *bounds, uint32_t n_bounds) {
    if (kind != MS_COUNTER && kind != MS_GAUGE && kind != MS_HISTOGRAM)
        return MS_ERR_INVALID_METRIC;
    if (!valid_name(name, name_len, 1) || help_len > MS_STR_MAXLEN) return MS_ERR_INVALID_METRIC;
    if (family_len(kind, name, name_len) == 0) return MS_ERR_INVALID_METRIC; /* "_total" */
    for (uint32_t i = 0; i < n_labels; i++) {
        const ms_strref *l = &labels[i];
        if (!valid_name(l->ptr, l->len, 0)) return MS_ERR_INVALID_METRIC;
        if (l->len >= 2 && l->ptr[0] == '_' && l->ptr[1] == '_') return MS_ERR_INVALID_METRIC;
        if (kind == MS_HISTOGRAM && l->len == 2 && memcmp(l->ptr, "le", 2) == 0)
            return MS_ERR_INVALID_METRIC;
        for (uint32_t j = 0; j < i; j++)
            if (labels[j].len == l->len && memcmp(labels[j].ptr, l->ptr, l->len) == 0)
                return MS_ERR_INVALID_METRIC;
    }
    if (kind != MS_HISTOGRAM) return n_bounds ? MS_ERR_INVALID_METRIC : MS_OK;
    /* Slots per series are n_bounds + 2 words; keep that in u32 with room to spare. */
    if (n_bounds < 1 || n_bounds > (1u << 24)) return MS_ERR_INVALID_METRIC;
    for (uint32_t i = 0; i < n_bounds; i++) {
        if (!isfinite(bounds[i])) return MS_ERR_INVALID_METRIC;
        if (i && !(bounds[i] > bounds[i - 1])) return MS_ERR_INVALID_METRIC;
    }
    return MS_OK;
}

ms_status ms_metric_add(ms_store *s, ms_kind kind, const char *name, size_t name_len,
                        const char *help, size_t help_len, const ms_strref *label_names,
                        uint32_t n_labels, const double *bounds, uint32_t n_bounds,
                        uint64_t max_series, uint32_t *out_metric) {
    ms_status st =
        validate_metric(kind, name, name_len, help_len, label_names, n_labels, bounds, n_bounds);
    if (st != MS_OK) return st;
    pthread_mutex_lock(&s->lock);
    uint32_t n_metrics = atomic_load_explicit(&s->metrics.count, memory_order_relaxed);
    if (name_taken(s, n_metrics, name, name_len) ||
        name_taken(s, n_metrics, name, family_len(kind, name, name_len))) {
        st = MS_ERR_DUPLICATE_METRIC;
        goto out;
    }
    if (n_metrics >= MAX_METRICS) {
        st = MS_ERR_LIMIT;
        goto out;
    }
    st = MS_ERR_NOMEM;
    ms_metric *m = arena_alloc(s, sizeof *m, sizeof(void *));
    if (!m) goto out;
    m->kind = kind;
    m->id = n_metrics;
    m->n_labels = n_labels;
    m->n_bounds = n_bounds;
    m->stride = kind == MS_HISTOGRAM ? n_bounds + 2 : 1;
    m->max_series = max_series ? max_series : s->default_max_series;
    atomic_init(&m->n_series, 0);
    atomic_init(&m->overflow_count, 0);
    atomic_init(&m->overflow_series, MS_NO_SERIES);
    if (!(m->name = str_copy(s, name, name_len))) goto out;
    if (!(m->help = str_copy(s, help, help_len))) goto out;
    if (n_labels) {
        const ms_str **names = arena_alloc(s, n_labels * sizeof *names, sizeof(void *));
        if (!names) goto out;
        for (uint32_t i = 0; i < n_labels; i++)
            if (!(names[i] = str_copy(s, label_names[i].ptr, label_names[i].len))) goto out;
        m->label_names = names;
    }
    if (n_bounds) {
        double *b = arena_alloc(s, n_bounds * sizeof *b, sizeof(double));
        const ms_str **text = arena_alloc(s, n_bounds * sizeof *text, sizeof(void *));
        if (!b || !text) goto out;
        memcpy(b, bounds, n_bounds * sizeof *b);
        for (uint32_t i = 0; i < n_bounds; i++) {
            char buf[32];
            size_t len = ms_format_double(bounds[i], buf);
            if (!(text[i] = str_copy(s, buf, len))) goto out;
        }
        m->bounds = b;
        m->bound_text = text;
    }
    ms_metric **slot = pvec_reserve(s, &s->metrics);
    if (!slot) goto out;
    *slot = m;
    *out_metric = pvec_publish(&s->metrics);
    st = MS_OK;
out:
    pthread_mutex_unlock(&s->lock);
    return st;
}

/* ---- series ---------------------------------------------------------------------- */

static uint32_t string_lookup(const ms_store *s, const ms_strref *v) {
    return table_get(s, &s->string_table, hash_bytes(s->seed, v->ptr, v->len), string_eq, v);
}

static ms_status string_intern(ms_store *s, const ms_strref *v, uint32_t *out) {
    uint64_t h = hash_bytes(s->seed, v->ptr, v->len);
    uint32_t id = table_get(s, &s->string_table, h, string_eq, v);
    if (id != MS_NO_SERIES) {
        *out = id;
        return MS_OK;
    }
    if (atomic_load_explicit(&s->strings.count, memory_order_relaxed) == MS_NO_SERIES)
        return MS_ERR_LIMIT;
    ms_status st = table_reserve(s, &s->string_table, string_rehash);
    if (st != MS_OK) return st;
    const ms_str **slot = pvec_reserve(s, &s->strings);
    if (!slot || !(*slot = str_copy(s, v->ptr, v->len))) return MS_ERR_NOMEM;
    id = pvec_publish(&s->strings);
    *table_find(s, &s->string_table, h, string_eq, v) = id + 1;
    s->string_table.used++;
    *out = id;
    return MS_OK;
}

static ms_status labelset_intern(ms_store *s, const uint32_t *ids, uint32_t n, uint32_t *out) {
    labelset_key key = {ids, n};
    uint64_t h = labelset_hash(s, ids, n);
    uint32_t id = table_get(s, &s->labelset_table, h, labelset_eq, &key);
    if (id != MS_NO_SERIES) {
        *out = id;
        return MS_OK;
    }
    if (atomic_load_explicit(&s->labelsets.count, memory_order_relaxed) == MS_NO_SERIES)
        return MS_ERR_LIMIT;
    ms_status st = table_reserve(s, &s->labelset_table, labelset_rehash);
    if (st != MS_OK) return st;
    const uint32_t **slot = pvec_reserve(s, &s->labelsets);
    if (!slot) return MS_ERR_NOMEM;
    uint32_t *ls = arena_alloc(s, (n + 1) * sizeof *ls, sizeof *ls);
    if (!ls) return MS_ERR_NOMEM;
    ls[0] = n;
    memcpy(ls + 1, ids, n * sizeof *ids);
    *slot = ls;
    id = pvec_publish(&s->labelsets);
    *table_find(s, &s->labelset_table, h, labelset_eq, &key) = id + 1;
    s->labelset_table.used++;
    *out = id;
    return MS_OK;
}

/* Slots come from per-metric pages that double up to SLOT_PAGE_BYTES. */
static ms_atomic_u64 *slots_alloc(ms_store *s, ms_metric *m) {
    if (m->page_used == m->page_cap) {
        size_t bytes = (size_t)m->stride * sizeof(ms_atomic_u64);
        size_t most = SLOT_PAGE_BYTES / bytes ? SLOT_PAGE_BYTES / bytes : 1;
        size_t cap = m->page_cap ? (size_t)m->page_cap * 2 : 4;
        if (cap > most) cap = most;
        ms_atomic_u64 *page = arena_alloc(s, cap * bytes, sizeof(uint64_t));
        if (!page) return NULL;
        m->page = page;
        m->page_cap = (uint32_t)cap;
        m->page_used = 0;
    }
    return m->page + (size_t)m->page_used++ * m->stride;
}

static ms_status series_new(ms_store *s, ms_metric *m, uint32_t labelset, uint32_t *out) {
    if (atomic_load_explicit(&s->series.count, memory_order_relaxed) >= MS_NO_SERIES - 1)
        return MS_ERR_LIMIT;
    ms_atomic_u64 *slots = slots_alloc(s, m);
    ms_series *r = slots ? pvec_reserve(s, &s->series) : NULL;
    if (!r) return MS_ERR_NOMEM;
    /* A new series counts as recorded: visible through at least one expiry sweep. */
    atomic_init(&r->slots_flags, (uintptr_t)slots | MS_SERIES_ACTIVE);
    r->metric_kind = m->id << 2 | (uint32_t)m->kind;
    r->labelset = labelset;
    *out = pvec_publish(&s->series);
    return MS_OK;
}

/* fold: count this call in overflow_count (not when asked for by its own label set). */
static ms_status overflow_series(ms_store *s, ms_metric *m, int fold, uint32_t *out) {
    uint32_t sid = atomic_load_explicit(&m->overflow_series, memory_order_relaxed);
    if (sid == MS_NO_SERIES) {
        ms_status st;
        if (s->overflow_string == MS_NO_SERIES) {
            ms_strref v = {OVERFLOW_VALUE, sizeof OVERFLOW_VALUE - 1};
            if ((st = string_intern(s, &v, &s->overflow_string)) != MS_OK) return st;
        }
        uint32_t stack[STACK_LABELS], *ids = stack, labelset;
        size_t bytes = m->n_labels * sizeof *ids;
        if (m->n_labels > STACK_LABELS && !(ids = ms_alloc(s, bytes))) return MS_ERR_NOMEM;
        for (uint32_t i = 0; i < m->n_labels; i++) ids[i] = s->overflow_string;
        st = labelset_intern(s, ids, m->n_labels, &labelset);
        if (ids != stack) ms_dealloc(s, ids, bytes);
        if (st == MS_OK) st = series_new(s, m, labelset, &sid);
        if (st != MS_OK) return st;
        ms_store_release_u32(&m->overflow_series, sid);
    }
    if (fold) atomic_fetch_add_explicit(&m->overflow_count, 1, memory_order_relaxed);
    *out = sid;
    return MS_OK;
}

static int is_overflow_key(const ms_strref *values, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if (!same(values[i].ptr, values[i].len, OVERFLOW_VALUE, sizeof OVERFLOW_VALUE - 1))
            return 0;
    return 1;
}

static ms_status series_get_locked(ms_store *s, ms_metric *m, const ms_strref *values,
                                   uint32_t *ids, uint32_t *out) {
    /* Look up without interning first: a folded label set must cost no memory. */
    uint32_t n = m->n_labels, labelset = MS_NO_SERIES, i;
    if (n && is_overflow_key(values, n)) {
        /* The overflow series' own label set names it (and is not a fold). */
        return overflow_series(s, m, 0, out);
    }
    for (i = 0; i < n; i++)
        if ((ids[i] = string_lookup(s, &values[i])) == MS_NO_SERIES) break;
    if (i == n) {
        labelset_key key = {ids, n};
        labelset = table_get(s, &s->labelset_table, labelset_hash(s, ids, n), labelset_eq, &key);
        if (labelset != MS_NO_SERIES) {
            series_key sk = {m->id, labelset};
            uint32_t sid = table_get(s, &s->series_table, series_hash(s, m->id, labelset),
                                     series_eq, &sk);
            if (sid != MS_NO_SERIES) {
                *out = sid;
                return MS_OK;
            }
        }
    }
    if (atomic_load_explicit(&m->n_series, memory_order_relaxed) >= m->max_series)
        return overflow_series(s, m, 1, out);
    ms_status st;
    if (labelset == MS_NO_SERIES) {
        for (i = 0; i < n; i++)
            if ((st = string_intern(s, &values[i], &ids[i])) != MS_OK) return st;
        if ((st = labelset_intern(s, ids, n, &labelset)) != MS_OK) return st;
    }
    if ((st = table_reserve(s, &s->series_table, series_rehash)) != MS_OK) return st;
    uint32_t sid;
    if ((st = series_new(s, m, labelset, &sid)) != MS_OK) return st;
    series_key sk = {m->id, labelset};
    *table_find(s, &s->series_table, series_hash(s, m->id, labelset), series_eq, &sk) = sid + 1;
    s->series_table.used++;
    atomic_fetch_add_explicit(&m->n_series, 1, memory_order_relaxed);
    *out = sid;
    return MS_OK;
}

ms_status ms_series_get(ms_store *s, uint32_t metric, const ms_strref *values,
                        uint32_t n_values, uint32_t *out_series) {
    if (metric >= ms_load_acquire_u32(&s->metrics.count)) return MS_ERR_UNKNOWN_METRIC;
    ms_metric *m = (ms_metric *)ms_metric_at(s, metric);
    if (n_values != m->n_labels) return MS_ERR_INVALID_LABELS;
    for (uint32_t i = 0; i < n_values; i++)
        if (values[i].len > MS_STR_MAXLEN) return MS_ERR_LIMIT;
    uint32_t stack[STACK_LABELS], *ids = stack;
    size_t bytes = n_values * sizeof *ids;
    if (n_values > STACK_LABELS && !(ids = ms_alloc(s, bytes))) return MS_ERR_NOMEM;
    pthread_mutex_lock(&s->lock);
    ms_status st = series_get_locked(s, m, values, ids, out_series);
    pthread_mutex_unlock(&s->lock);
    if (ids != stack) ms_dealloc(s, ids, bytes);
    return st;
}

/* ---- reading structure ----------------------------------------------------------- */

uint32_t ms_metric_count(const ms_store *s) { return ms_load_acquire_u32(&s->metrics.count); }

uint32_t ms_series_total(const ms_store *s) { return ms_load_acquire_u32(&s->series.count); }

static ms_strref strref(const ms_str *str) {
    ms_strref r = {str->data, ms_str_len(str)};
    return r;
}

ms_status ms_metric_get(const ms_store *s, uint32_t metric, ms_metric_info *out) {
    if (metric >= ms_metric_count(s)) return MS_ERR_UNKNOWN_METRIC;
    const ms_metric *m = ms_metric_at(s, metric);
    out->kind = m->kind;
    out->name = strref(m->name);
    out->help = strref(m->help);
    out->n_labels = m->n_labels;
    out->n_bounds = m->n_bounds;
    out->bounds = m->bounds;
    out->max_series = m->max_series;
    out->series_count = atomic_load_explicit((_Atomic uint64_t *)&m->n_series,
                                             memory_order_relaxed);
    out->overflow_count = atomic_load_explicit((_Atomic uint64_t *)&m->overflow_count,
                                               memory_order_relaxed);
    return MS_OK;
}

ms_status ms_metric_label_name(const ms_store *s, uint32_t metric, uint32_t i, ms_strref *out) {
    if (metric >= ms_metric_count(s)) return MS_ERR_UNKNOWN_METRIC;
    const ms_metric *m = ms_metric_at(s, metric);
    if (i >= m->n_labels) return MS_ERR_INVALID_LABELS;
    *out = strref(m->label_names[i]);
    return MS_OK;
}

static const ms_series *lookup(const ms_store *s, uint64_t series) {
    if (series >= ms_series_total(s)) return NULL;
    return ms_series_at(s, (uint32_t)series);
}

ms_status ms_series_metric(const ms_store *s, uint64_t series, uint32_t *out_metric) {
    const ms_series *r = lookup(s, series);
    if (!r) return MS_ERR_UNKNOWN_SERIES;
    *out_metric = r->metric_kind >> 2;
    return MS_OK;
}

ms_status ms_series_label(const ms_store *s, uint64_t series, uint32_t i, ms_strref *out) {
    const ms_series *r = lookup(s, series);
    if (!r) return MS_ERR_UNKNOWN_SERIES;
    const uint32_t *ls = ms_labelset_at(s, r->labelset);
    if (i >= ls[0]) return MS_ERR_INVALID_LABELS;
    *out = strref(ms_string_at(s, ls[1 + i]));
    return MS_OK;
}

/* ---- recording ------------------------------------------------------------------- */

ms_status ms_check(const ms_store *s, uint64_t series, ms_kind kind) {
    const ms_series *r = lookup(s, series);
    if (!r) return MS_ERR_UNKNOWN_SERIES;
    return (r->metric_kind & 3u) == (uint32_t)kind ? MS_OK : MS_ERR_WRONG_KIND;
}

/* The slots of a series being recorded, marked ACTIVE (and no longer HIDDEN). The load
 * is needed for the slot pointer anyway; the store happens once per expiry interval,
 * so the series' shared cache line is not written on every event. */
static inline ms_atomic_u64 *recorded(ms_store *s, uint64_t series) {
    ms_series *r = (ms_series *)ms_series_at(s, (uint32_t)series);
    uintptr_t word = ms_series_word(r);
    if (!(word & MS_SERIES_ACTIVE))
        atomic_store_explicit(&r->slots_flags, (word & ~MS_SERIES_HIDDEN) | MS_SERIES_ACTIVE,
                              memory_order_relaxed);
    return ms_word_slots(word);
}

void ms_inc_unchecked(ms_store *s, uint64_t series, uint64_t n) {
    ms_atomic_add_u64(recorded(s, series), n);
}

/* Index of the first bound >= v (`le` is inclusive); n_bounds means +Inf. */
static inline uint32_t bucket_of(const double *bounds, uint32_t n, double v) {
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

void ms_observe_unchecked(ms_store *s, uint64_t series, double v) {
    const ms_series *r = ms_series_at(s, (uint32_t)series);
    const ms_metric *m = ms_metric_at(s, r->metric_kind >> 2);
    ms_atomic_u64 *slots = recorded(s, series);
    ms_atomic_add_u64(&slots[bucket_of(m->bounds, m->n_bounds, v)], 1);
    ms_atomic_add_double(&slots[m->n_bounds + 1], v);
}

ms_status ms_inc(ms_store *s, uint64_t series, uint64_t n) {
    ms_status st = ms_check(s, series, MS_COUNTER);
    if (st == MS_OK) ms_inc_unchecked(s, series, n);
    return st;
}

ms_status ms_set(ms_store *s, uint64_t series, double v) {
    ms_status st = ms_check(s, series, MS_GAUGE);
    if (st == MS_OK) ms_atomic_store_double(recorded(s, series), v);
    return st;
}

ms_status ms_observe(ms_store *s, uint64_t series, double v) {
    ms_status st = ms_check(s, series, MS_HISTOGRAM);
    if (st != MS_OK) return st;
    if (isnan(v)) return MS_ERR_INVALID_SAMPLE;
    ms_observe_unchecked(s, series, v);
    return MS_OK;
}

ms_status ms_inc_many(ms_store *s, const uint64_t *ids, const uint64_t *amounts, size_t n,
                      size_t *bad_index) {
    for (size_t i = 0; i < n; i++) {
        ms_status st = ms_check(s, ids[i], MS_COUNTER);
        if (st != MS_OK) {
            *bad_index = i;
            return st;
        }
    }
    for (size_t i = 0; i < n; i++) ms_inc_unchecked(s, ids[i], amounts ? amounts[i] : 1);
    return MS_OK;
}

ms_status ms_observe_many(ms_store *s, const uint64_t *ids, const double *values, size_t n,
                          size_t *bad_index) {
    for (size_t i = 0; i < n; i++) {
        ms_status st = ms_check(s, ids[i], MS_HISTOGRAM);
        if (st == MS_OK && isnan(values[i])) st = MS_ERR_INVALID_SAMPLE;
        if (st != MS_OK) {
            *bad_index = i;
            return st;
        }
    }
    for (size_t i = 0; i < n; i++) ms_observe_unchecked(s, ids[i], values[i]);
    return MS_OK;
}

/* ---- reading values ---------------------------------------------------------------- */

ms_status ms_counter_value(const ms_store *s, uint64_t series, uint64_t *out) {
    ms_status st = ms_check(s, series, MS_COUNTER);
    if (st == MS_OK) *out = ms_atomic_load_u64(ms_series_slots(lookup(s, series)));
    return st;
}

ms_status ms_gauge_value(const ms_store *s, uint64_t series, double *out) {
    ms_status st = ms_check(s, series, MS_GAUGE);
    if (st == MS_OK) *out = ms_atomic_load_double(ms_series_slots(lookup(s, series)));
    return st;
}

ms_status ms_histogram_value(const ms_store *s, uint64_t series, uint64_t *counts,
                             double *sum) {
    ms_status st = ms_check(s, series, MS_HISTOGRAM);
    if (st != MS_OK) return st;
    const ms_series *r = ms_series_at(s, (uint32_t)series);
    const ms_atomic_u64 *slots = ms_series_slots(r);
    uint32_t nb = ms_metric_at(s, r->metric_kind >> 2)->n_bounds;
    for (uint32_t i = 0; i <= nb; i++) counts[i] = ms_atomic_load_u64(&slots[i]);
    *sum = ms_atomic_load_double(&slots[nb + 1]);
    return MS_OK;
}

/* ---- idle-series expiry ------------------------------------------------------------ */

/* One tick of expiry: ACTIVE -> idle (still visible), idle -> HIDDEN. Each change is a
 * compare-and-swap, so a record landing between our load and our write wins: the
 * series then stays visible (and ACTIVE) for another interval. The mutex only keeps
 * two sweeps from counting as two ticks at once; recorders never take it. */
uint64_t ms_expire_idle(ms_store *s) {
    uint64_t hidden = 0;
    pthread_mutex_lock(&s->lock);
    uint32_t n = ms_series_total(s);
    for (uint32_t i = 0; i < n; i++) {
        ms_series *r = (ms_series *)ms_series_at(s, i);
        uintptr_t word = ms_series_word(r);
        while (!(word & MS_SERIES_HIDDEN)) { /* a failed CAS reloads word */
            uintptr_t next =
                word & MS_SERIES_ACTIVE ? word & ~MS_SERIES_ACTIVE : word | MS_SERIES_HIDDEN;
            if (atomic_compare_exchange_weak_explicit(&r->slots_flags, &word, next,
                                                      memory_order_relaxed,
                                                      memory_order_relaxed)) {
                hidden += (next & MS_SERIES_HIDDEN) != 0;
                break;
            }
        }
    }
    pthread_mutex_unlock(&s->lock);
    return hidden;
}

ms_status ms_series_visible(const ms_store *s, uint64_t series, int *out_visible) {
    const ms_series *r = lookup(s, series);
    if (!r) return MS_ERR_UNKNOWN_SERIES;
    *out_visible = !(ms_series_word(r) & MS_SERIES_HIDDEN);
    return MS_OK;
}

/* A walk over every series of the store (there is no per-metric list): meant for
 * occasional calls. The mutex keeps a series being created from showing up before
 * we know whether it is the overflow series. */
ms_status ms_metric_visible_count(ms_store *s, uint32_t metric, uint64_t *out) {
    if (metric >= ms_metric_count(s)) return MS_ERR_UNKNOWN_METRIC;
    const ms_metric *m = ms_metric_at(s, metric);
    uint64_t visible = 0;
    pthread_mutex_lock(&s->lock);
    uint32_t overflow = atomic_load_explicit(&m->overflow_series, memory_order_relaxed);
    uint32_t n = ms_series_total(s);
    for (uint32_t i = 0; i < n; i++) {
        const ms_series *r = ms_series_at(s, i);
        if ((r->metric_kind >> 2) == metric && i != overflow &&
            !(ms_series_word(r) & MS_SERIES_HIDDEN))
            visible++;
    }
    pthread_mutex_unlock(&s->lock);
    *out = visible;
    return MS_OK;
}

/* ---- number formatting -------------------------------------------------------------- */

/* snprintf/strtod follow LC_NUMERIC; the round-trip test runs in that locale, then the
 * decimal separator (whatever bytes it is) becomes '.'. */
size_t ms_format_double(double v, char *out) {
    if (isnan(v)) return (size_t)(memcpy(out, "NaN", 4), 3);
    if (isinf(v)) return (size_t)(memcpy(out, v > 0 ? "+Inf" : "-Inf", 5), 4);
    if (v == 0) return signbit(v) ? (memcpy(out, "-0", 3), 2) : (memcpy(out, "0", 2), 1);
    char buf[64];
    int len = 0;
    for (int prec = 15; prec <= 17; prec++) {
        len = snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (prec == 17 || strtod(buf, NULL) == v) break;
    }
    size_t o = 0;
    for (int i = 0; i < len;) {
        char c = buf[i];
        if ((c >= '0' && c <= '9') || c == '-' || c == '+' || c == 'e') {
            out[o++] = c;
            i++;
        } else {
            out[o++] = '.';
            while (i < len && !((buf[i] >= '0' && buf[i] <= '9') || buf[i] == 'e')) i++;
        }
    }
    out[o] = '\0';
    return o;
}
