"""One loader for every JSON/YAML file: the same format rule, the same error wording.

Stats configs, workload registries, node metadata and sidecar configs are all read by
``meshstats._files``; each case below is tried on all four readers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from meshstats import PeerMetadata, StatsConfig, WorkloadRegistry
from meshstats._files import format_of, load_data
from meshstats.errors import ConfigError
from meshstats.proxy import SidecarConfig

READERS: dict[str, tuple[Callable[[Path], object], str]] = {
    "stats config": (StatsConfig.parse, "a stats config"),
    "registry": (WorkloadRegistry.from_file, "a workload registry"),
    "node metadata": (PeerMetadata.from_file, "node metadata"),
    "sidecar config": (SidecarConfig.from_file, "a sidecar config"),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_a_missing_file_is_named(reader: str, tmp_path: Path) -> None:
    read, what = READERS[reader]
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        read(path)
    assert info.value.field == str(path)
    assert str(info.value) == f"{path}: cannot read {what}: No such file or directory"


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [("bad.json", "{not json", "JSON"), ("bad.yaml", "a: [", "YAML"), ("bad.cfg", "[1,", "JSON")],
)
def test_a_malformed_file_says_which_format_failed(
    reader: str, name: str, text: str, kind: str, tmp_path: Path
) -> None:
    read, what = READERS[reader]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read(path)
    assert info.value.field == str(path)
    assert str(info.value).startswith(f"{path}: invalid {kind} in {what}: ")


def test_the_format_rule(tmp_path: Path) -> None:
    assert format_of("x.JSON", "a: 1") == "json"
    assert format_of("x.yml", "{}") == "yaml"
    assert format_of("x.conf", "  {") == "json"
    assert format_of("x.conf", "- a") == "yaml"
    path = tmp_path / "node"
    path.write_text("NAME: pod-1\n")
    assert load_data(path, "node metadata") == {"NAME": "pod-1"}


def test_json_text_errors_are_config_errors_too() -> None:
    with pytest.raises(ConfigError, match="invalid JSON in a stats config"):
        StatsConfig.parse("{oops")
    with pytest.raises(ConfigError, match="invalid JSON in node metadata"):
        PeerMetadata.from_json("{oops")
