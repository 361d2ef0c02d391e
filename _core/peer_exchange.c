/*
 * Peer-metadata-exchange codec (see peer_exchange.h and docs/peer_exchange.md).
 *
 * Every read is checked against the end of the region it belongs to (the
 * enclosing length-delimited field), so no input can make the walker read out of
 * bounds; recursion depth is bounded by PE_MAX_DEPTH; token storage grows with
 * the input and never exceeds (input length + 2) tokens.
 */
#include "peer_exchange.h"

#include <stdlib.h>
#include <string.h>

static const uint8_t MAGIC_BYTES[4] = {0x3D, 0x23, 0x04, 0x67};

const char *pe_status_reason(pe_status status) {
    switch (status) {
    case PE_OK: return "ok";
    case PE_BAD_MAGIC: return "bad_magic";
    case PE_TRUNCATED: return "truncated";
    case PE_OVERSIZE: return "oversize";
    case PE_BAD_VARINT: return "bad_varint";
    case PE_BAD_WIRE_TYPE: return "bad_wire_type";
    case PE_TOO_DEEP: return "too_deep";
    case PE_BAD_UTF8: return "bad_utf8";
    case PE_WRONG_TYPE_URL: return "wrong_type_url";
    case PE_BAD_BASE64: return "bad_base64";
    case PE_BAD_FIELD: return "bad_field";
    case PE_NO_MEMORY: return "no_memory";
    default: return "unknown";
    }
}

static pe_status fail(pe_error *err, pe_status status, size_t offset) {
    err->status = status;
    err->offset = offset;
    return status;
}

/* ------------------------------------------------------------------ UTF-8 */

/* Returns n if valid, else the index of the first byte of the first ill-formed sequence. */
static size_t utf8_check(const uint8_t *s, size_t n, int *ascii) {
    size_t i = 0;
    int all_ascii = 1;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ULL)) {
                i += 8;
                continue;
            }
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        all_ascii = 0;
        if (c < 0xC2) return i; /* stray continuation, or overlong 2-byte lead */
        if (c < 0xE0) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return i;
            i += 2;
            continue;
        }
        if (c < 0xF0) {
            if (i + 1 >= n) return i;
            uint8_t c1 = s[i + 1];
            /* E0 needs A0..BF (else overlong); ED needs 80..9F (else surrogate). */
            uint8_t lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
            if (c1 < lo || c1 > hi) return i;
            if (i + 2 >= n || (s[i + 2] & 0xC0) != 0x80) return i;
            i += 3;
            continue;
        }
        if (c < 0xF5) {
            if (i + 1 >= n) return i;
            uint8_t c1 = s[i + 1];
            /* F0 needs 90..BF (else overlong); F4 needs 80..8F (else > U+10FFFF). */
            uint8_t lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
            if (c1 < lo || c1 > hi) return i;
            if (i + 2 >= n || (s[i + 2] & 0xC0) != 0x80) return i;
            if (i + 3 >= n || (s[i + 3] & 0xC0) != 0x80) return i;
            i += 4;
            continue;
        }
        return i; /* F5..FF never appear in UTF-8 */
    }
    if (ascii) *ascii = all_ascii;
    return n;
}

size_t pe_utf8_check(const uint8_t *data, size_t len) { return utf8_check(data, len, NULL); }

/* ----------------------------------------------------------------- tokens */

void pe_tokens_init(pe_tokens *toks, pe_token *storage, size_t capacity) {
    toks->items = storage;
    toks->count = 0;
    toks->capacity = storage ? capacity : 0;
    toks->owned = 0;
}

void pe_tokens_free(pe_tokens *toks) {
    if (toks->owned) free(toks->items);
    toks->items = NULL;
    toks->count = toks->capacity = 0;
    toks->owned = 0;
}

static int tokens_grow(pe_tokens *toks) {
    size_t cap = toks->capacity ? toks->capacity * 2 : 64;
    pe_token *items;
    if (cap > SIZE_MAX / sizeof(pe_token)) return -1;
    if (toks->owned) {
        items = realloc(toks->items, cap * sizeof(pe_token));
        if (!items) return -1;
    } else {
        items = malloc(cap * sizeof(pe_token));
        if (!items) return -1;
        if (toks->count) memcpy(items, toks->items, toks->count * sizeof(pe_token));
        toks->owned = 1;
    }
    toks->items = items;
    toks->capacity = cap;
    return 0;
}

/* ---------------------------------------------------------------- decoder */

typedef struct dctx {
    const uint8_t *d;
    pe_tokens *toks;
    pe_error *err;
} dctx;

static inline int64_t push(dctx *c, uint8_t kind) {
    pe_tokens *t = c->toks;
    if (t->count == t->capacity && tokens_grow(t) < 0) {
        fail(c->err, PE_NO_MEMORY, 0);
        return -1;
    }
    pe_token *tok = &t->items[t->count];
    tok->kind = kind;
    tok->ascii = 1;
    tok->reserved = 0;
    tok->len = 0;
    tok->u.number = 0;
    return (int64_t)t->count++;
}

