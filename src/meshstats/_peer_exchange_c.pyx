"""Compiled peer-metadata-exchange codec: Cython glue over ``_core/peer_exchange.c``.

The C walker validates the whole input and returns a flat token array; only then
are dicts, lists and strings built, so a malformed frame never allocates Python
objects. See ``_peer_exchange_c.pyi`` for the documented API and
``docs/peer_exchange.md`` for the rules both backends follow.

>>> from meshstats._peer_exchange_c import encode_peer_prefix, decode_peer_prefix
>>> decode_peer_prefix(encode_peer_prefix({"NAME": "pod-1"}, "id-1")).metadata
{'NAME': 'pod-1'}
"""

from collections.abc import Mapping

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_FromDouble
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.string cimport memcpy

from meshstats import _messages as msg
from meshstats.errors import DecoderFinishedError, PeerExchangeError, PeerMetadataTypeError

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void *PyUnicode_DATA(object o)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL
    bint PyUnicode_IS_ASCII(object o)

cdef extern from "peer_exchange.h" nogil:
    ctypedef enum pe_status:
        PE_OK
        PE_BAD_MAGIC
        PE_TRUNCATED
        PE_OVERSIZE
        PE_BAD_VARINT
        PE_BAD_WIRE_TYPE
        PE_TOO_DEEP
        PE_BAD_UTF8
        PE_WRONG_TYPE_URL
        PE_BAD_BASE64
        PE_BAD_FIELD
        PE_NO_MEMORY
    const char *pe_status_reason(pe_status status)
    ctypedef struct pe_error:
        pe_status status
        size_t offset
    cdef enum:
        PE_TOK_NULL
        PE_TOK_NUMBER
        PE_TOK_STRING
        PE_TOK_BOOL
        PE_TOK_STRUCT
        PE_TOK_LIST
        PE_TOK_END
        PE_TOK_KEY
    ctypedef struct pe_ref:
        uint32_t off
        uint32_t end
    ctypedef union pe_tok_value:
        double number
        uint32_t boolean
        pe_ref ref
    ctypedef struct pe_token:
        uint8_t kind
        uint8_t ascii
        uint32_t len
        pe_tok_value u
    ctypedef struct pe_tokens:
        pe_token *items
        size_t count
    void pe_tokens_init(pe_tokens *toks, pe_token *storage, size_t capacity)
    void pe_tokens_free(pe_tokens *toks)
    pe_status pe_decode_struct(const uint8_t *data, size_t len, pe_tokens *toks, pe_error *err)
    ctypedef struct pe_prefix_result:
        size_t consumed
        int64_t metadata
        int64_t metadata_id
    pe_status pe_decode_prefix(const uint8_t *data, size_t len, uint32_t max_size,
                               pe_tokens *toks, pe_prefix_result *res, pe_error *err)
    size_t pe_base64_max_decoded(size_t len)
    pe_status pe_base64_decode(const uint8_t *text, size_t len, uint32_t max_size, uint8_t *out,
                               size_t *out_len, pe_error *err)
    size_t pe_base64_encoded_len(size_t len)
    void pe_base64_encode(const uint8_t *data, size_t len, char *out)
    ctypedef struct pe_encoder:
        pass
    void pe_enc_init(pe_encoder *enc)
    void pe_enc_reset(pe_encoder *enc)
    void pe_enc_free(pe_encoder *enc)
    pe_status pe_enc_begin_struct(pe_encoder *enc)
    pe_status pe_enc_begin_list(pe_encoder *enc)
    pe_status pe_enc_end(pe_encoder *enc)
    pe_status pe_enc_key(pe_encoder *enc, const char *key, size_t len)
    pe_status pe_enc_null(pe_encoder *enc)
    pe_status pe_enc_bool(pe_encoder *enc, int value)
    pe_status pe_enc_number(pe_encoder *enc, double value)
    pe_status pe_enc_string(pe_encoder *enc, const char *s, size_t len)
    size_t pe_enc_struct_size(const pe_encoder *enc)
    void pe_enc_write_struct(const pe_encoder *enc, uint8_t *out)
    size_t pe_enc_prefix_size(const pe_encoder *enc)
    void pe_enc_write_prefix(const pe_encoder *enc, uint8_t *out)
    ctypedef enum pe_stream_state:
        PE_STREAM_NEED_MORE
        PE_STREAM_FRAME
        PE_STREAM_NOT_MESH
    ctypedef struct pe_stream:
        uint32_t max_size
        pe_stream_state state
        uint8_t *buf
        size_t len
        pe_error err
    void pe_stream_init(pe_stream *st, uint32_t max_size)
    void pe_stream_free(pe_stream *st)
    pe_stream_state pe_stream_feed(pe_stream *st, const uint8_t *chunk, size_t len, size_t *taken)

