"""What a run's actor does, pinned through the public API (virtual time, both embedded
stores): the error back-off in its two shapes (a short wait inside the actor, a long one
after passivating), timeouts that fire, skip or fail, callbacks and controls that arrive
while a step runs, and a stop in the middle of a step. Each was checked to behave the same
before and after the actor was split into mailbox, run copy and actions."""

from __future__ import annotations

import enum
import itertools
import time
from datetime import datetime, timedelta
from pathlib import Path

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import wait_for
from tests.conftest import StoreMaker


class St(enum.IntEnum):
    A = 1
    B = 2
    C = 3
    D = 4


@attrs.define
class Obj:
    n: int = 0


async def _moved(run: af.Run[Obj, St], payload: bytes) -> St:
    return St.C


def _shape(records: list[af.Record[Obj, St]]) -> list[tuple[int, af.RunState, int]]:
    return [(int(r.status), r.run_state, r.meta.error_count) for r in records]


@pytest.mark.parametrize(("backoff", "gaps"), [(0.5, [0.5, 1.0, 2.0]), (3.0, [3.0, 6.0, 12.0])])
async def test_errors_back_off_doubling_then_pause_then_resume(
    make_store: StoreMaker,
    clock: af.Clock,
    autojump_clock: MockClock,
    backoff: float,
    gaps: list[float],
) -> None:
    """A short back-off is waited out by the actor, a long one after it passivates: the
    retry times are the same, the pause comes at the limit and the resume after
    resume_paused_after; an error after the resume starts a fresh count."""
    builder = af.Builder("errors", Obj, St)
    calls: list[float] = []

    @builder.step(St.A, to=St.B, pause_after_errors=4, error_backoff=timedelta(seconds=backoff))
    async def step(run: af.Run[Obj, St]) -> St:
        calls.append(trio.current_time())
        if len(calls) <= 4 or len(calls) == 6:
            raise RuntimeError(f"boom {len(calls)}")
        return St.B

    workflow = builder.build(make_store(), clock=clock, resume_paused_after=timedelta(minutes=5))
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        await workflow.await_status("f", run_id, St.B)
    assert [b - a for a, b in itertools.pairwise(calls[:4])] == pytest.approx(gaps)
    assert calls[4] - calls[3] == pytest.approx(300)
    assert len(calls) == 5  # the fifth call succeeded; nothing ran after it
    assert _shape(await workflow.history(run_id)) == [
        (1, af.RunState.INITIATED, 0),
        (1, af.RunState.PAUSED, 4),
        (1, af.RunState.RUNNING, 0),
        (2, af.RunState.COMPLETED, 0),
    ]


