/* Unit tests of store.c and render.c; expected bytes are written from docs/store.md. */
#define _DEFAULT_SOURCE /* fork, truncate, pwrite for the shared-store tests */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "render.h"
#include "store.h"
#include "store_internal.h"
#include "testing.h"

/* ---- helpers --------------------------------------------------------------------- */

static uint32_t metric(ms_store *s, ms_kind kind, const char *name, const char *help,
                       const ms_strref *labels, uint32_t n, const double *b, uint32_t nb,
                       uint64_t max) {
    uint32_t id = 999;
    ms_status st = ms_metric_add(s, kind, name, strlen(name), help, strlen(help), labels, n, b,
                                 nb, max, &id);
    CHECK(st == MS_OK);
    return id;
}

static uint32_t series1(ms_store *s, uint32_t m, const char *v) {
    ms_strref values[] = {{v, strlen(v)}};
    uint32_t id = 999;
    CHECK(ms_series_get(s, m, values, 1, &id) == MS_OK);
    return id;
}

static int render_equals(ms_store *s, int om, const char *expected) {
    ms_buf b = {0};
    CHECK(ms_render(s, om, &b) == MS_OK);
    int ok = b.len == strlen(expected) && memcmp(b.data, expected, b.len) == 0;
    if (!ok) fprintf(stderr, "--- expected:\n%s--- got:\n%.*s---\n", expected, (int)b.len, b.data);
    ms_buf_free(s, &b);
    return ok;
}

static size_t render_len(ms_store *s, int om) {
    ms_buf b = {0};
    CHECK(ms_render(s, om, &b) == MS_OK);
    size_t n = b.len;
    ms_buf_free(s, &b);
    return n;
}