MAGIC = 0x3D230467
DEFAULT_MAX_FRAME = 65536
MAX_DEPTH = 64
TYPE_URL = "type.googleapis.com/google.protobuf.Struct"
METADATA_KEY = "x-envoy-peer-metadata"
METADATA_ID_KEY = "x-envoy-peer-metadata-id"
NEED_MORE = "need_more"
DONE = "done"
NOT_MESH = "not_mesh"

# Frames up to this many tokens decode without a malloc (4 KiB of stack; a real Istio
# frame has about 60 tokens).
cdef enum:
    _STACK_TOKENS = 256
# Walking a bigger input releases the GIL; below this, the release costs more than it frees.
cdef enum:
    _NOGIL_BYTES = 16384

cdef object _error(pe_status status, size_t offset):
    """The one place a C status becomes a Python exception (returned, not raised)."""
    if status == PE_NO_MEMORY:
        return MemoryError("peer exchange: out of memory")
    # The detail comes with the reason (errors.PEER_EXCHANGE_DETAILS), as in the twin.
    return PeerExchangeError(pe_status_reason(status).decode("ascii"), offset)


cdef uint32_t _check_max_size(object max_size) except? 0xFFFFFFFF:
    return <uint32_t>msg.check_max_size(max_size)


# Keys every Istio frame carries, as shared str objects: building the metadata dict then
# reuses them instead of allocating (and hashing) a fresh str per key per frame.
cdef tuple _COMMON_KEYS = tuple(
    k for k in (
        "NAME", "NAMESPACE", "LABELS", "OWNER", "WORKLOAD_NAME", "CLUSTER_ID", "MESH_ID",
        "INSTANCE_IPS", "SERVICE_ACCOUNT", "PLATFORM_METADATA", "ISTIO_VERSION", "APP_CONTAINERS",
        "IDENTITY", "REGION", "AVAILABILITY_ZONE", "app", "version", "app.kubernetes.io/name",
        "app.kubernetes.io/version", "service.istio.io/canonical-name",
        "service.istio.io/canonical-revision", "pod-template-hash", "security.istio.io/tlsMode",
        "gcp_project", "gcp_location", "gcp_gke_cluster_name", METADATA_KEY, METADATA_ID_KEY,
    )
)
cdef list _KEYS_BY_LEN = [[] for _ in range(64)]
for _k in _COMMON_KEYS:
    _KEYS_BY_LEN[len(_k)].append((_k.encode(), _k))


cdef inline object _make_str(const unsigned char *p, uint32_t n, bint ascii):
    cdef object s
    if ascii:
        # Already validated as ASCII: copy straight into a compact str, no decoding pass.
        s = PyUnicode_New(n, 127)
        if n:
            memcpy(PyUnicode_DATA(s), p, n)
        return s
    return PyUnicode_DecodeUTF8(<const char *>p, n, NULL)


cdef inline object _make_key(const unsigned char *p, uint32_t n, bint ascii):
    cdef list bucket
    cdef bytes kb
    if n < 64:
        bucket = <list>_KEYS_BY_LEN[n]
        for entry in bucket:
            kb = <bytes>(<tuple>entry)[0]
            if memcmp_eq(PyBytes_AS_STRING(kb), <const char *>p, n):
                return (<tuple>entry)[1]
    return _make_str(p, n, ascii)


cdef inline bint memcmp_eq(const char *a, const char *b, size_t n) noexcept:
    cdef size_t i
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


