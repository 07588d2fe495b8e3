"""Load, concurrency and crash probe, written from the public contract (API.md), the docs
and the issues: storms of trigger/trigger_many/callback/await_status on the same and
different foreign ids, cancellation of those calls at every checkpoint, stores closed under
load, subscribers that never read, misbehaving steps under load, and kill -9 of a worker.
Store tests run on MemoryStore, SQLiteStore and (with ACTORFLOW_PG_DSN) PostgresStore.
"""

from __future__ import annotations

import contextlib
import enum
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
from tests.test_adversarial_probe import Stores


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
        from tests.test_adversarial_probe import PG_DSN

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
    **build: Any,
) -> af.Workflow[Job, L]:
    """NEW -step-> WORKING -step-> WAITING -callback-> DONE, or -1 h timeout-> LAPSED.
    ``effects`` counts each step's side effect by (run id, status)."""
    b = af.Builder("jobs", Job, L)

    @b.step(L.NEW, to=L.WORKING)
    async def new(run: af.Run[Job, L]) -> L:
        if effects is not None:
            effects[(run.run_id, "NEW")] += 1
        run.object.steps.append("new")
        return L.WORKING

    async def work(run: af.Run[Job, L]) -> Any:
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
    per_fid = 25 if stores.kind == "postgres" else 40
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


async def test_trigger_many_racing_trigger_on_thousands_of_ids(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """Overlapping trigger_many calls and single triggers over the same ids, with a worker
    running: exactly one run per foreign id, every returned run id stored, every run
    processed to WAITING once."""
    clock = trio_clock(START)
    effects: Effects = Counter()
    wf = jobs(stores.open(), clock, effects)
    n = 600 if stores.kind == "postgres" else 1500
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
    tries, size = (16, 30) if stores.kind == "postgres" else (30, 110)
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
