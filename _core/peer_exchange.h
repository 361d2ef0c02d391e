/*
 * Istio peer-metadata-exchange codec: a bounds-checked protobuf wire walker for
 * google.protobuf.{Any,Struct,Value,ListValue}, a deterministic encoder, and the
 * streaming TCP-prefix state machine. Plain C11, no Python.h, so it can be unit
 * tested and fuzzed on its own.
 *
 * The decoder never builds objects: it validates the whole input and produces a
 * flat token array (pre-order: STRUCT/LIST ... END, KEY before each struct value).
 * Strings are (offset, length) references into the caller's bytes, so glue code
 * builds dicts/lists only from data already known to be valid. Rules (offsets,
 * check order, last-wins semantics) are in docs/peer_exchange.md, "Decisions".
 */
#ifndef MESHSTATS_PEER_EXCHANGE_H
#define MESHSTATS_PEER_EXCHANGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PE_MAGIC 0x3D230467u
#define PE_DEFAULT_MAX_FRAME 65536u
#define PE_MAX_DEPTH 64
/* Offsets live in 32-bit token fields; max_size is capped so they always fit. */
#define PE_MAX_SIZE_LIMIT 0x7FFFFFFFu
#define PE_TYPE_URL "type.googleapis.com/google.protobuf.Struct"
#define PE_METADATA_KEY "x-envoy-peer-metadata"
#define PE_METADATA_ID_KEY "x-envoy-peer-metadata-id"

typedef enum pe_status {
    PE_OK = 0,
    PE_BAD_MAGIC,
    PE_TRUNCATED,
    PE_OVERSIZE,
    PE_BAD_VARINT,
    PE_BAD_WIRE_TYPE,
    PE_TOO_DEEP,
    PE_BAD_UTF8,
    PE_WRONG_TYPE_URL,
    PE_BAD_BASE64,
    PE_BAD_FIELD,
    PE_NO_MEMORY, /* malloc failed: not an input error */
    PE_STATUS_COUNT
} pe_status;

/* The reason string used in PeerExchangeError ("bad_magic", ...). */
const char *pe_status_reason(pe_status status);

typedef struct pe_error {
    pe_status status;
    size_t offset; /* byte offset from the start of the input where the problem was found */
} pe_error;

typedef enum pe_tok_kind {
    PE_TOK_NULL = 0,
    PE_TOK_NUMBER,
    PE_TOK_STRING,
    PE_TOK_BOOL,
    PE_TOK_STRUCT, /* followed by (KEY value)* END */
    PE_TOK_LIST,   /* followed by value* END */
    PE_TOK_END,
    PE_TOK_KEY
} pe_tok_kind;

typedef struct pe_token {
    uint8_t kind;  /* pe_tok_kind */
    uint8_t ascii; /* STRING/KEY: every byte < 0x80 (lets glue skip UTF-8 decoding) */
    uint16_t reserved;
    uint32_t len; /* STRING/KEY: byte length; STRUCT/LIST: number of children (entries) */
    union {
        double number;   /* NUMBER */
        uint32_t boolean; /* BOOL: 0 or 1 */
        struct {
            uint32_t off; /* STRING/KEY: offset into the decoded buffer */
            uint32_t end; /* STRUCT/LIST: index of the matching END token */
        } ref;
    } u;
} pe_token;

/*
 * Growable token array. Callers may supply initial storage (e.g. on the stack) so
 * small frames need no malloc; growth is bounded because every token accounts for
 * at least one input byte (tokens <= input length + 2).
 */
typedef struct pe_tokens {
    pe_token *items;
    size_t count;
    size_t capacity;
    int owned; /* items was malloc'ed by us */
} pe_tokens;

void pe_tokens_init(pe_tokens *toks, pe_token *storage, size_t capacity);
void pe_tokens_free(pe_tokens *toks);

/*
 * Decode a serialized Struct (depth 1) from data[0, len): the HTTP header body.
 * Offsets in tokens and errors are relative to data. Returns PE_OK or an error.
 */
pe_status pe_decode_struct(const uint8_t *data, size_t len, pe_tokens *toks, pe_error *err);

/* What a decoded prefix frame holds, as indexes into the token array. */
typedef struct pe_prefix_result {
    size_t consumed;     /* 8 + N */
    int64_t metadata;    /* index of the node STRUCT token, or -1 if absent/not a struct */
    int64_t metadata_id; /* index of the id STRING token, or -1 if absent/not a string */
} pe_prefix_result;

/* Decode one frame at the start of data (trailing bytes allowed). */
pe_status pe_decode_prefix(const uint8_t *data, size_t len, uint32_t max_size, pe_tokens *toks,
                           pe_prefix_result *res, pe_error *err);

/* ---- base64 (header) ---- */

/*
 * Validate a header value (ASCII bytes; callers map non-ASCII str characters to an
 * invalid byte such as 0x80) and decode it into out, which must hold
 * pe_base64_max_decoded(len) bytes. *out_len receives the decoded size.
 */