static inline pe_status read_varint(dctx *c, size_t *pos, size_t end, uint64_t *out) {
    size_t p = *pos;
    if (p < end && c->d[p] < 0x80) { /* one byte: nearly every tag and length */
        *out = c->d[p];
        *pos = p + 1;
        return PE_OK;
    }
    uint64_t v = 0;
    for (int i = 0;; i++) {
        if (p >= end) return fail(c->err, PE_TRUNCATED, *pos);
        uint8_t b = c->d[p++];
        if (i == 9) {
            /* The 10th byte holds only bit 63: anything else overflows 64 bits. */
            if (b > 1) return fail(c->err, PE_BAD_VARINT, *pos);
            v |= (uint64_t)b << 63;
            break;
        }
        v |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) break;
    }
    *out = v;
    *pos = p;
    return PE_OK;
}

static inline pe_status read_tag(dctx *c, size_t *pos, size_t end, uint32_t *field, int *wt) {
    size_t start = *pos;
    uint64_t tag;
    pe_status st = read_varint(c, pos, end, &tag);
    if (st) return st;
    uint64_t f = tag >> 3;
    if (f == 0 || f > 0x1FFFFFFFu) return fail(c->err, PE_BAD_FIELD, start);
    int w = (int)(tag & 7);
    if (w == 3 || w == 4 || w == 6 || w == 7) return fail(c->err, PE_BAD_WIRE_TYPE, start);
    *field = (uint32_t)f;
    *wt = w;
    return PE_OK;
}

/* Reads a length and checks that many bytes remain in the region. */
static inline pe_status read_len(dctx *c, size_t *pos, size_t end, size_t *len) {
    size_t start = *pos;
    uint64_t v;
    pe_status st = read_varint(c, pos, end, &v);
    if (st) return st;
    if (v > (uint64_t)(end - *pos)) return fail(c->err, PE_TRUNCATED, start);
    *len = (size_t)v;
    return PE_OK;
}

static pe_status skip_field(dctx *c, int wt, size_t *pos, size_t end) {
    uint64_t v;
    size_t n;
    pe_status st;
    switch (wt) {
    case 0: return read_varint(c, pos, end, &v);
    case 1:
        if (end - *pos < 8) return fail(c->err, PE_TRUNCATED, *pos);
        *pos += 8;
        return PE_OK;
    case 2:
        st = read_len(c, pos, end, &n);
        if (st) return st;
        *pos += n;
        return PE_OK;
    default: /* 5; read_tag rejected the rest */
        if (end - *pos < 4) return fail(c->err, PE_TRUNCATED, *pos);
        *pos += 4;
        return PE_OK;
    }
}

static pe_status check_utf8(dctx *c, size_t off, size_t len, int *ascii) {
    size_t bad = utf8_check(c->d + off, len, ascii);
    if (bad != len) return fail(c->err, PE_BAD_UTF8, off + bad);
    return PE_OK;
}

static pe_status parse_struct(dctx *c, size_t pos, size_t end, int depth);
static pe_status parse_list(dctx *c, size_t pos, size_t end, int depth);

/* A Value: the last kind field wins, so each kind first drops the tokens of an earlier one. */
static pe_status parse_value(dctx *c, size_t pos, size_t end, int depth) {
    size_t vstart = c->toks->count;
    int have = 0;
    while (pos < end) {
        size_t tag_off = pos, len;
        uint32_t field;
        int wt;
        uint64_t v;
        int64_t t;
        pe_status st = read_tag(c, &pos, end, &field, &wt);
        if (st) return st;
        switch (field) {
        case 1: /* null_value: an open enum, any value means null */
        case 4: /* bool_value */
            if (wt != 0) return fail(c->err, PE_BAD_FIELD, tag_off);
            if ((st = read_varint(c, &pos, end, &v))) return st;
            c->toks->count = vstart;
            if ((t = push(c, field == 1 ? PE_TOK_NULL : PE_TOK_BOOL)) < 0) return PE_NO_MEMORY;
            if (field == 4) c->toks->items[t].u.boolean = v != 0;
            have = 1;
            break;
        case 2: { /* number_value, little-endian double */
            if (wt != 1) return fail(c->err, PE_BAD_FIELD, tag_off);
            if (end - pos < 8) return fail(c->err, PE_TRUNCATED, pos);
            uint64_t bits = 0;
            for (int i = 7; i >= 0; i--) bits = (bits << 8) | c->d[pos + (size_t)i];
            pos += 8;
            c->toks->count = vstart;
            if ((t = push(c, PE_TOK_NUMBER)) < 0) return PE_NO_MEMORY;
            memcpy(&c->toks->items[t].u.number, &bits, sizeof(double));
            have = 1;
            break;
        }
        case 3: { /* string_value */
            int ascii = 1;
            if (wt != 2) return fail(c->err, PE_BAD_FIELD, tag_off);
            if ((st = read_len(c, &pos, end, &len))) return st;
            if ((st = check_utf8(c, pos, len, &ascii))) return st;
            c->toks->count = vstart;
            if ((t = push(c, PE_TOK_STRING)) < 0) return PE_NO_MEMORY;
            c->toks->items[t].u.ref.off = (uint32_t)pos;
            c->toks->items[t].len = (uint32_t)len;
            c->toks->items[t].ascii = (uint8_t)ascii;
            pos += len;
            have = 1;
            break;
        }
        case 5: /* struct_value */
        case 6: /* list_value */
            if (wt != 2) return fail(c->err, PE_BAD_FIELD, tag_off);
            if ((st = read_len(c, &pos, end, &len))) return st;
            if (depth + 1 > PE_MAX_DEPTH) return fail(c->err, PE_TOO_DEEP, tag_off);
            c->toks->count = vstart;
            st = field == 5 ? parse_struct(c, pos, pos + len, depth + 1)
                            : parse_list(c, pos, pos + len, depth + 1);
            if (st) return st;
            pos += len;
            have = 1;
            break;
        default:
            if ((st = skip_field(c, wt, &pos, end))) return st;
        }
    }
    if (!have && push(c, PE_TOK_NULL) < 0) return PE_NO_MEMORY;
    return PE_OK;
}