static uint64_t charge_of(ms_store *s, uint32_t m, const ms_strref *values, uint32_t n) {
    uint64_t bytes = 0;
    CHECK(ms_series_charge(s, m, values, n, &bytes) == MS_OK);
    return bytes;
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_format_double(void) {
    struct {
        double v;
        const char *text;
    } cases[] = {{0.5, "0.5"},       {3600000, "3600000"}, {0.005, "0.005"},
                 {0.1, "0.1"},       {1.0 / 3, "0.3333333333333333"},
                 {0.1 + 0.2, "0.30000000000000004"}, {1e-5, "1e-05"},
                 {1e15, "1e+15"},    {-2.5, "-2.5"},       {0.0, "0"},
                 {-0.0, "-0"},       {INFINITY, "+Inf"},   {-INFINITY, "-Inf"},
                 {NAN, "NaN"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[32];
        size_t n = ms_format_double(cases[i].v, buf);
        CHECK(n == strlen(cases[i].text) && strcmp(buf, cases[i].text) == 0);
    }
}

static void test_metric_validation(void) {
    ms_store *s = ms_store_new(NULL, 100);
    uint32_t id;
    double good[] = {1, 2}, unsorted[] = {2, 1}, inf[] = {1, INFINITY}, nan[] = {NAN};
    ms_strref le[] = {S("le")}, dunder[] = {S("__x")}, dup[] = {S("a"), S("a")},
              colon[] = {S("a:b")}, digit[] = {S("1a")};
#define ADD(kind, name, labels, n, b, nb) \
    ms_metric_add(s, kind, name, strlen(name), "", 0, labels, n, b, nb, 0, &id)
    CHECK(ADD(MS_COUNTER, "", NULL, 0, NULL, 0) == MS_ERR_INVALID_METRIC);
    CHECK(ADD(MS_COUNTER, "9x", NULL, 0, NULL, 0) == MS_ERR_INVALID_METRIC);
    CHECK(ADD(MS_COUNTER, "a-b", NULL, 0, NULL, 0) == MS_ERR_INVALID_METRIC);
    CHECK(ADD(MS_COUNTER, "x", dunder, 1, NULL, 0) == MS_ERR_INVALID_METRIC);
    CHECK(ADD(MS_COUNTER, "x", dup, 2, NULL, 0) == MS_ERR_INVALID_METRIC);
    CHECK(ADD(MS_COUNTER, "x", colon, 1, NULL, 0) == MS_ERR_INVALID_METRIC);
    CHECK(ADD(MS_COUNTER, "x", digit, 1, NULL, 0) == MS_ERR_INVALID_METRIC);
    CHECK(ADD(MS_HISTOGRAM, "h", le, 1, good, 2) == MS_ERR_INVALID_METRIC);
    CHECK(ADD(MS_HISTOGRAM, "h", NULL, 0, unsorted, 2) == MS_ERR_INVALID_METRIC);
    CHECK(ADD(MS_HISTOGRAM, "h", NULL, 0, inf, 2) == MS_ERR_INVALID_METRIC);
    CHECK(ADD(MS_HISTOGRAM, "h", NULL, 0, nan, 1) == MS_ERR_INVALID_METRIC);
    CHECK(ADD(MS_HISTOGRAM, "h", NULL, 0, good, 0) == MS_ERR_INVALID_METRIC);
    CHECK(ms_metric_count(s) == 0);
    CHECK(ADD(MS_COUNTER, "ns:a_total", le, 1, NULL, 0) == MS_OK && id == 0);
    CHECK(ADD(MS_GAUGE, "ns:a_total", NULL, 0, NULL, 0) == MS_ERR_DUPLICATE_METRIC);
    CHECK(ADD(MS_HISTOGRAM, "h", NULL, 0, good, 2) == MS_OK && id == 1);
    /* A counter's OpenMetrics family name is taken too, and the overflow family's. */
    CHECK(ADD(MS_GAUGE, "ns:a", NULL, 0, NULL, 0) == MS_ERR_DUPLICATE_METRIC);
    CHECK(ADD(MS_COUNTER, "h_total", NULL, 0, NULL, 0) == MS_ERR_DUPLICATE_METRIC);
    CHECK(ADD(MS_COUNTER, "h2", NULL, 0, NULL, 0) == MS_OK);
    CHECK(ADD(MS_COUNTER, "h2_total", NULL, 0, NULL, 0) == MS_ERR_DUPLICATE_METRIC);
    CHECK(ADD(MS_GAUGE, "meshstats_series_overflow", NULL, 0, NULL, 0) ==
          MS_ERR_DUPLICATE_METRIC);
    CHECK(ADD(MS_GAUGE, "meshstats_series_overflow_total", NULL, 0, NULL, 0) ==
          MS_ERR_DUPLICATE_METRIC);
    CHECK(ADD(MS_COUNTER, "_total", NULL, 0, NULL, 0) == MS_ERR_INVALID_METRIC);
    CHECK(ADD(MS_GAUGE, "_total", NULL, 0, NULL, 0) == MS_OK);
    ms_metric_info info;
    CHECK(ms_metric_get(s, 1, &info) == MS_OK && info.kind == MS_HISTOGRAM &&
          info.n_bounds == 2 && info.bounds[1] == 2 && info.max_series == 100);
    CHECK(ms_metric_get(s, 9, &info) == MS_ERR_UNKNOWN_METRIC);
#undef ADD
    ms_store_free(s);
}

static void test_series_identity_and_sharing(void) {
    ms_store *s = ms_store_new(NULL, 100);
    ms_strref names[] = {S("a"), S("b")};
    double b[] = {1};
    uint32_t c = metric(s, MS_COUNTER, "c_total", "", names, 2, NULL, 0, 0);
    uint32_t h = metric(s, MS_HISTOGRAM, "h", "", names, 2, b, 1, 0);
    ms_strref v1[] = {S("x"), S("y")}, v2[] = {S("y"), S("x")}, bad[] = {S("x")};
    uint32_t s0, s1, s2, s3, again;
    CHECK(ms_series_get(s, c, v1, 2, &s0) == MS_OK && s0 == 0);
    CHECK(ms_series_get(s, c, v2, 2, &s1) == MS_OK && s1 == 1);
    CHECK(ms_series_get(s, h, v1, 2, &s2) == MS_OK && s2 == 2);
    CHECK(ms_series_get(s, c, v1, 2, &again) == MS_OK && again == s0);
    CHECK(ms_series_get(s, h, v2, 2, &s3) == MS_OK && s3 == 3);
    CHECK(ms_series_get(s, c, bad, 1, &again) == MS_ERR_INVALID_LABELS);
    CHECK(ms_series_get(s, 7, v1, 2, &again) == MS_ERR_UNKNOWN_METRIC);
    /* Two distinct strings, two label sets, shared by both metrics. */
    CHECK(s->h->strings.count == 2 && s->h->labelsets.count == 2);
    ms_strref got;
    CHECK(ms_series_label(s, s3, 0, &got) == MS_OK && got.len == 1 && got.ptr[0] == 'y');
    uint32_t m;
    CHECK(ms_series_metric(s, s2, &m) == MS_OK && m == h);
    CHECK(ms_series_metric(s, 4, &m) == MS_ERR_UNKNOWN_SERIES);
    ms_store_free(s);
}

static void test_overflow(void) {
    ms_store *s = ms_store_new(NULL, 100);
    ms_strref names[] = {S("k")};
    uint32_t m = metric(s, MS_COUNTER, "c_total", "", names, 1, NULL, 0, 2);
    uint32_t a = series1(s, m, "a"), b = series1(s, m, "b");
    uint32_t o1 = series1(s, m, "c");
    size_t mem = ms_store_memory(s);
    uint32_t o2 = series1(s, m, "d");
    CHECK(o1 == 2 && o2 == o1);
    CHECK(ms_store_memory(s) == mem); /* folding costs nothing */
    CHECK(series1(s, m, "a") == a && series1(s, m, "b") == b);
    ms_metric_info info;
    CHECK(ms_metric_get(s, m, &info) == MS_OK && info.series_count == 2 &&
          info.overflow_count == 2);
    ms_strref got;
    CHECK(ms_series_label(s, o1, 0, &got) == MS_OK && got.len == 12 &&
          memcmp(got.ptr, "__overflow__", 12) == 0);
    CHECK(ms_inc(s, o1, 5) == MS_OK);
    /* Its own label set names the overflow series without counting as a fold; on a
     * metric with room it still means the overflow series, created early. */
    CHECK(series1(s, m, "__overflow__") == o1);
    CHECK(ms_metric_get(s, m, &info) == MS_OK && info.overflow_count == 2);
    uint32_t m2 = metric(s, MS_GAUGE, "g", "", names, 1, NULL, 0, 5);
    uint32_t o3 = series1(s, m2, "__overflow__");
    CHECK(ms_metric_get(s, m2, &info) == MS_OK && info.series_count == 0 &&
          info.overflow_count == 0 && series1(s, m2, "__overflow__") == o3);
    ms_store_free(s);
}

static void test_recording(void) {
    ms_store *s = ms_store_new(NULL, 100);
    double bounds[] = {1, 5, 10};
    uint32_t c = metric(s, MS_COUNTER, "c_total", "", NULL, 0, NULL, 0, 0);
    uint32_t g = metric(s, MS_GAUGE, "g", "", NULL, 0, NULL, 0, 0);
    uint32_t h = metric(s, MS_HISTOGRAM, "h", "", NULL, 0, bounds, 3, 0);
    uint32_t sc, sg, sh;
    CHECK(ms_series_get(s, c, NULL, 0, &sc) == MS_OK);
    CHECK(ms_series_get(s, g, NULL, 0, &sg) == MS_OK);
    CHECK(ms_series_get(s, h, NULL, 0, &sh) == MS_OK);
    CHECK(ms_inc(s, sc, 1) == MS_OK && ms_inc(s, sc, UINT64_MAX - 1) == MS_OK);
    uint64_t v;
    CHECK(ms_counter_value(s, sc, &v) == MS_OK && v == UINT64_MAX);
    CHECK(ms_set(s, sg, -2.5) == MS_OK);
    double d;
    CHECK(ms_gauge_value(s, sg, &d) == MS_OK && d == -2.5);
    CHECK(ms_set(s, sg, NAN) == MS_OK && ms_gauge_value(s, sg, &d) == MS_OK && isnan(d));
    /* le is inclusive; -inf and negatives go to the first bucket, +inf to the last. */
    double obs[] = {1, 1.0000001, 5, -INFINITY, -3, 10, 11, INFINITY};
    for (size_t i = 0; i < 8; i++) CHECK(ms_observe(s, sh, obs[i]) == MS_OK);
    CHECK(ms_observe(s, sh, NAN) == MS_ERR_INVALID_SAMPLE);
    uint64_t counts[4];
    double sum;
    CHECK(ms_histogram_value(s, sh, counts, &sum) == MS_OK);
    CHECK(counts[0] == 3 && counts[1] == 2 && counts[2] == 1 && counts[3] == 2);
    CHECK(isnan(sum)); /* -inf + inf */
    CHECK(ms_inc(s, sg, 1) == MS_ERR_WRONG_KIND);
    CHECK(ms_observe(s, sc, 1) == MS_ERR_WRONG_KIND);
    CHECK(ms_set(s, sh, 1) == MS_ERR_WRONG_KIND);
    CHECK(ms_inc(s, 3, 1) == MS_ERR_UNKNOWN_SERIES);
    CHECK(ms_inc(s, UINT64_MAX, 1) == MS_ERR_UNKNOWN_SERIES);
    CHECK(ms_histogram_value(s, sc, counts, &sum) == MS_ERR_WRONG_KIND);

    /* A bad element anywhere means nothing of the batch is recorded. */
    uint64_t ids[] = {sc, sc, sg, sc}, amounts[] = {1, 2, 3, 4};
    size_t bad = 99;
    CHECK(ms_counter_value(s, sc, &v) == MS_OK);
    uint64_t before = v;
    CHECK(ms_inc_many(s, ids, amounts, 4, &bad) == MS_ERR_WRONG_KIND && bad == 2);
    CHECK(ms_counter_value(s, sc, &v) == MS_OK && v == before);
    ids[2] = sc;
    CHECK(ms_inc_many(s, ids, amounts, 4, &bad) == MS_OK);
    CHECK(ms_counter_value(s, sc, &v) == MS_OK && v == before + 10);
    CHECK(ms_inc_many(s, ids, NULL, 4, &bad) == MS_OK);
    CHECK(ms_counter_value(s, sc, &v) == MS_OK && v == before + 14);
    uint64_t hids[] = {sh, sh, sh};
    double hv[] = {0.5, NAN, 3};
    CHECK(ms_observe_many(s, hids, hv, 3, &bad) == MS_ERR_INVALID_SAMPLE && bad == 1);
    ms_store_free(s);
}

static void test_render(void) {
    ms_store *s = ms_store_new(NULL, 100);
    ms_strref names[] = {S("reporter"), S("code")};
    double bounds[] = {0.5, 1, 3600000};
    uint32_t c = metric(s, MS_COUNTER, "istio_requests_total", "Total \"requests\".\\\n", names,
                        2, NULL, 0, 2);
    uint32_t h = metric(s, MS_HISTOGRAM, "dur", "", names, 2, bounds, 3, 0);
    metric(s, MS_GAUGE, "empty", "No series.", NULL, 0, NULL, 0, 0);
    uint32_t g = metric(s, MS_GAUGE, "build", "", NULL, 0, NULL, 0, 0);
    uint32_t id;
    ms_strref v1[] = {S("source"), S("200")}, v2[] = {{"a\"b\\c\nd\xc3\xa9", 9}, S("")},
              v3[] = {S("x"), S("y")};
    CHECK(ms_series_get(s, c, v1, 2, &id) == MS_OK && ms_inc(s, id, 1234567890123ULL) == MS_OK);
    CHECK(ms_series_get(s, h, v1, 2, &id) == MS_OK);
    CHECK(ms_observe(s, id, 0.5) == MS_OK && ms_observe(s, id, 2) == MS_OK &&
          ms_observe(s, id, 1e9) == MS_OK);
    CHECK(ms_series_get(s, c, v2, 2, &id) == MS_OK);
    CHECK(ms_series_get(s, c, v3, 2, &id) == MS_OK); /* folded */
    CHECK(ms_series_get(s, c, v3, 2, &id) == MS_OK); /* folded */
    CHECK(ms_series_get(s, g, NULL, 0, &id) == MS_OK && ms_set(s, id, 0.1) == MS_OK);
    const char *text =
        "# HELP build \n"
        "# TYPE build gauge\n"
        "build 0.1\n"
        "# HELP dur \n"
        "# TYPE dur histogram\n"
        "dur_bucket{reporter=\"source\",code=\"200\",le=\"0.5\"} 1\n"
        "dur_bucket{reporter=\"source\",code=\"200\",le=\"1\"} 1\n"
        "dur_bucket{reporter=\"source\",code=\"200\",le=\"3600000\"} 2\n"
        "dur_bucket{reporter=\"source\",code=\"200\",le=\"+Inf\"} 3\n"
        "dur_sum{reporter=\"source\",code=\"200\"} 1000000002.5\n"
        "dur_count{reporter=\"source\",code=\"200\"} 3\n"
        "# HELP empty No series.\n"
        "# TYPE empty gauge\n"
        "# HELP istio_requests_total Total \"requests\".\\\\\\n\n"
        "# TYPE istio_requests_total counter\n"
        "istio_requests_total{reporter=\"source\",code=\"200\"} 1234567890123\n"
        "istio_requests_total{reporter=\"a\\\"b\\\\c\\nd\xc3\xa9\",code=\"\"} 0\n"
        "istio_requests_total{reporter=\"__overflow__\",code=\"__overflow__\"} 0\n"
        "# HELP meshstats_series_overflow_total Label sets folded into the overflow series "
        "because the metric reached max_series.\n"
        "# TYPE meshstats_series_overflow_total counter\n"
        "meshstats_series_overflow_total{metric=\"istio_requests_total\"} 2\n";
    CHECK(render_equals(s, 0, text));
    const char *om =
        "# HELP build \n"
        "# TYPE build gauge\n"
        "build 0.1\n"
        "# HELP dur \n"
        "# TYPE dur histogram\n"
        "dur_bucket{reporter=\"source\",code=\"200\",le=\"0.5\"} 1\n"
        "dur_bucket{reporter=\"source\",code=\"200\",le=\"1\"} 1\n"
        "dur_bucket{reporter=\"source\",code=\"200\",le=\"3600000\"} 2\n"
        "dur_bucket{reporter=\"source\",code=\"200\",le=\"+Inf\"} 3\n"
        "dur_sum{reporter=\"source\",code=\"200\"} 1000000002.5\n"
        "dur_count{reporter=\"source\",code=\"200\"} 3\n"
        "# HELP empty No series.\n"
        "# TYPE empty gauge\n"
        "# HELP istio_requests Total \\\"requests\\\".\\\\\\n\n"
        "# TYPE istio_requests counter\n"
        "istio_requests_total{reporter=\"source\",code=\"200\"} 1234567890123\n"
        "istio_requests_total{reporter=\"a\\\"b\\\\c\\nd\xc3\xa9\",code=\"\"} 0\n"
        "istio_requests_total{reporter=\"__overflow__\",code=\"__overflow__\"} 0\n"
        "# HELP meshstats_series_overflow Label sets folded into the overflow series "
        "because the metric reached max_series.\n"
        "# TYPE meshstats_series_overflow counter\n"
        "meshstats_series_overflow_total{metric=\"istio_requests_total\"} 2\n"
        "# EOF\n";
    CHECK(render_equals(s, 1, om));
    ms_store_free(s);
}

/* OpenMetrics drops _sum/_count where _sum could not be a counter (docs/store.md). */
/* A render's buffer starts at its size guess (the last output plus 1/16), not the next
 * power of two: a 267 MB scrape would otherwise reserve 512 MiB. */
static void test_render_buffer_is_sized_once(void) {
    ms_store *s = ms_store_new(NULL, 100000);
    uint32_t c;
    ms_strref names[] = {S("k")};
    CHECK(ms_metric_add(s, MS_COUNTER, "c_total", 7, "", 0, names, 1, NULL, 0, 0, &c) == MS_OK);
    char v[160];
    for (int i = 0; i < 3000; i++) { /* lines over 64 bytes: more than the count guess */
        snprintf(v, sizeof v, "%0120d", i);
        CHECK(ms_inc(s, series1(s, c, v), 1) == MS_OK);
    }
    /* The first render's one reservation is what the series were charged (their lines
     * with every value at its widest), so it never grows... */
    uint64_t charged = ms_store_exposition_bytes(s);
    ms_buf b = {0};
    CHECK(ms_render(s, 0, &b) == MS_OK);
    size_t n = b.len;
    CHECK(b.cap >= n && b.cap == charged + 256);
    ms_buf_free(s, &b);
    ms_store_free(s);
    /* What is not charged (HELP lines, labelless series) the last render's size covers:
     * the hint. */
    s = ms_store_new(NULL, 100000);
    char name[256];
    for (int i = 0; i < 300; i++) { /* long names: 3 lines of over 200 bytes each */
        uint32_t g, id;
        snprintf(name, sizeof name, "gauge_%0200d", i);
        CHECK(ms_metric_add(s, MS_GAUGE, name, strlen(name), "", 0, NULL, 0, NULL, 0, 0, &g) ==
              MS_OK);
        CHECK(ms_series_get(s, g, NULL, 0, &id) == MS_OK);
    }
    size_t m = render_len(s, 0); /* sets the hint */
    CHECK(ms_render(s, 0, &b) == MS_OK && b.len == m);
    CHECK(b.cap == m + m / 16);
    ms_buf_free(s, &b);
    ms_store_free(s);
}

static void test_render_openmetrics_sums(void) {
    ms_store *s = ms_store_new(NULL, 100);
    double neg_bounds[] = {-1, 1}, bounds[] = {1};
    ms_strref names[] = {S("k")};
    uint32_t neg = metric(s, MS_HISTOGRAM, "neg", "", NULL, 0, neg_bounds, 2, 0);
    uint32_t pos = metric(s, MS_HISTOGRAM, "pos", "", names, 1, bounds, 1, 0), id;
    CHECK(ms_series_get(s, neg, NULL, 0, &id) == MS_OK && ms_observe(s, id, 2) == MS_OK);
    CHECK(ms_observe(s, series1(s, pos, "a"), -2) == MS_OK);
    CHECK(ms_observe(s, series1(s, pos, "b"), -0.0) == MS_OK); /* 0.0 + -0.0 is 0.0 */
    CHECK(render_equals(s, 1,
                        "# HELP neg \n# TYPE neg histogram\n"
                        "neg_bucket{le=\"-1\"} 0\nneg_bucket{le=\"1\"} 0\n"
                        "neg_bucket{le=\"+Inf\"} 1\n"
                        "# HELP pos \n# TYPE pos histogram\n"
                        "pos_bucket{k=\"a\",le=\"1\"} 1\npos_bucket{k=\"a\",le=\"+Inf\"} 1\n"
                        "pos_bucket{k=\"b\",le=\"1\"} 1\npos_bucket{k=\"b\",le=\"+Inf\"} 1\n"
                        "pos_sum{k=\"b\"} 0\npos_count{k=\"b\"} 1\n# EOF\n"));
    CHECK(render_equals(s, 0,
                        "# HELP neg \n# TYPE neg histogram\n"
                        "neg_bucket{le=\"-1\"} 0\nneg_bucket{le=\"1\"} 0\n"
                        "neg_bucket{le=\"+Inf\"} 1\nneg_sum 2\nneg_count 1\n"
                        "# HELP pos \n# TYPE pos histogram\n"
                        "pos_bucket{k=\"a\",le=\"1\"} 1\npos_bucket{k=\"a\",le=\"+Inf\"} 1\n"
                        "pos_sum{k=\"a\"} -2\npos_count{k=\"a\"} 1\n"
                        "pos_bucket{k=\"b\",le=\"1\"} 1\npos_bucket{k=\"b\",le=\"+Inf\"} 1\n"
                        "pos_sum{k=\"b\"} 0\npos_count{k=\"b\"} 1\n"));
    ms_store_free(s);
}

static void test_render_counter_without_total(void) {
    ms_store *s = ms_store_new(NULL, 100);
    uint32_t c = metric(s, MS_COUNTER, "hits", "", NULL, 0, NULL, 0, 0), id;
    CHECK(ms_series_get(s, c, NULL, 0, &id) == MS_OK && ms_inc(s, id, 3) == MS_OK);
    CHECK(render_equals(s, 0, "# HELP hits \n# TYPE hits counter\nhits 3\n"));
    CHECK(render_equals(s, 1, "# HELP hits \n# TYPE hits counter\nhits_total 3\n# EOF\n"));
    ms_store_free(s);
    s = ms_store_new(NULL, 1);
    CHECK(render_equals(s, 0, ""));
    CHECK(render_equals(s, 1, "# EOF\n"));
    ms_store_free(s);
}

/* A caller-owned output buffer (how the Python glue renders into a bytes object): the
 * same bytes as the store's own buffer, grown only through the callback, none of it
 * counted by the store; a failing grow is MS_ERR_NOMEM. */
typedef struct grow_ctx {
    char *data;
    int calls, fail_at;
} grow_ctx;

static char *test_grow(void *ctx, size_t cap) {
    grow_ctx *g = ctx;
    if (g->calls++ == g->fail_at) return NULL;
    char *p = realloc(g->data, cap);
    if (p) g->data = p;
    return p;
}

static void test_render_caller_buffer(void) {
    ms_store *s = ms_store_new(NULL, 1000);
    ms_strref names[] = {S("k")};
    double bounds[] = {0.5, 1};
    uint32_t h = metric(s, MS_HISTOGRAM, "h", "", names, 1, bounds, 2, 0);
    char v[32];
    for (int i = 0; i < 300; i++) {
        snprintf(v, sizeof v, "value-%d", i);
        CHECK(ms_observe(s, series1(s, h, v), i * 0.25) == MS_OK);
    }
    ms_buf own = {0};
    CHECK(ms_render(s, 0, &own) == MS_OK);
    size_t mem = ms_store_memory(s);
    for (int fail_at = -1; fail_at < 3; fail_at++) {
        grow_ctx g = {NULL, 0, fail_at};
        ms_buf out = {NULL, 0, 0, test_grow, &g};
        ms_status st = ms_render(s, 0, &out);
        if (fail_at < 0) {
            CHECK(st == MS_OK && out.len == own.len && memcmp(out.data, own.data, own.len) == 0);
            CHECK(g.calls == 1); /* sized from the previous render: no growth */
        } else {
            CHECK(st == (fail_at < g.calls ? MS_ERR_NOMEM : MS_OK));
        }
        ms_buf_free(s, &out); /* forgets the caller's buffer, frees nothing */
        CHECK(ms_store_memory(s) == mem);
        free(g.data);
    }
    ms_buf_free(s, &own);
    ms_store_free(s);
}

/* The store's own count must equal what the allocator really holds, at every step. */
static void test_memory_accounting(void) {
    live_bytes = 0;
    ms_store *s = ms_store_new(&counting, 1000);
    CHECK(ms_store_memory(s) == live_bytes);
    ms_strref names[] = {S("a"), S("b")};
    double bounds[] = {1, 2, 3};
    uint32_t c = metric(s, MS_COUNTER, "c_total", "", names, 2, NULL, 0, 0);
    uint32_t h = metric(s, MS_HISTOGRAM, "h", "help", names, 2, bounds, 3, 0);
    char a[32], b[32];
    for (int i = 0; i < 3000; i++) {
        snprintf(a, sizeof a, "a%d", i % 97);
        snprintf(b, sizeof b, "b%d", i);
        ms_strref v[] = {{a, strlen(a)}, {b, strlen(b)}};
        uint32_t id;
        CHECK(ms_series_get(s, i % 2 ? c : h, v, 2, &id) == MS_OK);
        CHECK(ms_store_memory(s) == live_bytes);
    }
    ms_buf out = {0};
    CHECK(ms_render(s, 0, &out) == MS_OK && ms_store_memory(s) == live_bytes);
    ms_buf_free(s, &out);
    CHECK(ms_store_memory(s) == live_bytes);
    ms_store_free(s);
    CHECK(live_bytes == 0);
}

/* Every allocation failing in turn: an error comes back, nothing leaks (ASan). */
static void test_out_of_memory(void) {
    for (long k = 0; k < 200; k++) {
        fail_after = k;
        ms_store *s = ms_store_new_budget(&counting, 3, UINT64_MAX - 1);
        if (!s) continue;
        ms_strref names[] = {S("a")};
        double bounds[] = {1, 2};
        uint32_t m = 0, id;
        ms_status st =
            ms_metric_add(s, MS_HISTOGRAM, "h", 1, "x", 1, names, 1, bounds, 2, 0, &m);
        CHECK(st == MS_OK || st == MS_ERR_NOMEM);
        uint64_t charged = 0;
        for (int i = 0; i < 6 && st == MS_OK; i++) {
            char v[32];
            snprintf(v, sizeof v, "v%d", i);
            ms_strref values[] = {{v, strlen(v)}};
            uint32_t before = ms_series_total(s);
            ms_status g = ms_series_get(s, m, values, 1, &id);
            CHECK(g == MS_OK || g == MS_ERR_NOMEM);
            if (g == MS_OK) CHECK(ms_observe(s, id, 1.5) == MS_OK);
            /* Charged only for a series that exists (not a failed one, not overflow). */
            ms_strref got = {NULL, 0};
            if (g == MS_OK && id == before && ms_series_label(s, id, 0, &got) == MS_OK &&
                got.len == values[0].len)
                charged += charge_of(s, m, values, 1);
            CHECK(ms_store_exposition_bytes(s) == charged);
        }
        ms_buf out = {0};
        ms_status r = ms_render(s, 1, &out);
        CHECK(r == MS_OK || r == MS_ERR_NOMEM);
        ms_buf_free(s, &out);
        CHECK(ms_store_memory(s) == live_bytes);
        ms_store_free(s);
        CHECK(live_bytes == 0);
    }
    fail_after = -1;
}

/* ---- threads: exact totals while series are being added ---------------------------- */

#define THREADS 4
#define EVENTS 1000000
#define BATCH 80 /* EVENTS / 2 and BATCH are multiples of 8 */

typedef struct worker {
    ms_store *s;
    uint32_t counter, hist;
    int seed;
} worker;

static void *record(void *arg) {
    worker *w = arg;
    uint64_t ids[BATCH];
    double values[BATCH];
    for (int i = 0; i < EVENTS / 2; i++) {
        ms_inc(w->s, w->counter, 1);
        ms_observe(w->s, w->hist, (double)((i + w->seed) % 8));
    }
    size_t bad;
    for (int i = 0; i < BATCH; i++) {
        ids[i] = w->hist;
        values[i] = (double)(i % 8);
    }
    for (int k = 0; k < EVENTS / 2 / BATCH; k++) {
        CHECK(ms_observe_many(w->s, ids, values, BATCH, &bad) == MS_OK);
        for (int i = 0; i < BATCH; i++) ids[i] = w->counter;
        CHECK(ms_inc_many(w->s, ids, NULL, BATCH, &bad) == MS_OK);
        for (int i = 0; i < BATCH; i++) ids[i] = w->hist;
    }
    return NULL;
}

static void *grow(void *arg) {
    worker *w = arg;
    char v[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(v, sizeof v, "g%d", i);
        series1(w->s, 1, v);
    }
    return NULL;
}

static void test_threads(void) {
    ms_store *s = ms_store_new(NULL, 100000);
    ms_strref names[] = {S("k")};
    double bounds[] = {1, 3, 5};
    uint32_t c = metric(s, MS_COUNTER, "c_total", "", names, 1, NULL, 0, 0);
    uint32_t h = metric(s, MS_HISTOGRAM, "h", "", names, 1, bounds, 3, 0);
    worker w = {s, series1(s, c, "x"), series1(s, h, "x"), 0};
    worker ws[THREADS];
    pthread_t t[THREADS + 1];
    for (int i = 0; i < THREADS; i++) {
        ws[i] = w;
        ws[i].seed = i;
        CHECK(pthread_create(&t[i], NULL, record, &ws[i]) == 0);
    }
    CHECK(pthread_create(&t[THREADS], NULL, grow, &w) == 0);
    for (int i = 0; i <= THREADS; i++) pthread_join(t[i], NULL);
    uint64_t v, counts[4];
    double sum;
    CHECK(ms_counter_value(s, w.counter, &v) == MS_OK && v == (uint64_t)THREADS * EVENTS);
    CHECK(ms_histogram_value(s, w.hist, counts, &sum) == MS_OK);
    CHECK(counts[0] + counts[1] + counts[2] + counts[3] == (uint64_t)THREADS * EVENTS);
    /* Values 0..7 cycle evenly in every thread: 2/8 <= 1, 2/8 in (1,3], 2/8 in (3,5]. */
    for (int i = 0; i < 4; i++) CHECK(counts[i] == (uint64_t)THREADS * EVENTS / 4);
    CHECK(sum == 3.5 * THREADS * EVENTS); /* integer sums stay exact in a double */
    CHECK(ms_series_total(s) == 20002);
    ms_store_free(s);
}

/* ---- batches: private aggregation, typed arrays, every scratch path ------------------ */

static double hist_sum(ms_store *s, uint32_t sid, uint64_t *counts) {
    double sum = -1;
    CHECK(ms_histogram_value(s, sid, counts, &sum) == MS_OK);
    return sum;
}

/* docs/store.md "Sums in batches": per series, the batch's values are summed in index
 * order from 0.0, and that partial sum is added once. */
static void test_batch_partial_sums(void) {
    ms_store *s = ms_store_new(NULL, 100);
    ms_strref names[] = {S("k")};
    double bounds[] = {1, 2};
    uint32_t h = metric(s, MS_HISTOGRAM, "h", "", names, 1, bounds, 2, 0);
    uint32_t a = series1(s, h, "a"), b = series1(s, h, "b");
    CHECK(ms_observe(s, a, 1e16) == MS_OK && ms_observe(s, b, -1e16) == MS_OK);
    uint64_t ids[] = {a, b, a, b, a};
    double values[] = {1, 3, 1, -1, 2};
    size_t bad = 99;
    CHECK(ms_observe_many(s, ids, values, 5, &bad) == MS_OK);
    uint64_t counts[3];
    volatile double big = 1e16; /* the one-at-a-time sum would be 1e16 + 2 */
    CHECK(hist_sum(s, a, counts) == big + 4.0);
    CHECK(counts[0] == 2 && counts[1] == 1 && counts[2] == 1); /* 1e16 is +Inf */
    CHECK(hist_sum(s, b, counts) == -big + 2.0);
    CHECK(counts[0] == 2 && counts[1] == 0 && counts[2] == 1);
    ms_store_free(s);
}

/* Typed, strided, misaligned arrays; negative signed ids and amounts. */
static void test_batch_arrays(void) {
    ms_store *s = ms_store_new(NULL, 100);
    ms_strref names[] = {S("k")};
    double bounds[] = {1, 2};
    uint32_t c = metric(s, MS_COUNTER, "c_total", "", names, 1, NULL, 0, 0);
    uint32_t h = metric(s, MS_HISTOGRAM, "h", "", names, 1, bounds, 2, 0);
    uint32_t ca = series1(s, c, "a"), cb = series1(s, c, "b"), ha = series1(s, h, "a");
    /* int32 ids at every other element (stride 8), uint32 amounts. */
    int32_t ids32[] = {(int32_t)ca, 77, (int32_t)cb, 77, (int32_t)ca, 77};
    uint32_t am32[] = {5, 7, 9};
    ms_array ids = {ids32, 8, MS_I32}, amounts = {am32, 4, MS_U32};
    size_t bad = 99;
    uint64_t v;
    CHECK(ms_inc_array(s, &ids, &amounts, 3, &bad) == MS_OK);
    CHECK(ms_counter_value(s, ca, &v) == MS_OK && v == 14);
    CHECK(ms_counter_value(s, cb, &v) == MS_OK && v == 7);
    /* Negative id: unknown; negative amount: invalid; nothing recorded either way. */
    int64_t neg_ids[] = {ca, -1}, amounts64[] = {1, 1, -3};
    ms_array nid = {neg_ids, 8, MS_I64}, a64 = {amounts64, 8, MS_I64};
    CHECK(ms_inc_array(s, &nid, NULL, 2, &bad) == MS_ERR_UNKNOWN_SERIES && bad == 1);
    int64_t ok_ids[] = {ca, cb, ca};
    ms_array oid = {ok_ids, 8, MS_I64};
    CHECK(ms_inc_array(s, &oid, &a64, 3, &bad) == MS_ERR_INVALID_SAMPLE && bad == 2);
    CHECK(ms_counter_value(s, ca, &v) == MS_OK && v == 14);
    /* Reversed (negative stride) misaligned int64 ids, float32 values. */
    char raw[1 + 3 * 8];
    uint64_t hid = ha;
    for (int i = 0; i < 3; i++) memcpy(raw + 1 + 8 * i, &hid, 8);
    float f32[] = {0.5f, 1.5f, 9.0f};
    ms_array rid = {raw + 1 + 16, -8, MS_U64}, fv = {f32, 4, MS_F32};
    CHECK(ms_observe_array(s, &rid, &fv, 3, &bad) == MS_OK);
    uint64_t counts[3];
    CHECK(hist_sum(s, ha, counts) == 11.0 && counts[0] == 1 && counts[1] == 1 && counts[2] == 1);
    /* Integer values are converted; the id is checked before the value at one index. */
    int64_t iv[] = {2, 3};
    uint64_t hids[] = {ha, ca};
    ms_array iva = {iv, 8, MS_I64}, hida = {hids, 8, MS_U64};
    CHECK(ms_observe_array(s, &hida, &iva, 2, &bad) == MS_ERR_WRONG_KIND && bad == 1);
    CHECK(ms_observe_array(s, &hida, &iva, 1, &bad) == MS_OK);
    CHECK(hist_sum(s, ha, counts) == 13.0 && counts[1] == 2);
    double nan_first[] = {NAN};
    uint64_t unknown[] = {1000};
    CHECK(ms_observe_many(s, unknown, nan_first, 1, &bad) == MS_ERR_UNKNOWN_SERIES && bad == 0);
    ms_store_free(s);
}

/* A big store next to a small batch (hashed id map), several bucket layouts in one
 * batch (the general loop), and a histogram whose buckets exceed the scratch budget
 * (deferred buckets): all must record exactly what single calls would. */
static void test_batch_paths(void) {
    ms_store *s = ms_store_new(NULL, 100000);
    ms_strref names[] = {S("k")};
    double b2[] = {1, 2}, b3[] = {1, 2, 3}, b2same[] = {1, 2};
    uint32_t h2 = metric(s, MS_HISTOGRAM, "h2", "", names, 1, b2, 2, 0);
    uint32_t h3 = metric(s, MS_HISTOGRAM, "h3", "", names, 1, b3, 3, 0);
    uint32_t hs = metric(s, MS_HISTOGRAM, "hs", "", names, 1, b2same, 2, 0);
    uint32_t nb = 70000; /* counts (nb + 1) > 2n + 65536 for small n: deferred */
    double *many = malloc(nb * sizeof *many);
    for (uint32_t i = 0; i < nb; i++) many[i] = i;
    uint32_t hb = metric(s, MS_HISTOGRAM, "hb", "", names, 1, many, nb, 0);
    char v[32];
    uint32_t first = 0, last = 0;
    for (int i = 0; i < 10000; i++) {
        snprintf(v, sizeof v, "v%d", i);
        last = series1(s, h2, v);
        if (i == 0) first = last;
    }
    uint32_t x3 = series1(s, h3, "x"), xs = series1(s, hs, "x"), xb = series1(s, hb, "x");
    uint64_t ids[] = {last, first, x3, last, xs, xb, xb, x3};
    double values[] = {0.5, 1.5, 2.5, 9, 1, 69998.5, 70000, 3};
    size_t bad = 99;
    CHECK(ms_observe_many(s, ids, values, 8, &bad) == MS_OK);
    uint64_t *counts = malloc((nb + 1) * sizeof *counts);
    CHECK(hist_sum(s, last, counts) == 9.5 && counts[0] == 1 && counts[2] == 1);
    CHECK(hist_sum(s, first, counts) == 1.5 && counts[1] == 1);
    CHECK(hist_sum(s, x3, counts) == 5.5 && counts[2] == 2 && counts[3] == 0);
    CHECK(hist_sum(s, xs, counts) == 1 && counts[0] == 1);
    CHECK(hist_sum(s, xb, counts) == 139998.5);
    CHECK(counts[69999] == 1 && counts[70000] == 1 && counts[69998] == 0);
    /* Equal bounds of two metrics, one batch: still exact. */
    uint64_t same[] = {first, xs, first};
    double sv[] = {2, 2, 3};
    CHECK(ms_observe_many(s, same, sv, 3, &bad) == MS_OK);
    CHECK(hist_sum(s, first, counts) == 6.5 && counts[1] == 2 && counts[2] == 1);
    CHECK(hist_sum(s, xs, counts) == 3 && counts[1] == 1);
    free(counts);
    free(many);
    ms_store_free(s);
}

/* Long batches over one set of bounds find buckets by a table on the values' exponent
 * bits (store.c, "bins"): it must agree with the binary search for every value, bounds
 * of either sign, -0.0, subnormals, the ends of the range, many bounds per binade, and
 * through the dense map and the hash map of series ids alike. */
static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rng_next(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static double edge_value(const double *b, uint32_t nb) {
    static const double fixed[] = {0.0, -0.0, INFINITY, -INFINITY, DBL_MAX, -DBL_MAX,
                                   DBL_MIN, -DBL_MIN, 5e-324, -5e-324, 1.0, -1.0};
    uint64_t r = rng_next();
    double bound = b[(r >> 8) % nb], v;
    switch (r % 6) {
    case 0: return fixed[(r >> 40) % (sizeof fixed / sizeof *fixed)];
    case 1: return bound;
    case 2: return nextafter(bound, INFINITY);
    case 3: return nextafter(bound, -INFINITY);
    case 4: /* anywhere between two bounds, or past the ends */
        return bound + ((double)(r >> 11) / 9007199254740992.0 - 0.5) * (fabs(bound) + 1);
    default: /* any double but NaN */
        do {
            uint64_t u = rng_next();
            memcpy(&v, &u, sizeof v);
        } while (isnan(v));
        return v;
    }
}

static void batch_buckets_agree(const double *b, uint32_t nb, size_t n, uint32_t extra) {
    ms_store *s = ms_store_new(NULL, 1000000);
    ms_strref names[] = {S("k")};
    uint32_t hb = metric(s, MS_HISTOGRAM, "batch", "", names, 1, b, nb, 0);
    uint32_t h1 = metric(s, MS_HISTOGRAM, "single", "", names, 1, b, nb, 0);
    char v[32];
    enum { SERIES = 3 };
    uint32_t ids[SERIES], refs[SERIES];
    for (int i = 0; i < SERIES; i++) {
        snprintf(v, sizeof v, "v%d", i);
        ids[i] = series1(s, hb, v);
        refs[i] = series1(s, h1, v);
    }
    /* more series than twice the batch: ids go through the hash map */
    if (extra) {
        uint32_t c = metric(s, MS_COUNTER, "c_total", "", names, 1, NULL, 0, 0);
        for (uint32_t i = 0; i < extra; i++) {
            snprintf(v, sizeof v, "v%u", i);
            series1(s, c, v);
        }
    }
    uint64_t *bids = malloc(n * sizeof *bids);
    double *values = malloc(n * sizeof *values);
    for (size_t j = 0; j < n; j++) {
        uint32_t k = (uint32_t)(rng_next() % SERIES);
        bids[j] = ids[k];
        values[j] = edge_value(b, nb);
        CHECK(ms_observe(s, refs[k], values[j]) == MS_OK);
    }
    size_t bad = 99;
    CHECK(ms_observe_many(s, bids, values, n, &bad) == MS_OK);
    uint64_t *got = malloc((nb + 1) * sizeof *got), *want = malloc((nb + 1) * sizeof *want);
    for (int k = 0; k < SERIES; k++) {
        double gs = hist_sum(s, ids[k], got), ws = hist_sum(s, refs[k], want);
        CHECK(memcmp(got, want, (nb + 1) * sizeof *got) == 0);
        CHECK(memcmp(&gs, &ws, sizeof gs) == 0 || (isnan(gs) && isnan(ws)));
    }
    free(got);
    free(want);
    free(bids);
    free(values);
    ms_store_free(s);
}

static void test_batch_bucket_table(void) {
    static const double istio[] = {0.5,    1,      5,      10,      25,      50,     100,
                                   250,    500,    1000,   2500,    5000,    10000,  30000,
                                   60000,  300000, 600000, 1800000, 3600000};
    static const double signs[] = {-1000, -1, -0.5, 0, 0.25, 1, 1e300};
    static const double zeros[] = {-0.0, 5e-324, 1e-310, DBL_MIN};
    static const double ends[] = {-DBL_MAX, -1e-300, 1e-300, DBL_MAX};
    static const double one[] = {0};
    double dense[100], crowded[1000];
    for (int i = 0; i < 100; i++) dense[i] = i + 1; /* 37 bounds in [64, 128) */
    for (int i = 0; i < 1000; i++) crowded[i] = 1 + i * 0x1p-40; /* no table: search */
    struct {
        const double *b;
        uint32_t n;
    } sets[] = {{istio, 19}, {signs, 7}, {zeros, 4}, {ends, 4}, {one, 1}, {dense, 100},
                {crowded, 1000}};
    for (size_t i = 0; i < sizeof sets / sizeof *sets; i++) {
        batch_buckets_agree(sets[i].b, sets[i].n, 100000, 0);
        batch_buckets_agree(sets[i].b, sets[i].n, 20, 0); /* too short for a table */
    }
    batch_buckets_agree(istio, 19, 2000, 10000);
    batch_buckets_agree(signs, 7, 2000, 10000);
}

/* Scratch allocations failing: MS_ERR_NOMEM, nothing recorded, nothing leaked. */
static void test_batch_out_of_memory(void) {
    live_bytes = 0;
    ms_store *s = ms_store_new(&counting, 1000);
    ms_strref names[] = {S("k")};
    double bounds[] = {1};
    uint32_t h = metric(s, MS_HISTOGRAM, "h", "", names, 1, bounds, 1, 0);
    uint32_t c = metric(s, MS_COUNTER, "c_total", "", names, 1, NULL, 0, 0);
    enum { N = 200 };
    uint64_t hids[N], cids[N];
    double values[N];
    char v[32];
    for (int i = 0; i < N; i++) {
        snprintf(v, sizeof v, "v%d", i);
        hids[i] = series1(s, h, v);
        cids[i] = series1(s, c, v);
        values[i] = i % 3;
    }
    size_t before = live_bytes, bad;
    int failed = 0, observed = 0, incremented = 0;
    for (long k = 0; k < 10; k++) {
        fail_after = k;
        ms_status a = ms_observe_many(s, hids, values, N, &bad);
        ms_status b = ms_inc_many(s, cids, NULL, N, &bad);
        fail_after = -1;
        CHECK(a == MS_OK || a == MS_ERR_NOMEM);
        CHECK(b == MS_OK || b == MS_ERR_NOMEM);
        failed += (a == MS_ERR_NOMEM) + (b == MS_ERR_NOMEM);
        observed += a == MS_OK;
        incremented += b == MS_OK;
        uint64_t counts[2], n = 0;
        CHECK(hist_sum(s, (uint32_t)hids[2], counts) == 2.0 * observed);
        CHECK(counts[1] == (uint64_t)observed);
        CHECK(ms_counter_value(s, cids[0], &n) == MS_OK && n == (uint64_t)incremented);
        CHECK(live_bytes == before && ms_store_memory(s) == live_bytes);
    }
    CHECK(failed > 0);
    ms_store_free(s);
    CHECK(live_bytes == 0);
}

/* ---- idle-series expiry ------------------------------------------------------------ */

static int visible(ms_store *s, uint32_t sid) {
    int v = -1;
    CHECK(ms_series_visible(s, sid, &v) == MS_OK);
    return v;
}

static uint64_t visible_count(ms_store *s, uint32_t m) {
    uint64_t n = 999;
    CHECK(ms_metric_visible_count(s, m, &n) == MS_OK);
    return n;
}

static void test_expire_idle(void) {
    ms_store *s = ms_store_new(NULL, 100);
    ms_strref names[] = {S("k")};
    double bounds[] = {1};
    uint32_t c = metric(s, MS_COUNTER, "c_total", "", names, 1, NULL, 0, 2);
    uint32_t h = metric(s, MS_HISTOGRAM, "h", "", NULL, 0, bounds, 1, 0);
    uint32_t g = metric(s, MS_GAUGE, "g", "", NULL, 0, NULL, 0, 0);
    uint32_t a = series1(s, c, "a"), b = series1(s, c, "b"), o = series1(s, c, "z");
    uint32_t hs = 999, gs = 999;
    CHECK(ms_series_get(s, h, NULL, 0, &hs) == MS_OK);
    CHECK(ms_series_get(s, g, NULL, 0, &gs) == MS_OK);
    CHECK(ms_inc(s, a, 5) == MS_OK && ms_observe(s, hs, 2) == MS_OK);
    CHECK(ms_set(s, gs, 1.5) == MS_OK);
    /* Created or recorded since the last sweep: every series survives the first one. */
    CHECK(ms_expire_idle(s) == 0);
    CHECK(visible_count(s, c) == 2 && visible_count(s, h) == 1);
    CHECK(ms_inc(s, a, 1) == MS_OK);
    CHECK(ms_expire_idle(s) == 4); /* b, the overflow series, hs, gs */
    CHECK(visible(s, a) && !visible(s, b) && !visible(s, o));
    CHECK(!visible(s, hs) && !visible(s, gs));
    CHECK(visible_count(s, c) == 1 && visible_count(s, h) == 0 && visible_count(s, g) == 0);
    CHECK(render_equals(s, 0,
                        "# HELP c_total \n# TYPE c_total counter\nc_total{k=\"a\"} 6\n"
                        "# HELP g \n# TYPE g gauge\n# HELP h \n# TYPE h histogram\n"
                        "# HELP meshstats_series_overflow_total Label sets folded into the "
                        "overflow series because the metric reached max_series.\n"
                        "# TYPE meshstats_series_overflow_total counter\n"
                        "meshstats_series_overflow_total{metric=\"c_total\"} 1\n"));
    CHECK(ms_expire_idle(s) == 1 && !visible(s, a) && visible_count(s, c) == 0);
    CHECK(ms_expire_idle(s) == 0);
    /* Hidden series keep their values; reads work; series() finds them but shows nothing. */
    uint64_t v;
    CHECK(ms_counter_value(s, a, &v) == MS_OK && v == 6);
    CHECK(series1(s, c, "a") == a && !visible(s, a));
    /* A failed batch records nothing, so shows nothing. */
    uint64_t ids[] = {a, hs};
    size_t bad;
    CHECK(ms_inc_many(s, ids, NULL, 2, &bad) == MS_ERR_WRONG_KIND && bad == 1);
    CHECK(!visible(s, a));
    /* Any record shows a series again, its value continued. */
    CHECK(ms_inc_many(s, ids, NULL, 1, &bad) == MS_OK && visible(s, a));
    CHECK(ms_inc(s, o, 0) == MS_OK && visible(s, o) && visible_count(s, c) == 1);
    double hv[] = {0.5};
    uint64_t hid[] = {hs};
    CHECK(ms_observe_many(s, hid, hv, 1, &bad) == MS_OK && visible(s, hs));
    CHECK(ms_set(s, gs, 2) == MS_OK && visible(s, gs) && !visible(s, b));
    CHECK(render_equals(s, 1,
                        "# HELP c \n# TYPE c counter\nc_total{k=\"a\"} 7\n"
                        "c_total{k=\"__overflow__\"} 0\n"
                        "# HELP g \n# TYPE g gauge\ng 2\n"
                        "# HELP h \n# TYPE h histogram\nh_bucket{le=\"1\"} 1\n"
                        "h_bucket{le=\"+Inf\"} 2\nh_sum 2.5\nh_count 2\n"
                        "# HELP meshstats_series_overflow Label sets folded into the "
                        "overflow series because the metric reached max_series.\n"
                        "# TYPE meshstats_series_overflow counter\n"
                        "meshstats_series_overflow_total{metric=\"c_total\"} 1\n# EOF\n"));
    int vis;
    CHECK(ms_series_visible(s, 99, &vis) == MS_ERR_UNKNOWN_SERIES);
    CHECK(ms_metric_visible_count(s, 9, &v) == MS_ERR_UNKNOWN_METRIC);
    ms_store_free(s);
}

/* Recorders race a thread sweeping in a loop: flags share a word with the slot pointer,
 * so a lost or torn update would show as a wrong total (or a crash under ASan). */
#define SWEEP_SERIES 64

typedef struct sweep_ctx {
    ms_store *s;
    uint32_t counters[SWEEP_SERIES], hists[SWEEP_SERIES];
    _Atomic int done;
    _Atomic uint64_t sweeps;
} sweep_ctx;

static void *sweep_record(void *arg) {
    sweep_ctx *x = arg;
    uint64_t ids[SWEEP_SERIES];
    double values[SWEEP_SERIES];
    size_t bad;
    for (int i = 0; i < SWEEP_SERIES; i++) values[i] = 2;
    for (int k = 0; k < EVENTS / SWEEP_SERIES / 4; k++) {
        for (int i = 0; i < SWEEP_SERIES; i++) {
            ms_inc(x->s, x->counters[i], 1);
            ms_observe(x->s, x->hists[i], 2);
            ids[i] = x->counters[i];
        }
        CHECK(ms_inc_many(x->s, ids, NULL, SWEEP_SERIES, &bad) == MS_OK);
        for (int i = 0; i < SWEEP_SERIES; i++) ids[i] = x->hists[i];
        CHECK(ms_observe_many(x->s, ids, values, SWEEP_SERIES, &bad) == MS_OK);
    }
    return NULL;
}

static void *sweep_loop(void *arg) {
    sweep_ctx *x = arg;
    while (!atomic_load(&x->done)) {
        ms_expire_idle(x->s);
        x->sweeps++;
    }
    return NULL;
}

static void test_expire_threads(void) {
    static sweep_ctx x;
    x.s = ms_store_new(NULL, 1000);
    ms_strref names[] = {S("k")};
    double bounds[] = {1, 3};
    uint32_t c = metric(x.s, MS_COUNTER, "c_total", "", names, 1, NULL, 0, 0);
    uint32_t h = metric(x.s, MS_HISTOGRAM, "h", "", names, 1, bounds, 2, 0);
    for (int i = 0; i < SWEEP_SERIES; i++) {
        char v[32];
        snprintf(v, sizeof v, "s%d", i);
        x.counters[i] = series1(x.s, c, v);
        x.hists[i] = series1(x.s, h, v);
    }
    atomic_init(&x.done, 0);
    atomic_init(&x.sweeps, 0);
    pthread_t rec[THREADS], sweeper;
    CHECK(pthread_create(&sweeper, NULL, sweep_loop, &x) == 0);
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&rec[i], NULL, sweep_record, &x) == 0);
    for (int i = 0; i < THREADS; i++) pthread_join(rec[i], NULL);
    atomic_store(&x.done, 1);
    pthread_join(sweeper, NULL);
    CHECK(x.sweeps > 0);
    uint64_t per = (uint64_t)THREADS * (EVENTS / SWEEP_SERIES / 4), v, counts[3];
    double sum;
    for (int i = 0; i < SWEEP_SERIES; i++) {
        CHECK(ms_counter_value(x.s, x.counters[i], &v) == MS_OK && v == 2 * per);
        CHECK(ms_histogram_value(x.s, x.hists[i], counts, &sum) == MS_OK);
        CHECK(counts[0] == 0 && counts[1] == 2 * per && counts[2] == 0 && sum == 4.0 * per);
    }
    /* Quiet now: two sweeps hide everything, one record each shows it all again. */
    ms_expire_idle(x.s);
    ms_expire_idle(x.s);
    CHECK(visible_count(x.s, c) == 0 && visible_count(x.s, h) == 0);
    for (int i = 0; i < SWEEP_SERIES; i++) {
        CHECK(ms_inc(x.s, x.counters[i], 1) == MS_OK);
        CHECK(ms_observe(x.s, x.hists[i], 0) == MS_OK);
        CHECK(ms_counter_value(x.s, x.counters[i], &v) == MS_OK && v == 2 * per + 1);
    }
    CHECK(visible_count(x.s, c) == SWEEP_SERIES && visible_count(x.s, h) == SWEEP_SERIES);
    ms_store_free(x.s);
}

/* ---- exposition budget ------------------------------------------------------------- */

/* The widest double ms_format_double writes: 17 digits, a sign, a 3-digit exponent. */
#define WIDEST_DOUBLE (-2.2250738585072014e-308)

/* Growth of both renders when series `sid` is created and given its widest values. */
static void widest_growth(ms_store *s, uint32_t sid, ms_kind kind, size_t *text, size_t *om) {
    if (kind == MS_COUNTER) {
        CHECK(ms_inc(s, sid, UINT64_MAX) == MS_OK);
    } else if (kind == MS_GAUGE) {
        CHECK(ms_set(s, sid, WIDEST_DOUBLE) == MS_OK);
    } else { /* every cumulative count at 2**64 - 1, the sum at the widest double */
        CHECK(ms_observe(s, sid, WIDEST_DOUBLE) == MS_OK);
        ms_atomic_add_u64(ms_series_slots(s, ms_series_at(s, sid)), UINT64_MAX - 1);
    }
    *text = render_len(s, 0) - *text;
    *om = render_len(s, 1) - *om;
}

/* A charge is what the series' lines take at their widest: exactly, in the larger of
 * the two formats (docs/store.md, "Exposition budget"). */
static void test_budget_charge_is_the_widest_render(void) {
    char widest[32];
    CHECK(ms_format_double(WIDEST_DOUBLE, widest) == MS_DOUBLE_WIDTH);
    ms_store *s = ms_store_new(NULL, 100);
    CHECK(ms_store_max_exposition_bytes(s) == UINT64_MAX);
    ms_strref names[] = {S("a"), S("bb")};
    double bounds[] = {0.5, 1, 3600000};
    uint32_t m[] = {
        metric(s, MS_COUNTER, "req_total", "", names, 2, NULL, 0, 0),
        metric(s, MS_COUNTER, "rq", "", names, 2, NULL, 0, 0), /* OM adds _total */
        metric(s, MS_GAUGE, "g", "", names, 2, NULL, 0, 0),
        metric(s, MS_HISTOGRAM, "h", "", names, 2, bounds, 3, 0),
    };
    ms_kind kinds[] = {MS_COUNTER, MS_COUNTER, MS_GAUGE, MS_HISTOGRAM};
    /* Escapes count: `q"\<newline>` prints as q\"\\\n, 7 bytes. */
    ms_strref values[] = {S("x"), S("q\"\\\n")};
    /* By hand: `req_total{a="x",bb="q\"\\\n"} ` + 20 digits + newline. */
    CHECK(charge_of(s, m[0], values, 2) == 10 + 18 + 2 + 20 + 1);
    /* h: 4 bucket lines `h_bucket{<18>,le="<bound>"} <20>\n` (bounds 0.5, 1, 3600000,
     * +Inf), `h_sum{<18>} <24>\n`, `h_count{<18>} <20>\n`. */
    CHECK(charge_of(s, m[3], values, 2) ==
          4 * (9 + 18 + 5 + 3 + 20 + 1) + 3 + 1 + 7 + 4 + (6 + 18 + 2 + 24 + 1) +
              (8 + 18 + 2 + 20 + 1));
    uint64_t total = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t charge = charge_of(s, m[i], values, 2);
        total += charge;
        size_t text = render_len(s, 0), om = render_len(s, 1);
        uint32_t sid;
        CHECK(ms_series_get(s, m[i], values, 2, &sid) == MS_OK);
        widest_growth(s, sid, kinds[i], &text, &om);
        if (i == 1) { /* text prints `rq`, OpenMetrics `rq_total`: charged the wider */
            CHECK(om == charge && text == charge - 6);
        } else if (i == 3) { /* a negative sum: OpenMetrics leaves out _sum and _count */
            CHECK(text == charge && om < charge);
        } else {
            CHECK(text == charge && om == charge);
        }
    }
    /* Without a budget the charges are still added up (a store's worst-case scrape). */
    CHECK(ms_store_exposition_bytes(s) == total);
    /* No labels: the one series is part of the metric, like its HELP line. */
    uint32_t u = metric(s, MS_COUNTER, "u_total", "", NULL, 0, NULL, 0, 0);
    CHECK(charge_of(s, u, NULL, 0) == 0);
    uint64_t bytes;
    CHECK(ms_series_charge(s, 99, values, 2, &bytes) == MS_ERR_UNKNOWN_METRIC);
    CHECK(ms_series_charge(s, m[0], values, 1, &bytes) == MS_ERR_INVALID_LABELS);
    ms_store_free(s);
}

