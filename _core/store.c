/* The series store (see store.h for the API, store_internal.h for the layout). */
/* flock, MAP_NORESERVE, pread: POSIX and BSD calls that -std=c11 hides. */
#define _DEFAULT_SOURCE
#include "store.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* A zeroed allocation that lives until the store dies (private stores). */
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

/* A shared store's memory is the file: a bump pointer that never goes back (nothing is
 * freed, so memory past `used` is always zero, as ftruncate made it). The file grows
 * by whole pages, at least doubling, up to the reservation every process maps. */
static int file_grow(ms_store *s, uint64_t need) {
    ms_head *h = s->h;
    uint64_t size = atomic_load_explicit(&h->size, memory_order_relaxed);
    if (need <= size) return 1;
    if (need > h->reserve) return 0;
    uint64_t grown = size * 2 > need ? size * 2 : need;
    grown = (grown + MS_FILE_PAGE - 1) & ~(uint64_t)(MS_FILE_PAGE - 1);
    if (grown > h->reserve) grown = h->reserve;
    if (ftruncate(s->fd, (off_t)grown) != 0) return 0;
    atomic_store_explicit(&h->size, grown, memory_order_release);
    return 1;
}

static void *file_alloc(ms_store *s, size_t n, size_t align) {
    ms_head *h = s->h;
    uint64_t at = atomic_load_explicit(&h->used, memory_order_relaxed);
    at = (at + (align - 1)) & ~(uint64_t)(align - 1);
    if (at + n < at || !file_grow(s, at + n)) return NULL;
    atomic_store_explicit(&h->used, at + n, memory_order_relaxed);
    return s->base + at;
}

/* Zeroed memory that never moves, for the store's structure. */
static void *store_alloc(ms_store *s, size_t n, size_t align) {
    return s->fd >= 0 ? file_alloc(s, n, align) : arena_alloc(s, n, align);
}

static ms_ref ref_of(const ms_store *s, const void *p) {
    return (ms_ref)((uintptr_t)p - (uintptr_t)s->base);
}

static void *at(const ms_store *s, ms_ref ref) { return ms_at(s->base, ref); }

/* ---- append-only paged vectors ------------------------------------------------ */

static void pvec_init(ms_pvec *v, size_t elem_size) {
    v->elem_size = (uint32_t)elem_size;
    atomic_init(&v->dir, 0);
    v->dir_cap = v->n_pages = 0;
    atomic_init(&v->count, 0);
}

/* Room for element `count` (zeroed); visible to readers only after pvec_publish. A
 * writer killed between the steps leaves at most an unused page or directory. */
static void *pvec_reserve(ms_store *s, ms_pvec *v) {
    uint32_t n = atomic_load_explicit(&v->count, memory_order_relaxed);
    uint32_t page = n >> MS_PAGE_SHIFT;
    ms_ref *dir = at(s, atomic_load_explicit(&v->dir, memory_order_relaxed));
    if (page >= v->n_pages) {
        if (page >= v->dir_cap) {
            /* Readers may still hold the old directory: it stays. */
            uint32_t cap = v->dir_cap ? v->dir_cap * 2 : 4;
            ms_ref *grown = store_alloc(s, cap * sizeof *grown, sizeof(ms_ref));
            if (!grown) return NULL;
            if (page) memcpy(grown, dir, page * sizeof *grown);
            atomic_store_explicit(&v->dir, ref_of(s, grown), memory_order_release);
            dir = grown;
            v->dir_cap = cap;
        }
        size_t bytes = (size_t)v->elem_size << MS_PAGE_SHIFT;
        char *p = s->fd >= 0 ? file_alloc(s, bytes, 16) : block_alloc(s, bytes);
        if (!p) return NULL;
        dir[page] = ref_of(s, p);
        v->n_pages = page + 1;
    }
    return (char *)at(s, dir[page]) + (size_t)(n & MS_PAGE_MASK) * v->elem_size;
}

static uint32_t pvec_publish(ms_pvec *v) {
    uint32_t n = atomic_load_explicit(&v->count, memory_order_relaxed);
    ms_store_release_u32(&v->count, n + 1);
    return n;
}

/* ---- pools of variable-size records (store_internal.h) ------------------------------- */

/* Room for a record of `units` (zeroed) at *id, visible to readers after pool_publish;
 * NULL with *st set when memory or ids (2**32 units) run out. A record larger than a page
 * is allocated on its own and the pool gets its stub. A writer killed before publishing
 * leaves only unused space (a gap marker it wrote is written again by the next one). */
static uint32_t *pool_reserve(ms_store *s, ms_pool *p, size_t units, uint32_t *id,
                              ms_status *st) {
    size_t in_pool = units > MS_POOL_UNITS ? 3 : units;
    uint64_t next = atomic_load_explicit(&p->next, memory_order_relaxed);
    uint32_t off = (uint32_t)(next & (MS_POOL_UNITS - 1));
    if (off && off + in_pool > MS_POOL_UNITS) { /* does not fit this page's rest */
        ((uint32_t *)at(s, ((ms_ref *)at(s, p->dir))[next >> MS_POOL_SHIFT]))[off] = MS_POOL_GAP;
        next = (next | (MS_POOL_UNITS - 1)) + 1;
    }
    *st = MS_ERR_LIMIT;
    if (next + in_pool >= (uint64_t)MS_NO_SERIES) return NULL;
    *st = MS_ERR_NOMEM;
    uint32_t page = (uint32_t)(next >> MS_POOL_SHIFT);
    ms_ref *dir = at(s, atomic_load_explicit(&p->dir, memory_order_relaxed));
    if (page >= p->n_pages) {
        if (page >= p->dir_cap) { /* readers may still hold the old directory: it stays */
            uint32_t cap = p->dir_cap ? p->dir_cap * 2 : 4;
            ms_ref *grown = store_alloc(s, cap * sizeof *grown, sizeof(ms_ref));
            if (!grown) return NULL;
            if (page) memcpy(grown, dir, page * sizeof *grown);
            atomic_store_explicit(&p->dir, ref_of(s, grown), memory_order_release);
            dir = grown;
            p->dir_cap = cap;
        }
        size_t bytes = (size_t)MS_POOL_UNITS * sizeof(uint32_t);
        char *fresh = s->fd >= 0 ? file_alloc(s, bytes, 16) : block_alloc(s, bytes);
        if (!fresh) return NULL;
        dir[page] = ref_of(s, fresh);
        p->n_pages = page + 1;
    }
    uint32_t *rec = (uint32_t *)at(s, dir[page]) + (next & (MS_POOL_UNITS - 1));
    *id = (uint32_t)next;
    if (in_pool == units) return rec;
    uint32_t *big = store_alloc(s, units * sizeof *big, sizeof(uint64_t));
    if (!big) return NULL;
    ms_ref ref = ref_of(s, big);
    rec[0] = MS_POOL_BIG;
    memcpy(rec + 1, &ref, sizeof ref);
    return big;
}

static void pool_publish(ms_pool *p, uint32_t id, size_t units) {
    p->count++;
    ms_store_release_u32(&p->next, id + (uint32_t)(units > MS_POOL_UNITS ? 3 : units));
}

/* Calls `visit` with every record's id, in order; `units_of` gives a record's size. */
static void pool_walk(const ms_store *s, const ms_pool *p, size_t (*units_of)(const uint32_t *),
                      void (*visit)(ms_store *, uint32_t, void *), void *ctx) {
    uint32_t next = ms_load_acquire_u32(&p->next);
    for (uint32_t id = 0; id < next;) {
        const uint32_t *unit = ms_pool_unit(s->base, p, id);
        if (*unit == MS_POOL_GAP) {
            id = (id | (MS_POOL_UNITS - 1)) + 1;
            continue;
        }
        size_t units = *unit == MS_POOL_BIG ? 3 : units_of(unit);
        visit((ms_store *)s, id, ctx);
        id += (uint32_t)units;
    }
}

static size_t string_units(const uint32_t *rec) {
    return 1 + ((size_t)(rec[0] & MS_STR_MAXLEN) + 3) / 4;
}

static size_t labelset_units(const uint32_t *rec) { return 1 + (size_t)rec[0]; }

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
    uint32_t mask = t->cap - 1, i = (uint32_t)h & mask, *slots = at(s, t->slots);
    for (;;) {
        uint32_t *slot = &slots[i];
        if (*slot == 0 || eq(s, *slot - 1, key)) return slot;
        i = (i + 1) & mask;
    }
}

/* Fills `slots` (zeroed, cap a power of two) with ids [0, n) by their hashes. */
static void table_fill(const ms_store *s, uint32_t *slots, uint32_t cap, const uint32_t *ids,
                       uint32_t n, rehash_fn rehash) {
    for (uint32_t k = 0; k < n; k++) {
        uint32_t v = ids ? ids[k] : k + 1;
        if (!v) continue;
        uint32_t j = (uint32_t)rehash(s, v - 1) & (cap - 1);
        while (slots[j]) j = (j + 1) & (cap - 1);
        slots[j] = v;
    }
}

/* A private store frees a grown table's old slots; a shared one leaves them in the file
 * (nothing there is freed), at most as many bytes again as the tables in use. */
static uint32_t *table_slots_new(ms_store *s, uint32_t cap) {
    if (s->fd >= 0) return file_alloc(s, (size_t)cap * sizeof(uint32_t), sizeof(uint32_t));
    uint32_t *slots = s->al.calloc(cap, sizeof *slots);
    if (slots) atomic_fetch_add_explicit(&s->mem, (size_t)cap * sizeof *slots, memory_order_relaxed);
    return slots;
}

