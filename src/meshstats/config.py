"""Istio's stats PluginConfig (``shared/reference/telemetry-v2.md`` §5), plus meshstats' additions.

Accepted as a mapping, JSON text or a ``.json``/``.yaml``/``.yml`` file, with Istio's field
names (snake_case; the camelCase spellings of Istio's JSON form are accepted too)::

    disable_host_header_fallback: false
    tcp_reporting_duration: 5s
    reporter: UNSPECIFIED            # or SERVER_GATEWAY
    metrics:
      - name: requests_total         # empty or absent: every metric
        dimensions: {request_host: request.host}
        tags_to_remove: [response_flags]
        drop: false
    definitions:
      - {name: requests_by_path, type: COUNTER, value: "1"}
    # meshstats additions
    buckets: {request_duration_milliseconds: mixer, request_bytes: [100, 1000, 10000]}
    max_series: 100000
    max_exposition_bytes: 268435456  # 256 MiB: the most a scrape carries (see docs/store.md)
    idle_series_expiry: 0s           # 0: never expire
    peer_cache_size: 500

>>> cfg = StatsConfig.parse({"tcp_reporting_duration": "1.5s", "metrics": [{"drop": True,
...                          "name": "request_bytes"}]})
>>> cfg.tcp_reporting_duration, cfg.metrics[0].drop
(1.5, True)

Structural mistakes raise :class:`~meshstats.errors.ConfigError` naming the field and the
entry (``metrics[1].tags_to_remove``). Expression problems do not: like Istio, a dimension whose
expression fails to parse removes that label, and the engine lists such cases in
``StatsEngine.config_warnings``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._files import load_data, parse_data
from ._store import DEFAULT_MAX_EXPOSITION_BYTES
from .errors import ConfigError

__all__ = [
    "StatsConfig",
    "MetricConfig",
    "MetricDefinition",
    "ENVOY_BUCKETS",
    "MIXER_DURATION_MS_BUCKETS",
    "MIXER_BYTES_BUCKETS",
    "parse_duration",
]

ENVOY_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
    600000, 1800000, 3600000,
)  # fmt: skip
#: Mixer's ``istio_request_duration_seconds`` bounds (0.005 .. 10 s), in milliseconds.
MIXER_DURATION_MS_BUCKETS: tuple[float, ...] = (
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
)  # fmt: skip
#: Mixer's request/response size bounds: exponential, scale 1, growth 10, 8 finite buckets.
MIXER_BYTES_BUCKETS: tuple[float, ...] = tuple(float(10**i) for i in range(8))

METRIC_TYPES = ("COUNTER", "GAUGE", "HISTOGRAM")
REPORTERS = ("UNSPECIFIED", "SERVER_GATEWAY")

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d*)?|-?\.\d+)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def parse_duration(value: Any, where: str) -> float:
    """Seconds from ``5``, ``5.0``, ``"5s"``, ``"100ms"`` or protobuf JSON's ``"1.5s"``."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a duration, got {value!r}", where)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ConfigError(f"expected a duration such as '5s' or '250ms', got {value!r}", where)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"duration must be >= 0, got {value!r}", where)
    return seconds


@dataclass(frozen=True)
class MetricConfig:
    """One ``metrics[]`` entry: applies to ``name`` (short, without ``istio_``) or to all."""

    name: str = ""
    dimensions: Mapping[str, str] = field(default_factory=dict)
    tags_to_remove: tuple[str, ...] = ()
    drop: bool = False


@dataclass(frozen=True)
class MetricDefinition:
    """A custom metric: ``istio_<name>`` whose value is an expression, per request/connection."""

    name: str
    value: str
    type: str = "COUNTER"


BucketSpec = tuple[float, ...] | str  # explicit bounds, or "default" / "envoy" / "mixer"


