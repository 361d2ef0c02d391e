"""Shared stores (``Store.shared``): many processes, one set of series (docs/store.md).

Real processes: workers are ``tests/shared_store_worker.py`` run with this interpreter, on
the same backend as the test. Kills are placed by what a worker has printed (never by a
clock), so the tests mean the same on a loaded machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Backend
from prometheus_client.parser import text_string_to_metric_families

from meshstats.errors import (
    DuplicateMetricError,
    InvalidArgumentError,
    InvalidMetricError,
    StoreFileError,
)

WORKER = Path(__file__).with_name("shared_store_worker.py")


@pytest.fixture
def path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "test.store")


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition, parsed by prometheus_client (so it must parse)."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Worker:
    def __init__(self, backend: Backend, path: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), backend.name, path, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.line() == "ready"

    def line(self) -> str:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        assert text, f"worker exited early with status {self.proc.wait()}"
        return text.strip()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait() == -signal.SIGKILL
        self.close()

    def finish(self) -> None:
        assert self.line() == "done"
        assert self.proc.wait() == 0
        self.close()

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def test_two_handles_share_everything(backend: Backend, path: str) -> None:
    a = backend.store.Store.shared(path)
    b = backend.store.Store.shared(path)
    assert a.path == b.path == path and backend.store.Store().path is None
    m = a.counter("req_total", "Requests.", ("code",))
    assert b.counter("req_total", "Requests.", ("code",)) == m
    h = b.histogram("dur_ms", "", ("code",), buckets=(1, 10))
    assert a.histogram("dur_ms", "", ("code",), buckets=(1, 10)) == h
    with pytest.raises(DuplicateMetricError):
        b.counter("req_total", "Other help.", ("code",))
    with pytest.raises(DuplicateMetricError):
        b.histogram("dur_ms", "", ("code",), buckets=(1, 100))
    s200 = a.series(m, ("200",))
    assert b.series(m, ("200",)) == s200
    s500 = b.series(m, ("500",))
    assert a.series(m, ("500",)) == s500 != s200
    a.inc(s200, 3)
    b.inc(s200, 4)
    assert a.value(s200) == b.value(s200) == 7
    hs = a.series(h, ("200",))
    b.observe(hs, 5)
    a.observe(hs, 50)
    assert b.histogram_value(hs) == ((0, 1, 1), 55.0)
    for i in range(3000):  # grows the file many times past its first 64 KiB
        (a if i % 2 else b).inc((b if i % 2 else a).series(m, (f"v{i}",)))
    assert a.render() == b.render()
    assert a.render(openmetrics=True) == b.render(openmetrics=True)
    assert os.path.getsize(path) % 65536 == 0
    assert 0 < a.memory_bytes() <= os.path.getsize(path)
    text = a.render()
    del a, b
    reopened = backend.store.Store.shared(path)
    assert reopened.render() == text
    assert reopened.series(m, ("v17",)) == reopened.series(m, ("v17",))
    assert reopened.labels(s500) == ("500",)


def test_the_creators_settings_win(backend: Backend, path: str) -> None:
    first = backend.store.Store.shared(path, default_max_series=2, max_exposition_bytes=10**6)
    later = backend.store.Store.shared(path, default_max_series=500)
    assert later.max_exposition_bytes == first.max_exposition_bytes == 10**6
    m = later.counter("c_total", "", ("k",))
    ids = {later.series(m, (k,)) for k in "abcd"}
    assert len(ids) == 3 and first.overflow_count(m) == 2  # max_series 2, then overflow
    # Label sets a process has resolved are answered without the lock; folds never are,
    # as each counts.
    assert later.series(m, ("a",)) == first.series(m, ("a",))
    later.series(m, ("c",))
    assert first.overflow_count(m) == 3


def test_bad_files_are_refused_clearly(backend: Backend, tmp_path: Path) -> None:
    Store = backend.store.Store
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a store " * 100)
    with pytest.raises(StoreFileError, match="not a meshstats store") as info:
        Store.shared(str(junk))
    assert info.value.path == str(junk) and isinstance(info.value, ValueError)
    good = str(tmp_path / "good")
    Store.shared(good).counter("c_total")
    data = Path(good).read_bytes()
    Path(good).write_bytes(data[:100])
    with pytest.raises(StoreFileError, match="truncated"):
        Store.shared(good)
    Path(good).write_bytes(data[:8] + (99).to_bytes(4, "little") + data[12:])
    with pytest.raises(StoreFileError, match="layout version 99"):
        Store.shared(good)
    assert Path(good).read_bytes()[:8] == data[:8]  # refused, not rewritten
    with pytest.raises(FileNotFoundError):
        Store.shared(str(tmp_path / "no-such-dir" / "x"))
    with pytest.raises(InvalidArgumentError, match="reserve"):
        Store.shared(good, reserve=1000)


def test_a_bare_name_lives_in_dev_shm(backend: Backend) -> None:
    name = f"meshstats-test-{os.getpid()}-{backend.name}.store"
    store = backend.store.Store.shared(name)
    try:
        assert store.path == os.path.join("/dev/shm", name) and os.path.exists(store.path)
    finally:
        os.unlink(store.path)


def test_worker_processes_add_up_exactly(backend: Backend, path: str) -> None:
    n = 400 if backend.name == "py" else 3000
    workers = [Worker(backend, path, "record", f"w{k}", str(n)) for k in range(4)]
    for w in workers:
        w.finish()
    store = backend.store.Store.shared(path)
    got = samples(store.render())
    assert sum(v for (name, _), v in got.items() if name == "jobs_total") == 4 * n * 3
    assert got[("jobs_total", (("worker", "shared-0"),))] == 4 * ((n - 1) // 50 + 1)
    assert got[("job_ms_count", (("worker", "w2-0"),))] == (n - 1) // 20 + 1
    assert store.series_count(0) == 50 + 4 * 20
    assert store.repairs() == 0


def test_a_forked_child_uses_the_parents_handle(backend: Backend, path: str) -> None:
    store = backend.store.Store.shared(path)
    m = store.counter("c_total", "", ("who",))
    pid = os.fork()
    if pid == 0:  # the child: new series (the lock) and records through the same object
        code = 0
        try:
            for i in range(200):
                store.inc(store.series(m, (f"child-{i % 10}",)))
        except BaseException:
            code = 1
        os._exit(code)
    for i in range(200):
        store.inc(store.series(m, (f"parent-{i % 10}",)))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    got = samples(store.render())
    assert sum(got.values()) == 400 and len(got) == 20


def test_a_writer_killed_inside_the_lock_blocks_nobody(backend: Backend, path: str) -> None:
    store = backend.store.Store.shared(path)
    m = store.counter("jobs_total", "Jobs.", ("worker",))
    before = store.series(m, ("before",))
    holder = Worker(backend, path, "hold-lock")
    assert holder.line() == "locked"
    holder.kill()  # the kernel drops its flock; `writer` still names it
    # The next process to take the lock repairs, then goes on.
    other = Worker(backend, path, "record", "after", "40")
    other.finish()
    assert store.repairs() == 1
    assert store.series(m, ("before",)) == before
    got = samples(store.render())
    assert got[("jobs_total", (("worker", "after-0"),))] == 2 * 2


def test_sigkill_in_the_middle_loses_nothing_of_the_others(backend: Backend, path: str) -> None:
    """Workers killed while creating series, again and again, with recorders alongside."""
    store = backend.store.Store.shared(path)
    rounds, n = (6, 300) if backend.name == "py" else (12, 2000)
    last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    recorders = []
    for r in range(rounds):
        recorders.append(Worker(backend, path, "record", f"r{r}", str(n)))
        victim = Worker(backend, path, "churn", f"victim{r}")
        # Kill after a different number of its series each round.
        for _ in range(5 + 37 * r % 101):
            victim.line()
        victim.kill()
        now = samples(store.render())  # parses, and no counter went down
        for key, value in last.items():
            if key[0] in ("jobs_total", "job_ms_count", "job_ms_bucket"):
                assert now.get(key, 0) >= value, key
        last = now
    for w in recorders:
        w.finish()
    got = samples(store.render())
    for r in range(rounds):
        mine = sum(
            v
            for (name, labels), v in got.items()
            if name == "jobs_total" and labels[0][1].startswith(f"r{r}-")
        )
        assert mine == 2 * n
    shared = sum(
        v
        for (name, labels), v in got.items()
        if name == "jobs_total" and labels[0][1].startswith("shared-")
    )
    assert shared == rounds * n
    # Every series of a killed worker is either whole (found again by its labels) or absent.
    victims = [labels[0][1] for (name, labels) in got if labels and "victim" in labels[0][1]]
    m = store.counter("jobs_total", "Jobs.", ("worker",))
    for label in victims[:200]:
        sid = store.series(m, (label,))
        assert store.labels(sid) == (label,)


def test_gauges_one_value_or_one_per_process(backend: Backend, path: str) -> None:
    store = backend.store.Store.shared(path)
    shared = store.gauge("config_version", "", ("app",))
    mine = store.gauge("inflight", "In flight.", ("app",), per_process=True)
    store.set(store.series(shared, ("web",)), 1.0)
    store.set(store.series(mine, ("web",)), 5.0)
    with pytest.raises(InvalidMetricError, match="'pid' is given twice"):
        store.gauge("other", "", ("pid",), per_process=True)
    pid = os.fork()
    if pid == 0:  # another process: its own inflight series, the one config_version
        code = 0
        try:
            child = backend.store.Store.shared(path)
            child.set(child.series(child.gauge("config_version", "", ("app",)), ("web",)), 2.0)
            g = child.gauge("inflight", "In flight.", ("app",), per_process=True)
            assert g == mine
            child.set(child.series(g, ("web",)), 7.0)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    got = samples(store.render())
    assert got[("config_version", (("app", "web"),))] == 2.0  # the last set wins
    assert got[("inflight", (("app", "web"), ("pid", str(os.getpid()))))] == 5.0
    assert got[("inflight", (("app", "web"), ("pid", str(pid))))] == 7.0