/* A map entry {1: key, 2: value}: KEY token first (filled at the end), then the value. */
static pe_status parse_entry(dctx *c, size_t pos, size_t end, int depth) {
    int64_t k = push(c, PE_TOK_KEY);
    if (k < 0) return PE_NO_MEMORY;
    c->toks->items[k].u.ref.off = (uint32_t)pos;
    size_t vstart = c->toks->count;
    int have = 0;
    while (pos < end) {
        size_t tag_off = pos, len;
        uint32_t field;
        int wt;
        pe_status st = read_tag(c, &pos, end, &field, &wt);
        if (st) return st;
        if (field == 1) {
            int ascii = 1;
            if (wt != 2) return fail(c->err, PE_BAD_FIELD, tag_off);
            if ((st = read_len(c, &pos, end, &len))) return st;
            if ((st = check_utf8(c, pos, len, &ascii))) return st;
            pe_token *kt = &c->toks->items[k];
            kt->u.ref.off = (uint32_t)pos;
            kt->len = (uint32_t)len;
            kt->ascii = (uint8_t)ascii;
            pos += len;
        } else if (field == 2) {
            if (wt != 2) return fail(c->err, PE_BAD_FIELD, tag_off);
            if ((st = read_len(c, &pos, end, &len))) return st;
            c->toks->count = vstart; /* a repeated value field replaces the earlier one */
            if ((st = parse_value(c, pos, pos + len, depth))) return st;
            pos += len;
            have = 1;
        } else if ((st = skip_field(c, wt, &pos, end))) {
            return st;
        }
    }
    if (!have && push(c, PE_TOK_NULL) < 0) return PE_NO_MEMORY;
    return PE_OK;
}

typedef pe_status (*element_parser)(dctx *c, size_t pos, size_t end, int depth);

/* A Struct (repeated map entries) and a ListValue (repeated values) share one shape: field 1
 * repeated, length-delimited, everything else skipped; only the element parser differs. */
static pe_status parse_repeated(dctx *c, size_t pos, size_t end, int depth, int kind,
                                element_parser parse_element) {
    int64_t start = push(c, kind);
    if (start < 0) return PE_NO_MEMORY;
    uint32_t count = 0;
    while (pos < end) {
        size_t tag_off = pos, len;
        uint32_t field;
        int wt;
        pe_status st = read_tag(c, &pos, end, &field, &wt);
        if (st) return st;
        if (field == 1) {
            if (wt != 2) return fail(c->err, PE_BAD_FIELD, tag_off);
            if ((st = read_len(c, &pos, end, &len))) return st;
            if ((st = parse_element(c, pos, pos + len, depth))) return st;
            pos += len;
            count++;
        } else if ((st = skip_field(c, wt, &pos, end))) {
            return st;
        }
    }
    int64_t e = push(c, PE_TOK_END);
    if (e < 0) return PE_NO_MEMORY;
    c->toks->items[start].len = count;
    c->toks->items[start].u.ref.end = (uint32_t)e;
    return PE_OK;
}

static pe_status parse_struct(dctx *c, size_t pos, size_t end, int depth) {
    return parse_repeated(c, pos, end, depth, PE_TOK_STRUCT, parse_entry);
}

static pe_status parse_list(dctx *c, size_t pos, size_t end, int depth) {
    return parse_repeated(c, pos, end, depth, PE_TOK_LIST, parse_value);
}

pe_status pe_decode_struct(const uint8_t *data, size_t len, pe_tokens *toks, pe_error *err) {
    dctx c = {data, toks, err};
    toks->count = 0;
    err->status = PE_OK;
    err->offset = 0;
    if (len > PE_MAX_SIZE_LIMIT) return fail(err, PE_OVERSIZE, 0);
    return parse_struct(&c, 0, len, 1);
}