static void test_budget_boundary(void) {
    CHECK(ms_store_new_budget(NULL, 100, 0) == NULL);
    ms_strref names[] = {S("k")};
    ms_strref va[] = {S("aaaa")}, vb[] = {S("bb")}, vc[] = {S("c")};
    ms_store *probe = ms_store_new(NULL, 100);
    uint32_t pm = metric(probe, MS_COUNTER, "c_total", "", names, 1, NULL, 0, 0);
    uint64_t ca = charge_of(probe, pm, va, 1), cb = charge_of(probe, pm, vb, 1),
             cc = charge_of(probe, pm, vc, 1);
    ms_store_free(probe);
    CHECK(cc == cb - 1);
    ms_metric_info info;
    for (uint64_t over = 0; over <= 1; over++) {
        ms_store *s = ms_store_new_budget(NULL, 100, ca + cb - over);
        CHECK(ms_store_max_exposition_bytes(s) == ca + cb - over);
        uint32_t m = metric(s, MS_COUNTER, "c_total", "", names, 1, NULL, 0, 0);
        uint32_t a = series1(s, m, "aaaa");
        CHECK(a == 0 && ms_store_exposition_bytes(s) == ca);
        uint32_t b = series1(s, m, "bb"), c = series1(s, m, "c");
        CHECK(ms_metric_get(s, m, &info) == MS_OK && info.overflow_count == 0 &&
              info.budget_overflow_count == 1 && info.series_count == 2);
        CHECK(ms_store_exposition_bytes(s) == ms_store_max_exposition_bytes(s));
        ms_strref got;
        if (over == 0) { /* exactly at the budget: b fits, c (one byte) does not */
            CHECK(b == 1 && c == 2);
            CHECK(ms_series_label(s, c, 0, &got) == MS_OK && got.len == 12);
        } else { /* one byte over: b folds, the smaller c still fits exactly */
            CHECK(b == 1 && c == 2);
            CHECK(ms_series_label(s, b, 0, &got) == MS_OK && got.len == 12 &&
                  memcmp(got.ptr, "__overflow__", 12) == 0);
            CHECK(ms_series_label(s, c, 0, &got) == MS_OK && got.len == 1);
        }
        /* Existing series keep working; folds cost nothing; asking for the overflow
         * series by its labels is not a fold. */
        size_t mem = ms_store_memory(s);
        CHECK(series1(s, m, "aaaa") == a && ms_inc(s, a, 3) == MS_OK);
        CHECK(series1(s, m, "zz") == (over ? b : c));
        CHECK(series1(s, m, "__overflow__") == (over ? b : c));
        CHECK(ms_store_memory(s) == mem);
        CHECK(ms_metric_get(s, m, &info) == MS_OK && info.budget_overflow_count == 2);
        CHECK(ms_store_exposition_bytes(s) == ms_store_max_exposition_bytes(s));
        ms_store_free(s);
    }
    /* max_series is checked first: a fold of a full metric is its, not the budget's. */
    ms_store *s = ms_store_new_budget(NULL, 100, ca);
    uint32_t m = metric(s, MS_COUNTER, "c_total", "", names, 1, NULL, 0, 1);
    series1(s, m, "aaaa");
    series1(s, m, "bb");
    CHECK(ms_metric_get(s, m, &info) == MS_OK && info.overflow_count == 1 &&
          info.budget_overflow_count == 0);
    /* A budget of 1 byte: every labelled series folds, a labelless one is not charged. */
    ms_store_free(s);
    s = ms_store_new_budget(NULL, 100, 1);
    m = metric(s, MS_GAUGE, "g", "", names, 1, NULL, 0, 0);
    uint32_t u = metric(s, MS_GAUGE, "u", "", NULL, 0, NULL, 0, 0), sid;
    CHECK(series1(s, m, "x") == 0 && ms_series_get(s, u, NULL, 0, &sid) == MS_OK && sid == 1);
    CHECK(ms_metric_get(s, u, &info) == MS_OK && info.series_count == 1);
    CHECK(ms_metric_get(s, m, &info) == MS_OK && info.series_count == 0 &&
          info.budget_overflow_count == 1 && ms_store_exposition_bytes(s) == 0);
    ms_store_free(s);
}

