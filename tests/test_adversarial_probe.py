"""Adversarial probe, written from the public contract (API.md) and the issues: data
deletion and history retention, hostile list/count/history filters, misbehaving user
code, crashes of a worker process and broken store files, and load on one foreign id.
Store tests run on MemoryStore, SQLiteStore and (with ACTORFLOW_PG_DSN) PostgresStore.
"""

from __future__ import annotations

import enum
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import trio_clock
from tests.conftest import START

PG_DSN = os.environ.get("ACTORFLOW_PG_DSN")


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


class Stores:
    """Opens the store under test; opening again reopens the same storage (a restart)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "probe.db"
        self.schema = f"af_probe_{uuid.uuid4().hex[:16]}"
        self.opened: list[af.Store] = []

    def open(self) -> af.Store:
        store: af.Store
        if self.kind == "memory":
            if self.opened:
                return self.opened[0]
            store = af.MemoryStore()
        elif self.kind == "sqlite":
            store = af.SQLiteStore(self.path)
        else:
            assert PG_DSN is not None
            store = af.PostgresStore(PG_DSN, schema=self.schema, pool_size=4)
        self.opened.append(store)
        return store

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    async def close_all(self) -> None:
        for store in self.opened:
            await store.aclose()
        self.opened.clear()
        if self.kind == "postgres":
            assert PG_DSN is not None
            await trio.to_thread.run_sync(_drop_schema, PG_DSN, self.schema)


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    if request.param == "postgres" and not PG_DSN:
        pytest.skip("ACTORFLOW_PG_DSN not set")
    made = Stores(request.param, tmp_path)
    try:
        yield made
    finally:
        await made.close_all()


Behaviour = dict[str, Any]


def pipeline(
    store: af.Store,
    clock: af.Clock,
    *,
    name: str = "pipe",
    working: Any = None,
    **build: Any,
) -> af.Workflow[Doc, St]:
    """NEW -step-> WORKING -step-> WAITING -callback-> DONE. ``working`` replaces the
    WORKING step's body (default: append a tag and go on)."""
    b = af.Builder(name, Doc, St)

    @b.step(St.NEW, to=St.WORKING)
    async def new(run: af.Run[Doc, St]) -> St:
        run.object.text = f"secret of {run.foreign_id}"
        run.object.n += 1
        return St.WORKING

    async def work(run: af.Run[Doc, St]) -> St:
        if working is not None:
            return await working(run)  # type: ignore[no-any-return]
        run.object.tags.append("worked")
        return St.WAITING

    b.add_step(St.WORKING, work, to=[St.WAITING], error_backoff=timedelta(seconds=1))

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        run.object.tags.append(payload.decode())
        return St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])
    return b.build(store, clock=clock, **build)


async def finish(wf: af.Workflow[Doc, St], foreign_id: str) -> str:
    """Trigger a run of ``foreign_id`` and take it to DONE; returns its run id."""
    run_id = await wf.trigger(foreign_id)
    await wf.await_status(foreign_id, run_id, St.WAITING)
    assert await wf.callback(foreign_id, St.WAITING, b"ok") is not None
    await wf.await_status(foreign_id, run_id, St.DONE)
    return run_id


def shape(history: list[af.Record[Doc, St]]) -> list[tuple[int, St, af.RunState]]:
    return [(r.version, r.status, r.run_state) for r in history]


# --- data deletion ------------------------------------------------------------------------


