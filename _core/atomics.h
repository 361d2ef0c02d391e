/* The one place meshstats touches C11 atomics.
 *
 * Recording threads run with the GIL released, so every sample slot is an
 * _Atomic uint64_t: counters and bucket counts take a relaxed fetch_add (no
 * ordering is needed, only that no increment is lost); doubles (gauges, histogram
 * sums) live in the same slots as their bit pattern and are added with a CAS loop,
 * which stays exact for any interleaving because each add retries on a stale read.
 * Acquire/release pairs are used only to publish new structure (a series count, a
 * page directory) to lock-free readers.
 */
#ifndef MESHSTATS_ATOMICS_H
#define MESHSTATS_ATOMICS_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#if ATOMIC_LLONG_LOCK_FREE != 2
#error "meshstats needs lock-free 64-bit atomics"
#endif

typedef _Atomic uint64_t ms_atomic_u64;
typedef _Atomic uint32_t ms_atomic_u32;

static inline double ms_bits_double(uint64_t bits) {
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static inline uint64_t ms_double_bits(double d) {
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return bits;
}

static inline void ms_atomic_add_u64(ms_atomic_u64 *p, uint64_t n) {
    atomic_fetch_add_explicit(p, n, memory_order_relaxed);
}

static inline uint64_t ms_atomic_load_u64(const ms_atomic_u64 *p) {
    return atomic_load_explicit((ms_atomic_u64 *)p, memory_order_relaxed);
}

static inline void ms_atomic_store_u64(ms_atomic_u64 *p, uint64_t v) {
    atomic_store_explicit(p, v, memory_order_relaxed);
}

static inline double ms_atomic_load_double(const ms_atomic_u64 *p) {
    return ms_bits_double(ms_atomic_load_u64(p));
}

static inline void ms_atomic_store_double(ms_atomic_u64 *p, double v) {
    ms_atomic_store_u64(p, ms_double_bits(v));
}

/* The CAS compares bit patterns, so it terminates even when the sum is NaN. */
static inline void ms_atomic_add_double(ms_atomic_u64 *p, double v) {
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
    for (;;) {
        uint64_t sum = ms_double_bits(ms_bits_double(old) + v);
        if (atomic_compare_exchange_weak_explicit(p, &old, sum, memory_order_relaxed,
                                                  memory_order_relaxed))
            return;
    }
}

static inline uint32_t ms_load_acquire_u32(const ms_atomic_u32 *p) {
    return atomic_load_explicit((ms_atomic_u32 *)p, memory_order_acquire);
}

static inline void ms_store_release_u32(ms_atomic_u32 *p, uint32_t v) {
    atomic_store_explicit(p, v, memory_order_release);
}

#endif
