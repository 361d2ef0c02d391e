/* Unit tests of request_table.c: keys, bounds, the block's all-or-nothing recording. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "request_table.h"
#include "store.h"
#include "testing.h"

static ms_request_key key(int64_t code, const char *host) {
    ms_request_key k = {.code = code, .grpc = MS_NO_GRPC, .protocol = S("http")};
    if (host) k.host = (ms_strref){host, strlen(host)};
    return k;
}

static ms_series_block one_counter(uint32_t sid) {
    ms_series_block b = {.n = 1, .e = {{sid, MS_COUNTER, MS_VALUE_ONE}}};
    return b;
}

static void test_keys_tell_apart_every_field(void) {
    ms_rtable *t = ms_rtable_new(&counting, 100);
    ms_request_key keys[10];
    keys[0] = key(200, "reviews:9080");
    keys[1] = key(201, "reviews:9080");
    keys[2] = key(200, "reviews:908");
    keys[3] = key(200, NULL);
    keys[4] = key(200, ""); /* an empty host is not an absent one */
    keys[5] = key(200, "reviews:9080");
    keys[5].grpc = 0;
    keys[6] = key(200, "reviews:9080");
    keys[6].flags_kind = MS_FLAGS_BITS;
    keys[6].flags_bits = 0x20;
    keys[7] = key(200, "reviews:9080");
    keys[7].flags_kind = MS_FLAGS_TEXT;
    keys[7].flags_text = (ms_strref)S("UF");
    keys[8] = key(200, "reviews:9080");
    keys[8].protocol = (ms_strref)S("grpc");
    keys[9] = key(200, "reviews:9080");
    keys[9].flags_kind = MS_FLAGS_BITS; /* bits 0: still not "no flags given" */
    for (uint32_t i = 0; i < 10; i++) {
        ms_series_block b = one_counter(i);
        CHECK(ms_rtable_put(t, &keys[i], &b) == MS_OK);
    }
    CHECK(ms_rtable_len(t) == 10);
    for (uint32_t i = 0; i < 10; i++) {
        /* A copy of the key in other memory finds the same entry. */
        char host[32];
        ms_request_key probe = keys[i];
        if (probe.host.ptr) {
            memcpy(host, probe.host.ptr, probe.host.len);
            probe.host.ptr = host;
        }
        const ms_series_block *b = ms_rtable_find(t, &probe);
        CHECK(b != NULL && b->n == 1 && b->e[0].series == i);
    }
    ms_request_key absent = key(404, "reviews:9080");
    CHECK(ms_rtable_find(t, &absent) == NULL);
    ms_rtable_free(t);
    CHECK(live_bytes == 0);
}

static void test_put_replaces_and_grows(void) {
    ms_rtable *t = ms_rtable_new(&counting, 1000);
    char host[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(host, sizeof host, "h%d", i);
        ms_request_key k = key(i % 7, host);
        ms_series_block b = one_counter((uint32_t)i);
        CHECK(ms_rtable_put(t, &k, &b) == MS_OK);
    }
    CHECK(ms_rtable_len(t) == 1000);
    size_t memory = ms_rtable_memory(t);
    CHECK(memory == live_bytes);
    snprintf(host, sizeof host, "h%d", 500);
    ms_request_key k = key(500 % 7, host);
    ms_series_block b = one_counter(77);
    CHECK(ms_rtable_put(t, &k, &b) == MS_OK); /* replace: no new entry */
    CHECK(ms_rtable_len(t) == 1000 && ms_rtable_memory(t) == memory);
    CHECK(ms_rtable_find(t, &k)->e[0].series == 77);
    for (int i = 0; i < 1000; i++) {
        snprintf(host, sizeof host, "h%d", i);
        ms_request_key q = key(i % 7, host);
        const ms_series_block *found = ms_rtable_find(t, &q);
        CHECK(found && found->e[0].series == (i == 500 ? 77u : (uint32_t)i));
    }
    ms_rtable_free(t);
    CHECK(live_bytes == 0);
}

