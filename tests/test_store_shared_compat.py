"""The pure-Python shared store writes the compiled store's file, byte for byte.

docs/store.md, "Shared stores": a compiled process and a pure-Python process share one
file. Here they do, as real processes recording at once (``shared_compat_worker.py``,
the backend chosen by ``MESHSTATS_NO_EXTENSIONS``) and as two handles in this process,
each reading what the other made. The pure store alone repeats the C tests of
``_core/tests/test_store.c`` (two handles, bad files, growth, repair), and hypothesis
checks that a shared pure store gives a private pure store's ids, errors and bytes.
Nothing here waits on a clock: workers start recording when told to, and report back.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from shared_compat_worker import PROBES, workload
from test_store_differential import apply, op, outcome_of

import meshstats
from meshstats import _store_shared_py
from meshstats._store_shared_py import SharedStore
from meshstats.errors import (
    DuplicateMetricError,
    InvalidArgumentError,
    InvalidLabelsError,
    InvalidMetricError,
    StoreFileError,
    UnknownSeriesError,
)

WORKER = Path(__file__).with_name("shared_compat_worker.py")
SRC = str(Path(meshstats.__file__).resolve().parents[1])

# Head and metric fields the repair tests break by hand (docs/store.md, "File layout").
WRITER, OVERFLOW_STRING = 40, 44
STRING_TABLE, LABELSET_TABLE, SERIES_TABLE = 192, 208, 224
METRICS_DIR = 96 + 16
NO_ID = 0xFFFFFFFF

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "test.store")


def samples(text: bytes) -> Samples:
    """Every sample of a text exposition, parsed by prometheus_client (so it must parse)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def state(store: Any) -> tuple[Any, ...]:
    """Everything a store reports, per metric and per series (errors as outcomes)."""

    def each(method: str, arg: int) -> Any:
        try:
            return repr(getattr(store, method)(arg))
        except Exception as exc:
            return outcome_of(exc)

    total = store.snapshot()
    n_series = sum(len(entry[5]) for entry in total) + 8
    per_metric = [
        each(method, m)
        for m in range(len(total) + 2)
        for method in ("series_count", "overflow_count", "budget_overflow_count")
    ]
    per_series = [
        each(method, sid)
        for sid in range(n_series)
        for method in ("value", "histogram_value", "labels", "metric_of")
    ]
    return (
        repr(total),
        store.render(),
        store.render(openmetrics=True),
        store.exposition_bytes(),
        store.max_exposition_bytes,
        per_metric,
        per_series,
    )


class Worker:
    """A worker process on the backend ``MESHSTATS_NO_EXTENSIONS`` selects."""

    def __init__(self, pure: bool, path: str, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
        env["MESHSTATS_NO_EXTENSIONS"] = "1" if pure else "0"
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), path, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.line() == f"ready {'py' if pure else 'c'}"

    def line(self) -> str:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        assert text, f"worker exited early with status {self.proc.wait()}"
        return text.strip()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        assert self.proc.wait() == 0
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def render_in_process(pure: bool, path: str) -> tuple[bytes, bytes]:
    worker = Worker(pure, path, "render")
    text, om = bytes.fromhex(worker.line()), bytes.fromhex(worker.line())
    worker.finish()
    return text, om


# ---- (1) compiled and pure processes recording into one file at once -----------------------


@pytest.mark.c_extension
@pytest.mark.parametrize("creator", ["c", "py"])
def test_compiled_and_pure_processes_record_into_one_file(
    creator: str, path: str, c_backend: Backend, py_backend: Backend
) -> None:
    n = 300
    maker = c_backend if creator == "c" else py_backend
    maker.store.Store.shared(path)
    names = ["c0", "py0", "c1", "py1"]
    workers = [Worker(name.startswith("py"), path, "record", name, str(n)) for name in names]
    for w in workers:  # all four record at once, both backends on the same slots
        w.send("go")
    ids = []
    for w in workers:
        kind, listed = w.line().split(" ", 1)
        assert kind == "ids"
        ids.append(json.loads(listed))
        assert w.line() == "done"
        w.finish()
    assert ids[0] == ids[1] == ids[2] == ids[3]

    c_store = c_backend.store.Store.shared(path)
    py_store = py_backend.store.Store.shared(path)
    assert [c_store.series(m, labels) for m, labels in PROBES] == ids[0]
    assert [py_store.series(m, labels) for m, labels in PROBES] == ids[0]
    text = c_store.render()
    om = c_store.render(openmetrics=True)
    assert py_store.render() == text and py_store.render(openmetrics=True) == om
    assert repr(py_store.snapshot()) == repr(c_store.snapshot())
    assert render_in_process(True, path) == render_in_process(False, path) == (text, om)

    # The exact totals: each worker's workload replayed alone into a private store.
    expected: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    for name in names:
        private = py_backend.store.Store()
        workload(private, name, n)
        expected.update(samples(private.render()))
    assert samples(text) == dict(expected)
    assert c_store.series_count(0) == 50 + 4 * 20
    assert c_store.repairs() == py_store.repairs() == 0