async def test_delete_data_scrubs_that_run_and_nothing_else(
    stores: Stores, autojump_clock: MockClock
) -> None:
    clock = trio_clock(START)
    store = stores.open()
    wf = pipeline(store, clock, scrub=lambda doc: Doc(text="<gone>"))
    other = pipeline(store, clock, name="other")  # same store, same foreign ids
    async with af.open_workflow(wf, other):
        old = await finish(wf, "same")
        newer = await finish(wf, "same")  # a later run of the same foreign id
        neighbour = await finish(wf, "neighbour")
        foreign = await finish(other, "same")
        before = {
            run_id: await w.history(run_id)
            for w, run_id in ((wf, newer), (wf, neighbour), (other, foreign))
        }
        old_shape = shape(await wf.history(old))
        deleted = await wf.delete_data(old, "erasure request")
        assert deleted.run_id == old
        done = await wf.await_status("same", old, St.DONE)  # still answers for the old status
        assert done.run_id == old
        final = await _await_run_state(wf, old, af.RunState.DATA_DELETED)
        assert final.object == Doc(text="<gone>")
        assert final.meta.run_state_reason == "erasure request"
    history = await wf.history(old)
    # Every version is still there (versions and statuses kept), each object scrubbed.
    assert shape(history)[: len(old_shape)] == old_shape
    assert [r.run_state for r in history[len(old_shape) :]] == [
        af.RunState.REQUESTED_DATA_DELETED,
        af.RunState.DATA_DELETED,
    ]
    assert all("secret" not in repr(r.object) and "worked" not in repr(r.object) for r in history)
    # Nothing else changed: the newer run of the same foreign id, another foreign id,
    # and the other workflow's run of the same foreign id.
    for w, run_id in ((wf, newer), (wf, neighbour), (other, foreign)):
        assert await w.history(run_id) == before[run_id]
    assert (await wf.latest("same")).run_id == newer
    counts = await wf.count_runs()
    assert counts == {(St.DONE, af.RunState.COMPLETED): 2, (St.DONE, af.RunState.DATA_DELETED): 1}
    assert await other.count_runs() == {(St.DONE, af.RunState.COMPLETED): 1}
    if stores.durable:  # the same after a restart
        wf2 = pipeline(stores.open(), clock, scrub=lambda doc: Doc(text="<gone>"))
        assert await wf2.history(old) == history
        assert (await wf2.lookup(old)).run_state is af.RunState.DATA_DELETED


async def _await_run_state(
    wf: af.Workflow[Doc, St], run_id: str, state: af.RunState
) -> af.Record[Doc, St]:
    with trio.fail_after(3600):
        while True:
            rec = await wf.lookup(run_id)
            if rec.run_state is state:
                return rec
            async with wf.subscribe(run_id=run_id) as changes:
                rec = await wf.lookup(run_id)
                if rec.run_state is state:
                    return rec
                async for change in changes:
                    if change.run_state is state:
                        return change