cdef object _build(const unsigned char *d, const pe_token *t, size_t *pos):
    """Build the value at t[pos[0]] (already validated) and advance pos past it."""
    cdef size_t i = pos[0]
    cdef const pe_token *tok = &t[i]
    cdef uint8_t kind = tok.kind
    cdef dict dct
    cdef list lst
    cdef object key, value
    cdef uint32_t n, k
    if kind == PE_TOK_STRING:
        pos[0] = i + 1
        return _make_str(d + tok.u.ref.off, tok.len, tok.ascii)
    if kind == PE_TOK_NUMBER:
        pos[0] = i + 1
        return PyFloat_FromDouble(tok.u.number)
    if kind == PE_TOK_BOOL:
        pos[0] = i + 1
        return True if tok.u.boolean else False
    if kind == PE_TOK_STRUCT:
        dct = {}
        i += 1
        while t[i].kind != PE_TOK_END:
            key = _make_key(d + t[i].u.ref.off, t[i].len, t[i].ascii)
            i += 1
            value = _build(d, t, &i)
            dct[key] = value
        pos[0] = i + 1
        return dct
    if kind == PE_TOK_LIST:
        n = tok.len
        lst = PyList_New(n)
        i += 1
        for k in range(n):
            value = _build(d, t, &i)
            Py_INCREF(value)
            PyList_SET_ITEM(lst, k, value)
        pos[0] = i + 1
        return lst
    pos[0] = i + 1
    return None


cdef class _Input:
    """A borrowed view of a bytes-like argument (bytes fast path, else the buffer protocol)."""

    cdef Py_buffer view
    cdef bint has_view
    cdef const unsigned char *ptr
    cdef size_t size
    # Only a bytes object is sure not to change while the walk runs without the GIL: a
    # bytearray (or any other buffer) could be written by another thread between the
    # UTF-8 check and the copy, and a str flagged ASCII would then hold other bytes.
    cdef bint immutable

    cdef int open(self, object data, str what) except -1:
        if type(data) is bytes:
            self.ptr = <const unsigned char *>PyBytes_AS_STRING(data)
            self.size = <size_t>PyBytes_GET_SIZE(data)
            self.immutable = True
            return 0
        if isinstance(data, str):
            raise msg.not_bytes_like(what, data)
        try:
            PyObject_GetBuffer(data, &self.view, PyBUF_SIMPLE)
        except TypeError:
            raise msg.not_bytes_like(what, data) from None
        except BufferError:
            raise msg.not_contiguous(what) from None
        self.has_view = True
        self.ptr = <const unsigned char *>self.view.buf
        self.size = <size_t>self.view.len
        return 0

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)


cdef class PeerExchange:
    """One decoded peer-exchange frame (see the .pyi for the documentation)."""

    cdef readonly dict metadata
    cdef readonly object metadata_id
    cdef readonly Py_ssize_t consumed

    def __init__(self, metadata, metadata_id, consumed):
        self.metadata = metadata
        self.metadata_id = metadata_id
        self.consumed = consumed

    def __eq__(self, other):
        if not isinstance(other, PeerExchange):
            return NotImplemented
        cdef PeerExchange o = <PeerExchange>other
        return (
            self.consumed == o.consumed
            and self.metadata_id == o.metadata_id
            and self.metadata == o.metadata
        )

    __hash__ = None

    def __repr__(self):
        return (
            f"PeerExchange(metadata={self.metadata!r}, metadata_id={self.metadata_id!r}, "
            f"consumed={self.consumed})"
        )

    def __reduce__(self):
        return (PeerExchange, (self.metadata, self.metadata_id, self.consumed))


cdef inline bint _walk_without_gil(bint immutable, size_t n) noexcept:
    """Release the GIL for big inputs, and only for inputs that cannot change meanwhile."""
    return immutable and n > _NOGIL_BYTES


def _releases_gil(data):
    """Whether ``decode_peer_prefix(data)`` walks ``data`` with the GIL released (tests)."""
    cdef _Input inp = _Input()
    inp.open(data, "data")
    return _walk_without_gil(inp.immutable, inp.size)


