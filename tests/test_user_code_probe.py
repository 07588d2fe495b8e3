"""Hostile or careless user code against the public API (API.md): steps, callbacks,
timeouts, hooks and connectors that return junk, replace the object, raise odd
BaseExceptions, call back into their own workflow, or hold objects that misbehave. Each
test states what a demanding user expects: a clear error naming the workflow, run and
function, the run retried or paused per API.md, other runs unaffected, no hang, nothing
lost and nothing done twice. Runs on MemoryStore and SQLiteStore with the autojump clock.
"""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import trio_clock, wait_for
from tests.conftest import START


class St(enum.IntEnum):
    NEW = 1
    WORKING = 2
    WAITING = 3
    DONE = 4


@attrs.define
class Doc:
    text: str = ""
    n: int = 0
    tags: list[str] = attrs.Factory(list)


@attrs.define
class Other:
    text: str = ""


Step = Any


def two_steps(
    store: af.Store, working: Step, *, name: str = "uc", pause_after_errors: int = 2, **build: Any
) -> af.Workflow[Doc, St]:
    """NEW -step-> WORKING -``working``-> WAITING -callback-> DONE."""
    b = af.Builder(name, Doc, St)

    @b.step(St.NEW, to=St.WORKING)
    async def new(run: af.Run[Doc, St]) -> St:
        run.object.n += 1
        return St.WORKING

    b.add_step(
        St.WORKING,
        working,
        to=[St.WAITING],
        pause_after_errors=pause_after_errors,
        error_backoff=timedelta(seconds=1),
    )

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        run.object.tags.append(payload.decode())
        return St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])
    build.setdefault("resume_paused_after", None)
    return b.build(store, clock=trio_clock(START), **build)


async def paused(wf: af.Workflow[Any, Any], foreign_id: str) -> af.Record[Any, Any]:
    with trio.fail_after(24 * 3600):
        return await wait_for(wf, foreign_id, lambda r: r.run_state is af.RunState.PAUSED)


async def healthy(wf: af.Workflow[Doc, St], foreign_id: str = "ok") -> None:
    """Another run of the workflow still goes all the way."""
    run_id = await wf.trigger(foreign_id)
    with trio.fail_after(24 * 3600):
        await wf.await_status(foreign_id, run_id, St.WAITING)
    assert await wf.callback(foreign_id, St.WAITING, b"fine") is not None


# --- the object replaced ------------------------------------------------------------------


