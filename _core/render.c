/* The exposition renderer. Speed comes from: integers written by a hand-made
 * formatter (no printf per sample); a histogram series' `<name>_bucket{<labels>,le="`
 * built once and copied for each bucket line (one reservation per line); floats that
 * hold small integers (most sums, every default bound) skipping the printf round-trip;
 * and the output buffer, sized from the previous render and owned by the caller if it
 * likes (the Python glue renders straight into the bytes object it returns). */
#define _DEFAULT_SOURCE /* madvise under -std=c11 */
#include "render.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "store_internal.h"

/* What a family prints: a metric, or one of the two fold families (store_internal.h),
 * one per limit that folds label sets into the overflow series. */
typedef enum fold_family { NOT_FOLDS = 0, FOLD_MAX_SERIES = 1, FOLD_BUDGET = 2 } fold_family;

static const struct {
    const char *name, *help;
    size_t name_len, help_len;
} FOLD_FAMILIES[] = {
    {0},
    {MS_OVERFLOW_FAMILY, MS_OVERFLOW_HELP, sizeof MS_OVERFLOW_FAMILY - 1,
     sizeof MS_OVERFLOW_HELP - 1},
    {MS_BUDGET_FAMILY, MS_BUDGET_HELP, sizeof MS_BUDGET_FAMILY - 1, sizeof MS_BUDGET_HELP - 1},
};

typedef struct writer {
    ms_store *s;
    ms_buf *b;
    int failed;
} writer;

/* A fresh output buffer's pages are mapped on first touch, a fault per 4 KiB page, which
 * cost more than rendering (150 ms of a 215 MB scrape here). So a big buffer's pages are
 * mapped in one call (MADV_POPULATE_WRITE: 320 -> 125 ms for a first 215 MB render), and
 * the Python glue reuses the last render's buffer (no faults at all). Transparent huge
 * pages, asked for here before, saved another ~20 ms per steady render but made first
 * renders stall for up to 0.8 s while the kernel compacted memory, and their advice split
 * the buffer's mapping so that growing it meant a copy. Small buffers are left alone:
 * malloc reuses heap memory for them. */
#define POPULATE_OUTPUT ((size_t)1 << 20)

static void prepare_pages(char *p, size_t n) {
#if defined(__linux__)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels refuse it, harmlessly */
#endif
    if (n < POPULATE_OUTPUT) return;
    uintptr_t first = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
    uintptr_t last = ((uintptr_t)p + n) & ~(uintptr_t)4095;
    if (last > first) (void)madvise((void *)first, last - first, MADV_POPULATE_WRITE);
#else
    (void)p;
    (void)n;
#endif
}

static int reserve(writer *w, size_t n) {
    ms_buf *b = w->b;
    if (w->failed) return 0;
    if (b->cap - b->len >= n) return 1;
    size_t cap = b->cap ? b->cap : 4096;
    /* The first reservation is the render's size guess: taken as it is, not rounded up to
     * a power of two, which would reserve up to twice the output (also when the caller
     * hands in a buffer to reuse that is a little short). */
    if (!b->len && n > cap) cap = n;
    while (cap - b->len < n) {
        if (cap > SIZE_MAX / 2) {
            w->failed = 1;
            return 0;
        }
        cap *= 2;
    }
    char *p = b->grow ? b->grow(b->ctx, cap) : ms_realloc(w->s, b->data, b->cap, cap);
    if (!p) {
        w->failed = 1;
        return 0;
    }
    prepare_pages(p, cap);
    b->data = p;
    b->cap = cap;
    return 1;
}

static inline void put(writer *w, const char *p, size_t n) {
    if (!reserve(w, n)) return;
    memcpy(w->b->data + w->b->len, p, n);
    w->b->len += n;
}

#define PUT_LIT(w, lit) put((w), (lit), sizeof(lit) - 1)

static inline void put_char(writer *w, char c) {
    if (!reserve(w, 1)) return;
    w->b->data[w->b->len++] = c;
}

#define U64_DIGITS 20

/* Writes v in decimal at o (room for U64_DIGITS); returns the end. */
static char *write_u64(char *o, uint64_t v) {
    static const char pairs[201] =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
        "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
        "8081828384858687888990919293949596979899";
    char tmp[U64_DIGITS];
    char *p = tmp + sizeof tmp;
    while (v >= 100) {
        unsigned r = (unsigned)(v % 100);
        v /= 100;
        *--p = pairs[2 * r + 1];
        *--p = pairs[2 * r];
    }
    if (v >= 10) {
        *--p = pairs[2 * v + 1];
        *--p = pairs[2 * v];
    } else {
        *--p = (char)('0' + v);
    }
    size_t n = (size_t)(tmp + sizeof tmp - p);
    memcpy(o, p, n);
    return o + n;
}