size_t pe_base64_max_decoded(size_t len);
pe_status pe_base64_decode(const uint8_t *text, size_t len, uint32_t max_size, uint8_t *out,
                           size_t *out_len, pe_error *err);
/* Standard base64 with padding; out must hold pe_base64_encoded_len(len) bytes. */
size_t pe_base64_encoded_len(size_t len);
void pe_base64_encode(const uint8_t *data, size_t len, char *out);

/* ---- UTF-8 ---- */

/* Returns len if data is valid UTF-8, else the index of the first ill-formed sequence. */
size_t pe_utf8_check(const uint8_t *data, size_t len);

/* ---- encoder ---- */

/*
 * Build a value tree with the begin/value/end calls (struct children are a KEY call
 * then one value), then serialize. Keys and strings are copied, so callers may
 * release their buffers right away. Children of each struct are sorted by key
 * bytes (memcmp, shorter first) as C++ protobuf's deterministic mode does; a
 * repeated key keeps the last value (dict semantics).
 *
 * Every call returns PE_OK, PE_NO_MEMORY, PE_TOO_DEEP (nesting past
 * PE_MAX_DEPTH counting the first struct as depth 1) or PE_BAD_FIELD (misuse:
 * a value without a key in a struct, END without BEGIN, ...).
 */
typedef struct pe_enc_node pe_enc_node;
typedef struct pe_encoder {
    pe_enc_node *nodes;
    size_t count, capacity;
    char *arena; /* copied key/string bytes */
    size_t arena_len, arena_cap;
    int64_t open[PE_MAX_DEPTH + 1]; /* stack of open container indexes */
    int depth;
    int64_t pending_key; /* arena offset of a key waiting for its value, or -1 */
    uint32_t pending_key_len;
    int64_t root;
    uint32_t *scratch; /* sorting scratch */
    size_t scratch_cap;
} pe_encoder;

void pe_enc_init(pe_encoder *enc);
void pe_enc_reset(pe_encoder *enc); /* keep allocations, forget the tree */
void pe_enc_free(pe_encoder *enc);
pe_status pe_enc_begin_struct(pe_encoder *enc);
pe_status pe_enc_begin_list(pe_encoder *enc);
pe_status pe_enc_end(pe_encoder *enc);
pe_status pe_enc_key(pe_encoder *enc, const char *key, size_t len);
pe_status pe_enc_null(pe_encoder *enc);
pe_status pe_enc_bool(pe_encoder *enc, int value);
pe_status pe_enc_number(pe_encoder *enc, double value);
pe_status pe_enc_string(pe_encoder *enc, const char *s, size_t len);

/* Serialized size of the finished root Struct (all containers closed). */
size_t pe_enc_struct_size(const pe_encoder *enc);
/* Write the root Struct's bytes (pe_enc_struct_size of them) to out. */
void pe_enc_write_struct(const pe_encoder *enc, uint8_t *out);
/* Size / bytes of the whole prefix frame: magic, BE length, Any{TYPE_URL, root Struct}. */
size_t pe_enc_prefix_size(const pe_encoder *enc);
void pe_enc_write_prefix(const pe_encoder *enc, uint8_t *out);

/*
 * Feed the subtree of a decoded token array starting at index `start` into the
 * encoder (used by the fuzz round trip and by tests); `data` is the buffer the
 * tokens refer to.
 */
pe_status pe_enc_tokens(pe_encoder *enc, const uint8_t *data, const pe_token *toks, size_t start);

/* ---- streaming prefix state machine ---- */

typedef enum pe_stream_state {
    PE_STREAM_NEED_MORE = 0,
    PE_STREAM_FRAME, /* 8 + N bytes are buffered: decode buf with pe_decode_prefix */
    PE_STREAM_NOT_MESH
} pe_stream_state;

typedef struct pe_stream {
    uint32_t max_size;
    pe_stream_state state;
    uint32_t frame_len; /* N, valid once 8 bytes are held */
    uint8_t *buf;       /* every byte fed so far (while NEED_MORE) */
    size_t len, cap;
    pe_error err; /* why NOT_MESH */
} pe_stream;

void pe_stream_init(pe_stream *st, uint32_t max_size);
void pe_stream_free(pe_stream *st);
/*
 * Take bytes from chunk. *taken receives how many bytes joined the buffer; on
 * PE_STREAM_FRAME the rest of the chunk (len - taken) follows the frame; on
 * PE_STREAM_NOT_MESH the rest of the chunk was not looked at. Returns the new
 * state; PE_STREAM_NOT_MESH with err.status == PE_NO_MEMORY means malloc failed.
 */
pe_stream_state pe_stream_feed(pe_stream *st, const uint8_t *chunk, size_t len, size_t *taken);

#ifdef __cplusplus
}
#endif
#endif
