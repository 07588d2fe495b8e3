"""Adversarial probes of workflow evolution (docs/upgrading.md) and history retention
(docs/stores.md), written from the docs: edge values, parked runs and their controls, and
retention next to runs that are still in flight. On every store."""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow._model import evolution as ev
from tests.test_evolution import (
    S1,
    S3,
    Maker,
    Order1,
    Renamed,
    build_retired,
    build_v1,
    build_without_waiting,
    parked,
    reopen,
    start_v1,
)
from tests.workflows import Status, Three, three_steps, yinyang

__all__ = ["reopen"]  # the fixture: every store, reopened as a restart with a new deploy


# -- bad input at build time -------------------------------------------------------------------


def test_an_async_upgrade_function_is_a_build_error() -> None:
    b = af.Builder("orders", Order1, S1)

    async def upgrade(data: dict[str, Any]) -> dict[str, Any]:
        return data  # pragma: no cover

    # Called while a run is loaded, its result used as a dict: an async function would
    # only ever hand back a coroutine (and park every run it meets).
    with pytest.raises(af.BuildError, match=r"upgrade_object function .*upgrade is async"):
        b.upgrade_object(upgrade)  # type: ignore[arg-type]


@pytest.mark.parametrize("keep_last", [2**63, 10**30])
def test_retention_keep_last_beyond_64_bits_is_a_build_error(keep_last: int) -> None:
    # Versions are signed 64-bit numbers in every store; SQLite refused such a count on
    # every pass, so retention silently deleted nothing.
    with pytest.raises(af.BuildError, match="keep_last"):
        af.Retention(keep_last=keep_last)


@pytest.mark.parametrize(
    "options",
    [
        {"keep_last": -1},
        {"keep_last": 2.0},
        {"keep_last": "3"},
        {"keep_for": timedelta(seconds=-1)},
        {"keep_for": timedelta(days=365 * 1001)},
        {"keep_last": 1, "after_finish": timedelta(seconds=-1)},
        {"keep_last": 1, "every": timedelta(milliseconds=10)},
        {"keep_last": 1, "every": 3600},
        {"keep_for": None},
    ],
)
def test_retention_edge_values_are_build_errors(options: dict[str, Any]) -> None:
    with pytest.raises(af.BuildError):
        af.Retention(**options)


# -- retention edge values, on every store ------------------------------------------------------