static void test_budget_render(void) {
    ms_strref names[] = {S("k")};
    ms_store *s = ms_store_new_budget(NULL, 100, 60);
    uint32_t c = metric(s, MS_COUNTER, "c_total", "", names, 1, NULL, 0, 1);
    series1(s, c, "a"); /* `c_total{k="a"} ` + 20 + 1: 36 bytes */
    series1(s, c, "b"); /* folded by max_series */
    uint32_t g = metric(s, MS_GAUGE, "g", "", names, 1, NULL, 0, 0);
    series1(s, g, "b"); /* `g{k="b"} ` + 24 + 1: 34 bytes, 70 in all: folded */
    CHECK(ms_store_exposition_bytes(s) == 36);
    CHECK(render_equals(s, 0,
                        "# HELP c_total \n# TYPE c_total counter\n"
                        "c_total{k=\"a\"} 0\n"
                        "c_total{k=\"__overflow__\"} 0\n"
                        "# HELP g \n# TYPE g gauge\n"
                        "g{k=\"__overflow__\"} 0\n"
                        "# HELP meshstats_exposition_budget_overflow_total Label sets folded "
                        "into the overflow series because the store reached "
                        "max_exposition_bytes.\n"
                        "# TYPE meshstats_exposition_budget_overflow_total counter\n"
                        "meshstats_exposition_budget_overflow_total{metric=\"g\"} 1\n"
                        "# HELP meshstats_series_overflow_total Label sets folded into the "
                        "overflow series because the metric reached max_series.\n"
                        "# TYPE meshstats_series_overflow_total counter\n"
                        "meshstats_series_overflow_total{metric=\"c_total\"} 1\n"));
    CHECK(render_equals(s, 1,
                        "# HELP c \n# TYPE c counter\n"
                        "c_total{k=\"a\"} 0\n"
                        "c_total{k=\"__overflow__\"} 0\n"
                        "# HELP g \n# TYPE g gauge\n"
                        "g{k=\"__overflow__\"} 0\n"
                        "# HELP meshstats_exposition_budget_overflow Label sets folded "
                        "into the overflow series because the store reached "
                        "max_exposition_bytes.\n"
                        "# TYPE meshstats_exposition_budget_overflow counter\n"
                        "meshstats_exposition_budget_overflow_total{metric=\"g\"} 1\n"
                        "# HELP meshstats_series_overflow Label sets folded into the "
                        "overflow series because the metric reached max_series.\n"
                        "# TYPE meshstats_series_overflow counter\n"
                        "meshstats_series_overflow_total{metric=\"c_total\"} 1\n"
                        "# EOF\n"));
    /* The family's names are taken in both formats, as the max_series family's are. */
    static const char budget[] = "meshstats_exposition_budget_overflow_total";
    uint32_t id;
    CHECK(ms_metric_add(s, MS_GAUGE, budget, sizeof budget - 1, "", 0, NULL, 0, NULL, 0, 0,
                        &id) == MS_ERR_DUPLICATE_METRIC);
    CHECK(ms_metric_add(s, MS_GAUGE, budget, sizeof budget - 7, "", 0, NULL, 0, NULL, 0, 0,
                        &id) == MS_ERR_DUPLICATE_METRIC);
    ms_store_free(s);
}

