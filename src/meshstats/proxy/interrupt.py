"""Waiting with a deadline, or until something else happens, without a task per wait.

>>> import asyncio
>>> async def main() -> str:
...     try:
...         with Interruptible(timeout=0.01) as wait:
...             await asyncio.Event().wait()
...     except Interrupted as why:
...         return why.reason
...     return "done"
>>> asyncio.run(main())
'timeout'

``asyncio.wait_for`` runs the awaited coroutine in a task of its own, and watching two
things at once (an upstream's response and its downstream going away) took two tasks and an
``asyncio.wait``: about 30 µs of CPU per request on the standard loop, a tenth of what a
sidecar spent per request. An :class:`Interruptible` instead arms a timer handle and lets
event callbacks (:meth:`Interruptible.fire`) cancel the *current* task, then turns that
cancellation into :class:`Interrupted` with the reason. A cancellation it did not cause
(the sidecar stopping) passes through untouched.

The callbacks run on the event loop while the task is suspended, and they are disarmed on
leaving the block before anything else can run, so the cancellation always lands on an
``await`` inside the block (asyncio throws it in at the suspended ``await`` even when the
awaited future finished in the same loop iteration). On Python 3.10, which has no
``Task.uncancel()``, an outside cancellation that comes in the same loop turn as an
interruption is taken for the interruption.

A task that waits again and again (a keep-alive connection's relay: the next request, the
upstream's answer, a body's next bytes), or many tasks waiting at once (an HTTP/2
connection's streams), can give their blocks one :class:`Deadline`: its timer handle stays
armed from wait to wait and is moved only when a wait's deadline comes sooner, instead of a
handle armed and cancelled per wait (about 2.5 µs each on the standard loop, twice a
request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

__all__ = ["Check", "Deadline", "Interruptible", "Interrupted", "Waiter"]

#: What :meth:`Deadline.watch_until` asks when a wait's time comes: given the loop's time,
#: the reason to interrupt it with, or the time to look again.
Check = Callable[[float], "str | float"]


class Waiter(Protocol):
    """What a :class:`Deadline` times: anything told ``fire(reason)`` when its time comes
    (an :class:`Interruptible`, or a relay timing its own waits)."""

    def fire(self, reason: str) -> None: ...


class Interrupted(Exception):
    """The wait in an :class:`Interruptible` block was cut short; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Interruptible:
    """A block whose ``await`` ends with :class:`Interrupted` after ``timeout`` seconds
    (reason ``"timeout"``; None: no deadline) or as soon as :meth:`fire` is called.
    With a ``deadline``, the timeout is timed by it, and it is left when the block ends."""

    __slots__ = ("_task", "_timer", "reason", "_timeout", "_deadline")

    def __init__(self, timeout: float | None = None, deadline: Deadline | None = None) -> None:
        self._timeout = timeout
        self._deadline = deadline  # the task's own timer, if it has one (else a handle here)
        self._task: asyncio.Task[object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.reason: str | None = None

    def __enter__(self) -> Interruptible:
        deadline = self._deadline
        # (Given the loop, current_task() need not look it up: a getpid() call on 3.11.)
        task = asyncio.current_task(deadline.loop if deadline is not None else None)
        if task is None:
            raise RuntimeError("Interruptible needs a running task")
        self._task = task
        if self._timeout is not None:
            if deadline is not None:
                deadline.watch(self, self._timeout)
            else:
                self._timer = task.get_loop().call_later(self._timeout, self.fire, "timeout")
        return self

    def fire(self, reason: str) -> None:
        """End the block's wait with ``Interrupted(reason)`` (the first reason wins)."""
        if self.reason is None and self._task is not None:
            self.reason = reason
            self._task.cancel()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        elif self._deadline is not None:
            self._deadline.unwatch(self)
        if self.reason is None or task is None:
            return
        if kind is not None and issubclass(kind, asyncio.CancelledError):
            uncancel = getattr(task, "uncancel", None)  # 3.11+: take our cancel back
            if uncancel is not None and uncancel() > 0:
                return  # someone else cancelled the task too: theirs goes on
            raise Interrupted(self.reason) from None


class Deadline:
    """One timer handle for timed :class:`Interruptible` waits, each with its own time: the
    successive waits of one task (a keep-alive connection's relay) or the waits of many at
    once (the streams of an HTTP/2 connection).

    The handle is armed for the soonest wait and stays armed as waits come and go: a wait
    due later than the armed handle costs a dictionary entry, not a timer armed and
    cancelled (a handle pushed on the loop's heap, or a libuv timer made). When it fires,
    each wait whose time has come is interrupted and the handle is armed again for the
    soonest of the others; with none left it lapses, and the next wait arms it. A wait due
    sooner than the armed handle moves it. :meth:`close` cancels it: until then the loop
    holds this object (up to the longest timeout), so its owner closes it when it ends.
    """

    __slots__ = ("loop", "_handle", "_at", "_waits")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the handle fires
        self._waits: dict[Waiter, tuple[float, Check | None]] = {}

    def watch(self, wait: Waiter, timeout: float) -> None:
        """Interrupt ``wait`` (reason ``"timeout"``) ``timeout`` seconds from now, unless
        :meth:`unwatch` comes first."""
        self.watch_until(wait, self.loop.time() + timeout)

    def watch_until(self, wait: Waiter, at: float, check: Check | None = None) -> None:
        """Interrupt ``wait`` at loop time ``at`` (reason ``"timeout"``), unless :meth:`unwatch`
        comes first. Given ``check``, the reason is what ``check(now)`` returns then, or, when
        it returns a time instead, ``wait`` goes on and is looked at again at that time (a
        stream that moved meanwhile)."""
        self._waits[wait] = (at, check)
        if self._handle is None or at < self._at:
            self._arm(at)

    @property
    def armed(self) -> bool:
        """Its timer handle is armed (the loop holds it, and this object with it)."""
        return self._handle is not None

    def unwatch(self, wait: Waiter) -> None:
        self._waits.pop(wait, None)

    def close(self) -> None:
        self._waits.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = at
        self._handle = self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self.loop.time()
        soonest: float | None = None
        for wait, (at, check) in list(self._waits.items()):
            # uvloop keeps time in milliseconds: a handle may fire up to one early.
            due: str | float = at
            if now + 0.001 >= at:
                due = "timeout" if check is None else check(now)
            if isinstance(due, str):
                del self._waits[wait]
                wait.fire(due)
            else:
                self._waits[wait] = (due, check)
                soonest = due if soonest is None else min(soonest, due)
        if soonest is not None:
            self._arm(soonest)
