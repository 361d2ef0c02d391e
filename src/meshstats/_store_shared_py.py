"""A shared store in pure Python: ``_store_py.Store.shared`` (docs/store.md, "Shared stores").

>>> import os, tempfile
>>> from meshstats._store_py import Store
>>> folder = tempfile.TemporaryDirectory()
>>> path = os.path.join(folder.name, "app.store")
>>> a, b = Store.shared(path), Store.shared(path)  # two processes, or one
>>> m = a.counter("c_total", "", ("k",))
>>> b.counter("c_total", "", ("k",)) == m, b.series(m, ("x",)) == a.series(m, ("x",))
(True, True)
>>> a.inc(a.series(m, ("x",)), 2); b.value(b.series(m, ("x",)))
2
>>> folder.cleanup()

The file is the compiled store's, byte for byte ("File layout, version 1"): the same head,
vectors, tables, hashes and slots, written in the same order with the same publishing
stores, so a C process and a pure-Python process share one file. Recording uses
libatomic's functions through ctypes (the very instructions ``<stdatomic.h>`` compiles to),
so it is lock-free against C recorders on the same slots; structural changes take the
same lock (a ``threading.Lock``, then ``flock``) and repair after a dead writer the same
way as ``store.c``. Python's ``mmap`` cannot map past the end of a file, so where C maps
the whole reservation once, this twin maps the file as it is and maps it again, larger,
when the head's ``size`` has grown past its mapping; refs are offsets, so nothing else
changes. Older mappings stay valid while a caller still holds one.

What this process caches never goes stale: published elements (a series' slots ref, kind,
metric and label set; strings; label sets; metric definitions) never change. Everything
that grows is read again from the file: a vector's count (acquire) before any element past
what the cache holds, the tables and counters always.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct
import sys
import threading
import weakref
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _messages as msg
from . import _render_py
from ._render_py import (
    BUDGET_FAMILY,
    BUDGET_HELP,
    OVERFLOW_FAMILY,
    OVERFLOW_HELP,
    HistogramValue,
    Snapshot,
    SnapshotEntry,
)
from ._store_py import (
    _COUNTER,
    _FLOAT_DTYPES,
    _GAUGE,
    _HISTOGRAM,
    _INT_DTYPES,
    _KIND_NAMES,
    _OVERFLOW_VALUE,
    _U64_MAX,
    Store,
    _batch_array,
    _charge_shape,
    _escaped_bytes,
    _series_number,
)
from .errors import (
    DuplicateMetricError,
    InvalidLabelsError,
    InvalidMetricError,
    InvalidSampleError,
    MeshstatsError,
    StoreFileError,
    UnknownSeriesError,
)

__all__ = ["SharedStore", "open_shared"]

if sys.byteorder != "little":  # pragma: no cover - the layout is little-endian
    raise ImportError("meshstats shared stores need a little-endian machine")

# ---- the file layout (docs/store.md, "File layout, version 2") ---------------------------

_MAGIC = 0x3165726F74736D6D  # b"mmstore1"
_VERSION = 2
_HEAD_SIZE = 256
_FILE_PAGE = 65536
_NONE = 0xFFFFFFFF  # "no id" in u32 fields (MS_NO_SERIES)
_MAX_METRICS = 1 << 30
_SLOT_PAGE_BYTES = 16384
_PAGE_SHIFT = 8

# Head fields.
_H_MAGIC, _H_VERSION, _H_RESERVE, _H_SIZE, _H_USED = 0, 8, 16, 24, 32
_H_WRITER, _H_OVERFLOW_STRING, _H_SEED = 40, 44, 48
_H_EXPOSITION, _H_RENDER_HINT, _H_REPAIRS = 72, 80, 88
# Vectors (24 bytes: elem_size, dir_cap, n_pages, count as u32; dir as a ref).
_V_METRICS, _V_SERIES = 96, 120
_VEC_DIR_CAP, _VEC_N_PAGES, _VEC_COUNT, _VEC_DIR = 4, 8, 12, 16
# Pools (24 bytes: dir_cap, n_pages, next, count as u32; dir as a ref) of 4-byte units in
# pages of 4096 units; a record id is its unit offset over the pages laid end to end.
_P_STRINGS, _P_LABELSETS = 144, 168
_POOL_DIR_CAP, _POOL_N_PAGES, _POOL_NEXT, _POOL_COUNT, _POOL_DIR = 0, 4, 8, 12, 16
_POOL_SHIFT = 12
_POOL_UNITS = 1 << _POOL_SHIFT
_POOL_GAP, _POOL_BIG = 0xFFFFFFFF, 0xFFFFFFFE
# Tables (16 bytes: slots ref, cap, used).
_T_STRINGS, _T_LABELSETS, _T_SERIES = 192, 208, 224
# Metric fields (128 bytes).
_M_OVERFLOW_SERIES, _M_N_SERIES, _M_OVERFLOW_COUNT, _M_BUDGET_COUNT = 20, 32, 40, 48
_M_PAGE, _M_PAGE_USED, _M_PAGE_CAP = 112, 120, 124
_METRIC_SIZE = 128
# Series flags, in the low bits of the slots ref.
_ACTIVE, _HIDDEN = 1, 2

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEAD_START = struct.Struct("<QIIQQQ")  # magic, version, head size, reserve, size, used
_SETTINGS = struct.Struct("<QQQ")  # seed, default_max_series, max_exposition_bytes
_TABLE = struct.Struct("<QI")  # slots, cap
_SERIES = struct.Struct("<QII")  # slots | flags, metric << 2 | kind, label set
# kind, id, n_labels, n_bounds, stride, max_series, charge_base, charge_lines, name,
# help, label_names, bounds, bound_text
_METRIC = struct.Struct("<5I4xQ24x7Q")
# Values that other processes change while this one reads them: native formats, which
# CPython's struct reads with one aligned 8-byte memcpy each (one load on x86-64 and
# aarch64, so a value is never seen half-written), unlike the "<" formats' byte loops.
_NATIVE_U64 = struct.Struct("Q")
_NATIVE_F64 = struct.Struct("d")

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_LABELSET_SALT = 0x5BD1E995

# libatomic's memory orders (__ATOMIC_*).
_RELAXED, _ACQUIRE, _RELEASE = 0, 2, 3

# Why a label set goes to the overflow series (store.c's fold_cause).
_NO_FOLD, _FOLD_MAX_SERIES, _FOLD_BUDGET = 0, 1, 2


# ---- hashes: exactly store.c's, so tables built here are valid for C and back ----------


def _mix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


def _hash_bytes(seed: int, data: bytes) -> int:
    """store.c's ``hash_bytes``: whole little-endian words, then a tagged tail.

    >>> hex(_hash_bytes(0, b""))
    '0x0'
    >>> _hash_bytes(1, b"abc") == _hash_bytes(1, b"abc") != _hash_bytes(2, b"abc")
    True
    """
    n = len(data)
    h = seed ^ ((n * _GOLDEN) & _M64)
    whole = n & ~7
    if whole:
        for (word,) in _U64.iter_unpack(data[:whole]):
            h = ((h ^ _mix64(word)) * _GOLDEN) & _M64
    if n > whole:
        word = int.from_bytes(data[whole:], "little") ^ ((n - whole) << 56)
        h = ((h ^ _mix64(word)) * _GOLDEN) & _M64
    return _mix64(h)


def _bits(v: float) -> int:
    return _NATIVE_U64.unpack(_NATIVE_F64.pack(v))[0]  # type: ignore[no-any-return]


def _float(bits: int) -> float:
    return _NATIVE_F64.unpack(_NATIVE_U64.pack(bits))[0]  # type: ignore[no-any-return]


# ---- libatomic ---------------------------------------------------------------------------


class _Atomics:
    """libatomic's 4- and 8-byte functions: what the C store's ``<stdatomic.h>`` calls are."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        def fn(name: str, args: list[Any], result: Any) -> Callable[..., Any]:
            f = getattr(lib, name)
            f.argtypes = args
            f.restype = result
            return f  # type: ignore[no-any-return]

        ptr, u64, u32, order = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int
        self.load8 = fn("__atomic_load_8", [ptr, order], u64)
        self.store8 = fn("__atomic_store_8", [ptr, u64, order], None)
        self.add8 = fn("__atomic_fetch_add_8", [ptr, u64, order], u64)
        self.cas8 = fn("__atomic_compare_exchange_8", [ptr, ptr, u64, order, order], ctypes.c_bool)
        self.load4 = fn("__atomic_load_4", [ptr, order], u32)
        self.store4 = fn("__atomic_store_4", [ptr, u32, order], None)


