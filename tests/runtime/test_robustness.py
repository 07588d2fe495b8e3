"""Regression tests for races and failure paths found in review: callers never hang, long
waits give their slot back, a stop starts no new work, store hiccups do not stop a workflow."""

from __future__ import annotations

import contextlib
import enum
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import wait_for
from tests.conftest import START, StoreMaker
from tests.workflows import Status, yinyang


class Two(enum.IntEnum):
    A = 1
    B = 2
    C = 3


@attrs.define
class Obj:
    n: int = 0


class FlakyStore:
    """A MemoryStore whose named methods fail with StoreError the next N times."""

    def __init__(self) -> None:
        self.inner = af.MemoryStore()
        self.failures: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.failures.get(name, 0) > 0:
                self.failures[name] -= 1
                raise af.StoreError(f"{name}: database is locked")
            return await attr(*args, **kwargs)

        return call


async def test_callback_outlasting_a_wait_deadline_still_answers(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("lagcb", Obj, Two)

    @builder.step(Two.A, to=Two.C, consume_lag=timedelta(seconds=10))
    async def later(run: af.Run[Obj, Two]) -> Two:
        return Two.C

    async def slow_callback(run: af.Run[Obj, Two], payload: bytes) -> Two:
        await trio.sleep(5)
        return Two.B

    builder.add_callback(Two.A, slow_callback, to=Two.B)
    workflow = builder.build(af.MemoryStore(), clock=clock)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        await trio.sleep(0.5)  # the actor now waits for the lag, ending at t=10
        await trio.sleep_until(7)
        with trio.fail_after(60):
            record = await workflow.callback("f", Two.A, b"")
    assert record is not None and record.status is Two.B
    assert [r.status for r in await workflow.history(run_id)] == [Two.A, Two.B]


async def test_stop_with_a_callback_in_flight_does_not_hang_its_caller(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("stopcb", Obj, Two)

    async def slow_callback(run: af.Run[Obj, Two], payload: bytes) -> Two:
        await trio.sleep(5)
        return Two.B

    builder.add_callback(Two.A, slow_callback, to=Two.B)
    workflow = builder.build(af.MemoryStore(), clock=clock, grace_period=timedelta(seconds=1))
    outcome: list[object] = []
    answered = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(workflow.run)
        await workflow.trigger("f")

        async def call() -> None:
            outcome.append(await workflow.callback("f", Two.A, b""))
            answered.set()

        nursery.start_soon(call)
        await trio.sleep(0.5)
        workflow.stop()
        with trio.fail_after(60):
            await answered.wait()
    record = outcome[0]
    assert isinstance(record, af.Record) and record.status is Two.B  # applied inline


async def test_long_waits_give_their_slot_back(clock: af.Clock, autojump_clock: MockClock) -> None:
    builder = af.Builder("slots", Obj, Two)

    @builder.step(Two.A, to=Two.B, consume_lag=timedelta(hours=6))
    async def later(run: af.Run[Obj, Two]) -> Two:
        return Two.B

    workflow = builder.build(af.MemoryStore(), clock=clock, max_active_runs=2)
    async with af.open_workflow(workflow):
        a = await workflow.trigger("a")
        await workflow.trigger("b")
        await trio.sleep(1)
        started = trio.current_time()
        await workflow.cancel((await workflow.latest("a")).run_id, "no")
        assert trio.current_time() - started < 1
        done = await workflow.await_status("b", (await workflow.latest("b")).run_id, Two.B)
        assert done.updated_at - done.created_at == timedelta(hours=6)
    assert (await workflow.lookup(a)).run_state is af.RunState.CANCELLED


async def test_a_store_error_in_a_service_does_not_stop_the_workflow(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    store = FlakyStore()
    completed: list[str] = []
    builder = af.Builder("flakyhooks", Obj, Two)

    @builder.step(Two.A, to=Two.B)
    async def go(run: af.Run[Obj, Two]) -> Two:
        return Two.B

    both = trio.Event()

    @builder.on_complete
    async def done(record: af.Record[Obj, Two]) -> None:
        completed.append(record.foreign_id)
        if set(completed) == {"x", "y"}:
            both.set()

    workflow = builder.build(store, clock=clock)  # type: ignore[arg-type]
    store.failures = {"set_cursor": 2, "read_events": 1}
    async with af.open_workflow(workflow):
        for name in ["x", "y"]:
            run_id = await workflow.trigger(name)
            await workflow.await_status(name, run_id, Two.B)
        with trio.fail_after(600):
            await both.wait()


async def test_stop_starts_no_new_steps(clock: af.Clock, autojump_clock: MockClock) -> None:
    started: list[str] = []
    builder = af.Builder("nostart", Obj, Two)

    @builder.step(Two.A, to=Two.B, max_concurrency=1)
    async def slow(run: af.Run[Obj, Two]) -> Two:
        started.append(run.foreign_id)
        await trio.sleep(1)
        return Two.B

    workflow = builder.build(af.MemoryStore(), clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(workflow.run)
        for i in range(10):
            await workflow.trigger(f"f{i}")
        await trio.sleep(0.5)
        workflow.stop()
    assert len(started) == 1
    assert trio.current_time() < 2


async def test_timeout_that_repeats_fires_once(clock: af.Clock, autojump_clock: MockClock) -> None:
    fired: list[float] = []
    builder = af.Builder("repeat", Obj, Two)

    async def tick(run: af.Run[Obj, Two], now: datetime) -> Two:
        fired.append(trio.current_time())
        run.object.n += 1
        return run.save_and_repeat()

    builder.add_timeout(Two.A, af.after(timedelta(minutes=1)), tick, to=Two.B)
    workflow = builder.build(af.MemoryStore(), clock=clock)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        await trio.sleep(3600)
    assert fired == [pytest.approx(60)]
    assert (await workflow.lookup(run_id)).object.n == 1


async def test_a_step_controlling_its_own_run_gets_an_error_not_a_deadlock(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("selfpause", Obj, Two)
    holder: list[af.Workflow[Obj, Two]] = []

    @builder.step(Two.A, to=Two.B, pause_after_errors=1)
    async def pause_myself(run: af.Run[Obj, Two]) -> Two:
        await holder[0].pause(run.run_id, "from inside")
        return Two.B

    workflow = builder.build(af.MemoryStore(), clock=clock, resume_paused_after=None)
    holder.append(workflow)
    async with af.open_workflow(workflow):
        await workflow.trigger("f")
        with trio.fail_after(600):
            paused = await wait_for(workflow, "f", lambda r: r.run_state is af.RunState.PAUSED)
    assert "return run.pause()" in paused.meta.run_state_reason


async def test_timers_of_runs_that_moved_on_are_forgotten(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(af.MemoryStore(), clock)
    async with af.open_workflow(workflow):
        for i in range(300):
            run_id = await workflow.trigger(f"f{i}", Status.MIDDLE)
            await workflow.callback(f"f{i}", Status.MIDDLE, b"paid")
        supervisor = workflow._supervisor
        assert supervisor is not None
        assert len(supervisor.timers) == 0
    assert (await workflow.lookup(run_id)).status is Status.END


async def test_errors_must_be_consecutive_to_pause(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("consecutive", Obj, Two)

    async def parse(run: af.Run[Obj, Two], payload: bytes) -> Two:
        if payload == b"bad":
            raise ValueError("bad payload")
        return run.skip()

    builder.add_callback(Two.A, parse, to=Two.B)
    workflow = builder.build(
        af.MemoryStore(), clock=clock, default_options={"pause_after_errors": 3}
    )
    run_id = await workflow.trigger("f")
    for payload in [b"bad", b"ok", b"bad", b"ok", b"bad"]:
        with contextlib.suppress(af.CallbackError):
            await workflow.callback("f", Two.A, payload)
    assert (await workflow.lookup(run_id)).run_state is af.RunState.INITIATED


async def test_bad_arguments_are_refused_up_front(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    with pytest.raises(af.InvalidArgument, match="never matches"):
        await workflow.schedule_trigger("x", "0 0 31 2 *")
    with pytest.raises(af.InvalidArgument, match="foreign_id"):
        await workflow.schedule_trigger("x" * 600, "@daily")
    with pytest.raises(af.InvalidArgument, match="cannot start at END"):
        await workflow.schedule_trigger("x", "@daily", Status.END)
    run_id = await workflow.trigger("f")
    with pytest.raises(af.InvalidArgument, match="timeout"):
        await workflow.await_status("f", run_id, Status.MIDDLE, timeout=-1)
    with pytest.raises(af.InvalidArgument, match="timeout"):
        await workflow.await_status("f", run_id, Status.MIDDLE, timeout=timedelta(1))  # type: ignore[arg-type]
    with pytest.raises(af.BuildError, match="poll_interval"):
        yinyang(make_store(), clock, poll_interval=timedelta(0))


async def test_schedule_restarted_exactly_at_a_cron_time_fires_that_time(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(af.MemoryStore(), clock)
    key = f"schedule:{workflow.name}:s:0 * * * *"
    assert await workflow.store.claim_schedule(key, START)  # 09:00 fired long ago
    await trio.sleep_until(2 * 3600)  # restart at exactly 11:00
    with trio.move_on_after(1):
        await workflow.schedule_trigger("s", "0 * * * *")
    assert await workflow.store.last_schedule(key) == START + timedelta(hours=2)
    assert len(await workflow.list_runs()) == 1


async def test_timer_written_by_another_process_is_armed_while_an_actor_lives(
    tmp_path: Path, clock: af.Clock, autojump_clock: MockClock
) -> None:
    if not hasattr(af, "SQLiteStore"):
        pytest.skip("no SQLiteStore")
    path = tmp_path / "shared.db"
    worker_store = af.SQLiteStore(path)  # type: ignore[attr-defined]
    client_store = af.SQLiteStore(path)  # type: ignore[attr-defined]
    builder = af.Builder("backoff", Obj, Two)

    @builder.step(Two.A, to=Two.B, error_backoff=timedelta(seconds=30))
    async def failing(run: af.Run[Obj, Two]) -> Two:
        if run.object.n == 0:
            raise RuntimeError("not yet")
        return Two.B

    options: dict[str, Any] = {"clock": clock, "resume_paused_after": timedelta(minutes=5)}
    worker = builder.build(worker_store, **options)
    client = builder.build(client_store, **options)
    try:
        async with af.open_workflow(worker):
            run_id = await client.trigger("f")
            await trio.sleep(2)
            await client.pause(run_id, "from the command line")
            await trio.sleep(3600)
            assert (await client.lookup(run_id)).run_state is af.RunState.RUNNING
    finally:
        await worker_store.aclose()
        await client_store.aclose()
