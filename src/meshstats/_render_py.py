"""Prometheus text 0.0.4 and OpenMetrics 1.0 rendering of a store snapshot (pure Python).

>>> from meshstats._render_py import render
>>> snap = [("up_total", "counter", "Ups.", ("job",), (), [(("a",), 3)])]
>>> print(render(snap).decode(), end="")
# HELP up_total Ups.
# TYPE up_total counter
up_total{job="a"} 3
>>> print(render(snap, openmetrics=True).decode(), end="")
# HELP up Ups.
# TYPE up counter
up_total{job="a"} 3
# EOF

The rules are those of ``docs/store.md`` ("Exposition"); the compiled renderer
(``_core/render.c``) must produce the same bytes. This module renders any snapshot, so
the exposition helpers can also use it for data that did not come from a ``Store``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = [
    "BUDGET_FAMILY",
    "BUDGET_HELP",
    "OVERFLOW_FAMILY",
    "OVERFLOW_HELP",
    "Snapshot",
    "SnapshotEntry",
    "escape_help",
    "escape_label_value",
    "format_float",
    "openmetrics_family",
    "render",
]

#: A histogram series' value in a snapshot: non-cumulative counts (last is +Inf) and the sum.
HistogramValue = tuple[tuple[int, ...], float]
SeriesValue = int | float | HistogramValue
#: ``(name, kind, help, label_names, buckets, [(label_values, value), ...])``
SnapshotEntry = tuple[
    str, str, str, tuple[str, ...], tuple[float, ...], list[tuple[tuple[str, ...], SeriesValue]]
]
Snapshot = list[SnapshotEntry]

#: The extra family that reports label sets folded by the cardinality guard.
OVERFLOW_FAMILY = "meshstats_series_overflow_total"
OVERFLOW_HELP = "Label sets folded into the overflow series because the metric reached max_series."
#: The same for label sets folded because the store's exposition budget was used up.
BUDGET_FAMILY = "meshstats_exposition_budget_overflow_total"
BUDGET_HELP = (
    "Label sets folded into the overflow series because the store reached max_exposition_bytes."
)

_INF = math.inf


def format_float(x: float) -> str:
    """Shortest of ``%.15g``/``%.16g``/``%.17g`` that reads back exactly; ``+Inf``/``-Inf``/``NaN``.

    >>> [format_float(v) for v in (0.5, 3600000.0, 0.005, 0.1, float("-inf"))]
    ['0.5', '3600000', '0.005', '0.1', '-Inf']
    """
    if x != x:
        return "NaN"
    if x == _INF:
        return "+Inf"
    if x == -_INF:
        return "-Inf"
    s = f"{x:.15g}"
    if float(s) == x:
        return s
    s = f"{x:.16g}"
    if float(s) == x:
        return s
    return f"{x:.17g}"


def escape_label_value(value: str) -> str:
    r"""Escape ``\``, ``"`` and newline as the text format requires; all else stays raw.

    >>> escape_label_value('a"b\\c\nd')
    'a\\"b\\\\c\\nd'
    """
    # Most label values need nothing: skip the three replaces for them.
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str, openmetrics: bool = False) -> str:
    r"""Escape a help text: ``\`` and newline (text 0.0.4), also ``"`` (OpenMetrics).

    >>> escape_help('say "hi"\n'), escape_help('say "hi"\n', openmetrics=True)
    ('say "hi"\\n', 'say \\"hi\\"\\n')
    """
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    if openmetrics:
        text = text.replace('"', '\\"')
    return text


def openmetrics_family(name: str, kind: str) -> str:
    """The OpenMetrics family name: a counter loses one trailing ``_total``.

    >>> openmetrics_family("istio_requests_total", "counter"), openmetrics_family("up", "gauge")
    ('istio_requests', 'up')
    """
    if kind == "counter" and name.endswith("_total"):
        return name[:-6]
    return name


def _label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values))


def render(snapshot: Sequence[SnapshotEntry], openmetrics: bool = False) -> bytes:
    """Render ``snapshot`` (as ``Store.snapshot()`` returns it) in the order given.

    Parameters
    ----------
    snapshot
        Families as ``(name, kind, help, label_names, buckets, series)``; ``Store.snapshot()``
        already sorts them by name.
    openmetrics
        ``False`` for Prometheus text 0.0.4, ``True`` for OpenMetrics 1.0 (counter families
        without ``_total``, samples with it, ``# EOF`` at the end).
    """
    out: list[str] = []
    add = out.append
    for name, kind, help_text, label_names, buckets, series in snapshot:
        family = openmetrics_family(name, kind) if openmetrics else name
        add(f"# HELP {family} {escape_help(help_text, openmetrics)}\n# TYPE {family} {kind}\n")
        if kind == "histogram":
            _render_histogram(add, name, label_names, buckets, series, openmetrics)
            continue
        sample = f"{family}_total" if openmetrics and kind == "counter" else name
        for values, value in series:
            text = format_float(value) if kind == "gauge" else str(value)  # type: ignore[arg-type]
            if label_names:
                add(f"{sample}{{{_label_text(label_names, values)}}} {text}\n")
            else:
                add(f"{sample} {text}\n")
    if openmetrics:
        add("# EOF\n")
    return "".join(out).encode("utf-8")


def _render_histogram(
    add: Callable[[str], object],
    name: str,
    label_names: tuple[str, ...],
    buckets: tuple[float, ...],
    series: list[tuple[tuple[str, ...], SeriesValue]],
    openmetrics: bool,
) -> None:
    # OpenMetrics 1.0 allows a histogram _sum only as a counter (not negative, not NaN) and
    # never with a negative bound; _sum and _count go together, so both are left out then.
    sum_allowed = not (openmetrics and buckets and buckets[0] < 0)
    bounds = [format_float(b) for b in buckets]
    bounds.append("+Inf")
    for values, value in series:
        counts, total = value  # type: ignore[misc]
        labels = _label_text(label_names, values)
        prefix = f"{name}_bucket{{{labels}," if labels else f"{name}_bucket{{"
        cumulative = 0
        lines = []
        for le, count in zip(bounds, counts):
            cumulative += count
            lines.append(f'{prefix}le="{le}"}} {cumulative}\n')
        if sum_allowed and not (openmetrics and (total < 0 or total != total)):
            brace = f"{{{labels}}}" if labels else ""
            lines.append(f"{name}_sum{brace} {format_float(total)}\n")
            lines.append(f"{name}_count{brace} {cumulative}\n")
        add("".join(lines))
