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
    """Wall and CPU times of each, rounds alternating; the slow baseline gets fewer rounds.

    CPU time is this process' (both render in it): on a shared machine it is the steadier
    figure, and the ratio is taken from it."""
    wall: dict[str, list[float]] = {"meshstats": [], "prometheus": []}
    cpu: dict[str, list[float]] = {"meshstats": [], "prometheus": []}
    for r in range(rounds):
        order = (("meshstats", ours), ("prometheus", theirs))
        for name, fn in order if r % 2 == 0 else order[::-1]:
            if name == "prometheus" and len(cpu[name]) >= max(3, rounds // 4):
                continue
            w, c = time.perf_counter(), time.process_time()
            text = fn()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - w)
            assert text.count(b"\nistio_requests_total{") > 0
            del text
    out = {}
    for name in ("meshstats", "prometheus"):
        for what, times in (("cpu", cpu[name]), ("wall", wall[name])):
            out[f"{name}_{what}_ms"] = statistics.median(times) * 1e3
            out[f"{name}_{what}_spread_ms"] = (max(times) - min(times)) * 1e3
    out["ratio"] = out["prometheus_cpu_ms"] / out["meshstats_cpu_ms"]
    return out


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
            f"{n:>6} series, {WORKERS} writers: meshstats {r['meshstats_cpu_ms']:.2f} ms CPU "
            f"(spread {r['meshstats_cpu_spread_ms']:.2f}; wall {r['meshstats_wall_ms']:.2f}), "
            f"prometheus-client multiprocess {r['prometheus_cpu_ms']:.0f} ms CPU (spread "
            f"{r['prometheus_cpu_spread_ms']:.0f}; wall {r['prometheus_wall_ms']:.0f}): "
            f"{r['ratio']:.0f}x"
        )


if __name__ == "__main__":
    main()