/* Threads adding series of different sizes at once: the total charged is exactly the
 * sum of the charges of the series that exist, and never over the budget. */
#define BUDGET_THREADS 4
#define BUDGET_TRIES 3000

typedef struct budget_worker {
    ms_store *s;
    uint32_t metric;
    int thread;
} budget_worker;

static void *add_series(void *arg) {
    budget_worker *w = arg;
    char v[64];
    for (int i = 0; i < BUDGET_TRIES; i++) {
        /* 1 to 7 padding bytes, and a quote every 5th: charges differ, escapes count. */
        snprintf(v, sizeof v, "t%d-%d-%.*s%s", w->thread, i, i % 7 + 1, "xxxxxxx",
                 i % 5 ? "" : "\"");
        series1(w->s, w->metric, v);
    }
    return NULL;
}

static void test_budget_threads(void) {
    ms_strref names[] = {S("k")};
    double bounds[] = {1, 2};
    ms_store *s = ms_store_new_budget(NULL, 1000000, 200000);
    uint32_t m[] = {metric(s, MS_COUNTER, "c_total", "", names, 1, NULL, 0, 0),
                    metric(s, MS_HISTOGRAM, "h", "", names, 1, bounds, 2, 0)};
    budget_worker ws[BUDGET_THREADS];
    pthread_t t[BUDGET_THREADS];
    for (int i = 0; i < BUDGET_THREADS; i++) {
        ws[i] = (budget_worker){s, m[i % 2], i};
        CHECK(pthread_create(&t[i], NULL, add_series, &ws[i]) == 0);
    }
    for (int i = 0; i < BUDGET_THREADS; i++) pthread_join(t[i], NULL);
    uint64_t charged = 0, real = 0, folds = 0, overflow = 0;
    ms_metric_info info;
    for (uint32_t sid = 0; sid < ms_series_total(s); sid++) {
        uint32_t mid;
        ms_strref v;
        CHECK(ms_series_metric(s, sid, &mid) == MS_OK && ms_series_label(s, sid, 0, &v) == MS_OK);
        if (v.len == 12 && memcmp(v.ptr, "__overflow__", 12) == 0) {
            overflow++;
            continue;
        }
        charged += charge_of(s, mid, &v, 1);
        real++;
    }
    for (int i = 0; i < 2; i++) {
        CHECK(ms_metric_get(s, m[i], &info) == MS_OK && info.overflow_count == 0);
        folds += info.budget_overflow_count;
        real -= info.series_count;
    }
    CHECK(real == 0);
    CHECK(charged == ms_store_exposition_bytes(s) && charged <= 200000);
    CHECK(folds > 0 &&
          folds + ms_series_total(s) - overflow == (uint64_t)BUDGET_THREADS * BUDGET_TRIES);
    /* Full: at the last fold less was left than that label set's charge, and no label
     * set tried escapes to more than 24 bytes. */
    ms_strref widest[] = {S("xxxxxxxxxxxxxxxxxxxxxxxx")};
    CHECK(charged + charge_of(s, m[1], widest, 1) > 200000);
    ms_store_free(s);
}