static void test_bounds(void) {
    CHECK(ms_rtable_new(NULL, 0) == NULL);
    ms_rtable *t = ms_rtable_new(&counting, 3);
    ms_series_block b = one_counter(1);
    for (int i = 0; i < 3; i++) {
        ms_request_key k = key(i, "h");
        CHECK(ms_rtable_put(t, &k, &b) == MS_OK);
    }
    ms_request_key k = key(3, "h");
    CHECK(ms_rtable_put(t, &k, &b) == MS_ERR_LIMIT); /* full: nothing added */
    CHECK(ms_rtable_len(t) == 3 && ms_rtable_find(t, &k) == NULL);
    ms_request_key again = key(2, "h");
    CHECK(ms_rtable_put(t, &again, &b) == MS_OK); /* a known key still updates */

    static char big[MS_RKEY_MAX_STRING + 2];
    memset(big, 'a', sizeof big - 1);
    ms_rtable *u = ms_rtable_new(&counting, 10);
    ms_request_key long_host = key(200, big);
    CHECK(ms_rtable_put(u, &long_host, &b) == MS_ERR_LIMIT);
    big[MS_RKEY_MAX_STRING] = '\0';
    long_host = key(200, big); /* exactly the limit: kept */
    CHECK(ms_rtable_put(u, &long_host, &b) == MS_OK);
    ms_series_block too_big = {.n = MS_BLOCK_MAX + 1};
    CHECK(ms_rtable_put(u, &k, &too_big) == MS_ERR_INVALID_SAMPLE);

    /* Out of memory at every step of a put: an error, nothing leaked, table unchanged. */
    for (long at = 0; at < 4; at++) {
        ms_request_key fresh = key(999 + at, "fresh-host"); /* a new key each time */
        uint32_t before = ms_rtable_len(u);
        fail_after = at;
        ms_status st = ms_rtable_put(u, &fresh, &b);
        fail_after = -1;
        CHECK(st == MS_OK || st == MS_ERR_NOMEM);
        CHECK(ms_rtable_len(u) == before + (st == MS_OK));
        CHECK(ms_rtable_memory(u) + ms_rtable_memory(t) == live_bytes);
    }
    /* Out of memory while growing (the 9th key of 16 slots): the key's copy is freed. */
    for (int i = 0; ms_rtable_len(u) < 8; i++) {
        ms_request_key fill = key(2000 + i, "fill");
        CHECK(ms_rtable_put(u, &fill, &b) == MS_OK);
    }
    ms_request_key ninth = key(3000, "ninth");
    fail_after = 1; /* the key's copy succeeds, the bigger slot array does not */
    CHECK(ms_rtable_put(u, &ninth, &b) == MS_ERR_NOMEM);
    fail_after = -1;
    CHECK(ms_rtable_len(u) == 8 && ms_rtable_find(u, &ninth) == NULL);
    CHECK(ms_rtable_memory(u) + ms_rtable_memory(t) == live_bytes);
    CHECK(ms_rtable_put(u, &ninth, &b) == MS_OK && ms_rtable_find(u, &ninth) != NULL);
    ms_rtable_free(t);
    ms_rtable_free(u);
    CHECK(live_bytes == 0);
}