static void table_slots_free(ms_store *s, ms_table *t) {
    if (s->fd < 0 && t->slots) ms_dealloc(s, at(s, t->slots), (size_t)t->cap * sizeof(uint32_t));
}

/* Publishes grown slots: the ref and cap are two words, so a shared store's writer
 * killed in between leaves them mismatched; repair (store_repair) rebuilds every table. */
static ms_status table_reserve(ms_store *s, ms_table *t, rehash_fn rehash) {
    if ((uint64_t)(t->used + 1) * 10 <= (uint64_t)t->cap * 7) return MS_OK;
    if (t->cap >= (1u << 31)) return MS_ERR_LIMIT;
    uint32_t cap = t->cap ? t->cap * 2 : 16;
    uint32_t *slots = table_slots_new(s, cap);
    if (!slots) return MS_ERR_NOMEM;
    if (t->cap) table_fill(s, slots, cap, at(s, t->slots), t->cap, rehash);
    table_slots_free(s, t);
    t->slots = ref_of(s, slots);
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
    table_slots_free(s, t);
    t->slots = 0;
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
    return hash_bytes(s->h->seed, str->data, ms_str_len(str));
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
    return hash_bytes(s->h->seed ^ 0x5bd1e995u, ids, n * sizeof *ids);
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
    return mix64(s->h->seed ^ (((uint64_t)metric << 32) | labelset));
}

static uint64_t series_rehash(const ms_store *s, uint32_t id) {
    const ms_series *r = ms_series_at(s, id);
    return series_hash(s, r->metric_kind >> 2, r->labelset);
}

/* ---- store life ------------------------------------------------------------------ */

ms_store *ms_store_new(const ms_allocator *allocator, uint64_t default_max_series) {
    return ms_store_new_budget(allocator, default_max_series, UINT64_MAX);
}

static const ms_allocator LIBC = {malloc, libc_calloc, realloc, free};

static uint64_t new_seed(const void *salt) {
    static _Atomic uint64_t stores_made;
    uint64_t n = atomic_fetch_add(&stores_made, 1);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return mix64((uint64_t)(uintptr_t)salt ^ ((uint64_t)ts.tv_sec << 20) ^
                 (uint64_t)ts.tv_nsec ^ (n << 40) ^ ((uint64_t)getpid() << 32));
}

static void head_init(ms_head *h, uint64_t seed, uint64_t default_max_series,
                      uint64_t max_exposition_bytes) {
    h->version = MS_SHARED_VERSION;
    h->head_size = sizeof *h;
    h->seed = seed;
    h->default_max_series = default_max_series;
    h->max_exposition_bytes = max_exposition_bytes;
    atomic_init(&h->exposition_bytes, 0);
    h->overflow_string = MS_NO_SERIES;
    pvec_init(&h->metrics, sizeof(ms_ref));
    pvec_init(&h->series, sizeof(ms_series));
    memset(&h->strings, 0, sizeof h->strings);
    memset(&h->labelsets, 0, sizeof h->labelsets);
}

static ms_store *store_shell(const ms_allocator *allocator) {
    const ms_allocator *al = allocator ? allocator : &LIBC;
    ms_store *s = al->calloc(1, sizeof *s);
    if (!s) return NULL;
    s->al = *al;
    s->fd = -1;
    atomic_init(&s->mem, sizeof *s);
    if (pthread_mutex_init(&s->lock, NULL) != 0) {
        al->free(s);
        return NULL;
    }
    return s;
}

ms_store *ms_store_new_budget(const ms_allocator *allocator, uint64_t default_max_series,
                              uint64_t max_exposition_bytes) {
    if (default_max_series < 1 || max_exposition_bytes < 1) return NULL;
    ms_store *s = store_shell(allocator);
    if (!s) return NULL;
    s->h = s->al.calloc(1, sizeof *s->h);
    if (!s->h) {
        pthread_mutex_destroy(&s->lock);
        s->al.free(s);
        return NULL;
    }
    atomic_fetch_add_explicit(&s->mem, sizeof *s->h, memory_order_relaxed);
    head_init(s->h, new_seed(s), default_max_series, max_exposition_bytes);
    s->arena_next = ARENA_FIRST;
    return s;
}

void ms_store_free(ms_store *s) {
    if (!s) return;
    if (s->fd >= 0) {
        munmap(s->base, s->map_len);
        close(s->fd);
    } else {
        table_free(s, &s->h->string_table);
        table_free(s, &s->h->labelset_table);
        table_free(s, &s->h->series_table);
        ms_block *b = s->blocks;
        while (b) {
            ms_block *next = b->next;
            s->al.free(b);
            b = next;
        }
        s->al.free(s->h);
    }
    pthread_mutex_destroy(&s->lock);
    s->al.free(s);
}

/* ---- shared stores ------------------------------------------------------------------ */

static int lock_file(int fd, int op) {
    int r;
    while ((r = flock(fd, op)) != 0 && errno == EINTR) {
    }
    return r;
}

/* flock belongs to an open file, which a forked child shares with its parent: the child
 * opens the file again so its lock excludes the parent's. */
static ms_status own_file(ms_store *s) {
    if (s->pid == (int)getpid()) return MS_OK;
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", s->fd);
    int fd = open(proc, O_RDWR | O_CLOEXEC);
    if (fd < 0) return MS_ERR_IO;
    close(s->fd);
    s->fd = fd;
    s->pid = (int)getpid();
    return MS_OK;
}

static void store_repair(ms_store *s);

/* The store lock: this process' threads by the mutex, other processes by flock, which
 * the kernel releases when its holder dies. `writer` tells the next holder whether the
 * last one died in the middle of a change, and then it is repaired first. */
static ms_status store_lock(ms_store *s) {
    /* A child forked while another thread of its parent held the mutex would wait for
     * it forever: a child (only the forking thread lives on) starts with a fresh one. */
    if (s->fd >= 0 && s->pid != (int)getpid()) pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_lock(&s->lock);
    if (s->fd < 0) return MS_OK;
    ms_status st = own_file(s);
    if (st == MS_OK && lock_file(s->fd, LOCK_EX) != 0) st = MS_ERR_IO;
    if (st != MS_OK) {
        pthread_mutex_unlock(&s->lock);
        return st;
    }
    if (atomic_load_explicit(&s->h->writer, memory_order_acquire) != 0) store_repair(s);
    atomic_store_explicit(&s->h->writer, (uint32_t)getpid(), memory_order_relaxed);
    return MS_OK;
}

static void store_unlock(ms_store *s) {
    if (s->fd >= 0) {
        atomic_store_explicit(&s->h->writer, 0, memory_order_release);
        lock_file(s->fd, LOCK_UN);
    }
    pthread_mutex_unlock(&s->lock);
}

ms_status ms_store_open_shared(const char *path, const ms_allocator *allocator,
                               uint64_t default_max_series, uint64_t max_exposition_bytes,
                               uint64_t reserve, ms_store **out, ms_file_problem *problem) {
    *problem = MS_FILE_OK;
    if (default_max_series < 1 || max_exposition_bytes < 1 || reserve < MS_FILE_PAGE)
        return MS_ERR_INVALID_METRIC;
    reserve &= ~(uint64_t)(MS_FILE_PAGE - 1);
    ms_store *s = store_shell(allocator);
    if (!s) return MS_ERR_NOMEM;
    ms_status st = MS_ERR_IO;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) goto fail;
    if (lock_file(fd, LOCK_EX) != 0) goto fail_fd;
    struct stat sb;
    if (fstat(fd, &sb) != 0) goto fail_locked;
    ms_head head;
    memset(&head, 0, sizeof head);
    if (sb.st_size >= (off_t)sizeof head && pread(fd, &head, sizeof head, 0) != sizeof head)
        goto fail_locked;
    st = MS_ERR_FILE;
    if (sb.st_size > 0 && sb.st_size < (off_t)sizeof head) {
        *problem = MS_FILE_TRUNCATED;
        goto fail_locked;
    }
    /* A file without the magic is new, or its creator died before writing the magic last
     * (it had written this version and head size): made here, under the lock. Anything
     * else must be ours. */
    int fresh = head.magic == 0;
    if (fresh) {
        int zero = 1;
        for (size_t i = 0; i < sizeof head; i++)
            if (((const unsigned char *)&head)[i]) zero = 0;
        if (!zero && (head.version != MS_SHARED_VERSION || head.head_size != sizeof head)) {
            *problem = MS_FILE_NOT_A_STORE;
            goto fail_locked;
        }
        head.reserve = reserve;
    } else if (head.magic != MS_SHARED_MAGIC) {
        *problem = MS_FILE_NOT_A_STORE;
        goto fail_locked;
    } else if (head.version != MS_SHARED_VERSION) {
        *problem = MS_FILE_VERSION;
        goto fail_locked;
    } else if (head.head_size != sizeof head || head.used < sizeof head) {
        *problem = MS_FILE_NOT_A_STORE;
        goto fail_locked;
    } else if (head.size > (uint64_t)sb.st_size || head.used > head.size ||
               head.size > head.reserve || head.reserve % MS_FILE_PAGE) {
        *problem = MS_FILE_TRUNCATED;
        goto fail_locked;
    }
    st = MS_ERR_IO;
    if (fresh && ftruncate(fd, MS_FILE_PAGE) != 0) goto fail_locked;
    void *base = mmap(NULL, (size_t)head.reserve, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                      fd, 0);
    if (base == MAP_FAILED) goto fail_locked;
    s->base = base;
    s->map_len = (size_t)head.reserve;
    s->h = base;
    s->fd = fd;
    s->pid = (int)getpid();
    if (fresh) {
        ms_head *h = s->h;
        memset(h, 0, sizeof *h); /* what a creator that died here had written */
        head_init(h, new_seed(s), default_max_series, max_exposition_bytes);
        h->reserve = reserve;
        atomic_store_explicit(&h->size, MS_FILE_PAGE, memory_order_relaxed);
        atomic_store_explicit(&h->used, sizeof *h, memory_order_relaxed);
        atomic_store_explicit((_Atomic uint64_t *)&h->magic, MS_SHARED_MAGIC, memory_order_release);
    } else if (atomic_load_explicit(&s->h->writer, memory_order_acquire) != 0) {
        store_repair(s);
        atomic_store_explicit(&s->h->writer, 0, memory_order_release);
    }
    lock_file(fd, LOCK_UN);
    *out = s;
    return MS_OK;
