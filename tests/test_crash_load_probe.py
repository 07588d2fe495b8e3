"""Crash and load probe, written from the public contract (API.md) and the docs: user code
that ends the process in the middle of a call, callers cancelled at every checkpoint, kill -9
of worker processes at random points (connectors, hooks, schedules, timeouts), PostgreSQL
backends terminated mid-commit. Runs survive, nothing is lost, nothing is done twice that a
user can see.
"""

from __future__ import annotations

import enum
from collections import Counter
from datetime import timedelta
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import trio_clock, wait_for
from tests.conftest import START


class C(enum.IntEnum):
    NEW = 1
    WAITING = 2
    DONE = 3


@attrs.define
class Box:
    notes: list[str] = attrs.Factory(list)


def waiting(store: af.Store, answer: Any, **build: Any) -> af.Workflow[Box, C]:
    """NEW -step-> WAITING -callback ``answer``-> DONE."""
    b = af.Builder("cb", Box, C)

    @b.step(C.NEW, to=C.WAITING)
    async def go(run: af.Run[Box, C]) -> C:
        return C.WAITING

    b.add_callback(C.WAITING, answer, to=[C.DONE])
    return b.build(store, clock=trio_clock(START), **build)


# --- user code ending the process in a callback ----------------------------------------------


@pytest.mark.parametrize("ending", [SystemExit, KeyboardInterrupt])
async def test_a_callback_ending_the_process_runs_once(
    make_store: Any, ending: type[BaseException], autojump_clock: MockClock
) -> None:
    """A callback function raising SystemExit (or KeyboardInterrupt) through the run's
    actor ends the worker as in any Python program, and is called once: the caller's
    fallback (for an actor that stopped before it took the call) must not call it again."""
    calls: Counter[str] = Counter()

    async def answer(run: af.Run[Box, C], payload: bytes) -> C:
        calls[run.foreign_id] += 1
        raise ending(3)

    wf = waiting(make_store(), answer)
    outcome: list[BaseException] = []
    with pytest.raises(BaseException) as caught:
        async with af.open_workflow(wf):
            run_id = await wf.trigger("x")
            await wf.await_status("x", run_id, C.WAITING)
            try:
                await wf.callback("x", C.WAITING, b"pay")
            except BaseException as exc:
                outcome.append(exc)
                raise
    assert (
        caught.group_contains(ending)
        if isinstance(caught.value, BaseExceptionGroup)
        else isinstance(caught.value, ending)
    ), caught.value
    assert calls == {"x": 1}, (calls, outcome)
    # Nothing was stored: after a restart the run still waits for its callback.
    wf = waiting(make_store(), _done)
    async with af.open_workflow(wf):
        rec = await wf.callback("x", C.WAITING, b"again")
        assert rec is not None and rec.status is C.DONE


async def _done(run: af.Run[Box, C], payload: bytes) -> C:
    return C.DONE


async def test_a_scrub_function_ending_the_process_runs_once(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """The same for delete_data through the run's actor: a scrub function raising
    SystemExit is called once; after a restart the deletion can be asked again."""
    calls: list[int] = []

    def scrub(box: Box) -> Box:
        calls.append(1)
        raise SystemExit(4)

    wf = waiting(make_store(), _done, scrub=scrub)
    with pytest.raises(BaseException) as caught:
        async with af.open_workflow(wf):
            run_id = await wf.trigger("x")
            await wf.await_status("x", run_id, C.WAITING)
            await wf.callback("x", C.WAITING, b"pay")
            await wf.delete_data(run_id, "erasure")
    assert (
        caught.group_contains(SystemExit)
        if isinstance(caught.value, BaseExceptionGroup)
        else isinstance(caught.value, SystemExit)
    ), caught.value
    assert calls == [1]
    wf = waiting(make_store(), _done)
    async with af.open_workflow(wf):
        rec = await wf.delete_data(run_id, "erasure")
        assert rec.run_state in (af.RunState.REQUESTED_DATA_DELETED, af.RunState.DATA_DELETED)
        with trio.fail_after(60):
            await wait_for(wf, "x", lambda r: r.run_state is af.RunState.DATA_DELETED)


# --- a schedule ending between the claim of a cron time and its trigger ------------------------


class Three(enum.IntEnum):
    A = 1
    B = 2


def one_step(store: af.Store) -> af.Workflow[Box, Three]:
    b = af.Builder("sched", Box, Three)

    @b.step(Three.A, to=Three.B)
    async def go(run: af.Run[Box, Three]) -> Three:
        return Three.B

    return b.build(store, clock=trio_clock(START))


@pytest.mark.parametrize("where", ["after the claim", "in the trigger"])
async def test_a_schedule_ended_between_claim_and_trigger_fires_that_time_after_a_restart(
    make_store: Any, where: str, autojump_clock: MockClock
) -> None:
    """The process ends (kill -9, or the schedule's task is cancelled) after a cron time
    was claimed and before its run was stored: the next start triggers that time, once.
    (It used to be lost: claimed, so never fired, and never triggered.)"""
    store = make_store()
    claim = store.claim_schedule
    create = store.create_run
    died = trio.CancelScope()

    async def claim_then_die(key: str, fire_at: Any) -> bool:
        claimed: bool = await claim(key, fire_at)
        if where == "after the claim" and key.startswith("schedule:"):
            died.cancel()  # the process ends here: nothing after this is done
        return claimed

    async def create_then_die(*args: Any, **kwargs: Any) -> Any:
        died.cancel()  # cancelled while the trigger's write waits: never sent
        await trio.lowlevel.checkpoint()
        return await create(*args, **kwargs)

    store.claim_schedule = claim_then_die
    if where == "in the trigger":
        store.create_run = create_then_die
    wf = one_step(store)
    with died:
        async with af.open_workflow(wf):
            await wf.schedule_trigger("report", "@hourly")
    assert died.cancelled_caught
    store.claim_schedule, store.create_run = claim, create
    assert await wf.list_runs() == []  # 10:00 claimed, not triggered
    first = START + timedelta(hours=1)

    wf = one_step(make_store())  # the restart, at 10:00 still (or a little later)
    async with af.open_workflow(wf), trio.open_nursery() as nursery:
        nursery.start_soon(wf.schedule_trigger, "report", "@hourly")
        with trio.fail_after(600):
            rec = await wait_for(wf, "report", lambda r: r.status is Three.B)
        assert first <= rec.created_at < first + timedelta(minutes=10)
        await trio.sleep(2.5 * 3600)  # 11:00 and 12:00 fire as usual
        nursery.cancel_scope.cancel()
    runs = await wf.list_runs()
    assert [(r.created_at - first) // timedelta(hours=1) for r in runs] == [0, 1, 2]
    # A second restart finds every time fired: nothing again.
    wf = one_step(make_store())
    async with af.open_workflow(wf):
        with trio.move_on_after(600):
            await wf.schedule_trigger("report", "@hourly")
    assert len(await wf.list_runs()) == 3
