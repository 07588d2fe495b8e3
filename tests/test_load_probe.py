"""Load, concurrency and crash probe, written from the public contract (API.md), the docs
and the issues: storms of trigger/trigger_many/callback/await_status on the same and
different foreign ids, cancellation of those calls at every checkpoint, stores closed under
load, subscribers that never read, misbehaving steps under load, and kill -9 of a worker.
Store tests run on MemoryStore, SQLiteStore and (with ACTORFLOW_PG_DSN) PostgresStore.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import trio_clock
from tests.conftest import START
from tests.probe_stores import Stores


class L(enum.IntEnum):
    NEW = 1
    WORKING = 2
    WAITING = 3
    DONE = 4
    LAPSED = 5


@attrs.define
class Job:
    steps: list[str] = attrs.Factory(list)
    answer: str = ""


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    if request.param == "postgres":
        from tests.probe_stores import PG_DSN

        if not PG_DSN:
            pytest.skip("ACTORFLOW_PG_DSN not set")
    made = Stores(request.param, tmp_path)
    try:
        yield made
    finally:
        await made.close_all()


Effects = Counter[tuple[str, str]]


def jobs(
    store: af.Store,
    clock: af.Clock,
    effects: Effects | None = None,
    *,
    working: Callable[[af.Run[Job, L]], Awaitable[Any]] | None = None,
    log: Callable[[af.Run[Job, L]], None] | None = None,
    **build: Any,
) -> af.Workflow[Job, L]:
    """NEW -step-> WORKING -step-> WAITING -callback-> DONE, or -1 h timeout-> LAPSED.
    ``effects`` counts each step's side effect by (run id, status); ``log`` is called by
    the two steps with the run they got."""
    b = af.Builder("jobs", Job, L)

    @b.step(L.NEW, to=L.WORKING)
    async def new(run: af.Run[Job, L]) -> L:
        if log is not None:
            log(run)
        if effects is not None:
            effects[(run.run_id, "NEW")] += 1
        run.object.steps.append("new")
        return L.WORKING

    async def work(run: af.Run[Job, L]) -> Any:
        if log is not None:
            log(run)
        if working is not None:
            return await working(run)
        if effects is not None:
            effects[(run.run_id, "WORKING")] += 1
        run.object.steps.append("work")
        return L.WAITING

    b.add_step(
        L.WORKING, work, to=[L.WAITING], error_backoff=timedelta(seconds=1), pause_after_errors=3
    )

    async def answer(run: af.Run[Job, L], payload: bytes) -> L:
        if effects is not None:
            effects[(run.run_id, "ANSWER")] += 1
        run.object.answer = payload.decode()
        return L.DONE

    async def lapse(run: af.Run[Job, L], now: object) -> L:
        if effects is not None:
            effects[(run.run_id, "LAPSE")] += 1
        return L.LAPSED

    b.add_callback(L.WAITING, answer, to=[L.DONE])
    b.add_timeout(L.WAITING, af.after(timedelta(hours=1)), lapse, to=[L.LAPSED])
    return b.build(store, clock=clock, **build)


async def all_runs(wf: af.Workflow[Job, L], **filters: Any) -> list[af.Record[Job, L]]:
    runs: list[af.Record[Job, L]] = []
    after = None
    while True:
        page = await wf.list_runs(limit=500, after=after, **filters)
        runs.extend(page)
        if len(page) < 500:
            return runs
        after = page[-1].run_id


def statuses(history: list[af.Record[Job, L]]) -> list[L]:
    return [r.status for r in history]


# --- storms on the same foreign ids --------------------------------------------------------


async def storm_wave(
    wf: af.Workflow[Job, L], fids: list[str], per_fid: int, wave: int
) -> dict[str, list[af.Record[Job, L]]]:
    """``per_fid`` concurrent triggers of each foreign id (and trigger_many calls of all of
    them), then as many concurrent await_status and callback calls: the callbacks applied."""
    won: dict[str, list[str]] = {f: [] for f in fids}

    async def one(fid: str) -> None:
        with contextlib.suppress(af.WorkflowInProgress):
            won[fid].append(await wf.trigger(fid))

    async def many(offset: int) -> None:
        batch = fids[offset:] + fids[:offset]
        for fid, result in zip(batch, await wf.trigger_many(batch), strict=True):
            if isinstance(result, str):
                won[fid].append(result)
            else:
                assert isinstance(result, af.WorkflowInProgress), result

    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            for k in range(per_fid):
                for fid in fids:
                    nursery.start_soon(one, fid)
                if k % 5 == 0:
                    nursery.start_soon(many, k % len(fids))
    assert all(len(won[f]) == 1 for f in fids), won
    runs = {f: won[f][0] for f in fids}
    applied: dict[str, list[af.Record[Job, L]]] = {f: [] for f in fids}
    awaited: Counter[str] = Counter()

    async def wait(fid: str) -> None:
        rec = await wf.await_status(fid, runs[fid], L.WAITING)
        assert rec.run_id == runs[fid] and rec.status is L.WAITING
        awaited[fid] += 1

    async def answer(fid: str, k: int) -> None:
        await wf.await_status(fid, runs[fid], L.WAITING)
        rec = await wf.callback(fid, L.WAITING, f"{wave}-{k}".encode())
        if rec is not None:
            applied[fid].append(rec)

    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            for k in range(per_fid):
                for fid in fids:
                    nursery.start_soon(wait, fid)
                    nursery.start_soon(answer, fid, k)
    assert all(awaited[f] == per_fid for f in fids), awaited
    return applied


async def test_a_storm_of_triggers_callbacks_and_awaits_on_few_foreign_ids(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """Hundreds of concurrent trigger, trigger_many, await_status and callback calls on a
    handful of foreign ids: one run per foreign id while it is unfinished, one callback
    applied per run, each step's effect once, every await answered."""
    clock = trio_clock(START)
    effects: Effects = Counter()
    wf = jobs(stores.open(), clock, effects)
    fids = [f"f{i}" for i in range(8)]
    per_fid = 15 if stores.kind == "postgres" else 40
    async with af.open_workflow(wf):
        for wave in range(2):
            applied = await storm_wave(wf, fids, per_fid, wave)
            for fid in fids:
                assert len(applied[fid]) == 1, (fid, applied[fid])
                run_id = applied[fid][0].run_id
                history = await wf.history(run_id)
                assert statuses(history) == [L.NEW, L.WORKING, L.WAITING, L.DONE]
                assert [r.version for r in history] == [1, 2, 3, 4]
                assert history[-1] == applied[fid][0]
                assert history[-1].run_state is af.RunState.COMPLETED
    for fid in fids:
        assert len(await wf.list_runs(foreign_id=fid)) == 2
    assert set(effects.values()) == {1}
    assert len(effects) == len(fids) * 2 * 3


