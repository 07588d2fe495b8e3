"""What a run's actor knows of its run, alone: due timeouts, snoozes, the next wake-up it
hands to the supervisor before passivating, and when a back-off ends."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from actorflow._model.record import RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow._runtime.engine import RESUME, Engine
from actorflow._runtime.run_copy import MIN_SNOOZE, RunCopy

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


class _Clock:
    """The one thing of the engine these rules read: the wall time."""

    def __init__(self) -> None:
        self.wall = T0

    def now(self) -> datetime:
        return self.wall


def record(status: int = 1, version: int = 1, state: RunState = RunState.RUNNING) -> RawRecord:
    return RawRecord("wf", "f", "run", status, state, "{}", version, T0, T0)


def timeout(status: int, when: datetime, index: int = 0) -> Timer:
    return Timer("wf", "run", status, f"timeout:{index}", when)


def copy_of(raw: RawRecord, timers: list[Timer]) -> tuple[RunCopy, _Clock]:
    clock = _Clock()
    run = RunCopy(cast(Engine[Any, Any], clock), "run")
    run.start_from(raw, timers)
    return run, clock


def test_a_due_timeout_of_the_current_status_is_found() -> None:
    raw = record(status=1)
    due = timeout(1, T0 - MINUTE)
    other_status = timeout(2, T0 - MINUTE)
    later = timeout(1, T0 + MINUTE, index=1)
    run, clock = copy_of(raw, [other_status, later, due])
    assert run.due_timeout(raw, clock.now()) == (due, None)
    assert not run.stale  # started from what was just stored: nothing to read


def test_a_snoozed_timeout_fires_again_after_its_back_off_and_is_held_in_memory() -> None:
    raw = record(status=1)
    due = timeout(1, T0 - MINUTE)
    run, clock = copy_of(raw, [due])
    run.snooze(due, timedelta(0))  # error_backoff may be 0: still a short wait
    again = T0 + MIN_SNOOZE
    assert run.due_timeout(raw, clock.now()) == (None, again)
    # Passivating now: the supervisor must wake the run then, a time in memory only.
    assert run.next_wake_up(clock.now()) == (again, True)
    clock.wall = again
    assert run.due_timeout(raw, clock.now()) == (due, None)


def test_the_next_wake_up_of_a_stored_timer_is_not_pinned() -> None:
    run, clock = copy_of(record(), [timeout(1, T0 + 2 * MINUTE), timeout(1, T0 + MINUTE, 1)])
    assert run.next_wake_up(clock.now()) == (T0 + MINUTE, False)
    clock.wall = T0 + 3 * MINUTE
    assert run.next_wake_up(clock.now()) is None


def test_an_automatic_resume_is_due_at_its_time() -> None:
    resume = Timer("wf", "run", 1, RESUME, T0 + MINUTE)
    run, clock = copy_of(record(state=RunState.PAUSED), [resume])
    assert not run.resume_due(clock.now())
    assert run.resume_due(T0 + MINUTE)
    # The resume timer is no timeout: never "due" as one.
    assert run.due_timeout(record(), T0 + MINUTE) == (None, None)


def test_a_new_status_ends_the_back_off_and_the_same_status_keeps_it() -> None:
    raw = record(status=1)
    run, _ = copy_of(raw, [])
    run.retry_at = 100.0
    run.stored(record(status=1, version=2), None)
    assert run.retry_at == 100.0
    assert run.timers == []  # None: the timers did not change
    run.stored(record(status=2, version=3), [timeout(2, T0)])
    assert run.retry_at == -math.inf
    assert run.raw is run.own and run.raw is not None and run.raw.version == 3
    assert run.timers == [timeout(2, T0)]