static void test_record_block(void) {
    ms_store *s = ms_store_new(NULL, 100);
    uint32_t c, h, sc, sh;
    ms_strref names[] = {S("k")}, values[] = {S("v")};
    double bounds[] = {10, 100};
    CHECK(ms_metric_add(s, MS_COUNTER, "r_total", 7, "", 0, names, 1, NULL, 0, 0, &c) == MS_OK);
    CHECK(ms_metric_add(s, MS_HISTOGRAM, "d", 1, "", 0, names, 1, bounds, 2, 0, &h) == MS_OK);
    CHECK(ms_series_get(s, c, values, 1, &sc) == MS_OK);
    CHECK(ms_series_get(s, h, values, 1, &sh) == MS_OK);
    ms_series_block b = {.n = 3,
                  .e = {{sc, MS_COUNTER, MS_VALUE_ONE},
                        {sh, MS_HISTOGRAM, MS_VALUE_DURATION},
                        {MS_NO_SERIES, MS_HISTOGRAM, MS_VALUE_REQUEST_BYTES}}};
    double ev[MS_N_VALUES] = {1, 12, 420, 3100};
    CHECK(ms_record_block(s, &b, ev) == MS_ERR_UNKNOWN_SERIES); /* needs request bytes */
    uint64_t n = 99, counts[3];
    double sum;
    CHECK(ms_counter_value(s, sc, &n) == MS_OK && n == 0); /* nothing recorded */
    ev[MS_VALUE_REQUEST_BYTES] = NAN; /* absent: that entry is skipped */
    CHECK(ms_record_block(s, &b, ev) == MS_OK);
    ev[MS_VALUE_DURATION] = NAN;
    CHECK(ms_record_block(s, &b, ev) == MS_OK); /* no duration: counted, not observed */
    CHECK(ms_counter_value(s, sc, &n) == MS_OK && n == 2);
    CHECK(ms_histogram_value(s, sh, counts, &sum) == MS_OK);
    CHECK(counts[0] == 0 && counts[1] == 1 && counts[2] == 0 && sum == 12);
    double bad[MS_N_VALUES] = {1.5, 1, NAN, 0};
    CHECK(ms_record_block(s, &b, bad) == MS_ERR_INVALID_SAMPLE);
    bad[0] = -1;
    CHECK(ms_record_block(s, &b, bad) == MS_ERR_INVALID_SAMPLE);
    bad[0] = 0; /* a counter adding 0 is skipped, even without a series */
    ms_series_block lazy = {.n = 1, .e = {{MS_NO_SERIES, MS_COUNTER, MS_VALUE_ONE}}};
    CHECK(ms_record_block(s, &lazy, bad) == MS_OK);
    CHECK(ms_counter_value(s, sc, &n) == MS_OK && n == 2);
    ms_series_block wrong = {.n = 1, .e = {{sh, MS_COUNTER, MS_VALUE_ONE}}};
    CHECK(ms_record_block(s, &wrong, ev) == MS_ERR_WRONG_KIND);
    /* a gRPC call's message counts ride in the same block: counted, 0 skipped */
    ms_series_block grpc = {.n = 2,
                     .e = {{sc, MS_COUNTER, MS_VALUE_REQUEST_MESSAGES},
                           {MS_NO_SERIES, MS_COUNTER, MS_VALUE_RESPONSE_MESSAGES}}};
    double call[MS_N_VALUES] = {1, 3, 10, 10, 2, 0};
    CHECK(ms_record_block(s, &grpc, call) == MS_OK);
    CHECK(ms_counter_value(s, sc, &n) == MS_OK && n == 4);
    call[MS_VALUE_RESPONSE_MESSAGES] = 1; /* now that one needs its series */
    CHECK(ms_record_block(s, &grpc, call) == MS_ERR_UNKNOWN_SERIES);
    ms_store_free(s);
}

/* ms_rtable_record: what ms_rtable_find + ms_record_block give, on every call, including
 * those that go through the block's resolved pointers after its first record. */