async def test_largest_keep_last_keeps_everything_and_zero_keep_for_keeps_the_latest(
    reopen: Maker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    store = reopen()
    huge = af.Retention(keep_last=2**63 - 1, after_finish=timedelta(0), every=timedelta(minutes=1))
    nothing = af.Retention(keep_for=timedelta(0), after_finish=timedelta(0))
    kept = three_steps(store, clock, history_retention=huge)
    async with af.open_workflow(kept):
        run_id = await kept.trigger("f")
        await kept.await_status("f", run_id, Three.D)
        await trio.sleep(5 * 60)
        assert [r.version for r in await kept.history(run_id)] == [1, 2, 3, 4]
    pruned = three_steps(store, clock, history_retention=nothing)
    async with af.open_workflow(pruned):  # a pass at start
        await trio.sleep(1)
        assert [r.version for r in await pruned.history(run_id)] == [4]
        assert (await pruned.lookup(run_id)).object.steps == ["a", "b", "c"]


async def test_retention_leaves_runs_in_flight_alone_and_prunes_cancelled_ones(
    reopen: Maker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    retention = af.Retention(keep_last=1, after_finish=timedelta(0), every=timedelta(minutes=1))
    workflow = yinyang(reopen(), clock, history_retention=retention, resume_paused_after=None)
    async with af.open_workflow(workflow):
        waiting = await workflow.trigger("waiting")
        await workflow.await_status("waiting", waiting, Status.MIDDLE)
        paused = await workflow.trigger("paused")
        await workflow.await_status("paused", paused, Status.MIDDLE)
        await workflow.pause(paused, "by hand")
        cancelled = await workflow.trigger("cancelled")
        await workflow.await_status("cancelled", cancelled, Status.MIDDLE)
        await workflow.cancel(cancelled, "by hand")
        await trio.sleep(5 * 60)  # several passes, the waiting runs' 1 h timeouts not due
        assert [r.version for r in await workflow.history(waiting)] == [1, 2]
        assert [r.version for r in await workflow.history(paused)] == [1, 2, 3]
        assert [r.version for r in await workflow.history(cancelled)] == [3]
        # Its latest version (at MIDDLE) answers; a pruned one: a clear error, not a wait.
        assert (await workflow.await_status("cancelled", cancelled, Status.MIDDLE)).version == 3
        with pytest.raises(af.ActorflowError, match="history retention"):
            await workflow.await_status("cancelled", cancelled, Status.STARTED, timeout=60)
        # The waiting run still finishes, and its history goes only once it did.
        done = await workflow.callback("waiting", Status.MIDDLE, b"paid")
        assert done is not None and done.run_state is af.RunState.COMPLETED
        assert len(await workflow.history(waiting)) == 3
        await trio.sleep(2 * 60)
        assert [r.version for r in await workflow.history(waiting)] == [3]
        assert (await workflow.lookup(waiting)).object.note == "paid"


# -- stranded runs and their controls ---------------------------------------------------------


async def test_a_parked_run_is_not_resumed_automatically_and_a_resume_parks_it_again(
    reopen: Maker, autojump_clock: MockClock
) -> None:
    ids = await start_v1(reopen, 1)
    wf = build_without_waiting(reopen(), resume_paused_after=timedelta(minutes=5))
    async with af.open_workflow(wf):
        first = await parked(wf.store, ids[0])
        await trio.sleep(3600)  # past resume_paused_after: a parked run stays parked
        assert (await wf.store.lookup("orders", ids[0])).version == first.version
        resumed = await wf.resume(ids[0])
        assert resumed.run_state is af.RunState.RUNNING
        await af.testing.wait_for(wf, "order-0", lambda r: r.version > resumed.version)
    raw = await wf.store.lookup("orders", ids[0])
    assert raw.run_state is af.RunState.PAUSED
    assert "unknown status: 2" in raw.meta.run_state_reason
    assert raw.object == first.object  # nothing lost


class Retired(enum.IntEnum):
    NEW = 1
    REVIEW = 4
    DONE = 3


async def test_retire_onto_a_status_with_a_step_continues_the_runs_there(reopen: Maker) -> None:
    ids = await start_v1(reopen, 2)
    b = af.Builder("orders", Order1, Retired)
    b.retire(2, to=Retired.REVIEW)

    @b.step(Retired.NEW, to=Retired.REVIEW)
    async def reserve(run: af.Run[Order1, Retired]) -> Retired:
        return Retired.REVIEW

    @b.step(Retired.REVIEW, to=Retired.DONE)
    async def review(run: af.Run[Order1, Retired]) -> Retired:
        run.object.sku = "reviewed"
        return Retired.DONE

    wf = b.build(reopen(), poll_interval=timedelta(milliseconds=50))
    async with af.open_workflow(wf):
        report = wf.last_check
        assert report is not None and report.stranded == 0
        assert sum(f.count for f in report.findings if f.problem == ev.TO_MIGRATE) >= 2
        for n, run_id in enumerate(ids):
            done = await wf.await_status(f"order-{n}", run_id, Retired.DONE, timeout=30)
            assert done.object == Order1("reviewed", 2)
            assert done.run_state is af.RunState.COMPLETED
            # The pending timer of the old status's timeout has no timeout at REVIEW.
            assert await wf.store.list_timers("orders", run_id) == []
    statuses = [int(r.status) for r in await wf.history(ids[0])]
    assert statuses == [1, 2, 4, 3]


async def test_a_check_of_an_unchanged_definition_after_new_runs_is_clean(reopen: Maker) -> None:
    ids = await start_v1(reopen, 1)
    again = build_v1(reopen())
    report = await again.check()
    assert report.ok and report.stranded == 0
    async with af.open_workflow(again):
        done = await again.callback("order-0", S1.WAITING, b"")
        assert done is not None and done.status is S1.DONE
    assert {r.meta.definition for r in await again.history(ids[0])} == {again.fingerprint}


async def test_retiring_a_paused_run_onto_a_terminal_status_waits_for_its_resume(
    reopen: Maker,
) -> None:
    """PAUSED -> COMPLETED is no run-state transition: a run paused by hand at a status
    retired onto a terminal one stays paused (the bulk migration too), and completes as
    retired once it is resumed. It used to be completed while paused."""
    store = reopen()
    v1 = build_v1(store)
    async with af.open_workflow(v1):
        run_id = await v1.trigger("held")
        await v1.await_status("held", run_id, S1.WAITING, timeout=30)
        await v1.pause(run_id, "held by support")
    wf = build_retired(reopen())
    async with af.open_workflow(wf):
        report = wf.last_check
        assert report is not None and report.stranded == 0
        await wf.migrate()
        held = await wf.store.lookup("orders", run_id)
        assert (held.status, held.run_state) == (2, af.RunState.PAUSED)
        assert held.meta.run_state_reason == "held by support"
        await wf.resume(run_id)
        done = await wf.await_status("held", run_id, S3.DONE, timeout=30)
    assert done.run_state is af.RunState.COMPLETED
    assert "status 2 retired" in done.meta.run_state_reason
    states = [r.run_state for r in await wf.history(run_id)][-3:]
    assert states == [af.RunState.PAUSED, af.RunState.RUNNING, af.RunState.COMPLETED]


# -- data deletion across a deploy -----------------------------------------------------------


@attrs.define
class Retyped:
    """Order1 with ``qty`` now a list: stored objects do not structure (no hook given)."""

    sku: str = ""
    qty: list[str] = attrs.Factory(list)


def build_retyped(store: af.Store, **options: Any) -> af.Workflow[Retyped, S1]:
    b = af.Builder("orders", Retyped, S1)

    @b.step(S1.NEW, to=S1.WAITING)
    async def reserve(run: af.Run[Retyped, S1]) -> S1:
        return S1.WAITING

    async def paid(run: af.Run[Retyped, S1], payload: bytes) -> S1:
        return S1.DONE

    b.add_callback(S1.WAITING, paid, to=S1.DONE)
    return b.build(store, poll_interval=timedelta(milliseconds=50), **options)


async def finished_v1(make: Maker) -> str:
    """A run version 1 completed (its object ``{"sku": "apple", "qty": 2}``)."""
    ids = await start_v1(make, 1)
    v1 = build_v1(make())
    async with af.open_workflow(v1):
        done = await v1.callback("order-0", S1.WAITING, b"")
        assert done is not None and done.run_state is af.RunState.COMPLETED
    return ids[0]


@pytest.mark.parametrize("scrub", [None, lambda obj: Retyped(sku="kept")])
async def test_delete_data_of_an_object_that_no_longer_fits_deletes_it(
    reopen: Maker, scrub: Any
) -> None:
    """The data is deleted, not refused on every attempt because the stored object does
    not structure into the new type (it used to stay REQUESTED_DATA_DELETED, data kept)."""
    run_id = await finished_v1(reopen)
    wf = build_retyped(reopen(), scrub=scrub)
    deleted = await wf.delete_data(run_id, "erasure request")
    assert deleted.run_state is af.RunState.DATA_DELETED
    assert deleted.object == Retyped()  # a scrub cannot be given what does not structure
    assert all("apple" not in r.object for r in await wf.store.history("orders", run_id))


@attrs.define
class Person:
    name: str
    email: str


async def test_delete_data_without_scrub_for_a_type_without_defaults_changes_nothing(
    reopen: Maker,
) -> None:
    b = af.Builder("people", Person, S1)

    @b.step(S1.NEW, to=S1.DONE)
    async def done(run: af.Run[Person, S1]) -> S1:
        return S1.DONE

    wf = b.build(reopen())
    async with af.open_workflow(wf):
        run_id = await wf.trigger("ada", initial=Person("Ada", "ada@example.com"))
        await wf.await_status("ada", run_id, S1.DONE, timeout=30)
        with pytest.raises(af.InvalidArgument, match=r"Person\(\) needs arguments.*scrub="):
            await wf.delete_data(run_id, "erasure request")
    # Not left half done (REQUESTED_DATA_DELETED, retried and failing forever).
    stored = await wf.store.lookup("people", run_id)
    assert stored.run_state is af.RunState.COMPLETED


# -- stranded runs stay visible ------------------------------------------------------------


def build_renamed_field(
    store: af.Store, paused: list[tuple[str, Any]], two: trio.Event
) -> af.Workflow[Any, S1]:
    """Renamed (``qty`` is now ``quantity``, no hook), with an on_pause hook (``two`` is
    set once it saw two runs)."""
    b = af.Builder("orders", Renamed, S1)

    @b.step(S1.NEW, to=S1.WAITING)
    async def reserve(run: af.Run[Renamed, S1]) -> S1:
        return S1.WAITING

    async def paid(run: af.Run[Renamed, S1], payload: bytes) -> S1:
        return S1.DONE

    async def on_pause(record: af.Record[Renamed, S1]) -> None:
        paused.append((record.foreign_id, record.object))
        if len(paused) == 2:
            two.set()

    b.add_callback(S1.WAITING, paid, to=S1.DONE)
    b.on_pause(on_pause)
    return b.build(store, poll_interval=timedelta(milliseconds=50))


async def test_a_parked_run_whose_object_does_not_fit_can_be_read_and_hooked(
    reopen: Maker,
) -> None:
    """Parked "visibly": its record reads (the object as its stored JSON data, as an
    unknown status reads as its int), and the on_pause hook of other runs goes on. Reads
    raised SerializationError (lookup, list_runs of the whole workflow, history, the CLI),
    and the hook consumer stuck on the parked run forever."""
    from actorflow.gateway.protocol import record_to_json

    ids = await start_v1(reopen, 1)
    paused: list[tuple[str, Any]] = []
    two = trio.Event()
    wf = build_renamed_field(reopen(), paused, two)
    async with af.open_workflow(wf):
        await parked(wf.store, ids[0])
        fresh = await wf.trigger("fresh", initial=Renamed("pear", 1))
        await wf.await_status("fresh", fresh, S1.WAITING, timeout=30)
        await wf.pause(fresh, "by hand")
        with trio.fail_after(30):
            await two.wait()
    assert dict(paused) == {"order-0": {"sku": "apple", "qty": 2}, "fresh": Renamed("pear", 1)}
    record = await wf.lookup(ids[0])
    assert record.run_state is af.RunState.PAUSED
    assert ev.OBJECT_DOES_NOT_FIT in record.meta.run_state_reason
    assert record.object == {"sku": "apple", "qty": 2}
    listed = await wf.list_runs(run_state=af.RunState.PAUSED)
    assert {r.run_id for r in listed} == {ids[0], fresh}
    assert [r.version for r in await wf.history(ids[0])] == [1, 2, 3]
    assert record_to_json(record, Renamed)["object"] == {"sku": "apple", "qty": 2}
