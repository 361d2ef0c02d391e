/*
 * Unit tests of the peer-exchange codec in plain C (run under ASan/UBSan).
 * Expected bytes and offsets are worked out by hand from the wire rules in
 * docs/peer_exchange.md, not copied from the code's output.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peer_exchange.h"
#include "testing.h"

/* Decode a header-style Struct and return the status; *off receives the error offset. */
static pe_status struct_status(const uint8_t *d, size_t n, size_t *off) {
    pe_tokens t;
    pe_error e;
    pe_tokens_init(&t, NULL, 0);
    pe_status st = pe_decode_struct(d, n, &t, &e);
    *off = e.offset;
    pe_tokens_free(&t);
    return st;
}

static pe_status prefix_status(const uint8_t *d, size_t n, uint32_t max, size_t *off) {
    pe_tokens t;
    pe_error e;
    pe_prefix_result r;
    pe_tokens_init(&t, NULL, 0);
    pe_status st = pe_decode_prefix(d, n, max, &t, &r, &e);
    *off = e.offset;
    pe_tokens_free(&t);
    return st;
}

static void test_encode_bytes(void) {
    /* {"a": 1.0, "": null}: "" sorts first; every entry writes key and value. */
    pe_encoder enc;
    pe_enc_init(&enc);
    CHECK(pe_enc_begin_struct(&enc) == PE_OK);
    CHECK(pe_enc_key(&enc, "a", 1) == PE_OK);
    CHECK(pe_enc_number(&enc, 1.0) == PE_OK);
    CHECK(pe_enc_key(&enc, "", 0) == PE_OK);
    CHECK(pe_enc_null(&enc) == PE_OK);
    CHECK(pe_enc_end(&enc) == PE_OK);
    static const uint8_t want[] = {0x0a, 0x06, 0x0a, 0x00, 0x12, 0x02, 0x08, 0x00,             /* "" */
                                   0x0a, 0x0e, 0x0a, 0x01, 'a',  0x12, 0x09, 0x11, 0,    0, /* "a" */
                                   0,    0,    0,    0,    0xf0, 0x3f};
    CHECK(pe_enc_struct_size(&enc) == sizeof want);
    uint8_t out[64];
    pe_enc_write_struct(&enc, out);
    CHECK(memcmp(out, want, sizeof want) == 0);
    pe_enc_free(&enc);
}

static void test_encode_only_empty_key(void) {
    /* Fuzz regression: a Struct whose only key is "" used to do arithmetic on a NULL
     * arena (UBSan). Expected: one entry 0a 06 | 0a 00 | 12 02 08 00. */
    pe_encoder enc;
    pe_enc_init(&enc);
    pe_enc_begin_struct(&enc);
    CHECK(pe_enc_key(&enc, "", 0) == PE_OK);
    CHECK(pe_enc_string(&enc, "", 0) == PE_OK);
    CHECK(pe_enc_end(&enc) == PE_OK);
    static const uint8_t want[] = {0x0a, 0x06, 0x0a, 0x00, 0x12, 0x02, 0x1a, 0x00};
    uint8_t out[16];
    CHECK(pe_enc_struct_size(&enc) == sizeof want);
    pe_enc_write_struct(&enc, out);
    CHECK(memcmp(out, want, sizeof want) == 0);
    pe_enc_free(&enc);
}

static void test_encode_prefix_order_and_dedupe(void) {
    /* NAMESPACE then NAME then NAME again: output NAME (last value) before NAMESPACE. */
    pe_encoder enc;
    pe_enc_init(&enc);
    pe_enc_begin_struct(&enc);
    pe_enc_key(&enc, "NAMESPACE", 9);
    pe_enc_string(&enc, "x", 1);
    pe_enc_key(&enc, "NAME", 4);
    pe_enc_bool(&enc, 0);
    pe_enc_key(&enc, "NAME", 4);
    pe_enc_bool(&enc, 1);
    CHECK(pe_enc_end(&enc) == PE_OK);
    uint8_t out[128];
    size_t n = pe_enc_struct_size(&enc);
    /* entry NAME: 0a 0a | 0a 04 NAME | 12 02 20 01  (10 bytes body) */
    /* entry NAMESPACE: 0a 10 | 0a 09 NAMESPACE | 12 03 1a 01 x  (16 bytes body) */
    CHECK(n == 12 + 18);
    pe_enc_write_struct(&enc, out);
    CHECK(out[0] == 0x0a && out[1] == 0x0a && memcmp(out + 4, "NAME", 4) == 0 && out[11] == 0x01);
    CHECK(out[12] == 0x0a && out[13] == 0x10 && memcmp(out + 16, "NAMESPACE", 9) == 0);

    size_t pn = pe_enc_prefix_size(&enc);
    CHECK(pn == 8 + 2 + 42 + 2 + n);
    uint8_t frame[256];
    pe_enc_write_prefix(&enc, frame);
    CHECK(frame[0] == 0x3d && frame[1] == 0x23 && frame[2] == 0x04 && frame[3] == 0x67);
    CHECK(frame[4] == 0 && frame[5] == 0 && frame[6] == 0 && frame[7] == pn - 8);
    CHECK(frame[8] == 0x0a && frame[9] == 42 && memcmp(frame + 10, PE_TYPE_URL, 42) == 0);
    pe_enc_free(&enc);
}

