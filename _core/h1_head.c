/* HTTP/1.1 heads: see h1_head.h for the grammar and what is left to the caller. */
#include "h1_head.h"

#include <string.h>

/* tchar (RFC 9110 §5.6.2): ! # $ % & ' * + - . ^ _ ` | ~ DIGIT ALPHA */
static int is_tchar(uint8_t c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return 1;
    }
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* SP, HTAB or VCHAR-OBS: what a field value and a reason phrase may hold. */
static int is_value_byte(uint8_t c) {
    return c != 0 && (c < 0x0A || c > 0x0D);
}

static int is_space(uint8_t c) {
    return c == ' ' || c == '\t';
}

static int is_digit(uint8_t c) {
    return c >= '0' && c <= '9';
}

size_t h1_max_fields(const uint8_t *head, size_t len) {
    size_t lines = 0;
    const uint8_t *p = head, *end = head + len;
    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        lines++;
        p++;
    }
    return lines;
}

/* "HTTP/" DIGIT "." DIGIT at line[at..], 8 bytes, within n. */
static int is_version(const uint8_t *line, size_t n, size_t at) {
    return at + 8 <= n && memcmp(line + at, "HTTP/", 5) == 0 && is_digit(line[at + 5]) &&
           line[at + 6] == '.' && is_digit(line[at + 7]);
}

static h1_status request_line(const uint8_t *line, size_t n, h1_head *out) {
    size_t i = 0;
    while (i < n && is_tchar(line[i])) {
        i++;
    }
    if (i == 0 || i >= n || line[i] != ' ') {
        return H1_BAD_START_LINE;
    }
    out->part[0] = (h1_range){0, i};
    size_t target = ++i;
    while (i < n && line[i] >= 0x21 && line[i] <= 0x7E) {
        i++;
    }
    if (i == target || i >= n || line[i] != ' ') {
        return H1_BAD_START_LINE;
    }
    out->part[1] = (h1_range){target, i - target};
    i++;
    if (!is_version(line, n, i) || i + 8 != n) {
        return H1_BAD_START_LINE;
    }
    out->part[2] = (h1_range){i + 5, 3};
    return H1_OK;
}

static h1_status status_line(const uint8_t *line, size_t n, h1_head *out) {
    if (!is_version(line, n, 0) || n < 12 || line[8] != ' ' || !is_digit(line[9]) ||
        !is_digit(line[10]) || !is_digit(line[11])) {
        return H1_BAD_START_LINE;
    }
    out->part[0] = (h1_range){5, 3};
    out->part[1] = (h1_range){9, 3};
    out->part[2] = (h1_range){n, 0};
    if (n == 12) {
        return H1_OK;
    }
    if (line[12] != ' ') {
        return H1_BAD_START_LINE;
    }
    for (size_t i = 13; i < n; i++) {
        if (!is_value_byte(line[i])) {
            return H1_BAD_START_LINE;
        }
    }
    out->part[2] = (h1_range){13, n - 13};
    return H1_OK;
}

/* One field line, [at, lf) (lf: its LF), into *field. */
static h1_status field_line(const uint8_t *head, size_t at, size_t lf, h1_field *field) {
    size_t end = lf;
    if (end > at && head[end - 1] == '\r') {
        end--; /* the line's own CR: CRLF */
    }
    size_t i = at;
    while (i < end && is_tchar(head[i])) {
        i++;
    }
    if (i == at || i >= end || head[i] != ':') {
        return H1_BAD_FIELD_LINE;
    }
    field->name = (h1_range){at, i - at};
    size_t value = i + 1;
    for (size_t j = value; j < end; j++) {
        if (!is_value_byte(head[j])) {
            return H1_BAD_FIELD_LINE;
        }
    }
    while (value < end && is_space(head[value])) {
        value++;
    }
    while (end > value && is_space(head[end - 1])) {
        end--;
    }
    field->value = (h1_range){value, end - value};
    return H1_OK;
}

h1_status h1_parse_fields(const uint8_t *buf, size_t at, size_t end, h1_field *fields,
                          size_t max_fields, size_t *count) {
    *count = 0;
    while (at < end) {
        const uint8_t *lf = memchr(buf + at, '\n', end - at);
        if (lf == NULL) {
            return H1_BAD_FIELD_LINE; /* the last line has no line end */
        }
        if (*count == max_fields) {
            return H1_TOO_MANY_FIELDS;
        }
        size_t lf_at = (size_t)(lf - buf);
        if (field_line(buf, at, lf_at, &fields[*count]) != H1_OK) {
            return H1_BAD_FIELD_LINE;
        }
        ++*count;
        at = lf_at + 1;
    }
    return H1_OK;
}

h1_status h1_parse_head(const uint8_t *head, size_t len, int request, h1_head *out,
                        h1_field *fields, size_t max_fields) {
    memset(out, 0, sizeof *out);
    const uint8_t *first_lf = len ? memchr(head, '\n', len) : NULL;
    if (len < 2 || first_lf == NULL || head[len - 1] != '\n') {
        return H1_BAD_HEAD;
    }
    /* The blank line that ends the head: LF LF, or LF CR LF. */
    size_t blank = head[len - 2] == '\n' ? 1 : 2;
    if (blank == 2 && (len < 3 || head[len - 2] != '\r' || head[len - 3] != '\n')) {
        return H1_BAD_HEAD;
    }
    size_t first_end = (size_t)(first_lf - head);
    size_t line_len = first_end;
    if (line_len > 0 && head[line_len - 1] == '\r') {
        line_len--;
    }
    out->start_line = (h1_range){0, line_len};
    size_t section = first_end + 1;
    size_t section_end = len - blank;
    if (section_end < section) {
        section_end = section; /* the start line's LF is the blank line's first */
    }
    out->field_section = (h1_range){section, section_end - section};

    h1_status status = h1_parse_fields(head, section, section_end, fields, max_fields,
                                       &out->fields);
    if (status != H1_OK) {
        return status;
    }
    return request ? request_line(head, line_len, out) : status_line(head, line_len, out);
}