@dataclass(frozen=True)
class StatsConfig:
    disable_host_header_fallback: bool | None = None  # None: Istio's per-listener default
    tcp_reporting_duration: float = 5.0
    metrics: tuple[MetricConfig, ...] = ()
    definitions: tuple[MetricDefinition, ...] = ()
    reporter: str = "UNSPECIFIED"
    buckets: Mapping[str, BucketSpec] = field(default_factory=dict)
    max_series: int = 100_000
    idle_series_expiry: float = 0.0
    peer_cache_size: int = 500
    # Longest label value, in characters; longer ones (a peer's 11 KB WORKLOAD_NAME, a
    # client's Host header) are cut, marked with a final "…" and counted.
    max_label_length: int = 512
    # The store's exposition budget: max_series and max_label_length bound the number and
    # the length of label values, not their product (100,000 series of 512-character
    # values would still be tens of GB per scrape); past this, new label sets fold.
    max_exposition_bytes: int = DEFAULT_MAX_EXPOSITION_BYTES

    @classmethod
    def parse(
        cls, source: StatsConfig | Mapping[str, Any] | str | os.PathLike[str] | None
    ) -> StatsConfig:
        """From a mapping, JSON text, or a path to a JSON or YAML file."""
        if source is None:
            return cls()
        if isinstance(source, StatsConfig):
            return source
        if isinstance(source, os.PathLike) or (
            isinstance(source, str) and not source.lstrip().startswith(("{", "["))
        ):
            return cls.parse(load_data(source, "a stats config"))
        if isinstance(source, str):
            return cls.parse(parse_data(source, "json", "a stats config", "<text>"))
        if not isinstance(source, Mapping):
            raise ConfigError(f"config must be a mapping, got {type(source).__name__}")
        return _parse(source)

    def buckets_for(self, short_name: str) -> tuple[float, ...]:
        """Bucket bounds for a histogram (short name), resolving presets."""
        spec = self.buckets.get(short_name, self.buckets.get("", "default"))
        if not isinstance(spec, str):
            return spec
        if spec in ("default", "envoy"):
            return ENVOY_BUCKETS
        return MIXER_DURATION_MS_BUCKETS if "duration" in short_name else MIXER_BYTES_BUCKETS


_ALIASES = {
    "disableHostHeaderFallback": "disable_host_header_fallback",
    "tcpReportingDuration": "tcp_reporting_duration",
    "tagsToRemove": "tags_to_remove",
    "maxSeries": "max_series",
    "idleSeriesExpiry": "idle_series_expiry",
    "peerCacheSize": "peer_cache_size",
    "maxLabelLength": "max_label_length",
    "maxExpositionBytes": "max_exposition_bytes",
}
_TOP = {
    "disable_host_header_fallback", "tcp_reporting_duration", "metrics", "definitions",
    "reporter", "buckets", "max_series", "idle_series_expiry", "peer_cache_size",
    "max_label_length", "max_exposition_bytes",
    # accepted and ignored, as Istio ignores them today
    "debug", "max_peer_cache_size", "stat_prefix", "field_separator", "value_separator",
    "rotation_interval", "graceful_deletion_interval",
}  # fmt: skip


_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def _fields(data: Mapping[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    """Field names as protobuf's JSON mapping takes them: snake_case or lowerCamelCase."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _ALIASES.get(key, key)
        if isinstance(name, str) and name not in allowed:
            name = _CAMEL.sub(r"_\1", name).lower()
        if name in out:
            raise ConfigError(
                f"{key!r} given twice (as snake_case and lowerCamelCase)", where + key
            )
        if name not in allowed:
            raise ConfigError(
                f"unknown field {key!r} (known: {', '.join(sorted(allowed))})", f"{where}{key}"
            )
        out[name] = value
    return out


def _bool(value: Any, where: str) -> bool:
    """A protobuf JSON bool: ``true``/``false``, or the quoted ``"true"``/``"false"``
    protobuf's parser accepts too (Istio's own test configs quote them)."""
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise ConfigError(f"expected true or false, got {type(value).__name__} {value!r}", where)


def _int(value: Any, where: str) -> int:
    """A protobuf JSON integer: a number without a fraction, or its decimal string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value)
    raise ConfigError(f"expected an integer, got {type(value).__name__} {value!r}", where)