/* Index of the token after the value starting at i. */
static size_t skip_value(const pe_token *t, size_t i) {
    return (t[i].kind == PE_TOK_STRUCT || t[i].kind == PE_TOK_LIST) ? (size_t)t[i].u.ref.end + 1
                                                                      : i + 1;
}

static int key_is(const uint8_t *d, const pe_token *k, const char *want, size_t want_len) {
    return k->len == want_len && memcmp(d + k->u.ref.off, want, want_len) == 0;
}

pe_status pe_decode_prefix(const uint8_t *data, size_t len, uint32_t max_size, pe_tokens *toks,
                           pe_prefix_result *res, pe_error *err) {
    dctx c = {data, toks, err};
    toks->count = 0;
    err->status = PE_OK;
    err->offset = 0;
    res->consumed = 0;
    res->metadata = res->metadata_id = -1;
    size_t m = len < 4 ? len : 4;
    for (size_t i = 0; i < m; i++)
        if (data[i] != MAGIC_BYTES[i]) return fail(err, PE_BAD_MAGIC, i);
    if (len < 8) return fail(err, PE_TRUNCATED, len);
    uint32_t n = ((uint32_t)data[4] << 24) | ((uint32_t)data[5] << 16) | ((uint32_t)data[6] << 8) |
                 (uint32_t)data[7];
    if (n > max_size || n > PE_MAX_SIZE_LIMIT) return fail(err, PE_OVERSIZE, 4);
    if (len - 8 < n) return fail(err, PE_TRUNCATED, len);
    size_t pos = 8, end = 8 + (size_t)n;

    /* The Any: framing first, then type_url, then the Struct inside value. */
    int have_url = 0, have_val = 0;
    size_t url_tag = 8, url_off = 0, url_len = 0, val_off = 0, val_len = 0;
    while (pos < end) {
        size_t tag_off = pos, flen;
        uint32_t field;
        int wt;
        pe_status st = read_tag(&c, &pos, end, &field, &wt);
        if (st) return st;
        if (field == 1 || field == 2) {
            if (wt != 2) return fail(err, PE_BAD_FIELD, tag_off);
            if ((st = read_len(&c, &pos, end, &flen))) return st;
            if (field == 1) {
                have_url = 1;
                url_tag = tag_off;
                url_off = pos;
                url_len = flen;
            } else {
                have_val = 1;
                val_off = pos;
                val_len = flen;
            }
            pos += flen;
        } else if ((st = skip_field(&c, wt, &pos, end))) {
            return st;
        }
    }
    if (!have_url || url_len != sizeof(PE_TYPE_URL) - 1 ||
        memcmp(data + url_off, PE_TYPE_URL, url_len) != 0)
        return fail(err, PE_WRONG_TYPE_URL, have_url ? url_tag : 8);
    pe_status st = have_val ? parse_struct(&c, val_off, val_off + val_len, 1)
                            : parse_struct(&c, end, end, 1);
    if (st) return st;

    /* Pick out the two keys of the outer Struct; later entries win. */
    const pe_token *t = toks->items;
    size_t i = 1;
    while (t[i].kind != PE_TOK_END) {
        size_t v = i + 1;
        if (key_is(data, &t[i], PE_METADATA_KEY, sizeof(PE_METADATA_KEY) - 1))
            res->metadata = t[v].kind == PE_TOK_STRUCT ? (int64_t)v : -1;
        else if (key_is(data, &t[i], PE_METADATA_ID_KEY, sizeof(PE_METADATA_ID_KEY) - 1))
            res->metadata_id = t[v].kind == PE_TOK_STRING ? (int64_t)v : -1;
        i = skip_value(t, v);
    }
    res->consumed = end;
    return PE_OK;
}

