"""Every test that touches compiled code runs against both backends.

Use the ``backend`` fixture: it is parametrized over ``c`` (the Cython modules) and
``py`` (the pure-Python twins) and gives the modules of that backend::

    def test_inc(backend):
        store = backend.store.Store()

The ``c`` cases carry the ``c_extension`` marker. They are deselected (not skipped) when
``MESHSTATS_NO_EXTENSIONS=1`` is set or ``--no-c-extensions`` is given; otherwise a missing
compiled module is an error, never a silent skip.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import pytest

from meshstats._backend import extensions_disabled


@dataclass(frozen=True)
class Backend:
    name: str
    store: ModuleType
    peer_exchange: ModuleType
    requests: ModuleType
    peer_cache: ModuleType
    h1_head: ModuleType
    h1_conn: ModuleType
    h2_conn: ModuleType

    def __str__(self) -> str:
        return self.name


def _load(name: str) -> Backend:
    suffix = "_c" if name == "c" else "_py"
    return Backend(
        name=name,
        store=importlib.import_module(f"meshstats._store{suffix}"),
        peer_exchange=importlib.import_module(f"meshstats._peer_exchange{suffix}"),
        requests=importlib.import_module(f"meshstats._requests{suffix}"),
        peer_cache=importlib.import_module(f"meshstats._peer_cache{suffix}"),
        h1_head=importlib.import_module(f"meshstats._h1_head{suffix}"),
        h1_conn=importlib.import_module(f"meshstats._h1_conn{suffix}"),
        h2_conn=importlib.import_module(f"meshstats.proxy._h2_conn{suffix}"),
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        help="run only the pure-Python backend",
    )
    parser.addoption(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default=None,
        help="the loop the sidecar tests run on (default: asyncio, or MESHSTATS_TEST_EVENT_LOOP)",
    )


def pytest_configure(config: pytest.Config) -> None:
    loop = config.getoption("--event-loop")
    if loop is not None:
        # proxy_support.run() reads the first; sidecars the tests start as processes, the second.
        os.environ["MESHSTATS_TEST_EVENT_LOOP"] = loop
        os.environ["MESHSTATS_EVENT_LOOP"] = loop


def pytest_report_header(config: pytest.Config) -> str:
    loop = os.environ.get("MESHSTATS_TEST_EVENT_LOOP", "asyncio")
    return f"event loop of proxy_support.run(): {loop}"


def _c_disabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--no-c-extensions")) or extensions_disabled()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _c_disabled(config):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (drop if item.get_closest_marker("c_extension") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(
    scope="session",
    params=[pytest.param("c", marks=pytest.mark.c_extension), "py"],
)
def backend(request: pytest.FixtureRequest) -> Backend:
    return _load(request.param)


@pytest.fixture(scope="session")
def c_backend() -> Backend:
    """The compiled backend alone, for differential tests (mark them ``c_extension``)."""
    return _load("c")


@pytest.fixture(scope="session")
def py_backend() -> Backend:
    return _load("py")


POLL_DEADLINE = 60.0  # generous: only a broken component takes this long; nothing asserts speed


def wait_until(condition: Callable[[], bool], what: str, timeout: float = POLL_DEADLINE) -> None:
    """Poll ``condition`` until it holds (a thread or a server finishing something the test
    cannot be told about by an event); fail after ``timeout``. Never a timing assertion: a
    loaded machine only makes it poll longer."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"still not {what} after {timeout} s"
        time.sleep(0.01)
