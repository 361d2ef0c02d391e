/* The per-request fast path: a request's raw arguments -> the block of series ids that all
 * of its metrics record into, and one call that records the whole block.
 *
 * Plain C11, no Python. The stats engine keeps one table per set of peer labels. When the
 * request-scoped labels of its metrics read only what a request's key carries (response
 * code, gRPC status, response flags, protocol, host), equal keys always resolve to the same
 * series, so after the first request of a key the engine's label resolution is skipped:
 *
 *     ms_rtable *t = ms_rtable_new(NULL, 4096);
 *     ms_request_key key = {.code = 200, .grpc = MS_NO_GRPC, .protocol = {"http", 4}};
 *     ms_series_block block = {.n = 1, .e = {{sid, MS_COUNTER, MS_VALUE_ONE}}};
 *     ms_rtable_put(t, &key, &block);
 *     const ms_series_block *b = ms_rtable_find(t, &key);          // NULL: resolve in Python
 *     double values[MS_N_VALUES] = {1, 12, 420, 3100};     // no messages: 0, skipped
 *     ms_record_block(store, b, values);                    // counter + histograms
 *     ms_rtable_free(t);
 *
 * A table is not thread-safe (the engine calls it with the GIL held); recording into the
 * store is, as every store call is. Memory is bounded: at most max_entries keys, each with
 * strings of at most MS_RKEY_MAX_STRING bytes (longer keys are refused, MS_ERR_LIMIT).
 */
#ifndef MESHSTATS_REQUEST_TABLE_H
#define MESHSTATS_REQUEST_TABLE_H

#include <stdint.h>

#include "store.h"

/* What an entry records: which of the event's values (ms_record_block's values[]). */
typedef enum ms_value {
    MS_VALUE_ONE = 0,      /* 1 per request: istio_requests_total */
    MS_VALUE_DURATION = 1, /* NaN when the request had no completion time: skipped */
    MS_VALUE_REQUEST_BYTES = 2,
    MS_VALUE_RESPONSE_BYTES = 3,
    MS_VALUE_REQUEST_MESSAGES = 4, /* a gRPC call's message counts, recorded with it */
    MS_VALUE_RESPONSE_MESSAGES = 5,
    MS_N_VALUES = 6
} ms_value;

#define MS_BLOCK_MAX 8
#define MS_NO_GRPC INT64_MIN
#define MS_RKEY_MAX_STRING 1024

/* One series of the block; series MS_NO_SERIES: not created yet (the engine creates a
 * series on its first non-zero record, so a counter that only ever adds 0 never shows). */
typedef struct ms_block_entry {
    uint32_t series;
    uint8_t kind;  /* ms_kind */
    uint8_t value; /* ms_value */
} ms_block_entry;

typedef struct ms_series_block {
    uint32_t n;
    ms_block_entry e[MS_BLOCK_MAX];
} ms_series_block;

/* Flags are keyed as given: absent, Envoy's bit set, or a string ("UF,UH"). */
typedef enum ms_flags_kind { MS_FLAGS_NONE = 0, MS_FLAGS_BITS = 1, MS_FLAGS_TEXT = 2 } ms_flags_kind;

typedef struct ms_request_key {
    int64_t code;
    int64_t grpc; /* MS_NO_GRPC when absent */
    ms_flags_kind flags_kind;
    int64_t flags_bits;
    ms_strref flags_text;
    ms_strref protocol;
    ms_strref host; /* ptr NULL: no host */
} ms_request_key;

typedef struct ms_rtable ms_rtable;

/* allocator NULL: the C library's. max_entries >= 1. NULL on OOM or a bad argument. */
ms_rtable *ms_rtable_new(const ms_allocator *allocator, uint32_t max_entries);
void ms_rtable_free(ms_rtable *t);
uint32_t ms_rtable_len(const ms_rtable *t);
/* Bytes held, for the memory bound's tests. */
size_t ms_rtable_memory(const ms_rtable *t);

/* The block of this key, or NULL. The pointer is valid until the next put. */
const ms_series_block *ms_rtable_find(const ms_rtable *t, const ms_request_key *key);

/* Insert or replace. MS_ERR_LIMIT: the table is full or a key string is too long (nothing
 * changed: the caller simply keeps resolving that key the slow way); MS_ERR_INVALID_SAMPLE:
 * block->n > MS_BLOCK_MAX; MS_ERR_NOMEM. */
ms_status ms_rtable_put(ms_rtable *t, const ms_request_key *key, const ms_series_block *block);

/* Record one event into every series of the block: counters add values[e.value] (skipped
 * when 0), histograms observe it (skipped when NaN, which marks an absent duration).
 * Whole or not at all: before recording anything, MS_ERR_UNKNOWN_SERIES when an entry that
 * would record has no series yet or an id this store does not hold, MS_ERR_WRONG_KIND when
 * its id is a series of another kind, MS_ERR_INVALID_SAMPLE for a negative or non-integral
 * counter amount. */
ms_status ms_record_block(ms_store *s, const ms_series_block *block, const double values[MS_N_VALUES]);

/* ms_rtable_find and ms_record_block in one call, for the key's block: MS_OK, recorded;
 * MS_ERR_UNKNOWN_SERIES, nothing recorded, when the key is not in the table or its block
 * has no entry for a value whose bit (1 << ms_value) is in `needed`; otherwise what
 * ms_record_block says. Same results as those two calls, but after the block's first
 * successful record it records through pointers kept in the table (resolved again after a
 * put replaces the block): a live sidecar finds the store's directories and metric
 * records evicted from the caches on every request, and this skips them. `s` must be the
 * store the block's ids belong to, the same on every call. */
ms_status ms_rtable_record(ms_rtable *t, ms_store *s, const ms_request_key *key,
                           const double values[MS_N_VALUES], uint32_t needed);

#endif
