/* What the C unit tests share: CHECK (counts failures, goes on), S() for string literals as
 * ms_strref, and an allocator that knows every live byte and can be told to fail, for the
 * memory-accounting and out-of-memory tests. Each test file is its own program, so the
 * statics here are per program. */
#ifndef MESHSTATS_TESTING_H
#define MESHSTATS_TESTING_H

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

static _Atomic int failures;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

#define S(lit) {(lit), sizeof(lit) - 1}

static size_t live_bytes;
static long fail_after = -1; /* allocations left before one fails; -1: never */

static int should_fail(void) {
    if (fail_after < 0) return 0;
    return fail_after-- == 0;
}

static void *t_malloc(size_t n) {
    if (should_fail()) return NULL;
    size_t *p = malloc(n + 16);
    if (!p) return NULL;
    *p = n;
    live_bytes += n;
    return (char *)p + 16;
}

static void *t_calloc(size_t k, size_t n) {
    void *p = t_malloc(k * n);
    if (p) memset(p, 0, k * n);
    return p;
}

static void t_free(void *p) {
    if (!p) return;
    size_t *h = (size_t *)((char *)p - 16);
    live_bytes -= *h;
    free(h);
}

static void *t_realloc(void *p, size_t n) {
    if (!p) return t_malloc(n);
    if (should_fail()) return NULL;
    size_t *h = (size_t *)((char *)p - 16);
    size_t old = *h;
    size_t *q = realloc(h, n + 16);
    if (!q) return NULL;
    *q = n;
    live_bytes += n - old;
    return (char *)q + 16;
}

/* Unused by tests that allocate nothing of their own (no -Wunused warning for them). */
__attribute__((unused)) static const ms_allocator counting = {t_malloc, t_calloc, t_realloc,
                                                              t_free};

#endif