/* ---- shared stores ------------------------------------------------------------------ */

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static ms_store *open_shared(const char *path) {
    ms_store *s = NULL;
    ms_file_problem problem = MS_FILE_OK;
    ms_status st = ms_store_open_shared(path, NULL, 100000, UINT64_MAX, (uint64_t)1 << 32, &s,
                                        &problem);
    CHECK(st == MS_OK && problem == MS_FILE_OK && s != NULL);
    return s;
}

static char *render_text(ms_store *s) {
    ms_buf b = {0};
    CHECK(ms_render(s, 0, &b) == MS_OK);
    char *text = malloc(b.len + 1);
    memcpy(text, b.data, b.len);
    text[b.len] = 0;
    ms_buf_free(s, &b);
    return text;
}

static void shared_path(char *out, size_t n, const char *what) {
    snprintf(out, n, "/tmp/meshstats-test-%d-%s", (int)getpid(), what);
    unlink(out);
}

static void test_shared_two_handles(void) {
    char path[128];
    shared_path(path, sizeof path, "two");
    ms_store *a = open_shared(path), *b = open_shared(path);
    CHECK(ms_store_is_shared(a) && ms_store_is_shared(b));
    ms_strref labels[] = {{"code", 4}};
    double bounds[] = {1, 10};
    uint32_t ca = metric(a, MS_COUNTER, "req_total", "Requests.", labels, 1, NULL, 0, 0);
    uint32_t cb = metric(b, MS_COUNTER, "req_total", "Requests.", labels, 1, NULL, 0, 0);
    uint32_t ha = metric(a, MS_HISTOGRAM, "dur", "", labels, 1, bounds, 2, 0);
    uint32_t hb = metric(b, MS_HISTOGRAM, "dur", "", labels, 1, bounds, 2, 0);
    CHECK(ca == cb && ha == hb && ca != ha);
    uint32_t other = 999;
    /* Same name, another definition: refused, as in a private store. */
    CHECK(ms_metric_add(b, MS_COUNTER, "req_total", 9, "Other.", 6, labels, 1, NULL, 0, 0,
                        &other) == MS_ERR_DUPLICATE_METRIC);
    CHECK(ms_metric_add(b, MS_GAUGE, "req", 3, "", 0, NULL, 0, NULL, 0, 0, &other) ==
          MS_ERR_DUPLICATE_METRIC);
    uint32_t s200 = series1(a, ca, "200");
    CHECK(series1(b, cb, "200") == s200);
    uint32_t s500 = series1(b, cb, "500");
    CHECK(series1(a, ca, "500") == s500 && s500 != s200);
    CHECK(ms_inc(a, s200, 3) == MS_OK && ms_inc(b, s200, 4) == MS_OK);
    uint64_t v = 0;
    CHECK(ms_counter_value(b, s200, &v) == MS_OK && v == 7);
    uint32_t h1 = series1(b, hb, "200");
    CHECK(ms_observe(a, h1, 5) == MS_OK && ms_observe(b, h1, 50) == MS_OK);
    /* Enough series to grow the file many times over; both handles see all of them. */
    char buf[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(buf, sizeof buf, "v%d", i);
        uint32_t id = series1(i % 2 ? a : b, ca, buf);
        CHECK(ms_inc(i % 2 ? b : a, id, 1) == MS_OK);
    }
    char *ta = render_text(a), *tb = render_text(b);
    CHECK(strcmp(ta, tb) == 0);
    CHECK(strstr(ta, "req_total{code=\"200\"} 7\n") && strstr(ta, "req_total{code=\"v4999\"} 1\n"));
    CHECK(strstr(ta, "dur_bucket{code=\"200\",le=\"10\"} 1\n"));
    ms_store_free(a);
    ms_store_free(b);
    /* Reopened: everything is still there, with the same ids. */
    ms_store *c = open_shared(path);
    char *tc = render_text(c);
    CHECK(strcmp(ta, tc) == 0);
    CHECK(series1(c, ca, "v17") == series1(c, 0, "v17"));
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && sb.st_size % MS_FILE_PAGE == 0);
    CHECK(ms_store_memory(c) <= (size_t)sb.st_size);
    free(ta);
    free(tb);
    free(tc);
    ms_store_free(c);
    unlink(path);
}

