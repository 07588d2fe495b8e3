"""The engine end to end on the embedded stores, under the autojump clock."""

from __future__ import annotations

import contextvars
import enum
import itertools
from collections import Counter as Tally
from datetime import timedelta
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import require, wait_for
from tests.conftest import StoreMaker
from tests.workflows import Counter, Status, Three, YinYang, three_steps, yinyang


async def test_trigger_await_and_history(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = three_steps(make_store(), clock)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("order-1")
        done = await workflow.await_status("order-1", run_id, Three.D)
        assert done.object == Counter(["a", "b", "c"])
        assert done.run_state is af.RunState.COMPLETED
        # A status passed long ago is answered from the history, as it was then.
        at_b = await workflow.await_status("order-1", run_id, Three.B)
        assert at_b.object == Counter(["a"])
        assert at_b.version == 2
        history = await workflow.history(run_id)
        assert [(r.status, r.version) for r in history] == [
            (Three.A, 1),
            (Three.B, 2),
            (Three.C, 3),
            (Three.D, 4),
        ]
        assert history[0].run_state is af.RunState.INITIATED
        assert [r.run_state for r in history[1:]] == [
            af.RunState.RUNNING,
            af.RunState.RUNNING,
            af.RunState.COMPLETED,
        ]
        assert history[-1].meta.status_description == "D"
        assert (await workflow.lookup(run_id)) == history[-1]
        assert (await workflow.latest("order-1")) == history[-1]


async def test_a_thousand_runs_complete_exactly_once(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = three_steps(make_store(), clock)
    async with af.open_workflow(workflow):
        run_ids = [await workflow.trigger(f"f{i}") for i in range(1000)]
        for i, run_id in enumerate(run_ids):
            await workflow.await_status(f"f{i}", run_id, Three.D)
    for run_id in run_ids:
        history = await workflow.history(run_id)
        assert [r.status for r in history] == [Three.A, Three.B, Three.C, Three.D]
        assert [r.version for r in history] == [1, 2, 3, 4]
        assert history[-1].object == Counter(["a", "b", "c"])


async def test_trigger_start_and_initial(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = three_steps(make_store(), clock)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("x", Three.B, initial=Counter(["given"]))
        done = await workflow.await_status("x", run_id, Three.D)
        assert done.object == Counter(["given", "b", "c"])
        assert [r.status for r in await workflow.history(run_id)] == [Three.B, Three.C, Three.D]


async def test_workflow_in_progress(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    first = await workflow.trigger("f")  # not running: stays INITIATED
    with pytest.raises(af.WorkflowInProgress, match="'f'"):
        await workflow.trigger("f")
    await workflow.cancel(first, "done with it")
    second = await workflow.trigger("f")
    assert second != first
    assert (await workflow.latest("f")).run_id == second


async def test_bad_input_gets_clear_errors(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = three_steps(make_store(), clock)
    with pytest.raises(af.InvalidArgument, match="initial must be a Counter, not YinYang"):
        await workflow.trigger("f", initial=YinYang())  # type: ignore[arg-type]
    with pytest.raises(af.InvalidArgument, match="not a Three"):
        await workflow.trigger("f", Status.MIDDLE)  # type: ignore[arg-type]
    with pytest.raises(af.InvalidArgument, match="99 is not a member of Three"):
        await workflow.trigger("f", 99)  # type: ignore[arg-type]
    with pytest.raises(af.InvalidArgument, match="cannot start at D"):
        await workflow.trigger("f", Three.D)
    with pytest.raises(af.InvalidArgument, match="foreign_id"):
        await workflow.trigger("")
    with pytest.raises(af.RunNotFound, match="no run 'nope'"):
        await workflow.lookup("nope")
    with pytest.raises(af.RunNotFound):
        await workflow.latest("nobody")
    with pytest.raises(af.RunNotFound):
        await workflow.await_status("f", "nope", Three.B)
    with pytest.raises(af.InvalidArgument):
        await workflow.list_runs(status=Status.MIDDLE)  # type: ignore[arg-type]
    assert await workflow.list_runs() == []  # nothing was stored by the failed calls


class Loop(enum.IntEnum):
    WORK = 1
    DONE = 2


@attrs.define
class Tries:
    n: int = 0
    bad: Any = None


async def test_step_errors_back_off_then_pause_then_auto_resume(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    calls: list[float] = []
    builder = af.Builder("flaky", Tries, Loop)

    @builder.step(
        Loop.WORK, to=Loop.DONE, pause_after_errors=3, error_backoff=timedelta(seconds=10)
    )
    async def work(run: af.Run[Tries, Loop]) -> Loop:
        calls.append(trio.current_time())
        if len(calls) <= 3:
            raise RuntimeError(f"boom {len(calls)}")
        run.object.n = len(calls)
        return Loop.DONE

    workflow = builder.build(make_store(), clock=clock, resume_paused_after=timedelta(minutes=30))
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        paused = await wait_for(workflow, "f", lambda r: r.run_state is af.RunState.PAUSED)
        assert paused.meta.error_count == 3
        assert "3 consecutive errors" in paused.meta.run_state_reason
        assert "boom 3" in paused.meta.run_state_reason
        assert paused.object == Tries()  # nothing of the failed steps was stored
        assert [round(b - a) for a, b in itertools.pairwise(calls)] == [10, 20]
        done = await workflow.await_status("f", run_id, Loop.DONE)
        assert done.object.n == 4
        assert round(calls[3] - calls[2]) == 30 * 60  # resumed after resume_paused_after
    states = [r.run_state for r in await workflow.history(run_id)]
    assert states == [
        af.RunState.INITIATED,
        af.RunState.PAUSED,
        af.RunState.RUNNING,
        af.RunState.COMPLETED,
    ]


async def test_garbage_results_and_unserialisable_objects_are_errors(
    make_store: StoreMaker,
    clock: af.Clock,
    autojump_clock: MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    builder = af.Builder("garbage", Tries, Loop)
    outcomes = iter(["not a status", Status.END, 99, "unserialisable"])

    @builder.step(Loop.WORK, to=Loop.DONE, pause_after_errors=4, error_backoff=timedelta(0))
    async def work(run: af.Run[Tries, Loop]) -> Loop:
        outcome = next(outcomes)
        if outcome == "unserialisable":
            run.object.bad = object()
            return Loop.DONE
        return outcome  # type: ignore[return-value]

    workflow = builder.build(make_store(), clock=clock, resume_paused_after=None)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        paused = await wait_for(workflow, "f", lambda r: r.run_state is af.RunState.PAUSED)
    assert "SerializationError" in paused.meta.error_message
    assert paused.version == 2 and paused.status is Loop.WORK
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "returned 'not a status', which is not an allowed destination" in messages
    assert f"run {run_id} at WORK" in messages
    assert "returned 99" in messages


class Rep(enum.IntEnum):
    COUNTING = 1
    DONE = 2


@attrs.define
class Count:
    n: int = 0


async def test_special_results(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("special", Count, Rep)

    @builder.step(Rep.COUNTING, to=Rep.DONE)
    async def count(run: af.Run[Count, Rep]) -> Rep:
        if run.foreign_id == "skip":
            return run.skip()
        if run.foreign_id == "pause":
            run.object.n = 999
            return run.pause("wait for a human")
        if run.foreign_id == "cancel":
            return run.cancel("not wanted")
        run.object.n += 1
        return run.save_and_repeat() if run.object.n < 100 else Rep.DONE

    workflow = builder.build(make_store(), clock=clock, resume_paused_after=None)
    async with af.open_workflow(workflow):
        repeat = await workflow.trigger("repeat")
        done = await workflow.await_status("repeat", repeat, Rep.DONE)
        assert done.object.n == 100
        assert done.version == 101
        paused_id = await workflow.trigger("pause")
        paused = await wait_for(workflow, "pause", lambda r: r.run_state is af.RunState.PAUSED)
        assert paused.object.n == 0 and paused.meta.run_state_reason == "wait for a human"
        await workflow.trigger("cancel")
        cancelled = await wait_for(
            workflow, "cancel", lambda r: r.run_state is af.RunState.CANCELLED
        )
        assert cancelled.meta.run_state_reason == "not wanted"
        skip = await workflow.trigger("skip")
        await trio.sleep(60)
        assert [r.version for r in await workflow.history(skip)] == [1]
    assert (await workflow.lookup(paused_id)).version == 2


async def test_list_runs_filters_and_pages(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    async with af.open_workflow(workflow):
        ids = [await workflow.trigger(f"f{i}") for i in range(5)]
        for i, run_id in enumerate(ids):
            await workflow.await_status(f"f{i}", run_id, Status.MIDDLE)
        await workflow.callback("f1", Status.MIDDLE, b"paid")
        await workflow.await_status("f1", ids[1], Status.END)
    assert [r.run_id for r in await workflow.list_runs()] == ids
    assert [r.run_id for r in await workflow.list_runs(status=Status.END)] == [ids[1]]
    assert [r.run_id for r in await workflow.list_runs(run_state=af.RunState.COMPLETED)] == [ids[1]]
    assert [r.run_id for r in await workflow.list_runs(foreign_id="f3")] == [ids[3]]
    page = await workflow.list_runs(limit=2, after=ids[1])
    assert [r.run_id for r in page] == ids[2:4]
    assert [r.run_id for r in await workflow.list_runs(descending=True, limit=2)] == ids[:2:-1][:2]


async def test_subscribe_sees_every_change_live(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = three_steps(make_store(), clock)
    seen: list[tuple[str, int]] = []
    async with af.open_workflow(workflow), workflow.subscribe() as changes:
        run_id = await workflow.trigger("f")
        async for record in changes:
            seen.append((record.foreign_id, record.version))
            if record.status is Three.D:
                break
    assert seen == [("f", 1), ("f", 2), ("f", 3), ("f", 4)]
    assert run_id


async def test_await_status_timeout_and_unreachable(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        with pytest.raises(TimeoutError):
            await workflow.await_status("f", run_id, Status.END, timeout=5)
        await workflow.cancel(run_id, "stop")
        with pytest.raises(af.StatusNotReached):
            await workflow.await_status("f", run_id, Status.END)
        with pytest.raises(af.RunNotFound):
            await workflow.await_status("someone-else", run_id, Status.MIDDLE)


async def test_stop_is_graceful_and_resumes_on_restart(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    started = trio.Event()
    release = trio.Event()
    builder = af.Builder("slow", Count, Rep)

    @builder.step(Rep.COUNTING, to=Rep.DONE)
    async def slow(run: af.Run[Count, Rep]) -> Rep:
        started.set()
        await release.wait()
        run.object.n = 1
        return Rep.DONE

    workflow = builder.build(make_store(), clock=clock, grace_period=timedelta(seconds=5))
    async with trio.open_nursery() as nursery:
        await nursery.start(workflow.run)
        run_id = await workflow.trigger("f")
        await started.wait()
        workflow.stop()  # the step is in flight: it gets the grace period, then is cancelled
    assert (await workflow.lookup(run_id)).version == 1
    release.set()
    again = builder.build(make_store(), clock=clock)
    async with af.open_workflow(again):
        done = await again.await_status("f", run_id, Rep.DONE)
    assert done.object.n == 1
    assert [r.version for r in await again.history(run_id)] == [1, 2]


async def test_stop_lets_a_quick_step_finish(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    started = trio.Event()
    builder = af.Builder("quick", Count, Rep)

    @builder.step(Rep.COUNTING, to=Rep.DONE)
    async def quick(run: af.Run[Count, Rep]) -> Rep:
        started.set()
        await trio.sleep(1)
        return Rep.DONE

    workflow = builder.build(make_store(), clock=clock, grace_period=timedelta(seconds=5))
    async with trio.open_nursery() as nursery:
        await nursery.start(workflow.run)
        run_id = await workflow.trigger("f")
        await started.wait()
        workflow.stop()
    assert (await workflow.lookup(run_id)).status is Rep.DONE


async def test_parked_runs_hold_no_actor(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    async with af.open_workflow(workflow):
        for i in range(200):
            run_id = await workflow.trigger(f"f{i}")
        await workflow.await_status("f199", run_id, Status.MIDDLE)
        await wait_for(workflow, "f0", lambda r: r.status is Status.MIDDLE)
        await trio.sleep(1)
        supervisor = workflow._supervisor
        assert supervisor is not None
        assert len(supervisor.actors) == 0


async def test_require_helper(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    async with af.open_workflow(workflow):
        await workflow.trigger("f")
        await require(workflow, "f", Status.MIDDLE, YinYang(yin=True))
        with pytest.raises(AssertionError, match=r"(?s)-.*'yin': False.*\+.*'yin': True"):
            await require(workflow, "f", Status.MIDDLE, YinYang(yin=False))


async def test_store_shared_by_two_workflows(clock: af.Clock, autojump_clock: MockClock) -> None:
    store = af.MemoryStore()
    first = three_steps(store, clock)
    second = yinyang(store, clock)
    async with af.open_workflow(first, second):
        a = await first.trigger("same-id")
        b = await second.trigger("same-id")
        await first.await_status("same-id", a, Three.D)
        await second.await_status("same-id", b, Status.MIDDLE)
        with pytest.raises(af.RunNotFound):
            await first.lookup(b)
    assert Tally(r.workflow_name for r in await first.list_runs()) == {"three": 1}


async def test_max_concurrency_caps_a_step(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    running = 0
    peak = 0
    builder = af.Builder("capped", Count, Rep)

    @builder.step(Rep.COUNTING, to=Rep.DONE, max_concurrency=2)
    async def slow(run: af.Run[Count, Rep]) -> Rep:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1
        return Rep.DONE

    workflow = builder.build(make_store(), clock=clock)
    async with af.open_workflow(workflow):
        ids = [await workflow.trigger(f"f{i}") for i in range(10)]
        for i, run_id in enumerate(ids):
            await workflow.await_status(f"f{i}", run_id, Rep.DONE)
    assert peak == 2
    assert trio.current_time() == pytest.approx(5)


async def test_run_twice_is_refused(clock: af.Clock, autojump_clock: MockClock) -> None:
    workflow = three_steps(af.MemoryStore(), clock)
    async with af.open_workflow(workflow):
        with pytest.raises(af.ActorflowError, match="already running"):
            await workflow.run()


async def test_bursts_beyond_max_active_runs_wait_as_ids_not_tasks(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    release = trio.Event()
    peak = 0
    tasks: set[trio.lowlevel.Task] = set()
    builder = af.Builder("burst", Count, Rep)

    @builder.step(Rep.COUNTING, to=Rep.DONE)
    async def gated(run: af.Run[Count, Rep]) -> Rep:
        tasks.add(trio.lowlevel.current_task())
        await release.wait()
        return Rep.DONE

    workflow = builder.build(af.MemoryStore(), clock=clock, max_active_runs=5)
    async with af.open_workflow(workflow):
        ids = [await workflow.trigger(f"f{i}") for i in range(50)]
        await trio.sleep(1)
        supervisor = workflow._supervisor
        assert supervisor is not None
        peak = len(supervisor.actors)
        assert len(supervisor._waiting) == 45
        release.set()
        for i, run_id in enumerate(ids):
            await workflow.await_status(f"f{i}", run_id, Rep.DONE)
    assert peak == 5
    # The five tasks took the waiting runs one after another: no task per run.
    assert len(tasks) == 5


_TRACE: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace", default=None)


async def test_a_run_never_sees_context_variables_another_run_s_step_set(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    seen: dict[str, str | None] = {}
    builder = af.Builder("contexts", Count, Rep)

    @builder.step(Rep.COUNTING, to=Rep.DONE)
    async def traced(run: af.Run[Count, Rep]) -> Rep:
        seen[run.foreign_id] = _TRACE.get()
        _TRACE.set(f"set by {run.foreign_id}")
        await trio.sleep(0.01)
        return Rep.DONE

    # One slot: every run after the first waits, then is handled by a task a run used.
    workflow = builder.build(af.MemoryStore(), clock=clock, max_active_runs=1)
    async with af.open_workflow(workflow):
        ids = [await workflow.trigger(f"f{i}") for i in range(4)]
        for i, run_id in enumerate(ids):
            await workflow.await_status(f"f{i}", run_id, Rep.DONE)
    assert seen == {"f0": None, "f1": None, "f2": None, "f3": None}


async def test_a_second_workflow_object_on_the_same_store_hands_work_to_the_running_one(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    store = make_store()
    worker = yinyang(store, clock)
    producer = yinyang(store, clock)  # never run: only triggers and calls back
    async with af.open_workflow(worker):
        run_id = await producer.trigger("f")
        with trio.fail_after(10):
            await producer.await_status("f", run_id, Status.MIDDLE)
        started = trio.current_time()
        done = await producer.await_status("f", run_id, Status.END)  # the worker's timer
        assert trio.current_time() - started == pytest.approx(3600)
        other = await producer.trigger("g")
        await producer.await_status("g", other, Status.MIDDLE)
        paid = await producer.callback("g", Status.MIDDLE, b"paid")
        assert paid is not None and paid.status is Status.END
    assert done.object.note == "timed out"
