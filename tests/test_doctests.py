"""Every docstring example in the package runs, compiled modules and their stubs included.

``doctest``'s own finder skips what Cython compiles (its functions are not Python
functions), so the docstrings are collected here: the module's, and those of every class,
function, method and property it defines. A compiled module's ``.pyi`` stub holds the
documented API, so its docstrings run too, against the compiled module. An example that
cannot fail (``... if False else ...``) is refused.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import meshstats

COMPILED = {"_store_c", "_peer_exchange_c", "_requests_c", "_peer_cache_c"}
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(meshstats.__path__, "meshstats.")
    # __main__ runs the command when imported; its docstring has no examples.
    if info.name.rsplit(".", 1)[-1] not in COMPILED | {"__main__"}
) + sorted(f"meshstats.{name}" for name in COMPILED)


def _docstrings(module: ModuleType) -> list[tuple[str, str]]:
    """(name, docstring) of the module and of everything it defines, members included."""
    found: list[tuple[str, str]] = []
    seen: set[int] = set()

    def add(name: str, obj: object) -> None:
        doc = getattr(obj, "__doc__", None)
        if isinstance(doc, str) and id(obj) not in seen:
            seen.add(id(obj))
            found.append((name, doc))

    add(module.__name__, module)
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            add(f"{module.__name__}.{name}", obj)
            for member, value in vars(obj).items():
                target = value.fget if isinstance(value, property) else value
                if isinstance(value, (staticmethod, classmethod)):
                    target = value.__func__
                if callable(target) or inspect.isdatadescriptor(value):
                    add(f"{module.__name__}.{name}.{member}", target)
        elif callable(obj):
            add(f"{module.__name__}.{name}", obj)
    stub = Path(module.__file__ or "").with_suffix("").with_suffix(".pyi")
    stub = stub.with_name(module.__name__.rsplit(".", 1)[-1] + ".pyi")
    if stub.exists():  # the compiled module's documented API
        tree = ast.parse(stub.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    found.append((f"{stub.name}:{getattr(node, 'name', '<module>')}", doc))
    return found


def _params() -> list[object]:
    marks = {f"meshstats.{name}": pytest.mark.c_extension for name in COMPILED}
    return [pytest.param(m, marks=marks[m]) if m in marks else m for m in MODULES]


@pytest.mark.timing  # some examples start servers and a demo mesh on loopback
@pytest.mark.parametrize("name", _params())
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for where, doc in _docstrings(module):
        test = parser.get_doctest(doc, dict(vars(module)), where, module.__file__, 0)
        for example in test.examples:
            assert "if False" not in example.source, f"{where}: a vacuous example"
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_the_compiled_modules_have_examples_to_run() -> None:
    # The stubs and the .pyx docstrings are where they live; the pure twins have theirs.
    for name in sorted(COMPILED):
        stub = Path(meshstats.__file__).parent / f"{name}.pyi"
        pyx = stub.with_suffix(".pyx")
        text = stub.read_text() + (pyx.read_text() if pyx.exists() else "")
        assert text.count(">>> ") >= 1, name
