/* The per-request fast path (request_table.h): an open-addressing table from a request's
 * raw key to its block of series ids, and the block's one-call recording. */
#include "request_table.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "store_internal.h"

/* A block entry as pointers into the store, for ms_rtable_record: the series (its word
 * carries the expiry flags), its sample slots and, for a histogram, its bounds. A series
 * never moves and its slot ref never changes (store_internal.h), so once an entry's id is
 * known to be a series of its kind, these stay right for the store's life. */
typedef struct rentry {
    ms_series *series; /* NULL: MS_NO_SERIES */
    ms_atomic_u64 *slots;
    const double *bounds;
    uint32_t n_bounds;
    uint8_t kind, value;
} rentry;

typedef struct rslot {
    uint64_t hash; /* 0: empty (real hashes are forced non-zero) */
    ms_request_key key; /* its strings point into text */
    /* What ms_rtable_record reads, next to the key: the block resolved (n_resolved 0: not
     * yet, or the block names an id that is not a series of its kind), and which values
     * its entries record (a bit per ms_value). */
    uint32_t n_resolved, values;
    rentry r[MS_BLOCK_MAX];
    char *text;
    size_t text_len;
    ms_series_block block;
} rslot;

struct ms_rtable {
    ms_allocator a;
    uint32_t max_entries, count;
    uint32_t cap; /* a power of two, kept at least twice count */
    rslot *slots;
    size_t memory;
    rslot *last; /* the slot ms_rtable_record found last (NULL: none; a grow moves slots) */
};

static void *std_malloc(size_t n) { return malloc(n); }
static void *std_calloc(size_t n, size_t m) { return calloc(n, m); }
static void *std_realloc(void *p, size_t n) { return realloc(p, n); }
static void std_free(void *p) { free(p); }

