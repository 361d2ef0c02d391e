"""A fresh process that renders a 10k-series store: its first render and later ones.

    python _render_probe.py N [--no-thp]

Prints JSON: {"first": seconds, "steady": [seconds, ...]} (bench_exposition.py runs it).
``--no-thp`` turns transparent huge pages off for this process (prctl PR_SET_THP_DISABLE),
as on a system where they are off.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PR_SET_THP_DISABLE = 41


def main() -> None:
    n = int(sys.argv[1])
    if "--no-thp" in sys.argv:
        if ctypes.CDLL(None).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
            raise SystemExit("prctl(PR_SET_THP_DISABLE) failed")
    from bench_exposition import _fill_meshstats

    import meshstats._store_c as store_c

    store = _fill_meshstats(store_c, n)
    times = []
    for _ in range(6):
        t = time.perf_counter()
        text = store.render()
        times.append(time.perf_counter() - t)
        assert text.count(b"\nistio_requests_total{") == n
        del text
    print(json.dumps({"first": times[0], "steady": times[1:]}))


if __name__ == "__main__":
    main()
