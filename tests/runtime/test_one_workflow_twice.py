"""One workflow served twice in one process on one storage (two ``Workflow`` objects of
the same name, on one MemoryStore or on two SQLiteStore objects of one file): the first
to start works on the runs, the second stands by and takes over when the first stops.
Nothing is done twice that a user can see; different workflows on one store still run at
the same time."""

from __future__ import annotations

import enum
import os
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import trio_clock
from tests.conftest import START, StoreMaker


class St(enum.IntEnum):
    NEW = 1
    DONE = 2


@attrs.define
class Doc:
    n: int = 0


@attrs.define
class Effects:
    """What the steps did, as a user would see it."""

    started: Counter[str] = attrs.Factory(Counter)
    done: Counter[str] = attrs.Factory(Counter)
    by: dict[str, list[str]] = attrs.Factory(dict)


def worker(
    store: af.Store,
    effects: Effects,
    who: str,
    *,
    name: str = "twice",
    step_seconds: float = 1,
    **build: Any,
) -> af.Workflow[Doc, St]:
    b = af.Builder(name, Doc, St)

    @b.step(St.NEW, to=St.DONE)
    async def work(run: af.Run[Doc, St]) -> St:
        effects.started[run.foreign_id] += 1
        await trio.sleep(step_seconds)
        effects.done[run.foreign_id] += 1
        effects.by.setdefault(run.foreign_id, []).append(who)
        run.object.n += 1
        return St.DONE

    return b.build(store, clock=trio_clock(START), **build)


async def _until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110 (polling a state nothing signals)
            await trio.sleep(0.01)


async def _all_done(wf: af.Workflow[Doc, St], ids: dict[str, str]) -> None:
    with trio.fail_after(600):
        for foreign_id, run_id in ids.items():
            await wf.await_status(foreign_id, run_id, St.DONE)


async def _done_once(wf: af.Workflow[Doc, St], ids: dict[str, str]) -> None:
    """Each run's history holds one DONE, with the step's one increment."""
    for run_id in ids.values():
        history = await wf.history(run_id)
        assert [r.status for r in history] == [St.NEW, St.DONE], history
        assert history[-1].object.n == 1


async def test_two_workers_of_one_workflow_run_each_step_once(
    make_store: StoreMaker, autojump_clock: MockClock
) -> None:
    effects = Effects()
    one = worker(make_store(), effects, "one")
    two = worker(make_store(), effects, "two")
    ids: dict[str, str] = {}
    async with af.open_workflow(one, two):
        for i in range(20):
            wf = one if i % 2 else two  # triggered through either
            ids[f"f{i}"] = await wf.trigger(f"f{i}")
        await _all_done(one, ids)
        await _all_done(two, ids)
        await trio.sleep(5)  # a second worker would be slower, not absent
    assert effects.started == Counter(dict.fromkeys(ids, 1))
    assert effects.done == Counter(dict.fromkeys(ids, 1))
    assert {who for runs in effects.by.values() for who in runs} == {"one"}
    await _done_once(one, ids)


async def test_the_second_worker_stands_by_and_takes_over(
    make_store: StoreMaker, autojump_clock: MockClock
) -> None:
    effects = Effects()
    one = worker(make_store(), effects, "one", step_seconds=10)
    two = worker(make_store(), effects, "two", step_seconds=10)
    ids: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as first:
            async with trio.open_nursery() as inner:
                await inner.start(one.run)
                await nursery.start(two.run)  # returns: a standby
                await _until(lambda: one.ready)
                assert not two.ready
                assert two.running
                done_early = {f"g{i}": await two.trigger(f"g{i}") for i in range(3)}
                await _all_done(two, done_early)
                ids.update(done_early)
                for i in range(10):
                    wf = one if i % 2 else two
                    ids[f"f{i}"] = await wf.trigger(f"f{i}")
                await trio.sleep(5)  # the f runs are half-way through their steps
                assert sum(effects.started.values()) == 13
                first.cancel()
        assert not one.running
        await _until(lambda: two.ready)
        await _all_done(two, ids)
        assert all(effects.by[f"g{i}"] == ["one"] for i in range(3))
        assert all(effects.by[f"f{i}"] == ["two"] for i in range(10))
        # a run triggered now is worked on by the second, once
        late = await one.trigger("late")
        await _all_done(two, {"late": late})
        two.stop()
    ids["late"] = late
    assert effects.done == Counter(dict.fromkeys(ids, 1))
    # the steps the cancellation interrupted ran again (never finished twice)
    assert all(effects.started[f"f{i}"] == 2 for i in range(10))
    await _done_once(two, ids)


async def test_a_standby_stops_without_taking_over(
    make_store: StoreMaker, autojump_clock: MockClock
) -> None:
    effects = Effects()
    one = worker(make_store(), effects, "one")
    two = worker(make_store(), effects, "two")
    async with trio.open_nursery() as nursery:
        await nursery.start(one.run)
        await nursery.start(two.run)
        two.stop()
        await _until(lambda: not two.running)
        assert one.ready
        run_id = await two.trigger("after")  # the first still works on it
        await _all_done(one, {"after": run_id})
        one.stop()
    assert effects.by == {"after": ["one"]}


