"""Istio's stats PluginConfig: parsing, presets, and errors that name the field and entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshstats import Store
from meshstats.config import (
    ENVOY_BUCKETS,
    MIXER_BYTES_BUCKETS,
    MIXER_DURATION_MS_BUCKETS,
    StatsConfig,
    parse_duration,
)
from meshstats.errors import ConfigError

FULL = {
    "disable_host_header_fallback": True,
    "tcp_reporting_duration": "15s",
    "reporter": "SERVER_GATEWAY",
    "metrics": [
        {"name": "istio_requests_total", "dimensions": {"path": "request.url_path"}},
        {"tags_to_remove": ["response_flags"]},
        {"name": "request_bytes", "drop": True},
    ],
    "definitions": [{"name": "sizes", "type": "HISTOGRAM", "value": "request.total_size"}],
    "buckets": {"request_duration_milliseconds": "mixer", "sizes": [10, 100, 1000]},
    "max_series": 5000,
    "max_exposition_bytes": 1_000_000,
    "idle_series_expiry": "10m",
    "peer_cache_size": 64,
}


def test_parses_every_field() -> None:
    cfg = StatsConfig.parse(FULL)
    assert cfg.disable_host_header_fallback is True
    assert cfg.tcp_reporting_duration == 15.0
    assert cfg.reporter == "SERVER_GATEWAY"
    assert cfg.metrics[0].name == "requests_total"  # the istio_ prefix is optional
    assert cfg.metrics[0].dimensions == {"path": "request.url_path"}
    assert cfg.metrics[1].name == "" and cfg.metrics[1].tags_to_remove == ("response_flags",)
    assert cfg.metrics[2].drop is True
    assert cfg.definitions[0].type == "HISTOGRAM"
    assert cfg.buckets_for("request_duration_milliseconds") == MIXER_DURATION_MS_BUCKETS
    assert cfg.buckets_for("sizes") == (10.0, 100.0, 1000.0)
    assert cfg.buckets_for("response_bytes") == ENVOY_BUCKETS
    assert cfg.max_series == 5000 and cfg.peer_cache_size == 64
    assert cfg.max_exposition_bytes == 1_000_000
    assert cfg.idle_series_expiry == 600.0


def test_defaults() -> None:
    cfg = StatsConfig.parse(None)
    assert cfg.disable_host_header_fallback is None  # Istio's per-listener default applies
    assert cfg.tcp_reporting_duration == 5.0
    assert cfg.reporter == "UNSPECIFIED"
    assert cfg.buckets_for("request_bytes") == ENVOY_BUCKETS
    assert cfg.max_exposition_bytes == 256 * 1024 * 1024 == Store().max_exposition_bytes


def test_mixer_preset_follows_the_metric_unit() -> None:
    cfg = StatsConfig.parse({"buckets": {"": "mixer"}})
    assert cfg.buckets_for("request_bytes") == MIXER_BYTES_BUCKETS
    assert MIXER_BYTES_BUCKETS == (1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7)
    assert MIXER_DURATION_MS_BUCKETS[0] == 5 and MIXER_DURATION_MS_BUCKETS[-1] == 10000


def test_json_text_yaml_and_json_files(tmp_path: Path) -> None:
    text = json.dumps(FULL)
    assert StatsConfig.parse(text) == StatsConfig.parse(FULL)
    json_file = tmp_path / "stats.json"
    json_file.write_text(text)
    assert StatsConfig.parse(json_file) == StatsConfig.parse(FULL)
    yaml_file = tmp_path / "stats.yaml"
    yaml_file.write_text(
        "tcpReportingDuration: 250ms\n"
        "max_exposition_bytes: 67108864\n"
        "metrics:\n"
        "  - name: requests_total\n"
        "    tagsToRemove: [grpc_response_status]\n"
    )
    cfg = StatsConfig.parse(str(yaml_file))
    assert cfg.tcp_reporting_duration == 0.25
    assert cfg.max_exposition_bytes == 64 * 1024 * 1024
    assert cfg.metrics[0].tags_to_remove == ("grpc_response_status",)


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"metrics": [{}, {"tags_to_remove": "x"}]}, "metrics[1].tags_to_remove", "a list"),
        ({"metrics": [{"dimensions": {"bad-name": "1"}}]}, "metrics[0].dimensions", "bad-name"),
        ({"metrics": [{"dimensions": {"ok": 3}}]}, "metrics[0].dimensions.ok", "expression"),
        ({"metrics": [{"drop": "yes"}]}, "metrics[0].drop", "true or false"),
        ({"metrics": [{"match": "x"}]}, "metrics[0].match", "not implemented"),
        ({"metrics": [{"nmae": "x"}]}, "metrics[0].nmae", "unknown field"),
        (
            {"definitions": [{"name": "x", "value": "1", "type": "SUMMARY"}]},
            "definitions[0].type",
            "COUNTER",
        ),
        ({"definitions": [{"name": "x-y", "value": "1"}]}, "definitions[0].name", "invalid"),
        ({"definitions": [{"name": "x"}]}, "definitions[0].value", "expression"),
        ({"tcp_reporting_duration": "5 parsecs"}, "tcp_reporting_duration", "duration"),
        ({"tcp_reporting_duration": -1}, "tcp_reporting_duration", ">= 0"),
        ({"reporter": "CLIENT"}, "reporter", "SERVER_GATEWAY"),
        ({"buckets": {"request_bytes": [10, 5]}}, "buckets.request_bytes[1]", "increase"),
        ({"buckets": {"request_bytes": []}}, "buckets.request_bytes", "at least one"),
        ({"buckets": {"request_bytes": [1, float("inf")]}}, "buckets.request_bytes[1]", "finite"),
        ({"buckets": {"request_bytes": "linear"}}, "buckets.request_bytes", "preset"),
        ({"max_series": 0}, "max_series", ">= 1"),
        ({"max_exposition_bytes": 0}, "max_exposition_bytes", ">= 1"),
        ({"max_exposition_bytes": -1}, "max_exposition_bytes", ">= 1"),
        ({"max_exposition_bytes": "256MiB"}, "max_exposition_bytes", "integer"),
        ({"max_exposition_bytes": None}, "max_exposition_bytes", "integer"),
        ({"maxExpositionBytes": 2.5}, "max_exposition_bytes", "integer"),
        ({"peer_cache_size": True}, "peer_cache_size", "integer"),
        ({"disable_host_header_fallback": "no"}, "disable_host_header_fallback", "true"),
        ({"surprise": 1}, "surprise", "unknown field"),
        ({"max_series": "12.5"}, "max_series", "integer"),
        ({"max_series": 2.5}, "max_series", "integer"),
        ({"metrics": [{"drop": "True"}]}, "metrics[0].drop", "true or false"),  # JSON's words
        (
            {"tcpReportingDuration": "1s", "tcp_reporting_duration": "2s"},
            "tcp_reporting_duration",
            "twice",
        ),
    ],
)
def test_errors_name_the_field(config: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        StatsConfig.parse(config)
    assert info.value.field == field
    assert message in str(info.value)
    assert str(info.value).startswith(field + ": ")
    assert isinstance(info.value, ValueError)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        StatsConfig.parse(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("metrics: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        StatsConfig.parse(broken)
    with pytest.raises(ConfigError, match="invalid JSON"):
        StatsConfig.parse("{not json")
    with pytest.raises(ConfigError, match="mapping"):
        StatsConfig.parse(json.dumps([1, 2]))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (0.5, 0.5),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("100ms", 0.1),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0", 0.0),
        ("250us", 0.00025),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value, "x") == pytest.approx(seconds)


def test_protobuf_json_mapping_as_istio_writes_it() -> None:
    """The config is a protobuf message: its JSON mapping quotes booleans and 64-bit
    integers, spells durations "10s" and takes lowerCamel names as well as snake_case
    (istio/proxy testdata/stats/*, e.g. ``disable_host_header_fallback: "true"``)."""
    cfg = StatsConfig.parse(
        {
            "disable_host_header_fallback": "true",
            "tcpReportingDuration": "10s",
            "maxSeries": "5000",
            "maxExpositionBytes": "268435456",  # a 64-bit integer, quoted
            "peer_cache_size": 64.0,
            "metrics": [{"name": "requests_total", "drop": "false", "tagsToRemove": ["a"]}],
            "statPrefix": "istio",  # accepted and ignored, in either spelling
        }
    )
    assert cfg.disable_host_header_fallback is True
    assert cfg.tcp_reporting_duration == 10.0
    assert cfg.max_series == 5000 and cfg.peer_cache_size == 64
    assert cfg.max_exposition_bytes == 268435456
    assert cfg.metrics[0].drop is False and cfg.metrics[0].tags_to_remove == ("a",)
    assert (
        StatsConfig.parse({"disableHostHeaderFallback": "false"}).disable_host_header_fallback
        is False
    )
