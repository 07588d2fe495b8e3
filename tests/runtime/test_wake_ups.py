"""The supervisor's wake-ups alone (no task runs): ``wake_at`` keeps the earliest time a
run is to be looked at; ``wake_for_timers`` replaces the run's wake-up by its stored
timers' earliest, or drops it when the run has none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from actorflow._model.record import Timer
from actorflow._runtime.engine import Engine
from actorflow._runtime.supervisor import Supervisor

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


class _Engine:
    """What the wake-ups read of the engine: the wall time."""

    def now(self) -> datetime:
        return T0


def supervisor() -> Supervisor[Any, Any]:
    """A supervisor whose timer loop has read the store's timers (there were none): stored
    timers due within the window are now held in memory."""
    sup: Supervisor[Any, Any] = Supervisor(
        cast(Engine[Any, Any], _Engine()),
        grace_period=timedelta(seconds=1),
        poll_interval=timedelta(seconds=1),
        max_active_runs=10,
        services=[],
    )
    request = sup.timers.page_request(T0)
    assert request is not None
    sup.timers.page_read([], request[1], T0, lambda run_id: True)
    return sup


def timer(when: datetime) -> Timer:
    return Timer("wf", "run", 1, "timeout:0", when)


def test_wake_at_keeps_the_earliest_wake_up() -> None:
    sup = supervisor()
    sup.wake_at("run", T0 + 5 * MINUTE)
    sup.wake_at("run", T0 + 10 * MINUTE)  # later: the earlier one stands
    assert sup.timers.armed("run") == T0 + 5 * MINUTE
    sup.wake_at("run", T0 + MINUTE)
    assert sup.timers.armed("run") == T0 + MINUTE


def test_wake_for_timers_replaces_the_wake_up_with_the_earliest_stored_timer() -> None:
    sup = supervisor()
    sup.wake_at("run", T0 + MINUTE)
    sup.wake_for_timers("run", [timer(T0 + 20 * MINUTE), timer(T0 + 10 * MINUTE)])
    assert sup.timers.armed("run") == T0 + 10 * MINUTE  # later than before: replaced
    sup.wake_for_timers("run", [])
    assert sup.timers.armed("run") is None
    assert sup.counts() == (0, 0, 0)


def test_a_pinned_wake_up_is_held_however_far_away() -> None:
    sup = supervisor()
    far = T0 + timedelta(days=30)
    sup.wake_at("stored", far)  # a stored timer beyond the window: paged in later
    sup.wake_at("backoff", far, pinned=True)  # exists in memory only: held
    assert sup.timers.armed("stored") is None
    assert sup.timers.armed("backoff") == far
