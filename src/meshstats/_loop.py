"""Which asyncio event loop ``meshstats sidecar`` and ``meshstats demo`` run on.

uvloop (``pip install 'meshstats[uvloop]'``) is used when it is importable; the
``MESHSTATS_EVENT_LOOP`` environment variable overrides that: ``asyncio`` forces the
standard loop, ``uvloop`` forces uvloop (an error naming the extra if it is missing),
``auto`` (or unset, or empty) is the default. Worker processes inherit the variable, so
a sidecar with ``workers: N`` runs every worker on the same loop.

>>> import asyncio
>>> choose({"MESHSTATS_EVENT_LOOP": "asyncio"})
'asyncio'
>>> async def answer() -> int:
...     return 42
>>> run(answer(), "asyncio")
42
>>> choose({"MESHSTATS_EVENT_LOOP": "trio"})
Traceback (most recent call last):
...
meshstats.errors.ConfigError: MESHSTATS_EVENT_LOOP: expected auto, asyncio or uvloop, got 'trio'
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["ENV", "choose", "loop_factory", "run"]

ENV = "MESHSTATS_EVENT_LOOP"
NAMES = ("auto", "asyncio", "uvloop")
T = TypeVar("T")


def _has_uvloop() -> bool:
    # uvloop has no Windows build; an import that fails for any reason means "not here".
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def choose(environ: Mapping[str, str] | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop the environment asks for (see the module).

    Raises :class:`~meshstats.errors.ConfigError` for an unknown value, and for ``uvloop``
    when it is not installed (the message names the extra).
    """
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower() or "auto"
    if value not in NAMES:
        raise ConfigError(f"expected auto, asyncio or uvloop, got {value!r}", ENV)
    if value == "auto":
        return "uvloop" if _has_uvloop() else "asyncio"
    if value == "uvloop" and not _has_uvloop():
        raise ConfigError("uvloop is not installed: pip install 'meshstats[uvloop]'", ENV)
    return value


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A callable making a new loop of that kind (``"asyncio"`` or ``"uvloop"``)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(coro: Coroutine[Any, Any, T], name: str | None = None) -> T:
    """``asyncio.run(coro)`` on the loop ``name`` (default: :func:`choose`)."""
    name = choose() if name is None else name
    if name == "asyncio":
        return asyncio.run(coro)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
            return runner.run(coro)
    # 3.10 has no Runner: a policy for the length of the call does the same.
    import uvloop

    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        return asyncio.run(coro)
    finally:
        asyncio.set_event_loop_policy(previous)