/* ----------------------------------------------------------------- base64 */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Byte -> 6-bit value, -1 outside the standard alphabet (a table beats branches). */
static const int8_t B64_VALUE[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1, -1, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
    -1,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, -1,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

static inline int b64_value(uint8_t ch) { return B64_VALUE[ch]; }

static int is_ascii_space(uint8_t ch) {
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

size_t pe_base64_max_decoded(size_t len) { return len / 4 * 3 + 3; }

pe_status pe_base64_decode(const uint8_t *text, size_t len, uint32_t max_size, uint8_t *out,
                           size_t *out_len, pe_error *err) {
    err->status = PE_OK;
    err->offset = 0;
    *out_len = 0;
    size_t a = 0, b = len;
    while (a < b && is_ascii_space(text[a])) a++;
    while (b > a && is_ascii_space(text[b - 1])) b--;
    const uint8_t *s = text + a;
    size_t n = b - a, pad = 0;
    while (pad < n && s[n - 1 - pad] == '=') pad++;
    /* Size check before any character is examined, so a huge value costs nothing. */
    if ((n - pad) / 4 * 3 + (n - pad) % 4 * 3 / 4 > max_size) return fail(err, PE_OVERSIZE, 0);
    size_t data_chars = n;
    for (size_t i = 0; i < n; i++) {
        if (b64_value(s[i]) >= 0) continue;
        if (s[i] != '=') return fail(err, PE_BAD_BASE64, a + i);
        for (size_t j = i; j < n; j++)
            if (s[j] != '=') return fail(err, PE_BAD_BASE64, a + j);
        if (n - i > 2 || i % 4 + (n - i) != 4) return fail(err, PE_BAD_BASE64, a + i);
        data_chars = i;
        break;
    }
    if (data_chars == n && n % 4 == 1) return fail(err, PE_BAD_BASE64, a + n - 1);
    size_t o = 0, i = 0;
    for (; i + 4 <= data_chars; i += 4) {
        uint32_t v = (uint32_t)b64_value(s[i]) << 18 | (uint32_t)b64_value(s[i + 1]) << 12 |
                     (uint32_t)b64_value(s[i + 2]) << 6 | (uint32_t)b64_value(s[i + 3]);
        out[o++] = (uint8_t)(v >> 16);
        out[o++] = (uint8_t)(v >> 8);
        out[o++] = (uint8_t)v;
    }
    size_t rest = data_chars - i; /* 0, 2 or 3 */
    if (rest >= 2) {
        uint32_t v = (uint32_t)b64_value(s[i]) << 18 | (uint32_t)b64_value(s[i + 1]) << 12;
        if (rest == 3) v |= (uint32_t)b64_value(s[i + 2]) << 6;
        out[o++] = (uint8_t)(v >> 16);
        if (rest == 3) out[o++] = (uint8_t)(v >> 8);
    }
    *out_len = o;
    return PE_OK;
}

size_t pe_base64_encoded_len(size_t len) { return (len + 2) / 3 * 4; }

void pe_base64_encode(const uint8_t *d, size_t len, char *out) {
    size_t i = 0, o = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = B64[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)d[i] << 16;
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8;
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = '=';
    }
}

/* ---------------------------------------------------------------- encoder */

struct pe_enc_node {
    uint8_t kind; /* pe_tok_kind of the value */
    uint8_t boolean;
    double number;
    size_t key_off, key_len; /* arena; only for struct children */
    size_t str_off, str_len; /* arena; STRING */
    int64_t first, last, next; /* children list / sibling link */
    size_t body;               /* STRUCT/LIST: encoded size of the message body */
    size_t vsize;              /* encoded size of the Value message holding this node */
};

static size_t varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static size_t field_len(size_t payload) { return 1 + varint_len(payload) + payload; }

void pe_enc_init(pe_encoder *enc) {
    memset(enc, 0, sizeof(*enc));
    enc->pending_key = -1;
    enc->root = -1;
}

void pe_enc_reset(pe_encoder *enc) {
    enc->count = 0;
    enc->arena_len = 0;
    enc->depth = 0;
    enc->pending_key = -1;
    enc->root = -1;
}

void pe_enc_free(pe_encoder *enc) {
    free(enc->nodes);
    free(enc->arena);
    free(enc->scratch);
    pe_enc_init(enc);
}

static pe_status arena_put(pe_encoder *enc, const char *s, size_t len, size_t *off) {
    /* Allocated even for "" so `arena + off` is never arithmetic on NULL. */
    if (!enc->arena || enc->arena_cap - enc->arena_len < len) {
        size_t cap = enc->arena_cap ? enc->arena_cap : 256;
        while (cap - enc->arena_len < len) {
            if (cap > SIZE_MAX / 2) return PE_NO_MEMORY;
            cap *= 2;
        }
        char *a = realloc(enc->arena, cap);
        if (!a) return PE_NO_MEMORY;
        enc->arena = a;
        enc->arena_cap = cap;
    }
    if (len) memcpy(enc->arena + enc->arena_len, s, len);
    *off = enc->arena_len;
    enc->arena_len += len;
    return PE_OK;
}

/* Append a node as the next child of the open container (or as the root). */
static pe_status add_node(pe_encoder *enc, uint8_t kind, int64_t *out) {
    int64_t parent = enc->depth ? enc->open[enc->depth - 1] : -1;
    if (parent < 0) {
        if (kind != PE_TOK_STRUCT || enc->root >= 0) return PE_BAD_FIELD;
    } else {
        uint8_t pk = enc->nodes[parent].kind;
        if (pk == PE_TOK_STRUCT && enc->pending_key < 0) return PE_BAD_FIELD;
        if (pk == PE_TOK_LIST && enc->pending_key >= 0) return PE_BAD_FIELD;
    }
    if (enc->count == enc->capacity) {
        size_t cap = enc->capacity ? enc->capacity * 2 : 64;
        pe_enc_node *nodes = realloc(enc->nodes, cap * sizeof(pe_enc_node));
        if (!nodes) return PE_NO_MEMORY;
        enc->nodes = nodes;
        enc->capacity = cap;
    }
    int64_t idx = (int64_t)enc->count++;
    pe_enc_node *n = &enc->nodes[idx];
    memset(n, 0, sizeof(*n));
    n->kind = kind;
    n->first = n->last = n->next = -1;
    if (parent < 0) {
        enc->root = idx;
    } else {
        pe_enc_node *p = &enc->nodes[parent];
        if (p->kind == PE_TOK_STRUCT) {
            n->key_off = (size_t)enc->pending_key;
            n->key_len = enc->pending_key_len;
            enc->pending_key = -1;
        }
        if (p->last >= 0)
            enc->nodes[p->last].next = idx;
        else
            p->first = idx;
        p->last = idx;
    }
    *out = idx;
    return PE_OK;
}

static pe_status add_scalar(pe_encoder *enc, uint8_t kind, int64_t *idx, size_t vsize) {
    pe_status st = add_node(enc, kind, idx);
    if (st) return st;
    enc->nodes[*idx].vsize = vsize;
    return PE_OK;
}

static pe_status begin(pe_encoder *enc, uint8_t kind) {
    if (enc->depth >= PE_MAX_DEPTH) return PE_TOO_DEEP;
    int64_t idx;
    pe_status st = add_node(enc, kind, &idx);
    if (st) return st;
    enc->open[enc->depth++] = idx;
    return PE_OK;
}

pe_status pe_enc_begin_struct(pe_encoder *enc) { return begin(enc, PE_TOK_STRUCT); }
pe_status pe_enc_begin_list(pe_encoder *enc) { return begin(enc, PE_TOK_LIST); }

pe_status pe_enc_key(pe_encoder *enc, const char *key, size_t len) {
    if (!enc->depth || enc->nodes[enc->open[enc->depth - 1]].kind != PE_TOK_STRUCT ||
        enc->pending_key >= 0 || len > UINT32_MAX)
        return PE_BAD_FIELD;
    size_t off;
    pe_status st = arena_put(enc, key, len, &off);
    if (st) return st;
    enc->pending_key = (int64_t)off;
    enc->pending_key_len = (uint32_t)len;
    return PE_OK;
}

pe_status pe_enc_null(pe_encoder *enc) {
    int64_t i;
    return add_scalar(enc, PE_TOK_NULL, &i, 2);
}

pe_status pe_enc_bool(pe_encoder *enc, int value) {
    int64_t i;
    pe_status st = add_scalar(enc, PE_TOK_BOOL, &i, 2);
    if (!st) enc->nodes[i].boolean = value != 0;
    return st;
}

pe_status pe_enc_number(pe_encoder *enc, double value) {
    int64_t i;
    pe_status st = add_scalar(enc, PE_TOK_NUMBER, &i, 9);
    if (!st) enc->nodes[i].number = value;
    return st;
}

pe_status pe_enc_string(pe_encoder *enc, const char *s, size_t len) {
    size_t off;
    int64_t i;
    /* Check placement before copying so a misuse leaves the arena untouched. */
    int64_t parent = enc->depth ? enc->open[enc->depth - 1] : -1;
    if (parent < 0) return PE_BAD_FIELD;
    pe_status st = arena_put(enc, s, len, &off);
    if (st) return st;
    if ((st = add_scalar(enc, PE_TOK_STRING, &i, field_len(len)))) return st;
    enc->nodes[i].str_off = off;
    enc->nodes[i].str_len = len;
    return PE_OK;
}

static int key_cmp(const pe_encoder *enc, uint32_t a, uint32_t b) {
    const pe_enc_node *x = &enc->nodes[a], *y = &enc->nodes[b];
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = n ? memcmp(enc->arena + x->key_off, enc->arena + y->key_off, n) : 0;
    if (c) return c;
    if (x->key_len != y->key_len) return x->key_len < y->key_len ? -1 : 1;
    return a < b ? -1 : (a > b); /* insertion order breaks ties: keeps the sort stable */
}

/* Bottom-up merge sort of node indexes (stable, no recursion, O(n log n)). */
static void sort_children(const pe_encoder *enc, uint32_t *v, uint32_t *tmp, size_t n) {
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n;
            size_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = key_cmp(enc, v[i], v[j]) <= 0 ? v[i++] : v[j++];
            while (i < mid) tmp[k++] = v[i++];
            while (j < hi) tmp[k++] = v[j++];
        }
        memcpy(v, tmp, n * sizeof(uint32_t));
    }
}

