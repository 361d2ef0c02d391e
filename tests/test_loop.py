"""The event-loop switch (``meshstats._loop``): uvloop when installed, the env var overrides."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from proxy_support import TEST_LOOP_ENV, run

from meshstats import _loop
from meshstats.errors import ConfigError

SRC = str(Path(__file__).resolve().parent.parent / "src")

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
needs_uvloop = pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")


def test_asyncio_is_forced_by_the_env_var() -> None:
    assert _loop.choose({_loop.ENV: "asyncio"}) == "asyncio"
    assert _loop.choose({_loop.ENV: " AsyncIO "}) == "asyncio"


def test_auto_picks_uvloop_exactly_when_it_imports() -> None:
    expected = "uvloop" if HAS_UVLOOP else "asyncio"
    assert _loop.choose({}) == expected
    assert _loop.choose({_loop.ENV: ""}) == expected
    assert _loop.choose({_loop.ENV: "auto"}) == expected


def test_an_unknown_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=_loop.ENV) as info:
        _loop.choose({_loop.ENV: "trio"})
    assert isinstance(info.value, ValueError)


def test_forcing_a_missing_uvloop_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert _loop.choose({}) == "asyncio"
    with pytest.raises(ConfigError, match=r"pip install 'meshstats\[uvloop\]'"):
        _loop.choose({_loop.ENV: "uvloop"})


@needs_uvloop
def test_run_uses_the_named_loop() -> None:
    async def kind() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert _loop.run(kind(), "uvloop") == "uvloop"
    assert _loop.run(kind(), "asyncio") == "asyncio"


def test_proxy_support_runs_on_the_requested_loop() -> None:
    async def kind() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert run(kind()) == os.environ.get(TEST_LOOP_ENV, "asyncio")


def test_sidecar_cli_refuses_an_unknown_loop(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshstats", "sidecar", "--config", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": SRC, _loop.ENV: "trio"},
    )
    assert result.returncode == 1
    assert "MESHSTATS_EVENT_LOOP: expected auto, asyncio or uvloop, got 'trio'" in result.stderr