static void test_encoder_misuse_and_depth(void) {
    pe_encoder enc;
    pe_enc_init(&enc);
    CHECK(pe_enc_null(&enc) == PE_BAD_FIELD); /* the root must be a struct */
    CHECK(pe_enc_begin_struct(&enc) == PE_OK);
    CHECK(pe_enc_null(&enc) == PE_BAD_FIELD); /* value without a key */
    CHECK(pe_enc_key(&enc, "k", 1) == PE_OK);
    CHECK(pe_enc_end(&enc) == PE_BAD_FIELD); /* key without a value */
    for (int d = 1; d < PE_MAX_DEPTH; d++) CHECK(pe_enc_begin_list(&enc) == PE_OK);
    CHECK(pe_enc_begin_list(&enc) == PE_TOO_DEEP);
    pe_enc_free(&enc);
}

static void test_round_trip_tokens(void) {
    /* Encode a nested value, decode it, feed tokens back, compare bytes. */
    pe_encoder enc;
    pe_enc_init(&enc);
    pe_enc_begin_struct(&enc);
    pe_enc_key(&enc, "l", 1);
    pe_enc_begin_list(&enc);
    pe_enc_string(&enc, "\xc3\xa9t\xc3\xa9", 5);
    pe_enc_number(&enc, -0.0);
    pe_enc_begin_struct(&enc);
    pe_enc_end(&enc);
    pe_enc_null(&enc);
    pe_enc_end(&enc);
    pe_enc_key(&enc, "b", 1);
    pe_enc_bool(&enc, 1);
    pe_enc_end(&enc);
    size_t n = pe_enc_struct_size(&enc);
    uint8_t *a = malloc(n);
    pe_enc_write_struct(&enc, a);

    pe_tokens t;
    pe_error e;
    pe_tokens_init(&t, NULL, 0);
    CHECK(pe_decode_struct(a, n, &t, &e) == PE_OK);
    /* STRUCT KEY(b) BOOL KEY(l) LIST STRING NUMBER STRUCT END NULL END END */
    CHECK(t.count == 12);
    CHECK(t.items[0].kind == PE_TOK_STRUCT && t.items[0].len == 2 && t.items[0].u.ref.end == 11);
    CHECK(t.items[4].kind == PE_TOK_LIST && t.items[4].len == 4 && t.items[4].u.ref.end == 10);
    CHECK(t.items[5].kind == PE_TOK_STRING && t.items[5].ascii == 0 && t.items[5].len == 5);
    CHECK(t.items[6].kind == PE_TOK_NUMBER && signbit(t.items[6].u.number));

    pe_encoder enc2;
    pe_enc_init(&enc2);
    CHECK(pe_enc_tokens(&enc2, a, t.items, 0) == PE_OK);
    CHECK(pe_enc_struct_size(&enc2) == n);
    uint8_t *b = malloc(n);
    pe_enc_write_struct(&enc2, b);
    CHECK(memcmp(a, b, n) == 0);
    free(a);
    free(b);
    pe_tokens_free(&t);
    pe_enc_free(&enc);
    pe_enc_free(&enc2);
}

