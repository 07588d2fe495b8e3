"""Hostile or careless user code against the public API (API.md): steps, callbacks,
timeouts, hooks and connectors that return junk, replace the object, raise odd
BaseExceptions, call back into their own workflow, or hold objects that misbehave. Each
test states what a demanding user expects: a clear error naming the workflow, run and
function, the run retried or paused per API.md, other runs unaffected, no hang, nothing
lost and nothing done twice. Runs on MemoryStore and SQLiteStore with the autojump clock.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
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


async def paused_alone(wf: af.Workflow[Doc, St]) -> af.Record[Doc, St]:
    """Run ``wf``: its run "bad" ends paused by its error, while another run goes all the
    way; the paused version."""
    async with af.open_workflow(wf):
        await wf.trigger("bad")
        rec = await paused(wf, "bad")
        await healthy(wf)
    return rec


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
    rec = await paused_alone(wf)
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
    rec = await paused_alone(wf)
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
    rec = await paused_alone(wf)
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


# --- cancellation swallowed, functions that never end ---------------------------------------


async def test_a_step_swallowing_the_interrupt_of_a_pause_stores_nothing(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """pause() of a run whose step hangs interrupts the step after the grace period; a
    step that swallows that Cancelled and returns a status anyway has its result dropped
    (as for a step that obeys): the run is paused at the status it was at, and the
    interrupted step's status is not stored."""
    entered = trio.Event()

    async def swallows(run: af.Run[Doc, St]) -> St:
        entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            run.object.tags.append("after the interrupt")
        run.object.tags.append("and on")
        return St.WAITING

    wf = two_steps(make_store(), swallows)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        await entered.wait()
        with trio.fail_after(3600):
            rec = await wf.pause(run_id, "hold")
        assert rec.run_state is af.RunState.PAUSED and rec.status is St.WORKING
        await trio.sleep(60)
    history = await wf.history(run_id)
    assert [(r.status, r.run_state) for r in history] == [
        (St.NEW, af.RunState.INITIATED),
        (St.WORKING, af.RunState.RUNNING),
        (St.WORKING, af.RunState.PAUSED),
    ]
    assert all(not r.object.tags for r in history)