async def test_delete_data_twice_unknown_paused_and_while_a_step_runs(
    stores: Stores, autojump_clock: MockClock
) -> None:
    clock = trio_clock(START)
    entered = trio.Event()
    release = trio.Event()

    async def slow(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "slow":
            entered.set()
            await release.wait()
        run.object.tags.append("slow done")
        return St.WAITING

    wf = pipeline(stores.open(), clock, working=slow)
    async with af.open_workflow(wf):
        with pytest.raises(af.RunNotFound):
            await wf.delete_data("no-such-run", "x")
        with pytest.raises(af.RunNotFound):
            await wf.delete_data("🙂" * 600, "x")
        with pytest.raises(af.ActorflowError):
            await wf.delete_data("", "x")
        # While its step runs: the run is RUNNING, not finished; refused, and the step's
        # result is then stored as usual.
        slow_id = await wf.trigger("slow")
        await entered.wait()
        with pytest.raises(af.InvalidTransition):
            await wf.delete_data(slow_id, "too early")
        release.set()
        rec = await wf.await_status("slow", slow_id, St.WAITING)
        assert rec.object.tags == ["slow done"] and rec.object.text == "secret of slow"
        # Paused: refused; the run stays paused with its object.
        paused_id = await wf.trigger("paused")
        await wf.await_status("paused", paused_id, St.WAITING)
        await wf.pause(paused_id, "hold")
        with pytest.raises(af.InvalidTransition):
            await wf.delete_data(paused_id, "no")
        paused = await wf.lookup(paused_id)
        assert paused.run_state is af.RunState.PAUSED and paused.object.text == "secret of paused"
        # Cancelled, then deleted twice (DATA_DELETED -> REQUESTED_DATA_DELETED again).
        await wf.cancel(paused_id, "bye")
        await wf.delete_data(paused_id, "first")
        first = await _await_run_state(wf, paused_id, af.RunState.DATA_DELETED)
        await wf.delete_data(paused_id, "second")
        with trio.fail_after(3600):
            while (await wf.lookup(paused_id)).version < first.version + 2:
                await _await_version(wf, paused_id, first.version + 2)
        second = await wf.lookup(paused_id)
        assert second.run_state is af.RunState.DATA_DELETED and second.object == Doc()
        # A run that is deleted cannot be cancelled, paused or resumed.
        for control in (wf.pause, wf.cancel):
            with pytest.raises(af.InvalidTransition):
                await control(paused_id, "x")
        with pytest.raises(af.InvalidTransition):
            await wf.resume(paused_id)
        # The slow run was not touched by any of it.
        assert (await wf.lookup(slow_id)).object.tags == ["slow done"]


async def _await_version(wf: af.Workflow[Doc, St], run_id: str, version: int) -> None:
    async with wf.subscribe(run_id=run_id) as changes:
        if (await wf.lookup(run_id)).version >= version:
            return
        async for change in changes:
            if change.version >= version:
                return


async def test_delete_data_requested_before_a_restart_finishes_after_it(
    stores: Stores, autojump_clock: MockClock
) -> None:
    if not stores.durable:
        pytest.skip("a restart needs a durable store")
    clock = trio_clock(START)
    wf = pipeline(stores.open(), clock)
    async with af.open_workflow(wf):
        keep = await finish(wf, "keep")
        gone = await finish(wf, "gone")
    keep_history = await wf.history(keep)
    await wf.delete_data(gone, "erasure")  # no worker: the request is stored
    for store in list(stores.opened):
        await store.aclose()
    stores.opened.clear()
    wf2 = pipeline(stores.open(), clock)
    async with af.open_workflow(wf2):
        rec = await _await_run_state(wf2, gone, af.RunState.DATA_DELETED)
        assert rec.object == Doc()
    assert all(r.object == Doc() for r in await wf2.history(gone))
    assert await wf2.history(keep) == keep_history


# --- history retention --------------------------------------------------------------------


async def test_retention_prunes_only_old_finished_runs_of_its_workflow(
    stores: Stores, autojump_clock: MockClock
) -> None:
    clock = trio_clock(START)
    store = stores.open()
    retention = af.Retention(keep_last=2, after_finish=timedelta(hours=1), every=timedelta(hours=1))
    wf = pipeline(store, clock, history_retention=retention, resume_paused_after=None)
    other = pipeline(store, clock, name="other")  # no retention: keeps everything
    async with af.open_workflow(wf, other):
        done = await finish(wf, "done")
        foreign = await finish(other, "done")
        waiting = await wf.trigger("waiting")
        await wf.await_status("waiting", waiting, St.WAITING)
        paused = await wf.trigger("paused")
        await wf.await_status("paused", paused, St.WAITING)
        await wf.pause(paused, "hold")
        full = {
            run_id: await w.history(run_id)
            for w, run_id in ((wf, done), (other, foreign), (wf, waiting), (wf, paused))
        }
        await trio.sleep(3 * 3600)  # past after_finish and two passes
        pruned = await wf.history(done)
        assert pruned == full[done][-2:]
        assert await wf.lookup(done) == full[done][-1]
        for w, run_id in ((other, foreign), (wf, waiting), (wf, paused)):
            assert await w.history(run_id) == full[run_id], run_id
        # await_status of a pruned status still answers with what is left, or says so.
        latest = await wf.await_status("done", done, St.DONE)
        assert latest.run_id == done
        # A run finishing now is not pruned before after_finish.
        late = await finish(wf, "late")
        late_history = await wf.history(late)
        await trio.sleep(30 * 60)
        assert await wf.history(late) == late_history
        # Deleting a pruned run's data scrubs what is left.
        await wf.delete_data(done, "erasure")
        rec = await _await_run_state(wf, done, af.RunState.DATA_DELETED)
        assert rec.object == Doc()
        assert all(r.object == Doc() for r in await wf.history(done))


# --- hostile filters and odd values -------------------------------------------------------

ODD_IDS = [
    "ü",
    "🙂" * 100,
    "a b",
    "%",
    "_",
    "\\",
    "'",
    '"',
    "x' OR '1'='1",
    "--",
    "\t\n",
    "z" * 512,
    "\U0010ffff",
    "\ufeff",
    "a%",
    "a_",
]


async def test_odd_foreign_ids_are_kept_apart(stores: Stores, autojump_clock: MockClock) -> None:
    clock = trio_clock(START)
    wf = pipeline(stores.open(), clock)
    ids = {fid: await wf.trigger(fid) for fid in ODD_IDS}
    ids["a"] = await wf.trigger("a")
    ids["ab"] = await wf.trigger("ab")
    for fid, run_id in ids.items():
        rec = await wf.latest(fid)
        assert rec.run_id == run_id and rec.foreign_id == fid
        assert [r.run_id for r in await wf.list_runs(foreign_id=fid)] == [run_id], fid
        assert sum((await wf.count_runs(foreign_id=fid)).values()) == 1, fid
        assert (await wf.history(run_id))[0].foreign_id == fid
    # Wildcards are not patterns.
    assert [r.foreign_id for r in await wf.list_runs(foreign_id_prefix="a%")] == ["a%"]
    assert sorted(r.foreign_id for r in await wf.list_runs(foreign_id_prefix="a", limit=100)) == [
        "a",
        "a b",
        "a%",
        "a_",
        "ab",
    ]
    assert [r.foreign_id for r in await wf.list_runs(foreign_id_prefix="_")] == ["_"]
    assert [r.foreign_id for r in await wf.list_runs(foreign_id_prefix="\\")] == ["\\"]
    assert [r.foreign_id for r in await wf.list_runs(foreign_id_prefix="🙂")] == ["🙂" * 100]
    assert [r.foreign_id for r in await wf.list_runs(foreign_id_prefix="\U0010ffff")] == [
        "\U0010ffff"
    ]
    # A sequence with duplicates and unknown ids.
    found = await wf.list_runs(foreign_id=["%", "%", "nobody", "_"], limit=10)
    assert sorted(r.foreign_id for r in found) == ["%", "_"]
    assert await wf.list_runs(foreign_id=[]) == []
    assert await wf.count_runs(foreign_id=[]) == {}
    # Over-long and empty ids are refused the same way everywhere.
    for bad in ("z" * 513, ""):
        with pytest.raises(af.InvalidArgument):
            await wf.trigger(bad)
        with pytest.raises(af.InvalidArgument):
            await wf.latest(bad)
    # The same after a restart.
    if stores.durable:
        wf2 = pipeline(stores.open(), clock)
        for fid, run_id in ids.items():
            assert (await wf2.latest(fid)).run_id == run_id


async def test_hostile_list_and_count_arguments(stores: Stores, autojump_clock: MockClock) -> None:
    clock = trio_clock(START)
    wf = pipeline(stores.open(), clock)
    run_ids = []
    for i in range(5):
        run_ids.append(await wf.trigger(f"f{i}"))
        await trio.sleep(60)
    everything = await wf.list_runs(limit=10_000)
    assert [r.run_id for r in everything] == run_ids
    for limit in (0, -1, 2**63, 2**64, 10**100, True, 1.5, "5", None):
        with pytest.raises(af.InvalidArgument):
            await wf.list_runs(limit=limit)  # type: ignore[arg-type]
    for after in ("no-such-run", "🙂", "x" * 100_000):
        with pytest.raises((af.RunNotFound, af.InvalidArgument)):
            await wf.list_runs(after=after)
    for after in ("", 5, b"x"):
        with pytest.raises(af.InvalidArgument):
            await wf.list_runs(after=after)  # type: ignore[arg-type]
    for status in (0, -1, 2**63, 2**64, 99, "NEW", 1.0, None.__class__):
        with pytest.raises(af.InvalidArgument):
            await wf.list_runs(status=status)  # type: ignore[arg-type]
        with pytest.raises(af.InvalidArgument):
            await wf.count_runs(status=status)  # type: ignore[arg-type]
    for run_state in (0, 8, 2**64, "PAUSED", 1.5):
        with pytest.raises(af.InvalidArgument):
            await wf.list_runs(run_state=run_state)  # type: ignore[arg-type]
        with pytest.raises(af.InvalidArgument):
            await wf.count_runs(run_state=run_state)  # type: ignore[arg-type]
    for foreign_id in (5, b"f1", [b"f1"], [None], {"f1": 1}.keys()):
        with pytest.raises(af.InvalidArgument):
            await wf.list_runs(foreign_id=foreign_id)  # type: ignore[arg-type]
        with pytest.raises(af.InvalidArgument):
            await wf.count_runs(foreign_id=foreign_id)  # type: ignore[arg-type]
    for moment in (
        datetime(2026, 1, 1),
        "2026-01-01",
        0,
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))),
        datetime.min.replace(tzinfo=timezone(timedelta(hours=5))),
    ):
        with pytest.raises(af.InvalidArgument):
            await wf.list_runs(created_after=moment)  # type: ignore[arg-type]
        with pytest.raises(af.InvalidArgument):
            await wf.count_runs(created_before=moment)  # type: ignore[arg-type]
    # Extreme but valid moments.
    far_past = datetime.min.replace(tzinfo=UTC)
    far_future = datetime.max.replace(tzinfo=UTC)
    assert len(await wf.list_runs(created_after=far_past, limit=100)) == 5
    assert await wf.list_runs(created_after=far_future) == []
    assert await wf.list_runs(created_before=far_past) == []
    assert await wf.list_runs(created_after=far_future, created_before=far_past) == []
    assert await wf.count_runs(created_after=far_future, created_before=far_past) == {}
    # A moment in another time zone means the same instant.
    third = everything[2].created_at
    east = third.astimezone(timezone(timedelta(hours=14)))
    west = third.astimezone(timezone(timedelta(hours=-12, minutes=-0)))
    for moment in (third, east, west):
        assert [r.run_id for r in await wf.list_runs(created_after=moment)] == run_ids[2:]
        assert [r.run_id for r in await wf.list_runs(created_before=moment)] == run_ids[:2]
        counts = await wf.count_runs(created_after=moment)
        assert sum(counts.values()) == 3
    # Half-minute offsets and microseconds.
    odd = third.astimezone(timezone(timedelta(hours=5, minutes=45)))
    just_after = odd + timedelta(microseconds=1)
    assert [r.run_id for r in await wf.list_runs(created_after=just_after)] == run_ids[3:]
    # Descending keyset pages over odd filters.
    page = await wf.list_runs(limit=2, descending=True)
    assert [r.run_id for r in page] == run_ids[:2:-1][:2] or [r.run_id for r in page] == [
        run_ids[4],
        run_ids[3],
    ]
    rest = await wf.list_runs(limit=10, descending=True, after=page[-1].run_id)
    assert [r.run_id for r in rest] == [run_ids[2], run_ids[1], run_ids[0]]
    # An id of another workflow as `after` is unknown here.
    other = pipeline(wf.store, clock, name="other")
    other_id = await other.trigger("f0")
    with pytest.raises((af.RunNotFound, af.InvalidArgument)):
        await wf.list_runs(after=other_id)
    with pytest.raises(af.RunNotFound):
        await wf.lookup(other_id)
    with pytest.raises(af.RunNotFound):
        await wf.history(other_id)