static void test_decode_errors(void) {
    size_t off;
    /* Tag 0x08 (field 1, varint) in a Struct: field 1 must be length-delimited. */
    static const uint8_t wrong_wt[] = {0x08, 0x01};
    CHECK(struct_status(wrong_wt, 2, &off) == PE_BAD_FIELD && off == 0);
    /* Unknown field 2 varint, then a group tag (field 3, wire type 3 = 0x1b) at 2. */
    static const uint8_t group[] = {0x10, 0x05, 0x1b};
    CHECK(struct_status(group, 3, &off) == PE_BAD_WIRE_TYPE && off == 2);
    /* Field number 0. */
    static const uint8_t f0[] = {0x02, 0x00};
    CHECK(struct_status(f0, 2, &off) == PE_BAD_FIELD && off == 0);
    /* Entry length 5 with 1 byte left: truncated at the length byte (1). */
    static const uint8_t past[] = {0x0a, 0x05, 0x00};
    CHECK(struct_status(past, 3, &off) == PE_TRUNCATED && off == 1);
    /* Unknown varint field whose varint runs 11 bytes: bad_varint at its first byte (1). */
    uint8_t longv[13] = {0x10};
    for (int i = 1; i < 12; i++) longv[i] = 0x80;
    longv[12] = 0x01;
    CHECK(struct_status(longv, 13, &off) == PE_BAD_VARINT && off == 1);
    /* 10-byte varint whose last byte is 0x02 (bit 64): bad_varint. */
    uint8_t hi[11] = {0x10};
    for (int i = 1; i < 10; i++) hi[i] = 0xff;
    hi[10] = 0x02;
    CHECK(struct_status(hi, 11, &off) == PE_BAD_VARINT && off == 1);
    hi[10] = 0x01; /* 2**64 - 1 is fine */
    CHECK(struct_status(hi, 11, &off) == PE_OK);
    /* Varint cut short: truncated at its first byte. */
    static const uint8_t cut[] = {0x10, 0x80, 0x80};
    CHECK(struct_status(cut, 3, &off) == PE_TRUNCATED && off == 1);
    /* Fixed64 unknown field (0x11) with 3 bytes: truncated at 1. */
    static const uint8_t f64[] = {0x11, 1, 2, 3};
    CHECK(struct_status(f64, 4, &off) == PE_TRUNCATED && off == 1);
    /* Entry {key: "\xc0\x80"} (overlong NUL): entry at 0, key at 2, string bytes at 4. */
    static const uint8_t overlong[] = {0x0a, 0x04, 0x0a, 0x02, 0xc0, 0x80};
    CHECK(struct_status(overlong, 6, &off) == PE_BAD_UTF8 && off == 4);
    /* Entry {key "k", value {string_value: "a" ED A0 80}} (surrogate at string byte 1). */
    static const uint8_t surr[] = {0x0a, 0x0b, 0x0a, 0x01, 'k', 0x12, 0x06, 0x1a, 0x04, 'a', 0xed, 0xa0, 0x80};
    CHECK(struct_status(surr, sizeof surr, &off) == PE_BAD_UTF8 && off == 10);
}

/* Prepend `tag varint(len)` to buf[0, *n) in place (buf has room). */
static void wrap(uint8_t *buf, size_t *n, uint8_t tag) {
    uint8_t hdr[11];
    size_t h = 0;
    hdr[h++] = tag;
    for (size_t x = *n;; x >>= 7) {
        hdr[h++] = (uint8_t)((x & 0x7f) | (x >= 0x80 ? 0x80 : 0));
        if (x < 0x80) break;
    }
    memmove(buf + h, buf, *n);
    memcpy(buf, hdr, h);
    *n += h;
}

static void test_depth(void) {
    /* Struct{"": Value{list{Value{list{... empty Value}}}}}: the top Struct is depth 1, so 63
     * nested lists reach depth 64 (fine) and 64 lists reach 65 (too_deep at the innermost
     * list_value tag, which is the last 0x32 byte since every other byte is a length or 0x0a/0x12). */
    for (int levels = 63; levels <= 64; levels++) {
        uint8_t *buf = calloc(1, 4096);
        size_t n = 0;
        for (int i = 0; i < levels; i++) {
            wrap(buf, &n, 0x0a); /* ListValue.values = this Value */
            wrap(buf, &n, 0x32); /* Value.list_value = that ListValue */
        }
        wrap(buf, &n, 0x12); /* entry.value */
        wrap(buf, &n, 0x0a); /* Struct.fields entry */
        size_t off, last = 0;
        for (size_t i = 0; i < n; i++)
            if (buf[i] == 0x32) last = i;
        pe_status st = struct_status(buf, n, &off);
        if (levels == 63)
            CHECK(st == PE_OK);
        else
            CHECK(st == PE_TOO_DEEP && off == last);
        free(buf);
    }
}

