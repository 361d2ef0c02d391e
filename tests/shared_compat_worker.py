"""A worker for tests/test_store_shared_compat.py: one backend's process in a shared store.

    python shared_compat_worker.py PATH MODE [ARGS...]

The backend is whatever ``meshstats.Store`` selects: the test sets
``MESHSTATS_NO_EXTENSIONS``, and the first line printed says which ran (``ready c`` or
``ready py``). MODE is one of:
  record NAME N   register the metrics of ``define``, print ``ready``, wait for a ``go``
                  line, then run ``workload(NAME, N)``; print the ids of ``PROBES`` as
                  ``ids`` and a JSON list, then ``done``
  render          print the text and OpenMetrics renders, hex-encoded, one a line
Every line is flushed at once. The parent replays ``workload`` into a private store to
know the exact totals, so everything a worker records is a function of NAME and N.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import meshstats

COUNTER, HISTOGRAM, GAUGE = 0, 1, 2


def define(store: meshstats.Store) -> tuple[int, int, int]:
    counter = store.counter("jobs_total", 'Jobs "done".\n', ("worker", "kind"))
    hist = store.histogram("job_ms", "Job time.", ("worker",), buckets=(0.25, 0.5, 1.0))
    gauge = store.gauge("last_job", "", ("worker",))
    return counter, hist, gauge


# Label sets every process asks for; the ids must agree everywhere.
PROBES = [(COUNTER, (f"shared-{k}", "日本")) for k in range(50)] + [
    (HISTOGRAM, (f"shared-{k}",)) for k in range(10)
]


def workload(store: meshstats.Store, name: str, n: int) -> None:
    """Overlapping series (``shared-*``, every worker) and disjoint ones (``NAME-*``).

    Observed values are multiples of 0.25, so sums are exact in any order of additions.
    """
    counter, hist, gauge = define(store)
    series = store.series
    mine = series(gauge, (name,))
    for i in range(n):
        shared = series(counter, (f"shared-{i % 50}", "日本"))
        own = series(counter, (f"{name}-{i % 20}", 'q"\\'))
        store.inc(shared)
        store.inc(own, 2)
        own_h = series(hist, (f"{name}-{i % 20}",))
        shared_h = series(hist, (f"shared-{i % 10}",))
        store.observe(own_h, (i % 7) * 0.25)
        store.observe(shared_h, (i % 3) * 0.5)
        store.set(mine, float(i))
        if i % 50 == 0:
            store.inc_many(np.array([shared, own, shared]), np.array([3, 4, 5], dtype=np.uint32))
            store.observe_many(np.array([own_h, shared_h], dtype=np.int32), np.array([0.75, 1.5]))


def main(argv: list[str]) -> None:
    path, mode, *args = argv
    store = meshstats.Store.shared(path)
    backend = "c" if meshstats.HAS_EXTENSION else "py"
    if mode == "record":
        define(store)
        print("ready", backend, flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("expected 'go'")
        workload(store, args[0], int(args[1]))
        ids = [store.series(metric, labels) for metric, labels in PROBES]
        print("ids", json.dumps(ids), flush=True)
        print("done", flush=True)
    elif mode == "render":
        print("ready", backend, flush=True)
        print(store.render().hex(), flush=True)
        print(store.render(openmetrics=True).hex(), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
