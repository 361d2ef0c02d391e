/* Prometheus text 0.0.4 and OpenMetrics 1.0 exposition of a store (docs/store.md,
 * "Exposition"). Lock-free: it may run while other threads record or add series, and
 * shows each series as it was when read.
 *
 *     ms_buf out = {0};
 *     if (ms_render(store, 0, &out) == MS_OK) fwrite(out.data, 1, out.len, stdout);
 *     ms_buf_free(store, &out);
 */
#ifndef MESHSTATS_RENDER_H
#define MESHSTATS_RENDER_H

#include <stddef.h>

#include "store.h"

/* grow NULL: the buffer comes from the store's allocator and counts in
 * ms_store_memory until ms_buf_free. Else the caller owns it: grow(ctx, cap) must
 * return the buffer resized to cap bytes, contents kept (or NULL: out of memory), so
 * the caller can render straight into memory of its own (the Python glue grows a
 * bytes object) and nothing is copied at the end. */
typedef struct ms_buf {
    char *data;
    size_t len, cap;
    char *(*grow)(void *ctx, size_t cap);
    void *ctx;
} ms_buf;

/* Appends to *out (which may start empty). The first reserve is sized from the
 * store's previous render, so a steady scrape never grows the buffer. */
ms_status ms_render(ms_store *s, int openmetrics, ms_buf *out);
/* Frees a store-allocated buffer; for a caller-owned one only forgets it. */
void ms_buf_free(ms_store *s, ms_buf *b);

#endif