static void test_shared_bad_files(void) {
    char path[128];
    ms_store *s = NULL;
    ms_file_problem problem = MS_FILE_OK;
    shared_path(path, sizeof path, "bad");
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 1000; i++) fputs("not a store ", f);
    fclose(f);
    CHECK(ms_store_open_shared(path, NULL, 10, UINT64_MAX, 1 << 20, &s, &problem) == MS_ERR_FILE &&
          problem == MS_FILE_NOT_A_STORE);
    unlink(path);
    ms_store *good = open_shared(path);
    ms_store_free(good);
    CHECK(truncate(path, 100) == 0);
    CHECK(ms_store_open_shared(path, NULL, 10, UINT64_MAX, 1 << 20, &s, &problem) == MS_ERR_FILE &&
          problem == MS_FILE_TRUNCATED);
    unlink(path);
    good = open_shared(path);
    ms_store_free(good);
    int fd = open(path, O_RDWR);
    uint32_t version = 99;
    CHECK(pwrite(fd, &version, sizeof version, 8) == sizeof version);
    close(fd);
    CHECK(ms_store_open_shared(path, NULL, 10, UINT64_MAX, 1 << 20, &s, &problem) == MS_ERR_FILE &&
          problem == MS_FILE_VERSION);
    unlink(path);
    CHECK(ms_store_open_shared("/nonexistent-dir/x", NULL, 10, UINT64_MAX, 1 << 20, &s,
                               &problem) == MS_ERR_IO);
}

