"""Sidecar configuration: parsing, errors naming the field, and ``meshstats sidecar``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from proxy_support import make_certs

from meshstats import _loop
from meshstats.errors import ConfigError
from meshstats.proxy import Sidecar, SidecarConfig

pytestmark = pytest.mark.timing

NODE = {"WORKLOAD_NAME": "reviews-v2", "NAMESPACE": "default"}


def _config(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "node": NODE,
        "inbound": {"port": 0, "app": "127.0.0.1:9080", "protocol": "http"},
        "outbound": [{"port": 0, "upstream": ["127.0.0.1", 16006], "service_host": "a.b.svc"}],
    }
    data.update(over)
    return data


def test_parses_addresses_and_defaults() -> None:
    cfg = SidecarConfig.from_mapping(_config())
    assert cfg.inbound is not None
    assert cfg.inbound.app == ("127.0.0.1", 9080)
    assert cfg.inbound.mtls == "permissive"
    assert cfg.outbound[0].upstream == ("127.0.0.1", 16006)
    assert cfg.outbound[0].protocol == "tcp"
    assert cfg.exchange_timeout == 5.0
    assert cfg.tls_session_resumption is True  # Envoy resumes between sidecars by default
    assert (
        SidecarConfig.from_mapping(_config(tls_session_resumption=False)).tls_session_resumption
        is False
    )
    # Istio's ENABLE_100_CONTINUE_HEADERS (on since 1.23); off is Envoy's own default.
    assert cfg.proxy_100_continue is True
    assert SidecarConfig.from_mapping(_config(proxy_100_continue=False)).proxy_100_continue is False
    metadata = cfg.outbound[0].cluster_metadata()
    assert metadata is not None
    md = metadata["filter_metadata"]["istio"]["services"][0]
    assert md == {"host": "a.b.svc", "name": "a", "namespace": "b"}


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"outbound": [{"port": 70000, "upstream": 1, "service_host": "x"}]}, "outbound[0].port"),
        (
            {"outbound": [{"port": 1, "upstream": "nope", "service_host": "x"}]},
            "outbound[0].upstream",
        ),
        (
            {"outbound": [{"port": 1, "service_host": "x", "protocol": "udp"}]},
            "outbound[0].protocol",
        ),
        ({"outbound": [{"port": 1}]}, "outbound[0].service_host"),
        ({"inbound": {"app": 1, "mtls": "maybe"}}, "inbound.mtls"),
        ({"inbound": {"port": 1}}, "inbound.app"),
        ({"inbound": {"app": 1, "colour": "red"}}, "inbound.colour"),
        ({"exchange_timeout": 0}, "exchange_timeout"),
        ({"admin_port": "15090"}, "admin_port"),
        ({"admin_header_timeout": 0}, "admin_header_timeout"),
        ({"admin_write_timeout": "30"}, "admin_write_timeout"),
        ({"admin_idle_timeout": -1}, "admin_idle_timeout"),
        ({"admin_max_connections": 0}, "admin_max_connections"),
        ({"admin_max_connections": 2.5}, "admin_max_connections"),
        ({"admin_max_connections": True}, "admin_max_connections"),
        ({"admin_render_budget": 0}, "admin_render_budget"),
        ({"admin_render_budget": 2}, "admin_render_budget"),
        ({"node": None}, "node"),
        ({"surprise": 1}, "surprise"),
        ({"tls_session_resumption": "yes"}, "tls_session_resumption"),
        ({"tls_session_resumption": 1}, "tls_session_resumption"),
        ({"proxy_100_continue": "no"}, "proxy_100_continue"),
    ],
)
def test_errors_name_the_field(override: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SidecarConfig.from_mapping(_config(**override))
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    if field == "tls_session_resumption":
        assert "must be true or false" in str(info.value)


def test_file_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "sidecar.yaml"
    path.write_text("node: node.json\ncert_dir: certs\nadmin_port: null\n")
    cfg = SidecarConfig.from_file(path)
    assert cfg.node == str(tmp_path / "sub" / "node.json")
    assert cfg.cert_dir == str(tmp_path / "sub" / "certs")
    assert cfg.admin_port is None


def test_unparsable_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON in a sidecar config"):
        SidecarConfig.from_file(path)


def _cli(config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "meshstats.cli.sidecar", "--config", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def test_cli_runs_a_sidecar_until_terminated(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    config = tmp_path / "sidecar.json"
    config.write_text(
        json.dumps(_config(cert_dir=str(certs.server.relative_to(tmp_path)), admin_port=0))
    )
    with _cli(config, "--duration", "60") as proc:  # closes the pipes at the end
        _drive(proc)


def _drive(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("principal"):
            line = proc.stdout.readline()
            assert line, f"sidecar exited early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line.strip())
        assert lines[0].startswith("inbound 127.0.0.1:") and lines[0].endswith("(mtls permissive)")
        assert lines[1].startswith("outbound 127.0.0.1:")
        admin = next(line.split()[1] for line in lines if line.startswith("admin"))
        with urllib.request.urlopen(admin, timeout=10) as resp:
            assert b"istio_build" in resp.read()
        assert lines[-1] == "principal spiffe://cluster.local/ns/default/sa/reviews"
        assert lines[-2] == f"event loop {_loop.choose()}"  # uvloop when installed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_bad_config_exits_1_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.json"
    config.write_text(json.dumps(_config(inbound={"app": 1, "mtls": "maybe"})))
    with _cli(config) as proc:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "inbound.mtls" in err


FULL_NODE = {
    "NAME": "reviews-v2-5d8c7b9f4-x2x7q",
    "NAMESPACE": "default",
    "WORKLOAD_NAME": "reviews-v2",
    "CLUSTER_ID": "Kubernetes",
    "MESH_ID": "cluster.local",
    "ISTIO_VERSION": "1.24.0",
    "SERVICE_ACCOUNT": "bookinfo-reviews",
    "INSTANCE_IPS": "10.0.0.7,fe80::1",
    "PLATFORM_METADATA": {"gcp_project": "secret-project"},
    "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/reviews-v2",
    "REGION": "eu-west1",
    "LABELS": {
        "app.kubernetes.io/name": "reviews",
        "version": "v2",
        "service.istio.io/canonical-name": "reviews",
        "service.istio.io/canonical-revision": "v2",
        "pod-template-hash": "5d8c7b9f4",
        "role": "backend",
    },
}
REDUCED = {
    "NAME": "reviews-v2-5d8c7b9f4-x2x7q",
    "NAMESPACE": "default",
    "WORKLOAD_NAME": "reviews-v2",
    "CLUSTER_ID": "Kubernetes",
    "LABELS": {
        "service.istio.io/canonical-name": "reviews",
        "service.istio.io/canonical-revision": "v2",
        "app": "reviews",  # resolved: app.kubernetes.io/name first
        "version": "v2",
    },
    "OWNER": "kubernetes://apis/apps/v1/namespaces/default/deployments/reviews-v2",
    "REGION": "eu-west1",
}


@pytest.mark.parametrize("additional", [[], ["role", "absent"]])
def test_the_exchange_carries_istios_reduced_node(tmp_path: Path, additional: list[str]) -> None:
    """A sidecar sends what today's Istio sends: no IPs, platform metadata, service account
    or mesh id; LABELS cut to the canonical ones, app, version and additional_labels."""
    from meshstats import decode_peer_header, decode_peer_prefix
    from meshstats.proxy import Sidecar

    certs = make_certs(tmp_path)
    cfg = SidecarConfig.from_mapping(
        {"node": FULL_NODE, "cert_dir": str(certs.server), "additional_labels": additional}
    )
    sidecar = Sidecar(cfg)
    expected = json.loads(json.dumps(REDUCED))
    if additional:
        expected["LABELS"]["role"] = "backend"
    assert decode_peer_header(sidecar.mx_headers[0][1].decode()) == expected
    frame = decode_peer_prefix(sidecar.prefix)
    assert frame.metadata == expected and frame.metadata_id == sidecar.node_id
    # The local labels still come from the whole node.
    assert sidecar.engine.local.service_account == "bookinfo-reviews"


def test_additional_labels_must_be_names() -> None:
    with pytest.raises(ConfigError, match="additional_labels"):
        SidecarConfig.from_mapping(_config(additional_labels="role"))


# -- the admin port's limits (issue 10.6) -----------------------------------------------------


def test_admin_limits_default_and_parse() -> None:
    cfg = SidecarConfig.from_mapping(_config())
    assert (
        cfg.admin_header_timeout,
        cfg.admin_write_timeout,
        cfg.admin_idle_timeout,
        cfg.admin_max_connections,
        cfg.admin_render_budget,
    ) == (10.0, 30.0, 120.0, 256, 0.25)
    cfg = SidecarConfig.from_mapping(
        _config(
            admin_header_timeout=1,
            admin_write_timeout=2.5,
            admin_idle_timeout=3,
            admin_max_connections=4,
            admin_render_budget=1,
        )
    )
    assert (
        cfg.admin_header_timeout,
        cfg.admin_write_timeout,
        cfg.admin_idle_timeout,
        cfg.admin_max_connections,
        cfg.admin_render_budget,
    ) == (1.0, 2.5, 3.0, 4, 1.0)
    with pytest.raises(ConfigError, match=r"admin_max_connections: must be an integer >= 1"):
        SidecarConfig.from_mapping(_config(admin_max_connections=-3))


def _admin_closes_a_stalled_connection(config: SidecarConfig, scrape: bool) -> bytes:
    """Open a silent admin connection (then scrape, if asked); what it read until closed."""

    async def main() -> bytes:
        async with Sidecar(config) as sidecar:
            host, port = sidecar.admin_url.rsplit("/", 1)[1].split(":")
            return await asyncio.to_thread(_stall, host, int(port), sidecar.admin_url, scrape)

    return asyncio.run(main())


def _stall(host: str, port: int, url: str, scrape: bool) -> bytes:
    with socket.create_connection((host, port), timeout=60) as sock:
        if scrape:
            with urllib.request.urlopen(url + "/stats/prometheus", timeout=60) as resp:
                assert b"istio_build" in resp.read()
        got = b""
        while chunk := sock.recv(65536):  # a timeout here (60 s) fails the test
            got += chunk
        return got


def test_sidecar_admin_closes_a_stalled_connection() -> None:
    config = SidecarConfig(node=NODE, admin_header_timeout=0.3)
    assert _admin_closes_a_stalled_connection(config, scrape=False) == b""


def test_sidecar_admin_connection_limit_makes_room_for_a_scrape() -> None:
    # The header timeout is long: only the limit can close the silent connection.
    config = SidecarConfig(node=NODE, admin_header_timeout=600, admin_max_connections=1)
    assert _admin_closes_a_stalled_connection(config, scrape=True) == b""


def test_workers_and_store() -> None:
    cfg = SidecarConfig.from_mapping(_config())
    assert cfg.workers == 1 and cfg.store is None
    with pytest.raises(ConfigError, match="workers: must be an integer >= 1"):
        SidecarConfig.from_mapping(_config(workers=0))
    with pytest.raises(ConfigError, match=r"inbound.port: must be a fixed port \(not 0\)"):
        SidecarConfig.from_mapping(_config(workers=2))
    fixed = _config(
        workers=4,
        inbound={"port": 15006, "app": "127.0.0.1:9080", "protocol": "http"},
        outbound=[{"port": 15001, "upstream": ["127.0.0.1", 16006], "service_host": "a.b.svc"}],
    )
    assert SidecarConfig.from_mapping(fixed).workers == 4
    assert SidecarConfig.from_mapping(_config(store="ratings.store")).store == "ratings.store"
    relative = SidecarConfig.from_mapping(_config(store="run/r.store"), base=Path("/etc/mesh"))
    assert relative.store == "/etc/mesh/run/r.store"
    with pytest.raises(ConfigError, match="store: must be a file path or name"):
        SidecarConfig.from_mapping(_config(store=""))
