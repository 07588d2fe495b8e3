"""schedule_trigger: cron times in virtual time, skipping, filters, restarts."""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import trio_clock, wait_for
from tests.conftest import START, StoreMaker
from tests.runtime.test_robustness import FlakyStore
from tests.workflows import Three, three_steps


class Wait(enum.IntEnum):
    WAITING = 1
    DONE = 2


@attrs.define
class Nothing:
    pass


def waiting(store: af.Store, clock: af.Clock) -> af.Workflow[Nothing, Wait]:
    builder = af.Builder("waiting", Nothing, Wait)

    async def done(run: af.Run[Nothing, Wait], payload: bytes) -> Wait:
        return Wait.DONE

    builder.add_callback(Wait.WAITING, done, to=Wait.DONE)
    return builder.build(store, clock=clock)


def hours(records: list[af.Record[object, Wait]] | list[af.Record[object, Three]]) -> list[float]:
    return [(r.created_at - START) / timedelta(hours=1) for r in records]


async def test_fires_at_each_cron_time(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = three_steps(make_store(), clock)
    async with af.open_workflow(workflow), trio.open_nursery() as nursery:
        nursery.start_soon(workflow.schedule_trigger, "report", "@hourly")
        await trio.sleep(3.5 * 3600)
        nursery.cancel_scope.cancel()
    runs = await workflow.list_runs()
    assert hours(runs) == [1, 2, 3]
    assert all(r.status is Three.D for r in runs)


async def test_skips_while_unfinished_and_when_filtered(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = waiting(make_store(), clock)
    asked: list[datetime] = []

    def not_at_two(when: datetime) -> bool:
        asked.append(when)
        return when.hour != 12

    async with af.open_workflow(workflow), trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: workflow.schedule_trigger("daily", "0 * * * *", filter=not_at_two)
        )
        await trio.sleep(1.5 * 3600)  # 10:00 fired; 11:00 will be skipped (unfinished)
        await trio.sleep(1 * 3600)
        await workflow.callback("daily", Wait.WAITING, b"")  # 11:30
        await trio.sleep(2 * 3600)  # 12:00 filtered out, 13:00 fires
        nursery.cancel_scope.cancel()
    assert hours(await workflow.list_runs()) == [1, 4]
    assert [w.hour for w in asked] == [10, 12, 13]


async def test_restart_never_fires_twice_and_fires_a_missed_time_once(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = three_steps(make_store(), clock)

    async def schedule_for(seconds: float) -> None:
        with trio.move_on_after(seconds):
            await workflow.schedule_trigger("r", "0 * * * *")

    async with af.open_workflow(workflow):
        await trio.sleep_until(1800)  # 09:30
        await schedule_for(3600)  # fires at 10:00, stops at 10:30
        await schedule_for(1)  # a restart at 10:30 must not fire 10:00 again
        await trio.sleep_until(4.5 * 3600)  # down until 13:30: 11, 12 and 13 missed
        await schedule_for(3600)  # fires once for the missed times on start, then 14:00
    assert hours(await workflow.list_runs()) == [1, 4.5, 5]


async def test_invalid_specs_are_refused(make_store: StoreMaker, clock: af.Clock) -> None:
    workflow = three_steps(make_store(), clock)
    for spec in ["", "* * *", "61 * * * *", "@fortnightly", "every hour"]:
        with pytest.raises(af.InvalidArgument, match="cron spec"):
            await workflow.schedule_trigger("x", spec)
    with pytest.raises(af.InvalidArgument):
        await workflow.schedule_trigger("x", "@daily", Wait.DONE)  # type: ignore[arg-type]


async def test_a_filter_that_raises_is_logged_and_asked_again_before_the_time_is_claimed(
    make_store: StoreMaker,
    clock: af.Clock,
    autojump_clock: MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = make_store()
    workflow = three_steps(store, clock)
    key = "schedule:three:report:0 * * * *"
    asked: list[tuple[datetime, datetime | None]] = []

    async def flaky(when: datetime) -> bool:
        asked.append((when, await store.last_schedule(key)))
        if len(asked) < 3:
            raise ValueError("the calendar service is down")
        return True

    with trio.fail_after(2 * 3600):
        async with af.open_workflow(workflow), trio.open_nursery() as nursery:
            nursery.start_soon(lambda: workflow.schedule_trigger("report", "@hourly", filter=flaky))
            await wait_for(workflow, "report", lambda r: r.status is Three.D)
            nursery.cancel_scope.cancel()
    first = START + timedelta(hours=1)
    # Asked three times about the same cron time; not claimed until the filter decided.
    assert asked == [(first, None)] * 3
    assert await store.last_schedule(key) == first
    runs = await workflow.list_runs()
    assert len(runs) == 1
    # Retried after the back-off (1 s, then 2 s), not at once (virtual time may run on
    # a little while a store waits for its real-time threads).
    assert (runs[0].created_at - first).total_seconds() >= 3
    assert "the calendar service is down" in caplog.text


async def test_a_claimed_time_whose_trigger_fails_is_triggered_after_the_back_off(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    store = FlakyStore()
    workflow = three_steps(store, clock)  # type: ignore[arg-type]
    store.failures["create_run"] = 2
    with trio.fail_after(2 * 3600):
        async with af.open_workflow(workflow), trio.open_nursery() as nursery:
            nursery.start_soon(lambda: workflow.schedule_trigger("report", "@hourly"))
            record = await wait_for(workflow, "report", lambda r: r.status is Three.D)
            nursery.cancel_scope.cancel()
    first = START + timedelta(hours=1)
    assert 3 <= (record.created_at - first).total_seconds() < 4  # after 1 s, then 2 s
    assert await store.last_schedule("schedule:three:report:0 * * * *") == first


async def test_a_filter_that_is_not_a_function_is_refused_at_once(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = three_steps(af.MemoryStore(), clock)
    with trio.fail_after(2 * 3600), pytest.raises(af.InvalidArgument, match="must be a function"):
        await workflow.schedule_trigger("report", "@hourly", filter=True)  # type: ignore[arg-type]


async def test_a_schedule_past_the_last_representable_time_waits_instead_of_crashing(
    make_store: StoreMaker, autojump_clock: MockClock
) -> None:
    """Near the end of the year 9999 the next cron time cannot be represented: the schedule
    fires what it can, then waits (idle) until cancelled; before, croniter's OverflowError
    ended it (and the caller's nursery), e.g. when a test left a schedule running under the
    autojump clock."""
    clock = trio_clock(datetime(9999, 12, 31, 22, 30, tzinfo=UTC))
    workflow = three_steps(make_store(), clock)
    async with af.open_workflow(workflow), trio.open_nursery() as nursery:
        nursery.start_soon(workflow.schedule_trigger, "report", "@hourly")
        await trio.sleep(10 * 24 * 3600)
        assert workflow.states()["report-scheduler-@hourly"] is af.ProcessState.IDLE
        nursery.cancel_scope.cancel()
    runs = await workflow.list_runs()
    assert [r.created_at for r in runs] == [datetime(9999, 12, 31, 23, 0, tzinfo=UTC)]
