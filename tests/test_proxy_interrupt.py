"""``proxy.interrupt.Interruptible``: a wait cut short by a timer or an event, no task per wait.

The relay waits for its upstream's answer in one of these while the downstream's protocol
may fire it (the client went away); a cancellation it did not cause (the sidecar stopping)
must pass through untouched, and the task must stay usable after an interruption. Nothing
here waits on a clock: the timeouts are 0 s (the timer fires on the loop's next turn) and
the events are scheduled with ``call_soon``; a :class:`Deadline`'s rules are checked on a
clock and timers moved by hand.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any, cast

import pytest

from meshstats.proxy.interrupt import Deadline, Interrupted, Interruptible


async def _never() -> None:
    await asyncio.Event().wait()


def test_a_timeout_interrupts_the_wait() -> None:
    async def main() -> str:
        try:
            with Interruptible(0):
                await _never()
        except Interrupted as why:
            return why.reason
        return "finished"

    assert asyncio.run(main()) == "timeout"


def test_an_event_interrupts_the_wait_with_its_reason_and_the_first_reason_wins() -> None:
    async def main() -> str:
        try:
            with Interruptible() as wait:
                loop = asyncio.get_running_loop()
                loop.call_soon(wait.fire, "eof")
                loop.call_soon(wait.fire, "lost")
                await _never()
        except Interrupted as why:
            return why.reason
        return "finished"

    assert asyncio.run(main()) == "eof"


def test_a_wait_that_ends_first_is_not_interrupted_later() -> None:
    async def main() -> list[str]:
        seen = []
        with Interruptible(0) as wait:
            await asyncio.sleep(0)  # the 0 s timer has not run yet: the block ends first
        wait.fire("late")  # after the block: nothing to interrupt
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the timer's turn, had it not been cancelled
        seen.append("usable")
        return seen

    assert asyncio.run(main()) == ["usable"]


def test_a_cancellation_from_outside_passes_through() -> None:
    async def victim() -> None:
        with Interruptible(3600):
            await _never()

    async def main() -> str:
        task = asyncio.ensure_future(victim())
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    assert asyncio.run(main()) == "cancelled"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.uncancel() is 3.11+")
def test_an_outside_cancellation_at_the_same_time_wins() -> None:
    async def both() -> None:
        with Interruptible() as wait:
            me = asyncio.current_task()
            assert me is not None

            def at_once() -> None:
                wait.fire("eof")
                me.cancel()

            asyncio.get_running_loop().call_soon(at_once)
            await _never()

    async def main() -> str:
        try:
            await asyncio.ensure_future(both())
        except asyncio.CancelledError:
            return "cancelled"
        except Interrupted:
            return "interrupted"
        return "finished"

    assert asyncio.run(main()) == "cancelled"


def test_the_task_stays_usable_after_an_interruption() -> None:
    async def main() -> int:
        interrupted = 0
        for _ in range(3):
            try:
                with Interruptible(0):
                    await _never()
            except Interrupted:
                interrupted += 1
        await asyncio.sleep(0)  # no cancellation left pending on the task
        return interrupted

    assert asyncio.run(main()) == 3


def test_outside_a_task_it_says_so() -> None:
    with pytest.raises(RuntimeError):  # no running loop, no task
        with Interruptible():
            pass


# -- Deadline: one timer for a task's successive waits ------------------------------------------


class _Handle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self._when, self.callback, self.cancelled = when, callback, False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class _Clock:
    """A loop's time and timers, moved by hand: the handles are called by the test."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.handles: list[_Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Handle:
        self.handles.append(_Handle(when, callback))
        return self.handles[-1]

    def armed(self) -> list[float]:
        return [h.when() for h in self.handles if not h.cancelled]

    def fire(self) -> None:
        """The armed handle's time has come: the loop calls it (and forgets it)."""
        (handle,) = [h for h in self.handles if not h.cancelled]
        handle.cancelled = True
        self.now = max(self.now, handle.when())
        handle.callback()


class _Wait:
    """What a Deadline calls: an Interruptible's ``fire``."""

    def __init__(self) -> None:
        self.fired: list[str] = []

    def fire(self, reason: str) -> None:
        self.fired.append(reason)


def _deadline() -> tuple[Any, _Clock]:
    """A Deadline on a clock moved by hand (typed Any: it is given stand-ins)."""
    clock = _Clock()
    deadline: Any = Deadline(cast(asyncio.AbstractEventLoop, clock))
    return deadline, clock


def test_a_deadline_keeps_its_timer_from_wait_to_wait() -> None:
    deadline, clock = _deadline()
    first, second = _Wait(), _Wait()
    deadline.watch(first, 300)
    deadline.unwatch(first)
    clock.now += 1
    deadline.watch(second, 3600)  # later than the armed handle: kept
    assert clock.armed() == [1300.0] and len(clock.handles) == 1
    clock.fire()  # at the first wait's deadline: the second is not due
    assert second.fired == [] and clock.armed() == [4601.0]  # armed again for the second
    deadline.unwatch(second)
    deadline.watch(first, 5)  # sooner than the armed handle: moved
    assert clock.armed() == [1305.0]
    clock.fire()
    assert first.fired == ["timeout"] and second.fired == []


