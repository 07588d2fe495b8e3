"""Adversarial probe, written from the public contract (API.md) and the issues: data
deletion and history retention, hostile list/count/history filters, misbehaving user
code, crashes of a worker process and broken store files, and load on one foreign id.
Store tests run on MemoryStore, SQLiteStore and (with ACTORFLOW_PG_DSN) PostgresStore.
"""

from __future__ import annotations

import enum
import os
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
from tests.probe_stores import Stores


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
        with pytest.raises(af.ActorflowError, match="history retention"):
            await wf.await_status("done", done, St.NEW, timeout=60)
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
    "🙂" * 384,  # 1536 bytes of UTF-8: the longest id, in an index key
    "\U0010ffff" * 383 + "b",
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
    assert sorted(r.foreign_id for r in await wf.list_runs(foreign_id_prefix="🙂")) == [
        "🙂" * 100,
        "🙂" * 384,
    ]
    assert sorted(r.foreign_id for r in await wf.list_runs(foreign_id_prefix="\U0010ffff")) == [
        "\U0010ffff",
        "\U0010ffff" * 383 + "b",
    ]
    # A sequence with duplicates and unknown ids.
    found = await wf.list_runs(foreign_id=["%", "%", "nobody", "_"], limit=10)
    assert sorted(r.foreign_id for r in found) == ["%", "_"]
    assert await wf.list_runs(foreign_id=[]) == []
    assert await wf.count_runs(foreign_id=[]) == {}
    # Over-long and empty ids are refused the same way everywhere.
    for bad in ("z" * 513, "", "🙂" * 385):
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
    for descending in ("yes", None, 1):
        with pytest.raises(af.InvalidArgument):
            await wf.list_runs(descending=descending)  # type: ignore[arg-type]
    for buffer in (-1, 1.5, "10", None, True):
        with pytest.raises(af.InvalidArgument):
            async with wf.subscribe(buffer=buffer):  # type: ignore[arg-type]
                pass
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


# --- user code that misbehaves ------------------------------------------------------------


class Alien(enum.IntEnum):
    """Another workflow's statuses, equal by value to St's."""

    NEW = 1
    WORKING = 2
    WAITING = 3
    DONE = 4


class _MyBase(BaseException):
    """A BaseException of the user's own (not an Exception)."""


STRAY_BASE = [
    GeneratorExit("closing"),
    _MyBase("mine"),
    BaseExceptionGroup("group", [GeneratorExit("in a group")]),
]


@pytest.mark.parametrize("raised", STRAY_BASE, ids=lambda e: type(e).__name__)
async def test_stray_base_exceptions_of_steps_are_their_errors(
    make_store: Any, raised: BaseException, autojump_clock: MockClock
) -> None:
    """A step raising GeneratorExit (or any BaseException that neither cancels nor exits)
    is an error of the step: counted, retried, paused at the limit with a reason naming
    it; it used to end the whole workflow (and the caller's nursery)."""
    clock = trio_clock(START)
    calls: list[int] = []

    async def broken(run: af.Run[Doc, St]) -> St:
        calls.append(1)
        raise raised

    b = af.Builder("base", Doc, St)
    b.add_step(St.NEW, broken, to=St.WORKING, pause_after_errors=2)
    wf = b.build(make_store(), clock=clock, resume_paused_after=None)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        paused = await _await_run_state(wf, run_id, af.RunState.PAUSED)
    assert len(calls) == 2
    assert type(raised).__name__ in paused.meta.run_state_reason
    assert [r.run_state for r in await wf.history(run_id)] == [
        af.RunState.INITIATED,
        af.RunState.PAUSED,
    ]


async def test_stray_base_exceptions_of_other_user_functions(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """The same for a callback (its caller gets a clear error), a timeout function (fires
    again), a hook (retried), a connector (retried) and a scrub function."""
    clock = trio_clock(START)
    fired: list[str] = []
    hooked: list[str] = []
    connected: list[str] = []
    retried = trio.Event()

    def note(seen: list[str], item: str) -> None:
        seen.append(item)
        if len(hooked) >= 3 and len(connected) >= 2:
            retried.set()

    b = af.Builder("others", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        run.object.text = "secret"
        return St.WAITING

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        if payload == b"bad":
            raise GeneratorExit("callback closing")
        return St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])

    async def late(run: af.Run[Doc, St], now: datetime) -> St:
        fired.append(run.foreign_id)
        if len(fired) == 1:
            raise _MyBase("timeout")
        return St.DONE

    b.add_timeout(
        St.WAITING,
        lambda run, now: now + timedelta(hours=1) if run.foreign_id == "t" else None,
        late,
        to=[St.DONE],
        error_backoff=timedelta(seconds=1),
    )

    async def on_done(record: af.Record[Doc, St]) -> None:
        note(hooked, record.foreign_id)
        if len(hooked) == 1:
            raise GeneratorExit("hook closing")

    b.on_complete(on_done)

    async def connector(workflow: Any, event: af.ConnectorEvent) -> None:
        note(connected, event.id)
        if len(connected) == 1:
            raise _MyBase("connector")

    b.add_connector("events", af.MemorySource([_event("e1")]), connector)

    def scrub(doc: Doc) -> Doc:
        raise GeneratorExit("scrub closing")

    wf = b.build(make_store(), clock=clock, scrub=scrub)
    async with af.open_workflow(wf):
        c = await wf.trigger("c")
        await wf.await_status("c", c, St.WAITING)
        with pytest.raises(af.ActorflowError, match="GeneratorExit"):
            await wf.callback("c", St.WAITING, b"bad")
        assert (await wf.lookup(c)).status is St.WAITING
        done = await wf.callback("c", St.WAITING, b"good")
        assert done is not None and done.status is St.DONE
        t = await wf.trigger("t")
        await wf.await_status("t", t, St.DONE)
        assert fired == ["t", "t"]
        with trio.fail_after(3600):
            await retried.wait()
        assert sorted(set(hooked)) == ["c", "t"]
        assert connected == ["e1", "e1"]
        with pytest.raises(af.ActorflowError, match="scrub"):
            await wf.delete_data(c, "erasure")
        assert wf.states()  # the workflow is still up