static int same_key(const pe_encoder *enc, uint32_t a, uint32_t b) {
    const pe_enc_node *x = &enc->nodes[a], *y = &enc->nodes[b];
    return x->key_len == y->key_len &&
           (x->key_len == 0 || memcmp(enc->arena + x->key_off, enc->arena + y->key_off, x->key_len) == 0);
}

static pe_status finish_struct(pe_encoder *enc, int64_t idx) {
    size_t n = 0;
    for (int64_t c = enc->nodes[idx].first; c >= 0; c = enc->nodes[c].next) n++;
    if (n > 1) {
        if (enc->scratch_cap < 2 * n) {
            uint32_t *s = realloc(enc->scratch, 2 * n * sizeof(uint32_t));
            if (!s) return PE_NO_MEMORY;
            enc->scratch = s;
            enc->scratch_cap = 2 * n;
        }
        uint32_t *v = enc->scratch;
        size_t i = 0;
        for (int64_t c = enc->nodes[idx].first; c >= 0; c = enc->nodes[c].next) v[i++] = (uint32_t)c;
        sort_children(enc, v, v + n, n);
        /* Relink in key order, keeping only the last of equal keys (dict semantics). */
        int64_t first = -1, last = -1;
        for (i = 0; i < n; i++) {
            if (i + 1 < n && same_key(enc, v[i], v[i + 1])) continue;
            if (last >= 0)
                enc->nodes[last].next = v[i];
            else
                first = v[i];
            last = v[i];
        }
        enc->nodes[last].next = -1;
        enc->nodes[idx].first = first;
        enc->nodes[idx].last = last;
    }
    size_t body = 0;
    for (int64_t c = enc->nodes[idx].first; c >= 0; c = enc->nodes[c].next) {
        const pe_enc_node *ch = &enc->nodes[c];
        body += field_len(field_len(ch->key_len) + field_len(ch->vsize));
    }
    enc->nodes[idx].body = body;
    return PE_OK;
}

