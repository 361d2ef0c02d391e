"""``proxy.interrupt.Interruptible``: a wait cut short by a timer or an event, no task per wait.

The relay waits for its upstream's answer in one of these while the downstream's protocol
may fire it (the client went away); a cancellation it did not cause (the sidecar stopping)
must pass through untouched, and the task must stay usable after an interruption. Nothing
here waits on a clock: the timeouts are 0 s (the timer fires on the loop's next turn) and
the events are scheduled with ``call_soon``.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from meshstats.proxy.interrupt import Interrupted, Interruptible


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
