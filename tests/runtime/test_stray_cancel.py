"""A ``trio.Cancelled`` that user code raises while nothing cancelled it is an error of
that code like any other: counted, logged, retried. It never ends ``workflow.run()``,
which returns only after ``stop()`` or a cancel from outside."""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import NoReturn

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import wait_for


class Two(enum.IntEnum):
    A = 1
    B = 2


@attrs.define
class Obj:
    n: int = 0


async def stray_cancelled() -> NoReturn:
    """Raise a Cancelled caught inside a cancel scope of our own, outside that scope."""
    caught: trio.Cancelled | None = None
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            caught = exc
    assert caught is not None
    raise caught


async def still_serves(workflow: af.Workflow[Obj, Two], foreign_id: str) -> None:
    """The workflow still processes new triggers."""
    await workflow.trigger(foreign_id)
    await wait_for(workflow, foreign_id, lambda r: r.status is Two.B)


async def test_a_step_raising_a_stray_cancelled_is_a_step_error(
    clock: af.Clock, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    builder = af.Builder("stray-step", Obj, Two)
    calls = 0

    @builder.step(Two.A, to=Two.B)
    async def flaky(run: af.Run[Obj, Two]) -> Two:
        nonlocal calls
        calls += 1
        if calls == 1:
            await stray_cancelled()
        return Two.B

    workflow = builder.build(af.MemoryStore(), clock=clock)
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            await nursery.start(workflow.run)
            await workflow.trigger("f")
            await wait_for(workflow, "f", lambda r: r.status is Two.B)
            await still_serves(workflow, "g")
            assert workflow.running
            workflow.stop()
    assert calls == 3
    assert "raised trio.Cancelled while nothing around it was cancelled" in caplog.text


async def test_a_timeout_raising_a_stray_cancelled_is_retried(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("stray-timeout", Obj, Two)
    calls = 0

    async def flaky(run: af.Run[Obj, Two], now: datetime) -> Two:
        nonlocal calls
        calls += 1
        if calls == 1:
            await stray_cancelled()
        return Two.B

    builder.add_timeout(Two.A, af.after(timedelta(minutes=1)), flaky, to=Two.B)
    workflow = builder.build(af.MemoryStore(), clock=clock)
    with trio.fail_after(3600):
        async with af.open_workflow(workflow):
            await workflow.trigger("f")
            await wait_for(workflow, "f", lambda r: r.status is Two.B)
            await still_serves(workflow, "g")
    assert calls == 3


async def test_a_callback_raising_a_stray_cancelled_fails_that_call_only(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("stray-callback", Obj, Two)
    calls = 0

    async def flaky(run: af.Run[Obj, Two], payload: bytes) -> Two:
        nonlocal calls
        calls += 1
        if calls == 1:
            await stray_cancelled()
        return Two.B

    builder.add_callback(Two.A, flaky, to=Two.B)
    workflow = builder.build(af.MemoryStore(), clock=clock)
    with trio.fail_after(3600):
        async with af.open_workflow(workflow):
            await workflow.trigger("f")
            with pytest.raises(af.StepError, match=r"trio\.Cancelled"):
                await workflow.callback("f", Two.A, b"")
            record = await workflow.callback("f", Two.A, b"")
            assert record is not None and record.status is Two.B
            assert workflow.running


async def test_a_hook_raising_a_stray_cancelled_is_retried(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("stray-hook", Obj, Two)
    calls: list[str] = []

    @builder.step(Two.A, to=Two.B)
    async def done(run: af.Run[Obj, Two]) -> Two:
        return Two.B

    called = trio.Event()

    @builder.on_complete
    async def flaky(record: af.Record[Obj, Two]) -> None:
        nonlocal called
        calls.append(record.foreign_id)
        called.set()
        called = trio.Event()
        if len(calls) == 1:
            await stray_cancelled()

    workflow = builder.build(af.MemoryStore(), clock=clock)
    with trio.fail_after(3600):
        async with af.open_workflow(workflow):
            await workflow.trigger("f")
            while len(calls) < 2:
                await called.wait()
            await still_serves(workflow, "g")
            while len(calls) < 3:
                await called.wait()
    assert calls == ["f", "f", "g"]


async def test_a_connector_raising_a_stray_cancelled_is_retried(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("stray-connector", Obj, Two)
    calls: list[str] = []

    @builder.step(Two.A, to=Two.B)
    async def done(run: af.Run[Obj, Two]) -> Two:
        return Two.B

    async def flaky(workflow: af.Workflow[Obj, Two], event: af.ConnectorEvent) -> None:
        calls.append(event.id)
        if len(calls) == 1:
            await stray_cancelled()
        await workflow.trigger(event.foreign_id)

    event = af.ConnectorEvent(id="1", foreign_id="f", type="x", headers={}, created_at=clock.now())
    builder.add_connector("source", af.MemorySource([event]), flaky)
    workflow = builder.build(af.MemoryStore(), clock=clock)
    with trio.fail_after(3600):
        async with af.open_workflow(workflow):
            await wait_for(workflow, "f", lambda r: r.status is Two.B)
            await still_serves(workflow, "g")
    assert calls == ["1", "1"]


async def test_a_schedule_filter_raising_a_stray_cancelled_is_asked_again(
    clock: af.Clock, autojump_clock: MockClock
) -> None:
    builder = af.Builder("stray-filter", Obj, Two)

    @builder.step(Two.A, to=Two.B)
    async def done(run: af.Run[Obj, Two]) -> Two:
        return Two.B

    workflow = builder.build(af.MemoryStore(), clock=clock)
    asked: list[datetime] = []

    async def flaky(when: datetime) -> bool:
        asked.append(when)
        if len(asked) == 1:
            await stray_cancelled()
        return True

    with trio.fail_after(3 * 3600):
        async with af.open_workflow(workflow), trio.open_nursery() as nursery:
            nursery.start_soon(lambda: workflow.schedule_trigger("report", "@hourly", filter=flaky))
            await wait_for(workflow, "report", lambda r: r.status is Two.B)
            nursery.cancel_scope.cancel()
    assert len(asked) == 2 and asked[0] == asked[1]