# ---- (2) one backend reads and extends what the other made, in one process --------------------


def populate(store: Any, start: int, stop: int) -> None:
    """Metrics of every kind and shape, series with every kind of label value, records."""
    req = store.counter("req_total", 'Requests\\ "all"\n', ("code", "peer"))
    dur = store.histogram("dur_ms", "", ("code",), buckets=(-5, 0.5, 1, 5.5, 1e6))
    up = store.gauge("up", "Up.", ())
    lat = store.histogram("lat", "Latency.", (), buckets=(0.25,))
    raw = store.counter("raw", "No _total.", ("k",), max_series=30)
    wide = store.gauge("wide", "", ("w",), max_series=5000)
    values = ["", "日本", 'q"\\\n', "__overflow__", "a" * 300]
    for i in range(start, stop):
        code = str(i % 41)
        s = store.series(req, (code, values[i % len(values)]))
        store.inc(s, i)
        store.observe(store.series(dur, (code,)), i * 0.37 - 3)
        store.inc(store.series(raw, (f"k{i}",)))  # folds past 30 or past the budget
        store.set(store.series(wide, (f"w{i}",)), -i / 7)
        if i % 7 == 0:
            store.set(store.series(up, ()), i / 3)
            store.observe(store.series(lat, ()), float(i % 2))
    ids = np.array([store.series(req, (str(k), "")) for k in range(5)], dtype=np.uint64)
    store.inc_many(ids, np.arange(5, dtype=np.int64) + start)
    hids = np.array([store.series(dur, (str(k),)) for k in range(5)], dtype=np.int32)
    store.observe_many(hids, np.linspace(-10.0, 10.0, 5))


@pytest.mark.c_extension
@pytest.mark.parametrize("maker_name", ["c", "py"])
def test_a_file_one_backend_made_reads_the_same_in_the_other(
    maker_name: str, path: str, c_backend: Backend, py_backend: Backend
) -> None:
    maker, other = (c_backend, py_backend) if maker_name == "c" else (py_backend, c_backend)
    a = maker.store.Store.shared(path, default_max_series=60, max_exposition_bytes=80_000)
    populate(a, 0, 150)
    a.expire_idle()
    a.expire_idle()  # everything hidden
    a.inc(a.series(0, ("3", "")))  # shown again
    b = other.store.Store.shared(path)
    assert state(b) == state(a)
    # b finds a's series through the tables a built (the overflow series by its labels):
    # the same ids, and nothing added.
    sid = 0
    while True:
        try:
            metric, labels = a.metric_of(sid), a.labels(sid)
        except UnknownSeriesError:
            break
        assert b.series(metric, labels) == sid
        sid += 1
    assert sid > 100 and state(b) == state(a)
    assert [b.visible_series_count(m) for m in range(6)] == [
        a.visible_series_count(m) for m in range(6)
    ]
    # b adds and records (growing the tables and the file a made); a sees it all.
    populate(b, 150, 2000)
    assert state(a) == state(b)
    assert sum(a.overflow_count(m) for m in range(6)) > 0
    assert sum(a.budget_overflow_count(m) for m in range(6)) > 0
    assert a.series(0, ("40", "日本")) == b.series(0, ("40", "日本"))
    assert a.expire_idle() + b.expire_idle() > 0  # a sweep each: some series hidden
    assert state(a) == state(b)
    assert a.memory_bytes() == b.memory_bytes() <= os.path.getsize(path)
    assert os.path.getsize(path) > 65536 and os.path.getsize(path) % 65536 == 0
    # Fresh handles of both agree too, and nothing needed repair.
    assert state(maker.store.Store.shared(path)) == state(other.store.Store.shared(path))
    assert a.repairs() == b.repairs() == 0