async def test_a_third_worker_waits_for_the_second(
    make_store: StoreMaker, autojump_clock: MockClock
) -> None:
    effects = Effects()
    workers = [worker(make_store(), effects, w) for w in ("one", "two", "three")]
    ids: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        for wf in workers:
            await nursery.start(wf.run)
        for turn, wf in enumerate(workers):
            await _until(lambda: wf.ready)  # noqa: B023
            assert [w.ready for w in workers] == [w is wf for w in workers]
            ids[f"f{turn}"] = await workers[-1].trigger(f"f{turn}")
            await _all_done(wf, ids)
            wf.stop()
            await _until(lambda: not wf.running)  # noqa: B023
    assert effects.by == {"f0": ["one"], "f1": ["two"], "f2": ["three"]}


async def test_different_workflows_on_one_store_run_at_the_same_time(
    make_store: StoreMaker, autojump_clock: MockClock
) -> None:
    both = {"a": trio.Event(), "b": trio.Event()}

    def meeting(store: af.Store, name: str) -> af.Workflow[Doc, St]:
        b = af.Builder(name, Doc, St)

        @b.step(St.NEW, to=St.DONE)
        async def meet(run: af.Run[Doc, St]) -> St:
            both[name].set()
            for event in both.values():
                await event.wait()  # each step waits for the other workflow's
            return St.DONE

        return b.build(store, clock=trio_clock(START))

    a, b = meeting(make_store(), "a"), meeting(make_store(), "b")
    async with af.open_workflow(a, b):
        runs: list[tuple[Any, str]] = [(a, await a.trigger("x")), (b, await b.trigger("x"))]
        with trio.fail_after(60):
            for wf, run_id in runs:
                await wf.await_status("x", run_id, St.DONE)
        assert a.ready and b.ready


async def test_calls_through_a_standby_during_the_hand_over(
    make_store: StoreMaker, autojump_clock: MockClock
) -> None:
    """Triggered and awaited through the standby while the first stops: the second picks
    the run up as it takes over (no 'not running' error, nothing twice)."""
    effects = Effects()
    one = worker(make_store(), effects, "one")
    two = worker(make_store(), effects, "two")
    async with trio.open_nursery() as nursery:
        await nursery.start(one.run)
        await nursery.start(two.run)
        await _until(lambda: one.ready)
        assert set(two.states().values()) == {af.ProcessState.IDLE}
        one.stop()
        run_id = await two.trigger("during")
        await _all_done(two, {"during": run_id})
        assert two.ready and not one.running
        assert af.ProcessState.STOPPED in set(one.states().values())
        two.stop()
    assert effects.by == {"during": ["two"]}
    await _done_once(two, {"during": run_id})


PG_DSN = os.environ.get("ACTORFLOW_PG_DSN")


@pytest.mark.skipif(not PG_DSN, reason="ACTORFLOW_PG_DSN not set")
@pytest.mark.parametrize("objects", [1, 2])
async def test_postgres_workers_in_one_process_share_the_shards(
    objects: int, autojump_clock: MockClock
) -> None:
    """PostgreSQL: two workers of one workflow in one process (on one store object, or on
    two of one schema) are not standbys: they split the shards, each run worked on once,
    by the holder of its shard."""
    assert PG_DSN
    schema = f"af_twice_{uuid.uuid4().hex[:16]}"
    stores = [af.PostgresStore(PG_DSN, schema=schema, pool_size=4) for _ in range(objects)]
    effects = Effects()
    lease = {"shards": 4, "lease": timedelta(seconds=1.5)}
    one = worker(stores[0], effects, "one", **lease)
    two = worker(stores[-1], effects, "two", **lease)
    ids: dict[str, str] = {}
    try:
        async with af.open_workflow(one, two):
            with trio.fail_after(60):
                while not (one.ready and two.ready):  # noqa: ASYNC110
                    await trio.sleep(0.1)
            for i in range(20):
                ids[f"f{i}"] = await (one if i % 2 else two).trigger(f"f{i}")
            await _all_done(one, ids)
        assert effects.done == Counter(dict.fromkeys(ids, 1))
        assert {who for runs in effects.by.values() for who in runs} == {"one", "two"}
        await _done_once(one, ids)
    finally:
        for store in stores:
            await store.aclose()
        await af.PostgresStore(PG_DSN, schema=schema, drop_schema_on_close=True).aclose()


async def test_a_turn_handed_to_a_standby_as_it_is_cancelled_passes_on(
    make_store: StoreMaker, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serving worker stops and hands its turn to the standby at the moment that
    standby is cancelled too: the turn is given up, so a worker started later serves.
    (It stayed with the cancelled standby: every later worker of the workflow on that
    storage stood by for ever, running nothing.)"""
    from actorflow._runtime import supervisor as sup

    effects = Effects()
    store = make_store()
    one, two = worker(store, effects, "one"), worker(make_store(), effects, "two")
    two_scope = trio.CancelScope()
    end_turn = sup.Supervisor._end_turn

    def handing_over(self: sup.Supervisor[Any, Any]) -> None:
        if not self.standby:
            two_scope.cancel()  # the standby's cancellation comes with the hand-over
        end_turn(self)

    monkeypatch.setattr(sup.Supervisor, "_end_turn", handing_over)

    async def run_two(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with two_scope:
            await two.run(task_status=task_status)

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as one_scope:
            async with trio.open_nursery() as inner:
                await inner.start(one.run)
                await nursery.start(run_two)
                assert two.running and not two.ready
                one_scope.cancel()
    monkeypatch.setattr(sup.Supervisor, "_end_turn", end_turn)
    assert not sup._SERVING and not sup._STANDBYS
    three = worker(make_store(), effects, "three")
    async with af.open_workflow(three):
        run_id = await three.trigger("later")
        await three.await_status("later", run_id, St.DONE, timeout=60)
    assert effects.by == {"later": ["three"]}