async def test_hundreds_of_clients_each_driving_its_own_run_lose_no_callback(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """Hundreds of concurrent clients, each triggering its own foreign id, waiting for
    WAITING, calling back and waiting for DONE: every callback is applied (none lost, none
    twice), every await answered with the version that reached the status."""
    clock = trio_clock(START)
    effects: Effects = Counter()
    wf = jobs(stores.open(), clock, effects)
    n = 150 if stores.kind == "postgres" else 500
    finished: dict[str, af.Record[Job, L]] = {}

    async def client(i: int) -> None:
        fid = f"c{i}"
        run_id = await wf.trigger(fid)
        waiting = await wf.await_status(fid, run_id, L.WAITING)
        assert waiting.version == 3
        answered = await wf.callback(fid, L.WAITING, fid.encode())
        assert answered is not None and answered.object.answer == fid
        done = await wf.await_status(fid, run_id, L.DONE)
        assert done == answered
        finished[fid] = done

    async with af.open_workflow(wf):
        with trio.fail_after(3600):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(client, i)
    assert len(finished) == n
    assert len(effects) == 3 * n and set(effects.values()) == {1}
    counts = await wf.count_runs()
    assert sum(counts.values()) == n


async def test_trigger_many_racing_trigger_on_thousands_of_ids(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """Overlapping trigger_many calls and single triggers over the same ids, with a worker
    running: exactly one run per foreign id, every returned run id stored, every run
    processed to WAITING once."""
    clock = trio_clock(START)
    effects: Effects = Counter()
    wf = jobs(stores.open(), clock, effects)
    n = 200 if stores.kind == "postgres" else 1000
    ids = [f"id{i}" for i in range(n)]
    returned: list[str] = []
    refused = 0

    async def many(part: list[str]) -> None:
        nonlocal refused
        for result in await wf.trigger_many(part):
            if isinstance(result, str):
                returned.append(result)
            else:
                assert isinstance(result, af.WorkflowInProgress), result
                refused += 1

    async def singles(part: list[str]) -> None:
        nonlocal refused
        for fid in part:
            try:
                returned.append(await wf.trigger(fid))
            except af.WorkflowInProgress:
                refused += 1

    async with af.open_workflow(wf):
        with trio.fail_after(3600):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(many, ids)
                nursery.start_soon(many, ids[::-1])
                nursery.start_soon(many, ids[n // 3 :] + ids[: n // 3])
                nursery.start_soon(singles, ids[::7])
        assert len(returned) == n == len(set(returned))
        assert refused == 3 * n + len(ids[::7]) - n
        runs = await all_runs(wf)
        assert sorted(r.run_id for r in runs) == sorted(returned)
        assert sorted(r.foreign_id for r in runs) == sorted(ids)
        with trio.fail_after(3600):
            for r in runs:
                await wf.await_status(r.foreign_id, r.run_id, L.WAITING)
    assert len(effects) == 2 * n and set(effects.values()) == {1}


# --- cancellation at every checkpoint ------------------------------------------------------


async def cancelled_after(checkpoints: int, call: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``call`` and cancel it once a sibling task has passed ``checkpoints`` schedule
    points (0: at its first). Returns its result, or None when it was cancelled."""
    result: list[Any] = []
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def canceller() -> None:
            for _ in range(checkpoints):
                await trio.lowlevel.checkpoint()
            scope.cancel()

        async def target() -> None:
            with scope:
                result.append(await call())

        nursery.start_soon(target)
        nursery.start_soon(canceller)
    return result[0] if result else None


async def test_trigger_and_trigger_many_cancelled_at_every_checkpoint_lose_nothing(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """A trigger or trigger_many cancelled anywhere: each run it stored is whole and is
    processed by the worker (its steps run, its timeout fires), the others are not stored,
    and triggering again refuses exactly the stored ones."""
    clock = trio_clock(START)
    effects: Effects = Counter()
    wf = jobs(stores.open(), clock, effects)
    tries, size = (12, 30) if stores.kind == "postgres" else (16, 110)
    async with af.open_workflow(wf):
        for k in range(tries):
            await cancelled_after(k, lambda k=k: wf.trigger(f"one{k}"))  # type: ignore[misc]
            items = [f"many{k}-{j}" for j in range(size)]
            await cancelled_after(k, lambda items=items: wf.trigger_many(items))  # type: ignore[misc]
        stored = await all_runs(wf)
        assert len({r.foreign_id for r in stored}) == len(stored)
        for k in range(tries):
            items = [f"one{k}"] + [f"many{k}-{j}" for j in range(size)]
            have = {r.foreign_id for r in stored if r.foreign_id in set(items)}
            again = await wf.trigger_many(items)
            for fid, result in zip(items, again, strict=True):
                if fid in have:
                    assert isinstance(result, af.WorkflowInProgress), (fid, result)
                else:
                    assert isinstance(result, str), (fid, result)
        # Every run stored by a cancelled call is worked on like any other: its steps run
        # now (not after a restart) and its 1-hour timeout fires.
        with trio.fail_after(60):
            for r in stored:
                await wf.await_status(r.foreign_id, r.run_id, L.WAITING)
        with trio.fail_after(2 * 3600):
            for r in stored:
                await wf.await_status(r.foreign_id, r.run_id, L.LAPSED)
    assert stored, "nothing stored at all: the probe cancelled too early"
    for r in stored:
        assert statuses(await wf.history(r.run_id)) == [L.NEW, L.WORKING, L.WAITING, L.LAPSED]
    assert set(effects.values()) == {1}


async def test_callbacks_cancelled_at_every_checkpoint_apply_once_or_not_at_all(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """A callback cancelled anywhere either stored its transition (once) or did nothing;
    the run is never stuck: a later callback still works. The same for await_status."""
    clock = trio_clock(START)
    effects: Effects = Counter()
    wf = jobs(stores.open(), clock, effects)
    tries = 20 if stores.kind == "postgres" else 30
    async with af.open_workflow(wf):
        ids = {k: await wf.trigger(f"cb{k}") for k in range(tries)}
        for k, run_id in ids.items():
            await wf.await_status(f"cb{k}", run_id, L.WAITING)
        for k, run_id in ids.items():
            for j in range(3):  # also a cancelled await_status leaves nothing behind
                await cancelled_after(
                    k + j,
                    lambda k=k, run_id=run_id: wf.await_status(f"cb{k}", run_id, L.DONE),  # type: ignore[misc]
                )
            await cancelled_after(
                k,
                lambda k=k: wf.callback(f"cb{k}", L.WAITING, b"first"),  # type: ignore[misc]
            )
        assert not wf.store.feed.has_subscribers  # no cancelled await left its subscription
        for k, run_id in ids.items():
            latest = await wf.lookup(run_id)
            if latest.status is L.WAITING:
                with trio.fail_after(60):
                    rec = await wf.callback(f"cb{k}", L.WAITING, b"second")
                assert rec is not None and rec.object.answer == "second"
            else:
                assert latest.status is L.DONE and latest.object.answer == "first"
            with trio.fail_after(60):
                done = await wf.await_status(f"cb{k}", run_id, L.DONE)
            history = await wf.history(run_id)
            assert statuses(history) == [L.NEW, L.WORKING, L.WAITING, L.DONE]
            assert history[-1] == done
    assert set(effects.values()) == {1}


async def test_trigger_many_cancelled_as_its_first_runs_are_stored_starts_them(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """trigger_many cancelled the moment a subscriber sees its first run stored (its
    store call is in flight): every run it stored is started by the worker at once.
    (PostgresStore stored the runs of a cancelled call that nobody started until a restart.)"""
    clock = trio_clock(START)
    wf = jobs(stores.open(), clock)
    items = [f"cut{j}" for j in range(200)] * 2  # the repeats are refused, after the others
    async with af.open_workflow(wf):
        async with trio.open_nursery() as nursery, wf.subscribe() as changes:
            scope = trio.CancelScope()

            async def backfill() -> None:
                with scope:
                    results = await wf.trigger_many(items)
                    assert all(isinstance(r, str) for r in results[:200])
                    assert all(isinstance(r, af.WorkflowInProgress) for r in results[200:])

            nursery.start_soon(backfill)
            async for _ in changes:
                scope.cancel()
                break
        stored = await all_runs(wf)
        assert stored
        with trio.fail_after(60):
            for r in stored:
                await wf.await_status(r.foreign_id, r.run_id, L.WAITING)


async def test_controls_cancelled_at_every_checkpoint_leave_no_run_stuck(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """resume, pause, cancel and delete_data, each cancelled after k checkpoints: each
    either happened or not, and a run it reached is never left stuck: a resumed run goes
    on at once, a requested deletion finishes (not after a restart)."""
    clock = trio_clock(START)
    held: set[str] = set()

    async def working(run: af.Run[Job, L]) -> Any:
        if run.run_id not in held:  # the first time: pause itself
            held.add(run.run_id)
            return run.pause("hold")
        return L.WAITING

    store = stores.open()
    wf = jobs(store, clock, working=working, resume_paused_after=None)
    other = jobs(stores.open(), clock) if stores.durable else wf  # a handle without a worker
    tries = 12 if stores.kind == "postgres" else 20
    async with af.open_workflow(wf):
        for k in range(tries):
            handle = other if k % 2 else wf
            fid = f"p{k}"
            run_id = await wf.trigger(fid)
            await _until(wf, run_id, lambda r: r.run_state is af.RunState.PAUSED)
            await cancelled_after(k, lambda: handle.resume(run_id))  # noqa: B023
            if (await wf.lookup(run_id)).run_state is af.RunState.PAUSED:
                await handle.resume(run_id)
            with trio.fail_after(60):
                await wf.await_status(fid, run_id, L.WAITING)
            await cancelled_after(k, lambda: handle.pause(run_id, "again"))  # noqa: B023
            await cancelled_after(k, lambda: handle.cancel(run_id, "stop"))  # noqa: B023
            if not (await wf.lookup(run_id)).run_state.finished:
                await handle.cancel(run_id, "stop")
            await cancelled_after(k, lambda: handle.delete_data(run_id, "gone"))  # noqa: B023
            state = (await wf.lookup(run_id)).run_state
            if state is af.RunState.CANCELLED:
                await handle.delete_data(run_id, "gone")
            with trio.fail_after(60):
                last = await _until(wf, run_id, lambda r: r.run_state is af.RunState.DATA_DELETED)
            history = await wf.history(run_id)
            assert [r.version for r in history] == list(range(1, len(history) + 1))
            for before, after in itertools.pairwise(history):
                assert (before.run_state, after.run_state) in LEGAL, (before, after)
            assert last == history[-1]


async def test_a_deletion_cut_short_in_another_process_is_finished_by_the_worker(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """delete_data from a handle without a worker (a script, the CLI), cancelled after k
    checkpoints: a run left REQUESTED_DATA_DELETED is scrubbed by the running worker at
    once, not at its next restart."""
    if not stores.durable:
        pytest.skip("one MemoryStore object is the whole storage")
    clock = trio_clock(START)
    wf = jobs(stores.open(), clock)
    other = jobs(stores.open(), clock)
    tries = 16 if stores.kind == "postgres" else 40
    async with af.open_workflow(wf):
        results = await wf.trigger_many([f"x{k}" for k in range(tries)])
        ids = [r for r in results if isinstance(r, str)]
        assert len(ids) == tries
        for k, run_id in enumerate(ids):
            await wf.await_status(f"x{k}", run_id, L.WAITING)
            await wf.cancel(run_id, "done")
        for k, run_id in enumerate(ids):
            await cancelled_after(k, lambda: other.delete_data(run_id, "gone"))  # noqa: B023
            if (await wf.lookup(run_id)).run_state is af.RunState.CANCELLED:
                continue  # cancelled before anything was stored
            with trio.fail_after(60):
                last = await _until(wf, run_id, lambda r: r.run_state is af.RunState.DATA_DELETED)
            assert last.meta.run_state_reason == "gone"
            assert all(r.object == Job() for r in await wf.history(run_id))


async def test_a_cancelled_call_whose_callback_hangs_returns_and_stores_nothing(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """A callback function that hangs, its caller cancelled (a timeout): the call ends
    within the grace period, nothing is stored, and nothing lands later; the next
    callback applies."""
    clock = trio_clock(START)
    hang = True
    b = af.Builder("hangs", Job, L)

    @b.step(L.NEW, to=L.WAITING)
    async def go(run: af.Run[Job, L]) -> L:
        return L.WAITING

    async def answer(run: af.Run[Job, L], payload: bytes) -> L:
        if hang:
            await trio.sleep_forever()
        run.object.answer = payload.decode()
        return L.DONE

    b.add_callback(L.WAITING, answer, to=[L.DONE])
    wf = b.build(stores.open(), clock=clock, grace_period=timedelta(seconds=5))
    async with af.open_workflow(wf):
        run_id = await wf.trigger("h")
        await wf.await_status("h", run_id, L.WAITING)
        with trio.move_on_after(1) as scope:
            await wf.callback("h", L.WAITING, b"hung")
        assert scope.cancelled_caught
        assert trio.current_time() < 1 + 5 + 1
        await trio.sleep(3600)  # nothing lands later
        assert [r.status for r in await wf.history(run_id)] == [L.NEW, L.WAITING]
        hang = False
        rec = await wf.callback("h", L.WAITING, b"fine")
        assert rec is not None and rec.object.answer == "fine"


# --- a store closed under load -------------------------------------------------------------


async def test_a_store_closed_under_load_ends_every_call_with_a_clear_error(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """The store is closed while a worker runs and hundreds of calls are in flight: every
    call (trigger, await_status, callback, subscribe, list_runs) ends at once, done or with
    af.StoreError, none hangs; later calls raise af.StoreError; the worker stops cleanly.
    (await_status and subscribers parked on the closed store waited forever; a closed
    MemoryStore went on storing runs.)"""
    clock = trio_clock(START)
    store = stores.open()
    wf = jobs(store, clock)
    ended: Counter[str] = Counter()
    stored = 0
    some_stored = trio.Event()

    async def client(i: int) -> None:
        nonlocal stored
        try:
            run_id = await wf.trigger(f"c{i}")
            stored += 1
            if stored == 40:
                some_stored.set()
            await wf.await_status(f"c{i}", run_id, L.WAITING)
            await wf.callback(f"c{i}", L.WAITING, b"x")
            await wf.await_status(f"c{i}", run_id, L.DONE)
            await wf.list_runs(foreign_id=f"c{i}")
            ended["done"] += 1
        except af.StoreError:
            ended["StoreError"] += 1

    async def parked(fid: str, run_id: str) -> None:
        with pytest.raises(af.StoreError, match="closed"):
            await wf.await_status(fid, run_id, L.DONE)  # reached by nobody
        ended["parked"] += 1

    async def subscriber() -> None:
        with pytest.raises(af.StoreError, match="closed"):
            async with wf.subscribe() as changes:
                async for _ in changes:
                    pass
        ended["subscriber"] += 1

    with trio.fail_after(30):
        async with af.open_workflow(wf):
            waiting = {f"w{i}": await wf.trigger(f"w{i}") for i in range(10)}
            for fid, run_id in waiting.items():
                await wf.await_status(fid, run_id, L.WAITING)
            async with trio.open_nursery() as nursery:
                for fid, run_id in waiting.items():
                    nursery.start_soon(parked, fid, run_id)
                for _ in range(5):
                    nursery.start_soon(subscriber)
                for i in range(200):
                    nursery.start_soon(client, i)
                await some_stored.wait()
                await store.aclose()
    assert ended["parked"] == 10 and ended["subscriber"] == 5
    assert ended["done"] + ended["StoreError"] == 200 and ended["StoreError"] > 0
    assert trio.current_time() < 5  # at once, not after a poll or a timeout
    for call in (
        lambda: wf.trigger("late"),
        lambda: wf.lookup(waiting["w0"]),
        lambda: wf.callback("w0", L.WAITING, b"late"),
        lambda: wf.await_status("w0", waiting["w0"], L.DONE),
        lambda: wf.list_runs(),
    ):
        with pytest.raises(af.StoreError, match="closed"):
            await call()
    with pytest.raises(af.StoreError, match="closed"):
        async with wf.subscribe() as changes:
            async for _ in changes:
                pass
    with pytest.raises(af.StoreError, match="closed"):  # PostgresStore: one error per item
        await wf.trigger_many(["late", "later"])
    await store.aclose()  # again: nothing


async def test_a_backfill_far_beyond_max_active_runs_is_all_worked_once(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """trigger_many of many times max_active_runs runs, plus single triggers meanwhile,
    with a worker running: every run is worked on (the overflow found by a recovery pass),
    each step's effect once, no more runs active at once than allowed."""
    clock = trio_clock(START)
    effects: Effects = Counter()
    active = 0
    most = 0

    async def working(run: af.Run[Job, L]) -> L:
        nonlocal active, most
        active += 1
        most = max(most, active)
        try:
            await trio.sleep(0.5)
        finally:
            active -= 1
        effects[(run.run_id, "WORKING")] += 1
        return L.WAITING

    wf = jobs(stores.open(), clock, effects, working=working, max_active_runs=7)
    n = 100 if stores.kind == "postgres" else 400
    async with af.open_workflow(wf):
        results = await wf.trigger_many([f"b{i}" for i in range(n)])
        singles = [await wf.trigger(f"single{i}") for i in range(20)]
        with trio.fail_after(3600):
            for i, run_id in enumerate(results):
                assert isinstance(run_id, str)
                await wf.await_status(f"b{i}", run_id, L.WAITING)
            for i, run_id in enumerate(singles):
                await wf.await_status(f"single{i}", run_id, L.WAITING)
    assert most <= 7
    assert len(effects) == 2 * (n + 20) and set(effects.values()) == {1}


# --- trigger_many with odd iterables --------------------------------------------------------


class Broken(Exception):
    pass


async def test_trigger_many_from_a_generator_that_raises_midway(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """A generator of items that raises: its exception reaches the caller as itself; the
    runs of the transactions already sent are whole and worked on, the others are not
    stored, and a second call with the same items refuses exactly the stored ones."""
    clock = trio_clock(START)
    wf = jobs(stores.open(), clock)
    n = 1200 if stores.kind != "postgres" else 520

    def items(prefix: str, fail_at: int) -> Any:
        for i in range(n):
            if i == fail_at:
                raise Broken(f"item {i}")
            yield f"{prefix}{i}" if i % 3 else {"foreign_id": f"{prefix}{i}", "initial": Job()}

    async with af.open_workflow(wf):
        for prefix, fail_at in (("early", 7), ("late", n - 5)):
            with pytest.raises(Broken, match=f"item {fail_at}"):
                await wf.trigger_many(items(prefix, fail_at))
            stored = await all_runs(wf, foreign_id=[f"{prefix}{i}" for i in range(n)])
            got = {r.foreign_id for r in stored}
            assert got <= {f"{prefix}{i}" for i in range(fail_at)}
            again = await wf.trigger_many(f"{prefix}{i}" for i in range(n))
            for i, result in enumerate(again):
                if f"{prefix}{i}" in got:
                    assert isinstance(result, af.WorkflowInProgress), (i, result)
                else:
                    assert isinstance(result, str), (i, result)
            with trio.fail_after(60):
                for r in stored:
                    await wf.await_status(r.foreign_id, r.run_id, L.WAITING)
        assert sum((await wf.count_runs()).values()) == 2 * n


async def test_a_huge_lazy_backfill_with_a_worker_and_junk_items(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """A generator of many items (a third of them junk, some repeated) fed to trigger_many
    while the worker runs: one result per item in order, each good item one run, the
    worker works every run once."""
    clock = trio_clock(START)
    effects: Effects = Counter()
    wf = jobs(stores.open(), clock, effects)
    n = 3000 if stores.kind != "postgres" else 600
    junk: list[Any] = [None, 5, "", ("a", 99), {"foreign_id": "x", "other": 1}, b"x", ()]

    def items() -> Any:
        for i in range(n):
            if i % 3 == 1:
                yield junk[i % len(junk)]
            elif i % 9 == 0 and i:
                yield f"big{i - 1}"  # a repeat of the good item before
            else:
                yield f"big{i}"

    async with af.open_workflow(wf):
        results = await wf.trigger_many(items())
        assert len(results) == n
        good = 0
        for i, (item, result) in enumerate(zip(items(), results, strict=True)):
            if i % 3 == 1:
                assert isinstance(result, af.InvalidArgument), (i, item, result)
            elif i % 9 == 0 and i:
                assert isinstance(result, af.WorkflowInProgress), (i, item, result)
            else:
                assert isinstance(result, str), (i, item, result)
                good += 1
        runs = await all_runs(wf)
        assert len(runs) == good
        with trio.fail_after(600):
            for r in runs:
                await wf.await_status(r.foreign_id, r.run_id, L.WAITING)
    assert len(effects) == 2 * good and set(effects.values()) == {1}


# --- subscribers that never read ------------------------------------------------------------


async def test_many_subscribers_that_never_read_hold_the_workflow_back_in_nothing(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """Many subscribers that never read while thousands of versions are stored: the runs
    all finish, each subscriber holds at most its buffer and then raises af.Lagged."""
    clock = trio_clock(START)
    wf = jobs(stores.open(), clock)
    n = 300 if stores.kind == "postgres" else 1000
    async with af.open_workflow(wf), contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(wf.subscribe(buffer=50)) for _ in range(60)]
        whole = await stack.enter_async_context(wf.subscribe(buffer=10 * n))
        ids = await wf.trigger_many([f"s{i}" for i in range(n)])
        with trio.fail_after(600):
            for i, run_id in enumerate(ids):
                assert isinstance(run_id, str)
                await wf.await_status(f"s{i}", run_id, L.WAITING)
        for sub in subs:
            read = 0
            with pytest.raises(af.Lagged):
                async for _ in sub:
                    read += 1
            assert read <= 50
        seen = Counter()
        with trio.move_on_after(1):
            async for record in whole:
                seen[record.run_id] += 1
                if len(seen) == n and all(v == 3 for v in seen.values()):
                    break
        assert len(seen) == n and set(seen.values()) == {3}  # v1, v2, v3 of every run


# --- stop and restart under load --------------------------------------------------------------


async def test_stop_in_the_middle_of_a_storm_then_restart_loses_nothing(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """workflow.stop() while triggers, trigger_many calls and callbacks keep coming (they
    go on after it, from a process that only holds the store): after a restart every run
    stored is worked on, each step's effect once, each callback applied once."""
    clock = trio_clock(START)
    effects: Effects = Counter()
    store = stores.open()
    wf = jobs(store, clock, effects)
    n = 150 if stores.kind == "postgres" else 400
    stored: list[str] = []
    answered: list[af.Record[Job, L]] = []

    async def client(i: int) -> None:
        if i % 4 == 0:
            results = await wf.trigger_many([f"t{i}-{j}" for j in range(5)])
            stored.extend(r for r in results if isinstance(r, str))
        else:
            stored.append(await wf.trigger(f"t{i}"))
        for _ in range(i % 7):
            await trio.lowlevel.checkpoint()
        with contextlib.suppress(af.ActorflowError):  # not there yet: nothing happens
            rec = await wf.callback(f"t{i - 1}", L.WAITING, b"early")
            if rec is not None:
                answered.append(rec)

    with trio.fail_after(600):
        async with trio.open_nursery() as outer:
            await outer.start(wf.run)
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(client, i)
                    if i == n // 2:
                        wf.stop()
    again = jobs(store if stores.kind == "memory" else stores.open(), clock, effects)
    with trio.fail_after(3600):
        async with af.open_workflow(again):
            runs = await all_runs(again)
            assert sorted(r.run_id for r in runs) == sorted(stored)
            for r in runs:
                await again.await_status(r.foreign_id, r.run_id, L.WAITING)
    for rec in answered:
        history = await again.history(rec.run_id)
        assert statuses(history) == [L.NEW, L.WORKING, L.WAITING, L.DONE]
        assert history[-1] == rec
    assert len(effects) == 2 * len(stored) and set(effects.values()) == {1}


# --- misbehaving steps under load --------------------------------------------------------------


class Alien(enum.IntEnum):
    WAITING = 3


JUNK: list[Any] = [None, "WAITING", 3.0, Alien.WAITING, L.DONE, 99, object()]


async def test_misbehaving_steps_under_load_touch_only_their_own_runs(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """Hundreds of runs whose step returns junk, hangs, blocks the loop for a moment or
    behaves: the junk ones are PAUSED after pause_after_errors with a reason, the hanging
    ones do not hold the others and end on cancel, a stop with steps hanging returns
    after the grace period and the restart runs them again; the rest finish once."""
    import time

    clock = trio_clock(START)
    effects: Effects = Counter()
    hang = True

    async def working(run: af.Run[Job, L]) -> Any:
        i = int(run.foreign_id[1:])
        if i % 4 == 0:
            return JUNK[i // 4 % len(JUNK)]
        if i % 4 == 1 and hang:
            await trio.sleep_forever()
        if i % 4 == 2:
            time.sleep(0.0005)  # noqa: ASYNC251 (blocks the trio loop: slow, not wrong)
        effects[(run.run_id, "WORKING")] += 1
        return L.WAITING

    n = 80 if stores.kind == "postgres" else 240
    store = stores.open()
    wf = jobs(store, clock, working=working, grace_period=timedelta(seconds=5))
    with trio.fail_after(3600):
        async with af.open_workflow(wf):
            ids = await wf.trigger_many([f"m{i}" for i in range(n)])
            for i, run_id in enumerate(ids):
                assert isinstance(run_id, str)
                if i % 4 == 0:
                    rec = await _until(wf, run_id, lambda r: r.run_state is af.RunState.PAUSED)
                    assert "error" in (rec.meta.run_state_reason or "").lower(), rec.meta
                    assert rec.status is L.WORKING
                elif i % 4 != 1:
                    await wf.await_status(f"m{i}", run_id, L.WAITING)
            # Cancel half of the hanging ones: the cancel interrupts their step.
            for i in range(1, n // 2, 4):
                rec = await wf.cancel(ids[i], "hangs")  # type: ignore[arg-type]
                assert rec.run_state is af.RunState.CANCELLED
        # The stop above interrupted the other hanging steps: they run again now.
        hang = False
        again = jobs(store if stores.kind == "memory" else stores.open(), clock, working=working)
        async with af.open_workflow(again):
            for i in range(n // 2 + 1, n, 4):
                await again.await_status(f"m{i}", ids[i], L.WAITING)  # type: ignore[arg-type]
    assert set(effects.values()) == {1}
    assert len(effects) == n // 2 + len(range(n // 2 + 1, n, 4))


async def _until(
    wf: af.Workflow[Job, L], run_id: str, done: Callable[[af.Record[Job, L]], bool]
) -> af.Record[Job, L]:
    """The run's latest version once ``done`` says so (waiting on its changes)."""
    async with wf.subscribe(run_id=run_id) as changes:
        rec = await wf.lookup(run_id)
        while not done(rec):
            rec = await changes.__anext__()
    return rec


async def test_callbacks_from_the_worker_and_from_another_handle_apply_once(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """Concurrent callbacks for the same runs from the worker's handle and from a second
    store object on the same storage (another process's view): one per run is applied
    and answered with its record, every other call gets None."""
    if stores.kind == "memory":
        pytest.skip("one MemoryStore object is the whole storage")
    clock = trio_clock(START)
    wf = jobs(stores.open(), clock)
    other = jobs(stores.open(), clock)
    n = 6 if stores.kind == "postgres" else 15
    applied: dict[str, list[af.Record[Job, L]]] = {}
    async with af.open_workflow(wf):
        ids = {f"h{i}": await other.trigger(f"h{i}") for i in range(n)}
        for fid, run_id in ids.items():
            await other.await_status(fid, run_id, L.WAITING, timeout=60)
            applied[fid] = []

        async def answer(handle: af.Workflow[Job, L], fid: str, k: int) -> None:
            rec = await handle.callback(fid, L.WAITING, f"{k}".encode())
            if rec is not None:
                applied[fid].append(rec)

        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                for k in range(10):
                    for fid in ids:
                        nursery.start_soon(answer, wf if k % 2 else other, fid, k)
        for fid, run_id in ids.items():
            assert len(applied[fid]) == 1, applied[fid]
            history = await wf.history(run_id)
            assert statuses(history) == [L.NEW, L.WORKING, L.WAITING, L.DONE]
            assert history[-1] == applied[fid][0]


async def test_completion_hooks_under_load_and_a_restart_miss_no_run(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """Hundreds of runs completing while the worker is stopped and started again: the
    on_complete hook is called for every completed run (at least once), with its record."""
    clock = trio_clock(START)
    completed: Counter[str] = Counter()
    all_completed = trio.Event()
    n = 120 if stores.kind == "postgres" else 400
    store = stores.open()

    def build(store: af.Store) -> af.Workflow[Job, L]:
        b = af.Builder("hooked", Job, L)

        @b.step(L.NEW, to=L.DONE)
        async def finish(run: af.Run[Job, L]) -> L:
            return L.DONE

        async def done(record: af.Record[Job, L]) -> None:
            assert record.run_state is af.RunState.COMPLETED
            completed[record.run_id] += 1
            if len(completed) == n:
                all_completed.set()

        b.on_complete(done)
        return b.build(store, clock=clock)

    wf = build(store)
    async with af.open_workflow(wf):
        first = await wf.trigger_many([f"c{i}" for i in range(n)])
        for i, run_id in enumerate(first[: n // 2]):
            await wf.await_status(f"c{i}", run_id, L.DONE)  # type: ignore[arg-type]
    again = build(store if stores.kind == "memory" else stores.open())
    async with af.open_workflow(again):
        with trio.fail_after(600):
            for i, run_id in enumerate(first):
                await again.await_status(f"c{i}", run_id, L.DONE)  # type: ignore[arg-type]
            await all_completed.wait()
    assert set(completed) == set(first)


async def test_many_awaits_and_subscribers_on_a_handle_without_the_worker(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """Hundreds of await_status calls on a second store object (a client process's view)
    while the worker runs on the first: each is answered. On PostgreSQL a subscriber there
    (running ``store.listen``, as docs/deployment.md says) sees every version the worker
    stored; on SQLite the feed is per process (docs/stores.md)."""
    if not stores.durable:
        pytest.skip("one MemoryStore object is the whole storage")
    clock = trio_clock(START)
    wf = jobs(stores.open(), clock)
    client_store = stores.open()
    client = jobs(client_store, clock)
    n = 60 if stores.kind == "postgres" else 200
    seen: Counter[str] = Counter()
    async with trio.open_nursery() as listening:
        if stores.kind == "postgres":
            await listening.start(client_store.listen)  # type: ignore[attr-defined]
        async with af.open_workflow(wf), client.subscribe() as changes:
            ids = await client.trigger_many([f"o{i}" for i in range(n)])

            async def wait(i: int) -> None:
                run_id = ids[i]
                assert isinstance(run_id, str)
                rec = await client.await_status(f"o{i}", run_id, L.WAITING)
                assert rec.version == 3

            with trio.fail_after(600):
                async with trio.open_nursery() as nursery:
                    for i in range(n):
                        nursery.start_soon(wait, i)
                expected = 3 * n if stores.kind == "postgres" else n
                async for record in changes:
                    seen[record.run_id] += 1
                    if sum(seen.values()) == expected:
                        break
        listening.cancel_scope.cancel()
    assert set(seen) == set(ids)
    assert set(seen.values()) == ({3} if stores.kind == "postgres" else {1})


# --- controls racing each other ------------------------------------------------------------

LEGAL = {
    (af.RunState.INITIATED, af.RunState.RUNNING),
    (af.RunState.INITIATED, af.RunState.PAUSED),
    (af.RunState.INITIATED, af.RunState.CANCELLED),
    (af.RunState.RUNNING, af.RunState.RUNNING),
    (af.RunState.RUNNING, af.RunState.COMPLETED),
    (af.RunState.RUNNING, af.RunState.PAUSED),
    (af.RunState.RUNNING, af.RunState.CANCELLED),
    (af.RunState.PAUSED, af.RunState.RUNNING),
    (af.RunState.PAUSED, af.RunState.CANCELLED),
    (af.RunState.COMPLETED, af.RunState.REQUESTED_DATA_DELETED),
    (af.RunState.CANCELLED, af.RunState.REQUESTED_DATA_DELETED),
    (af.RunState.REQUESTED_DATA_DELETED, af.RunState.DATA_DELETED),
    (af.RunState.DATA_DELETED, af.RunState.REQUESTED_DATA_DELETED),
}


async def test_controls_and_callbacks_racing_on_the_same_runs(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """pause, resume, cancel, delete_data and callback all at once on the same runs: each
    call applies or is refused with af.InvalidTransition (a callback: None), versions
    stay 1..n, every stored run-state change is one the table allows, and what each call
    returned is a version in the history."""
    clock = trio_clock(START)
    wf = jobs(stores.open(), clock, resume_paused_after=None)
    n = 12 if stores.kind == "postgres" else 30
    returned: list[af.Record[Job, L]] = []
    refused: Counter[str] = Counter()
    async with af.open_workflow(wf):
        ids = {f"r{i}": await wf.trigger(f"r{i}") for i in range(n)}
        for fid, run_id in ids.items():
            await wf.await_status(fid, run_id, L.WAITING)

        async def act(name: str, fid: str, run_id: str) -> None:
            try:
                if name == "callback":
                    rec = await wf.callback(fid, L.WAITING, b"race")
                else:
                    rec = await getattr(wf, name)(run_id, f"{name} race")
            except af.InvalidTransition:
                refused[name] += 1
                return
            if rec is None:
                refused[name] += 1
            else:
                returned.append(rec)

        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    for fid, run_id in ids.items():
                        for name in ("delete_data", "cancel", "pause", "callback", "resume"):
                            nursery.start_soon(act, name, fid, run_id)
        with trio.fail_after(600):  # a requested deletion finishes
            for run_id in ids.values():
                await _settled(wf, run_id)
        for run_id in ids.values():
            history = await wf.history(run_id)
            assert [r.version for r in history] == list(range(1, len(history) + 1))
            for before, after in itertools.pairwise(history):
                assert (before.run_state, after.run_state) in LEGAL, (before, after)
            last = history[-1]
            assert last.run_state in (
                af.RunState.COMPLETED,
                af.RunState.CANCELLED,
                af.RunState.PAUSED,
                af.RunState.RUNNING,
                af.RunState.DATA_DELETED,
            ), last
            if last.run_state is af.RunState.DATA_DELETED:
                assert last.object == Job()
        versions = {
            (r.run_id, r.version) for run_id in ids.values() for r in await wf.history(run_id)
        }
        assert all((r.run_id, r.version) in versions for r in returned)
    assert sum(refused.values()) + len(returned) == 3 * 5 * n


def _settled_after_a_crash(rec: af.Record[Job, L]) -> bool:
    """At WAITING and running, or finished (a requested deletion done)."""
    if rec.run_state is af.RunState.REQUESTED_DATA_DELETED:
        return False
    return rec.run_state.finished or rec.status is L.WAITING  # type: ignore[no-any-return]


def _stepped(rec: af.Record[Job, L]) -> bool:
    """Whether a step ran at this version (a version a control stored: none did)."""
    return rec.run_state in (af.RunState.INITIATED, af.RunState.RUNNING)


async def _settled(wf: af.Workflow[Job, L], run_id: str) -> None:
    await _until(wf, run_id, lambda r: r.run_state is not af.RunState.REQUESTED_DATA_DELETED)


# --- many awaits with timeouts ------------------------------------------------------------------


async def test_thousands_of_awaits_with_timeouts_leave_nothing_behind(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """Thousands of concurrent await_status calls with timeouts, half for a status their
    run reaches in time, half for one it reaches only later: the first return the record,
    the others raise TimeoutError; no subscription is left on the store's feed."""
    clock = trio_clock(START)
    wf = jobs(stores.open(), clock)
    n = 60 if stores.kind == "postgres" else 200
    got: Counter[str] = Counter()
    async with af.open_workflow(wf):
        ids = await wf.trigger_many([f"a{i}" for i in range(n)])

        async def wait(i: int, status: L) -> None:
            run_id = ids[i]
            assert isinstance(run_id, str)
            try:
                rec = await wf.await_status(f"a{i}", run_id, status, timeout=600)
            except TimeoutError:
                got["timeout"] += 1
            else:
                assert rec.status is status
                got[status.name] += 1

        with trio.fail_after(3600):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    for _ in range(3):
                        nursery.start_soon(wait, i, L.WAITING)
                        nursery.start_soon(wait, i, L.LAPSED)  # after 1 h: too late
        assert got == {"WAITING": 3 * n, "timeout": 3 * n}
        assert not wf.store.feed.has_subscribers
        with trio.fail_after(2 * 3600):
            for i in range(n):
                assert (await wf.await_status(f"a{i}", ids[i], L.LAPSED)).status is L.LAPSED  # type: ignore[arg-type]


# --- kill -9 of a worker ---------------------------------------------------------------------

CHILD = """
import sys
from datetime import timedelta

import trio

import actorflow as af
from tests.test_load_probe import jobs


def log(run):
    print(f"effect {run.run_id} {run.status.name} {run.record.version}", flush=True)


async def main(kind, where, schema):
    if kind == "sqlite":
        store = af.SQLiteStore(where)
    else:
        store = af.PostgresStore(where, schema=schema, pool_size=4)
    async with store:
        wf = jobs(store, af.SystemClock(), log=log, lease=timedelta(seconds=1))
        async with af.open_workflow(wf):
            previous = []
            for i in range(100_000):
                results = await wf.trigger_many([f"k{i}-{j}" for j in range(40)])
                assert all(isinstance(r, str) for r in results), results
                print(f"batch {i}", flush=True)
                async with trio.open_nursery() as nursery:
                    for run_id in previous[:8]:  # cancelled and deleted while others run
                        nursery.start_soon(erase, wf, run_id)
                previous = results


async def erase(wf, run_id):
    await wf.cancel(run_id, "gone")
    print(f"cancelled {run_id}", flush=True)
    await wf.delete_data(run_id, "gone")
    print(f"deleted {run_id}", flush=True)

trio.run(main, *sys.argv[1:])
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_kill_9_of_a_busy_worker_then_every_run_is_done_once_as_the_user_sees_it(
    kind: str, tmp_path: Path, autojump_clock: MockClock
) -> None:
    """A worker storing batches with trigger_many while its steps run and it cancels and
    deletes the data of runs is killed with SIGKILL; a new worker on the same store
    finishes every run. Each run's history holds each status once, versions 1..n; every
    step effect the dead worker printed belongs to a version the history holds or was
    replayed at that same version (an effect made idempotent by run id and version is
    seen once); every acknowledged batch is stored; every acknowledged cancel and
    deletion holds, and a deletion cut short is finished."""
    import os
    import signal
    import subprocess
    import sys

    from tests.fresh_python import ROOT
    from tests.probe_stores import PG_DSN

    if kind == "postgres" and not PG_DSN:
        pytest.skip("ACTORFLOW_PG_DSN not set")
    stores = Stores(kind, tmp_path)
    where = str(stores.path) if kind == "sqlite" else str(PG_DSN)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    lines: list[str] = []

    def run_child() -> None:
        child = subprocess.Popen(
            [sys.executable, str(script), kind, where, stores.schema],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        try:
            batches = effects = 0
            for line in child.stdout:  # blocks on the child's output: no guessing
                lines.append(line.strip())
                batches += line.startswith("batch ")
                effects += line.startswith("effect ")
                if batches >= 4 and effects >= 150:
                    os.kill(child.pid, signal.SIGKILL)
                    break
            else:
                raise AssertionError(f"child ended: {lines[-5:]} {child.stderr.read()}")  # type: ignore[union-attr]
            lines.extend(rest.strip() for rest in child.stdout)  # printed before the kill
        finally:
            child.kill()
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL

    await trio.to_thread.run_sync(run_child)
    acknowledged = [int(x.split()[1]) for x in lines if x.startswith("batch ")]
    cancelled = {x.split()[1] for x in lines if x.startswith("cancelled ")}
    deleted = {x.split()[1] for x in lines if x.startswith("deleted ")}
    printed = Counter(tuple(x.split()[1:]) for x in lines if x.startswith("effect "))
    redone: list[tuple[str, ...]] = []

    def log(run: af.Run[Job, L]) -> None:
        redone.append((run.run_id, run.status.name, str(run.record.version)))

    try:
        wf = jobs(stores.open(), trio_clock(START), log=log, lease=timedelta(seconds=1))
        async with af.open_workflow(wf):
            runs = await all_runs(wf)
            fids = {r.foreign_id for r in runs}
            assert len(fids) == len(runs), "a foreign id got two runs"
            for i in acknowledged:
                assert {f"k{i}-{j}" for j in range(40)} <= fids
            stepped: set[tuple[str, ...]] = set()
            moved: set[tuple[str, ...]] = set()
            for r in runs:
                with trio.fail_after(600):
                    last = await _until(wf, r.run_id, _settled_after_a_crash)
                history = await wf.history(r.run_id)
                assert [h.version for h in history] == list(range(1, len(history) + 1))
                states = [h.run_state for h in history]
                if r.run_id in deleted or af.RunState.REQUESTED_DATA_DELETED in states:
                    assert last.run_state is af.RunState.DATA_DELETED, last
                    assert all(h.object == Job() for h in history), "not scrubbed"
                elif r.run_id in cancelled:
                    assert last.run_state is af.RunState.CANCELLED, last
                if af.RunState.CANCELLED not in states:
                    assert statuses(history) == [L.NEW, L.WORKING, L.WAITING], r.run_id
                for before, after in itertools.pairwise(history):
                    assert (before.run_state, after.run_state) in LEGAL, (before, after)
                    if before.status in (L.NEW, L.WORKING) and _stepped(before):
                        key = (r.run_id, before.status.name, str(before.version))
                        stepped.add(key)  # a step may have run at this version
                        if after.status != before.status:
                            moved.add(key)  # a step did
    finally:
        await stores.close_all()
    # Every step ran at a version the history holds, each version a step moved on from
    # had its effect, and each (run, status, version) was done at most twice: once before
    # the kill, once again after it when its commit was lost.
    done = printed + Counter(redone)
    assert moved <= set(done) <= stepped
    assert max(done.values()) <= 2
    twice = [key for key, count in done.items() if count == 2]
    print(f"{len(runs)} runs, {len(printed)} effects before the kill, {len(twice)} redone")
    assert all(key in printed and key in set(redone) for key in twice)
