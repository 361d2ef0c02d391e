"""One scrape of series that 4 worker processes wrote: meshstats' shared store against
prometheus-client's multiprocess mode, on the same series, in the same run.

Each of 4 processes writes a quarter of N label sets (Istio's 25 labels; a counter and a
histogram with Envoy's buckets each). Then this process renders everything, rounds
interleaved: ``Store.shared(path).render()`` against ``generate_latest()`` over a
``MultiProcessCollector``. Targets (issue 11): 1k series in <= 10 ms (>= 200x), 10k in
<= 100 ms. Medians, spreads and the ratio go to ``extra_info``; run it alone with
``python benchmarks/bench_shared.py`` for a table.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

WRITER = Path(__file__).with_name("_shared_writer.py")
WORKERS = 4


def write(mode: str, target: str, n: int) -> None:
    procs = [
        subprocess.Popen([sys.executable, str(WRITER), mode, target, str(n), str(k), str(WORKERS)])
        for k in range(WORKERS)
    ]
    for p in procs:
        assert p.wait() == 0


def renderers(tmp: str, n: int) -> tuple[Any, Any]:
    import prometheus_client
    from prometheus_client import multiprocess

    from meshstats import Store

    path = os.path.join(tmp, "meshstats.store")
    prom_dir = os.path.join(tmp, "prometheus")
    os.mkdir(prom_dir)
    write("meshstats", path, n)
    write("prometheus", prom_dir, n)
    store = Store.shared(path)
    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=prom_dir)
    return store.render, lambda: prometheus_client.generate_latest(registry)


def interleaved(ours: Any, theirs: Any, rounds: int) -> dict[str, float]:
    """CPU-independent wall times, alternating; the slower baseline gets fewer rounds."""
    a: list[float] = []
    b: list[float] = []
    for r in range(rounds):
        for fn, out in ((ours, a), (theirs, b)) if r % 2 == 0 else ((theirs, b), (ours, a)):
            if out is b and len(b) >= max(3, rounds // 4):
                continue
            t = time.perf_counter()
            text = fn()
            out.append(time.perf_counter() - t)
            assert text.count(b"\nistio_requests_total{") > 0
    return {
        "meshstats_ms": statistics.median(a) * 1e3,
        "meshstats_spread_ms": (max(a) - min(a)) * 1e3,
        "prometheus_ms": statistics.median(b) * 1e3,
        "prometheus_spread_ms": (max(b) - min(b)) * 1e3,
        "ratio": statistics.median(b) / statistics.median(a),
    }


@pytest.mark.parametrize("n", [1000, 10000])
def test_shared_scrape_4_workers(benchmark: Any, n: int) -> None:
    benchmark.group = f"scrape of {n} series written by {WORKERS} processes"
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = renderers(tmp, n)
        text = ours()
        assert text.count(b"\nistio_requests_total{") == n
        assert theirs().count(b"\nistio_requests_total{") == n
        rounds = 1 if benchmark.disabled else 12
        benchmark.extra_info.update(interleaved(ours, theirs, rounds))
        benchmark.pedantic(ours, rounds=rounds, iterations=1)


def main() -> None:
    for n in (1000, 10000):
        with tempfile.TemporaryDirectory() as tmp:
            ours, theirs = renderers(tmp, n)
            r = interleaved(ours, theirs, 12)
        print(
            f"{n:>6} series, {WORKERS} writers: meshstats {r['meshstats_ms']:.2f} ms "
            f"(spread {r['meshstats_spread_ms']:.2f}), prometheus-client multiprocess "
            f"{r['prometheus_ms']:.0f} ms (spread {r['prometheus_spread_ms']:.0f}): "
            f"{r['ratio']:.0f}x"
        )


if __name__ == "__main__":
    main()