async def test_stop_ends_a_step_that_never_ends_within_the_grace_period(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A step sleeping forever (or swallowing one Cancelled and sleeping again) does not
    keep stop() from returning after the grace period; the run resumes at the next start."""
    grace = 30.0
    entered: list[str] = []
    both_in = trio.Event()

    async def forever(run: af.Run[Doc, St]) -> St:
        entered.append(run.foreign_id)
        if len(entered) == 2:
            both_in.set()
        if len(entered) > 2:
            return St.WAITING
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            if run.foreign_id == "stubborn":
                await trio.sleep_forever()  # cancelled again at once
            raise
        raise AssertionError

    store = make_store()
    wf = two_steps(store, forever, grace_period=timedelta(seconds=grace))
    a = await wf.trigger("plain")
    b = await wf.trigger("stubborn")
    async with trio.open_nursery() as nursery:
        await nursery.start(wf.run)
        await both_in.wait()
        began = trio.current_time()
        wf.stop()
    assert trio.current_time() - began <= grace + 1
    wf2 = two_steps(make_store(), forever)
    async with af.open_workflow(wf2):
        with trio.fail_after(3600):
            for fid, run_id in (("plain", a), ("stubborn", b)):
                rec = await wf2.await_status(fid, run_id, St.WAITING)
                assert rec.version == 3


# --- objects that misbehave ----------------------------------------------------------------


@attrs.define(eq=False)
class Touchy:
    """An object whose __eq__, __hash__ and __repr__ raise."""

    n: int = 0

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no __eq__ for you")

    def __hash__(self) -> int:
        raise RuntimeError("no __hash__ for you")

    def __repr__(self) -> str:
        raise RuntimeError("no __repr__ for you")


async def test_objects_whose_eq_hash_and_repr_raise_go_all_the_way(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """The engine never compares, hashes or prints the user's object: a run of such an
    object goes through steps, a timeout, a callback, hooks, subscriptions, queries and
    delete_data as any other."""
    hooked: list[str] = []
    hook_called = trio.Event()
    b = af.Builder("touchy", Touchy, St)

    @b.step(St.NEW, to=St.WORKING)
    async def go(run: af.Run[Touchy, St]) -> St:
        run.object.n += 1
        return St.WORKING

    async def late(run: af.Run[Touchy, St], now: datetime) -> St:
        run.object.n += 10
        return St.WAITING

    b.add_timeout(St.WORKING, af.after(timedelta(minutes=5)), late, to=[St.WAITING])

    async def answer(run: af.Run[Touchy, St], payload: bytes) -> St:
        run.object.n += 100
        return St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])

    async def on_complete(record: af.Record[Touchy, St]) -> None:
        hooked.append(record.run_id)
        hook_called.set()

    b.on_complete(on_complete)
    wf = b.build(make_store(), clock=trio_clock(START))
    async with af.open_workflow(wf):
        async with wf.subscribe(foreign_id="f") as changes:
            run_id = await wf.trigger("f", initial=Touchy(n=0))
            with trio.fail_after(3600):
                await wf.await_status("f", run_id, St.WAITING)
            done = await wf.callback("f", St.WAITING, b"x")
            assert done is not None and done.object.n == 111
            seen = []
            with trio.fail_after(3600):
                async for rec in changes:
                    seen.append(rec.status)
                    if rec.status is St.DONE:
                        break
        with trio.fail_after(3600):
            await hook_called.wait()
        assert [r.object.n for r in await wf.history(run_id)] == [0, 1, 11, 111]
        assert len(await wf.list_runs()) == 1
        deleted = await wf.delete_data(run_id, "gone")
        assert deleted.object.n == 0
    assert seen[-1] is St.DONE and hooked == [run_id]


_strict = [False]


def _positive_when_strict(instance: Any, attribute: Any, value: int) -> None:
    if _strict[0] and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0 now, got {value}")


@attrs.define
class Validated:
    n: int = attrs.field(default=0, validator=_positive_when_strict)


async def test_an_object_whose_validator_refuses_the_stored_json(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A stored object that no longer passes its class's validator (the code changed
    between two starts): the run's step errors with a message naming the run and the
    object type, the run is paused at the limit, lookup/history still show the stored
    data, and other runs go on; a callback to it raises a clear error and changes nothing."""

    def build(store: af.Store) -> af.Workflow[Validated, St]:
        b = af.Builder("validated", Validated, St)

        @b.step(St.NEW, to=St.WORKING)
        async def go(run: af.Run[Validated, St]) -> St:
            run.object.n = -1 if run.foreign_id == "bad" else 1
            return St.WORKING

        @b.step(St.WORKING, to=St.WAITING, pause_after_errors=2)
        async def work(run: af.Run[Validated, St]) -> St:
            return St.WAITING if _strict[0] else run.skip()  # waits for the new code

        async def answer(run: af.Run[Validated, St], payload: bytes) -> St:
            return St.DONE

        b.add_callback(St.WAITING, answer, to=[St.DONE])
        b.add_callback(St.WORKING, answer, to=[St.DONE])
        return b.build(store, clock=trio_clock(START), resume_paused_after=None)

    _strict[0] = False
    try:
        wf = build(make_store())
        async with af.open_workflow(wf):
            bad = await wf.trigger("bad")
            with trio.fail_after(60):
                await wf.await_status("bad", bad, St.WORKING)
        _strict[0] = True  # the new code refuses what the old code stored
        wf = build(make_store())
        async with af.open_workflow(wf):
            rec = await paused(wf, "bad")
            assert "Validated" in rec.meta.run_state_reason and bad in rec.meta.run_state_reason
            assert rec.object == {"n": -1} or getattr(rec.object, "n", None) == -1
            ok = await wf.trigger("ok")
            with trio.fail_after(3600):
                await wf.await_status("ok", ok, St.WAITING)
            await wf.resume(bad)
            with pytest.raises(af.ActorflowError, match="Validated"):
                await wf.callback("bad", St.WORKING, b"x")
            assert all(r.status is not St.DONE for r in await wf.history(bad))
    finally:
        _strict[0] = False


@attrs.frozen
class Frozen:
    n: int = 0
    tags: tuple[str, ...] = ()


@attrs.define(slots=True)
class Slotted:
    n: int = 0


async def test_frozen_and_slotted_objects(make_store: Any, autojump_clock: MockClock) -> None:
    """A frozen object cannot be changed in place (an error of the step, saying so); a
    step assigning a new one (attrs.evolve) works; slotted classes work as any."""
    b = af.Builder("frozen", Frozen, St)

    @b.step(St.NEW, to=St.WAITING, pause_after_errors=1)
    async def go(run: af.Run[Frozen, St]) -> St:
        if run.foreign_id == "in-place":
            run.object.n = 5  # type: ignore[misc]
        run.object = attrs.evolve(run.object, n=run.object.n + 1, tags=(*run.object.tags, "x"))
        return St.WAITING

    wf = b.build(make_store(), clock=trio_clock(START), resume_paused_after=None)
    s = af.Builder("slotted", Slotted, St)

    @s.step(St.NEW, to=St.WAITING)
    async def inc(run: af.Run[Slotted, St]) -> St:
        run.object.n += 1
        return St.WAITING

    wf2 = s.build(make_store(), clock=trio_clock(START))
    async with af.open_workflow(wf, wf2):
        run_id = await wf.trigger("f", initial=Frozen(n=1))
        with trio.fail_after(3600):
            rec = await wf.await_status("f", run_id, St.WAITING)
        assert rec.object == Frozen(n=2, tags=("x",))
        await wf.trigger("in-place")
        stuck = await paused(wf, "in-place")
        assert "FrozenInstanceError" in stuck.meta.run_state_reason
        other = await wf2.trigger("s", initial=Slotted(n=4))
        with trio.fail_after(3600):
            assert (await wf2.await_status("s", other, St.WAITING)).object == Slotted(n=5)


@attrs.define
class Nested:
    data: list[Any] = attrs.Factory(list)


def _nest(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [50, 400, 900, 5000])
async def test_deeply_nested_objects_are_stored_whole_or_refused(
    make_store: Any, depth: int, autojump_clock: MockClock
) -> None:
    """A deeply nested object is either stored and read back whole everywhere (the
    step's next run, lookup, history), or refused where it is made (an error of that
    step, a clear error of trigger): never stored and then unreadable."""
    b = af.Builder("nested", Nested, St)

    @b.step(St.NEW, to=St.WORKING, pause_after_errors=1)
    async def deepen(run: af.Run[Nested, St]) -> St:
        run.object.data = _nest(depth)
        return St.WORKING

    @b.step(St.WORKING, to=St.WAITING, pause_after_errors=1)
    async def read(run: af.Run[Nested, St]) -> St:
        assert run.object.data == _nest(depth)
        return St.WAITING

    wf = b.build(make_store(), clock=trio_clock(START), resume_paused_after=None)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with trio.fail_after(3600):
            rec = await wait_for(
                wf, "f", lambda r: r.status is St.WAITING or r.run_state is af.RunState.PAUSED
            )
        if rec.run_state is af.RunState.PAUSED:
            assert rec.status is St.NEW, rec.meta.run_state_reason
            assert "deepen" in rec.meta.run_state_reason
        else:
            assert (await wf.lookup(run_id)).object.data == _nest(depth)
            assert (await wf.history(run_id))[-1].object.data == _nest(depth)
        try:
            other = await wf.trigger("initial", initial=Nested(_nest(depth)))
        except af.ActorflowError as exc:
            assert "Nested" in str(exc)
        else:
            assert (await wf.lookup(other)).object.data == _nest(depth)


async def test_a_timer_function_raising_a_base_exception_is_named(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A timer function (the ``timer`` of add_timeout) raising GeneratorExit: an error
    naming the timer, counted against the step that led there, the run paused at the
    limit; other runs unaffected."""

    def timer(run: af.Run[Doc, St], now: datetime) -> datetime | None:
        if run.foreign_id == "bad":
            raise GeneratorExit("timer closing")
        return None

    b = af.Builder("timers", Doc, St)

    @b.step(St.NEW, to=St.WAITING, pause_after_errors=2)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def late(run: af.Run[Doc, St], now: datetime) -> St:
        return St.DONE

    b.add_timeout(St.WAITING, timer, late, to=[St.DONE])

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        return St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])
    wf = b.build(make_store(), clock=trio_clock(START), resume_paused_after=None)
    async with af.open_workflow(wf):
        await wf.trigger("bad")
        rec = await paused(wf, "bad")
        await healthy(wf)  # type: ignore[arg-type]
    reason = rec.meta.run_state_reason
    assert "of status" in reason and "GeneratorExit" in reason, reason


async def test_a_hook_deleting_the_data_of_its_run(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """on_complete calling delete_data on the run it was told about: the data is
    deleted once; the hook is not called again for the deletion."""
    holder: list[af.Workflow[Doc, St]] = []
    calls: list[af.RunState] = []
    b = af.Builder("erase", Doc, St)

    @b.step(St.NEW, to=St.DONE)
    async def go(run: af.Run[Doc, St]) -> St:
        run.object.text = "secret"
        return St.DONE

    async def erase(record: af.Record[Doc, St]) -> None:
        calls.append(record.run_state)
        await holder[0].delete_data(record.run_id, "erase on completion")

    b.on_complete(erase)
    wf = b.build(make_store(), clock=trio_clock(START))
    holder.append(wf)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with trio.fail_after(3600):
            await wait_for(wf, "f", lambda r: r.run_state is af.RunState.DATA_DELETED)
        await trio.sleep(3600)
    assert calls == [af.RunState.COMPLETED]
    history = await wf.history(run_id)
    assert all(r.object.text == "" for r in history)
    assert [r.run_state for r in history][-2:] == [
        af.RunState.REQUESTED_DATA_DELETED,
        af.RunState.DATA_DELETED,
    ]


# --- more re-entrancy -----------------------------------------------------------------------


async def test_a_step_starting_its_own_workflow_again_is_refused(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A step that calls ``workflow.run`` of its own (running) workflow: a clear error of
    that step; the workflow keeps running and the run pauses at the limit."""
    holder: list[af.Workflow[Doc, St]] = []

    async def starts_again(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "bad":
            async with trio.open_nursery() as nursery:
                await nursery.start(holder[0].run)
        return St.WAITING

    wf = two_steps(make_store(), starts_again)
    holder.append(wf)
    rec = await paused_alone(wf)
    assert "already running" in rec.meta.run_state_reason


async def test_a_step_calling_back_its_own_run_is_refused(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A step of a status that also has a callback, calling that callback on its own run
    (from a task of its nursery too): refused at once, no deadlock."""
    holder: list[af.Workflow[Doc, St]] = []
    errors: list[str] = []
    b = af.Builder("selfcall", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        async def call() -> None:
            try:
                await holder[0].callback(run.foreign_id, St.NEW, b"me")
            except af.ActorflowError as exc:
                errors.append(str(exc))

        await call()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
        return St.WAITING

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        return St.DONE

    b.add_callback(St.NEW, answer, to=[St.DONE])
    b.add_callback(St.WAITING, answer, to=[St.DONE])
    wf = b.build(make_store(), clock=trio_clock(START))
    holder.append(wf)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with trio.fail_after(60):
            await wf.await_status("f", run_id, St.WAITING)
    assert len(errors) == 2 and all("its own run" in e for e in errors)
    assert [r.status for r in await wf.history(run_id)] == [St.NEW, St.WAITING]


async def test_a_callback_replacing_the_object_fails_its_caller_only(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A callback setting run.object to a dict: its caller gets an error saying so, and
    nothing is stored; a good callback then goes through."""
    b = af.Builder("cbobj", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        if payload == b"dict":
            run.object = {"text": "x"}  # type: ignore[assignment]
        return St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])
    wf = b.build(make_store(), clock=trio_clock(START))
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with trio.fail_after(60):
            await wf.await_status("f", run_id, St.WAITING)
        with pytest.raises(af.ActorflowError, match=r"run\.object to dict; it must be a Doc"):
            await wf.callback("f", St.WAITING, b"dict")
        assert len(await wf.history(run_id)) == 2
        assert await wf.callback("f", St.WAITING, b"ok") is not None


async def test_save_and_repeat_forever_does_not_hold_stop_or_other_runs(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A step that always returns run.save_and_repeat() (a loop with no exit): other runs
    still go through, and stop() returns promptly."""
    loops: list[int] = []

    async def loops_forever(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "loop":
            run.object.n += 1
            loops.append(run.object.n)
            return run.save_and_repeat()
        return St.WAITING

    wf = two_steps(make_store(), loops_forever, grace_period=timedelta(seconds=5))
    async with trio.open_nursery() as nursery:
        await nursery.start(wf.run)
        await wf.trigger("loop")
        with trio.fail_after(60):
            await healthy(wf)
        began = trio.current_time()
        wf.stop()
    assert trio.current_time() - began <= 6
    assert len(loops) > 1
    rec = await wf.latest("loop")
    assert rec.object.n == loops[-1] + 1 or rec.object.n == loops[-1]


def test_an_async_generator_is_refused_at_build_with_a_clear_message() -> None:
    """``async def`` with a ``yield`` is not a step: the BuildError says why (it used to
    say the function was not async, which it looks like it is)."""
    b = af.Builder("agen", Doc, St)

    async def step(run: af.Run[Doc, St]) -> Any:
        yield St.DONE

    with pytest.raises(af.BuildError, match="async generator"):
        b.add_step(St.NEW, step, to=St.DONE)


async def test_a_hanging_callback_does_not_hold_cancel_forever(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A callback function that never returns, called without a timeout: cancel() of that
    run still goes through after the grace period (as for a hanging step), and the
    callback's caller gets an error rather than waiting forever; nothing of the callback
    is stored."""
    entered = trio.Event()
    caller_got: list[str] = []
    b = af.Builder("hangcb", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def hangs(run: af.Run[Doc, St], payload: bytes) -> St:
        run.object.text = "from the callback"
        entered.set()
        await trio.sleep_forever()
        return St.DONE

    b.add_callback(St.WAITING, hangs, to=[St.DONE])
    wf = b.build(make_store(), clock=trio_clock(START), grace_period=timedelta(seconds=10))

    async def call_back() -> None:
        try:
            await wf.callback("f", St.WAITING, b"x")
            caller_got.append("returned")
        except af.ActorflowError as exc:
            worded = "interrupted" if "was interrupted" in str(exc) else str(exc)
            caller_got.append(f"{type(exc).__name__}: {worded}")

    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with trio.fail_after(60):
            await wf.await_status("f", run_id, St.WAITING)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_back)
            await entered.wait()
            with trio.fail_after(3600):
                cancelled = await wf.cancel(run_id, "give up")
        assert cancelled.run_state is af.RunState.CANCELLED
    assert caller_got == ["CallbackError: interrupted"]
    assert all(r.object.text == "" for r in await wf.history(run_id))


async def test_a_connector_or_hook_returning_an_unawaited_coroutine_is_retried(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """``return workflow.trigger(...)`` without ``await`` in a connector function, or a
    hook returning the coroutine of its notification: an error (retried), never a silent
    loss of the event or of the notification."""
    holder: list[af.Workflow[Doc, St]] = []
    connector_calls: list[int] = []
    hook_calls: list[int] = []
    notified: list[str] = []
    was_notified = trio.Event()
    b = af.Builder("lazy", Doc, St)

    @b.step(St.NEW, to=St.DONE)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.DONE

    async def on_event(workflow: Any, event: af.ConnectorEvent) -> Any:
        connector_calls.append(1)
        if len(connector_calls) == 1:
            return workflow.trigger(event.foreign_id)  # forgot the await
        return await workflow.trigger(event.foreign_id)

    b.add_connector("events", af.MemorySource([_event("e1", "from-event")]), on_event)

    async def notify(record: af.Record[Doc, St]) -> None:
        notified.append(record.foreign_id)
        was_notified.set()

    async def on_done(record: af.Record[Doc, St]) -> Any:
        hook_calls.append(1)
        if len(hook_calls) == 1:
            return notify(record)  # forgot the await
        await notify(record)
        return None

    b.on_complete(on_done)
    wf = b.build(make_store(), clock=trio_clock(START))
    holder.append(wf)
    async with af.open_workflow(wf):
        with trio.fail_after(3600):
            rec = await wait_for(wf, "from-event", lambda r: r.status is St.DONE)
            await was_notified.wait()
    assert rec.run_state is af.RunState.COMPLETED
    assert len(connector_calls) == 2 and len(hook_calls) == 2 and notified == ["from-event"]


def _event(event_id: str, foreign_id: str) -> af.ConnectorEvent:
    return af.ConnectorEvent(
        id=event_id, foreign_id=foreign_id, type="t", headers={}, created_at=START
    )


async def test_stop_returns_within_the_grace_with_every_kind_of_function_hanging(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A step, a timeout, a hook, a connector function and a schedule filter that all
    hang (one swallowing its first Cancelled): stop() still returns within the grace
    period (plus a little), and what they were doing is done again after a restart."""
    grace = 20.0
    started: set[str] = set()
    all_in = trio.Event()
    hang = [True]

    def entered(what: str) -> None:
        started.add(what)
        if len(started) == 5:
            all_in.set()

    async def hanging(what: str) -> None:
        entered(what)
        if not hang[0]:
            return
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            await trio.sleep_forever()  # swallowing once: cancelled again at once

    b = af.Builder("hangs", Doc, St)

    @b.step(St.NEW, to=St.WORKING)
    async def go(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "step":
            await hanging("step")
        return St.WORKING

    async def late(run: af.Run[Doc, St], now: datetime) -> St:
        await hanging("timeout")
        return St.DONE

    b.add_timeout(St.WORKING, af.after(timedelta(minutes=1)), late, to=[St.DONE])

    async def on_done(record: af.Record[Doc, St]) -> None:
        if record.foreign_id == "done":
            await hanging("hook")

    b.on_complete(on_done)

    async def on_event(workflow: Any, event: af.ConnectorEvent) -> None:
        await hanging("connector")

    b.add_connector("events", af.MemorySource([_event("e1", "x")]), on_event)
    store = make_store()
    wf = b.build(store, clock=trio_clock(START), grace_period=timedelta(seconds=grace))

    async def filter_hangs() -> bool:
        await hanging("filter")
        return False

    schedule_scope = trio.CancelScope()

    async def schedule() -> None:
        with schedule_scope:
            await wf.schedule_trigger("cron", "* * * * *", filter=filter_hangs)

    step_run = await wf.trigger("step")
    async with trio.open_nursery() as nursery:
        await nursery.start(wf.run)
        nursery.start_soon(schedule)
        done_run = await wf.trigger("done")
        hang[0] = False  # "done" runs its timeout through once, to reach its hook
        await wf.await_status("done", done_run, St.DONE)
        hang[0] = True
        await wf.trigger("timeout")
        with trio.fail_after(3600):
            await all_in.wait()
        began = trio.current_time()
        wf.stop()
        schedule_scope.cancel()  # schedule_trigger runs until its caller cancels it
    assert trio.current_time() - began <= grace + 2
    hang[0] = False
    wf2 = b.build(make_store(), clock=trio_clock(START))
    async with af.open_workflow(wf2):
        with trio.fail_after(3600):
            await wf2.await_status("step", step_run, St.DONE)


async def test_a_step_overwriting_the_runs_identifiers_changes_nothing(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A step that assigns run.run_id, run.foreign_id or run.status (say, reusing the
    name for a run it triggered): its own run moves on, and the timeout of the status it
    returned fires for its own run (it used to be stored under the assigned run id)."""
    holder: list[af.Workflow[Doc, St]] = []
    fired: list[str] = []
    b = af.Builder("ids", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "main":
            run.run_id = await holder[0].trigger("other")
            run.foreign_id = "other"
            run.status = St.DONE
        return St.WAITING

    async def late(run: af.Run[Doc, St], now: datetime) -> St:
        fired.append(run.foreign_id)
        return St.DONE

    b.add_timeout(St.WAITING, af.after(timedelta(hours=1)), late, to=[St.DONE])
    wf = b.build(make_store(), clock=trio_clock(START))
    holder.append(wf)
    async with af.open_workflow(wf):
        main = await wf.trigger("main")
        with trio.fail_after(3 * 3600):
            await wf.await_status("main", main, St.DONE)
            other = (await wf.latest("other")).run_id
            await wf.await_status("other", other, St.DONE)
    assert sorted(fired) == ["main", "other"]


async def test_two_runs_calling_each_other_back_get_an_error_not_a_deadlock(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """Run A's step calls back run B, whose callback calls back run A (busy in that very
    step): each would wait for the other's actor forever. The inner call is refused with
    an error saying so; A's step gets B's CallbackError and goes on."""
    holder: list[af.Workflow[Doc, St]] = []
    seen: list[str] = []
    b = af.Builder("mutual", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "A":
            try:
                await holder[0].callback("B", St.WAITING, b"call A")
            except af.ActorflowError as exc:
                seen.append(f"A got {type(exc).__name__}: {exc}")
        return St.WAITING

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        if payload == b"call A":
            await holder[0].callback("A", St.NEW, b"back")
        return St.DONE

    b.add_callback(St.NEW, answer, to=[St.DONE])
    b.add_callback(St.WAITING, answer, to=[St.DONE])
    wf = b.build(make_store(), clock=trio_clock(START))
    holder.append(wf)
    async with af.open_workflow(wf):
        b_run = await wf.trigger("B")
        with trio.fail_after(60):
            await wf.await_status("B", b_run, St.WAITING)
        a_run = await wf.trigger("A")
        with trio.fail_after(3600):
            await wf.await_status("A", a_run, St.WAITING)
    assert len(seen) == 1 and "deadlock" in seen[0] and "CallbackError" in seen[0]
    assert (await wf.lookup(b_run)).status is St.WAITING


async def test_a_scrub_function_that_always_fails_backs_off(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A scrub function that always fails (here: returns the wrong type): delete_data's
    caller gets a clear error, the request stays stored, and the worker's retries back
    off (growing, as for any failing function) instead of calling it every second."""
    calls: list[float] = []

    def scrub(doc: Doc) -> Any:
        calls.append(trio.current_time())
        return {"text": ""}

    async def plain(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    wf = two_steps(make_store(), plain, scrub=scrub)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with trio.fail_after(60):
            await wf.await_status("f", run_id, St.WAITING)
        await wf.cancel(run_id, "done with it")
        with pytest.raises(af.ActorflowError, match="scrub"):
            await wf.delete_data(run_id, "erase")
        assert (await wf.lookup(run_id)).run_state is af.RunState.REQUESTED_DATA_DELETED
        await trio.sleep(24 * 3600)
    assert (await wf.lookup(run_id)).run_state is af.RunState.REQUESTED_DATA_DELETED
    assert 3 <= len(calls) <= 200, len(calls)  # 10 min apart at most: ~150 a day


async def test_a_run_kept_by_a_step_and_used_later_changes_nothing(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A step keeps its Run; later (after the run moved on) another run's step changes
    the kept object, reads the kept record, and returns the kept run's pause(): only the
    run whose step returned it is paused; the kept run is unchanged."""
    kept: list[af.Run[Doc, St]] = []

    async def keeps(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "first":
            run.object.text = "first"
            kept.append(run)
            return St.WAITING
        old = kept[0]
        old.object.text = "changed later"
        old.object.tags.append("later")
        assert old.record.status is St.WORKING and old.record.object.text == ""
        return old.pause("from a kept run")

    wf = two_steps(make_store(), keeps)
    async with af.open_workflow(wf):
        first = await wf.trigger("first")
        with trio.fail_after(60):
            await wf.await_status("first", first, St.WAITING)
        second = await wf.trigger("second")
        rec = await paused(wf, "second")
        assert rec.meta.run_state_reason == "from a kept run"
        again = await wf.lookup(first)
    assert again.run_state is af.RunState.RUNNING and again.status is St.WAITING
    assert again.object == Doc(text="first", n=1)
    assert (await wf.lookup(second)).object == Doc(n=1)


async def test_a_step_blocking_the_loop_delays_but_loses_nothing(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A step calling time.sleep (blocking the event loop) delays everything while it
    blocks; afterwards every run goes on, each version once."""
    import time

    async def blocks(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "blocker":
            time.sleep(0.2)  # noqa: ASYNC251 (the careless user code under test)
        run.object.tags.append("worked")
        return St.WAITING

    wf = two_steps(make_store(), blocks)
    async with af.open_workflow(wf):
        ids = {fid: await wf.trigger(fid) for fid in ("blocker", "a", "b", "c")}
        with trio.fail_after(3600):
            for fid, run_id in ids.items():
                rec = await wf.await_status(fid, run_id, St.WAITING)
                assert rec.object.tags == ["worked"] and rec.version == 3


@pytest.mark.parametrize("kind", ["partial", "callable-object"])
async def test_partials_and_callable_objects_are_named_by_their_function(
    make_store: Any, kind: str, autojump_clock: MockClock
) -> None:
    """A step given as a functools.partial or a callable object: its errors name the
    function (or the class), not a repr holding a memory address."""
    import functools

    async def failing_step(run: af.Run[Doc, St], extra: int) -> St:
        raise ValueError("nope")

    class FailingHandler:
        async def __call__(self, run: af.Run[Doc, St]) -> St:
            raise ValueError("nope")

    fn: Any = functools.partial(failing_step, extra=1) if kind == "partial" else FailingHandler()
    b = af.Builder("named", Doc, St)
    b.add_step(St.NEW, fn, to=St.DONE, pause_after_errors=1)
    wf = b.build(make_store(), clock=trio_clock(START), resume_paused_after=None)
    async with af.open_workflow(wf):
        await wf.trigger("f")
        rec = await paused(wf, "f")
    reason = rec.meta.run_state_reason
    assert ("failing_step" if kind == "partial" else "FailingHandler") in reason, reason
    assert "0x" not in reason, reason


async def test_a_callback_awaiting_the_run_that_calls_it_is_refused(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """Run A's step calls back run B, whose callback awaits a later status of A (which
    cannot move while its step waits for B): refused with an error naming the deadlock;
    awaiting a status A has already been at still answers."""
    holder: list[af.Workflow[Doc, St]] = []
    seen: list[str] = []
    b = af.Builder("mutual-await", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "A":
            try:
                await holder[0].callback("B", St.WAITING, run.run_id.encode())
            except af.ActorflowError as exc:
                seen.append(f"A got {type(exc).__name__}: {exc}")
        return St.WAITING

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        a_run = payload.decode()
        already = await holder[0].await_status("A", a_run, St.NEW)
        seen.append(f"B saw A at version {already.version}")
        await holder[0].await_status("A", a_run, St.WAITING)
        return St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])
    wf = b.build(make_store(), clock=trio_clock(START))
    holder.append(wf)
    async with af.open_workflow(wf):
        b_run = await wf.trigger("B")
        with trio.fail_after(60):
            await wf.await_status("B", b_run, St.WAITING)
        a_run = await wf.trigger("A")
        with trio.fail_after(3600):
            await wf.await_status("A", a_run, St.WAITING)
    assert seen[0] == "B saw A at version 1"
    assert len(seen) == 2 and "deadlock" in seen[1] and "CallbackError" in seen[1]


class _JunkFirstSource:
    """An EventSource of the user's own whose first receiver hands over a dict."""

    def __init__(self) -> None:
        self.opened = 0

    @contextlib.asynccontextmanager
    async def open(self, consumer: str, after: str | None) -> AsyncIterator[Any]:
        self.opened += 1
        yield _Receiver(junk=self.opened == 1, after=after)


class _Receiver:
    def __init__(self, *, junk: bool, after: str | None) -> None:
        self.junk = junk
        self.done = after == "e1"

    async def receive(self) -> Any:
        await trio.lowlevel.checkpoint()
        if self.junk:
            return {"id": "e1", "foreign_id": "from-junk"}
        if self.done:
            await trio.sleep_forever()
        self.done = True
        return _event("e1", "from-junk")

    async def ack(self, event: Any) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_user_source_handing_over_junk_is_named_and_reopened(
    make_store: Any, caplog: pytest.LogCaptureFixture, autojump_clock: MockClock
) -> None:
    """An EventSource of the user's own whose receiver returns something that is not a
    ConnectorEvent: a warning saying exactly that, the source reopened after a back-off,
    and the connector function never called with the junk."""
    handled: list[Any] = []
    source = _JunkFirstSource()
    b = af.Builder("junksource", Doc, St)

    @b.step(St.NEW, to=St.DONE)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.DONE

    async def on_event(workflow: Any, event: Any) -> None:
        handled.append(event)
        await workflow.trigger(event.foreign_id)

    b.add_connector("mine", source, on_event)
    wf = b.build(make_store(), clock=trio_clock(START))
    async with af.open_workflow(wf):
        with trio.fail_after(3600):
            await wait_for(wf, "from-junk", lambda r: r.status is St.DONE)
    assert [type(e) for e in handled] == [af.ConnectorEvent]
    assert source.opened >= 2
    assert "returned dict, not an af.ConnectorEvent" in caplog.text


@attrs.define
class Capped:
    n: int = 0
    tags: list[str] = attrs.field(factory=list, validator=lambda _, __, v: _at_most_two(v))


def _at_most_two(tags: list[str]) -> None:
    if len(tags) > 2:
        raise ValueError(f"at most 2 tags, got {len(tags)}")


@pytest.mark.parametrize("how", ["validator", "wrong-type"])
async def test_an_object_left_unreadable_is_the_error_of_the_step_that_made_it(
    make_store: Any, how: str, autojump_clock: MockClock
) -> None:
    """A step that leaves the object in a state that does not read back (a list grown
    past what its validator allows, an int field set to None) and returns the terminal
    status: an error of THAT step, nothing stored (it used to complete the run with an
    object that readers got back as a plain dict, and no step could load it again)."""
    b = af.Builder("unreadable", Capped, St)

    @b.step(St.NEW, to=St.DONE, pause_after_errors=2)
    async def spoil(run: af.Run[Capped, St]) -> St:
        if run.foreign_id == "bad":
            if how == "validator":
                run.object.tags.extend(["a", "b", "c"])
            else:
                run.object.n = None  # type: ignore[assignment]
        return St.DONE

    wf = b.build(make_store(), clock=trio_clock(START), resume_paused_after=None)
    async with af.open_workflow(wf):
        bad = await wf.trigger("bad")
        rec = await paused(wf, "bad")
        good = await wf.trigger("good")
        with trio.fail_after(60):
            done = await wf.await_status("good", good, St.DONE)
    assert isinstance(done.object, Capped)
    reason = rec.meta.run_state_reason
    assert "spoil" in reason and "does not read back as a Capped" in reason, reason
    history = await wf.history(bad)
    assert [r.status for r in history] == [St.NEW, St.NEW]
    assert all(isinstance(r.object, Capped) for r in history)


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


@pytest.mark.parametrize("kind", ["unprintable", "huge"])
async def test_exceptions_that_cannot_be_printed_or_are_huge(
    make_store: Any, kind: str, autojump_clock: MockClock
) -> None:
    """A step raising an exception whose str() raises, or whose text is 10 MB: counted
    and paused as any error, with a reason that says what it can and stays small."""

    async def raises(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "bad":
            raise _Unprintable() if kind == "unprintable" else ValueError("x" * 10_000_000)
        return St.WAITING

    wf = two_steps(make_store(), raises)
    rec = await paused_alone(wf)
    reason = rec.meta.run_state_reason
    assert len(reason) <= 2100 and len(rec.meta.error_message) <= 2100
    assert ("_Unprintable" if kind == "unprintable" else "ValueError") in reason


async def test_a_group_holding_a_stray_cancelled_from_a_callback_or_hook(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """The same group from a callback (its caller gets CallbackError) and from a hook
    (retried): the workflow stays up."""
    hooked: list[str] = []
    hook_retried = trio.Event()
    b = af.Builder("groups", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        if payload == b"bad":
            raise BaseExceptionGroup("mine", [await _stray_cancelled()])
        return St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])

    async def on_done(record: af.Record[Doc, St]) -> None:
        hooked.append(record.run_id)
        if len(hooked) == 1:
            raise BaseExceptionGroup("mine", [await _stray_cancelled()])
        hook_retried.set()

    b.on_complete(on_done)
    wf = b.build(make_store(), clock=trio_clock(START))
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with trio.fail_after(60):
            await wf.await_status("f", run_id, St.WAITING)
        with pytest.raises(af.CallbackError, match=r"trio\.Cancelled"):
            await wf.callback("f", St.WAITING, b"bad")
        assert await wf.callback("f", St.WAITING, b"good") is not None
        with trio.fail_after(3600):
            await hook_retried.wait()
    assert hooked == [run_id, run_id]


@pytest.mark.parametrize("where", ["timeout", "callback"])
async def test_a_timeout_or_callback_swallowing_the_interrupt_stores_nothing(
    make_store: Any, where: str, autojump_clock: MockClock
) -> None:
    """pause() interrupting a timeout function or a callback function that hangs and
    swallows the Cancelled, then returns DONE anyway: its result is dropped, the run is
    paused where it was, and a callback's caller gets CallbackError."""
    entered = trio.Event()
    caller_got: list[str] = []
    b = af.Builder("swallow", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def stubborn(run: af.Run[Doc, St], *_: Any) -> St:
        entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            run.object.text = "after the interrupt"
        return St.DONE

    if where == "timeout":
        b.add_timeout(St.WAITING, af.after(timedelta(minutes=1)), stubborn, to=[St.DONE])
    else:
        b.add_callback(St.WAITING, stubborn, to=[St.DONE])
    wf = b.build(make_store(), clock=trio_clock(START), resume_paused_after=None)

    async def call_back() -> None:
        try:
            await wf.callback("f", St.WAITING, b"x")
            caller_got.append("returned")
        except af.CallbackError:
            caller_got.append("CallbackError")

    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        with trio.fail_after(60):
            await wf.await_status("f", run_id, St.WAITING)
        async with trio.open_nursery() as nursery:
            if where == "callback":
                nursery.start_soon(call_back)
            with trio.fail_after(3600):
                await entered.wait()
                rec = await wf.pause(run_id, "hold")
        assert rec.run_state is af.RunState.PAUSED and rec.status is St.WAITING
    history = await wf.history(run_id)
    assert [r.status for r in history] == [St.NEW, St.WAITING, St.WAITING]
    assert all(r.object.text == "" for r in history)
    assert caller_got == ([] if where == "timeout" else ["CallbackError"])


@attrs.define
class Titled:
    title: str


async def test_an_upgrade_function_raising_a_base_exception(autojump_clock: MockClock) -> None:
    """upgrade_object raising GeneratorExit on a stored object it cannot convert: lookup
    still answers (the stored JSON data, as for any stranded run) instead of raising the
    GeneratorExit to the reader."""
    store = af.MemoryStore()
    old = af.Builder("upgrading", Doc, St)

    @old.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def answer(run: af.Run[Any, St], payload: bytes) -> St:
        return St.DONE

    old.add_callback(St.WAITING, answer, to=[St.DONE])
    wf = old.build(store, clock=trio_clock(START))
    run_id = await wf.trigger("f", initial=Doc(text="old"))

    def upgrade(data: dict[str, Any]) -> dict[str, Any]:
        raise GeneratorExit("cannot convert")

    new = af.Builder("upgrading", Titled, St)
    new.add_step(St.NEW, go, to=St.WAITING)
    new.add_callback(St.WAITING, answer, to=[St.DONE])
    new.upgrade_object(upgrade)
    wf2 = new.build(store, clock=trio_clock(START))
    rec = await wf2.lookup(run_id)
    assert rec.object == {"text": "old", "n": 0, "tags": []}


async def test_a_timer_function_returning_a_timedelta_says_what_to_do(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A timer function that returns a timedelta (not now + it): an error of the step
    that led there, whose reason says how to return an instant."""

    def timer(run: af.Run[Doc, St], now: datetime) -> Any:
        return timedelta(hours=1) if run.foreign_id == "bad" else None

    b = af.Builder("delta", Doc, St)

    @b.step(St.NEW, to=St.WAITING, pause_after_errors=1)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def late(run: af.Run[Doc, St], now: datetime) -> St:
        return St.DONE

    b.add_timeout(St.WAITING, timer, late, to=[St.DONE])
    wf = b.build(make_store(), clock=trio_clock(START), resume_paused_after=None)
    async with af.open_workflow(wf):
        await wf.trigger("bad")
        rec = await paused(wf, "bad")
    assert "af.after" in rec.meta.run_state_reason


async def test_runs_of_two_workflows_calling_each_other_back_get_an_error(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """The same cycle across two workflows of one process (A of "orders" calls back B of
    "payments", whose callback calls back A): refused, no deadlock."""
    store = make_store()
    seen: list[str] = []
    holder: dict[str, af.Workflow[Doc, St]] = {}

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        if payload == b"call A":
            await holder["orders"].callback("A", St.NEW, b"back")
        return St.DONE

    orders = af.Builder("orders", Doc, St)

    @orders.step(St.NEW, to=St.WAITING)
    async def order(run: af.Run[Doc, St]) -> St:
        try:
            await holder["payments"].callback("B", St.WAITING, b"call A")
        except af.ActorflowError as exc:
            seen.append(f"{type(exc).__name__}: {exc}")
        return St.WAITING

    orders.add_callback(St.NEW, answer, to=[St.DONE])
    payments = af.Builder("payments", Doc, St)

    @payments.step(St.NEW, to=St.WAITING)
    async def pay(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    payments.add_callback(St.WAITING, answer, to=[St.DONE])
    for b in (orders, payments):
        wf = b.build(store, clock=trio_clock(START))
        holder[wf.name] = wf
    async with af.open_workflow(*holder.values()):
        b_run = await holder["payments"].trigger("B")
        with trio.fail_after(60):
            await holder["payments"].await_status("B", b_run, St.WAITING)
        a_run = await holder["orders"].trigger("A")
        with trio.fail_after(3600):
            await holder["orders"].await_status("A", a_run, St.WAITING)
    assert len(seen) == 1 and "deadlock" in seen[0] and "'orders'" in seen[0], seen


async def test_a_schedule_filter_returning_none_is_reported(
    make_store: Any, caplog: pytest.LogCaptureFixture, autojump_clock: MockClock
) -> None:
    """A schedule filter that forgot its ``return`` (None): the time is skipped, as for
    False, but a warning names the filter (it used to skip every time without a word)."""
    asked: list[datetime] = []

    async def forgetful(when: datetime) -> bool:
        asked.append(when)
        return None  # type: ignore[return-value]

    async def plain(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    wf = two_steps(make_store(), plain)
    async with af.open_workflow(wf):
        with trio.move_on_after(3 * 3600):
            await wf.schedule_trigger("cron", "@hourly", filter=forgetful)
    assert len(asked) >= 2
    assert await wf.list_runs(foreign_id="cron") == []
    assert "forgetful returned None" in caplog.text and "missing return" in caplog.text
