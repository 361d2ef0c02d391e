/* Unit tests of h1_head.c: the grammar's edges, the ranges it gives, the caller's bounds. */
#include <stdio.h>
#include <string.h>

#include "h1_head.h"
#include "testing.h"

#define MAX 16

static h1_status parse(const char *head, int request, h1_head *out, h1_field *fields) {
    return h1_parse_head((const uint8_t *)head, strlen(head), request, out, fields, MAX);
}

static int range_is(const char *head, h1_range r, const char *want) {
    return r.len == strlen(want) && memcmp(head + r.at, want, r.len) == 0;
}

static void test_a_request_splits_into_ranges(void) {
    const char *head = "GET /a?b HTTP/1.1\r\nHost: x\r\nX-Y:  1 \t 2 \t\r\nEmpty:\r\n\r\n";
    h1_head out;
    h1_field f[MAX];
    CHECK(parse(head, 1, &out, f) == H1_OK);
    CHECK(range_is(head, out.part[0], "GET"));
    CHECK(range_is(head, out.part[1], "/a?b"));
    CHECK(range_is(head, out.part[2], "1.1"));
    CHECK(out.fields == 3);
    CHECK(range_is(head, f[0].name, "Host") && range_is(head, f[0].value, "x"));
    CHECK(range_is(head, f[1].name, "X-Y") && range_is(head, f[1].value, "1 \t 2"));
    CHECK(range_is(head, f[2].name, "Empty") && f[2].value.len == 0);
}

static void test_a_status_line_with_and_without_reason(void) {
    h1_head out;
    h1_field f[MAX];
    const char *with = "HTTP/1.0 404 Not \tFound\n\n";
    CHECK(parse(with, 0, &out, f) == H1_OK);
    CHECK(range_is(with, out.part[0], "1.0"));
    CHECK(range_is(with, out.part[1], "404"));
    CHECK(range_is(with, out.part[2], "Not \tFound"));
    CHECK(parse("HTTP/1.1 200\r\n\r\n", 0, &out, f) == H1_OK && out.part[2].len == 0);
    CHECK(parse("HTTP/1.1 200 \r\n\r\n", 0, &out, f) == H1_OK && out.part[2].len == 0);
    CHECK(parse("HTTP/1.1 20\r\n\r\n", 0, &out, f) == H1_BAD_START_LINE);
    CHECK(parse("HTTP/1.1 2000\r\n\r\n", 0, &out, f) == H1_BAD_START_LINE);
    CHECK(parse("HTTP/1.1 200 a\rb\r\n\r\n", 0, &out, f) == H1_BAD_START_LINE);
    CHECK(parse("HTTP/11 200\r\n\r\n", 0, &out, f) == H1_BAD_START_LINE);
}

static void test_request_lines_that_do_not_parse(void) {
    h1_head out;
    h1_field f[MAX];
    const char *bad[] = {
        "GET  / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1 \r\n\r\n", "GET /a b HTTP/1.1\r\n\r\n",
        "G(T / HTTP/1.1\r\n\r\n",  "GET / HTTP/1\r\n\r\n",    "GET / http/1.1\r\n\r\n",
        " GET / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\r\n\r\n", "GET \x7f HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK(parse(bad[i], 1, &out, f) == H1_BAD_START_LINE);
    }
}

static void test_field_lines_that_do_not_parse(void) {
    h1_head out;
    h1_field f[MAX];
    const char *bad[] = {
        "GET / HTTP/1.1\r\n folded\r\n\r\n", "GET / HTTP/1.1\r\nA : b\r\n\r\n",
        "GET / HTTP/1.1\r\n: b\r\n\r\n",      "GET / HTTP/1.1\r\nnocolon\r\n\r\n",
        "GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",  "GET / HTTP/1.1\r\nA: b\vc\r\n\r\n",
        "GET / HTTP/1.1\r\nA: b\fc\r\n\r\n",  "GET / HTTP/1.1\r\nA: b\r\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK(parse(bad[i], 1, &out, f) == H1_BAD_FIELD_LINE);
    }
    /* The field section is checked before the start line. */
    CHECK(parse("BAD\r\nA b\r\n\r\n", 1, &out, f) == H1_BAD_FIELD_LINE);
    CHECK(range_is("BAD\r\nA b\r\n\r\n", out.field_section, "A b\r\n"));
    CHECK(range_is("BAD\r\nA b\r\n\r\n", out.start_line, "BAD"));
    /* A NUL is refused in a value, wherever it is (strlen cannot hold one: explicit). */
    const char nul[] = "GET / HTTP/1.1\r\nA: b\0c\r\n\r\n";
    CHECK(h1_parse_head((const uint8_t *)nul, sizeof nul - 1, 1, &out, f, MAX) ==
          H1_BAD_FIELD_LINE);
}

static void test_obs_text_and_controls_are_values(void) {
    /* As h11's [^\x00\s]: any byte but NUL, LF, VT, FF, CR (and SP/HTAB only between). */
    const char *head = "GET / HTTP/1.1\r\nA: \x01\x7f\x80\xff\r\n\r\n";
    h1_head out;
    h1_field f[MAX];
    CHECK(parse(head, 1, &out, f) == H1_OK);
    CHECK(range_is(head, f[0].value, "\x01\x7f\x80\xff"));
}

static void test_the_head_must_end_with_a_blank_line(void) {
    h1_head out;
    h1_field f[MAX];
    CHECK(parse("GET / HTTP/1.1\r\n", 1, &out, f) == H1_BAD_HEAD);
    CHECK(parse("GET / HTTP/1.1\r\nA: b\r\n", 1, &out, f) == H1_BAD_HEAD);
    CHECK(parse("", 1, &out, f) == H1_BAD_HEAD);
    CHECK(parse("\n", 1, &out, f) == H1_BAD_HEAD);
    CHECK(parse("GET / HTTP/1.1\n\r\n", 1, &out, f) == H1_OK && out.fields == 0);
    CHECK(parse("GET / HTTP/1.1\n\n", 1, &out, f) == H1_OK && out.fields == 0);
}

static void test_the_callers_array_bounds_the_fields(void) {
    const char *head = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    h1_head out;
    h1_field f[3];
    CHECK(h1_max_fields((const uint8_t *)head, strlen(head)) == 5);
    CHECK(h1_parse_head((const uint8_t *)head, strlen(head), 1, &out, f, 2) ==
          H1_TOO_MANY_FIELDS);
    CHECK(h1_parse_head((const uint8_t *)head, strlen(head), 1, &out, f, 3) == H1_OK);
    CHECK(out.fields == 3);
    size_t count = 99;
    const char *section = "A: 1\nB: 2";
    CHECK(h1_parse_fields((const uint8_t *)section, 0, strlen(section), f, 3, &count) ==
          H1_BAD_FIELD_LINE); /* the last line has no line end */
    CHECK(count == 1);
}

int main(void) {
    test_a_request_splits_into_ranges();
    test_a_status_line_with_and_without_reason();
    test_request_lines_that_do_not_parse();
    test_field_lines_that_do_not_parse();
    test_obs_text_and_controls_are_values();
    test_the_head_must_end_with_a_blank_line();
    test_the_callers_array_bounds_the_fields();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    puts("h1_head: all tests passed");
    return 0;
}
