/*
 * libFuzzer harness for the peer-exchange codec (build: make -C _core/fuzz).
 *
 * Each input is used three ways:
 *  1. whole-frame decode (pe_decode_prefix) and, of the same bytes, header-style
 *     Struct decode (pe_decode_struct) and base64 decode;
 *  2. streaming decode with the input split at points taken from the input itself,
 *     which must reach the same outcome (status and offset) as the whole-frame decode;
 *  3. for inputs that decode: decode -> encode -> decode -> encode, where the second
 *     encoding must equal the first byte for byte (the encoder is deterministic and the
 *     decoder loses nothing it keeps).
 * Any disagreement aborts, so libFuzzer records it as a crash.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peer_exchange.h"
#include "require.h"

#define FUZZ_MAX 65536u

/* Token stream sanity: containers nest, END indexes match, references stay in bounds. */
static void check_tokens(const pe_tokens *t, size_t data_len) {
    REQUIRE(t->count >= 2 && t->items[0].kind == PE_TOK_STRUCT);
    REQUIRE(t->items[0].u.ref.end == t->count - 1);
    REQUIRE(t->count <= data_len + 2); /* the O(input) bound the header promises */
    for (size_t i = 0; i < t->count; i++) {
        const pe_token *k = &t->items[i];
        if (k->kind == PE_TOK_STRING || k->kind == PE_TOK_KEY) {
            REQUIRE((size_t)k->u.ref.off + k->len <= data_len);
        } else if (k->kind == PE_TOK_STRUCT || k->kind == PE_TOK_LIST) {
            REQUIRE(k->u.ref.end > i && k->u.ref.end < t->count);
            REQUIRE(t->items[k->u.ref.end].kind == PE_TOK_END);
        }
    }
}

/* Encode the Struct at token 0 as a header body; returns malloc'ed bytes. */
static uint8_t *encode_tokens(const uint8_t *data, const pe_tokens *t, size_t *n) {
    pe_encoder enc;
    pe_enc_init(&enc);
    pe_status st = pe_enc_tokens(&enc, data, t->items, 0);
    if (st == PE_NO_MEMORY) abort();
    REQUIRE(st == PE_OK); /* whatever decodes must be encodable (same depth limit) */
    *n = pe_enc_struct_size(&enc);
    uint8_t *out = malloc(*n ? *n : 1);
    pe_enc_write_struct(&enc, out);
    pe_enc_free(&enc);
    return out;
}

static void round_trip(const uint8_t *data, const pe_tokens *t) {
    size_t n1, n2;
    uint8_t *e1 = encode_tokens(data, t, &n1);
    pe_tokens t2;
    pe_error err;
    pe_tokens_init(&t2, NULL, 0);
    pe_status st = pe_decode_struct(e1, n1, &t2, &err);
    REQUIRE(st == PE_OK);
    check_tokens(&t2, n1);
    uint8_t *e2 = encode_tokens(e1, &t2, &n2);
    REQUIRE(n1 == n2 && memcmp(e1, e2, n1) == 0);

    /* The same tree as a whole prefix frame decodes to the same tokens' encoding. */
    pe_encoder enc;
    pe_enc_init(&enc);
    REQUIRE(pe_enc_tokens(&enc, e1, t2.items, 0) == PE_OK);
    size_t fn = pe_enc_prefix_size(&enc);
    uint8_t *fr = malloc(fn);
    pe_enc_write_prefix(&enc, fr);
    pe_enc_free(&enc);
    pe_prefix_result res;
    pe_tokens_free(&t2);
    pe_tokens_init(&t2, NULL, 0);
    REQUIRE(pe_decode_prefix(fr, fn, PE_MAX_SIZE_LIMIT, &t2, &res, &err) == PE_OK);
    REQUIRE(res.consumed == fn);
    uint8_t *e3 = encode_tokens(fr, &t2, &n2);
    REQUIRE(n1 == n2 && memcmp(e1, e3, n1) == 0);
    free(fr);
    free(e3);
    pe_tokens_free(&t2);
    free(e1);
    free(e2);
}

