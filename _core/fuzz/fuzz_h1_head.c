/*
 * libFuzzer harness for the HTTP/1.1 head parser (build: make -C _core/fuzz).
 *
 * Each input is parsed as a request head and as a response head (and, of its field section,
 * as a trailer section). What parses must hold the grammar h1_head.h promises: every range
 * inside the input and in order, names of token characters, values without a forbidden byte
 * or surrounding whitespace, never more fields than h1_max_fields; the field section parsed
 * alone gives the same fields. Any break aborts, so libFuzzer records it as a crash.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "h1_head.h"
#include "require.h"

static int tchar(uint8_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static void check_fields(const uint8_t *data, size_t size, const h1_field *f, size_t n) {
    size_t last = 0;
    for (size_t i = 0; i < n; i++) {
        const h1_range *name = &f[i].name, *value = &f[i].value;
        REQUIRE(name->len > 0 && name->at >= last && name->at + name->len <= size);
        REQUIRE(value->at > name->at + name->len && value->at + value->len <= size);
        REQUIRE(data[name->at + name->len] == ':');
        for (size_t j = 0; j < name->len; j++) REQUIRE(tchar(data[name->at + j]));
        for (size_t j = 0; j < value->len; j++) {
            uint8_t c = data[value->at + j];
            REQUIRE(c != 0 && (c < 0x0A || c > 0x0D));
        }
        if (value->len) {
            REQUIRE(data[value->at] != ' ' && data[value->at] != '\t');
            uint8_t end = data[value->at + value->len - 1];
            REQUIRE(end != ' ' && end != '\t');
        }
        last = value->at + value->len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t room = h1_max_fields(data, size);
    h1_field *fields = malloc((room ? room : 1) * sizeof *fields);
    h1_field *again = malloc((room ? room : 1) * sizeof *again);
    REQUIRE(fields && again);
    for (int request = 0; request <= 1; request++) {
        h1_head head;
        h1_status status = h1_parse_head(data, size, request, &head, fields, room);
        REQUIRE(status != H1_TOO_MANY_FIELDS); /* room is enough by h1_max_fields */
        if (status == H1_BAD_HEAD) continue;
        REQUIRE(head.start_line.at + head.start_line.len <= size);
        REQUIRE(head.field_section.at + head.field_section.len <= size);
        if (status != H1_OK) continue;
        REQUIRE(head.fields <= room);
        check_fields(data, size, fields, head.fields);
        for (int p = 0; p < 3; p++) REQUIRE(head.part[p].at + head.part[p].len <= size);
        size_t count = 0;
        REQUIRE(h1_parse_fields(data, head.field_section.at,
                                head.field_section.at + head.field_section.len, again, room,
                                &count) == H1_OK);
        REQUIRE(count == head.fields && memcmp(again, fields, count * sizeof *fields) == 0);
    }
    free(fields);
    free(again);
    return 0;
}