def test_a_deadline_with_no_wait_under_way_lapses_and_the_next_wait_arms_it() -> None:
    deadline, clock = _deadline()
    wait, other = _Wait(), _Wait()
    deadline.watch(wait, 10)
    deadline.unwatch(other)  # not the wait under way: no effect
    clock.fire()
    assert wait.fired == ["timeout"]
    deadline.watch(other, 10)
    deadline.unwatch(other)
    clock.fire()
    assert other.fired == [] and clock.armed() == []  # lapsed, not armed again
    deadline.watch(other, 10)
    assert clock.armed() == [1030.0]
    deadline.close()
    assert clock.armed() == []


def test_waits_on_a_deadline_are_interrupted_on_the_real_loop() -> None:
    """Each wait gets its own timeout through the shared timer; a wait that ends in time
    leaves nothing that interrupts the next one."""

    async def main() -> list[str]:
        deadline = Deadline(asyncio.get_running_loop())
        outcomes = []
        for timeout in (3600.0, 0.0, 3600.0, 0.0):
            try:
                with Interruptible(timeout, deadline) as wait:
                    if timeout:  # ends at once, by an event
                        asyncio.get_running_loop().call_soon(wait.fire, "data")
                    await _never()
            except Interrupted as why:
                outcomes.append(why.reason)
        deadline.close()
        return outcomes

    assert asyncio.run(main()) == ["data", "timeout", "data", "timeout"]


# -- the HTTP/2 relay's timeouts of a connection's streams, on one timer ----------------------


def _stream_timers() -> tuple[Any, _Clock]:
    """An HTTP/2 connection's timer for its streams, on a clock moved by hand."""
    clock = _Clock()
    timers: Any = Deadline(cast(asyncio.AbstractEventLoop, clock))
    return timers, clock


def _add(timers: Any, wait: _Wait, ex: Any, idle: float | None, deadline: float | None) -> None:
    """Watch a stream as the HTTP/2 relay does."""
    from meshstats.proxy.h2 import _watch_stream

    _watch_stream(timers, cast(Interruptible, wait), ex, idle, deadline)


def _stream(clock: _Clock) -> Any:
    from meshstats.proxy.h2 import _Exchange

    return _Exchange(started=clock.now, last=clock.now)


def test_streams_share_one_timer_until_one_is_due() -> None:
    timers, clock = _stream_timers()
    first, second, third = _Wait(), _Wait(), _Wait()
    a, b, c = _stream(clock), _stream(clock), _stream(clock)
    _add(timers, first, a, 300.0, None)
    clock.now += 10
    b.started = b.last = clock.now
    _add(timers, second, b, 300.0, None)  # due later than the armed handle: kept
    assert clock.armed() == [1300.0] and len(clock.handles) == 1
    _add(timers, third, c, None, clock.now + 30)  # a request deadline sooner: moved
    assert clock.armed() == [1040.0]
    clock.fire()
    assert third.fired == ["UT"] and first.fired == second.fired == []
    assert clock.armed() == [1300.0]  # the soonest of the others
    a.last = clock.now  # the first stream moved: its idle clock starts again
    clock.fire()
    assert first.fired == [] and second.fired == []
    assert clock.armed() == [1310.0]
    clock.fire()
    assert second.fired == ["SI"] and first.fired == []
    assert clock.armed() == [1340.0]
    timers.unwatch(first)  # its relay ended: nothing left to watch
    clock.fire()
    assert first.fired == [] and clock.armed() == []  # lapsed
    assert not timers.armed


def test_a_stream_that_responded_is_past_its_request_deadline() -> None:
    """``UT`` holds until the response began; then only the idle timeout does."""
    timers, clock = _stream_timers()
    wait, ex = _Wait(), _stream(clock)
    _add(timers, wait, ex, 60.0, clock.now + 15)
    assert clock.armed() == [1015.0]
    ex.responded = True
    ex.last = clock.now + 14
    clock.fire()
    assert wait.fired == [] and clock.armed() == [1074.0]
    clock.fire()
    assert wait.fired == ["SI"]


def test_stream_timers_close_with_their_connection() -> None:
    timers, clock = _stream_timers()
    wait = _Wait()
    _add(timers, wait, _stream(clock), 300.0, None)
    _add(timers, _Wait(), _stream(clock), None, None)  # no timeout: nothing watched
    assert timers.armed and len(clock.armed()) == 1
    timers.close()
    assert clock.armed() == [] and not timers.armed
    timers.unwatch(wait)  # (a relay ending after its connection: no effect)