_ATOMICS: list[_Atomics] = []


def _atomics() -> _Atomics:
    if not _ATOMICS:
        try:
            _ATOMICS.append(_Atomics(ctypes.CDLL("libatomic.so.1")))
        except (OSError, AttributeError) as exc:
            raise OSError(
                "a shared store on the pure-Python backend records with libatomic, which "
                "could not be loaded (install the libatomic1 package, or libatomic on "
                f"Fedora and Alpine): {exc}"
            ) from exc
    return _ATOMICS[0]


# ---- the file and its mappings ---------------------------------------------------------------


class _File:
    """The store's open file, and the process that opened it (flock belongs to an open file)."""

    __slots__ = ("fd", "pid")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pid = os.getpid()

    def own(self) -> None:
        """A forked child opens the file again, so its flock excludes its parent's."""
        if self.pid == os.getpid():
            return
        fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDWR | os.O_CLOEXEC)
        os.close(self.fd)
        self.fd, self.pid = fd, os.getpid()

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


class _Map:
    """``size`` bytes of the file, MAP_SHARED, and their address for libatomic."""

    __slots__ = ("mm", "pin", "base", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # The exported buffer keeps the mapping in place for as long as this object lives.
        self.pin = ctypes.c_char.from_buffer(self.mm)
        self.base: int = ctypes.addressof(self.pin)
        self.size = size


class _Word(ctypes.Union):
    """A slot's 8 bytes as the u64 libatomic swaps and the double they hold."""

    _fields_ = [("u", ctypes.c_uint64), ("d", ctypes.c_double)]


class _FileFull(Exception):
    """The file cannot grow (its reserve is used up, or ftruncate failed): C's MS_ERR_NOMEM."""


class _SharedMetric:
    """What never changes about a metric once published, and where it lives."""

    __slots__ = (
        "id", "off", "kind", "name", "family", "help", "label_names", "buckets", "raw_bounds",
        "max_series", "stride", "overflow_key", "charge_base", "charge_lines", "values",
    )  # fmt: skip

    def __init__(
        self,
        off: int,
        fields: tuple[int, ...],
        name: str,
        help_text: str,
        label_names: tuple[str, ...],
        raw_bounds: bytes,
    ) -> None:
        kind, metric_id, _, n_bounds, stride, max_series, base, lines = fields[:8]
        self.id = metric_id
        self.off = off
        self.kind = kind
        self.name = name
        self.family = _render_py.openmetrics_family(name, _KIND_NAMES[kind])
        self.help = help_text
        self.label_names = label_names
        self.raw_bounds = raw_bounds
        self.buckets: tuple[float, ...] = struct.unpack(f"<{n_bounds}d", raw_bounds)
        self.max_series = max_series
        self.stride = stride
        self.overflow_key = (_OVERFLOW_VALUE,) * len(label_names) if label_names else None
        self.charge_base, self.charge_lines = base, lines
        # A histogram series' slots: the bucket counts, then the sum (read lock-free).
        self.values = struct.Struct(f"{n_bounds + 1}Qd") if kind == _HISTOGRAM else None


_OPEN: weakref.WeakSet[SharedStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held a lock at fork; it does not exist here.
    for store in list(_OPEN):
        store._new_locks()


os.register_at_fork(after_in_child=_after_fork_in_child)


def open_shared(
    path: object,
    default_max_series: object = 100_000,
    max_exposition_bytes: object = 256 * 1024 * 1024,
    reserve: object = msg.DEFAULT_SHARED_RESERVE,
) -> SharedStore:
    """``Store.shared``: open the store in ``path``, making it if the file is new or empty.

    Checks and protocol are ``ms_store_open_shared``'s: the path and the arguments first,
    then, under ``flock``, a fresh file (empty, or an all-zero head) is made with its
    magic written last, and any other file must be a whole store of this layout version.
    """
    resolved = msg.shared_store_path(path)
    n = min(msg.check_max_series(default_max_series, "default_max_series"), _U64_MAX)
    budget = min(msg.check_max_series(max_exposition_bytes, "max_exposition_bytes"), _U64_MAX)
    span = msg.check_reserve(reserve)
    atomics = _atomics()
    file = _File(os.open(resolved, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    try:
        fcntl.flock(file.fd, fcntl.LOCK_EX)
        try:
            store = _open_locked(resolved, file, atomics, n, budget, span)
        finally:
            fcntl.flock(file.fd, fcntl.LOCK_UN)
    except BaseException:
        file.close()
        raise
    return store


def _open_locked(
    path: str, file: _File, atomics: _Atomics, default_max: int, budget: int, reserve: int
) -> SharedStore:
    file_size = os.fstat(file.fd).st_size
    head = bytes(_HEAD_SIZE)
    if file_size >= _HEAD_SIZE:
        head = os.pread(file.fd, _HEAD_SIZE, 0)
        if len(head) != _HEAD_SIZE:
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
    elif file_size > 0:
        raise StoreFileError(path, msg.FILE_TRUNCATED)
    magic, version, head_size, file_reserve, size, used = _HEAD_START.unpack_from(head)
    # A file without the magic is new, or its creator died before writing the magic last
    # (it had written this version and head size): made again, under the lock.
    fresh = magic == 0
    if fresh:
        if any(head) and (version, head_size) != (_VERSION, _HEAD_SIZE):
            raise StoreFileError(path, msg.FILE_NOT_A_STORE)
        head = bytes(_HEAD_SIZE)
    elif magic != _MAGIC:
        raise StoreFileError(path, msg.FILE_NOT_A_STORE)
    elif version != _VERSION:
        raise StoreFileError(path, msg.file_version(version, _VERSION))
    elif head_size != _HEAD_SIZE or used < _HEAD_SIZE:
        raise StoreFileError(path, msg.FILE_NOT_A_STORE)
    elif size > file_size or used > size or size > file_reserve or file_reserve % _FILE_PAGE:
        raise StoreFileError(path, msg.FILE_TRUNCATED)
    if fresh:
        os.ftruncate(file.fd, _FILE_PAGE)
        file_size = _FILE_PAGE
    store = SharedStore(path, file, _Map(file.fd, file_size), atomics)
    if fresh:
        store._init_head(reserve, default_max, budget)
    else:
        store._load_settings()
        if store._ld4(_H_WRITER, _ACQUIRE):
            store._repair()
            store._st4(_H_WRITER, 0, _RELEASE)
    return store


class SharedStore(Store):
    """A ``Store`` whose metrics and series live in a file that many processes map.

    Made by ``Store.shared(path)`` (see there); the API and every result are a private
    store's, except that registering a metric again with the same definition returns its
    id (another process may have registered it first).
    """

    def __init__(self, path: str, file: _File, mp: _Map, atomics: _Atomics) -> None:
        # Not Store.__init__: this store keeps nothing of its own but caches of the file.
        self._path = path
        self._file = file
        self._map = mp
        self._load8 = atomics.load8
        self._store8 = atomics.store8
        self._add8 = atomics.add8
        self._cas8 = atomics.cas8
        self._load4 = atomics.load4
        self._store4 = atomics.store4
        self._new_locks()
        self._seed = self._default_max = self._max_bytes = self._reserve = 0
        # Caches of published, never-changing elements, extended from the vectors' counts.
        self._mets: list[_SharedMetric] = []
        self._kinds = bytearray()  # per series; appended last, so readers may trust it
        self._recs: list[int] = []  # offset of the series element
        self._slots: list[int] = []  # its slots ref
        self._metric_kind: list[int] = []
        self._labelset_of: list[int] = []
        self._series_metric: list[_SharedMetric] = []
        self._pages: dict[int, list[int]] = {}  # vector -> refs of its pages, as far as known
        self._strings: dict[int, bytes] = {}
        self._labelsets: dict[int, tuple[int, ...]] = {}
        # And back: ids found in (or added to) the tables, so a value seen once in this
        # process is not hashed and probed again (a miss still goes to the table).
        self._string_ids: dict[bytes, int] = {}
        self._labelset_ids: dict[tuple[int, ...], int] = {}
        self._label_values: dict[int, tuple[str, ...]] = {}
        # (metric, label values) -> series: a label set's series never changes once made.
        self._found: dict[tuple[int, tuple[str, ...]], int] = {}
        self._per_process: set[int] = set()  # this handle's per-process gauges (gauge())
        _OPEN.add(self)

    def _new_locks(self) -> None:
        self._lock = threading.Lock()  # this process' threads; flock for the others
        self._cache_lock = threading.RLock()  # extending the caches
        self._map_lock = threading.Lock()  # replacing the mapping (never by a smaller one)

    def __repr__(self) -> str:
        return (
            f"<meshstats.Store shared in {self._path!r}: {self._sync_metrics()} metrics, "
            f"{self._sync_series()} series>"
        )

    @property
    def path(self) -> str:
        """The file this store lives in (``None`` for a private store)."""
        return self._path

    def repairs(self) -> int:
        """Times a change whose process died mid-way was repaired (the head's counter)."""
        return self._ld8(_H_REPAIRS)

    # -- memory ----------------------------------------------------------------------------

    def _cover(self, end: int) -> _Map:
        """A mapping that reaches ``end``: the current one, or a larger one of the file."""
        mp = self._map
        if end > mp.size:
            mp = self._remap(end)
        return mp

    def _remap(self, end: int) -> _Map:
        with self._map_lock:
            mp = self._map
            size = self._load8(mp.base + _H_SIZE, _RELAXED)
            if size > mp.size:
                mp = _Map(self._file.fd, size)
                self._map = mp
        if end > mp.size:  # a ref past the file's end: not a file this store made
            raise StoreFileError(self._path, msg.FILE_TRUNCATED)
        return mp

    def _u32(self, off: int) -> int:
        return _U32.unpack_from(self._cover(off + 4).mm, off)[0]  # type: ignore[no-any-return]

    def _u64(self, off: int) -> int:
        return _U64.unpack_from(self._cover(off + 8).mm, off)[0]  # type: ignore[no-any-return]

    def _w32(self, off: int, value: int) -> None:
        _U32.pack_into(self._cover(off + 4).mm, off, value)

    def _w64(self, off: int, value: int) -> None:
        _U64.pack_into(self._cover(off + 8).mm, off, value)

    def _ld4(self, off: int, order: int = _RELAXED) -> int:
        mp = self._cover(off + 4)
        return self._load4(mp.base + off, order)  # type: ignore[no-any-return]

    def _ld8(self, off: int, order: int = _RELAXED) -> int:
        mp = self._cover(off + 8)
        return self._load8(mp.base + off, order)  # type: ignore[no-any-return]

    def _st4(self, off: int, value: int, order: int = _RELAXED) -> None:
        mp = self._cover(off + 4)
        self._store4(mp.base + off, value, order)

    def _st8(self, off: int, value: int, order: int = _RELAXED) -> None:
        mp = self._cover(off + 8)
        self._store8(mp.base + off, value, order)

    def _fetch_add8(self, off: int, value: int) -> None:
        mp = self._cover(off + 8)
        self._add8(mp.base + off, value, _RELAXED)

    def _add_double(self, mp: _Map, off: int, v: float) -> None:
        """ms_atomic_add_double: a compare-and-swap loop on the bits (ends even for NaN)."""
        # The first guess is a plain copy; a stale or torn one only costs the
        # compare-and-swap a retry, which puts the word's current bits in ``old``.
        old = _Word.from_buffer_copy(mp.mm, off)
        new = _Word()
        addr, expected, cas = mp.base + off, ctypes.byref(old), self._cas8
        new.d = old.d + v
        while not cas(addr, expected, new.u, _RELAXED, _RELAXED):
            new.d = old.d + v

    # -- the head --------------------------------------------------------------------------

    def _init_head(self, reserve: int, default_max: int, budget: int) -> None:
        """head_init for a fresh file (zero but for its first page), the magic last."""
        seed = int.from_bytes(os.urandom(8), "little")
        mm = self._map.mm
        mm[:_HEAD_SIZE] = bytes(_HEAD_SIZE)  # what a creator that died here had written
        struct.pack_into("<IIQ", mm, _H_VERSION, _VERSION, _HEAD_SIZE, reserve)
        self._st8(_H_SIZE, _FILE_PAGE)
        self._st8(_H_USED, _HEAD_SIZE)
        self._w32(_H_OVERFLOW_STRING, _NONE)
        _SETTINGS.pack_into(mm, _H_SEED, seed, default_max, budget)
        for vec, elem_size in ((_V_METRICS, 8), (_V_SERIES, 16)):
            self._w32(vec, elem_size)
        self._st8(_H_MAGIC, _MAGIC, _RELEASE)
        self._load_settings()

    def _load_settings(self) -> None:
        mm = self._map.mm
        self._reserve = _U64.unpack_from(mm, _H_RESERVE)[0]
        self._seed, self._default_max, self._max_bytes = _SETTINGS.unpack_from(mm, _H_SEED)

    # -- the store lock ----------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[None]:
        """The store lock (store_lock/store_unlock): the thread lock, then flock on the file.

        ``writer`` holds this pid meanwhile. A change that stops on an exception other
        than a refusal (a MeshstatsError, raised before anything changes) or a full file
        (where C stops too, consistent) leaves it set, so the next holder repairs, as
        after a writer that died.
        """
        self._lock.acquire()
        try:
            self._file.own()
            fcntl.flock(self._file.fd, fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise
        clean = False
        try:
            if self._ld4(_H_WRITER, _ACQUIRE):
                self._repair()
            self._st4(_H_WRITER, os.getpid())
            yield
            clean = True
        except MeshstatsError:
            clean = True
            raise
        except _FileFull as full:
            clean = True
            raise MemoryError(f"{self._path}: {full}") from None
        finally:
            try:
                if clean:
                    self._st4(_H_WRITER, 0, _RELEASE)
                fcntl.flock(self._file.fd, fcntl.LOCK_UN)
            finally:
                self._lock.release()

    # -- allocation (the caller holds the lock) ---------------------------------------------

    def _file_grow(self, need: int) -> None:
        """file_grow: whole pages, at least doubling, never past the reserve."""
        size = self._ld8(_H_SIZE)
        if need <= size:
            return
        if need > self._reserve:
            raise _FileFull(f"the shared store is full (its reserve is {self._reserve} bytes)")
        grown = max(size * 2, need)
        grown = min((grown + _FILE_PAGE - 1) & ~(_FILE_PAGE - 1), self._reserve)
        try:
            os.ftruncate(self._file.fd, grown)
        except OSError as exc:
            raise _FileFull(f"the shared store cannot grow to {grown} bytes: {exc}") from None
        self._st8(_H_SIZE, grown, _RELEASE)

    def _file_alloc(self, n: int, align: int) -> int:
        """file_alloc: zeroed bytes at the bump pointer, growing the file if it must.

        Raises ``_FileFull`` where the compiled store returns MS_ERR_NOMEM: a stop at a
        consistent point, so the lock's holder clears ``writer`` as after any refusal.
        """
        at = (self._ld8(_H_USED) + align - 1) & ~(align - 1)
        if at + n > _M64:
            raise _FileFull("the shared store is full")
        self._file_grow(at + n)
        self._st8(_H_USED, at + n)
        self._cover(at + n)
        return at

    def _str_copy(self, data: bytes) -> int:
        at = self._file_alloc(4 + len(data), 4)
        escape = b"\\" in data or b'"' in data or b"\n" in data
        self._w32(at, len(data) | (0x80000000 if escape else 0))
        mm = self._cover(at + 4 + len(data)).mm
        mm[at + 4 : at + 4 + len(data)] = data
        return at

    # -- vectors -------------------------------------------------------------------------------

    def _count(self, vec: int) -> int:
        return self._ld4(vec + _VEC_COUNT, _ACQUIRE)

    def _elem(self, vec: int, i: int, elem_size: int) -> int:
        """Offset of published element ``i`` (the caller has seen a count above it)."""
        page = i >> _PAGE_SHIFT
        pages = self._pages.get(vec, [])
        if page >= len(pages):
            dir_ref = self._ld8(vec + _VEC_DIR, _ACQUIRE)
            mm = self._cover(dir_ref + 8 * (page + 1)).mm
            pages = list(struct.unpack_from(f"<{page + 1}Q", mm, dir_ref))
            self._pages[vec] = pages
        return pages[page] + (i & 0xFF) * elem_size

    def _pvec_reserve(self, vec: int) -> int:
        """pvec_reserve: room for element ``count``, visible only once published."""
        elem_size, dir_cap, n_pages, n = struct.unpack_from("<4I", self._map.mm, vec)
        page = n >> _PAGE_SHIFT
        dir_ref = self._u64(vec + _VEC_DIR)
        if page >= n_pages:
            if page >= dir_cap:
                # Readers may still hold the old directory: it stays.
                cap = dir_cap * 2 if dir_cap else 4
                grown = self._file_alloc(cap * 8, 8)
                if page:
                    mm = self._cover(grown + page * 8).mm
                    mm[grown : grown + page * 8] = mm[dir_ref : dir_ref + page * 8]
                self._st8(vec + _VEC_DIR, grown, _RELEASE)
                dir_ref = grown
                self._w32(vec + _VEC_DIR_CAP, cap)
            self._w64(dir_ref + page * 8, self._file_alloc(elem_size << _PAGE_SHIFT, 16))
            self._w32(vec + _VEC_N_PAGES, page + 1)
        return self._u64(dir_ref + page * 8) + int(n & 0xFF) * int(elem_size)

    def _pvec_publish(self, vec: int) -> int:
        n = self._u32(vec + _VEC_COUNT)
        self._st4(vec + _VEC_COUNT, n + 1, _RELEASE)
        return n

    # -- pools ----------------------------------------------------------------------------------

    def _pool_unit(self, pool: int, unit: int) -> int:
        """Offset of a pool's unit (a record's first, or a marker)."""
        page = unit >> _POOL_SHIFT
        pages = self._pages.get(pool, [])
        if page >= len(pages):
            dir_ref = self._ld8(pool + _POOL_DIR, _ACQUIRE)
            mm = self._cover(dir_ref + 8 * (page + 1)).mm
            pages = list(struct.unpack_from(f"<{page + 1}Q", mm, dir_ref))
            self._pages[pool] = pages
        return pages[page] + 4 * (unit & (_POOL_UNITS - 1))

    def _pool_record(self, pool: int, record: int) -> int:
        """Offset of a published record, in its page or, past a page's size, apart."""
        at = self._pool_unit(pool, record)
        if self._u32(at) != _POOL_BIG:
            return at
        ref = struct.unpack_from("<Q", self._cover(at + 12).mm, at + 4)[0]
        self._cover(ref + 4)
        return int(ref)

    def _pool_reserve(self, pool: int, units: int) -> tuple[int, int]:
        """pool_reserve: (record id, offset to write it at), published by _pool_publish."""
        in_pool = 3 if units > _POOL_UNITS else units
        dir_cap, n_pages, nxt = struct.unpack_from("<3I", self._map.mm, pool)
        off = nxt & (_POOL_UNITS - 1)
        if off and off + in_pool > _POOL_UNITS:  # does not fit this page's rest: a gap
            self._w32(self._pool_unit(pool, nxt), _POOL_GAP)
            nxt = (nxt | (_POOL_UNITS - 1)) + 1
        if nxt + in_pool >= _NONE:
            raise InvalidLabelsError("the shared store's label values or sets fill 16 GiB")
        page = nxt >> _POOL_SHIFT
        dir_ref = self._u64(pool + _POOL_DIR)
        if page >= n_pages:
            if page >= dir_cap:  # readers may still hold the old directory: it stays
                cap = dir_cap * 2 if dir_cap else 4
                grown = self._file_alloc(cap * 8, 8)
                if page:
                    mm = self._cover(grown + page * 8).mm
                    mm[grown : grown + page * 8] = mm[dir_ref : dir_ref + page * 8]
                self._st8(pool + _POOL_DIR, grown, _RELEASE)
                dir_ref = grown
                self._w32(pool + _POOL_DIR_CAP, cap)
            self._w64(dir_ref + page * 8, self._file_alloc(4 * _POOL_UNITS, 16))
            self._w32(pool + _POOL_N_PAGES, page + 1)
            self._pages.pop(pool, None)
        at = self._u64(dir_ref + page * 8) + 4 * (nxt & (_POOL_UNITS - 1))
        if in_pool == units:
            return nxt, at
        big = self._file_alloc(4 * units, 8)
        self._w32(at, _POOL_BIG)
        struct.pack_into("<Q", self._cover(at + 12).mm, at + 4, big)
        return nxt, big

    def _pool_publish(self, pool: int, record: int, units: int) -> None:
        self._w32(pool + _POOL_COUNT, self._u32(pool + _POOL_COUNT) + 1)
        in_pool = 3 if units > _POOL_UNITS else units
        self._st4(pool + _POOL_NEXT, record + in_pool, _RELEASE)

    def _pool_records(self, pool: int, labelsets: bool) -> list[int]:
        """pool_walk: every published record's id, in order."""
        nxt = self._ld4(pool + _POOL_NEXT, _ACQUIRE)
        self._grow_map()
        ids = []
        unit = 0
        while unit < nxt:
            first = self._u32(self._pool_unit(pool, unit))
            if first == _POOL_GAP:
                unit = (unit | (_POOL_UNITS - 1)) + 1
                continue
            ids.append(unit)
            if first == _POOL_BIG:
                unit += 3
            elif labelsets:
                unit += 1 + first
            else:
                unit += 1 + ((first & 0x7FFFFFFF) + 3) // 4
        return ids

    # -- the caches of published elements ------------------------------------------------------

    def _string_bytes(self, string_id: int) -> bytes:
        data = self._strings.get(string_id)
        if data is None:
            ref = self._pool_record(_P_STRINGS, string_id)
            n = self._u32(ref) & 0x7FFFFFFF
            data = bytes(self._cover(ref + 4 + n).mm[ref + 4 : ref + 4 + n])
            self._strings[string_id] = data
        return data

    def _str_at(self, ref: int) -> str:
        n = self._u32(ref) & 0x7FFFFFFF
        return bytes(self._cover(ref + 4 + n).mm[ref + 4 : ref + 4 + n]).decode("utf-8")

    def _labelset(self, labelset: int) -> tuple[int, ...]:
        ids = self._labelsets.get(labelset)
        if ids is None:
            ref = self._pool_record(_P_LABELSETS, labelset)
            n = self._u32(ref)
            ids = struct.unpack_from(f"<{n}I", self._cover(ref + 4 + 4 * n).mm, ref + 4)
            self._labelsets[labelset] = ids
        return ids

    def _values_of(self, labelset: int) -> tuple[str, ...]:
        values = self._label_values.get(labelset)
        if values is None:
            ids = self._labelset(labelset)
            values = tuple(self._string_bytes(i).decode("utf-8") for i in ids)
            self._label_values[labelset] = values
        return values

    def _grow_map(self) -> None:
        """Map everything published so far (called after a count's acquire load)."""
        mp = self._map
        if self._load8(mp.base + _H_SIZE, _RELAXED) > mp.size:
            self._remap(0)

    def _sync_metrics(self) -> int:
        n = self._count(_V_METRICS)
        if n > len(self._mets):
            with self._cache_lock:
                self._grow_map()
                for i in range(len(self._mets), n):
                    off = self._u64(self._elem(_V_METRICS, i, 8))
                    fields = _METRIC.unpack_from(self._cover(off + _METRIC_SIZE).mm, off)
                    n_labels, n_bounds = fields[2], fields[3]
                    name_ref, help_ref, names_ref, bounds_ref = fields[8:12]
                    names: tuple[str, ...] = ()
                    if n_labels:
                        refs = struct.unpack_from(
                            f"<{n_labels}Q", self._cover(names_ref + 8 * n_labels).mm, names_ref
                        )
                        names = tuple(self._str_at(r) for r in refs)
                    raw = b""
                    if n_bounds:
                        raw = bytes(self._cover(bounds_ref + 8 * n_bounds).mm[
                            bounds_ref : bounds_ref + 8 * n_bounds
                        ])  # fmt: skip
                    self._mets.append(
                        _SharedMetric(
                            off,
                            fields,
                            self._str_at(name_ref),
                            self._str_at(help_ref),
                            names,
                            raw,
                        )
                    )
        return n

    def _sync_series(self) -> int:
        """The series count (acquire), with every series below it in the caches."""
        n = self._count(_V_SERIES)
        if n > len(self._kinds):
            with self._cache_lock:
                have = len(self._kinds)
                if n > have:
                    self._grow_map()
                    mm = self._map.mm
                    mets = self._mets
                    for i in range(have, n):
                        rec = self._elem(_V_SERIES, i, 16)
                        word, metric_kind, labelset = _SERIES.unpack_from(mm, rec)
                        if metric_kind >> 2 >= len(mets):
                            self._sync_metrics()
                            mets = self._mets
                        self._recs.append(rec)
                        self._slots.append(word & ~3)
                        self._metric_kind.append(metric_kind)
                        self._labelset_of.append(labelset)
                        self._series_metric.append(mets[metric_kind >> 2])
                        self._kinds.append(metric_kind & 3)  # last: the series is cached
        return n

    # -- tables (under the lock) -----------------------------------------------------------

    def _probe(self, table: int, h: int, eq: Callable[[int], bool]) -> tuple[int, int]:
        """table_find: (offset of the slot holding the key or the empty one, its value)."""
        slots, cap = _TABLE.unpack_from(self._map.mm, table)
        mask = cap - 1
        mm = self._cover(slots + 4 * cap).mm
        i = h & mask
        while True:
            at = slots + 4 * i
            value = _U32.unpack_from(mm, at)[0]
            if value == 0 or eq(value - 1):
                return at, value
            i = (i + 1) & mask

    def _table_get(self, table: int, h: int, eq: Callable[[int], bool]) -> int:
        if not self._u32(table + 8):
            return _NONE
        value = self._probe(table, h, eq)[1]
        return value - 1 if value else _NONE

    def _table_insert(self, table: int, h: int, eq: Callable[[int], bool], item: int) -> None:
        self._w32(self._probe(table, h, eq)[0], item + 1)
        self._w32(table + 12, self._u32(table + 12) + 1)

    def _table_reserve(self, table: int, rehash: Callable[[int], int]) -> None:
        slots, cap = _TABLE.unpack_from(self._map.mm, table)
        used = self._u32(table + 12)
        if (used + 1) * 10 <= cap * 7:
            return
        if cap >= 1 << 31:
            raise InvalidLabelsError("a table of the shared store is full (2**31 entries)")
        new_cap = cap * 2 if cap else 16
        ref = self._file_alloc(4 * new_cap, 4)
        if cap:
            old = array("I", self._cover(slots + 4 * cap).mm[slots : slots + 4 * cap])
            self._fill(ref, new_cap, [v - 1 for v in old if v], rehash)
        self._w64(table, ref)
        self._w32(table + 8, new_cap)

    def _fill(self, ref: int, cap: int, ids: Sequence[int], rehash: Callable[[int], int]) -> int:
        """table_fill: ``ids`` in this order into fresh slots at ``ref``; returns how many."""
        slots = array("I", bytes(4 * cap))
        mask = cap - 1
        for item in ids:
            j = rehash(item) & mask
            while slots[j]:
                j = (j + 1) & mask
            slots[j] = item + 1
        mm = self._cover(ref + 4 * cap).mm
        mm[ref : ref + 4 * cap] = slots.tobytes()
        return len(ids)

    def _string_hash(self, data: bytes) -> int:
        return _hash_bytes(self._seed, data)

    def _labelset_hash(self, ids: Sequence[int]) -> int:
        return _hash_bytes(self._seed ^ _LABELSET_SALT, struct.pack(f"<{len(ids)}I", *ids))

    def _series_hash(self, metric: int, labelset: int) -> int:
        return _mix64(self._seed ^ ((metric << 32) | labelset))

    def _string_rehash(self, string_id: int) -> int:
        return self._string_hash(self._string_bytes(string_id))

    def _labelset_rehash(self, labelset: int) -> int:
        return self._labelset_hash(self._labelset(labelset))

    def _series_rehash(self, series: int) -> int:
        if series >= len(self._kinds):
            self._sync_series()
        return self._series_hash(self._metric_kind[series] >> 2, self._labelset_of[series])

    def _string_lookup(self, data: bytes, h: int | None = None) -> int:
        found = self._string_ids.get(data)
        if found is None:
            found = self._table_get(
                _T_STRINGS,
                self._string_hash(data) if h is None else h,
                lambda i: self._string_bytes(i) == data,
            )
            if found != _NONE:
                self._string_ids[data] = found
        return found

    def _string_intern(self, data: bytes) -> int:
        if data in self._string_ids:
            return self._string_ids[data]
        h = self._string_hash(data)
        found = self._string_lookup(data, h)
        if found != _NONE:
            return found

        def eq(i: int) -> bool:
            return self._string_bytes(i) == data

        self._table_reserve(_T_STRINGS, self._string_rehash)
        units = 1 + (len(data) + 3) // 4
        string_id, at = self._pool_reserve(_P_STRINGS, units)
        escape = b"\\" in data or b'"' in data or b"\n" in data
        self._w32(at, len(data) | (0x80000000 if escape else 0))
        mm = self._cover(at + 4 + len(data)).mm
        mm[at + 4 : at + 4 + len(data)] = data
        self._pool_publish(_P_STRINGS, string_id, units)
        self._strings[string_id] = data
        self._string_ids[data] = string_id
        self._table_insert(_T_STRINGS, h, eq, string_id)
        return string_id

    def _labelset_lookup(self, ids: tuple[int, ...], h: int | None = None) -> int:
        found = self._labelset_ids.get(ids)
        if found is None:
            found = self._table_get(
                _T_LABELSETS,
                self._labelset_hash(ids) if h is None else h,
                lambda i: self._labelset(i) == ids,
            )
            if found != _NONE:
                self._labelset_ids[ids] = found
        return found

    def _labelset_intern(self, ids: tuple[int, ...]) -> int:
        if ids in self._labelset_ids:
            return self._labelset_ids[ids]
        h = self._labelset_hash(ids)
        found = self._labelset_lookup(ids, h)
        if found != _NONE:
            return found

        def eq(i: int) -> bool:
            return self._labelset(i) == ids

        self._table_reserve(_T_LABELSETS, self._labelset_rehash)
        units = 1 + len(ids)
        labelset, at = self._pool_reserve(_P_LABELSETS, units)
        struct.pack_into(
            f"<{len(ids) + 1}I", self._cover(at + 4 * len(ids) + 4).mm, at, len(ids), *ids
        )
        self._pool_publish(_P_LABELSETS, labelset, units)
        self._labelsets[labelset] = ids
        self._labelset_ids[ids] = labelset
        self._table_insert(_T_LABELSETS, h, eq, labelset)
        return labelset

    # -- repair -------------------------------------------------------------------------------

    def _is_overflow_labelset(self, labelset: int, overflow: int) -> bool:
        ids = self._labelset(labelset)
        return overflow != _NONE and bool(ids) and all(i == overflow for i in ids)

    def _table_rebuild(self, table: int, ids: Sequence[int], rehash: Callable[[int], int]) -> None:
        cap = 16
        while len(ids) * 10 > cap * 7 and cap < 1 << 31:
            cap *= 2
        try:
            ref = self._file_alloc(4 * cap, 4)
        except _FileFull:
            return  # the file cannot grow: the old table stays
        used = self._fill(ref, cap, ids, rehash)
        self._w64(table, ref)
        self._w32(table + 8, cap)
        self._w32(table + 12, used)

    def _repair(self) -> None:
        """store_repair: the last holder of the lock died mid-change (docs/store.md, "Faults").

        Every element below a vector's count is whole; its table entry, a metric's
        ``n_series`` and ``overflow_series`` may be missing, and are rebuilt from the
        vectors. Called with the lock (flock) held.
        """
        self._table_rebuild(_T_STRINGS, self._pool_records(_P_STRINGS, False), self._string_rehash)
        if self._u32(_H_OVERFLOW_STRING) == _NONE:
            self._w32(_H_OVERFLOW_STRING, self._string_lookup(_OVERFLOW_VALUE.encode()))
        self._table_rebuild(
            _T_LABELSETS, self._pool_records(_P_LABELSETS, True), self._labelset_rehash
        )
        n_series = self._sync_series()
        n_metrics = self._sync_metrics()
        overflow = self._u32(_H_OVERFLOW_STRING)
        real = [
            i
            for i in range(n_series)
            if not self._is_overflow_labelset(self._labelset_of[i], overflow)
        ]
        self._table_rebuild(_T_SERIES, real, self._series_rehash)
        counts = [0] * n_metrics
        for i in range(n_series):
            metric = self._metric_kind[i] >> 2
            if metric >= n_metrics:
                continue
            if not self._is_overflow_labelset(self._labelset_of[i], overflow):
                counts[metric] += 1
            else:
                off = self._mets[metric].off + _M_OVERFLOW_SERIES
                if self._ld4(off) == _NONE:
                    self._st4(off, i, _RELEASE)
        for m, count in zip(self._mets, counts):
            self._st8(m.off + _M_N_SERIES, count)
        self._fetch_add8(_H_REPAIRS, 1)

    # -- metrics ---------------------------------------------------------------------------------

    def _register(
        self,
        kind: int,
        name: object,
        help_text: object,
        labels: object,
        buckets: object,
        max_series: object,
    ) -> int:
        help_text, label_names, bounds, limit = msg.check_definition(
            _KIND_NAMES[kind], name, help_text, labels, buckets, max_series
        )
        name = str(name)
        resolved = self._default_max if limit is None else min(limit, _U64_MAX)
        raw = struct.pack(f"<{len(bounds)}d", *bounds)
        with self._write():
            self._sync_metrics()
            taken = {OVERFLOW_FAMILY, OVERFLOW_FAMILY[:-6], BUDGET_FAMILY, BUDGET_FAMILY[:-6]}
            for m in self._mets:
                if m.name == name:  # registered(): this very definition, or refused
                    if (m.kind, m.help, m.label_names, m.raw_bounds, m.max_series) == (
                        kind, help_text, label_names, raw, resolved
                    ):  # fmt: skip
                        return m.id
                    raise DuplicateMetricError(msg.duplicate_metric(name), name=name)
                taken.update((m.name, m.family))
            family = _render_py.openmetrics_family(name, _KIND_NAMES[kind])
            for candidate in (name, family):
                if candidate in taken:
                    raise DuplicateMetricError(msg.duplicate_metric(candidate), name=candidate)
            if len(self._mets) >= _MAX_METRICS:
                raise InvalidMetricError(
                    f"cannot register metric {name!r}: the shared store holds 2**30 metrics"
                )
            return self._metric_add(kind, name, help_text, label_names, bounds, resolved)

    def _metric_add(
        self,
        kind: int,
        name: str,
        help_text: str,
        label_names: tuple[str, ...],
        bounds: tuple[float, ...],
        max_series: int,
    ) -> int:
        """metric_add_locked: the metric and its strings, then published."""
        metric_id = len(self._mets)
        n_bounds = len(bounds)
        off = self._file_alloc(_METRIC_SIZE, 8)
        stride = n_bounds + 2 if kind == _HISTOGRAM else 1
        struct.pack_into(
            "<6IQ", self._cover(off + _METRIC_SIZE).mm, off,
            kind, metric_id, len(label_names), n_bounds, stride, _NONE, max_series,
        )  # fmt: skip
        self._w64(off + 72, self._str_copy(name.encode()))
        self._w64(off + 80, self._str_copy(help_text.encode()))
        if label_names:
            names = self._file_alloc(8 * len(label_names), 8)
            for i, label in enumerate(label_names):
                self._w64(names + 8 * i, self._str_copy(label.encode()))
            self._w64(off + 88, names)
        if bounds:
            at = self._file_alloc(8 * n_bounds, 8)
            text = self._file_alloc(8 * n_bounds, 8)
            struct.pack_into(f"<{n_bounds}d", self._cover(at + 8 * n_bounds).mm, at, *bounds)
            for i, bound in enumerate(bounds):
                self._w64(text + 8 * i, self._str_copy(_render_py.format_float(bound).encode()))
            self._w64(off + 96, at)
            self._w64(off + 104, text)
        base, lines = _charge_shape(name, kind, label_names, bounds)
        struct.pack_into("<QQ", self._map.mm, off + 56, min(base, _U64_MAX), lines)
        self._w64(self._pvec_reserve(_V_METRICS), off)
        published = self._pvec_publish(_V_METRICS)
        self._sync_metrics()
        return published

    def _shared_metric(self, metric: object) -> _SharedMetric:
        number = metric if type(metric) is int else _series_number(metric, "metric")
        mets = self._mets
        if 0 <= number < len(mets) or 0 <= number < self._sync_metrics():
            return self._mets[number]
        raise UnknownSeriesError(msg.unknown_metric(number), number)

    # -- series --------------------------------------------------------------------------------

    def series(self, metric: int, values: Sequence[str]) -> int:
        """The series id of ``values`` in ``metric``, the same in every process of the file."""
        m = self._shared_metric(metric)
        if self._per_process and m.id in self._per_process:
            values = self._with_pid(m.name, m.label_names, values)
        if type(values) is tuple:
            try:
                found = self._found.get((m.id, values))
            except TypeError:  # unhashable member: validation below says what is wrong
                found = None
            if found is not None:
                return found
        key = msg.check_values(m.name, m.label_names, values)
        with self._write():
            sid, stable = self._series_locked(m, key)
        if stable:
            self._found[(m.id, key)] = sid
        return sid

    def _series_locked(self, m: _SharedMetric, key: tuple[str, ...]) -> tuple[int, bool]:
        """series_get_locked: ``(series, found again by these labels?)``, not a fold."""
        n = len(key)
        if n and key == m.overflow_key:
            return self._overflow_of(m, _NO_FOLD), True
        # Look up without interning first: a folded label set must cost no memory.
        values = [v.encode() for v in key]
        ids: list[int] = []
        for data in values:
            string_id = self._string_lookup(data)
            if string_id == _NONE:
                break
            ids.append(string_id)
        labelset = _NONE
        if len(ids) == n:
            labelset = self._labelset_lookup(tuple(ids))
            if labelset != _NONE:
                sid = self._table_get(
                    _T_SERIES, self._series_hash(m.id, labelset), self._series_eq(m.id, labelset)
                )
                if sid != _NONE:
                    return sid, True
        if self._ld8(m.off + _M_N_SERIES) >= m.max_series:
            return self._overflow_of(m, _FOLD_MAX_SERIES), False
        charge = m.charge_base + m.charge_lines * _escaped_bytes(key) if n else 0
        charged = min(self._ld8(_H_EXPOSITION) + charge, _U64_MAX)
        if charged > self._max_bytes:
            return self._overflow_of(m, _FOLD_BUDGET), False
        if labelset == _NONE:
            labelset = self._labelset_intern(tuple(self._string_intern(v) for v in values))
        self._table_reserve(_T_SERIES, self._series_rehash)
        sid = self._series_new(m, labelset)
        self._table_insert(
            _T_SERIES, self._series_hash(m.id, labelset), self._series_eq(m.id, labelset), sid
        )
        self._fetch_add8(m.off + _M_N_SERIES, 1)
        self._st8(_H_EXPOSITION, charged)
        return sid, True

    def _series_eq(self, metric: int, labelset: int) -> Callable[[int], bool]:
        def eq(series: int) -> bool:
            if series >= len(self._kinds):
                self._sync_series()
            return (
                self._metric_kind[series] >> 2 == metric and self._labelset_of[series] == labelset
            )

        return eq

    def _slots_alloc(self, m: _SharedMetric) -> int:
        """slots_alloc: the metric's page, a new one (twice the last) set before page_used."""
        page, used, cap = struct.unpack_from("<QII", self._map.mm, m.off + _M_PAGE)
        size = 8 * m.stride
        if used == cap:
            cap = min(cap * 2 if cap else 4, _SLOT_PAGE_BYTES // size or 1)
            page = self._file_alloc(cap * size, 8)
            self._w64(m.off + _M_PAGE, page)
            self._w32(m.off + _M_PAGE_CAP, cap)
            self._w32(m.off + _M_PAGE_USED, 0)
            used = 0
        self._w32(m.off + _M_PAGE_USED, used + 1)
        return int(page + used * size)

    def _series_new(self, m: _SharedMetric, labelset: int) -> int:
        if self._u32(_V_SERIES + _VEC_COUNT) >= _NONE - 1:
            raise InvalidLabelsError("the shared store holds 2**32 - 2 series: no more")
        slots = self._slots_alloc(m)
        rec = self._pvec_reserve(_V_SERIES)
        # A new series counts as recorded: visible through at least one expiry sweep.
        _SERIES.pack_into(
            self._cover(rec + 16).mm, rec, slots | _ACTIVE, m.id << 2 | m.kind, labelset
        )
        return self._pvec_publish(_V_SERIES)

    def _overflow_of(self, m: _SharedMetric, fold: int) -> int:
        sid = self._ld4(m.off + _M_OVERFLOW_SERIES)
        if sid == _NONE:
            overflow = self._u32(_H_OVERFLOW_STRING)
            if overflow == _NONE:
                overflow = self._string_intern(_OVERFLOW_VALUE.encode())
                self._w32(_H_OVERFLOW_STRING, overflow)
            labelset = self._labelset_intern((overflow,) * len(m.label_names))
            sid = self._series_new(m, labelset)
            self._st4(m.off + _M_OVERFLOW_SERIES, sid, _RELEASE)
        if fold == _FOLD_MAX_SERIES:
            self._fetch_add8(m.off + _M_OVERFLOW_COUNT, 1)
        elif fold == _FOLD_BUDGET:
            self._fetch_add8(m.off + _M_BUDGET_COUNT, 1)
        return sid

    def _series_arg(self, series: object, kind: int, method: str) -> int:
        """Slow path of the recorders: convert ``series`` and explain what is wrong."""
        sid = series if type(series) is int else _series_number(series, "series")
        if not 0 <= sid < len(self._kinds) and not 0 <= sid < self._sync_series():
            raise UnknownSeriesError(msg.unknown_series(sid), sid)
        actual = self._kinds[sid]
        if kind >= 0 and actual != kind:
            raise InvalidSampleError(msg.wrong_kind(sid, _KIND_NAMES[actual], _KIND_NAMES[kind]))
        return sid

    def series_count(self, metric: int) -> int:
        """How many real series ``metric`` holds (the overflow series not counted)."""
        return self._ld8(self._shared_metric(metric).off + _M_N_SERIES)

    def visible_series_count(self, metric: int) -> int:
        """Real series of ``metric`` not hidden by ``expire_idle()`` (overflow not counted)."""
        m = self._shared_metric(metric)
        with self._write():
            overflow = self._ld4(m.off + _M_OVERFLOW_SERIES)
            n = self._sync_series()
            mm = self._map.mm
            metric_kind, recs = self._metric_kind, self._recs
            return sum(
                1
                for i in range(n)
                if metric_kind[i] >> 2 == m.id and i != overflow and not mm[recs[i]] & _HIDDEN
            )

    def expire_idle(self) -> int:
        """Hide series not recorded since the previous call; returns how many it hid.

        One compare-and-swap per series on its flags, as ``ms_expire_idle``: a record
        racing the sweep wins and keeps its series visible.
        """
        hidden = 0
        with self._write():
            n = self._sync_series()
            mp = self._map
            mm, base, cas = mp.mm, mp.base, self._cas8
            expected = ctypes.c_uint64()
            ref = ctypes.byref(expected)
            for rec in self._recs[:n]:
                word = _NATIVE_U64.unpack_from(mm, rec)[0]
                while not word & _HIDDEN:
                    new = word & ~_ACTIVE if word & _ACTIVE else word | _HIDDEN
                    expected.value = word
                    if cas(base + rec, ref, new, _RELAXED, _RELAXED):
                        if new & _HIDDEN:
                            hidden += 1
                        break
                    word = expected.value
        return hidden

    def overflow_count(self, metric: int) -> int:
        """How many ``series()`` calls were folded into ``metric``'s overflow series."""
        return self._ld8(self._shared_metric(metric).off + _M_OVERFLOW_COUNT)

    def budget_overflow_count(self, metric: int) -> int:
        """How many ``series()`` calls the exposition budget folded into the overflow series."""
        return self._ld8(self._shared_metric(metric).off + _M_BUDGET_COUNT)

    @property
    def max_exposition_bytes(self) -> int:
        """The exposition budget the file was made with."""
        return self._max_bytes

    def exposition_bytes(self) -> int:
        """Bytes charged to the exposition budget, by every process of the file."""
        return self._ld8(_H_EXPOSITION)

    def labels(self, series: int) -> tuple[str, ...]:
        """The label values of ``series``."""
        return self._values_of(self._labelset_of[self._series_arg(series, -1, "labels")])

    def metric_of(self, series: int) -> int:
        """The metric id ``series`` belongs to."""
        return self._metric_kind[self._series_arg(series, -1, "metric_of")] >> 2

    # -- recording: lock-free, libatomic on the file's slots ----------------------------------

    def _activate(self, mp: _Map, rec: int) -> None:
        """ms_record_slots: mark the series ACTIVE (and not HIDDEN), once per interval."""
        word = self._load8(mp.base + rec, _RELAXED)
        if not word & _ACTIVE:
            self._store8(mp.base + rec, (word & ~_HIDDEN) | _ACTIVE, _RELAXED)

    def inc(self, series: int, n: int = 1) -> None:
        """Add ``n`` (``0 <= n < 2**64``) to a counter series (an atomic add in the file)."""
        if type(n) is not int or n < 0 or n > _U64_MAX:
            n = self._check_amount(n)
        kinds = self._kinds
        if type(series) is not int or not 0 <= series < len(kinds) or kinds[series] != _COUNTER:
            series = self._series_arg(series, _COUNTER, "inc")
        mp = self._map
        rec = self._recs[series]
        if not mp.mm[rec] & _ACTIVE:
            self._activate(mp, rec)
        self._add8(mp.base + self._slots[series], n, _RELAXED)

    def set(self, series: int, v: float) -> None:
        """Set a gauge series to ``v`` (any float, NaN and infinities included)."""
        if type(v) is not float:
            v = msg.real_arg(v, "v")
        kinds = self._kinds
        if type(series) is not int or not 0 <= series < len(kinds) or kinds[series] != _GAUGE:
            series = self._series_arg(series, _GAUGE, "set")
        mp = self._map
        rec = self._recs[series]
        if not mp.mm[rec] & _ACTIVE:
            self._activate(mp, rec)
        self._store8(mp.base + self._slots[series], _bits(v), _RELAXED)

    def observe(self, series: int, v: float) -> None:
        """Record ``v`` in a histogram series (``le`` inclusive; NaN is rejected)."""
        if type(v) is not float:
            v = msg.real_arg(v, "v")
        if v != v:
            raise InvalidSampleError(msg.observe_nan())
        kinds = self._kinds
        if type(series) is not int or not 0 <= series < len(kinds) or kinds[series] != _HISTOGRAM:
            series = self._series_arg(series, _HISTOGRAM, "observe")
        m = self._series_metric[series]
        mp = self._map
        rec, slots = self._recs[series], self._slots[series]
        if not mp.mm[rec] & _ACTIVE:
            self._activate(mp, rec)
        self._add8(mp.base + slots + 8 * bisect_left(m.buckets, v), 1, _RELAXED)
        self._add_double(mp, slots + 8 * m.stride - 8, v)

    # -- batches -----------------------------------------------------------------------------

    def _first_bad_id(self, ids_arr: npt.NDArray[Any], kind: int, n_total: int) -> int:
        """Index of the first id unknown (at or past ``n_total``) or of another kind, or -1."""
        kinds = np.frombuffer(bytes(self._kinds[:n_total]), dtype=np.uint8)
        unknown = ids_arr >= n_total
        if ids_arr.dtype.kind == "i":
            unknown |= ids_arr < 0
        wrong = unknown.copy()
        if n_total:
            wrong |= kinds[np.where(unknown, 0, ids_arr)] != kind
        bad = np.flatnonzero(wrong)
        return int(bad[0]) if bad.size else -1

    def _raise_bad(self, ids_arr: npt.NDArray[Any], i: int, kind: int, n_total: int) -> None:
        sid = int(ids_arr[i])
        if not 0 <= sid < n_total:
            raise UnknownSeriesError(msg.batch_unknown_series(i, sid), sid)
        raise InvalidSampleError(
            msg.batch_wrong_kind(i, sid, _KIND_NAMES[self._kinds[sid]], _KIND_NAMES[kind])
        )

    def inc_many(self, ids: object, amounts: object = None) -> None:
        """``inc(ids[i], amounts[i])`` for every ``i``, all or nothing: one add per series."""
        ids_arr = _batch_array(ids, "ids", _INT_DTYPES)
        amounts_arr = None if amounts is None else _batch_array(amounts, "amounts", _INT_DTYPES)
        if amounts_arr is not None and len(amounts_arr) != len(ids_arr):
            raise msg.batch_length("amounts", len(ids_arr), len(amounts_arr))
        n_total = self._sync_series()  # ids past the series published now are unknown
        bad_id = self._first_bad_id(ids_arr, _COUNTER, n_total)
        bad_amount = -1
        if amounts_arr is not None and amounts_arr.dtype.kind == "i":
            negative = np.flatnonzero(amounts_arr < 0)
            bad_amount = int(negative[0]) if negative.size else -1
        if bad_id >= 0 and (bad_amount < 0 or bad_id <= bad_amount):
            self._raise_bad(ids_arr, bad_id, _COUNTER, n_total)
        if bad_amount >= 0:
            amount = int(amounts_arr[bad_amount])  # type: ignore[index]
            raise InvalidSampleError(msg.batch_negative_amount(bad_amount, amount))
        totals: dict[int, int] = {}
        id_list: list[int] = ids_arr.tolist()
        if amounts_arr is None:
            for sid in id_list:
                totals[sid] = totals.get(sid, 0) + 1
        else:
            for sid, amount in zip(id_list, amounts_arr.tolist()):
                totals[sid] = totals.get(sid, 0) + amount
        mp = self._map
        recs, slots, add = self._recs, self._slots, self._add8
        for sid, total in totals.items():
            if not mp.mm[recs[sid]] & _ACTIVE:
                self._activate(mp, recs[sid])
            add(mp.base + slots[sid], total & _U64_MAX, _RELAXED)

    def observe_many(self, ids: object, values: object) -> None:
        """``observe(ids[i], values[i])`` for every ``i``, all or nothing.

        As the compiled store: the batch is aggregated first (counts per bucket, and per
        series a partial sum in index order from 0.0), then applied with one atomic add
        per touched slot and one compare-and-swap per sum.
        """
        ids_arr = _batch_array(ids, "ids", _INT_DTYPES)
        values_arr = _batch_array(values, "values", _FLOAT_DTYPES)
        if len(values_arr) != len(ids_arr):
            raise msg.batch_length("values", len(ids_arr), len(values_arr))
        floats = values_arr.astype(np.float64, copy=False)
        n_total = self._sync_series()
        bad_id = self._first_bad_id(ids_arr, _HISTOGRAM, n_total)
        nan = np.flatnonzero(np.isnan(floats))
        bad_value = int(nan[0]) if nan.size else -1
        if bad_id >= 0 and (bad_value < 0 or bad_id <= bad_value):
            self._raise_bad(ids_arr, bad_id, _HISTOGRAM, n_total)
        if bad_value >= 0:
            raise InvalidSampleError(msg.batch_nan(bad_value))
        partial: dict[int, float] = {}
        counts: dict[tuple[int, int], int] = {}
        metric_of = self._series_metric
        for sid, value in zip(ids_arr.tolist(), floats.tolist()):
            partial[sid] = partial.get(sid, 0.0) + value
            cell = (sid, bisect_left(metric_of[sid].buckets, value))
            counts[cell] = counts.get(cell, 0) + 1
        mp = self._map
        recs, slots, add = self._recs, self._slots, self._add8
        for sid in partial:
            if not mp.mm[recs[sid]] & _ACTIVE:
                self._activate(mp, recs[sid])
        for (sid, bucket), count in counts.items():
            add(mp.base + slots[sid] + 8 * bucket, count, _RELAXED)
        for sid, total in partial.items():
            self._add_double(mp, slots[sid] + 8 * metric_of[sid].stride - 8, total)

    # -- reading -------------------------------------------------------------------------------

    def value(self, series: int) -> int | float:
        """A counter's (``int``) or gauge's (``float``) current value."""
        kinds = self._kinds
        if type(series) is not int or not 0 <= series < len(kinds) or kinds[series] == _HISTOGRAM:
            series = self._series_arg(series, -1, "value")
            if self._kinds[series] == _HISTOGRAM:
                raise InvalidSampleError(msg.histogram_value_read(series))
        mp = self._map
        bits: int = self._load8(mp.base + self._slots[series], _RELAXED)
        return bits if self._kinds[series] == _COUNTER else _float(bits)

    def histogram_value(self, series: int) -> HistogramValue:
        """``(non-cumulative counts per bucket, last is +Inf; sum)`` of a histogram series."""
        series = self._series_arg(series, _HISTOGRAM, "histogram_value")
        layout = self._series_metric[series].values
        assert layout is not None
        *counts, total = layout.unpack_from(self._map.mm, self._slots[series])
        return tuple(counts), total

    def snapshot(self) -> Snapshot:
        """Every family sorted by name, as a private store's ``snapshot()``.

        Read without a lock, as ``ms_render`` reads: metrics first (a series of a metric
        registered meanwhile is left out), each value whole, a histogram's buckets and sum
        one after the other.
        """
        n_metrics = self._sync_metrics()
        n_series = self._sync_series()
        mets = self._mets[:n_metrics]
        members: list[list[int]] = [[] for _ in mets]
        for sid, metric_kind in enumerate(self._metric_kind[:n_series]):
            if metric_kind >> 2 < n_metrics:
                members[metric_kind >> 2].append(sid)
        overflow: list[tuple[tuple[str, ...], Any]] = []
        budget: list[tuple[tuple[str, ...], Any]] = []
        for m in mets:
            folded = self._ld8(m.off + _M_OVERFLOW_COUNT)
            if folded:
                overflow.append(((m.name,), folded))
            folded = self._ld8(m.off + _M_BUDGET_COUNT)
            if folded:
                budget.append(((m.name,), folded))
        mm = self._map.mm
        recs, slots, labelset_of = self._recs, self._slots, self._labelset_of
        entries: Snapshot = []
        for m in sorted(mets, key=lambda m: m.name):
            rows: list[tuple[tuple[str, ...], Any]] = []
            layout = m.values
            for sid in members[m.id]:
                if mm[recs[sid]] & _HIDDEN:  # expire_idle()
                    continue
                labels = self._values_of(labelset_of[sid])
                if layout is not None:
                    *counts, total = layout.unpack_from(mm, slots[sid])
                    rows.append((labels, (tuple(counts), total)))
                elif m.kind == _COUNTER:
                    rows.append((labels, _NATIVE_U64.unpack_from(mm, slots[sid])[0]))
                else:
                    rows.append((labels, _NATIVE_F64.unpack_from(mm, slots[sid])[0]))
            entry: SnapshotEntry = (
                m.name, _KIND_NAMES[m.kind], m.help, m.label_names, m.buckets, rows
            )  # fmt: skip
            entries.append(entry)
        for family, help_text, folds in (
            (OVERFLOW_FAMILY, OVERFLOW_HELP, overflow),
            (BUDGET_FAMILY, BUDGET_HELP, budget),
        ):
            if folds:
                extra: SnapshotEntry = (family, "counter", help_text, ("metric",), (), folds)
                entries.insert(bisect_left([e[0] for e in entries], family), extra)
        return entries

    def render(self, openmetrics: bool = False) -> bytes:
        """The exposition of every process' series: Prometheus text 0.0.4, or OpenMetrics."""
        text = _render_py.render(self.snapshot(), openmetrics=openmetrics)
        self._st8(_H_RENDER_HINT, len(text))  # the compiled renderer's first buffer size
        return text

    def memory_bytes(self) -> int:
        """Bytes of the file in use (the head's ``used``), as the compiled shared store."""
        return self._ld8(_H_USED)
