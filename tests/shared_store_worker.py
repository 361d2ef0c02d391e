"""A worker process for tests/test_store_shared.py: records into a shared store.

    python shared_store_worker.py BACKEND PATH MODE [ARGS...]

BACKEND is ``c`` or ``py`` (which store module to import), MODE one of:
  record NAME N   register the test metrics, then N times: the series ("shared-<i % 50>")
                  and ("<NAME>-<i % 20>") of the counter +1 and +2, one observation of i % 7
  churn NAME      forever: a new series ("<NAME>-<i>") +1, printing i after each, so the
                  parent can kill it at a chosen point (in the middle of creating series)
  hold-lock       take the store's lock as a writer does (flock, `writer` = pid) and wait:
                  exactly what a writer killed inside the lock leaves behind
Every line it prints is flushed at once; ``ready`` comes first.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import sys

WRITER_OFFSET = 40  # docs/store.md, "File layout": the head's u32 writer field


def metrics(store: object) -> tuple[int, int]:
    counter = store.counter("jobs_total", "Jobs.", ("worker",))  # type: ignore[attr-defined]
    hist = store.histogram("job_ms", "Job time.", ("worker",), buckets=(1, 3, 5))  # type: ignore[attr-defined]
    return counter, hist


def main(argv: list[str]) -> None:
    backend, path, mode, *args = argv
    Store = importlib.import_module(f"meshstats._store_{backend}").Store
    store = Store.shared(path)
    counter, hist = metrics(store)
    print("ready", flush=True)
    if mode == "record":
        name, n = args[0], int(args[1])
        for i in range(n):
            store.inc(store.series(counter, (f"shared-{i % 50}",)))
            store.inc(store.series(counter, (f"{name}-{i % 20}",)), 2)
            store.observe(store.series(hist, (f"{name}-{i % 20}",)), i % 7)
        print("done", flush=True)
    elif mode == "churn":
        i = 0
        while True:
            store.inc(store.series(counter, (f"{args[0]}-{i}",)))
            print(i, flush=True)
            i += 1
    elif mode == "hold-lock":
        fd = os.open(path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, os.getpid().to_bytes(4, "little"), WRITER_OFFSET)
        print("locked", flush=True)
        sys.stdin.read()  # until killed
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
