"""The e2e harness itself: when Prometheus cannot start or a target stays down, the failure
says why (with Prometheus' own log) and no process is left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_server import PrometheusError, PrometheusServer, Target, free_port

pytestmark = pytest.mark.e2e


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # signal 0 only checks existence; stop() has reaped the process


def test_bad_config_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    prom = PrometheusServer({"x": "127.0.0.1:9"}, tmp_path, scrape_interval="bogus")
    with pytest.raises(PrometheusError) as info:
        prom.start()
    message = str(info.value)
    assert "did not become ready" in message and "exited with" in message
    # Prometheus' own words about the config it was given:
    assert "prometheus log tail" in message and "bogus" in message
    assert prom.pid is not None
    assert_gone(prom.pid)


def test_target_never_up_names_what_was_awaited(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    # The start may take its time (a loaded machine), then the targets get 1.5 s of their
    # own: usually before Prometheus applies its targets (~5 s), so none is listed yet, but
    # a slow test may see the target listed and down. Either way the message says so.
    prom = PrometheusServer(
        [Target("nobody-home", f"127.0.0.1:{port}")], tmp_path, targets_timeout=1.5
    )
    with pytest.raises(PrometheusError) as info:
        prom.start()
    message = str(info.value)
    assert "targets not all up within 1.5 s" in message
    assert "want ['nobody-home']" in message
    assert "no active targets" in message or "nobody-home=" in message
    assert "Server is ready to receive web requests" in message  # from Prometheus' log
    assert prom.pid is not None
    assert_gone(prom.pid)


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="targets: at least one"):
        PrometheusServer({}, tmp_path)
    with pytest.raises(ValueError, match="job names must be unique"):
        PrometheusServer([Target("a", "127.0.0.1:1"), Target("a", "127.0.0.1:2")], tmp_path)
    with pytest.raises(PrometheusError, match="not found on PATH"):
        PrometheusServer({"a": "127.0.0.1:1"}, tmp_path, binary="no-such-prometheus")