@pytest.mark.c_extension
def test_the_same_calls_make_the_same_file_byte_for_byte(
    tmp_path: Path, c_backend: Backend, py_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the C file's seed, the pure store writes every byte as store.c does: the
    same allocations in the same order, the same tables, flags and slot values."""
    c_path, py_path = str(tmp_path / "c.store"), str(tmp_path / "py.store")
    c = c_backend.store.Store.shared(c_path, default_max_series=60, max_exposition_bytes=80_000)
    seed = Path(c_path).read_bytes()[48:56]
    monkeypatch.setattr(os, "urandom", lambda n: seed)
    py = py_backend.store.Store.shared(py_path, default_max_series=60, max_exposition_bytes=80_000)
    monkeypatch.undo()
    for store in (c, py):
        populate(store, 0, 400)
        store.expire_idle()
        populate(store, 400, 900)
        store.render()
    c_bytes, py_bytes = Path(c_path).read_bytes(), Path(py_path).read_bytes()
    assert len(c_bytes) == len(py_bytes) > 65536
    assert c_bytes == py_bytes


@pytest.mark.c_extension
@pytest.mark.parametrize("repairer_name", ["c", "py"])
def test_a_repair_by_one_backend_is_valid_for_the_other(
    repairer_name: str, path: str, c_backend: Backend, py_backend: Backend
) -> None:
    repairer, other = (c_backend, py_backend) if repairer_name == "c" else (py_backend, c_backend)
    made = other.store.Store.shared(path)
    populate(made, 0, 120)
    before = state(made)
    break_tables(path)
    fixed = repairer.store.Store.shared(path)  # repairs on open
    assert fixed.repairs() == 1
    assert state(fixed) == before
    check = other.store.Store.shared(path)
    assert state(check) == before
    # Both find every series through the rebuilt tables.
    for sid in range(60):
        metric, labels = check.metric_of(sid), check.labels(sid)
        assert fixed.series(metric, labels) == check.series(metric, labels) == sid


@pytest.mark.c_extension
def test_per_process_gauges_agree_across_backends(
    path: str, c_backend: Backend, py_backend: Backend
) -> None:
    pid = str(os.getpid())
    stores = [c_backend.store.Store.shared(path), py_backend.store.Store.shared(path)]
    stores += [c_backend.store.Store(), py_backend.store.Store()]
    ids = []
    for store in stores:
        g = store.gauge("inflight", "", ("app",), per_process=True)
        sid = store.series(g, ["web"])
        store.set(sid, 3.0)
        assert store.labels(sid) == ("web", pid)
        with pytest.raises(InvalidLabelsError) as info:
            store.series(g, "web")
        ids.append((g, sid, str(info.value)))
    assert ids[0] == ids[1] and ids[2] == ids[3]
    assert stores[0].render() == stores[1].render() == stores[2].render() == stores[3].render()


# ---- (3) the pure shared store alone: the C tests of _core/tests/test_store.c ------------------


def break_tables(path: str) -> None:
    """As if a writer died after publishing but before any table entry or count.

    Every table emptied, every metric's n_series 0 and overflow series unknown, the
    head's overflow string unknown, and ``writer`` naming a process that is gone.
    """
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        for table in (STRING_TABLE, LABELSET_TABLE, SERIES_TABLE):
            struct.pack_into("<II", mm, table + 8, 0, 0)
        n_metrics = struct.unpack_from("<I", mm, 96 + 12)[0]
        dir_ref = struct.unpack_from("<Q", mm, METRICS_DIR)[0]
        page = struct.unpack_from("<Q", mm, dir_ref)[0]
        for i in range(n_metrics):
            metric = struct.unpack_from("<Q", mm, page + 8 * i)[0]
            struct.pack_into("<I", mm, metric + 20, NO_ID)
            struct.pack_into("<Q", mm, metric + 32, 0)
        struct.pack_into("<II", mm, WRITER, 12345, NO_ID)


def test_two_handles_in_one_process_agree(path: str, py_backend: Backend) -> None:
    Store = py_backend.store.Store
    a, b = Store.shared(path), Store.shared(path)
    assert isinstance(a, Store) and isinstance(a, SharedStore)
    assert a.path == path and Store().path is None and Store().repairs() == 0
    c = a.counter("req_total", "Requests.", ("code",))
    assert b.counter("req_total", "Requests.", ("code",)) == c
    h = a.histogram("dur", "", ("code",), buckets=(1, 10))
    assert b.histogram("dur", "", ("code",), buckets=(1.0, 10.0)) == h != c
    with pytest.raises(DuplicateMetricError, match="req_total") as info:
        b.counter("req_total", "Other.", ("code",))
    assert info.value.name == "req_total"
    with pytest.raises(DuplicateMetricError) as info:
        b.gauge("req", "", ())
    assert info.value.name == "req"
    with pytest.raises(DuplicateMetricError):  # max_series is part of the definition
        b.counter("req_total", "Requests.", ("code",), max_series=5)
    assert b.counter("req_total", "Requests.", ("code",), max_series=100_000) == c
    s200 = a.series(c, ("200",))
    assert b.series(c, ("200",)) == s200
    s500 = b.series(c, ("500",))
    assert a.series(c, ["500"]) == s500 != s200
    a.inc(s200, 3)
    b.inc(s200, 4)
    assert a.value(s200) == b.value(s200) == 7
    h1 = b.series(h, ("200",))
    a.observe(h1, 5)
    b.observe(h1, 50)
    assert a.histogram_value(h1) == ((0, 1, 1), 55.0)
    for i in range(5000):  # the file grows many times past its first 64 KiB
        sid = (a if i % 2 else b).series(c, (f"v{i}",))
        (b if i % 2 else a).inc(sid)
    assert a.render() == b.render()
    assert b'req_total{code="v4999"} 1\n' in a.render()
    size = os.path.getsize(path)
    assert size > 65536 and size % 65536 == 0 and a.memory_bytes() <= size
    text = a.render()
    del a, b
    reopened = Store.shared(path)
    assert reopened.render() == text and reopened.labels(s500) == ("500",)
    assert reopened.series(c, ("v17",)) == Store.shared(path).series(0, ("v17",))
    assert reopened.repairs() == 0


def test_threads_and_handles_record_and_create_exactly(path: str, py_backend: Backend) -> None:
    handles = [py_backend.store.Store.shared(path) for _ in range(3)]
    c = handles[0].counter("n_total", "", ("k",))
    h = handles[0].histogram("h", "", ("k",), buckets=(1,))
    for store in handles[1:]:
        assert store.counter("n_total", "", ("k",)) == c
        assert store.histogram("h", "", ("k",), buckets=(1,)) == h

    def run(k: int) -> None:
        store = handles[k % 3]
        for i in range(300):
            store.inc(store.series(c, (f"s{i % 30}",)))
            store.inc(store.series(c, (f"t{k}-{i % 10}",)), 2)
            store.observe(store.series(h, ("x",)), 0.5)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = samples(handles[2].render())
    assert sum(v for (name, _), v in got.items() if name == "n_total") == 6 * 300 * 3
    assert got[("h_count", (("k", "x"),))] == 6 * 300
    assert got[("h_sum", (("k", "x"),))] == 6 * 300 * 0.5
    assert handles[1].series_count(c) == 30 + 6 * 10


def test_bad_files_are_refused_and_left_alone(tmp_path: Path, py_backend: Backend) -> None:
    Store = py_backend.store.Store
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a store " * 1000)
    with pytest.raises(StoreFileError) as info:
        Store.shared(str(junk))
    assert info.value.problem == "not a meshstats store (no magic at offset 0)"
    assert info.value.path == str(junk) and junk.read_bytes() == b"not a store " * 1000
    short = tmp_path / "short"
    short.write_bytes(b"\0" * 100)
    with pytest.raises(StoreFileError, match="truncated"):
        Store.shared(str(short))
    good = tmp_path / "good"
    store = Store.shared(str(good))
    m = store.counter("c_total", "", ("k",))
    for i in range(3000):
        store.series(m, (f"value-{i}",))
    data = good.read_bytes()
    assert len(data) > 65536
    for cut in (100, 65536):  # shorter than the head, or than the head's size
        good.write_bytes(data[:cut])
        with pytest.raises(StoreFileError) as info:
            Store.shared(str(good))
        assert info.value.problem.startswith("truncated")
    good.write_bytes(data[:8] + (99).to_bytes(4, "little") + data[12:])
    with pytest.raises(StoreFileError) as info:
        Store.shared(str(good))
    assert info.value.problem == (
        "a meshstats store of layout version 99; this meshstats reads version 2"
    )
    good.write_bytes(data[:12] + (128).to_bytes(4, "little") + data[16:])  # head size
    with pytest.raises(StoreFileError, match="not a meshstats store"):
        Store.shared(str(good))
    good.write_bytes(data[:32] + (0).to_bytes(8, "little") + data[40:])  # used = 0
    with pytest.raises(StoreFileError, match="not a meshstats store"):
        Store.shared(str(good))
    assert good.read_bytes()[:8] == data[:8]  # refused, not rewritten
    # A creator killed after writing its head but the magic: made again, not refused.
    half = tmp_path / "half"
    half.write_bytes(bytes(8) + data[8:256] + bytes(65536 - 256))
    again = Store.shared(str(half))
    assert again.counter("c_total", "", ("k",)) == 0 and again.render().startswith(b"# HELP")
    zero_head = tmp_path / "zero"
    zero_head.write_bytes(bytes(300))  # no magic, all zero: a fresh file, made here
    Store.shared(str(zero_head)).counter("c_total")
    assert zero_head.stat().st_size == 65536
    with pytest.raises(FileNotFoundError):
        Store.shared(str(tmp_path / "no-such-dir" / "x"))
    with pytest.raises(InvalidArgumentError, match="reserve"):
        Store.shared(str(good), reserve=1000)
    with pytest.raises(InvalidMetricError, match="default_max_series"):
        Store.shared(str(good), default_max_series=0)


def test_the_reserve_bounds_the_file(path: str, py_backend: Backend) -> None:
    store = py_backend.store.Store.shared(path, reserve=131072)
    m = store.counter("c_total", "", ("k",))
    with pytest.raises(MemoryError, match="reserve"):
        for i in range(100_000):
            store.series(m, (f"a-long-label-value-{i}",))
    assert os.path.getsize(path) == 131072
    # Nothing is half made: another handle finds every series the first one made.
    other = py_backend.store.Store.shared(path)
    n = other.series_count(m)
    assert n > 100 and other.repairs() == 0
    assert [other.series(m, (f"a-long-label-value-{i}",)) for i in range(n)] == list(range(n))


def test_a_dead_writer_is_repaired(path: str, py_backend: Backend) -> None:
    """_core/tests/test_store.c's test_shared_repair, on the pure store."""
    store = py_backend.store.Store.shared(path)
    c = store.counter("n_total", "", ("k",), max_series=1)
    a = store.series(c, ("a",))
    over = store.series(c, ("b",))  # max_series 1: the overflow series
    break_tables(path)
    fresh = py_backend.store.Store.shared  # new handles: nothing cached from before
    again = fresh(path)  # repairs on open, as the writer is set
    assert again.repairs() == 1
    assert again.series(c, ("a",)) == a
    assert again.series(c, ("zzz",)) == over
    assert again.series_count(c) == 1 and again.overflow_count(c) == 2
    assert again.render().count(b"n_total{") == 2
    with open(path, "rb") as f:
        assert int.from_bytes(f.read(44)[40:], "little") == 0  # writer cleared
    # A writer found set when taking the lock (not at open) is repaired the same way.
    break_tables(path)
    assert again.series(c, ("zzz",)) == over and again.repairs() == 2
    assert again.series_count(c) == 1 and again.overflow_count(c) == 3


def test_an_interrupted_change_is_repaired(
    path: str, py_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = py_backend.store.Store.shared(path)
    m = store.counter("c_total", "", ("k",))
    first = store.series(m, ("first",))
    real_insert = SharedStore._table_insert

    def interrupted(self: SharedStore, table: int, *args: Any) -> None:
        if table == SERIES_TABLE:
            raise KeyboardInterrupt  # after the series was published, before its entry
        real_insert(self, table, *args)

    monkeypatch.setattr(SharedStore, "_table_insert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.series(m, ("second",))
    monkeypatch.undo()
    # `writer` stays set, so the next lock repairs: the series is found, not made twice.
    second = store.series(m, ("second",))
    assert second == first + 1 and store.repairs() == 1
    assert store.series_count(m) == 2 and store.series(m, ("third",)) == second + 1


def test_expiry_across_handles(path: str, py_backend: Backend) -> None:
    a, b = py_backend.store.Store.shared(path), py_backend.store.Store.shared(path)
    m = a.counter("c_total", "", ("k",))
    s, t = a.series(m, ("s",)), a.series(m, ("t",))
    assert b.expire_idle() == 0 and a.expire_idle() == 2
    assert b.visible_series_count(m) == 0 and b.render().count(b"c_total{") == 0
    b.inc(t)
    assert a.visible_series_count(m) == 1 and a.render().count(b"c_total{") == 1
    assert a.value(t) == 1 and a.value(s) == 0


def test_without_libatomic_the_error_names_the_package(
    path: str, py_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(name: str) -> ctypes.CDLL:
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(_store_shared_py, "_ATOMICS", [])
    monkeypatch.setattr(ctypes, "CDLL", missing)  # the module calls ctypes.CDLL
    with pytest.raises(OSError, match="libatomic1"):
        py_backend.store.Store.shared(path)
    assert not os.path.exists(path)


def test_every_public_method_is_the_shared_stores_own(py_backend: Backend) -> None:
    """SharedStore keeps none of a private store's state: it defines every method but
    ``shared`` and the three that only call ``_register`` (which it defines)."""
    public = {name for name in vars(py_backend.store.Store) if not name.startswith("_")}
    inherited = {"shared", "counter", "gauge", "histogram"}
    own = set(vars(SharedStore))
    assert public - inherited <= own and "_register" in own, public - inherited - own


# ---- (4) a shared pure store behaves as a private pure store ------------------------------


shared_op = st.one_of(
    op, st.tuples(st.just("expire")), st.tuples(st.just("visible"), st.integers(-1, 4))
)


def apply_any(store: Any, step: tuple[Any, ...]) -> Any:
    try:
        if step[0] == "expire":
            return store.expire_idle()
        if step[0] == "visible":
            return store.visible_series_count(step[1])
    except Exception as exc:
        return outcome_of(exc)
    return apply(store, step)


def definition(step: tuple[Any, ...], default: int) -> tuple[Any, ...]:
    """What a shared store compares to find a registration it already holds."""
    _, kind, _, labels, bounds, max_series = step
    raw = struct.pack(f"<{len(bounds)}d", *map(float, bounds)) if kind == "histogram" else b""
    return kind, tuple(labels), raw, max_series or default


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(shared_op, min_size=8, max_size=40),
    default=st.integers(1, 3),
    budget=st.integers(1, 3000) | st.sampled_from([2**64 - 1, 2**70]),
)
def test_a_shared_store_behaves_as_a_private_one(
    py_backend: Backend, steps: list[tuple[Any, ...]], default: int, budget: int
) -> None:
    Store = py_backend.store.Store
    private = Store(default_max_series=default, max_exposition_bytes=budget)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "s.store")
        # Two handles of one file take turns: each must see what the other made.
        handles = [
            Store.shared(path, default_max_series=default, max_exposition_bytes=budget),
            Store.shared(path),
        ]
        registered: dict[str, tuple[tuple[Any, ...], int]] = {}
        for i, step in enumerate(steps):
            expected = apply_any(private, step)
            got = apply_any(handles[i % 2], step)
            if step[0] == "register" and isinstance(expected, int):
                registered[step[2]] = (definition(step, default), expected)
            again = registered.get(step[2]) if step[0] == "register" else None
            if (
                again is not None
                and isinstance(expected, tuple)
                and expected[0] == "DuplicateMetricError"
                and again[0] == definition(step, default)
            ):
                # The one difference: a shared store gives the id of a metric registered
                # with this very definition (another process may have registered it).
                assert got == again[1], step
            else:
                assert got == expected, step
        assert state(handles[0]) == state(private)
        assert state(handles[1]) == state(private)
