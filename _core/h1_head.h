/*
 * HTTP/1.1 message heads for the sidecar's relay: splits a complete head (start line, field
 * lines, blank line) into byte ranges and checks it against RFC 9112's grammar as h11 reads
 * it. Plain C11, no Python.h, so it can be unit tested and fuzzed on its own.
 *
 * It decides nothing about the message: framing, keep-alive, Host and the smuggling checks
 * stay in the codec's Python (meshstats/proxy/h1.py), the one place both backends share.
 * This is the part that cost most there and is pure grammar: a regular expression over every
 * byte of the field section, then a split of each line.
 *
 * The grammar, byte for byte the expressions of h1.py (and h11):
 *   request line  token SP 1*(%x21-7E) SP "HTTP/" DIGIT "." DIGIT
 *   status line   "HTTP/" DIGIT "." DIGIT SP 3DIGIT [ SP *(SP / HTAB / VCHAR-OBS) ]
 *   field line    token ":" *(SP / HTAB / VCHAR-OBS), each line ending in LF or CRLF
 * where VCHAR-OBS is any byte but NUL, HTAB..CR and SP (Python's [^\x00\s] over bytes), so a
 * field value may hold any byte but NUL, LF, VT, FF and CR. The start line's own CR (one) is
 * not part of it. A value is its line after the colon without leading and trailing SP/HTAB.
 */
#ifndef MESHSTATS_H1_HEAD_H
#define MESHSTATS_H1_HEAD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum h1_status {
    H1_OK = 0,
    H1_BAD_FIELD_LINE, /* a field line does not parse (checked before the start line) */
    H1_BAD_START_LINE, /* the request line or status line does not parse */
    H1_TOO_MANY_FIELDS, /* more field lines than the caller's array holds */
    H1_BAD_HEAD, /* not a head: it does not end with LF [CR] LF */
} h1_status;

typedef struct h1_range {
    size_t at, len;
} h1_range;

typedef struct h1_field {
    h1_range name, value;
} h1_field;

typedef struct h1_head {
    /* A request's method, target and version; a response's version, status digits and
     * reason (len 0 when it has none). */
    h1_range part[3];
    size_t fields; /* how many of the caller's h1_field were filled */
    h1_range start_line; /* without its line end: for the caller's error message */
    h1_range field_section; /* the field lines with their line ends: likewise */
} h1_head;

/* How many field lines a head can hold at most (its LFs): a size for h1_parse_head's array. */
size_t h1_max_fields(const uint8_t *head, size_t len);

/*
 * Parse a field section (field lines, each with its line end: a head's, or a chunked body's
 * trailer section without its blank line), [at, end) of buf, into up to max_fields fields;
 * *count says how many. H1_OK, H1_BAD_FIELD_LINE or H1_TOO_MANY_FIELDS.
 */
h1_status h1_parse_fields(const uint8_t *buf, size_t at, size_t end, h1_field *fields,
                          size_t max_fields, size_t *count);

/*
 * Parse a complete head, as the codec found it (it ends with LF LF or LF CR LF, the first
 * blank line). request: 1 for a request line, 0 for a status line. Fills out and, in order,
 * up to max_fields fields. Returns H1_OK or what was wrong; on an error, out's start_line and
 * field_section are still set (what the message should quote).
 */
h1_status h1_parse_head(const uint8_t *head, size_t len, int request, h1_head *out,
                        h1_field *fields, size_t max_fields);

#ifdef __cplusplus
}
#endif

#endif
