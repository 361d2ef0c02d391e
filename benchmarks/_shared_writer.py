"""One worker process of bench_shared.py: writes its share of the series, then exits.

    python _shared_writer.py meshstats|prometheus TARGET N WORKER WORKERS

Series i (i % WORKERS == WORKER) gets its counter +(i % 997 + 1) and 5 observations, with
the i-th realistic Istio label set (conftest.label_values): the same values in both modes.
For prometheus, TARGET is the PROMETHEUS_MULTIPROC_DIR (set before it is imported).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(mode: str, target: str, n: int, worker: int, workers: int) -> None:
    from conftest import LABEL_NAMES, label_values

    from meshstats import DEFAULT_BUCKETS

    mine = range(worker, n, workers)
    values = [1.0, 7.0, 30.0, 120.0, 900.0]
    if mode == "meshstats":
        from meshstats import Store

        store = Store.shared(target)
        c = store.counter("istio_requests_total", "Requests.", LABEL_NAMES)
        h = store.histogram("istio_request_duration_milliseconds", "Duration.", LABEL_NAMES)
        for i in mine:
            labels = label_values(i)
            store.inc(store.series(c, labels), i % 997 + 1)
            sid = store.series(h, labels)
            for v in values:
                store.observe(sid, v)
        return
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = target
    import prometheus_client

    counter = prometheus_client.Counter("istio_requests", "Requests.", LABEL_NAMES)
    hist = prometheus_client.Histogram(
        "istio_request_duration_milliseconds", "Duration.", LABEL_NAMES, buckets=DEFAULT_BUCKETS
    )
    for i in mine:
        labels = label_values(i)
        counter.labels(*labels).inc(i % 997 + 1)
        child = hist.labels(*labels)
        for v in values:
            child.observe(v)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
