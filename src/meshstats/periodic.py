"""Periodic work on one daemon thread, with a schedule that a test can drive by hand.

>>> flushed = []
>>> ticker = Periodic([(0.5, lambda: flushed.append(1))])
>>> ticker.start()
>>> ticker.stop()   # joins the thread; a task is never cut off half way

The engine reports TCP byte deltas and expires idle series this way (Istio's
``tcp_reporting_duration`` and metric expiry). Which task is due when is decided by
:meth:`Periodic.run_due` against an injectable clock, so the schedule is tested with a fake
clock and the thread itself only waits: tests never race a real timer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

__all__ = ["Periodic"]

_log = logging.getLogger("meshstats")

Task = Callable[[], object]


class Periodic:
    """Run each ``task`` every ``period`` seconds (periods of 0 or less are left out).

    Each task first runs one period after :meth:`start` (or after construction, when the
    schedule is driven by hand), then one period after its previous run ended, so a slow run
    delays that task's next one instead of queueing runs behind it. A task that raises is
    logged on the ``meshstats`` logger and keeps its schedule: one bad report must not end
    all later ones.
    """

    def __init__(
        self,
        tasks: Sequence[tuple[float, Task]],
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "meshstats-periodic",
    ) -> None:
        self._tasks = [(float(period), task) for period, task in tasks if period > 0]
        self._clock = clock
        self._name = name
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Set each time a task has run (cleared by whoever waits on it): lets a caller wait
        #: for the thread's next report instead of sleeping on the clock.
        self.ran = threading.Event()
        self._due = self._first_due()

    def __bool__(self) -> bool:
        """False when no task has a positive period: there is nothing to run."""
        return bool(self._tasks)

    def _first_due(self) -> list[float]:
        now = self._clock()
        return [now + period for period, _ in self._tasks]

    def run_due(self) -> float:
        """Run every task due by the clock's current time; return the seconds until the next.

        This is the whole schedule: the thread calls it in a loop, and tests call it after
        moving a fake clock.

        >>> now = [0.0]
        >>> ran = []
        >>> ticker = Periodic([(1.0, lambda: ran.append("a"))], clock=lambda: now[0])
        >>> ticker.run_due(), ran
        (1.0, [])
        >>> now[0] = 1.0
        >>> ticker.run_due(), ran
        (1.0, ['a'])
        """
        for k, (period, task) in enumerate(self._tasks):
            if self._clock() >= self._due[k]:
                try:
                    task()
                except Exception:
                    _log.exception("periodic task %r failed; it runs again in %g s", task, period)
                self._due[k] = self._clock() + period
                self.ran.set()
        if not self._due:
            return float("inf")
        return max(0.0, min(self._due) - self._clock())

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the thread (no-op when already running or when there is nothing to run)."""
        if self._thread is not None or not self._tasks:
            return
        self._stop.clear()
        self._due = self._first_due()
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it; a task in progress finishes first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        delay = max(0.0, min(self._due) - self._clock())
        while not self._stop.wait(delay):
            delay = self.run_due()