cdef PeerExchange _decode_prefix(const unsigned char *p, size_t n, uint32_t max_size,
                                 bint immutable):
    cdef pe_token stack[_STACK_TOKENS]
    cdef pe_tokens toks
    cdef pe_prefix_result res
    cdef pe_error err
    cdef pe_status st
    cdef size_t pos
    cdef object metadata, metadata_id = None
    pe_tokens_init(&toks, stack, _STACK_TOKENS)
    try:
        if _walk_without_gil(immutable, n):
            with nogil:
                st = pe_decode_prefix(p, n, max_size, &toks, &res, &err)
        else:
            st = pe_decode_prefix(p, n, max_size, &toks, &res, &err)
        if st != PE_OK:
            raise _error(st, err.offset)
        if res.metadata >= 0:
            pos = <size_t>res.metadata
            metadata = _build(p, toks.items, &pos)
        else:
            metadata = {}
        if res.metadata_id >= 0:
            pos = <size_t>res.metadata_id
            metadata_id = _build(p, toks.items, &pos)
        return PeerExchange(metadata, metadata_id, res.consumed)
    finally:
        pe_tokens_free(&toks)


def decode_peer_prefix(data, *, max_size=DEFAULT_MAX_FRAME):
    cdef uint32_t cap = _check_max_size(max_size)
    cdef _Input inp = _Input()
    inp.open(data, "data")
    return _decode_prefix(inp.ptr, inp.size, cap, inp.immutable)


def _walk_only(data, *, max_size=DEFAULT_MAX_FRAME):
    """Benchmark-only: validate a prefix frame in C without building Python objects.

    Returns the number of tokens; raises PeerExchangeError like decode_peer_prefix.
    """
    cdef uint32_t cap = _check_max_size(max_size)
    cdef _Input inp = _Input()
    cdef pe_token stack[_STACK_TOKENS]
    cdef pe_tokens toks
    cdef pe_prefix_result res
    cdef pe_error err
    cdef pe_status st
    cdef size_t count
    inp.open(data, "data")
    pe_tokens_init(&toks, stack, _STACK_TOKENS)
    st = pe_decode_prefix(inp.ptr, inp.size, cap, &toks, &res, &err)
    count = toks.count
    pe_tokens_free(&toks)
    if st != PE_OK:
        raise _error(st, err.offset)
    return count


def decode_peer_header(value, *, max_size=DEFAULT_MAX_FRAME):
    cdef uint32_t cap = _check_max_size(max_size)
    cdef object raw
    cdef const unsigned char *text
    cdef Py_ssize_t text_len
    cdef size_t out_cap, out_len
    cdef bytearray out
    cdef pe_error err
    cdef pe_status st
    cdef pe_token stack[_STACK_TOKENS]
    cdef pe_tokens toks
    cdef size_t pos = 0
    if isinstance(value, str):
        if PyUnicode_IS_ASCII(value):
            raw = value
            text = <const unsigned char *>PyUnicode_AsUTF8AndSize(value, &text_len)
        else:
            # One byte per character keeps character indexes; "?" is not base64, so the
            # first non-ASCII character is reported where it stands.
            raw = (<str>value).encode("ascii", "replace")
            text = <const unsigned char *>PyBytes_AS_STRING(raw)
            text_len = PyBytes_GET_SIZE(raw)
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value) if type(value) is not bytes else value
        text = <const unsigned char *>PyBytes_AS_STRING(raw)
        text_len = PyBytes_GET_SIZE(raw)
    else:
        raise msg.value_not_text(value)
    # Never more than max_size decoded bytes can be accepted, so never allocate more.
    out_cap = pe_base64_max_decoded(<size_t>text_len)
    if out_cap > <size_t>cap + 3:
        out_cap = <size_t>cap + 3
    out = bytearray(out_cap)
    st = pe_base64_decode(text, <size_t>text_len, cap, <uint8_t *><char *>out, &out_len, &err)
    if st != PE_OK:
        raise _error(st, err.offset)
    pe_tokens_init(&toks, stack, _STACK_TOKENS)
    try:
        st = pe_decode_struct(<const uint8_t *><char *>out, out_len, &toks, &err)
        if st != PE_OK:
            raise _error(st, err.offset)
        return _build(<const unsigned char *><char *>out, toks.items, &pos)
    finally:
        pe_tokens_free(&toks)


# ---------------------------------------------------------------------------- encoding

cdef int _enc_check(pe_status st) except -1:
    if st == PE_OK:
        return 0
    if st == PE_NO_MEMORY:
        raise MemoryError("peer exchange: out of memory")
    if st == PE_TOO_DEEP:
        raise PeerMetadataTypeError(msg.too_deep(MAX_DEPTH))
    raise PeerMetadataTypeError(f"encoder misuse ({pe_status_reason(st).decode()})")