def _event(event_id: str) -> af.ConnectorEvent:
    return af.ConnectorEvent(id=event_id, foreign_id="x", type="t", headers={}, created_at=START)


async def test_system_exit_in_a_step_ends_the_process_and_nothing_is_lost(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    """SystemExit from a step ends the worker as in any Python program; the run is not
    lost: after a restart the step runs again and the run finishes, each version once."""
    clock = trio_clock(START)
    path = tmp_path / "exit.db"
    exits = [True]

    async def exiting(run: af.Run[Doc, St]) -> St:
        if exits and run.foreign_id == "x":
            exits.pop()
            raise SystemExit(3)
        run.object.tags.append("worked")
        return St.WAITING

    async with af.SQLiteStore(path) as store:
        wf = pipeline(store, clock, working=exiting)
        ok = await wf.trigger("ok")
        x = await wf.trigger("x")
        with pytest.raises(BaseException) as caught:
            async with af.open_workflow(wf):
                await trio.sleep_forever()
        assert (
            caught.group_contains(SystemExit)
            if isinstance(caught.value, BaseExceptionGroup)
            else isinstance(caught.value, SystemExit)
        )
    async with af.SQLiteStore(path) as store:
        wf = pipeline(store, clock, working=exiting)
        async with af.open_workflow(wf):
            for fid, run_id in (("ok", ok), ("x", x)):
                rec = await wf.await_status(fid, run_id, St.WAITING)
                assert rec.object.tags == ["worked"]
                statuses = [r.status for r in await wf.history(run_id)]
                assert statuses == [St.NEW, St.WORKING, St.WAITING]


async def test_alien_statuses_and_junk_from_callbacks_and_timeouts(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """A member of another enum equal by value is not an allowed status (it was stored as
    if it were); a callback returning junk raises a clear error to its caller and changes
    nothing; a timeout function returning junk fires again."""
    clock = trio_clock(START)
    step_results: list[Any] = [Alien.WAITING, St.WAITING]
    timeout_results: list[Any] = [Alien.DONE, "DONE", None, St.DONE]

    b = af.Builder("junk", Doc, St)

    async def step(run: af.Run[Doc, St]) -> St:
        return step_results.pop(0) if step_results else St.WAITING  # type: ignore[no-any-return]

    b.add_step(St.NEW, step, to=St.WAITING, error_backoff=timedelta(seconds=1))

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        run.object.text = payload.decode()
        return {b"alien": Alien.DONE, b"none": None, b"new": St.NEW}.get(payload, St.DONE)  # type: ignore[return-value]

    b.add_callback(St.WAITING, answer, to=[St.DONE])

    async def late(run: af.Run[Doc, St], now: datetime) -> St:
        return timeout_results.pop(0)  # type: ignore[no-any-return]

    b.add_timeout(
        St.WAITING,
        lambda run, now: now + timedelta(hours=1) if run.foreign_id == "t" else None,
        late,
        to=[St.DONE],
        error_backoff=timedelta(seconds=1),
    )
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        c = await wf.trigger("c")
        waiting = await wf.await_status("c", c, St.WAITING, timeout=3600)
        assert step_results == []
        assert [r.status for r in await wf.history(c)] == [St.NEW, St.WAITING]
        for junk in (b"alien", b"none", b"new"):
            with pytest.raises(af.ActorflowError, match="not an allowed destination"):
                await wf.callback("c", St.WAITING, junk)
        assert await wf.lookup(c) == waiting
        t = await wf.trigger("t")
        done = await wf.await_status("t", t, St.DONE, timeout=24 * 3600)
        assert timeout_results == [] and done.run_state is af.RunState.COMPLETED


async def test_objects_are_never_shared_with_user_code(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """Changing an object after it was handed over (the initial object after trigger,
    the step's object after it returned, a record's object from lookup/history/await)
    changes nothing stored."""
    clock = trio_clock(START)
    kept: list[Doc] = []
    proceed = trio.Event()

    async def keeps(run: af.Run[Doc, St]) -> St:
        run.object.tags.append("worked")
        kept.append(run.object)
        return St.WAITING

    wf = pipeline(make_store(), clock, working=keeps)
    initial = Doc(text="initial", tags=["a"])
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f", initial=initial)
        initial.tags.append("changed after trigger")
        initial.text = "changed"
        rec = await wf.await_status("f", run_id, St.WAITING)
        kept[0].tags.append("changed after return")
        kept[0].text = "changed"
        rec.object.tags.append("changed by reader")
        for version in await wf.history(run_id):
            version.object.tags.append("changed by reader")
        (await wf.lookup(run_id)).object.tags.clear()
        (await wf.latest("f")).object.text = "changed"
        proceed.set()
        again = await wf.lookup(run_id)
        assert again.object == Doc(text="secret of f", n=1, tags=["a", "worked"])
        history = await wf.history(run_id)
        assert history[0].object == Doc(text="initial", tags=["a"])
        assert history[-1].object == again.object
        done = await wf.callback("f", St.WAITING, b"ok")
        assert done is not None
        assert done.object.tags == ["a", "worked", "ok"]


async def test_a_hanging_step_does_not_hold_controls_that_cannot_apply(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """resume and delete_data of a run whose step hangs are refused at once (they used to
    wait for the step, forever); pause still interrupts it after the grace period."""
    clock = trio_clock(START)
    entered = trio.Event()

    async def hangs(run: af.Run[Doc, St]) -> St:
        entered.set()
        await trio.sleep_forever()
        raise AssertionError

    wf = pipeline(make_store(), clock, working=hangs, resume_paused_after=None)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        await entered.wait()
        with trio.fail_after(1):
            with pytest.raises(af.InvalidTransition):
                await wf.resume(run_id)
            with pytest.raises(af.InvalidTransition):
                await wf.delete_data(run_id, "x")
        with trio.fail_after(3600):
            paused = await wf.pause(run_id, "hold")
        assert paused.run_state is af.RunState.PAUSED and paused.status is St.WORKING


async def test_very_large_objects(make_store: Any, autojump_clock: MockClock) -> None:
    clock = trio_clock(START)

    async def grows(run: af.Run[Doc, St]) -> St:
        run.object.tags = ["🙂" * 1000] * 5000  # ~20 MB of JSON text
        return St.WAITING

    wf = pipeline(make_store(), clock, working=grows)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("big")
        small = await wf.trigger("small")
        rec = await wf.await_status("big", run_id, St.WAITING)
        assert len(rec.object.tags) == 5000 and rec.object.tags[0] == "🙂" * 1000
        await wf.await_status("small", small, St.WAITING)
    assert (await wf.lookup(run_id)).object == rec.object


# --- crashes ------------------------------------------------------------------------------

REPEATS = 200


def crash_workflow(store: af.Store, clock: af.Clock, *, hang: bool) -> af.Workflow[Doc, St]:
    """NEW -step-> WORKING (save_and_repeat REPEATS times) -step-> WAITING. With ``hang``
    the WORKING step of "slow" prints that it entered and hangs (the child worker)."""
    b = af.Builder("crash", Doc, St)

    @b.step(St.NEW, to=St.WORKING)
    async def new(run: af.Run[Doc, St]) -> St:
        run.object.tags.append("new")
        return St.WORKING

    @b.step(St.WORKING, to=St.WAITING)
    async def work(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "slow" and hang:
            print("entered slow", flush=True)
            await trio.sleep_forever()
        if run.foreign_id == "batch" and run.object.n < REPEATS:
            run.object.n += 1
            if hang and run.object.n == REPEATS // 2:
                print("half way", flush=True)
            return run.save_and_repeat()
        return St.WAITING

    return b.build(store, clock=clock)


CHILD = """
import sys
import trio
import actorflow as af
from tests.test_adversarial_probe import crash_workflow

async def main(path):
    async with af.SQLiteStore(path) as store:
        wf = crash_workflow(store, af.SystemClock(), hang=True)
        async with af.open_workflow(wf):
            await wf.trigger("slow")
            await wf.trigger("batch")
            for i in range(10_000):
                items = [f"m{i}-{j}" for j in range(50)] + [f"m{i}-0", "", 5]
                results = await wf.trigger_many(items)
                assert all(isinstance(r, str) for r in results[:50]), results
                print(f"batch {i}", flush=True)

trio.run(main, sys.argv[1])
"""


async def test_kill_9_mid_step_and_mid_batch_then_restart(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    """SIGKILL of a worker whose step hangs, while another run saves batches and
    trigger_many stores runs: after a restart every run finishes, each version is stored
    once (contiguous versions, the batch counter up by one per version), no foreign id has
    two runs, and every acknowledged trigger_many item is there."""
    import signal
    import subprocess
    import sys

    from tests.fresh_python import ROOT

    path = tmp_path / "crash.db"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    seen: list[str] = []

    def run_child() -> None:
        child = subprocess.Popen(
            [sys.executable, str(script), str(path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        try:
            for line in child.stdout:  # blocks on the child's output: no guessing
                seen.append(line.strip())
                batches = sum(s.startswith("batch ") for s in seen)
                if "entered slow" in seen and "half way" in seen and batches >= 3:
                    break
            else:
                raise AssertionError(f"child ended: {seen} {child.stderr and child.stderr.read()}")
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL

    await trio.to_thread.run_sync(run_child)
    acknowledged = [int(s.split()[1]) for s in seen if s.startswith("batch ")]
    clock = trio_clock(START)
    async with af.SQLiteStore(path) as store:
        wf = crash_workflow(store, clock, hang=False)
        async with af.open_workflow(wf):
            slow = await wf.latest("slow")
            batch = await wf.latest("batch")
            await wf.await_status("slow", slow.run_id, St.WAITING, timeout=3600)
            done = await wf.await_status("batch", batch.run_id, St.WAITING, timeout=3600)
            assert done.object.n == REPEATS
            for i in acknowledged:
                last = await wf.latest(f"m{i}-49")
                await wf.await_status(f"m{i}-49", last.run_id, St.WAITING, timeout=3600)
        for fid in ("slow", "batch"):
            history = await wf.history((await wf.latest(fid)).run_id)
            assert [r.version for r in history] == list(range(1, len(history) + 1))
        history = await wf.history(batch.run_id)
        ns = [r.object.n for r in history if r.status is St.WORKING]
        assert ns == list(range(REPEATS + 1)), "a batch's version stored twice or lost"
        total = sum((await wf.count_runs()).values())
        runs = []
        after = None
        while True:
            page = await wf.list_runs(limit=1000, after=after)
            runs.extend(page)
            if len(page) < 1000:
                break
            after = page[-1].run_id
        assert len(runs) == total
        fids = [r.foreign_id for r in runs]
        assert len(fids) == len(set(fids)), "a foreign id got two runs"
        for i in acknowledged:
            for j in range(50):
                assert f"m{i}-{j}" in set(fids)


def _valid_store_file(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("create table t (x)")
        conn.executemany("insert into t values (?)", [("x" * 1000,)] * 200)
    conn.close()


BROKEN_FILES = {
    "garbage": lambda p: p.write_bytes(os.urandom(8192)),
    "text": lambda p: p.write_text("hello, I am not a database\n" * 100),
    "zeros": lambda p: p.write_bytes(bytes(8192)),
    "header_then_garbage": lambda p: p.write_bytes(b"SQLite format 3\x00" + os.urandom(8192)),
    "other_application": _valid_store_file,
}


@pytest.mark.parametrize("kind", sorted(BROKEN_FILES))
async def test_broken_store_files_are_a_clear_store_error_at_open(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "broken.db"
    BROKEN_FILES[kind](path)
    before = path.read_bytes()
    with pytest.raises(af.StoreError) as caught:
        store = af.SQLiteStore(path)
        try:
            wf = pipeline(store, af.SystemClock())
            await wf.trigger("f")
        finally:
            await store.aclose()
    assert str(path.name) in str(caught.value)
    assert path.read_bytes() == before  # the file is not changed


async def test_truncated_and_damaged_store_files(tmp_path: Path) -> None:
    """A store file cut short or with damaged pages gives StoreError (at open or at the
    first read of a damaged page), never a bare sqlite3 error; nothing is written."""
    path = tmp_path / "store.db"
    async with af.SQLiteStore(path) as store:
        wf = pipeline(store, af.SystemClock())
        for chunk in range(4):
            await wf.trigger_many([f"f{chunk}-{i}" for i in range(500)])
    whole = path.read_bytes()
    assert len(whole) > 64 * 1024
    for damage in ("truncated", "torn"):
        if damage == "truncated":
            path.write_bytes(whole[: len(whole) // 3])
        else:
            middle = len(whole) // 2
            path.write_bytes(whole[:middle] + os.urandom(8192) + whole[middle + 8192 :])
        try:
            store = af.SQLiteStore(path)
        except af.StoreError as exc:
            assert path.name in str(exc)
            continue
        try:
            wf = pipeline(store, af.SystemClock())
            try:
                runs = await wf.list_runs(limit=10_000)
                for rec in runs:
                    await wf.history(rec.run_id)
            except af.StoreError as exc:
                assert "malformed" in str(exc) or path.name in str(exc)
        finally:
            await store.aclose()


async def test_read_only_store_file_and_directory(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes read-only files")
    path = tmp_path / "ro.db"
    async with af.SQLiteStore(path) as store:
        await pipeline(store, af.SystemClock()).trigger("f")
    path.chmod(0o444)
    try:
        with pytest.raises(af.StoreError, match=r"writable|read-only|readonly"):
            af.SQLiteStore(path)
    finally:
        path.chmod(0o644)
    directory = tmp_path / "is_a_dir.db"
    directory.mkdir()
    with pytest.raises(af.StoreError):
        af.SQLiteStore(directory)


# --- load on one foreign id ---------------------------------------------------------------


async def test_many_concurrent_callbacks_for_one_run_apply_once(
    stores: Stores, autojump_clock: MockClock
) -> None:
    clock = trio_clock(START)
    calls: list[bytes] = []

    b = af.Builder("cb", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        calls.append(payload)
        await trio.sleep(0.01)
        run.object.tags.append(payload.decode())
        return St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])
    wf = b.build(stores.open(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("one")
        await wf.await_status("one", run_id, St.WAITING)
        applied: list[af.Record[Doc, St]] = []
        nothing: list[int] = []

        async def call(i: int) -> None:
            rec = await wf.callback("one", St.WAITING, str(i).encode())
            if rec is None:
                nothing.append(i)
            else:
                applied.append(rec)

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(call, i)
    assert len(applied) == 1 and len(nothing) == 59
    assert len(calls) == 1
    history = await wf.history(run_id)
    assert [r.status for r in history] == [St.NEW, St.WAITING, St.DONE]
    assert history[-1] == applied[0]
    assert history[-1].object.tags == [calls[0].decode()]


async def test_concurrent_triggers_from_two_store_handles(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """Two store objects on the same storage (two processes' view) and many concurrent
    triggers of one foreign id: exactly one run; the rest WorkflowInProgress."""
    clock = trio_clock(START)
    first = pipeline(stores.open(), clock)
    second = pipeline(stores.open(), clock)
    ok: list[str] = []
    refused: list[int] = []

    async def go(wf: af.Workflow[Doc, St]) -> None:
        try:
            ok.append(await wf.trigger("race"))
        except af.WorkflowInProgress:
            refused.append(1)

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(go, first if i % 2 else second)
    assert len(ok) == 1 and len(refused) == 39
    assert [r.run_id for r in await first.list_runs(foreign_id="race")] == ok
    # Again, once the run is finished: one more run, not two.
    await first.cancel(ok[0], "done")
    ok.clear()
    refused.clear()
    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(go, first if i % 2 else second)
    assert len(ok) == 1 and len(refused) == 39
    assert len(await second.list_runs(foreign_id="race")) == 2
    # trigger and trigger_many (with the id twice in one batch) racing on both handles.
    await first.cancel(ok[0], "done")
    ok.clear()
    refused.clear()

    async def go_many(wf: af.Workflow[Doc, St]) -> None:
        for result in await wf.trigger_many(["race", "other", "race"]):
            if isinstance(result, str):
                ok.append(result)
            else:
                assert isinstance(result, af.WorkflowInProgress), result
                refused.append(1)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(go_many if i % 3 else go, first if i % 2 else second)
    runs = await first.list_runs(foreign_id=["race", "other"], limit=100)
    assert len(runs) == 3 + 1  # two finished races, one new race, one other
    assert sorted(ok) == sorted(r.run_id for r in runs[-2:])


async def test_trigger_many_with_duplicates_and_bad_items(
    stores: Stores, autojump_clock: MockClock
) -> None:
    clock = trio_clock(START)
    wf = pipeline(stores.open(), clock)
    busy = await wf.trigger("busy")
    items: list[Any] = [
        "a",
        "a",  # duplicate in the batch: the first wins
        {"foreign_id": "b", "initial": Doc(text="b")},
        ("c", St.WORKING),
        ("c2", None, Doc(text="c2")),
        {"foreign_id": "d", "start": St.DONE},  # terminal start
        {"foreign_id": ""},
        None,
        5,
        b"bytes",
        {"foreign_id": "e", "bogus": 1},
        {"start": St.NEW},
        ("f", 99),
        {"foreign_id": "g", "initial": {"text": "a dict"}},
        {"foreign_id": "h", "initial": Doc(tags=["\ud800"])},
        "busy",  # unfinished run already stored
        "z" * 513,
        "🙂",
        {"foreign_id": "b"},  # duplicate of a mapping item
        "a\x00b",
    ]
    results = await wf.trigger_many(items)
    assert len(results) == len(items)
    good = {0: "a", 2: "b", 3: "c", 4: "c2", 17: "🙂"}
    for i, result in enumerate(results):
        if i in good:
            assert isinstance(result, str), (i, items[i], result)
            assert (await wf.lookup(result)).foreign_id == good[i]
        else:
            assert isinstance(result, af.ActorflowError), (i, items[i], result)
    assert isinstance(results[1], af.WorkflowInProgress)
    assert isinstance(results[15], af.WorkflowInProgress)
    assert isinstance(results[18], af.WorkflowInProgress)
    assert (await wf.lookup(results[2])).object == Doc(text="b")  # type: ignore[arg-type]
    assert (await wf.lookup(results[3])).status is St.WORKING  # type: ignore[arg-type]
    assert (await wf.lookup(results[4])).object == Doc(text="c2")  # type: ignore[arg-type]
    assert [r.run_id for r in await wf.list_runs(foreign_id="busy")] == [busy]
    stored = {r.foreign_id for r in await wf.list_runs(limit=100)}
    assert stored == {"busy", "a", "b", "c", "c2", "🙂"}
    # Empty and non-sequence inputs.
    assert await wf.trigger_many([]) == []
    for bad in (None, "abc", 5, {"foreign_id": "x"}):
        with pytest.raises(af.InvalidArgument):
            await wf.trigger_many(bad)  # type: ignore[arg-type]
    # Concurrent overlapping batches: one run per foreign id in all.
    batches = [[f"o{(k * 7 + j) % 60}" for j in range(40)] for k in range(6)]
    outcomes: list[list[str | af.ActorflowError]] = []

    async def send(batch: list[str]) -> None:
        outcomes.append(await wf.trigger_many(batch))

    async with trio.open_nursery() as nursery:
        for batch in batches:
            nursery.start_soon(send, batch)
    won = [r for outcome in outcomes for r in outcome if isinstance(r, str)]
    assert len(won) == 60 == len(set(won))
    assert all(
        isinstance(r, af.WorkflowInProgress) for o in outcomes for r in o if not isinstance(r, str)
    )
    assert sum((await wf.count_runs(foreign_id_prefix="o")).values()) == 60


async def test_a_callback_returning_junk_counts_up_to_the_pause(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """Consecutive junk results of a callback are consecutive errors (the count was reset
    as soon as the function returned, before its result was checked: always 1, never
    paused)."""
    clock = trio_clock(START)
    b = af.Builder("cbjunk", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        return St.NEW if payload == b"junk" else St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])
    wf = b.build(
        make_store(),
        clock=clock,
        default_options={"pause_after_errors": 3},
        resume_paused_after=None,
    )
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        await wf.await_status("f", run_id, St.WAITING)
        for count in (1, 2):
            with pytest.raises(af.CallbackError, match=f"{count} consecutive"):
                await wf.callback("f", St.WAITING, b"junk")
        with pytest.raises(af.CallbackError, match=r"3 consecutive.*paused"):
            await wf.callback("f", St.WAITING, b"junk")
        paused = await wf.lookup(run_id)
        assert paused.run_state is af.RunState.PAUSED and paused.meta.error_count == 3
        await wf.resume(run_id)
        done = await wf.callback("f", St.WAITING, b"ok")
        assert done is not None and done.status is St.DONE


@attrs.define
class Measure:
    value: float = 0.0
    label: str = ""
    extra: Any = None


async def test_objects_a_store_cannot_hold_are_errors_of_that_run_only(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """A step leaving NaN, infinity, a lone surrogate or an unserialisable value in its
    object has an error of its own (counted, retried from the stored version); the runs
    committed alongside it in the same group commit are stored as usual."""
    clock = trio_clock(START)
    poison: dict[str, Any] = {
        "nan": ("value", float("nan")),
        "inf": ("value", float("-inf")),
        "surrogate": ("label", "bad \udc80 text"),
        "cycle": ("extra", None),
    }
    tried: dict[str, int] = {}

    class M(enum.IntEnum):
        A = 1
        B = 2

    b = af.Builder("poison", Measure, M)

    @b.step(M.A, to=M.B, error_backoff=timedelta(seconds=1))
    async def step(run: af.Run[Measure, M]) -> M:
        tried[run.foreign_id] = tried.get(run.foreign_id, 0) + 1
        if run.foreign_id in poison and tried[run.foreign_id] == 1:
            field, value = poison[run.foreign_id]
            if run.foreign_id == "cycle":
                value = []
                value.append(value)
            run.object.label = f"ok {run.foreign_id}"
            run.object.value = 1.5
            setattr(run.object, field, value)
            return M.B
        run.object.label = f"ok {run.foreign_id}"
        run.object.value = 1.5
        return M.B

    wf = b.build(stores.open(), clock=clock)
    fids = [f"plain{i}" for i in range(20)] + sorted(poison)
    async with af.open_workflow(wf):
        ids = dict(zip(fids, [r for r in await wf.trigger_many(fids)], strict=True))
        for fid, run_id in ids.items():
            assert isinstance(run_id, str)
            rec = await wf.await_status(fid, run_id, M.B, timeout=3600)
            assert rec.object == Measure(value=1.5, label=f"ok {fid}")
            assert [r.status for r in await wf.history(run_id)] == [M.A, M.B]
    for fid in fids:
        assert tried[fid] == (2 if fid in poison else 1), fid


async def test_controls_from_another_process_while_the_worker_runs(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """A second store handle (another process's view, no worker) deletes a finished run's
    data and pauses a run whose step is in flight: the worker finishes the scrub, and the
    step's result is not stored over the pause (nor twice after the resume)."""
    if not stores.durable:
        pytest.skip("two handles on one storage need a durable store")
    clock = trio_clock(START)
    entered = trio.Event()
    release = trio.Event()
    results: list[str] = []

    async def slow(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "slow" and not release.is_set():
            entered.set()
            await release.wait()
        results.append(run.foreign_id)
        run.object.tags.append("worked")
        return St.WAITING

    worker = pipeline(stores.open(), clock, working=slow, resume_paused_after=None)
    remote = pipeline(stores.open(), clock, working=slow, resume_paused_after=None)
    async with af.open_workflow(worker):
        done = await finish(worker, "done")
        slow_id = await worker.trigger("slow")
        await entered.wait()
        await remote.delete_data(done, "erasure")
        scrubbed = await _await_run_state(worker, done, af.RunState.DATA_DELETED)
        assert scrubbed.object == Doc()
        assert all(r.object == Doc() for r in await remote.history(done))
        paused = await remote.pause(slow_id, "hold")
        assert paused.run_state is af.RunState.PAUSED
        release.set()
        await trio.sleep(600)  # virtual: long past the step's end and any retry
        rec = await worker.lookup(slow_id)
        assert rec.run_state is af.RunState.PAUSED and rec.status is St.WORKING
        await remote.resume(slow_id)
        rec = await worker.await_status("slow", slow_id, St.WAITING, timeout=3600)
        assert rec.object.tags == ["worked"]
    statuses = [r.status for r in await worker.history(slow_id)]
    assert statuses.count(St.WAITING) == 1


# --- durations at the edge ----------------------------------------------------------------


async def test_a_daily_back_off_keeps_retrying_past_thirty_errors(
    make_store: Any, autojump_clock: MockClock
) -> None:
    """error_backoff of a day doubled 30 times overflowed timedelta: from the 31st
    consecutive error on, the run's actor failed over and over instead of retrying."""
    clock = trio_clock(START)
    calls: list[int] = []

    async def flaky(run: af.Run[Doc, St]) -> St:
        calls.append(1)
        if len(calls) <= 35:
            raise RuntimeError("down")
        return St.WAITING

    b = af.Builder("daily", Doc, St)
    b.add_step(
        St.NEW,
        flaky,
        to=St.WAITING,
        error_backoff=timedelta(days=1),
        max_error_backoff=timedelta(days=2),
    )
    wf = b.build(make_store(), clock=clock)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        rec = await wf.await_status("f", run_id, St.WAITING, timeout=120 * 86400)
    assert len(calls) == 36
    assert rec.updated_at - rec.created_at < timedelta(days=75)


def test_durations_beyond_what_a_clock_can_add_are_build_errors() -> None:
    b = af.Builder("durations", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def go(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    for option in ("consume_lag", "error_backoff", "max_error_backoff", "lag_alert"):
        with pytest.raises(af.BuildError, match=option):
            one = af.Builder("d", Doc, St)
            one.add_step(St.NEW, go, to=St.WAITING, **{option: timedelta.max})
            one.build(af.MemoryStore())
    for build in (
        {"resume_paused_after": timedelta.max},
        {"grace_period": timedelta.max},
        {"default_options": {"error_backoff": timedelta(days=10**6)}},
    ):
        with pytest.raises(af.BuildError):
            b.build(af.MemoryStore(), **build)
    with pytest.raises(af.BuildError):
        af.Retention(keep_for=timedelta.max)


async def test_the_longest_durations_allowed_work(
    make_store: Any, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A thousand years of consume lag, back-off and automatic resume, and a timer a
    billion days away: accepted, and nothing overflows (the runs wait)."""
    clock = trio_clock(START)
    longest = timedelta(days=365 * 1000)
    b = af.Builder("longest", Doc, St)

    async def go(run: af.Run[Doc, St]) -> St:
        if run.foreign_id == "fail":
            raise RuntimeError("once")
        if run.foreign_id == "pause":
            return run.pause("hold")
        return St.WAITING

    b.add_step(St.NEW, go, to=St.WAITING, error_backoff=longest, max_error_backoff=longest)

    @b.step(St.WORKING, to=St.WAITING, consume_lag=longest)
    async def lagging(run: af.Run[Doc, St]) -> St:
        return St.WAITING

    async def late(run: af.Run[Doc, St], now: datetime) -> St:
        return St.DONE

    b.add_timeout(St.WAITING, af.after(timedelta(days=999_999_999)), late, to=[St.DONE])
    wf = b.build(make_store(), clock=clock, resume_paused_after=longest)
    async with af.open_workflow(wf):
        ids = {fid: await wf.trigger(fid) for fid in ("fail", "pause", "ok")}
        lag = await wf.trigger("lag", St.WORKING)
        await trio.sleep(86400)
        assert (await wf.lookup(ids["ok"])).status is St.WAITING
        assert (await wf.lookup(ids["pause"])).run_state is af.RunState.PAUSED
        assert (await wf.lookup(ids["fail"])).version == 1
        assert (await wf.lookup(lag)).status is St.WORKING
    assert not [r for r in caplog.records if "actor failed" in r.getMessage()]


async def test_a_step_changing_its_record_changes_nothing_stored(
    make_store: Any, autojump_clock: MockClock
) -> None:
    clock = trio_clock(START)

    async def meddles(run: af.Run[Doc, St]) -> St:
        run.record.object.tags.append("via the record")
        run.record.object.text = "via the record"
        return St.WAITING

    wf = pipeline(make_store(), clock, working=meddles)
    async with af.open_workflow(wf):
        run_id = await wf.trigger("f")
        rec = await wf.await_status("f", run_id, St.WAITING)
    assert rec.object == Doc(text="secret of f", n=1)
    assert all("via the record" not in repr(r.object) for r in await wf.history(run_id))


DELETING_CHILD = """
import sys
import trio
import actorflow as af
from tests.test_adversarial_probe import Doc, pipeline

async def main(path):
    async with af.SQLiteStore(path) as store:
        wf = pipeline(store, af.SystemClock())
        ids = await wf.trigger_many(
            [{"foreign_id": f"f{i}", "initial": Doc(text=f"secret-{i:03}-x")} for i in range(300)]
        )
        for run_id in ids:
            await wf.cancel(run_id, "done")
        print("ready", flush=True)
        async with af.open_workflow(wf):
            for i, run_id in enumerate(ids):
                await wf.delete_data(run_id, "erasure")
                print(f"deleted {i}", flush=True)

trio.run(main, sys.argv[1])
"""


async def test_kill_9_while_deleting_data_then_restart(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    """SIGKILL while delete_data calls go on: after a restart every deletion that was
    acknowledged is DATA_DELETED with no copy of the object in the file or its WAL, a
    deletion in flight finishes or never started, and no other run lost its object."""
    import signal
    import subprocess
    import sys

    from tests.fresh_python import ROOT

    path = tmp_path / "deleting.db"
    script = tmp_path / "child.py"
    script.write_text(DELETING_CHILD)
    seen: list[str] = []

    def run_child() -> None:
        child = subprocess.Popen(
            [sys.executable, str(script), str(path)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        try:
            for line in child.stdout:
                seen.append(line.strip())
                if sum(s.startswith("deleted ") for s in seen) >= 20:
                    os.kill(child.pid, signal.SIGKILL)
                    break
            else:
                raise AssertionError(f"child ended: {seen} {child.stderr and child.stderr.read()}")
        finally:
            child.kill()
            child.wait(timeout=30)

    await trio.to_thread.run_sync(run_child)
    acknowledged = {int(s.split()[1]) for s in seen if s.startswith("deleted ")}
    clock = trio_clock(START)
    async with af.SQLiteStore(path) as store:
        wf = pipeline(store, clock)
        async with af.open_workflow(wf):
            for i in range(300):
                rec = await wf.latest(f"f{i}")
                if i in acknowledged or rec.run_state is not af.RunState.CANCELLED:
                    rec = await _await_run_state(wf, rec.run_id, af.RunState.DATA_DELETED)
                    assert rec.object == Doc()
                    assert all(r.object == Doc() for r in await wf.history(rec.run_id))
                else:
                    assert rec.object == Doc(text=f"secret-{i:03}-x")
            # Once more after the restart, so the WAL is checkpointed after the last scrub.
            await wf.delete_data((await wf.latest("f0")).run_id, "again")
    data = path.read_bytes() + (
        path.with_name(path.name + "-wal").read_bytes()
        if path.with_name(path.name + "-wal").exists()
        else b""
    )
    for i in acknowledged:
        assert f"secret-{i:03}-x".encode() not in data
    assert b"secret-299-x" in data  # never deleted: still there


async def test_retention_keep_for_keeps_young_versions_only(
    stores: Stores, autojump_clock: MockClock
) -> None:
    clock = trio_clock(START)
    retention = af.Retention(
        keep_for=timedelta(hours=5), after_finish=timedelta(hours=1), every=timedelta(hours=1)
    )
    wf = pipeline(stores.open(), clock, history_retention=retention)
    async with af.open_workflow(wf):
        slow = await wf.trigger("slow")
        await wf.await_status("slow", slow, St.WAITING)
        quick = await finish(wf, "quick")
        quick_history = await wf.history(quick)
        await trio.sleep(10 * 3600)
        done = await wf.callback("slow", St.WAITING, b"late")
        assert done is not None
        # quick finished 10 hours ago: only its latest version is left.
        assert await wf.history(quick) == quick_history[-1:]
        await trio.sleep(3 * 3600)
        # slow's first three versions are 13 hours old, its last one 3 hours.
        assert await wf.history(slow) == [done]
        assert (await wf.lookup(slow)) == done


async def test_a_store_file_locked_by_another_application(tmp_path: Path) -> None:
    """Another program holding the file's write lock: opening (with its migrations) and
    writing give StoreError after lock_timeout, naming the file; nothing stored; all works
    once the lock is gone."""
    import sqlite3

    path = tmp_path / "locked.db"
    async with af.SQLiteStore(path) as store:
        await pipeline(store, af.SystemClock()).trigger("before")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        try:
            store = af.SQLiteStore(path, lock_timeout=0.3)
        except af.StoreError as exc:
            assert path.name in str(exc)
        else:
            try:
                wf = pipeline(store, af.SystemClock())
                with pytest.raises(af.StoreError, match=r"lock|busy|locked"):
                    with trio.fail_after(30):
                        await wf.trigger("during")
            finally:
                await store.aclose()
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with af.SQLiteStore(path) as store:
        wf = pipeline(store, af.SystemClock())
        with pytest.raises(af.RunNotFound):
            await wf.latest("during")
        await wf.trigger("after")
        assert {r.foreign_id for r in await wf.list_runs()} == {"before", "after"}