def _expect(value: Any, kind: type | tuple[type, ...], what: str, where: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ConfigError(f"expected {what}, got {type(value).__name__} {value!r}", where)
    return value


def _parse(data: Mapping[str, Any]) -> StatsConfig:
    f = _fields(data, _TOP, "")
    kwargs: dict[str, Any] = {}
    if "disable_host_header_fallback" in f:
        kwargs["disable_host_header_fallback"] = _bool(
            f["disable_host_header_fallback"], "disable_host_header_fallback"
        )
    if "tcp_reporting_duration" in f:
        kwargs["tcp_reporting_duration"] = parse_duration(
            f["tcp_reporting_duration"], "tcp_reporting_duration"
        )
    if "idle_series_expiry" in f:
        kwargs["idle_series_expiry"] = parse_duration(f["idle_series_expiry"], "idle_series_expiry")
    if "reporter" in f:
        reporter = f["reporter"]
        if reporter not in REPORTERS:
            raise ConfigError(
                f"must be one of {', '.join(REPORTERS)}, got {reporter!r}", "reporter"
            )
        kwargs["reporter"] = reporter
    for key in ("max_series", "peer_cache_size", "max_label_length", "max_exposition_bytes"):
        if key in f:
            value = _int(f[key], key)
            if value < 1:
                raise ConfigError(f"must be >= 1, got {value}", key)
            kwargs[key] = value
    metrics = _expect(f.get("metrics", []) or [], list, "a list", "metrics")
    kwargs["metrics"] = tuple(_metric(m, f"metrics[{i}]") for i, m in enumerate(metrics))
    definitions = _expect(f.get("definitions", []) or [], list, "a list", "definitions")
    kwargs["definitions"] = tuple(
        _definition(d, f"definitions[{i}]") for i, d in enumerate(definitions)
    )
    buckets = _expect(f.get("buckets", {}) or {}, Mapping, "a mapping", "buckets")
    kwargs["buckets"] = {str(k): _bucket_spec(v, f"buckets.{k}") for k, v in buckets.items()}
    return StatsConfig(**kwargs)


def _metric(entry: Any, where: str) -> MetricConfig:
    entry = _expect(entry, Mapping, "a mapping", where)
    f = _fields(entry, {"name", "dimensions", "tags_to_remove", "drop", "match"}, where + ".")
    name = _expect(f.get("name", "") or "", str, "a string", where + ".name")
    name = name.removeprefix("istio_")
    dims = _expect(f.get("dimensions", {}) or {}, Mapping, "a mapping", where + ".dimensions")
    for tag, expr in dims.items():
        if not isinstance(tag, str) or not _NAME.match(tag) or tag.startswith("__"):
            raise ConfigError(f"invalid label name {tag!r}", f"{where}.dimensions")
        _expect(expr, str, "an expression string", f"{where}.dimensions.{tag}")
    remove = _expect(f.get("tags_to_remove", []) or [], list, "a list", where + ".tags_to_remove")
    for i, tag in enumerate(remove):
        _expect(tag, str, "a label name", f"{where}.tags_to_remove[{i}]")
    if "match" in f:
        raise ConfigError("'match' is not implemented by Istio either; remove it", where + ".match")
    drop = _bool(f.get("drop", False), where + ".drop")
    return MetricConfig(name, dict(dims), tuple(remove), drop)


def _definition(entry: Any, where: str) -> MetricDefinition:
    entry = _expect(entry, Mapping, "a mapping", where)
    f = _fields(entry, {"name", "value", "type"}, where + ".")
    name = _expect(f.get("name"), str, "a metric name", where + ".name").removeprefix("istio_")
    if not _NAME.match(name):
        raise ConfigError(f"invalid metric name {name!r}", where + ".name")
    value = _expect(f.get("value"), str, "an expression string", where + ".value")
    kind = f.get("type", "COUNTER")
    if kind not in METRIC_TYPES:
        raise ConfigError(
            f"must be one of {', '.join(METRIC_TYPES)}, got {kind!r}", where + ".type"
        )
    return MetricDefinition(name, value, kind)


def _bucket_spec(value: Any, where: str) -> BucketSpec:
    if isinstance(value, str):
        if value not in ("default", "envoy", "mixer"):
            raise ConfigError(f"preset must be default, envoy or mixer, got {value!r}", where)
        return value
    bounds = _expect(value, Sequence, "a preset name or a list of bounds", where)
    out: list[float] = []
    for i, b in enumerate(bounds):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
            raise ConfigError(f"bound must be a finite number, got {b!r}", f"{where}[{i}]")
        if out and b <= out[-1]:
            raise ConfigError(
                f"bounds must increase strictly, {b!r} after {out[-1]!r}", f"{where}[{i}]"
            )
        out.append(float(b))
    if not out:
        raise ConfigError("at least one bound is needed", where)
    return tuple(out)
