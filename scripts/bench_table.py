"""Turn a pytest-benchmark ``--benchmark-json`` file into README's Markdown table.

    python -m pytest benchmarks --benchmark-only --benchmark-json=bench.json
    python scripts/bench_table.py bench.json

The spread is the interquartile range of the rounds. Within each group every row is
compared with the group's compiled meshstats row (the test whose name contains
``meshstats_c``): "x" is how many times slower that row is, so a baseline row reading
``15.2x`` means meshstats (C) is 15.2 times faster.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _name(bench: dict[str, Any]) -> str:
    name: str = bench["name"].removeprefix("test_")
    return name


def table(data: dict[str, Any]) -> str:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"] or bench["fullname"]].append(bench)
    lines = [
        "| group | case | median | spread (IQR) | vs meshstats (C) | note |",
        "|---|---|---|---|---|---|",
    ]
    for group in sorted(groups):
        rows = groups[group]
        ours = [b for b in rows if "meshstats_c" in b["name"]]
        ref = (
            ours[0]["stats"]["median"] / ours[0].get("extra_info", {}).get("calls_per_round", 1)
            if ours
            else None
        )
        for bench in sorted(rows, key=lambda b: b["stats"]["median"]):
            # single-event cases run many calls per round: show the time of one call
            calls = bench.get("extra_info", {}).get("calls_per_round", 1)
            median = bench["stats"]["median"] / calls
            spread = _fmt_time(bench["stats"]["iqr"] / calls)
            ratio = f"{median / ref:.1f}x" if ref else ""
            note = ", ".join(f"{k}={v}" for k, v in bench.get("extra_info", {}).items())
            lines.append(
                f"| {group} | {_name(bench)} | {_fmt_time(median)} | {spread} | {ratio} | {note} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as fh:
        print(table(json.load(fh)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