async def test_odd_object_values_round_trip(stores: Stores, autojump_clock: MockClock) -> None:
    """Values a user may well put in an object come back equal on every store; values a
    store cannot hold are refused at trigger with InvalidArgument, the same everywhere."""
    clock = trio_clock(START)
    wf = pipeline(stores.open(), clock)
    fine = [
        Doc(text="🙂" * 1000, n=2**63 - 1, tags=["", "\x7f", "\u2028", "\ufeff"]),
        Doc(n=-(2**63)),
        Doc(text="x" * 2_000_000),
        Doc(tags=["'; DROP TABLE runs; --", "\\u0000", "%s", "{}"]),
    ]
    for i, obj in enumerate(fine):
        run_id = await wf.trigger(f"fine{i}", initial=obj)
        got = await wf.lookup(run_id)
        assert got.object == obj
        assert (await wf.history(run_id))[0].object == obj
    # Numbers beyond 64 bits: stored exactly, or refused clearly; never a store's crash.
    for i, obj in enumerate([Doc(n=2**64), Doc(n=-(2**70)), Doc(n=10**40)]):
        try:
            run_id = await wf.trigger(f"big{i}", initial=obj)
        except af.InvalidArgument:
            continue
        assert (await wf.lookup(run_id)).object == obj
    nul = await wf.trigger("nul", initial=Doc(text="a\x00b", tags=["\x00"]))
    assert (await wf.lookup(nul)).object == Doc(text="a\x00b", tags=["\x00"])
    with pytest.raises(af.InvalidArgument):
        await wf.trigger("bad", initial=Doc(tags=["\ud800"]))
    with pytest.raises(af.RunNotFound):
        await wf.latest("bad")
