/* What the libFuzzer harnesses share: REQUIRE aborts on a broken invariant, so libFuzzer
 * records the input as a crash. */
#ifndef MESHSTATS_FUZZ_REQUIRE_H
#define MESHSTATS_FUZZ_REQUIRE_H

#include <stdio.h>
#include <stdlib.h>

#define REQUIRE(cond)                                                          \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "fuzz invariant failed at %d: %s\n", __LINE__, #cond); \
            abort();                                                           \
        }                                                                      \
    } while (0)

#endif
