"""First-hour surprises, fixed: errors that look like Python, a workflow that runs
nowhere, run states that print by name."""

from __future__ import annotations

import functools
import logging
from datetime import timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

import actorflow as af
from actorflow.workflow import _holds_only
from tests.workflows import Status, YinYang, yinyang

# -- exceptions from the body of the async with blocks come back as themselves ---------


async def test_open_workflow_hands_back_the_body_exception_itself(
    clock: af.Clock, autojump_clock: trio.testing.MockClock
) -> None:
    workflow = yinyang(af.MemoryStore(), clock)
    with pytest.raises(af.WorkflowInProgress):
        async with af.open_workflow(workflow):
            await workflow.trigger("twice")
            await workflow.trigger("twice")
    try:
        async with af.open_workflow(workflow):
            raise KeyError("mine")
    except KeyError as exc:
        assert exc.args == ("mine",)
        assert exc.__context__ is None  # not the group it travelled in
    # the workflow is usable again after a failed block
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("again")
        await workflow.await_status("again", run_id, Status.MIDDLE)


async def test_with_a_schedule_in_a_nursery_only_that_nursery_groups(
    clock: af.Clock, autojump_clock: trio.testing.MockClock
) -> None:
    workflow = yinyang(af.MemoryStore(), clock)
    with pytest.RaisesGroup(ValueError):  # one level: the caller's own nursery
        async with af.open_workflow(workflow), trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(workflow.schedule_trigger, "s", "@hourly"))
            await trio.sleep(3 * 3600)
            raise ValueError("in the body")


async def test_several_real_errors_stay_a_group() -> None:
    one, two = ValueError("one"), KeyError("two")
    assert _holds_only(BaseExceptionGroup("", [one]), one)
    assert _holds_only(BaseExceptionGroup("", [BaseExceptionGroup("", [one])]), one)
    assert not _holds_only(BaseExceptionGroup("", [one, two]), one)
    assert not _holds_only(BaseExceptionGroup("", [two]), one)


async def test_workflow_subscribe_hands_back_the_body_exception(
    clock: af.Clock, autojump_clock: trio.testing.MockClock
) -> None:
    workflow = yinyang(af.MemoryStore(), clock)
    async with af.open_workflow(workflow):
        with pytest.raises(af.RunNotFound):
            async with workflow.subscribe(foreign_id="x"):
                await workflow.lookup("nope")


async def test_gateway_client_and_subscribe_hand_back_the_body_exception(
    clock: af.Clock,
) -> None:
    workflow = yinyang(af.MemoryStore(), clock)
    async with af.open_workflow(workflow), trio.open_nursery() as nursery:
        port = await nursery.start(
            functools.partial(af.serve_gateway, [workflow], "127.0.0.1", 0, token="t")
        )
        url = f"ws://127.0.0.1:{port}/"
        with pytest.raises(af.WorkflowInProgress):
            async with af.open_gateway_client(url, token="t") as client:
                await workflow.trigger("dup")
                await workflow.trigger("dup")
        with pytest.raises(LookupError):
            async with (
                af.open_gateway_client(url, token="t") as client,
                client.subscribe("yinyang", foreign_id="dup"),
            ):
                raise LookupError("inside subscribe")
        nursery.cancel_scope.cancel()


# -- a workflow that runs nowhere ------------------------------------------------------


async def test_memory_store_await_status_and_callback_without_a_running_workflow(
    clock: af.Clock, autojump_clock: trio.testing.MockClock
) -> None:
    workflow = yinyang(af.MemoryStore(), clock)
    run_id = await workflow.trigger("idle")  # inline: works without running
    with pytest.raises(af.ActorflowError, match="not running in this process"):
        await workflow.await_status("idle", run_id, Status.MIDDLE)
    with pytest.raises(af.ActorflowError, match="not running in this process"):
        await workflow.callback("idle", Status.MIDDLE, b"paid")
    async with af.open_workflow(workflow):
        await workflow.await_status("idle", run_id, Status.MIDDLE)
    # reached already: answered from the history, running or not
    assert (await workflow.await_status("idle", run_id, Status.MIDDLE)).status is Status.MIDDLE
    record = await workflow.callback("idle", Status.MIDDLE, b"paid")  # at the status: inline
    assert record is not None and record.status is Status.END


async def test_a_shared_store_logs_one_warning_when_nothing_moves_the_run(
    clock: af.Clock,
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with af.SQLiteStore(tmp_path / "shared.db") as store:
        workflow = yinyang(store, clock)
        run_id = await workflow.trigger("waiting")
        with caplog.at_level(logging.WARNING, "actorflow"), trio.move_on_after(3600):
            await workflow.await_status("waiting", run_id, Status.END)
    warnings = [r for r in caplog.records if "nothing moved it" in r.getMessage()]
    assert len(warnings) == 1
    assert "is a worker running" in warnings[0].getMessage()


# -- names, not numbers ----------------------------------------------------------------


def test_run_states_print_by_name() -> None:
    assert str(af.RunState.COMPLETED) == "RunState.COMPLETED"
    assert f"{af.RunState.PAUSED}" == "RunState.PAUSED"
    assert f"{af.RunState.PAUSED:d}" == "3"
    assert af.RunState.COMPLETED == 5 and int(af.RunState.COMPLETED) == 5


async def test_a_record_prints_its_status_and_run_state_by_name(
    clock: af.Clock, autojump_clock: trio.testing.MockClock
) -> None:
    workflow = yinyang(af.MemoryStore(), clock)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("p")
        record = await workflow.await_status("p", run_id, Status.MIDDLE)
    assert "status=<Status.MIDDLE: 2>" in repr(record)
    assert "run_state=<RunState.RUNNING: 2>" in repr(record)
    assert str(record.run_state) == "RunState.RUNNING"
    assert record.status.name == "MIDDLE"
    assert YinYang(yin=True) == record.object
    assert timedelta(0) <= record.updated_at - record.created_at