/* Processes (fork) adding the same and their own series while recording: ids agree,
 * nothing is lost. */
static void test_shared_processes(void) {
    char path[128];
    shared_path(path, sizeof path, "procs");
    ms_store *s = open_shared(path);
    ms_strref labels[] = {{"k", 1}};
    uint32_t c = metric(s, MS_COUNTER, "n_total", "", labels, 1, NULL, 0, 0);
    enum { KIDS = 4, EACH = 2000 };
    for (int k = 0; k < KIDS; k++) {
        if (fork() == 0) {
            failures = 0; /* this process' own checks */
            ms_store *mine = open_shared(path);
            uint32_t mc = metric(mine, MS_COUNTER, "n_total", "", labels, 1, NULL, 0, 0);
            char buf[32];
            for (int i = 0; i < EACH; i++) {
                snprintf(buf, sizeof buf, "s%d", i % 100); /* shared by all kids */
                ms_inc(mine, series1(mine, mc, buf), 1);
                snprintf(buf, sizeof buf, "kid%d-%d", k, i % 50); /* this kid's own */
                ms_inc(mine, series1(mine, mc, buf), 2);
            }
            /* The parent's handle, inherited through fork, works as well. */
            ms_inc(s, series1(s, c, "inherited"), 1);
            ms_store_free(mine);
            _exit(failures ? 1 : 0);
        }
    }
    int ok = 1;
    for (int k = 0; k < KIDS; k++) {
        int status = 0;
        wait(&status);
        ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    CHECK(ok);
    uint64_t total = 0, v;
    CHECK(ms_metric_count(s) == 1);
    for (uint32_t id = 0; id < ms_series_total(s); id++)
        if (ms_counter_value(s, id, &v) == MS_OK) total += v;
    CHECK(total == (uint64_t)KIDS * EACH * 3 + KIDS);
    ms_metric_info info;
    CHECK(ms_metric_get(s, c, &info) == MS_OK && info.series_count == 100 + KIDS * 50 + 1);
    CHECK(ms_series_total(s) == 100 + KIDS * 50 + 1);
    CHECK(ms_store_repairs(s) == 0);
    ms_store_free(s);
    unlink(path);
}

/* A writer that died mid-change leaves `writer` set and, at worst, a table without its
 * newest entries: the next holder rebuilds them, and finds every series again. */
static void test_shared_repair(void) {
    char path[128];
    shared_path(path, sizeof path, "repair");
    ms_store *s = open_shared(path);
    ms_strref labels[] = {{"k", 1}};
    uint32_t c = metric(s, MS_COUNTER, "n_total", "", labels, 1, NULL, 0, 1);
    uint32_t a = series1(s, c, "a");
    uint32_t over = series1(s, c, "b"); /* max_series 1: the overflow series */
    /* As if the holder died after publishing series but before its table entries and
     * counts: tables empty, counts zero, no overflow series recorded. */
    ms_head *h = s->h;
    h->series_table.cap = h->series_table.used = 0;
    h->string_table.cap = h->string_table.used = 0;
    h->labelset_table.cap = h->labelset_table.used = 0;
    ms_metric *m = (ms_metric *)ms_metric_at(s, c);
    atomic_store(&m->n_series, 0);
    atomic_store(&m->overflow_series, MS_NO_SERIES);
    h->overflow_string = MS_NO_SERIES;
    atomic_store(&h->writer, 12345);
    CHECK(series1(s, c, "a") == a);
    CHECK(series1(s, c, "zzz") == over);
    CHECK(ms_series_total(s) == 2 && ms_store_repairs(s) == 1);
    ms_metric_info info;
    CHECK(ms_metric_get(s, c, &info) == MS_OK && info.series_count == 1 &&
          info.overflow_count == 2);
    CHECK(atomic_load(&h->writer) == 0);
    ms_store_free(s);
    unlink(path);
}

/* Label values land in pool pages of 16 KiB: ones that do not fit a page's rest start the
 * next page, ones larger than a page live elsewhere; all read back, and a repair finds
 * them all again by walking the pools. */
static void test_pool_records(void) {
    char path[128];
    shared_path(path, sizeof path, "pool");
    ms_store *s = open_shared(path);
    ms_strref labels[] = {{"k", 1}};
    uint32_t c = metric(s, MS_COUNTER, "c_total", "", labels, 1, NULL, 0, 0);
    static char big[200000];
    size_t sizes[] = {10000, 10000, 0, 3, 16380, 16381, 100000, 7, 200000};
    uint32_t ids[9];
    for (int i = 0; i < 9; i++) {
        memset(big, 'a' + i, sizes[i]);
        ms_strref v[] = {{big, sizes[i]}};
        CHECK(ms_series_get(s, c, v, 1, &ids[i]) == MS_OK);
        CHECK(ms_inc(s, ids[i], (uint64_t)i + 1) == MS_OK);
    }
    for (int i = 0; i < 9; i++) {
        ms_strref got;
        CHECK(ms_series_label(s, ids[i], 0, &got) == MS_OK && got.len == sizes[i]);
        CHECK(got.len == 0 || (got.ptr[0] == 'a' + i && got.ptr[got.len - 1] == 'a' + i));
    }
    ms_head *h = s->h;
    CHECK(h->strings.count == 9); /* the values (names and help live apart) */
    h->string_table.cap = h->string_table.used = 0;
    h->labelset_table.cap = h->labelset_table.used = 0;
    h->series_table.cap = h->series_table.used = 0;
    atomic_store(&h->writer, 1);
    for (int i = 0; i < 9; i++) {
        memset(big, 'a' + i, sizes[i]);
        ms_strref v[] = {{big, sizes[i]}};
        uint32_t again = 999;
        CHECK(ms_series_get(s, c, v, 1, &again) == MS_OK && again == ids[i]);
    }
    CHECK(ms_store_repairs(s) == 1 && h->string_table.used == 9 && h->labelset_table.used == 9);
    ms_store_free(s);
    unlink(path);
}

int main(void) {
    test_format_double();
    test_render_buffer_is_sized_once();
    test_metric_validation();
    test_series_identity_and_sharing();
    test_overflow();
    test_recording();
    test_render();
    test_render_openmetrics_sums();
    test_render_counter_without_total();
    test_render_caller_buffer();
    test_memory_accounting();
    test_out_of_memory();
    test_threads();
    test_batch_partial_sums();
    test_batch_arrays();
    test_batch_paths();
    test_batch_bucket_table();
    test_batch_out_of_memory();
    test_expire_idle();
    test_expire_threads();
    test_budget_charge_is_the_widest_render();
    test_budget_boundary();
    test_budget_render();
    test_budget_threads();
    test_shared_two_handles();
    test_shared_bad_files();
    test_shared_processes();
    test_shared_repair();
    test_pool_records();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    puts("all store/render tests passed");
    return 0;
}
