"""The workload registry: out-of-mesh peers identified by address."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import meshstats.registry
from meshstats.errors import ConfigError
from meshstats.registry import WorkloadRegistry

ENTRIES = [
    {"cidr": "10.0.0.0/8", "metadata": {"WORKLOAD_NAME": "vms"}},
    {"cidr": "10.1.0.0/16", "metadata": {"WORKLOAD_NAME": "subnet"}},
    {"ip": "10.1.2.3", "metadata": {"WORKLOAD_NAME": "host", "NAMESPACE": "data"}},
    {"cidr": "2001:db8::/32", "metadata": {"WORKLOAD_NAME": "v6"}},
]


def test_doctests() -> None:
    assert doctest.testmod(meshstats.registry).failed == 0


@pytest.mark.parametrize(
    ("address", "workload"),
    [
        ("10.1.2.3", "host"),
        ("10.1.2.3:9080", "host"),
        ("10.1.9.9", "subnet"),
        ("10.200.0.1", "vms"),
        ("[2001:db8::1]:443", "v6"),
        ("2001:db8::1", "v6"),
        ("11.0.0.1", None),
        ("::ffff:10.1.2.3", None),  # a v4-mapped v6 address is not the v4 address
        ("not-an-ip", None),
        ("", None),
        (None, None),
    ],
)
def test_longest_prefix_wins(address: str | None, workload: str | None) -> None:
    found = WorkloadRegistry.from_entries(ENTRIES).lookup(address)
    assert (found.workload_name if found else None) == workload


def test_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "registry.yaml"
    yaml_file.write_text(
        "workloads:\n  - cidr: 203.0.113.0/24\n    metadata: {WORKLOAD_NAME: partner}\n"
    )
    assert WorkloadRegistry.from_file(yaml_file).lookup("203.0.113.7").workload_name == "partner"
    json_file = tmp_path / "registry.json"
    json_file.write_text('[{"ip": "127.0.0.1", "metadata": {"WORKLOAD_NAME": "local"}}]')
    assert len(WorkloadRegistry.from_file(json_file)) == 1


@pytest.mark.parametrize(
    ("entry", "field", "message"),
    [
        ({"cidr": "10.0.0.1/8", "metadata": {}}, "workloads[0].cidr", "host bits"),
        ({"ip": "10.0.0.300", "metadata": {}}, "workloads[0].ip", "does not appear"),
        ({"metadata": {}}, "workloads[0]", "exactly one"),
        ({"ip": "1.2.3.4", "cidr": "1.2.3.0/24", "metadata": {}}, "workloads[0]", "exactly one"),
        ({"ip": "1.2.3.4"}, "workloads[0].metadata", "mapping"),
        ({"ip": "1.2.3.4", "metadata": {}, "extra": 1}, "workloads[0]", "unknown field"),
    ],
)
def test_bad_entries(entry: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        WorkloadRegistry.from_entries([entry])
    assert info.value.field == field
    assert message in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        WorkloadRegistry.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text("workloads: [")
    with pytest.raises(ConfigError, match="invalid YAML"):
        WorkloadRegistry.from_file(bad)
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3")
    with pytest.raises(ConfigError, match="list of workloads"):
        WorkloadRegistry.from_file(scalar)