static void test_prefix(void) {
    size_t off;
    static const uint8_t bad1[] = {0x3d, 0x24};
    CHECK(prefix_status(bad1, 2, 65536, &off) == PE_BAD_MAGIC && off == 1);
    static const uint8_t short3[] = {0x3d, 0x23, 0x04};
    CHECK(prefix_status(short3, 3, 65536, &off) == PE_TRUNCATED && off == 3);
    static const uint8_t huge[] = {0x3d, 0x23, 0x04, 0x67, 0xff, 0xff, 0xff, 0xff};
    CHECK(prefix_status(huge, 8, 65536, &off) == PE_OVERSIZE && off == 4);
    static const uint8_t body_short[] = {0x3d, 0x23, 0x04, 0x67, 0, 0, 0, 5, 0x0a};
    CHECK(prefix_status(body_short, 9, 65536, &off) == PE_TRUNCATED && off == 9);
    /* Empty Any: no type_url -> wrong_type_url at 8. */
    static const uint8_t empty_any[] = {0x3d, 0x23, 0x04, 0x67, 0, 0, 0, 0};
    CHECK(prefix_status(empty_any, 8, 65536, &off) == PE_WRONG_TYPE_URL && off == 8);
    /* type_url "x" after an unknown varint field: tag at 10. */
    static const uint8_t wrong_url[] = {0x3d, 0x23, 0x04, 0x67, 0, 0, 0, 5, 0x18, 0x01, 0x0a, 0x01, 'x'};
    CHECK(prefix_status(wrong_url, sizeof wrong_url, 65536, &off) == PE_WRONG_TYPE_URL && off == 10);
}

static void test_stream(void) {
    /* Build a real frame and feed it one byte at a time plus trailing bytes. */
    pe_encoder enc;
    pe_enc_init(&enc);
    pe_enc_begin_struct(&enc);
    pe_enc_key(&enc, PE_METADATA_ID_KEY, strlen(PE_METADATA_ID_KEY));
    pe_enc_string(&enc, "id", 2);
    pe_enc_key(&enc, PE_METADATA_KEY, strlen(PE_METADATA_KEY));
    pe_enc_begin_struct(&enc);
    pe_enc_end(&enc);
    pe_enc_end(&enc);
    size_t n = pe_enc_prefix_size(&enc);
    uint8_t *frame = malloc(n + 3);
    pe_enc_write_prefix(&enc, frame);
    memcpy(frame + n, "abc", 3);

    pe_stream st;
    pe_stream_init(&st, 65536);
    size_t taken = 0;
    for (size_t i = 0; i < n; i++) {
        pe_stream_state s = pe_stream_feed(&st, frame + i, 1, &taken);
        CHECK(taken == 1);
        CHECK(s == (i + 1 == n ? PE_STREAM_FRAME : PE_STREAM_NEED_MORE));
        CHECK(st.cap <= 8 + (size_t)65536);
    }
    CHECK(st.len == n && memcmp(st.buf, frame, n) == 0);
    pe_tokens t;
    pe_error e;
    pe_prefix_result r;
    pe_tokens_init(&t, NULL, 0);
    CHECK(pe_decode_prefix(st.buf, st.len, 65536, &t, &r, &e) == PE_OK);
    CHECK(r.consumed == n && r.metadata >= 0 && r.metadata_id >= 0);
    CHECK(t.items[r.metadata_id].len == 2);
    pe_tokens_free(&t);
    pe_stream_free(&st);

    /* Whole frame + trailing bytes in one chunk: taken stops at the frame. */
    pe_stream_init(&st, 65536);
    CHECK(pe_stream_feed(&st, frame, n + 3, &taken) == PE_STREAM_FRAME && taken == n);
    pe_stream_free(&st);

    /* Magic mismatch on the third byte of a chunk: nothing past it is taken. */
    static const uint8_t bad[] = {0x3d, 0x23, 0x05, 0x67};
    pe_stream_init(&st, 65536);
    CHECK(pe_stream_feed(&st, bad, 4, &taken) == PE_STREAM_NOT_MESH && taken == 2);
    CHECK(st.err.status == PE_BAD_MAGIC && st.err.offset == 2);
    pe_stream_free(&st);

    /* Oversize is decided from the header alone, nothing of the body is buffered. */
    static const uint8_t big[] = {0x3d, 0x23, 0x04, 0x67, 0, 1, 0, 1, 'x'};
    pe_stream_init(&st, 65536);
    CHECK(pe_stream_feed(&st, big, sizeof big, &taken) == PE_STREAM_NOT_MESH && taken == 8);
    CHECK(st.err.status == PE_OVERSIZE && st.err.offset == 4 && st.len == 8);
    pe_stream_free(&st);
    free(frame);
    pe_enc_free(&enc);
}

