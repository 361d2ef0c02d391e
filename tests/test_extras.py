"""The integrations are optional extras: the base package imports none of their frameworks,
and an integration whose framework is missing says which extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

FRAMEWORKS = ("httpx", "aiohttp", "grpc", "starlette", "flask", "uvicorn", "gunicorn")


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_base_package_imports_no_framework() -> None:
    done = run(
        "import sys, meshstats, meshstats.asgi, meshstats.wsgi\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["httpx", "aiohttp", "grpc"])
def test_a_missing_framework_names_its_extra(module: str) -> None:
    # sys.modules[name] = None makes `import name` raise ImportError, as if not installed.
    done = run(
        f"import sys; sys.modules[{module!r}] = None\n"
        "from meshstats.errors import MissingExtraError\n"
        "try:\n"
        f"    import meshstats.{module}\n"
        "except MissingExtraError as exc:\n"
        "    print(type(exc).__mro__[1].__name__, isinstance(exc, ImportError), exc.extra, exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"MeshstatsError True {module} meshstats.{module} needs the {module!r} package: "
        f"pip install 'meshstats[{module}]'"
    )