static void put_u64(writer *w, uint64_t v) {
    if (!reserve(w, U64_DIGITS)) return;
    char *end = write_u64(w->b->data + w->b->len, v);
    w->b->len = (size_t)(end - w->b->data);
}

static void put_double(writer *w, double v) {
    /* Integral values below 1e15 print as their digits under %.15g: do that directly. */
    if (v > -1e15 && v < 1e15 && v == (double)(int64_t)v && !(v == 0 && signbit(v))) {
        if (v < 0) {
            put_char(w, '-');
            put_u64(w, (uint64_t)(-(int64_t)v));
        } else {
            put_u64(w, (uint64_t)v);
        }
        return;
    }
    char buf[32];
    put(w, buf, ms_format_double(v, buf));
}

/* Label values: \ " and newline escaped; help text: \ and newline, plus " in OM. */
static void put_escaped(writer *w, const char *p, size_t n, int quote) {
    if (!reserve(w, 2 * n)) return;
    char *o = w->b->data + w->b->len;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\') {
            *o++ = '\\';
            *o++ = '\\';
        } else if (c == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else if (c == '"' && quote) {
            *o++ = '\\';
            *o++ = '"';
        } else {
            *o++ = c;
        }
    }
    w->b->len = (size_t)(o - w->b->data);
}

static void put_label_value(writer *w, const ms_str *v) {
    if (v->len_flags & MS_STR_ESCAPE)
        put_escaped(w, v->data, ms_str_len(v), 1);
    else
        put(w, v->data, ms_str_len(v));
}

/* One family to print: a metric, or (metric == NULL) the fold family `fold`. */
typedef struct family {
    const char *name;
    size_t name_len;
    const ms_metric *metric;
    fold_family fold;
} family;