fail_locked:
    lock_file(fd, LOCK_UN);
fail_fd:
    close(fd);
fail:
    pthread_mutex_destroy(&s->lock);
    s->al.free(s);
    return st;
}

int ms_store_is_shared(const ms_store *s) { return s->fd >= 0; }

uint64_t ms_store_repairs(const ms_store *s) {
    return atomic_load_explicit((_Atomic uint64_t *)&s->h->repairs, memory_order_relaxed);
}

size_t ms_store_memory(const ms_store *s) {
    if (s->fd >= 0) return (size_t)atomic_load_explicit((_Atomic uint64_t *)&s->h->used, memory_order_relaxed);
    return atomic_load_explicit((_Atomic size_t *)&s->mem, memory_order_relaxed);
}

uint64_t ms_store_max_exposition_bytes(const ms_store *s) { return s->h->max_exposition_bytes; }

uint64_t ms_store_exposition_bytes(const ms_store *s) {
    return atomic_load_explicit((_Atomic uint64_t *)&s->h->exposition_bytes, memory_order_relaxed);
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

static void str_fill(ms_str *str, const char *p, size_t n) {
    uint32_t flags = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\\' || p[i] == '"' || p[i] == '\n') {
            flags = MS_STR_ESCAPE;
            break;
        }
    str->len_flags = (uint32_t)n | flags;
    if (n) memcpy(str->data, p, n);
}