cdef inline const char *_utf8(object s, Py_ssize_t *n) except NULL:
    try:
        return PyUnicode_AsUTF8AndSize(s, n)
    except UnicodeEncodeError as exc:
        raise PeerMetadataTypeError(msg.not_unicode(s, exc)) from None


cdef int _feed_struct(pe_encoder *enc, object mapping) except -1:
    cdef Py_ssize_t n
    cdef const char *p
    _enc_check(pe_enc_begin_struct(enc))
    items = (<dict>mapping).items() if type(mapping) is dict else mapping.items()
    for key, value in items:
        if not isinstance(key, str):
            raise PeerMetadataTypeError(msg.key_not_str(key))
        p = _utf8(key, &n)
        _enc_check(pe_enc_key(enc, p, <size_t>n))
        _feed(enc, value)
    _enc_check(pe_enc_end(enc))
    return 0


cdef int _feed(pe_encoder *enc, object value) except -1:
    cdef Py_ssize_t n
    cdef const char *p
    cdef double x
    if value is None:
        return _enc_check(pe_enc_null(enc))
    if isinstance(value, bool):
        return _enc_check(pe_enc_bool(enc, value is True))
    if isinstance(value, str):
        p = _utf8(value, &n)
        return _enc_check(pe_enc_string(enc, p, <size_t>n))
    if isinstance(value, float):
        return _enc_check(pe_enc_number(enc, <double>value))
    if isinstance(value, int):
        try:
            x = float(value)
        except OverflowError as exc:
            raise PeerMetadataTypeError(msg.int_too_large(value)) from None
        return _enc_check(pe_enc_number(enc, x))
    if isinstance(value, (dict, Mapping)):
        return _feed_struct(enc, value)
    if isinstance(value, (list, tuple)):
        _enc_check(pe_enc_begin_list(enc))
        for item in value:
            _feed(enc, item)
        return _enc_check(pe_enc_end(enc))
    raise PeerMetadataTypeError(msg.unsupported_value(value))


cdef class _Encoder:
    """Owns a C encoder; freed with the object even when encoding raised."""

    cdef pe_encoder enc

    def __cinit__(self):
        pe_enc_init(&self.enc)

    def __dealloc__(self):
        pe_enc_free(&self.enc)


# One encoder reused across calls keeps its node and arena allocations; a re-entrant call
# (a Mapping whose items() encodes) gets a fresh one.
cdef _Encoder _shared_encoder = _Encoder()
cdef bint _shared_busy = False


cdef _Encoder _acquire():
    global _shared_busy
    if _shared_busy:
        return _Encoder()
    _shared_busy = True
    pe_enc_reset(&_shared_encoder.enc)
    return _shared_encoder


cdef void _release(_Encoder e) noexcept:
    global _shared_busy
    if e is _shared_encoder:
        _shared_busy = False


cdef int _check_metadata(object metadata) except -1:
    if not isinstance(metadata, (dict, Mapping)):
        raise PeerMetadataTypeError(msg.metadata_not_mapping(metadata))
    return 0


cdef bytes _KEY_BYTES = METADATA_KEY.encode()
cdef bytes _ID_KEY_BYTES = METADATA_ID_KEY.encode()


def encode_peer_prefix(metadata, metadata_id=None):
    cdef _Encoder e
    cdef pe_encoder *enc
    cdef Py_ssize_t n
    cdef const char *p
    cdef size_t size
    cdef bytes out
    _check_metadata(metadata)
    if metadata_id is not None and not isinstance(metadata_id, str):
        raise PeerMetadataTypeError(msg.metadata_id_type(metadata_id))
    e = _acquire()
    try:
        enc = &e.enc
        _enc_check(pe_enc_begin_struct(enc))
        _enc_check(pe_enc_key(enc, PyBytes_AS_STRING(_KEY_BYTES), PyBytes_GET_SIZE(_KEY_BYTES)))
        _feed_struct(enc, metadata)
        if metadata_id:
            _enc_check(pe_enc_key(enc, PyBytes_AS_STRING(_ID_KEY_BYTES), PyBytes_GET_SIZE(_ID_KEY_BYTES)))
            p = _utf8(metadata_id, &n)
            _enc_check(pe_enc_string(enc, p, <size_t>n))
        _enc_check(pe_enc_end(enc))
        size = pe_enc_prefix_size(enc)
        if size - 8 > 0xFFFFFFFF:
            raise PeerMetadataTypeError(msg.frame_too_large())
        out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>size)
        pe_enc_write_prefix(enc, <uint8_t *>PyBytes_AS_STRING(out))
        return out
    finally:
        _release(e)