pe_status pe_enc_end(pe_encoder *enc) {
    if (!enc->depth || enc->pending_key >= 0) return PE_BAD_FIELD;
    int64_t idx = enc->open[--enc->depth];
    pe_enc_node *n = &enc->nodes[idx];
    if (n->kind == PE_TOK_STRUCT) {
        pe_status st = finish_struct(enc, idx);
        if (st) return st;
    } else {
        size_t body = 0;
        for (int64_t c = n->first; c >= 0; c = enc->nodes[c].next) body += field_len(enc->nodes[c].vsize);
        n->body = body;
    }
    n = &enc->nodes[idx];
    n->vsize = field_len(n->body);
    return PE_OK;
}

static uint8_t *put_varint(uint8_t *o, uint64_t v) {
    while (v >= 0x80) {
        *o++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *o++ = (uint8_t)v;
    return o;
}

static uint8_t *put_bytes(uint8_t *o, uint8_t tag, const char *s, size_t len) {
    *o++ = tag;
    o = put_varint(o, len);
    if (len) memcpy(o, s, len);
    return o + len;
}

static uint8_t *write_body(const pe_encoder *enc, int64_t idx, uint8_t *o);

/* The Value message contents (one kind field) for a node. */
static uint8_t *write_value(const pe_encoder *enc, int64_t idx, uint8_t *o) {
    const pe_enc_node *n = &enc->nodes[idx];
    switch (n->kind) {
    case PE_TOK_NULL:
        *o++ = 0x08;
        *o++ = 0x00;
        return o;
    case PE_TOK_BOOL:
        *o++ = 0x20;
        *o++ = n->boolean;
        return o;
    case PE_TOK_NUMBER: {
        uint64_t bits;
        memcpy(&bits, &n->number, sizeof bits);
        *o++ = 0x11;
        for (int i = 0; i < 8; i++) *o++ = (uint8_t)(bits >> (8 * i));
        return o;
    }
    case PE_TOK_STRING: return put_bytes(o, 0x1A, enc->arena + n->str_off, n->str_len);
    default: /* STRUCT / LIST */
        *o++ = n->kind == PE_TOK_STRUCT ? 0x2A : 0x32;
        o = put_varint(o, n->body);
        return write_body(enc, idx, o);
    }
}

static uint8_t *write_body(const pe_encoder *enc, int64_t idx, uint8_t *o) {
    const pe_enc_node *n = &enc->nodes[idx];
    for (int64_t c = n->first; c >= 0; c = enc->nodes[c].next) {
        const pe_enc_node *ch = &enc->nodes[c];
        *o++ = 0x0A;
        if (n->kind == PE_TOK_STRUCT) {
            o = put_varint(o, field_len(ch->key_len) + field_len(ch->vsize));
            o = put_bytes(o, 0x0A, enc->arena + ch->key_off, ch->key_len);
            *o++ = 0x12;
        }
        o = put_varint(o, ch->vsize);
        o = write_value(enc, c, o);
    }
    return o;
}

size_t pe_enc_struct_size(const pe_encoder *enc) {
    return enc->root >= 0 ? enc->nodes[enc->root].body : 0;
}

void pe_enc_write_struct(const pe_encoder *enc, uint8_t *out) {
    if (enc->root >= 0) write_body(enc, enc->root, out);
}

static size_t any_size(const pe_encoder *enc) {
    return field_len(sizeof(PE_TYPE_URL) - 1) + field_len(pe_enc_struct_size(enc));
}

size_t pe_enc_prefix_size(const pe_encoder *enc) { return 8 + any_size(enc); }

void pe_enc_write_prefix(const pe_encoder *enc, uint8_t *out) {
    size_t n = any_size(enc);
    memcpy(out, MAGIC_BYTES, 4);
    out[4] = (uint8_t)(n >> 24);
    out[5] = (uint8_t)(n >> 16);
    out[6] = (uint8_t)(n >> 8);
    out[7] = (uint8_t)n;
    uint8_t *o = put_bytes(out + 8, 0x0A, PE_TYPE_URL, sizeof(PE_TYPE_URL) - 1);
    *o++ = 0x12;
    o = put_varint(o, pe_enc_struct_size(enc));
    pe_enc_write_struct(enc, o);
}

pe_status pe_enc_tokens(pe_encoder *enc, const uint8_t *data, const pe_token *toks, size_t start) {
    size_t i = start;
    int level = 0;
    do {
        const pe_token *t = &toks[i++];
        pe_status st;
        switch (t->kind) {
        case PE_TOK_STRUCT: st = pe_enc_begin_struct(enc); level++; break;
        case PE_TOK_LIST: st = pe_enc_begin_list(enc); level++; break;
        case PE_TOK_END: st = pe_enc_end(enc); level--; break;
        case PE_TOK_KEY: st = pe_enc_key(enc, (const char *)data + t->u.ref.off, t->len); break;
        case PE_TOK_STRING: st = pe_enc_string(enc, (const char *)data + t->u.ref.off, t->len); break;
        case PE_TOK_NUMBER: st = pe_enc_number(enc, t->u.number); break;
        case PE_TOK_BOOL: st = pe_enc_bool(enc, (int)t->u.boolean); break;
        default: st = pe_enc_null(enc); break;
        }
        if (st) return st;
    } while (level > 0);
    return PE_OK;
}

/* -------------------------------------------------------------- streaming */

void pe_stream_init(pe_stream *st, uint32_t max_size) {
    memset(st, 0, sizeof(*st));
    st->max_size = max_size > PE_MAX_SIZE_LIMIT ? PE_MAX_SIZE_LIMIT : max_size;
    st->state = PE_STREAM_NEED_MORE;
}

void pe_stream_free(pe_stream *st) {
    free(st->buf);
    st->buf = NULL;
    st->len = st->cap = 0;
}

/* Grow to hold `need` bytes: doubling for amortised O(1), never past what arrived times two. */
static int stream_reserve(pe_stream *st, size_t need) {
    if (need <= st->cap) return 0;
    size_t cap = st->cap ? st->cap * 2 : 64;
    if (cap < need) cap = need;
    size_t limit = 8 + (size_t)st->max_size;
    if (cap > limit) cap = limit < need ? need : limit;
    uint8_t *b = realloc(st->buf, cap);
    if (!b) return -1;
    st->buf = b;
    st->cap = cap;
    return 0;
}

pe_stream_state pe_stream_feed(pe_stream *st, const uint8_t *chunk, size_t len, size_t *taken) {
    size_t i = 0;
    *taken = 0;
    if (st->state != PE_STREAM_NEED_MORE) return st->state;
    if (st->len < 8 && len) {
        if (stream_reserve(st, 8) < 0) {
            st->err.status = PE_NO_MEMORY;
            return st->state = PE_STREAM_NOT_MESH;
        }
        while (st->len < 8 && i < len) {
            uint8_t b = chunk[i];
            if (st->len < 4 && b != MAGIC_BYTES[st->len]) {
                /* Decided on the first byte that disagrees: nothing more is held. */
                *taken = i;
                st->err.status = PE_BAD_MAGIC;
                st->err.offset = st->len;
                return st->state = PE_STREAM_NOT_MESH;
            }
            st->buf[st->len++] = b;
            i++;
        }
        if (st->len == 8) {
            const uint8_t *h = st->buf + 4;
            st->frame_len = ((uint32_t)h[0] << 24) | ((uint32_t)h[1] << 16) | ((uint32_t)h[2] << 8) | h[3];
            if (st->frame_len > st->max_size) {
                /* Refused from the announced length alone, before buffering any of it. */
                *taken = i;
                st->err.status = PE_OVERSIZE;
                st->err.offset = 4;
                return st->state = PE_STREAM_NOT_MESH;
            }
        }
    }
    if (st->len >= 8) {
        size_t need = 8 + (size_t)st->frame_len - st->len;
        size_t take = len - i < need ? len - i : need;
        if (take) {
            if (stream_reserve(st, st->len + take) < 0) {
                *taken = i;
                st->err.status = PE_NO_MEMORY;
                return st->state = PE_STREAM_NOT_MESH;
            }
            memcpy(st->buf + st->len, chunk + i, take);
            st->len += take;
            i += take;
        }
        if (st->len == 8 + (size_t)st->frame_len) st->state = PE_STREAM_FRAME;
    }
    *taken = i;
    return st->state;
}
