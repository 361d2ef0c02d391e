"""The periodic-work schedule (``meshstats.periodic``), driven by a fake clock; one smoke
test of the real thread, bounded generously and waiting on an event, never on a sleep."""

from __future__ import annotations

import logging
import threading

import pytest

from meshstats.periodic import Periodic

pytestmark = pytest.mark.timing


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_each_task_runs_on_its_own_period() -> None:
    clock = FakeClock()
    ran: list[str] = []
    ticker = Periodic(
        [(1.0, lambda: ran.append("fast")), (2.5, lambda: ran.append("slow"))], clock=clock
    )
    assert bool(ticker)
    timeline = []
    for step in range(1, 11):  # 0.5 s steps up to 5 s
        clock.now = 50.0 + step * 0.5
        timeline.append((step * 0.5, ticker.run_due(), tuple(ran)))
        ran.clear()
    assert timeline == [
        (0.5, 0.5, ()),
        (1.0, 1.0, ("fast",)),
        (1.5, 0.5, ()),
        (2.0, 0.5, ("fast",)),  # slow is due at 2.5
        (2.5, 0.5, ("slow",)),
        (3.0, 1.0, ("fast",)),
        (3.5, 0.5, ()),
        (4.0, 1.0, ("fast",)),
        (4.5, 0.5, ()),
        (5.0, 1.0, ("fast", "slow")),  # both due: both run, fast is next at 6.0
    ]


def test_a_late_run_is_not_repeated_to_catch_up() -> None:
    """After a stall of many periods the task runs once, then one period after that run."""
    clock = FakeClock()
    ran: list[float] = []
    ticker = Periodic([(1.0, lambda: ran.append(clock.now))], clock=clock)
    clock.now += 10.0
    assert ticker.run_due() == 1.0
    assert ticker.run_due() == 1.0
    assert ran == [60.0]


def test_a_slow_task_delays_its_own_next_run() -> None:
    clock = FakeClock()

    def slow() -> None:
        clock.now += 0.75  # the run itself takes time on the clock

    ticker = Periodic([(1.0, slow)], clock=clock)
    clock.now += 1.0
    assert ticker.run_due() == pytest.approx(1.0)  # measured from the end of the run


def test_zero_or_negative_periods_are_off() -> None:
    ticker = Periodic([(0, lambda: None), (-1.0, lambda: None)])
    assert not ticker
    assert ticker.run_due() == float("inf")
    ticker.start()  # nothing to run: no thread
    assert not ticker.running
    ticker.stop()


def test_a_failing_task_is_logged_and_keeps_its_schedule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    calls = []

    def broken() -> None:
        calls.append(clock.now)
        raise RuntimeError("report failed")

    ok: list[float] = []
    ticker = Periodic([(1.0, broken), (1.0, lambda: ok.append(clock.now))], clock=clock)
    assert not ticker.ran.is_set()
    with caplog.at_level(logging.ERROR, logger="meshstats"):
        for _ in range(3):
            clock.now += 1.0
            ticker.run_due()
    assert calls == [51.0, 52.0, 53.0]
    assert ok == [51.0, 52.0, 53.0]  # the other task is not starved by the failing one
    assert len(caplog.records) == 3
    assert "report failed" in caplog.text


def test_the_thread_runs_the_schedule_and_stops() -> None:
    """Real clock, real thread: wait (up to a generous minute) for a run, then stop."""
    ran = threading.Event()
    ticker = Periodic([(0.01, ran.set)])
    ticker.start()
    ticker.start()  # already running: no second thread
    try:
        assert ticker.running
        assert ran.wait(60), "the thread never ran its task"
    finally:
        ticker.stop()
    assert not ticker.running
    assert ticker.ran.is_set()  # the schedule's own signal agrees
