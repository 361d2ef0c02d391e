"""Shared by the exposition tests: independent parsers turn a body into comparable samples."""

from __future__ import annotations

import math
import shutil
import subprocess

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

__all__ = [
    "SampleKey",
    "openmetrics_samples",
    "parse_openmetrics",
    "parse_text",
    "promtool",
    "same_values",
    "text_samples",
]

#: A sample as the tests compare it: (sample name, sorted label pairs).
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _samples(families: object) -> dict[SampleKey, float]:
    out: dict[SampleKey, float] = {}
    for family in families:  # type: ignore[attr-defined]
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in out, f"sample {key} appears twice"
            out[key] = float(sample.value)
    return out


def text_samples(body: bytes) -> dict[SampleKey, float]:
    """Samples of a Prometheus text 0.0.4 body, read by prometheus_client's text parser."""
    return _samples(parse_text(body.decode("utf-8")))


def openmetrics_samples(body: bytes) -> dict[SampleKey, float]:
    """Samples of an OpenMetrics body; the parser enforces histogram and counter rules."""
    return _samples(parse_openmetrics(body.decode("utf-8")))  # type: ignore[no-untyped-call]


def same_values(a: dict[SampleKey, float], b: dict[SampleKey, float]) -> bool:
    """Equal keys and equal values, NaN equal to NaN."""
    if a.keys() != b.keys():
        return False
    return all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def promtool(body: bytes) -> tuple[int, set[str]]:
    """``promtool check metrics`` on ``body``: exit code and the set of problem lines."""
    binary = shutil.which("promtool")
    assert binary, "promtool is required (Debian package prometheus)"
    result = subprocess.run([binary, "check", "metrics"], input=body, capture_output=True)
    lines = (result.stdout + result.stderr).decode().splitlines()
    return result.returncode, {line.strip() for line in lines if line.strip()}