static void streaming(const uint8_t *data, size_t size, uint32_t max_size, pe_status whole,
                      size_t whole_off) {
    pe_stream st;
    pe_stream_init(&st, max_size);
    /* Split points come from the input: chunk lengths cycle through its bytes. */
    size_t pos = 0, k = 0;
    pe_stream_state s = PE_STREAM_NEED_MORE;
    while (pos < size && s == PE_STREAM_NEED_MORE) {
        size_t chunk = size ? (size_t)data[k++ % size] % 97 + 1 : 1;
        if (chunk > size - pos) chunk = size - pos;
        size_t taken;
        s = pe_stream_feed(&st, data + pos, chunk, &taken);
        REQUIRE(taken <= chunk);
        REQUIRE(st.len <= 8 + (size_t)max_size && st.cap <= 8 + (size_t)max_size);
        if (s == PE_STREAM_NEED_MORE) REQUIRE(taken == chunk);
        pos += taken;
        if (s != PE_STREAM_NEED_MORE) break;
    }
    if (s == PE_STREAM_NEED_MORE) {
        /* Ran out of input: the whole-frame decode must have said truncated. */
        REQUIRE(whole == PE_TRUNCATED && whole_off == size);
        REQUIRE(st.len == size);
    } else if (s == PE_STREAM_NOT_MESH) {
        REQUIRE(st.err.status == whole && st.err.offset == whole_off);
    } else {
        /* A complete frame: every byte up to it was buffered, in order. */
        REQUIRE(memcmp(st.buf, data, st.len) == 0);
        pe_tokens t;
        pe_error err;
        pe_prefix_result res;
        pe_tokens_init(&t, NULL, 0);
        pe_status ds = pe_decode_prefix(st.buf, st.len, max_size, &t, &res, &err);
        REQUIRE(ds == whole);
        if (ds != PE_OK) REQUIRE(err.offset == whole_off);
        else REQUIRE(res.consumed == st.len);
        pe_tokens_free(&t);
    }
    pe_stream_free(&st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pe_tokens t;
    pe_error err;
    pe_prefix_result res;
    /* A small first byte-derived cap also exercises the oversize paths. */
    uint32_t max_size = (size > 8 && (data[size - 1] & 0x0F) == 0) ? (uint32_t)data[size - 2] : FUZZ_MAX;

    /* 1a. whole frame */
    pe_tokens_init(&t, NULL, 0);
    pe_status whole = pe_decode_prefix(data, size, max_size, &t, &res, &err);
    size_t whole_off = err.offset;
    if (whole == PE_OK) {
        REQUIRE(res.consumed >= 8 && res.consumed <= size);
        check_tokens(&t, size);
        if (res.metadata >= 0) REQUIRE(t.items[res.metadata].kind == PE_TOK_STRUCT);
        if (res.metadata_id >= 0) REQUIRE(t.items[res.metadata_id].kind == PE_TOK_STRING);
        round_trip(data, &t);
    } else {
        REQUIRE(whole != PE_NO_MEMORY && strcmp(pe_status_reason(whole), "unknown") != 0);
        REQUIRE(whole_off <= size);
    }
    pe_tokens_free(&t);

    /* 2. streaming, split where the input says */
    streaming(data, size, max_size, whole, whole_off);

    /* 1b. the same bytes as a header body (a bare Struct) */
    pe_tokens_init(&t, NULL, 0);
    pe_status st = pe_decode_struct(data, size, &t, &err);
    if (st == PE_OK) {
        check_tokens(&t, size);
        round_trip(data, &t);
    } else {
        REQUIRE(st != PE_NO_MEMORY && err.offset <= size);
        /* Every error but a truncated element lies strictly inside the input. */
        if (st != PE_TRUNCATED) REQUIRE(err.offset < size);
    }
    pe_tokens_free(&t);

    /* 1c. the same bytes as base64 text */
    size_t out_len;
    uint8_t *out = malloc(pe_base64_max_decoded(size));
    st = pe_base64_decode(data, size, FUZZ_MAX, out, &out_len, &err);
    if (st == PE_OK) {
        REQUIRE(out_len <= pe_base64_max_decoded(size));
        /* Re-encoding canonical base64 and decoding again gives the same bytes. */
        char *text = malloc(pe_base64_encoded_len(out_len) + 1);
        pe_base64_encode(out, out_len, text);
        uint8_t *again = malloc(pe_base64_max_decoded(pe_base64_encoded_len(out_len)));
        size_t again_len;
        REQUIRE(pe_base64_decode((const uint8_t *)text, pe_base64_encoded_len(out_len), FUZZ_MAX, again,
                                 &again_len, &err) == PE_OK);
        REQUIRE(again_len == out_len && memcmp(again, out, out_len) == 0);
        free(text);
        free(again);
    } else {
        REQUIRE(st == PE_BAD_BASE64 || st == PE_OVERSIZE);
    }
    free(out);
    return 0;
}