static void test_record_through_the_table(void) {
    ms_store *s = ms_store_new(NULL, 100);
    ms_rtable *t = ms_rtable_new(&counting, 10);
    uint32_t c, h, sc, sh, sh2;
    ms_strref names[] = {S("k")}, v1[] = {S("v")}, v2[] = {S("w")};
    double bounds[] = {10, 100};
    CHECK(ms_metric_add(s, MS_COUNTER, "r_total", 7, "", 0, names, 1, NULL, 0, 0, &c) == MS_OK);
    CHECK(ms_metric_add(s, MS_HISTOGRAM, "d", 1, "", 0, names, 1, bounds, 2, 0, &h) == MS_OK);
    CHECK(ms_series_get(s, c, v1, 1, &sc) == MS_OK);
    CHECK(ms_series_get(s, h, v1, 1, &sh) == MS_OK);
    CHECK(ms_series_get(s, h, v2, 1, &sh2) == MS_OK);
    ms_request_key k = key(200, "reviews:9080"), other = key(404, NULL);
    ms_series_block b = {.n = 2,
                         .e = {{sc, MS_COUNTER, MS_VALUE_ONE},
                               {sh, MS_HISTOGRAM, MS_VALUE_DURATION}}};
    double ev[MS_N_VALUES] = {1, 12, 420, 3100};
    CHECK(ms_rtable_record(t, s, &k, ev, 0) == MS_ERR_UNKNOWN_SERIES); /* no key yet */
    CHECK(ms_rtable_put(t, &k, &b) == MS_OK);
    CHECK(ms_rtable_record(t, s, &other, ev, 0) == MS_ERR_UNKNOWN_SERIES);
    /* a message count the block has no entry for: refused, nothing recorded */
    CHECK(ms_rtable_record(t, s, &k, ev, 1u << MS_VALUE_REQUEST_MESSAGES) ==
          MS_ERR_UNKNOWN_SERIES);
    uint64_t n = 99, counts[3];
    double sum;
    CHECK(ms_counter_value(s, sc, &n) == MS_OK && n == 0);
    for (int i = 0; i < 3; i++) { /* the first resolves, the next two use it */
        ev[MS_VALUE_DURATION] = i == 1 ? NAN : 50.0 * i + 5; /* 5, skipped, 105 */
        CHECK(ms_rtable_record(t, s, &k, ev, 0) == MS_OK);
    }
    CHECK(ms_counter_value(s, sc, &n) == MS_OK && n == 3);
    CHECK(ms_histogram_value(s, sh, counts, &sum) == MS_OK);
    CHECK(counts[0] == 1 && counts[1] == 0 && counts[2] == 1 && sum == 110);
    /* the same checks as ms_record_block, whole block or nothing */
    double bad[MS_N_VALUES] = {1.5, 1, NAN, 0};
    CHECK(ms_rtable_record(t, s, &k, bad, 0) == MS_ERR_INVALID_SAMPLE);
    bad[0] = -1;
    CHECK(ms_rtable_record(t, s, &k, bad, 0) == MS_ERR_INVALID_SAMPLE);
    CHECK(ms_counter_value(s, sc, &n) == MS_OK && n == 3);
    CHECK(ms_histogram_value(s, sh, counts, &sum) == MS_OK && sum == 110);
    /* a record marks the series active again after an expiry sweep hid it */
    CHECK(ms_expire_idle(s) == 0); /* every series was active: now not */
    CHECK(ms_expire_idle(s) == 3); /* hidden */
    int visible = 1;
    CHECK(ms_series_visible(s, sc, &visible) == MS_OK && !visible);
    ev[MS_VALUE_DURATION] = 1;
    CHECK(ms_rtable_record(t, s, &k, ev, 0) == MS_OK);
    CHECK(ms_series_visible(s, sc, &visible) == MS_OK && visible);
    CHECK(ms_series_visible(s, sh, &visible) == MS_OK && visible);
    CHECK(ms_series_visible(s, sh2, &visible) == MS_OK && !visible);
    /* a block put over it is resolved again: the new series gets the next record */
    b.e[1].series = sh2;
    CHECK(ms_rtable_put(t, &k, &b) == MS_OK);
    ev[MS_VALUE_DURATION] = 1000;
    CHECK(ms_rtable_record(t, s, &k, ev, 0) == MS_OK);
    CHECK(ms_rtable_record(t, s, &k, ev, 0) == MS_OK);
    CHECK(ms_histogram_value(s, sh2, counts, &sum) == MS_OK);
    CHECK(counts[2] == 2 && sum == 2000);
    CHECK(ms_histogram_value(s, sh, counts, &sum) == MS_OK && sum == 111);
    /* an id of the wrong kind, skipped by the first record (no duration), is still
     * refused by every later one that needs it, as ms_record_block refuses it */
    ms_series_block wrong = {.n = 2,
                             .e = {{sc, MS_COUNTER, MS_VALUE_ONE},
                                   {sc, MS_HISTOGRAM, MS_VALUE_DURATION}}};
    CHECK(ms_rtable_put(t, &other, &wrong) == MS_OK);
    ev[MS_VALUE_DURATION] = NAN;
    CHECK(ms_rtable_record(t, s, &other, ev, 0) == MS_OK);
    ev[MS_VALUE_DURATION] = 3;
    for (int i = 0; i < 2; i++) CHECK(ms_rtable_record(t, s, &other, ev, 0) == MS_ERR_WRONG_KIND);
    /* the table grown under the last key found: still found, in its new place */
    char host[16];
    for (int i = 0; i < 6; i++) {
        snprintf(host, sizeof host, "h%d", i);
        ms_request_key more = key(200, host);
        CHECK(ms_rtable_put(t, &more, &b) == MS_OK);
    }
    CHECK(ms_rtable_record(t, s, &other, ev, 0) == MS_ERR_WRONG_KIND);
    CHECK(ms_rtable_record(t, s, &k, ev, 0) == MS_OK);
    /* 7 records with k, 4 with other, of which only the first (no duration) recorded:
     * a refused block records nothing, its counter entry included (request_table.h) */
    CHECK(ms_counter_value(s, sc, &n) == MS_OK && n == 8);
    ms_rtable_free(t);
    ms_store_free(s);
    CHECK(live_bytes == 0);
}

int main(void) {
    test_keys_tell_apart_every_field();
    test_put_replaces_and_grows();
    test_bounds();
    test_record_block();
    test_record_through_the_table();
    if (failures) {
        fprintf(stderr, "%d request_table checks failed\n", failures);
        return 1;
    }
    puts("all request_table tests passed");
    return 0;
}
