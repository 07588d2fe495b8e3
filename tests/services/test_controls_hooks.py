"""Run-state controls (pause, resume, cancel, delete_data) and hooks."""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow._model.run_state import TRANSITIONS, can_transition
from tests.conftest import StoreMaker
from tests.workflows import Status, YinYang, yinyang


def test_run_state_table_is_luno_s() -> None:
    S = af.RunState
    allowed = {(a, b) for a in S for b in S if can_transition(a, b)}
    assert allowed == {
        (S.INITIATED, S.RUNNING),
        (S.INITIATED, S.PAUSED),
        (S.RUNNING, S.COMPLETED),
        (S.RUNNING, S.PAUSED),
        (S.RUNNING, S.CANCELLED),
        (S.PAUSED, S.RUNNING),
        (S.PAUSED, S.CANCELLED),
        (S.COMPLETED, S.REQUESTED_DATA_DELETED),
        (S.CANCELLED, S.REQUESTED_DATA_DELETED),
        (S.REQUESTED_DATA_DELETED, S.DATA_DELETED),
        (S.DATA_DELETED, S.REQUESTED_DATA_DELETED),
    }
    assert set(TRANSITIONS) == set(S)
    assert [int(s) for s in S] == [1, 2, 3, 4, 5, 6, 7]


async def test_pause_resume_cancel(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock, resume_paused_after=None)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        await workflow.await_status("f", run_id, Status.MIDDLE)
        paused = await workflow.pause(run_id, "customer asked")
        assert paused.run_state is af.RunState.PAUSED
        assert paused.meta.run_state_reason == "customer asked"
        with pytest.raises(af.InvalidTransition, match="PAUSED to PAUSED"):
            await workflow.pause(run_id, "again")
        assert await workflow.callback("f", Status.MIDDLE, b"paid") is None
        with pytest.raises(af.WorkflowInProgress):
            await workflow.trigger("f")
        resumed = await workflow.resume(run_id)
        assert resumed.run_state is af.RunState.RUNNING
        with pytest.raises(af.InvalidTransition, match="RUNNING to RUNNING"):
            await workflow.resume(run_id)
        cancelled = await workflow.cancel(run_id, "fraud")
        assert cancelled.run_state is af.RunState.CANCELLED
        with pytest.raises(af.InvalidTransition, match="CANCELLED to PAUSED"):
            await workflow.pause(run_id, "too late")
        with pytest.raises(af.InvalidTransition):
            await workflow.cancel(run_id, "twice")
        await trio.sleep(2 * 3600)  # the cancelled run's timeout never fires
        with pytest.raises(af.RunNotFound):
            await workflow.pause("nope", "x")
    history = await workflow.history(run_id)
    assert [r.run_state for r in history[2:]] == [
        af.RunState.PAUSED,
        af.RunState.RUNNING,
        af.RunState.CANCELLED,
    ]
    assert history[-1].status is Status.MIDDLE


async def test_delete_data_scrubs_history(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock, scrub=lambda obj: attrs.evolve(obj, note="<deleted>"))
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f")
        await workflow.await_status("f", run_id, Status.MIDDLE)
        with pytest.raises(af.InvalidTransition, match="RUNNING to REQUESTED_DATA_DELETED"):
            await workflow.delete_data(run_id, "gdpr")
        await workflow.callback("f", Status.MIDDLE, b"card 4242")
        deleted = await workflow.delete_data(run_id, "gdpr")
        assert deleted.run_state is af.RunState.DATA_DELETED
        assert deleted.meta.run_state_reason == "gdpr"
        history = await workflow.history(run_id)
        assert all(r.object.note == "<deleted>" for r in history)
        assert [r.run_state for r in history[-2:]] == [
            af.RunState.REQUESTED_DATA_DELETED,
            af.RunState.DATA_DELETED,
        ]
        again = await workflow.delete_data(run_id, "once more")
        assert again.run_state is af.RunState.DATA_DELETED


async def test_default_scrub_is_a_fresh_object(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    run_id = await workflow.trigger("f", Status.MIDDLE, initial=YinYang(note="secret"))
    await workflow.cancel(run_id, "x")
    await workflow.delete_data(run_id, "gdpr")
    assert {r.object.note for r in await workflow.history(run_id)} == {""}


async def test_hooks_called_once_per_change_and_retried(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    calls: list[tuple[str, str, int]] = []
    three_calls = trio.Event()
    failures = [2]
    builder = af.Builder("hooked", YinYang, Status)

    def note(call: tuple[str, str, int]) -> None:
        calls.append(call)
        if len(calls) == 3:
            three_calls.set()

    @builder.step(Status.STARTED, to=Status.MIDDLE)
    async def start(run: af.Run[YinYang, Status]) -> Status:
        return Status.MIDDLE

    async def paid(run: af.Run[YinYang, Status], payload: bytes) -> Status:
        return Status.END

    builder.add_callback(Status.MIDDLE, paid, to=Status.END)

    @builder.on_complete
    async def completed(record: af.Record[YinYang, Status]) -> None:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("hook down")
        note(("complete", record.foreign_id, record.version))

    @builder.on_pause
    async def paused(record: af.Record[YinYang, Status]) -> None:
        note(("pause", record.foreign_id, record.version))

    @builder.on_cancel
    async def cancelled(record: af.Record[YinYang, Status]) -> None:
        note(("cancel", record.foreign_id, record.version))

    store = make_store()
    workflow = builder.build(store, clock=clock, resume_paused_after=None)
    async with af.open_workflow(workflow):
        a = await workflow.trigger("a")
        await workflow.await_status("a", a, Status.MIDDLE)
        await workflow.callback("a", Status.MIDDLE, b"")
        b = await workflow.trigger("b")
        await workflow.await_status("b", b, Status.MIDDLE)
        await workflow.pause(b, "hold")
        await workflow.cancel(b, "stop")
        await three_calls.wait()
    assert sorted(calls) == [("cancel", "b", 4), ("complete", "a", 3), ("pause", "b", 3)]
    # A restart does not call them again: the cursor is durable.
    again = builder.build(make_store(), clock=clock)
    async with af.open_workflow(again):
        await trio.sleep(60)
    assert len(calls) == 3


async def test_auto_resume_after_pause(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock, resume_paused_after=timedelta(minutes=10))
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f", Status.MIDDLE)
        await workflow.pause(run_id, "hold")
        resumed = await workflow.await_status("f", run_id, Status.MIDDLE)
        assert resumed.version == 1
        record = await _wait_state(workflow, run_id, af.RunState.RUNNING)
        assert record.meta.run_state_reason == "resumed automatically"
        assert record.updated_at - record.created_at == timedelta(minutes=10)


async def _wait_state(
    workflow: af.Workflow[YinYang, Status], run_id: str, state: af.RunState
) -> af.Record[YinYang, Status]:
    async with workflow.subscribe(run_id=run_id) as changes:
        current = await workflow.lookup(run_id)
        if current.run_state is state:
            return current
        async for record in changes:
            if record.run_state is state:
                return record
    raise AssertionError("unreachable")