@pytest.mark.parametrize(
    "replacement",
    [None, {"text": "a dict"}, Other("another class"), "text"],
    ids=["None", "dict", "other-class", "str"],
)
async def test_a_step_replacing_the_object_with_another_type_is_its_error(
    make_store: Any, replacement: Any, autojump_clock: MockClock
) -> None:
    """run.object set to something that is not a Doc: an error of that step, worded as
    such (the type expected and found, the function), counted up to the pause; nothing
    of it stored; the other runs unaffected."""
    calls: list[str] = []

    async def replaces(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "bad":
            calls.append(run.run_id)
            run.object = replacement
        return St.WAITING

    wf = two_steps(make_store(), replaces)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("bad")
        rec = await paused(wf, "bad")
        await healthy(wf)
    assert len(calls) == 2
    reason = rec.meta.run_state_reason
    assert "replaces" in reason and "Doc" in reason and type(replacement).__name__ in reason
    assert rec.status is St.WORKING and rec.object == Doc(n=1)
    assert [r.status for r in await wf.history(run_id)] == [St.NEW, St.WORKING, St.WORKING]


async def _stray_cancelled() -> trio.Cancelled:
    """A Cancelled caught inside a cancel scope of our own (to raise it outside)."""
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            return exc
    raise AssertionError("not cancelled")


# --- odd results and odd exceptions -----------------------------------------------------


async def test_a_step_returning_an_unawaited_coroutine_says_so(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A step that forgot an ``await`` (returns a coroutine): an error of that step that
    says so, and the coroutine is closed (no 'never awaited' warning later)."""

    async def helper() -> St:
        return St.WAITING

    async def forgets(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "bad":
            return helper()  # type: ignore[return-value]
        return await helper()

    wf = two_steps(make_store(), forgets)
    async with af.open_workflow(wf):
        await wf.trigger("bad")
        rec = await paused(wf, "bad")
        await healthy(wf)
    assert "coroutine" in rec.meta.run_state_reason and "await" in rec.meta.run_state_reason


async def test_a_group_holding_a_stray_cancelled_is_an_error_of_the_step(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A step whose own nursery ends with an ExceptionGroup holding a Cancelled that no
    scope of the workflow explains: an error of that step (counted, paused at the limit),
    never the end of the workflow."""

    async def grouped(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "bad":
            raise BaseExceptionGroup("from my nursery", [await _stray_cancelled(), ValueError("x")])
        return St.WAITING

    wf = two_steps(make_store(), grouped)
    async with af.open_workflow(wf):
        await wf.trigger("bad")
        rec = await paused(wf, "bad")
        await healthy(wf)
    assert "grouped" in rec.meta.run_state_reason


async def test_keyboard_interrupt_in_a_group_from_a_step_is_passed_on(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """Ctrl-C (KeyboardInterrupt), even in a group, is never swallowed as a step error."""

    async def interrupted(run: af.Run[Doc, St]) -> St:
        raise BaseExceptionGroup("g", [KeyboardInterrupt()])

    wf = two_steps(make_store(), interrupted)
    with pytest.raises(BaseException) as caught:
        async with af.open_workflow(wf):
            await wf.trigger("bad")
            await trio.sleep(3600)
    assert (
        caught.group_contains(KeyboardInterrupt)
        if isinstance(caught.value, BaseExceptionGroup)
        else isinstance(caught.value, KeyboardInterrupt)
    )


# --- calling back into the workflow --------------------------------------------------------


@pytest.mark.parametrize("in_nursery", [False, True], ids=["direct", "in-a-nursery"])
async def test_a_step_awaiting_its_own_run_gets_an_error_not_a_deadlock(
    make_store: Any, in_nursery: bool, autojump_clock: MockClock
) -> None:
    """A step that awaits a later status of its own run (itself, or a task of its own
    nursery) would wait for itself forever: an error of that step saying so (the run
    pauses at the limit; nothing hangs)."""
    holder: list[af.Workflow[Doc, St]] = []

    async def waits_for_itself(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "bad":
            wait = holder[0].await_status(run.foreign_id, run.run_id, St.DONE)
            if in_nursery:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(lambda: wait)
            else:
                await wait
        return St.WAITING

    wf = two_steps(make_store(), waits_for_itself)
    holder.append(wf)
    async with af.open_workflow(wf):
        await wf.trigger("bad")
        rec = await paused(wf, "bad")
        await healthy(wf)
    assert "itself" in rec.meta.run_state_reason


async def test_a_step_awaiting_a_status_its_run_already_reached_gets_it(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """...but awaiting a status the run has already been at answers at once."""
    holder: list[af.Workflow[Doc, St]] = []
    seen: list[int] = []

    async def looks_back(run: af.Run[Doc, St]) -> St:
        rec = await holder[0].await_status(run.foreign_id, run.run_id, St.NEW)
        seen.append(rec.version)
        return St.WAITING

    wf = two_steps(make_store(), looks_back)
    holder.append(wf)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with trio.fail_after(3600):
            await wf.await_status("f", run_id, St.WAITING)
    assert seen == [1]


async def test_steps_calling_controls_of_their_own_and_other_runs(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A step may trigger, cancel, pause or call back OTHER runs; on its own run the
    controls are refused with a clear error (no deadlock), delete_data included; a
    trigger of its own foreign id is WorkflowInProgress."""
    holder: list[af.Workflow[Doc, St]] = []
    outcomes: dict[str, str] = {}
    others: dict[str, str] = {}

    async def controls(run: af.Run[Doc, St]) -> St:
        wf = holder[0]
        if run.foreign_id != "boss":
            return St.WAITING
        for name, call in (
            ("trigger-self", lambda: wf.trigger("boss")),
            ("delete-self", lambda: wf.delete_data(run.run_id, "x")),
            ("cancel-self", lambda: wf.cancel(run.run_id, "x")),
            ("callback-self", lambda: wf.callback("boss", St.WORKING, b"x")),  # none there
        ):
            try:
                await call()
                outcomes[name] = "ok"
            except af.ActorflowError as exc:
                outcomes[name] = type(exc).__name__
        others["w"] = await wf.trigger("worker")
        await wf.await_status("worker", others["w"], St.WAITING)
        done = await wf.callback("worker", St.WAITING, b"from boss")
        assert done is not None and done.status is St.DONE
        others["c"] = await wf.trigger("victim")
        await wf.await_status("victim", others["c"], St.WAITING)
        await wf.cancel(others["c"], "by boss")
        return St.WAITING

    wf = two_steps(make_store(), controls)
    holder.append(wf)
    async with af.open_workflow(wf):
        boss = await wf.trigger("boss")
        with trio.fail_after(3600):
            await wf.await_status("boss", boss, St.WAITING)
    assert outcomes == {
        "trigger-self": "WorkflowInProgress",
        "delete-self": "InvalidTransition",
        "cancel-self": "ActorflowError",
        "callback-self": "InvalidArgument",
    }
    assert (await wf.lookup(others["c"])).run_state is af.RunState.CANCELLED
    statuses = [r.status for r in await wf.history(boss)]
    assert statuses == [St.NEW, St.WORKING, St.WAITING]


async def test_a_step_that_stops_its_workflow(make_store: Any, autojump_clock: MockClock) -> None:
    """workflow.stop() from inside a step: the step finishes and is stored, run returns;
    after a restart nothing is redone."""
    holder: list[af.Workflow[Doc, St]] = []
    calls: list[str] = []

    async def stops(run: af.Run[Doc, St]) -> St:
        calls.append(run.foreign_id)
        holder[0].stop()
        return St.WAITING

    store = make_store()
    wf = two_steps(store, stops)
    holder.append(wf)
    run_id = await wf.trigger("f")
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            await nursery.start(wf.run)
    wf2 = two_steps(make_store(), stops)
    async with af.open_workflow(wf2):
        with trio.fail_after(3600):
            rec = await wf2.await_status("f", run_id, St.WAITING)
    assert calls == ["f"]
    assert rec.version == 3


async def test_a_hook_that_triggers_the_next_run(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """on_complete triggering a new run of the same foreign id (a loop of runs) works,
    each completion making one next run (the at-least-once retry never makes two)."""
    b = af.Builder("chain", Doc, St)
    holder: list[af.Workflow[Doc, St]] = []
    made: list[str] = []

    @b.step(St.NEW, to=St.DONE)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.DONE

    async def again(record: af.Record[Doc, St]) -> None:
        if record.object.n < 3:
            made.append(
                await holder[0].trigger(record.foreign_id, initial=Doc(n=record.object.n + 1))
            )

    b.on_complete(again)
    wf = b.build(make_store(), clock=trio_clock(START))
    holder.append(wf)
    async with af.open_workflow(wf):
        await wf.trigger("f", initial=Doc(n=1))
        with trio.fail_after(3600):
            await wait_for(wf, "f", lambda r: r.object.n == 3 and r.status is St.DONE)
        await trio.sleep(600)
    runs = await wf.list_runs(foreign_id="f")
    assert [r.object.n for r in runs] == [1, 2, 3] and len(made) == 2
    assert all(r.run_state is af.RunState.COMPLETED for r in runs)


async def test_a_step_that_closes_the_store(make_store: Any, autojump_clock: MockClock) -> None:
    """A step that closes the workflow's store: the step's result cannot be stored; the
    workflow reports errors but does not hang, and stop() still returns."""

    async def closes(run: af.Run[Doc, St]) -> St:
        await run_store[0].aclose()
        return St.WAITING

    run_store = [make_store()]
    wf = two_steps(run_store[0], closes)
    await wf.trigger("f")
    with trio.fail_after(3600):
        async with af.open_workflow(wf):
            await trio.sleep(60)