async def test_a_callback_ends_a_long_back_off_at_once(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("long-backoff", Obj, St)
    calls: list[float] = []

    @builder.step(St.A, to=St.B, error_backoff=timedelta(seconds=60))
    async def failing(run: af.Run[Obj, St]) -> St:
        calls.append(trio.current_time())
        raise RuntimeError("down")

    @builder.step(St.C, to=St.D)
    async def after_callback(run: af.Run[Obj, St]) -> St:
        calls.append(-trio.current_time())
        return St.D

    builder.add_callback(St.A, _moved, to=[St.C])
    workflow = builder.build(make_store(), clock=clock)
    async with af.open_workflow(workflow):
        start = trio.current_time()
        run_id = await workflow.trigger("f")
        await trio.sleep(90)
        moved = await workflow.callback("f", St.A, b"")
        assert moved is not None and moved.status is St.C
        await workflow.await_status("f", run_id, St.D)
        assert trio.current_time() - start == pytest.approx(90)
    assert [abs(c) - start for c in calls] == pytest.approx([0, 60, 90])


async def test_a_callback_cancels_the_timeout_and_the_other_run_times_out(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("timeouts", Obj, St)
    fired: list[tuple[str, float]] = []

    async def gave_up(run: af.Run[Obj, St], now: datetime) -> St:
        fired.append((run.foreign_id, trio.current_time()))
        return St.D

    builder.add_callback(St.A, _moved, to=[St.C])
    builder.add_timeout(St.A, af.after(timedelta(seconds=10)), gave_up, to=[St.D])
    workflow = builder.build(make_store(), clock=clock)
    async with af.open_workflow(workflow):
        start = trio.current_time()
        one = await workflow.trigger("one")
        two = await workflow.trigger("two")
        await trio.sleep(5)
        assert (await workflow.callback("one", St.A, b"")) is not None
        await workflow.await_status("two", two, St.D)
        await trio.sleep(30)
    assert [name for name, _ in fired] == ["two"]
    assert fired[0][1] == pytest.approx(start + 10)
    assert [int(r.status) for r in await workflow.history(one)] == [1, 3]
    assert await workflow.store.list_timers(workflow.name, one) == []


async def test_a_failing_timeout_backs_off_then_pauses_the_run(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("timeout-errors", Obj, St)
    fired: list[float] = []

    async def failing(run: af.Run[Obj, St], now: datetime) -> St:
        fired.append(trio.current_time())
        raise ValueError("no")

    builder.add_callback(St.A, _moved, to=[St.C])
    builder.add_timeout(
        St.A,
        af.after(timedelta(seconds=10)),
        failing,
        to=[St.D],
        error_backoff=timedelta(seconds=4),
        pause_after_errors=3,
    )
    workflow = builder.build(make_store(), clock=clock, resume_paused_after=None)
    async with af.open_workflow(workflow):
        start = trio.current_time()
        await workflow.trigger("f")
        paused = await wait_for(workflow, "f", lambda r: r.run_state is af.RunState.PAUSED)
        await trio.sleep(100)
    assert [f - start for f in fired] == pytest.approx([10, 14, 22])
    assert paused.meta.error_count == 3
    assert "3 consecutive errors" in paused.meta.run_state_reason


async def test_a_skipped_step_waits_for_a_new_version(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("skips", Obj, St)
    calls: list[float] = []

    @builder.step(St.A, to=St.B)
    async def step(run: af.Run[Obj, St]) -> St:
        calls.append(trio.current_time())
        return run.skip() if len(calls) == 1 else St.B

    builder.add_callback(St.A, _moved, to=[St.C])
    workflow = builder.build(make_store(), clock=clock)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        await trio.sleep(100)
        assert len(calls) == 1
        assert _shape(await workflow.history(run_id)) == [(1, af.RunState.INITIATED, 0)]
        await workflow.pause(run_id, "p")
        await workflow.resume(run_id, "r")
        await workflow.await_status("f", run_id, St.B)
    assert len(calls) == 2


@pytest.mark.parametrize("control", ["pause", "cancel", "callback"])
async def test_a_control_during_a_step_waits_for_its_transition(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock, control: str
) -> None:
    """The step's transition is stored first; the control then applies to what it stored
    (a callback of the step's old status finds the run moved on and does nothing)."""
    builder = af.Builder("controls", Obj, St)

    @builder.step(St.A, to=St.B)
    async def slow(run: af.Run[Obj, St]) -> St:
        run.object.n += 1
        await trio.sleep(10)
        return St.B

    @builder.step(St.B, to=St.C)
    async def quick(run: af.Run[Obj, St]) -> St:
        return St.C

    async def late(run: af.Run[Obj, St], payload: bytes) -> St:
        return St.D

    builder.add_callback(St.A, late, to=[St.D])
    workflow = builder.build(make_store(), clock=clock, resume_paused_after=None)
    async with af.open_workflow(workflow):
        start = trio.current_time()
        run_id = await workflow.trigger("f")
        await trio.sleep(1)
        if control == "callback":
            assert await workflow.callback("f", St.A, b"") is None
        else:
            record = await getattr(workflow, control)(run_id, "by test")
            assert record.status is St.B
        assert trio.current_time() - start == pytest.approx(10)
        await trio.sleep(50)
    history = await workflow.history(run_id)
    expected_last = {
        "pause": (2, af.RunState.PAUSED, 0),
        "cancel": (2, af.RunState.CANCELLED, 0),
        "callback": (3, af.RunState.COMPLETED, 0),
    }[control]
    assert _shape(history) == [
        (1, af.RunState.INITIATED, 0),
        (2, af.RunState.RUNNING, 0),
        expected_last,
    ]
    assert history[1].object.n == 1


async def test_a_stop_in_the_middle_of_a_step_writes_nothing_and_a_restart_runs_it_again(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    calls: list[float] = []

    def build() -> af.Workflow[Obj, St]:
        builder = af.Builder("stopped", Obj, St)

        @builder.step(St.A, to=St.B)
        async def long(run: af.Run[Obj, St]) -> St:
            calls.append(trio.current_time())
            run.object.n = 7
            await trio.sleep(100 if len(calls) == 1 else 1)
            return St.B

        return builder.build(make_store(), clock=clock, grace_period=timedelta(seconds=2))

    first = build()
    async with af.open_workflow(first):
        run_id = await first.trigger("f")
        await trio.sleep(1)
    assert _shape(await first.history(run_id)) == [(1, af.RunState.INITIATED, 0)]
    second = build()
    async with af.open_workflow(second):
        done = await second.await_status("f", run_id, St.B)
    assert len(calls) == 2
    assert done.object.n == 7
    assert _shape(await second.history(run_id)) == [
        (1, af.RunState.INITIATED, 0),
        (2, af.RunState.COMPLETED, 0),
    ]


async def test_another_process_moving_the_run_rearms_its_timeout(
    tmp_path: Path, clock: af.Clock, autojump_clock: MockClock
) -> None:
    """A callback through another store (another process) moves the run to a status with
    another timeout: the worker's tail replaces the armed wake-up; only the new status's
    timeout fires, at its own time."""
    if not hasattr(af, "SQLiteStore"):
        pytest.skip("needs SQLiteStore")
    fired: list[tuple[int, float]] = []

    def build() -> af.Workflow[Obj, St]:
        builder = af.Builder("moved-elsewhere", Obj, St)

        async def at_a(run: af.Run[Obj, St], now: datetime) -> St:
            fired.append((1, trio.current_time()))
            return St.D

        async def at_b(run: af.Run[Obj, St], now: datetime) -> St:
            fired.append((2, trio.current_time()))
            return St.D

        async def to_b(run: af.Run[Obj, St], payload: bytes) -> St:
            return St.B

        builder.add_callback(St.A, to_b, to=[St.B])
        builder.add_timeout(St.A, af.after(timedelta(seconds=30)), at_a, to=[St.D])
        builder.add_timeout(St.B, af.after(timedelta(seconds=100)), at_b, to=[St.D])
        store = af.SQLiteStore(tmp_path / "shared.db")
        return builder.build(store, clock=clock, poll_interval=timedelta(milliseconds=20))

    worker, elsewhere = build(), build()
    try:
        await _moved_elsewhere(worker, elsewhere, fired)
    finally:
        await worker.store.aclose()
        await elsewhere.store.aclose()


async def _moved_elsewhere(
    worker: af.Workflow[Obj, St], elsewhere: af.Workflow[Obj, St], fired: list[tuple[int, float]]
) -> None:
    async with af.open_workflow(worker):
        run_id = await worker.trigger("f")
        await trio.sleep(10)
        moved_at = trio.current_time()
        moved = await elsewhere.callback("f", St.A, b"")
        assert moved is not None and moved.status is St.B
        # The tail polls in real time: give it a moment (the virtual clock stands still
        # while this task sleeps in a thread only if nothing else is due, so keep it short).
        for _ in range(20):
            await trio.to_thread.run_sync(time.sleep, 0.02)
        await worker.await_status("f", run_id, St.D)
    assert [which for which, _ in fired] == [2]
    assert fired[0][1] == pytest.approx(moved_at + 100)


@pytest.mark.parametrize("control", ["pause", "cancel"])
@pytest.mark.parametrize("where", ["step", "timeout"])
async def test_a_pause_or_cancel_interrupts_a_function_that_hangs(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock, control: str, where: str
) -> None:
    """A step (or timeout) that never returns does not hold a pause or cancel forever: it
    waits the grace period for the function, then cancels it; nothing of it is stored, no
    error is counted, and a paused run runs the step again when resumed."""
    builder = af.Builder("hangs", Obj, St)
    calls: list[float] = []

    async def hang(run: af.Run[Obj, St]) -> St:
        calls.append(trio.current_time())
        run.object.n += 1
        if len(calls) == 1:
            await trio.sleep_forever()
        return St.B

    async def hang_timeout(run: af.Run[Obj, St], now: datetime) -> St:
        return await hang(run)

    if where == "step":
        builder.add_step(St.A, hang, to=St.B)
    else:
        builder.add_callback(St.A, _moved, to=[St.C])
        builder.add_timeout(St.A, af.after(timedelta(seconds=5)), hang_timeout, to=[St.B])
    workflow = builder.build(
        make_store(), clock=clock, grace_period=timedelta(seconds=3), resume_paused_after=None
    )
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        await trio.sleep(10)  # the step (or the timeout, due at 5 s) hangs by now
        assert len(calls) == 1
        asked = trio.current_time()
        record = await getattr(workflow, control)(run_id, "by test")
        assert trio.current_time() - asked == pytest.approx(3)
        assert record.status is St.A
        assert record.object.n == 0
        assert record.meta.error_count == 0
        if control == "pause":
            await workflow.resume(run_id)
            done = await workflow.await_status("f", run_id, St.B)
            assert done.object.n == 1
            assert len(calls) == 2
    expected = af.RunState.COMPLETED if control == "pause" else af.RunState.CANCELLED
    assert (await workflow.lookup(run_id)).run_state is expected