static int family_cmp(const void *a, const void *b) {
    const family *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    if (c) return c;
    return (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

typedef struct render_ctx {
    writer w;
    int om;
    uint32_t n_series;
    const uint32_t *start; /* series of metric m: order[start[m] .. start[m + 1]) */
    const uint32_t *order;
    ms_buf labels; /* scratch: one series' escaped label block */
    ms_buf prefix; /* scratch: one histogram series' `<name>_bucket{<labels>,le="` */
} render_ctx;

static void put_header(render_ctx *c, const char *name, size_t name_len, int strip_total,
                       const ms_str *help, const char *help_raw, size_t help_len,
                       const char *type) {
    writer *w = &c->w;
    size_t family_len = strip_total ? name_len - 6 : name_len;
    PUT_LIT(w, "# HELP ");
    put(w, name, family_len);
    put_char(w, ' ');
    if (help)
        put_escaped(w, help->data, ms_str_len(help), c->om);
    else
        put_escaped(w, help_raw, help_len, c->om);
    PUT_LIT(w, "\n# TYPE ");
    put(w, name, family_len);
    put_char(w, ' ');
    put(w, type, strlen(type));
    put_char(w, '\n');
}

static int ends_with_total(const char *name, size_t len) {
    return len >= 6 && memcmp(name + len - 6, "_total", 6) == 0;
}

/* `a="v",b="w"` for series r into c->labels (no braces). */
static int build_labels(render_ctx *c, const ms_metric *m, const ms_series *r) {
    writer lw = {c->w.s, &c->labels, 0};
    const uint32_t *ls = ms_labelset_at(c->w.s, r->labelset);
    c->labels.len = 0;
    for (uint32_t i = 0; i < m->n_labels; i++) {
        const ms_str *name = ms_metric_label(c->w.s, m, i);
        if (i) put_char(&lw, ',');
        put(&lw, name->data, ms_str_len(name));
        PUT_LIT(&lw, "=\"");
        put_label_value(&lw, ms_string_at(c->w.s, ls[1 + i]));
        put_char(&lw, '"');
    }
    return !lw.failed;
}

static int build_bucket_prefix(render_ctx *c, const char *name, size_t name_len) {
    writer pw = {c->w.s, &c->prefix, 0};
    c->prefix.len = 0;
    put(&pw, name, name_len);
    PUT_LIT(&pw, "_bucket{");
    if (c->labels.len) {
        put(&pw, c->labels.data, c->labels.len);
        put_char(&pw, ',');
    }
    PUT_LIT(&pw, "le=\"");
    return !pw.failed;
}

static void put_sample_start(render_ctx *c, const char *name, size_t len, const char *suffix,
                             size_t suffix_len) {
    put(&c->w, name, len);
    put(&c->w, suffix, suffix_len);
    if (c->labels.len) {
        put_char(&c->w, '{');
        put(&c->w, c->labels.data, c->labels.len);
        put_char(&c->w, '}');
    }
    put_char(&c->w, ' ');
}

static void render_metric(render_ctx *c, const ms_metric *m) {
    static const char *const types[] = {"counter", "gauge", "histogram"};
    writer *w = &c->w;
    const ms_store *s = c->w.s;
    const ms_str *mname = ms_metric_name(s, m);
    const char *name = mname->data;
    size_t name_len = ms_str_len(mname);
    int strip = c->om && m->kind == MS_COUNTER && ends_with_total(name, name_len);
    put_header(c, name, name_len, strip, ms_str_at(s, m->help), NULL, 0, types[m->kind]);
    /* OM counter samples are <family>_total; text samples use the name as given. */
    const char *suffix = c->om && m->kind == MS_COUNTER && !strip ? "_total" : "";
    size_t suffix_len = strlen(suffix);
    for (uint32_t k = c->start[m->id]; k < c->start[m->id + 1] && !w->failed; k++) {
        const ms_series *r = ms_series_at(w->s, c->order[k]);
        uint64_t word = ms_series_word(r);
        if (word & MS_SERIES_HIDDEN) continue; /* expired: out until recorded again */
        const ms_atomic_u64 *slots = ms_word_slots(s, word);
        if (!build_labels(c, m, r)) {
            w->failed = 1;
            return;
        }
        if (m->kind == MS_COUNTER) {
            put_sample_start(c, name, name_len, suffix, suffix_len);
            put_u64(w, ms_atomic_load_u64(slots));
            put_char(w, '\n');
        } else if (m->kind == MS_GAUGE) {
            put_sample_start(c, name, name_len, "", 0);
            put_double(w, ms_atomic_load_double(slots));
            put_char(w, '\n');
        } else {
            /* `<name>_bucket{<labels>,le="` is built once per series; each bucket line
             * is then one reservation and three copies. */
            if (!build_bucket_prefix(c, name, name_len)) {
                w->failed = 1;
                return;
            }
            const char *prefix = c->prefix.data;
            size_t prefix_len = c->prefix.len;
            uint64_t cumulative = 0;
            for (uint32_t b = 0; b <= m->n_bounds; b++) {
                cumulative += ms_atomic_load_u64(&slots[b]);
                const char *le = "+Inf";
                size_t le_len = 4;
                if (b < m->n_bounds) {
                    const ms_str *text = ms_metric_bound_text(s, m, b);
                    le = text->data;
                    le_len = ms_str_len(text);
                }
                if (!reserve(w, prefix_len + le_len + 3 + U64_DIGITS + 1)) return;
                char *o = w->b->data + w->b->len;
                memcpy(o, prefix, prefix_len);
                o += prefix_len;
                memcpy(o, le, le_len);
                o += le_len;
                memcpy(o, "\"} ", 3);
                o = write_u64(o + 3, cumulative);
                *o++ = '\n';
                w->b->len = (size_t)(o - w->b->data);
            }
            /* OM 1.0 allows _sum only as a counter: never negative or NaN, never with a
             * negative bound; its parsers want _sum and _count together. */
            double sum = ms_atomic_load_double(&slots[m->n_bounds + 1]);
            if (c->om && (ms_metric_bounds(s, m)[0] < 0 || sum < 0 || isnan(sum))) continue;
            put_sample_start(c, name, name_len, "_sum", 4);
            put_double(w, sum);
            put_char(w, '\n');
            put_sample_start(c, name, name_len, "_count", 6);
            put_u64(w, cumulative);
            put_char(w, '\n');
        }
    }
}

static uint64_t folded(const ms_metric *m, fold_family fold) {
    _Atomic uint64_t *n = (_Atomic uint64_t *)(fold == FOLD_MAX_SERIES ? &m->overflow_count
                                                                      : &m->budget_overflow_count);
    return atomic_load_explicit(n, memory_order_relaxed);
}

static void render_folds(render_ctx *c, uint32_t n_metrics, fold_family fold) {
    writer *w = &c->w;
    const char *family = FOLD_FAMILIES[fold].name;
    size_t len = FOLD_FAMILIES[fold].name_len;
    put_header(c, family, len, c->om, NULL, FOLD_FAMILIES[fold].help,
               FOLD_FAMILIES[fold].help_len, "counter");
    /* One line per folding metric, in metric-id order (as _store_py's snapshot). */
    for (uint32_t i = 0; i < n_metrics; i++) {
        const ms_metric *m = ms_metric_at(w->s, i);
        uint64_t n = folded(m, fold);
        if (!n) continue;
        put(w, family, len);
        PUT_LIT(w, "{metric=\"");
        put_label_value(w, ms_metric_name(w->s, m));
        PUT_LIT(w, "\"} ");
        put_u64(w, n);
        put_char(w, '\n');
    }
}

void ms_buf_free(ms_store *s, ms_buf *b) {
    if (!b->grow) ms_dealloc(s, b->data, b->cap);
    b->data = NULL;
    b->len = b->cap = 0;
}

ms_status ms_render(ms_store *s, int openmetrics, ms_buf *out) {
    /* Metrics first: a series read later may belong to a newer metric, and is skipped. */
    uint32_t n_metrics = ms_metric_count(s);
    uint32_t n_series = ms_series_total(s);
    size_t fams_bytes = ((size_t)n_metrics + 2) * sizeof(family);
    size_t start_bytes = ((size_t)n_metrics + 2) * sizeof(uint32_t);
    size_t order_bytes = ((size_t)n_series + 1) * sizeof(uint32_t);
    family *fams = ms_alloc(s, fams_bytes);
    uint32_t *start = ms_alloc(s, start_bytes);
    uint32_t *order = ms_alloc(s, order_bytes);
    render_ctx c = {{s, out, 0}, openmetrics != 0, n_series, start, order, {0}, {0}};
    ms_status st = MS_ERR_NOMEM;
    if (!fams || !start || !order) goto done;

    /* Group series by metric with a counting sort, keeping series-id order. */
    memset(start, 0, start_bytes);
    for (uint32_t i = 0; i < n_series; i++) {
        uint32_t m = ms_series_at(s, i)->metric_kind >> 2;
        if (m < n_metrics) start[m + 2]++;
    }
    for (uint32_t m = 0; m < n_metrics; m++) start[m + 2] += start[m + 1];
    for (uint32_t i = 0; i < n_series; i++) {
        uint32_t m = ms_series_at(s, i)->metric_kind >> 2;
        if (m < n_metrics) order[start[m + 1]++] = i;
    }

    size_t n_fams = 0;
    int any_fold[3] = {0, 0, 0};
    for (uint32_t m = 0; m < n_metrics; m++) {
        const ms_metric *metric = ms_metric_at(s, m);
        const ms_str *mname = ms_metric_name(s, metric);
        fams[n_fams].name = mname->data;
        fams[n_fams].name_len = ms_str_len(mname);
        fams[n_fams].fold = NOT_FOLDS;
        fams[n_fams++].metric = metric;
        any_fold[FOLD_MAX_SERIES] |= folded(metric, FOLD_MAX_SERIES) != 0;
        any_fold[FOLD_BUDGET] |= folded(metric, FOLD_BUDGET) != 0;
    }
    for (int f = FOLD_MAX_SERIES; f <= FOLD_BUDGET; f++) {
        if (!any_fold[f]) continue;
        fams[n_fams].name = FOLD_FAMILIES[f].name;
        fams[n_fams].name_len = FOLD_FAMILIES[f].name_len;
        fams[n_fams].fold = (fold_family)f;
        fams[n_fams++].metric = NULL;
    }
    qsort(fams, n_fams, sizeof *fams, family_cmp);
    /* The size guess: every labelled series was charged the most its lines can take
     * (the exposition budget), which is within a few percent of what they take, so even a
     * first render makes one allocation instead of growing through a dozen; then the last
     * render's size (labelless series are not charged). Untouched pages cost nothing. */
    size_t guess = (size_t)n_series * 64 + n_fams * 128 + 16;
    uint64_t charged = ms_store_exposition_bytes(s);
    if (charged < SIZE_MAX / 2 && charged + n_fams * 256 > guess) guess = charged + n_fams * 256;
    size_t hint = atomic_load_explicit(&s->h->render_hint, memory_order_relaxed);
    if (hint + hint / 16 > guess) guess = hint + hint / 16; /* counters gaining digits */
    /* A buffer handed in to reuse (pages already mapped) that held the last render grows
     * only if this one needs it: growing a big one can mean a copy into new pages. */
    int reused = out->cap && out->cap >= hint;
    if (!reused && !reserve(&c.w, guess)) goto done;

    for (size_t i = 0; i < n_fams && !c.w.failed; i++) {
        if (fams[i].metric)
            render_metric(&c, fams[i].metric);
        else
            render_folds(&c, n_metrics, fams[i].fold);
    }
    if (c.om) PUT_LIT(&c.w, "# EOF\n");
    st = c.w.failed ? MS_ERR_NOMEM : MS_OK;
    if (st == MS_OK) atomic_store_explicit(&s->h->render_hint, out->len, memory_order_relaxed);
done:
    ms_buf_free(s, &c.labels);
    ms_buf_free(s, &c.prefix);
    ms_dealloc(s, fams, fams ? fams_bytes : 0);
    ms_dealloc(s, start, start ? start_bytes : 0);
    ms_dealloc(s, order, order ? order_bytes : 0);
    return st;
}