/* FNV-1a over the key's fields; strings are length-prefixed so ("ab","c") != ("a","bc"). */
static uint64_t mix(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t mix_str(uint64_t h, ms_strref s, int present) {
    uint64_t len = present ? (uint64_t)s.len : UINT64_MAX;
    h = mix(h, &len, sizeof len);
    return present ? mix(h, s.ptr, s.len) : h;
}

static uint64_t key_hash(const ms_request_key *k) {
    uint64_t h = 0xcbf29ce484222325ULL;
    h = mix(h, &k->code, sizeof k->code);
    h = mix(h, &k->grpc, sizeof k->grpc);
    uint32_t fk = (uint32_t)k->flags_kind;
    h = mix(h, &fk, sizeof fk);
    if (k->flags_kind == MS_FLAGS_BITS) h = mix(h, &k->flags_bits, sizeof k->flags_bits);
    if (k->flags_kind == MS_FLAGS_TEXT) h = mix_str(h, k->flags_text, 1);
    h = mix_str(h, k->protocol, 1);
    h = mix_str(h, k->host, k->host.ptr != NULL);
    return h ? h : 1;
}

static int str_eq(ms_strref a, ms_strref b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static int key_eq(const ms_request_key *a, const ms_request_key *b) {
    if (a->code != b->code || a->grpc != b->grpc || a->flags_kind != b->flags_kind) return 0;
    if (a->flags_kind == MS_FLAGS_BITS && a->flags_bits != b->flags_bits) return 0;
    if (a->flags_kind == MS_FLAGS_TEXT && !str_eq(a->flags_text, b->flags_text)) return 0;
    if (!str_eq(a->protocol, b->protocol)) return 0;
    if ((a->host.ptr == NULL) != (b->host.ptr == NULL)) return 0;
    return a->host.ptr == NULL || str_eq(a->host, b->host);
}

ms_rtable *ms_rtable_new(const ms_allocator *allocator, uint32_t max_entries) {
    ms_allocator a = {std_malloc, std_calloc, std_realloc, std_free};
    if (allocator) a = *allocator;
    if (max_entries < 1 || max_entries > (UINT32_MAX >> 2)) return NULL;
    ms_rtable *t = a.calloc(1, sizeof *t);
    if (!t) return NULL;
    t->a = a;
    t->max_entries = max_entries;
    /* Small: most peers see a few keys, and a slot with its resolved entries is ~440 bytes. */
    t->cap = 4;
    t->slots = a.calloc(t->cap, sizeof(rslot));
    if (!t->slots) {
        a.free(t);
        return NULL;
    }
    t->memory = sizeof *t + t->cap * sizeof(rslot);
    return t;
}

void ms_rtable_free(ms_rtable *t) {
    if (!t) return;
    for (uint32_t i = 0; i < t->cap; i++)
        if (t->slots[i].hash) t->a.free(t->slots[i].text);
    t->a.free(t->slots);
    t->a.free(t);
}

uint32_t ms_rtable_len(const ms_rtable *t) { return t->count; }
size_t ms_rtable_memory(const ms_rtable *t) { return t->memory; }

static rslot *probe(rslot *slots, uint32_t cap, uint64_t hash, const ms_request_key *key) {
    uint32_t mask = cap - 1;
    for (uint32_t i = (uint32_t)hash & mask;; i = (i + 1) & mask) {
        rslot *s = &slots[i];
        if (!s->hash || (s->hash == hash && key_eq(&s->key, key))) return s;
    }
}

const ms_series_block *ms_rtable_find(const ms_rtable *t, const ms_request_key *key) {
    rslot *s = probe(t->slots, t->cap, key_hash(key), key);
    return s->hash ? &s->block : NULL;
}

static ms_status grow(ms_rtable *t) {
    uint32_t cap = t->cap * 2;
    rslot *slots = t->a.calloc(cap, sizeof(rslot));
    if (!slots) return MS_ERR_NOMEM;
    for (uint32_t i = 0; i < t->cap; i++) {
        rslot *old = &t->slots[i];
        if (old->hash) *probe(slots, cap, old->hash, &old->key) = *old;
    }
    t->a.free(t->slots);
    t->memory += (size_t)(cap - t->cap) * sizeof(rslot);
    t->slots = slots;
    t->last = NULL;
    t->cap = cap;
    return MS_OK;
}

/* The key's strings copied into one buffer the slot owns; key's pointers moved there. */
static ms_status own_strings(ms_rtable *t, ms_request_key *key, char **text, size_t *text_len) {
    ms_strref *parts[3] = {&key->flags_text, &key->protocol, &key->host};
    size_t total = 0;
    for (int i = 0; i < 3; i++) {
        if (i == 0 && key->flags_kind != MS_FLAGS_TEXT) continue;
        if (i == 2 && key->host.ptr == NULL) continue;
        if (parts[i]->len > MS_RKEY_MAX_STRING) return MS_ERR_LIMIT;
        total += parts[i]->len;
    }
    char *buf = t->a.malloc(total ? total : 1);
    if (!buf) return MS_ERR_NOMEM;
    size_t at = 0;
    for (int i = 0; i < 3; i++) {
        if (i == 0 && key->flags_kind != MS_FLAGS_TEXT) continue;
        if (i == 2 && key->host.ptr == NULL) continue;
        if (parts[i]->len) memcpy(buf + at, parts[i]->ptr, parts[i]->len);
        parts[i]->ptr = buf + at;
        at += parts[i]->len;
    }
    *text = buf;
    *text_len = total ? total : 1;
    return MS_OK;
}

static void set_block(rslot *s, const ms_series_block *block) {
    s->block = *block;
    s->n_resolved = 0; /* resolved again by the next record */
    s->values = 0;
    for (uint32_t i = 0; i < block->n; i++) s->values |= 1u << block->e[i].value;
}

ms_status ms_rtable_put(ms_rtable *t, const ms_request_key *key, const ms_series_block *block) {
    if (block->n > MS_BLOCK_MAX) return MS_ERR_INVALID_SAMPLE;
    uint64_t hash = key_hash(key);
    rslot *s = probe(t->slots, t->cap, hash, key);
    if (s->hash) { /* replace the block: a series was created since */
        set_block(s, block);
        return MS_OK;
    }
    if (t->count >= t->max_entries) return MS_ERR_LIMIT;
    ms_request_key owned = *key;
    char *text;
    size_t text_len;
    ms_status st = own_strings(t, &owned, &text, &text_len);
    if (st != MS_OK) return st;
    if ((t->count + 1) * 2 > t->cap) {
        st = grow(t);
        if (st != MS_OK) {
            t->a.free(text);
            return st;
        }
        s = probe(t->slots, t->cap, hash, key);
    }
    s->hash = hash;
    s->key = owned;
    s->text = text;
    s->text_len = text_len;
    set_block(s, block);
    t->count++;
    t->memory += text_len;
    return MS_OK;
}

/* What an entry of ``kind`` does with ``v``: 1 records it, 0 skips it (a counter's 0, a NaN
 * observation: nothing to record), -1 refuses it (a counter takes whole counts below 2^64). */
static inline int entry_takes(uint8_t kind, double v) {
    if (kind == MS_COUNTER) {
        if (v == 0) return 0;
        return (v > 0 && v == floor(v) && v < 18446744073709551616.0) ? 1 : -1;
    }
    return isnan(v) ? 0 : 1;
}

ms_status ms_record_block(ms_store *s, const ms_series_block *block, const double values[MS_N_VALUES]) {
    /* Check first, so that a block is recorded whole or not at all: an id unknown to this
     * store or of another kind too (series only ever grow in number, and keep their kind). */
    for (uint32_t i = 0; i < block->n; i++) {
        const ms_block_entry *e = &block->e[i];
        int takes = entry_takes(e->kind, values[e->value]);
        if (takes < 0) return MS_ERR_INVALID_SAMPLE;
        if (takes == 0) continue;
        if (e->series == MS_NO_SERIES) return MS_ERR_UNKNOWN_SERIES;
        ms_status st = MS_OK;
        if (!ms_series_of_kind(s, e->series, (ms_kind)e->kind, &st)) return st;
    }
    for (uint32_t i = 0; i < block->n; i++) {
        const ms_block_entry *e = &block->e[i];
        double v = values[e->value];
        ms_status st = MS_OK;
        if (e->kind == MS_COUNTER) {
            if (v != 0) st = ms_inc_inline(s, e->series, (uint64_t)v);
        } else if (e->kind == MS_HISTOGRAM) {
            if (!isnan(v)) st = ms_observe_inline(s, e->series, v);
        } else if (!isnan(v)) {
            st = ms_set_inline(s, e->series, v);
        }
        if (st != MS_OK) return st;
    }
    return MS_OK;
}

/* The slot's block as pointers; n_resolved stays 0 when an entry's id is not a series of
 * its kind (ms_record_block then says so on every record, as before). */
static void resolve(const ms_store *st, rslot *slot) {
    const ms_series_block *b = &slot->block;
    for (uint32_t i = 0; i < b->n; i++) {
        const ms_block_entry *e = &b->e[i];
        rentry *r = &slot->r[i];
        *r = (rentry){.kind = e->kind, .value = e->value};
        if (e->series == MS_NO_SERIES) continue;
        ms_status status = MS_OK;
        r->series = ms_series_of_kind((ms_store *)st, e->series, (ms_kind)e->kind, &status);
        if (!r->series) return;
        r->slots = ms_series_slots(st, r->series);
        if (e->kind == MS_HISTOGRAM) {
            const ms_metric *m = ms_metric_at(st, r->series->metric_kind >> 2);
            r->bounds = ms_metric_bounds(st, m);
            r->n_bounds = m->n_bounds;
        }
    }
    slot->n_resolved = b->n;
}

/* ms_record_block over resolved entries: the same checks, then the same updates, with no
 * walk from the store's head to each series and metric. */
static ms_status record_resolved(const rslot *slot, const double values[MS_N_VALUES]) {
    for (uint32_t i = 0; i < slot->n_resolved; i++) {
        const rentry *e = &slot->r[i];
        int takes = entry_takes(e->kind, values[e->value]);
        if (takes < 0) return MS_ERR_INVALID_SAMPLE;
        if (takes > 0 && !e->series) return MS_ERR_UNKNOWN_SERIES;
    }
    for (uint32_t i = 0; i < slot->n_resolved; i++) {
        const rentry *e = &slot->r[i];
        double v = values[e->value];
        if (e->kind == MS_COUNTER) {
            if (v == 0) continue;
            ms_mark_active(e->series);
            ms_atomic_add_u64(e->slots, (uint64_t)v);
        } else if (isnan(v)) {
            continue;
        } else if (e->kind == MS_HISTOGRAM) {
            ms_mark_active(e->series);
            ms_atomic_add_u64(&e->slots[ms_bucket_of(e->bounds, e->n_bounds, v)], 1);
            ms_atomic_add_double(&e->slots[e->n_bounds + 1], v);
        } else {
            ms_mark_active(e->series);
            ms_atomic_store_double(e->slots, v);
        }
    }
    return MS_OK;
}

ms_status ms_rtable_record(ms_rtable *t, ms_store *s, const ms_request_key *key,
                           const double values[MS_N_VALUES], uint32_t needed) {
    /* A peer's requests mostly repeat its last key: compared first, it spares the hash (a
     * multiply per key byte). */
    rslot *slot = t->last;
    if (!slot || !key_eq(&slot->key, key)) {
        slot = probe(t->slots, t->cap, key_hash(key), key);
        if (!slot->hash) return MS_ERR_UNKNOWN_SERIES;
        t->last = slot;
    }
    if (needed & ~slot->values) return MS_ERR_UNKNOWN_SERIES;
    if (slot->n_resolved) return record_resolved(slot, values);
    ms_status st = ms_record_block(s, &slot->block, values);
    if (st == MS_OK) resolve(s, slot);
    return st;
}