def encode_peer_header(metadata):
    cdef _Encoder e
    cdef pe_encoder *enc
    cdef size_t size
    cdef bytearray body
    cdef bytes text
    _check_metadata(metadata)
    e = _acquire()
    try:
        enc = &e.enc
        _feed_struct(enc, metadata)
        size = pe_enc_struct_size(enc)
        body = bytearray(size)
        pe_enc_write_struct(enc, <uint8_t *><char *>body)
    finally:
        _release(e)
    text = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>pe_base64_encoded_len(size))
    pe_base64_encode(<const uint8_t *><char *>body, size, PyBytes_AS_STRING(text))
    return text.decode("ascii")


# --------------------------------------------------------------------------- streaming

cdef class PeerPrefixDecoder:
    """Streaming prefix decoder (see the .pyi for the documentation)."""

    cdef pe_stream st
    cdef readonly str state
    cdef readonly object exchange
    cdef readonly object error
    cdef readonly bytes leftover
    cdef readonly bytes passthrough

    def __cinit__(self, *, max_size=DEFAULT_MAX_FRAME):
        pe_stream_init(&self.st, _check_max_size(max_size))
        self.state = NEED_MORE
        self.exchange = None
        self.error = None
        self.leftover = b""
        self.passthrough = b""

    def __dealloc__(self):
        pe_stream_free(&self.st)

    @property
    def max_size(self):
        return self.st.max_size

    @property
    def buffered(self):
        return self.st.len if self.state is NEED_MORE else 0

    cdef bytes _held_plus(self, const unsigned char *rest, size_t rest_len):
        cdef bytes out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(self.st.len + rest_len))
        cdef char *o = PyBytes_AS_STRING(out)
        if self.st.len:
            memcpy(o, self.st.buf, self.st.len)
        if rest_len:
            memcpy(o + self.st.len, rest, rest_len)
        return out

    cdef int _not_mesh(self, object error, const unsigned char *rest, size_t rest_len) except -1:
        self.passthrough = self._held_plus(rest, rest_len)
        self.error = error
        self.state = NOT_MESH
        pe_stream_free(&self.st)
        return 0

    def feed(self, chunk):
        cdef _Input inp
        cdef size_t taken = 0
        cdef pe_stream_state s
        if self.state is not NEED_MORE:
            raise DecoderFinishedError(msg.feed_after_finish(self.state))
        inp = _Input()
        inp.open(chunk, "chunk")
        s = pe_stream_feed(&self.st, inp.ptr, inp.size, &taken)
        if s == PE_STREAM_NEED_MORE:
            return NEED_MORE
        if s == PE_STREAM_NOT_MESH:
            if self.st.err.status == PE_NO_MEMORY:
                raise MemoryError("peer exchange: out of memory while buffering a frame")
            self._not_mesh(_error(self.st.err.status, self.st.err.offset),
                           inp.ptr + taken, inp.size - taken)
            return NOT_MESH
        try:
            # The decoder's own buffer, but feed() may be called from another thread
            # meanwhile (misuse, yet it must not free the buffer under the walk).
            exchange = _decode_prefix(self.st.buf, self.st.len, self.st.max_size, False)
        except PeerExchangeError as exc:
            self._not_mesh(exc, inp.ptr + taken, inp.size - taken)
            return NOT_MESH
        self.exchange = exchange
        self.leftover = PyBytes_FromStringAndSize(
            <const char *>inp.ptr + taken, <Py_ssize_t>(inp.size - taken)
        )
        self.state = DONE
        pe_stream_free(&self.st)
        return DONE

    def __repr__(self):
        return f"<PeerPrefixDecoder state={self.state!r} buffered={self.buffered}>"