static void test_utf8(void) {
    CHECK(pe_utf8_check((const uint8_t *)"plain ascii text!", 17) == 17);
    CHECK(pe_utf8_check((const uint8_t *)"\xf0\x9f\x98\x80", 4) == 4);   /* U+1F600 */
    CHECK(pe_utf8_check((const uint8_t *)"\xf4\x8f\xbf\xbf", 4) == 4);   /* U+10FFFF */
    CHECK(pe_utf8_check((const uint8_t *)"ab\xf4\x90\x80\x80", 6) == 2); /* U+110000 */
    CHECK(pe_utf8_check((const uint8_t *)"\xe0\x9f\xbf", 3) == 0);       /* overlong 3-byte */
    CHECK(pe_utf8_check((const uint8_t *)"\xf0\x8f\xbf\xbf", 4) == 0);   /* overlong 4-byte */
    CHECK(pe_utf8_check((const uint8_t *)"x\xed\xbf\xbf", 4) == 1);      /* U+DFFF */
    CHECK(pe_utf8_check((const uint8_t *)"\xee\x80\x80", 3) == 3);       /* U+E000 */
    CHECK(pe_utf8_check((const uint8_t *)"abcdefgh\x80", 9) == 8);       /* stray continuation */
    CHECK(pe_utf8_check((const uint8_t *)"\xe2\x82", 2) == 0);           /* cut short */
    CHECK(pe_utf8_check((const uint8_t *)"\xff", 1) == 0);
}

static void test_base64(void) {
    uint8_t out[32];
    size_t n;
    pe_error e;
    CHECK(pe_base64_decode((const uint8_t *)" QUJD\n", 6, 100, out, &n, &e) == PE_OK && n == 3 &&
          memcmp(out, "ABC", 3) == 0);
    CHECK(pe_base64_decode((const uint8_t *)"QQ==", 4, 100, out, &n, &e) == PE_OK && n == 1 && out[0] == 'A');
    CHECK(pe_base64_decode((const uint8_t *)"QQ", 2, 100, out, &n, &e) == PE_OK && n == 1);
    CHECK(pe_base64_decode((const uint8_t *)"QUI", 3, 100, out, &n, &e) == PE_OK && n == 2);
    CHECK(pe_base64_decode((const uint8_t *)"QQ=", 3, 100, out, &n, &e) == PE_BAD_BASE64 && e.offset == 2);
    CHECK(pe_base64_decode((const uint8_t *)"QQ=A", 4, 100, out, &n, &e) == PE_BAD_BASE64 && e.offset == 3);
    CHECK(pe_base64_decode((const uint8_t *)"  a-b", 5, 100, out, &n, &e) == PE_BAD_BASE64 && e.offset == 3);
    CHECK(pe_base64_decode((const uint8_t *)"QUJDR", 5, 100, out, &n, &e) == PE_BAD_BASE64 && e.offset == 4);
    CHECK(pe_base64_decode((const uint8_t *)"QUJD", 4, 2, out, &n, &e) == PE_OVERSIZE && e.offset == 0);
    char enc[8];
    pe_base64_encode((const uint8_t *)"AB", 2, enc);
    CHECK(memcmp(enc, "QUI=", 4) == 0);
}

int main(void) {
    test_encode_bytes();
    test_encode_only_empty_key();
    test_encode_prefix_order_and_dedupe();
    test_encoder_misuse_and_depth();
    test_round_trip_tokens();
    test_decode_errors();
    test_depth();
    test_prefix();
    test_stream();
    test_utf8();
    test_base64();
    if (failures) {
        fprintf(stderr, "test_peer_exchange: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_peer_exchange: ok\n");
    return 0;
}