/* A copy in the store; 0 when out of memory (no ref is 0: the head comes first). */
static ms_ref str_copy(ms_store *s, const char *p, size_t n) {
    ms_str *str = store_alloc(s, sizeof(ms_str) + n, sizeof(uint32_t));
    if (!str) return 0;
    str_fill(str, p, n);
    return ref_of(s, str);
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
    static const char overflow[] = MS_OVERFLOW_FAMILY, budget[] = MS_BUDGET_FAMILY;
    if (same(name, len, overflow, sizeof overflow - 1) ||
        same(name, len, overflow, sizeof overflow - 7) ||
        same(name, len, budget, sizeof budget - 1) || same(name, len, budget, sizeof budget - 7))
        return 1;
    for (uint32_t i = 0; i < n_metrics; i++) {
        const ms_metric *m = ms_metric_at(s, i);
        const ms_str *mn = ms_metric_name(s, m);
        size_t n = ms_str_len(mn);
        if (same(name, len, mn->data, n) ||
            same(name, len, mn->data, family_len(m->kind, mn->data, n)))
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

/* ---- exposition budget ------------------------------------------------------------ */

/* Saturating: a charge too big for 64 bits is refused by any budget, as its exact value
 * would be (the Python twin computes exactly and clamps; the decisions agree). */
static inline uint64_t sat_add(uint64_t a, uint64_t b) {
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static inline uint64_t sat_mul(uint64_t a, uint64_t b) {
    return b && a > UINT64_MAX / b ? UINT64_MAX : a * b;
}

/* A series' lines, with S the sample name and L its label block `a="v",b="w"`:
 *   counter     S{L} <u64>\n          S: the name, plus "_total" in OpenMetrics when the
 *                                      name lacks it (the larger of the two formats)
 *   gauge       name{L} <double>\n
 *   histogram   name_bucket{L,le="<bound>"} <u64>\n  for each bound and +Inf, then
 *               name_sum{L} <double>\n  and  name_count{L} <u64>\n
 * with every value at its widest. L is the label names' part (`a=""`, commas: fixed)
 * plus the values' escaped bytes, so a charge is charge_base + charge_lines * those
 * bytes, and the base is worked out once here. Labelless metrics are not charged. */
static void charge_init(const ms_store *s, ms_metric *m) {
    m->charge_base = m->charge_lines = 0;
    if (!m->n_labels) return;
    uint64_t name = ms_str_len(ms_metric_name(s, m)), names = m->n_labels - 1; /* commas */
    for (uint32_t i = 0; i < m->n_labels; i++)
        names = sat_add(names, (uint64_t)ms_str_len(ms_metric_label(s, m, i)) + 3); /* a="" */
    uint64_t braced = sat_add(names, 2); /* {L} */
    if (m->kind == MS_COUNTER) {
        const char *n = ms_metric_name(s, m)->data;
        int total = name >= 6 && memcmp(n + name - 6, "_total", 6) == 0;
        m->charge_lines = 1;
        m->charge_base = sat_add(braced, name + (total ? 0 : 6) + 1 + MS_U64_WIDTH + 1);
    } else if (m->kind == MS_GAUGE) {
        m->charge_lines = 1;
        m->charge_base = sat_add(braced, name + 1 + MS_DOUBLE_WIDTH + 1);
    } else {
        m->charge_lines = (uint64_t)m->n_bounds + 3;
        /* name_bucket{ L ,le=" bound "} count\n */
        uint64_t bucket = sat_add(names, name + 8 + 1 + 4 + 3 + MS_U64_WIDTH + 1);
        uint64_t base = sat_add(sat_mul(bucket, (uint64_t)m->n_bounds + 1), 4); /* "+Inf" */
        for (uint32_t b = 0; b < m->n_bounds; b++)
            base = sat_add(base, ms_str_len(ms_metric_bound_text(s, m, b)));
        base = sat_add(base, sat_add(braced, name + 4 + 1 + MS_DOUBLE_WIDTH + 1)); /* _sum */
        m->charge_base = sat_add(base, sat_add(braced, name + 6 + 1 + MS_U64_WIDTH + 1));
    }
}

/* The escaped bytes of a label value: \\, \" and newline take two. */
static uint64_t escaped_len(const ms_strref *v) {
    const unsigned char *p = (const unsigned char *)v->ptr;
    size_t n = v->len;
    for (size_t i = 0; i < v->len; i++)
        n += (size_t)((p[i] == '\\') | (p[i] == '"') | (p[i] == '\n'));
    return n;
}

/* values[0 .. known) are interned as ids[0 .. known): their length and "needs escaping"
 * bit are known, so only new values (or ones with escapes) are scanned. A new label set
 * is mostly values seen before, and scanning all 25 was a fifth of creating a series. */
static uint64_t series_charge(const ms_store *s, const ms_metric *m, const ms_strref *values,
                              const uint32_t *ids, uint32_t known) {
    if (!m->n_labels) return 0;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < m->n_labels; i++) {
        const ms_str *str = i < known ? ms_string_at(s, ids[i]) : NULL;
        uint64_t len = str && !(str->len_flags & MS_STR_ESCAPE) ? ms_str_len(str)
                                                                 : escaped_len(&values[i]);
        bytes = sat_add(bytes, len);
    }
    return sat_add(m->charge_base, sat_mul(m->charge_lines, bytes));
}

ms_status ms_series_charge(const ms_store *s, uint32_t metric, const ms_strref *values,
                           uint32_t n_values, uint64_t *out_bytes) {
    if (metric >= ms_metric_count(s)) return MS_ERR_UNKNOWN_METRIC;
    const ms_metric *m = ms_metric_at(s, metric);
    if (n_values != m->n_labels) return MS_ERR_INVALID_LABELS;
    *out_bytes = series_charge(s, m, values, NULL, 0);
    return MS_OK;
}

/* A shared store's metric `m` has exactly this definition (another process registered
 * it): the same kind, name, help, label names, bounds and max_series. */
static int same_definition(const ms_store *s, const ms_metric *m, ms_kind kind,
                           const char *name, size_t name_len, const char *help,
                           size_t help_len, const ms_strref *labels, uint32_t n_labels,
                           const double *bounds, uint32_t n_bounds, uint64_t max_series) {
    const ms_str *mn = ms_metric_name(s, m), *mh = ms_str_at(s, m->help);
    if (m->kind != (uint32_t)kind || m->n_labels != n_labels || m->n_bounds != n_bounds ||
        m->max_series != max_series || !same(mn->data, ms_str_len(mn), name, name_len) ||
        !same(mh->data, ms_str_len(mh), help, help_len))
        return 0;
    for (uint32_t i = 0; i < n_labels; i++) {
        const ms_str *l = ms_metric_label(s, m, i);
        if (!same(l->data, ms_str_len(l), labels[i].ptr, labels[i].len)) return 0;
    }
    return n_bounds == 0 ||
           memcmp(ms_metric_bounds(s, m), bounds, n_bounds * sizeof *bounds) == 0;
}

/* The id of the shared store's metric registered as `name` with this very definition;
 * MS_NO_SERIES if there is none, MS_ERR_DUPLICATE_METRIC in *st if it differs. */
static uint32_t registered(const ms_store *s, uint32_t n_metrics, ms_kind kind,
                           const char *name, size_t name_len, const char *help,
                           size_t help_len, const ms_strref *labels, uint32_t n_labels,
                           const double *bounds, uint32_t n_bounds, uint64_t max_series,
                           ms_status *st) {
    for (uint32_t i = 0; i < n_metrics; i++) {
        const ms_metric *m = ms_metric_at(s, i);
        const ms_str *mn = ms_metric_name(s, m);
        if (!same(mn->data, ms_str_len(mn), name, name_len)) continue;
        if (same_definition(s, m, kind, name, name_len, help, help_len, labels, n_labels,
                            bounds, n_bounds, max_series))
            return i;
        *st = MS_ERR_DUPLICATE_METRIC;
        return MS_NO_SERIES;
    }
    return MS_NO_SERIES;
}

static ms_status metric_add_locked(ms_store *s, ms_kind kind, const char *name,
                                   size_t name_len, const char *help, size_t help_len,
                                   const ms_strref *label_names, uint32_t n_labels,
                                   const double *bounds, uint32_t n_bounds,
                                   uint64_t max_series, uint32_t *out_metric) {
    ms_head *h = s->h;
    uint32_t n_metrics = atomic_load_explicit(&h->metrics.count, memory_order_relaxed);
    max_series = max_series ? max_series : h->default_max_series;
    if (s->fd >= 0) {
        ms_status st = MS_OK;
        uint32_t id = registered(s, n_metrics, kind, name, name_len, help, help_len,
                                 label_names, n_labels, bounds, n_bounds, max_series, &st);
        if (id != MS_NO_SERIES) *out_metric = id;
        if (id != MS_NO_SERIES || st != MS_OK) return st;
    }
    if (name_taken(s, n_metrics, name, name_len) ||
        name_taken(s, n_metrics, name, family_len(kind, name, name_len)))
        return MS_ERR_DUPLICATE_METRIC;
    if (n_metrics >= MAX_METRICS) return MS_ERR_LIMIT;
    ms_metric *m = store_alloc(s, sizeof *m, sizeof(uint64_t));
    if (!m) return MS_ERR_NOMEM;
    m->kind = kind;
    m->id = n_metrics;
    m->n_labels = n_labels;
    m->n_bounds = n_bounds;
    m->stride = kind == MS_HISTOGRAM ? n_bounds + 2 : 1;
    m->max_series = max_series;
    atomic_init(&m->n_series, 0);
    atomic_init(&m->overflow_count, 0);
    atomic_init(&m->budget_overflow_count, 0);
    atomic_init(&m->overflow_series, MS_NO_SERIES);
    if (!(m->name = str_copy(s, name, name_len))) return MS_ERR_NOMEM;
    if (!(m->help = str_copy(s, help, help_len))) return MS_ERR_NOMEM;
    if (n_labels) {
        ms_ref *names = store_alloc(s, n_labels * sizeof *names, sizeof(ms_ref));
        if (!names) return MS_ERR_NOMEM;
        for (uint32_t i = 0; i < n_labels; i++)
            if (!(names[i] = str_copy(s, label_names[i].ptr, label_names[i].len)))
                return MS_ERR_NOMEM;
        m->label_names = ref_of(s, names);
    }
    if (n_bounds) {
        double *b = store_alloc(s, n_bounds * sizeof *b, sizeof(double));
        ms_ref *text = store_alloc(s, n_bounds * sizeof *text, sizeof(ms_ref));
        if (!b || !text) return MS_ERR_NOMEM;
        memcpy(b, bounds, n_bounds * sizeof *b);
        for (uint32_t i = 0; i < n_bounds; i++) {
            char buf[32];
            size_t len = ms_format_double(bounds[i], buf);
            if (!(text[i] = str_copy(s, buf, len))) return MS_ERR_NOMEM;
        }
        m->bounds = ref_of(s, b);
        m->bound_text = ref_of(s, text);
    }
    charge_init(s, m);
    ms_ref *slot = pvec_reserve(s, &h->metrics);
    if (!slot) return MS_ERR_NOMEM;
    *slot = ref_of(s, m);
    *out_metric = pvec_publish(&h->metrics);
    return MS_OK;
}

ms_status ms_metric_add(ms_store *s, ms_kind kind, const char *name, size_t name_len,
                        const char *help, size_t help_len, const ms_strref *label_names,
                        uint32_t n_labels, const double *bounds, uint32_t n_bounds,
                        uint64_t max_series, uint32_t *out_metric) {
    ms_status st =
        validate_metric(kind, name, name_len, help_len, label_names, n_labels, bounds, n_bounds);
    if (st != MS_OK) return st;
    if ((st = store_lock(s)) != MS_OK) return st;
    st = metric_add_locked(s, kind, name, name_len, help, help_len, label_names, n_labels,
                           bounds, n_bounds, max_series, out_metric);
    store_unlock(s);
    return st;
}

/* ---- series ---------------------------------------------------------------------- */

static uint32_t string_lookup(const ms_store *s, const ms_strref *v) {
    return table_get(s, &s->h->string_table, hash_bytes(s->h->seed, v->ptr, v->len), string_eq, v);
}

static ms_status string_intern(ms_store *s, const ms_strref *v, uint32_t *out) {
    uint64_t h = hash_bytes(s->h->seed, v->ptr, v->len);
    uint32_t id = table_get(s, &s->h->string_table, h, string_eq, v);
    if (id != MS_NO_SERIES) {
        *out = id;
        return MS_OK;
    }
    ms_status st = table_reserve(s, &s->h->string_table, string_rehash);
    if (st != MS_OK) return st;
    size_t units = 1 + (v->len + 3) / 4;
    ms_str *str = (ms_str *)pool_reserve(s, &s->h->strings, units, &id, &st);
    if (!str) return st;
    str_fill(str, v->ptr, v->len);
    pool_publish(&s->h->strings, id, units);
    *table_find(s, &s->h->string_table, h, string_eq, v) = id + 1;
    s->h->string_table.used++;
    *out = id;
    return MS_OK;
}

static ms_status labelset_intern(ms_store *s, const uint32_t *ids, uint32_t n, uint32_t *out) {
    labelset_key key = {ids, n};
    uint64_t h = labelset_hash(s, ids, n);
    uint32_t id = table_get(s, &s->h->labelset_table, h, labelset_eq, &key);
    if (id != MS_NO_SERIES) {
        *out = id;
        return MS_OK;
    }
    ms_status st = table_reserve(s, &s->h->labelset_table, labelset_rehash);
    if (st != MS_OK) return st;
    size_t units = 1 + (size_t)n;
    uint32_t *ls = pool_reserve(s, &s->h->labelsets, units, &id, &st);
    if (!ls) return st;
    ls[0] = n;
    memcpy(ls + 1, ids, n * sizeof *ids);
    pool_publish(&s->h->labelsets, id, units);
    *table_find(s, &s->h->labelset_table, h, labelset_eq, &key) = id + 1;
    s->h->labelset_table.used++;
    *out = id;
    return MS_OK;
}

/* Slots come from per-metric pages that double up to SLOT_PAGE_BYTES. A page is set
 * before page_used restarts, so a writer killed in between never hands a slot out
 * twice (at worst a page goes unused). */
static ms_atomic_u64 *slots_alloc(ms_store *s, ms_metric *m) {
    if (m->page_used == m->page_cap) {
        size_t bytes = (size_t)m->stride * sizeof(ms_atomic_u64);
        size_t most = SLOT_PAGE_BYTES / bytes ? SLOT_PAGE_BYTES / bytes : 1;
        size_t cap = m->page_cap ? (size_t)m->page_cap * 2 : 4;
        if (cap > most) cap = most;
        ms_atomic_u64 *page = store_alloc(s, cap * bytes, sizeof(uint64_t));
        if (!page) return NULL;
        m->page = ref_of(s, page);
        m->page_cap = (uint32_t)cap;
        m->page_used = 0;
    }
    return (ms_atomic_u64 *)at(s, m->page) + (size_t)m->page_used++ * m->stride;
}

static ms_status series_new(ms_store *s, ms_metric *m, uint32_t labelset, uint32_t *out) {
    if (atomic_load_explicit(&s->h->series.count, memory_order_relaxed) >= MS_NO_SERIES - 1)
        return MS_ERR_LIMIT;
    ms_atomic_u64 *slots = slots_alloc(s, m);
    ms_series *r = slots ? pvec_reserve(s, &s->h->series) : NULL;
    if (!r) return MS_ERR_NOMEM;
    /* A new series counts as recorded: visible through at least one expiry sweep. */
    atomic_init(&r->slots_flags, ref_of(s, slots) | MS_SERIES_ACTIVE);
    r->metric_kind = m->id << 2 | (uint32_t)m->kind;
    r->labelset = labelset;
    *out = pvec_publish(&s->h->series);
    return MS_OK;
}

/* Why a label set goes to the overflow series: asked for by its own label set (not a
 * fold, not counted), or folded by max_series or by the exposition budget. */
typedef enum fold_cause { NO_FOLD, FOLD_MAX_SERIES, FOLD_BUDGET } fold_cause;

static ms_status overflow_series(ms_store *s, ms_metric *m, fold_cause fold, uint32_t *out) {
    uint32_t sid = atomic_load_explicit(&m->overflow_series, memory_order_relaxed);
    if (sid == MS_NO_SERIES) {
        ms_status st;
        if (s->h->overflow_string == MS_NO_SERIES) {
            ms_strref v = {OVERFLOW_VALUE, sizeof OVERFLOW_VALUE - 1};
            if ((st = string_intern(s, &v, &s->h->overflow_string)) != MS_OK) return st;
        }
        uint32_t stack[STACK_LABELS], *ids = stack, labelset;
        size_t bytes = m->n_labels * sizeof *ids;
        if (m->n_labels > STACK_LABELS && !(ids = ms_alloc(s, bytes))) return MS_ERR_NOMEM;
        for (uint32_t i = 0; i < m->n_labels; i++) ids[i] = s->h->overflow_string;
        st = labelset_intern(s, ids, m->n_labels, &labelset);
        if (ids != stack) ms_dealloc(s, ids, bytes);
        if (st == MS_OK) st = series_new(s, m, labelset, &sid);
        if (st != MS_OK) return st;
        ms_store_release_u32(&m->overflow_series, sid);
    }
    if (fold == FOLD_MAX_SERIES)
        atomic_fetch_add_explicit(&m->overflow_count, 1, memory_order_relaxed);
    else if (fold == FOLD_BUDGET)
        atomic_fetch_add_explicit(&m->budget_overflow_count, 1, memory_order_relaxed);
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
        return overflow_series(s, m, NO_FOLD, out);
    }
    for (i = 0; i < n; i++)
        if ((ids[i] = string_lookup(s, &values[i])) == MS_NO_SERIES) break;
    uint32_t known = i;
    if (i == n) {
        labelset_key key = {ids, n};
        labelset = table_get(s, &s->h->labelset_table, labelset_hash(s, ids, n), labelset_eq, &key);
        if (labelset != MS_NO_SERIES) {
            series_key sk = {m->id, labelset};
            uint32_t sid = table_get(s, &s->h->series_table, series_hash(s, m->id, labelset),
                                     series_eq, &sk);
            if (sid != MS_NO_SERIES) {
                *out = sid;
                return MS_OK;
            }
        }
    }
    if (atomic_load_explicit(&m->n_series, memory_order_relaxed) >= m->max_series)
        return overflow_series(s, m, FOLD_MAX_SERIES, out);
    /* The budget is read and charged under the mutex, with the series' creation: exact
     * however many threads add series. Charged only once the series exists (an
     * allocation failure leaves the total as it was). */
    uint64_t charged = sat_add(atomic_load_explicit(&s->h->exposition_bytes, memory_order_relaxed),
                               series_charge(s, m, values, ids, known));
    if (charged > s->h->max_exposition_bytes) return overflow_series(s, m, FOLD_BUDGET, out);
    ms_status st;
    if (labelset == MS_NO_SERIES) {
        for (i = 0; i < n; i++)
            if ((st = string_intern(s, &values[i], &ids[i])) != MS_OK) return st;
        if ((st = labelset_intern(s, ids, n, &labelset)) != MS_OK) return st;
    }
    if ((st = table_reserve(s, &s->h->series_table, series_rehash)) != MS_OK) return st;
    uint32_t sid;
    if ((st = series_new(s, m, labelset, &sid)) != MS_OK) return st;
    series_key sk = {m->id, labelset};
    *table_find(s, &s->h->series_table, series_hash(s, m->id, labelset), series_eq, &sk) = sid + 1;
    s->h->series_table.used++;
    atomic_fetch_add_explicit(&m->n_series, 1, memory_order_relaxed);
    atomic_store_explicit(&s->h->exposition_bytes, charged, memory_order_relaxed);
    *out = sid;
    return MS_OK;
}

ms_status ms_series_get(ms_store *s, uint32_t metric, const ms_strref *values,
                        uint32_t n_values, uint32_t *out_series) {
    if (metric >= ms_load_acquire_u32(&s->h->metrics.count)) return MS_ERR_UNKNOWN_METRIC;
    ms_metric *m = (ms_metric *)ms_metric_at(s, metric);
    if (n_values != m->n_labels) return MS_ERR_INVALID_LABELS;
    for (uint32_t i = 0; i < n_values; i++)
        if (values[i].len > MS_STR_MAXLEN) return MS_ERR_LIMIT;
    uint32_t stack[STACK_LABELS], *ids = stack;
    size_t bytes = n_values * sizeof *ids;
    if (n_values > STACK_LABELS && !(ids = ms_alloc(s, bytes))) return MS_ERR_NOMEM;
    ms_status st = store_lock(s);
    if (st == MS_OK) {
        st = series_get_locked(s, m, values, ids, out_series);
        store_unlock(s);
    }
    if (ids != stack) ms_dealloc(s, ids, bytes);
    return st;
}

/* ---- repair after a writer died (shared stores) ------------------------------------ */

static int is_overflow_labelset(const ms_store *s, const ms_series *r, uint32_t overflow) {
    const uint32_t *ls = ms_labelset_at(s, r->labelset);
    if (overflow == MS_NO_SERIES || ls[0] == 0) return 0;
    for (uint32_t i = 0; i < ls[0]; i++)
        if (ls[1 + i] != overflow) return 0;
    return 1;
}

/* A fresh table over the elements [0, n) that `keep` accepts (all when NULL). */
static void table_rebuild(ms_store *s, ms_table *t, uint32_t n, rehash_fn rehash,
                          int (*keep)(const ms_store *, uint32_t)) {
    uint32_t cap = 16;
    while ((uint64_t)n * 10 > (uint64_t)cap * 7 && cap < (1u << 31)) cap *= 2;
    uint32_t *slots = table_slots_new(s, cap), used = 0;
    if (!slots) return; /* the file cannot grow: the old table stays */
    for (uint32_t id = 0; id < n; id++) {
        if (keep && !keep(s, id)) continue;
        uint32_t j = (uint32_t)rehash(s, id) & (cap - 1);
        while (slots[j]) j = (j + 1) & (cap - 1);
        slots[j] = id + 1;
        used++;
    }
    table_slots_free(s, t);
    t->slots = ref_of(s, slots);
    t->cap = cap;
    t->used = used;
}

typedef struct rebuild_ctx {
    ms_table *t;
    uint32_t *slots;
    rehash_fn rehash;
    uint32_t n;
} rebuild_ctx;

static void count_record(ms_store *s, uint32_t id, void *ctx) {
    (void)s;
    (void)id;
    ((rebuild_ctx *)ctx)->n++;
}

static void insert_record(ms_store *s, uint32_t id, void *ctx) {
    rebuild_ctx *c = ctx;
    uint32_t cap = c->t->cap, j = (uint32_t)c->rehash(s, id) & (cap - 1);
    while (c->slots[j]) j = (j + 1) & (cap - 1);
    c->slots[j] = id + 1;
}

/* A fresh table over every record of a pool. */
static void table_rebuild_pool(ms_store *s, ms_table *t, const ms_pool *p,
                               size_t (*units_of)(const uint32_t *), rehash_fn rehash) {
    rebuild_ctx c = {t, NULL, rehash, 0};
    pool_walk(s, p, units_of, count_record, &c);
    uint32_t cap = 16;
    while ((uint64_t)c.n * 10 > (uint64_t)cap * 7 && cap < (1u << 31)) cap *= 2;
    if (!(c.slots = table_slots_new(s, cap))) return; /* the file cannot grow: kept */
    table_slots_free(s, t);
    t->slots = ref_of(s, c.slots);
    t->cap = cap;
    t->used = c.n;
    pool_walk(s, p, units_of, insert_record, &c);
}

/* Overflow series are not in the series table (series_get_locked finds them by their
 * label set), so the rebuild leaves them out as well. */
static int real_series(const ms_store *s, uint32_t id) {
    const ms_series *r = ms_series_at(s, id);
    return !is_overflow_labelset(s, r, s->h->overflow_string);
}

/* The lock's last holder died in the middle of a change (docs/store.md, "Faults").
 * Every element below a vector's count is whole, as counts are published last; what
 * may be missing is its table entry, a metric's series count, or its overflow_series:
 * all are rebuilt from the vectors. What the dead writer had not published is only
 * unused space in the file. */
static void store_repair(ms_store *s) {
    ms_head *h = s->h;
    table_rebuild_pool(s, &h->string_table, &h->strings, string_units, string_rehash);
    if (h->overflow_string == MS_NO_SERIES) {
        ms_strref v = {OVERFLOW_VALUE, sizeof OVERFLOW_VALUE - 1};
        h->overflow_string = string_lookup(s, &v);
    }
    table_rebuild_pool(s, &h->labelset_table, &h->labelsets, labelset_units, labelset_rehash);
    uint32_t n_series = ms_series_total(s), n_metrics = ms_metric_count(s);
    table_rebuild(s, &h->series_table, n_series, series_rehash, real_series);
    for (uint32_t i = 0; i < n_metrics; i++) {
        ms_metric *m = (ms_metric *)ms_metric_at(s, i);
        atomic_store_explicit(&m->n_series, 0, memory_order_relaxed);
    }
    for (uint32_t id = 0; id < n_series; id++) {
        const ms_series *r = ms_series_at(s, id);
        uint32_t mid = r->metric_kind >> 2;
        if (mid >= n_metrics) continue;
        ms_metric *m = (ms_metric *)ms_metric_at(s, mid);
        if (!is_overflow_labelset(s, r, h->overflow_string))
            atomic_fetch_add_explicit(&m->n_series, 1, memory_order_relaxed);
        else if (atomic_load_explicit(&m->overflow_series, memory_order_relaxed) == MS_NO_SERIES)
            ms_store_release_u32(&m->overflow_series, id);
    }
    atomic_fetch_add_explicit(&h->repairs, 1, memory_order_relaxed);
}

/* ---- reading structure ----------------------------------------------------------- */

uint32_t ms_metric_count(const ms_store *s) { return ms_load_acquire_u32(&s->h->metrics.count); }

uint32_t ms_series_total(const ms_store *s) { return ms_load_acquire_u32(&s->h->series.count); }

static ms_strref strref(const ms_str *str) {
    ms_strref r = {str->data, ms_str_len(str)};
    return r;
}

ms_status ms_metric_get(const ms_store *s, uint32_t metric, ms_metric_info *out) {
    if (metric >= ms_metric_count(s)) return MS_ERR_UNKNOWN_METRIC;
    const ms_metric *m = ms_metric_at(s, metric);
    out->kind = m->kind;
    out->name = strref(ms_metric_name(s, m));
    out->help = strref(ms_str_at(s, m->help));
    out->n_labels = m->n_labels;
    out->n_bounds = m->n_bounds;
    out->bounds = m->n_bounds ? ms_metric_bounds(s, m) : NULL;
    out->max_series = m->max_series;
    out->series_count = atomic_load_explicit((_Atomic uint64_t *)&m->n_series,
                                             memory_order_relaxed);
    out->overflow_count = atomic_load_explicit((_Atomic uint64_t *)&m->overflow_count,
                                               memory_order_relaxed);
    out->budget_overflow_count = atomic_load_explicit(
        (_Atomic uint64_t *)&m->budget_overflow_count, memory_order_relaxed);
    return MS_OK;
}

ms_status ms_metric_label_name(const ms_store *s, uint32_t metric, uint32_t i, ms_strref *out) {
    if (metric >= ms_metric_count(s)) return MS_ERR_UNKNOWN_METRIC;
    const ms_metric *m = ms_metric_at(s, metric);
    if (i >= m->n_labels) return MS_ERR_INVALID_LABELS;
    *out = strref(ms_metric_label(s, m, i));
    return MS_OK;
}

ms_status ms_metric_overflow_series(const ms_store *s, uint32_t metric, uint32_t *out_series) {
    if (metric >= ms_metric_count(s)) return MS_ERR_UNKNOWN_METRIC;
    *out_series = ms_load_acquire_u32(&ms_metric_at(s, metric)->overflow_series);
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

void ms_inc_unchecked(ms_store *s, uint64_t series, uint64_t n) {
    ms_atomic_add_u64(ms_record_slots(s, (ms_series *)ms_series_at(s, (uint32_t)series)), n);
}

/* Index of the first bound >= v, as ms_bucket_of (store_internal.h), but branch-free
 * for batches: the loop count depends on n only and the compare picks the next base
 * with a conditional move. Without atomics per element, out-of-order execution
 * overlaps the searches of consecutive elements, and random values cost no
 * mispredictions (6.6 ms per 1M observations against 14 ms branching). */
static inline uint32_t bucket_of_branchless(const double *bounds, uint32_t n, double v) {
    const double *base = bounds;
    while (n > 1) {
        uint32_t half = n / 2;
        base = base[half] < v ? base + half : base;
        n -= half;
    }
    return (uint32_t)(base - bounds) + (*base < v);
}

void ms_observe_unchecked(ms_store *s, uint64_t series, double v) {
    ms_series *r = (ms_series *)ms_series_at(s, (uint32_t)series);
    ms_observe_slots(s, ms_metric_at(s, r->metric_kind >> 2), ms_record_slots(s, r), v);
}

ms_status ms_inc(ms_store *s, uint64_t series, uint64_t n) { return ms_inc_inline(s, series, n); }

ms_status ms_set(ms_store *s, uint64_t series, double v) { return ms_set_inline(s, series, v); }

ms_status ms_observe(ms_store *s, uint64_t series, double v) {
    return ms_observe_inline(s, series, v);
}

/* ---- batches ------------------------------------------------------------------------ */

/* A batch is aggregated privately, then applied with one atomic add per touched slot:
 * per-event atomics (a lock-prefixed add, a CAS loop for each sum) were the whole cost.
 * Validation happens during aggregation, which touches nothing shared, so a bad
 * element still means nothing is recorded. Everything below is O(n) scratch. */

#define CHUNK 1024u           /* elements converted at a time when not usable in place */
#define SCRATCH_SLACK 65536u  /* private bucket counts allowed beyond 2 per element */
#define DENSE_SLACK 4096u     /* a dense id map may have this many more entries than 2n */

typedef struct touched {
    ms_series *r;
    ms_atomic_u64 *slots;
    const double *bounds; /* histograms */
    size_t row;           /* histograms: offset of its row in batch.rows */
    uint64_t total;       /* counters: the batch's amount, mod 2**64 */
    uint32_t n_bounds;
    int deferred; /* histograms past the scratch budget: buckets listed in batch.deferred */
} touched;

/* A histogram series' private row: its partial sum, then one count per bucket (none
 * for a deferred series). Rows are contiguous, so a batch over one metric finds row k
 * at k * stride with no lookup of its touched entry. */
typedef union cell {
    uint64_t n;
    double d;
} cell;

/* Bucket search by table, for long batches over one set of bounds. A double's bits,
 * as an unsigned key in the doubles' order (order_key), cut to the sign, the exponent and
 * the top `mbits` mantissa bits, name a bin: a binade, or a 2**mbits-th of one. first[i]
 * is the lowest bucket a value of bin lo + i can have, and no bin holds more than `span`
 * bounds, so a value's bucket is first[i] plus how many of the `span` bounds from there
 * are below it (padded with +Inf). Bins below the first bound's or past the last's act as
 * those bins. With the default buckets (one bound per binade) it is a table load and two
 * compares that do not depend on each other, against five dependent ones for the binary
 * search. */
typedef struct bins {
    const uint32_t *first;
    const double *padded; /* the bounds, then BINS_SPAN copies of +Inf */
    uint64_t lo, hi;      /* bins of the first and the last bound */
    unsigned shift;       /* 52 - mbits: a key's bin is key >> shift */
    uint32_t span;
    size_t bytes; /* this struct, first[] and padded[], allocated as one */
} bins;

typedef struct batch {
    ms_store *s;
    ms_kind kind;
    uint32_t n_total; /* series published when the batch began: valid ids are below */
    /* series id -> touched index + 1 (0: not seen yet): a dense array over all ids when
     * the store is small next to the batch, else open addressing at <= 50% load. */
    uint32_t *dense;
    uint64_t *table; /* (index + 1) << 32 | id; 0 is empty */
    size_t map_bytes;
    uint32_t mask, shift;
    touched *t;
    size_t n_touched, cap_touched;
    /* Histograms. While `uniform`, every touched series has bounds equal to `bounds`
     * and a full row of `stride` cells. */
    cell *rows;
    size_t n_rows, cap_rows, budget; /* in cells; budget: count cells still allowed */
    int uniform;
    const double *bounds;
    uint32_t n_bounds;
    size_t stride;
    uint64_t *deferred; /* touched index << 32 | bucket */
    size_t n_deferred, cap_deferred;
    size_t n;   /* the batch's length */
    bins *bins; /* for long batches: `bounds` searched by table (while uniform) */
} batch;

/* A zeroed, counted allocation (scratch must be counted like everything else). */
static void *scratch_calloc(ms_store *s, size_t n, size_t size) {
    void *p = s->al.calloc(n ? n : 1, size);
    if (p) atomic_fetch_add_explicit(&s->mem, n * size, memory_order_relaxed);
    return p;
}

static ms_status batch_init(batch *b, ms_store *s, ms_kind kind, size_t n) {
    memset(b, 0, sizeof *b);
    b->s = s;
    b->kind = kind;
    b->n_total = ms_series_total(s);
    b->budget = (n < SIZE_MAX / 4 ? 2 * n : SIZE_MAX / 2) + SCRATCH_SLACK;
    b->uniform = 1;
    b->n = n;
    size_t most = n < b->n_total ? n : b->n_total; /* series the batch can touch */
    if (b->n_total == 0) return MS_OK;                /* every id is unknown */
    if ((size_t)b->n_total <= most * 2 + DENSE_SLACK) {
        b->map_bytes = (size_t)b->n_total * sizeof *b->dense;
        b->dense = scratch_calloc(s, b->n_total, sizeof *b->dense);
        return b->dense ? MS_OK : MS_ERR_NOMEM;
    }
    uint32_t bits = 4;
    while (((size_t)1 << bits) < most * 2) bits++;
    b->mask = (uint32_t)(((uint64_t)1 << bits) - 1);
    b->shift = 64 - bits;
    b->map_bytes = ((size_t)1 << bits) * sizeof *b->table;
    b->table = scratch_calloc(s, (size_t)1 << bits, sizeof *b->table);
    return b->table ? MS_OK : MS_ERR_NOMEM;
}

static void batch_free(batch *b) {
    ms_store *s = b->s;
    ms_dealloc(s, b->dense, b->dense ? b->map_bytes : 0);
    ms_dealloc(s, b->table, b->table ? b->map_bytes : 0);
    ms_dealloc(s, b->t, b->cap_touched * sizeof *b->t);
    ms_dealloc(s, b->rows, b->cap_rows * sizeof *b->rows);
    ms_dealloc(s, b->deferred, b->cap_deferred * sizeof *b->deferred);
    if (b->bins) ms_dealloc(s, b->bins, b->bins->bytes);
}

/* Touched index + 1 of a series id below n_total, 0 if not seen yet. */
static inline uint32_t map_get(const batch *b, uint32_t id) {
    if (b->dense) return b->dense[id];
    uint32_t i = (uint32_t)((id * 0x9e3779b97f4a7c15ULL) >> b->shift);
    for (;;) {
        uint64_t e = b->table[i];
        if (!e) return 0;
        if ((uint32_t)e == id) return (uint32_t)(e >> 32);
        i = (i + 1) & b->mask;
    }
}

static void map_put(batch *b, uint32_t id, uint32_t k1) {
    if (b->dense) {
        b->dense[id] = k1;
        return;
    }
    uint32_t i = (uint32_t)((id * 0x9e3779b97f4a7c15ULL) >> b->shift);
    while (b->table[i]) i = (i + 1) & b->mask;
    b->table[i] = (uint64_t)k1 << 32 | id;
}

static inline uint64_t order_key(double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    /* negative: all bits flipped (more negative, smaller); else the sign bit set */
    return u ^ ((uint64_t)((int64_t)u >> 63) | (uint64_t)1 << 63);
}

static inline double key_value(uint64_t key) {
    uint64_t u = key >> 63 ? key ^ (uint64_t)1 << 63 : ~key;
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static inline uint32_t bucket_by_bins(const bins *t, double v) {
    uint64_t i = order_key(v) >> t->shift;
    i = i < t->lo ? t->lo : i;
    i = i > t->hi ? t->hi : i;
    uint32_t k = t->first[i - t->lo];
    const double *p = t->padded + k;
    for (uint32_t c = 0; c < t->span; c++) k += p[c] < v;
    return k;
}

#define BINS_SPAN 2u      /* bounds a bin may hold: compares per element past the table */
#define BINS_MBITS 8u     /* mantissa bits a bin may use at most */
#define BINS_PER_VALUE 8u /* a table of at most n / 8 bins for a batch of n */
_Static_assert(BINS_SPAN == 2, "observe_dense spells out two compares");

/* first[i] for bins lo.. of `shift`: the bounds below bin i's least value (into first
 * unless NULL). Returns the span: the most bounds between one bin's least value and the
 * next's. Measured on these counts, not on the bounds' own bins, as -0.0 == +0.0. */
static uint32_t bins_fill(const double *bounds, uint32_t n, uint64_t lo, size_t n_bins,
                          unsigned shift, uint32_t *first) {
    uint32_t k = 0, span = 0;
    for (size_t i = 0; i < n_bins; i++) {
        uint32_t was = k;
        double least = key_value((lo + i) << shift);
        while (k < n && bounds[k] < least) k++;
        if (first) first[i] = k;
        if (i > 0 && k - was > span) span = k - was;
    }
    return n - k > span ? n - k : span; /* the last bin holds the rest */
}

/* The bins for b->bounds with the fewest mantissa bits that hold at most BINS_SPAN
 * bounds each, if that table is small next to the batch (building it is then O(n));
 * else NULL, as on no memory: the binary search still works. */
static bins *bins_make(batch *b) {
    const double *bounds = b->bounds;
    uint32_t n = b->n_bounds;
    uint64_t kmin = order_key(bounds[0]), kmax = order_key(bounds[n - 1]);
    for (unsigned mbits = 0; mbits <= BINS_MBITS; mbits++) {
        unsigned shift = 52 - mbits;
        uint64_t lo = kmin >> shift, hi = kmax >> shift;
        if (hi - lo >= b->n / BINS_PER_VALUE) return NULL; /* finer is only bigger */
        size_t n_bins = (size_t)(hi - lo + 1);
        if (n > BINS_SPAN * n_bins) continue; /* some bin holds more */
        uint32_t span = bins_fill(bounds, n, lo, n_bins, shift, NULL);
        if (span > BINS_SPAN) continue;
        size_t bytes = sizeof(bins) + ((size_t)n + BINS_SPAN) * sizeof(double) +
                       n_bins * sizeof(uint32_t);
        bins *t = scratch_calloc(b->s, 1, bytes);
        if (!t) return NULL;
        double *padded = (double *)(t + 1);
        uint32_t *first = (uint32_t *)(padded + n + BINS_SPAN);
        memcpy(padded, bounds, n * sizeof *padded);
        for (uint32_t c = 0; c < BINS_SPAN; c++) padded[n + c] = INFINITY;
        bins_fill(bounds, n, lo, n_bins, shift, first);
        t->first = first;
        t->padded = padded;
        t->lo = lo;
        t->hi = hi;
        t->shift = shift;
        t->span = span;
        t->bytes = bytes;
        return t;
    }
    return NULL;
}

/* A zeroed row of `cells` for a histogram series: counts only while the budget lasts,
 * so huge bucket counts or many lightly touched series never cost more than O(n). */
static ms_status row_take(batch *b, touched *t) {
    size_t counts = (size_t)t->n_bounds + 1;
    t->deferred = counts > b->budget;
    size_t cells = t->deferred ? 1 : counts + 1;
    if (!t->deferred) b->budget -= counts;
    if (b->cap_rows - b->n_rows < cells) {
        size_t cap = b->cap_rows ? b->cap_rows : 1024;
        while (cap - b->n_rows < cells) cap *= 2;
        cell *rows = ms_realloc(b->s, b->rows, b->cap_rows * sizeof *rows, cap * sizeof *rows);
        if (!rows) return MS_ERR_NOMEM;
        b->rows = rows;
        b->cap_rows = cap;
    }
    t->row = b->n_rows;
    memset(&b->rows[t->row], 0, cells * sizeof *b->rows);
    b->n_rows += cells;
    return MS_OK;
}

/* First sight of a series id in this batch: validate it, give it a touched entry. */
static ms_status admit(batch *b, uint64_t id, uint32_t *k1) {
    if (id >= b->n_total) return MS_ERR_UNKNOWN_SERIES;
    ms_series *r = (ms_series *)ms_series_at(b->s, (uint32_t)id);
    if ((r->metric_kind & 3u) != (uint32_t)b->kind) return MS_ERR_WRONG_KIND;
    if (b->n_touched == b->cap_touched) {
        size_t cap = b->cap_touched ? b->cap_touched * 2 : 64;
        touched *t = ms_realloc(b->s, b->t, b->cap_touched * sizeof *t, cap * sizeof *t);
        if (!t) return MS_ERR_NOMEM;
        b->t = t;
        b->cap_touched = cap;
    }
    touched *t = &b->t[b->n_touched];
    memset(t, 0, sizeof *t);
    t->r = r;
    t->slots = ms_series_slots(b->s, r);
    if (b->kind == MS_HISTOGRAM) {
        const ms_metric *m = ms_metric_at(b->s, r->metric_kind >> 2);
        const double *bounds = ms_metric_bounds(b->s, m);
        t->bounds = bounds;
        t->n_bounds = m->n_bounds;
        ms_status st = row_take(b, t);
        if (st != MS_OK) return st;
        if (b->n_touched == 0) {
            b->bounds = bounds;
            b->n_bounds = m->n_bounds;
            b->stride = (size_t)m->n_bounds + 2;
            if (!t->deferred) b->bins = bins_make(b);
        }
        /* Equal bounds (another metric with the same buckets) search alike. */
        if (t->deferred || m->n_bounds != b->n_bounds ||
            (bounds != b->bounds &&
             memcmp(bounds, b->bounds, m->n_bounds * sizeof *bounds) != 0))
            b->uniform = 0;
    }
    *k1 = (uint32_t)++b->n_touched;
    map_put(b, (uint32_t)id, *k1);
    return MS_OK;
}

static ms_status defer(batch *b, uint32_t k, uint32_t bucket) {
    if (b->n_deferred == b->cap_deferred) {
        size_t cap = b->cap_deferred ? b->cap_deferred * 2 : 256;
        uint64_t *d = ms_realloc(b->s, b->deferred, b->cap_deferred * sizeof *d, cap * sizeof *d);
        if (!d) return MS_ERR_NOMEM;
        b->deferred = d;
        b->cap_deferred = cap;
    }
    b->deferred[b->n_deferred++] = (uint64_t)k << 32 | bucket;
    return MS_OK;
}

/* ids[j]'s touched index + 1, admitting the series on first sight; 0 on error. */
static inline uint32_t touch(batch *b, uint64_t id, ms_status *st) {
    uint32_t k1 = id < b->n_total ? map_get(b, (uint32_t)id) : 0;
    if (k1 == 0) *st = admit(b, id, &k1);
    return k1;
}

/* ---- reading typed, strided arrays a chunk at a time ---- */

#define LOAD_EACH(T, OUT_EXPR)                       \
    for (size_t j = 0; j < m; j++, p += a->stride) { \
        T x;                                         \
        memcpy(&x, p, sizeof x);                     \
        buf[j] = (OUT_EXPR);                         \
    }

/* Integers as uint64: signed ones sign-extended (a negative id is then >= 2**63, an
 * unknown series; a negative amount is caught by the caller). */
static const uint64_t *ints_chunk(const ms_array *a, size_t at, size_t m, uint64_t *buf) {
    const char *p = (const char *)a->data + (ptrdiff_t)at * a->stride;
    int wide = a->dtype == MS_I64 || a->dtype == MS_U64;
    if (wide && a->stride == 8 && ((uintptr_t)p & 7) == 0) return (const uint64_t *)p;
    switch (a->dtype) {
    case MS_I32: LOAD_EACH(int32_t, (uint64_t)(int64_t)x) break;
    case MS_U32: LOAD_EACH(uint32_t, x) break;
    default: LOAD_EACH(uint64_t, x) break;
    }
    return buf;
}

static const double *doubles_chunk(const ms_array *a, size_t at, size_t m, double *buf) {
    const char *p = (const char *)a->data + (ptrdiff_t)at * a->stride;
    if (a->dtype == MS_F64 && a->stride == 8 && ((uintptr_t)p & 7) == 0)
        return (const double *)p;
    switch (a->dtype) {
    case MS_F32: LOAD_EACH(float, (double)x) break;
    case MS_I32: LOAD_EACH(int32_t, (double)x) break;
    case MS_I64: LOAD_EACH(int64_t, (double)x) break;
    case MS_U32: LOAD_EACH(uint32_t, (double)x) break;
    case MS_U64: LOAD_EACH(uint64_t, (double)x) break;
    default: LOAD_EACH(double, x) break;
    }
    return buf;
}

#undef LOAD_EACH

/* ---- counters ---- */

static ms_status inc_chunk(batch *b, const uint64_t *ids, const uint64_t *amounts, int is_signed,
                           size_t m, size_t at, size_t *bad) {
    ms_status st = MS_OK;
    size_t j;
    for (j = 0; j < m; j++) {
        uint32_t k1 = touch(b, ids[j], &st);
        if (st != MS_OK) break;
        uint64_t amount = amounts ? amounts[j] : 1;
        if (is_signed && (int64_t)amount < 0) {
            st = MS_ERR_INVALID_SAMPLE;
            break;
        }
        b->t[k1 - 1].total += amount; /* mod 2**64, as the atomic add would be */
    }
    if (st != MS_OK) *bad = at + j;
    return st;
}

ms_status ms_inc_array(ms_store *s, const ms_array *ids, const ms_array *amounts, size_t n,
                       size_t *bad_index) {
    if (n == 0) return MS_OK;
    batch b;
    ms_status st = batch_init(&b, s, MS_COUNTER, n);
    uint64_t id_buf[CHUNK], amount_buf[CHUNK];
    int is_signed = amounts && (amounts->dtype == MS_I32 || amounts->dtype == MS_I64);
    for (size_t at = 0; at < n && st == MS_OK; at += CHUNK) {
        size_t m = n - at < CHUNK ? n - at : CHUNK;
        const uint64_t *ip = ints_chunk(ids, at, m, id_buf);
        const uint64_t *ap = amounts ? ints_chunk(amounts, at, m, amount_buf) : NULL;
        st = inc_chunk(&b, ip, ap, is_signed, m, at, bad_index);
    }
    if (st == MS_OK) {
        for (size_t k = 0; k < b.n_touched; k++) {
            (void)ms_record_slots(s, b.t[k].r); /* ACTIVE, as a single record */
            ms_atomic_add_u64(b.t[k].slots, b.t[k].total);
        }
    }
    batch_free(&b);
    return st;
}

ms_status ms_inc_many(ms_store *s, const uint64_t *ids, const uint64_t *amounts, size_t n,
                      size_t *bad_index) {
    ms_array i = {ids, sizeof *ids, MS_U64}, a = {amounts, sizeof *amounts, MS_U64};
    return ms_inc_array(s, &i, amounts ? &a : NULL, n, bad_index);
}

/* ---- histograms ---- */

/* The usual batch, from values[j]: one set of bounds searched by table, and ids in a
 * dense map. Returns where it stopped: m, or an element it leaves to observe_chunk (a
 * series not seen yet in this batch, an unknown id, NaN). Everything it reads is in
 * locals, as the rows' stores could alias the batch's fields. */
static size_t observe_dense(const batch *b, const uint64_t *ids, const double *values,
                            size_t j, size_t m) {
    const uint32_t *dense = b->dense;
    uint64_t n_total = b->n_total;
    const bins *t = b->bins;
    const uint32_t *first = t->first;
    const double *padded = t->padded;
    uint64_t lo = t->lo, hi = t->hi;
    unsigned shift = t->shift;
    size_t stride = b->stride;
    cell *rows = b->rows;
    for (; j < m; j++) {
        uint64_t id = ids[j];
        double v = values[j];
        if (id >= n_total) break;
        uint32_t k1 = dense[id];
        if (k1 == 0 || isnan(v)) break;
        uint64_t i = order_key(v) >> shift;
        i = i < lo ? lo : i;
        i = i > hi ? hi : i;
        uint32_t k = first[i - lo];
        /* BINS_SPAN compares whatever the span: past it, a bound is not below v */
        k += (padded[k] < v) + (padded[k + 1] < v);
        cell *row = &rows[(size_t)(k1 - 1) * stride];
        row[0].d += v;
        row[1 + k].n++;
    }
    return j;
}

static ms_status observe_chunk(batch *b, const uint64_t *ids, const double *values, size_t m,
                               size_t at, size_t *bad) {
    ms_status st = MS_OK;
    size_t j = 0;
    /* One set of bounds for the whole batch (the usual case): row k is at k * stride. */
    const double *bounds = b->bounds;
    uint32_t n_bounds = b->n_bounds;
    size_t stride = b->stride;
    int fast = b->dense && b->bins;
    for (; j < m && b->uniform; j++) {
        if (fast && (j = observe_dense(b, ids, values, j, m)) == m) break;
        uint64_t id = ids[j];
        double v = values[j];
        uint32_t k1 = id < b->n_total ? map_get(b, (uint32_t)id) : 0;
        if (k1 == 0) {
            if ((st = admit(b, id, &k1)) != MS_OK) break;
            if (!b->uniform) break; /* this series and the rest: the general loop */
            bounds = b->bounds;
            n_bounds = b->n_bounds;
            stride = b->stride;
            fast = b->dense && b->bins;
        }
        if (isnan(v)) {
            st = MS_ERR_INVALID_SAMPLE;
            break;
        }
        cell *row = &b->rows[(size_t)(k1 - 1) * stride];
        row[0].d += v;
        uint32_t bucket = b->bins ? bucket_by_bins(b->bins, v)
                                  : bucket_of_branchless(bounds, n_bounds, v);
        row[1 + bucket].n++;
    }
    for (; j < m && st == MS_OK; j++) {
        double v = values[j];
        uint32_t k1 = touch(b, ids[j], &st);
        if (st != MS_OK) break;
        if (isnan(v)) {
            st = MS_ERR_INVALID_SAMPLE;
            break;
        }
        touched *t = &b->t[k1 - 1];
        cell *row = &b->rows[t->row];
        uint32_t bucket = bucket_of_branchless(t->bounds, t->n_bounds, v);
        row[0].d += v;
        if (!t->deferred) {
            row[1 + bucket].n++;
        } else if (defer(b, k1 - 1, bucket) != MS_OK) {
            return MS_ERR_NOMEM; /* not an element's fault: no index */
        }
    }
    if (st != MS_OK) *bad = at + j;
    return st;
}

ms_status ms_observe_array(ms_store *s, const ms_array *ids, const ms_array *values, size_t n,
                           size_t *bad_index) {
    if (n == 0) return MS_OK;
    batch b;
    ms_status st = batch_init(&b, s, MS_HISTOGRAM, n);
    uint64_t id_buf[CHUNK];
    double value_buf[CHUNK];
    for (size_t at = 0; at < n && st == MS_OK; at += CHUNK) {
        size_t m = n - at < CHUNK ? n - at : CHUNK;
        const uint64_t *ip = ints_chunk(ids, at, m, id_buf);
        const double *vp = doubles_chunk(values, at, m, value_buf);
        st = observe_chunk(&b, ip, vp, m, at, bad_index);
    }
    if (st == MS_OK) {
        for (size_t k = 0; k < b.n_touched; k++) {
            touched *t = &b.t[k];
            const cell *row = &b.rows[t->row];
            (void)ms_record_slots(s, t->r); /* ACTIVE, as a single record */
            if (!t->deferred)
                for (uint32_t i = 0; i <= t->n_bounds; i++)
                    if (row[1 + i].n) ms_atomic_add_u64(&t->slots[i], row[1 + i].n);
            ms_atomic_add_double(&t->slots[t->n_bounds + 1], row[0].d);
        }
        for (size_t i = 0; i < b.n_deferred; i++) {
            uint64_t e = b.deferred[i];
            ms_atomic_add_u64(&b.t[e >> 32].slots[(uint32_t)e], 1);
        }
    }
    batch_free(&b);
    return st;
}

ms_status ms_observe_many(ms_store *s, const uint64_t *ids, const double *values, size_t n,
                          size_t *bad_index) {
    ms_array i = {ids, sizeof *ids, MS_U64}, v = {values, sizeof *values, MS_F64};
    return ms_observe_array(s, &i, &v, n, bad_index);
}

/* ---- reading values ---------------------------------------------------------------- */

ms_status ms_counter_value(const ms_store *s, uint64_t series, uint64_t *out) {
    ms_status st = ms_check(s, series, MS_COUNTER);
    if (st == MS_OK) *out = ms_atomic_load_u64(ms_series_slots(s, lookup(s, series)));
    return st;
}

ms_status ms_gauge_value(const ms_store *s, uint64_t series, double *out) {
    ms_status st = ms_check(s, series, MS_GAUGE);
    if (st == MS_OK) *out = ms_atomic_load_double(ms_series_slots(s, lookup(s, series)));
    return st;
}

ms_status ms_histogram_value(const ms_store *s, uint64_t series, uint64_t *counts,
                             double *sum) {
    ms_status st = ms_check(s, series, MS_HISTOGRAM);
    if (st != MS_OK) return st;
    const ms_series *r = ms_series_at(s, (uint32_t)series);
    const ms_atomic_u64 *slots = ms_series_slots(s, r);
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
    if (store_lock(s) != MS_OK) return 0;
    uint32_t n = ms_series_total(s);
    for (uint32_t i = 0; i < n; i++) {
        ms_series *r = (ms_series *)ms_series_at(s, i);
        uint64_t word = ms_series_word(r);
        while (!(word & MS_SERIES_HIDDEN)) { /* a failed CAS reloads word */
            uint64_t next =
                word & MS_SERIES_ACTIVE ? word & ~MS_SERIES_ACTIVE : word | MS_SERIES_HIDDEN;
            if (atomic_compare_exchange_weak_explicit(&r->slots_flags, &word, next,
                                                      memory_order_relaxed,
                                                      memory_order_relaxed)) {
                hidden += (next & MS_SERIES_HIDDEN) != 0;
                break;
            }
        }
    }
    store_unlock(s);
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
    ms_status st = store_lock(s);
    if (st != MS_OK) return st;
    uint32_t overflow = atomic_load_explicit(&m->overflow_series, memory_order_relaxed);
    uint32_t n = ms_series_total(s);
    for (uint32_t i = 0; i < n; i++) {
        const ms_series *r = ms_series_at(s, i);
        if ((r->metric_kind >> 2) == metric && i != overflow &&
            !(ms_series_word(r) & MS_SERIES_HIDDEN))
            visible++;
    }
    store_unlock(s);
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
