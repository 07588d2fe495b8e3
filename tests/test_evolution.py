"""A workflow changed between two starts, on every store: each run continues correctly or
is reported and parked visibly; nothing is lost (docs/upgrading.md)."""

from __future__ import annotations

import enum
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import actorflow as af
from actorflow._model import evolution as ev
from actorflow._model.record import RawRecord

Maker = Callable[[], af.Store]
PG_DSN = os.environ.get("ACTORFLOW_PG_DSN")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Maker]:
    """Opens the same storage again on every call (a restart with a new deploy)."""
    opened: list[af.Store] = []
    schema = f"af_test_{uuid.uuid4().hex[:16]}"
    if request.param == "postgres" and not PG_DSN:
        pytest.skip("ACTORFLOW_PG_DSN not set")

    def make() -> af.Store:
        if request.param == "memory":
            if not opened:
                opened.append(af.MemoryStore())
            return opened[0]
        if request.param == "sqlite":
            store: af.Store = af.SQLiteStore(tmp_path / "evolve.db")
        else:
            assert PG_DSN is not None
            store = af.PostgresStore(PG_DSN, schema=schema, pool_size=4)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()
    if request.param == "postgres":
        assert PG_DSN is not None
        dropper = af.PostgresStore(PG_DSN, schema=schema, pool_size=1, drop_schema_on_close=True)
        await dropper.get_cursor("drop")  # opens it
        await dropper.aclose()


# -- version 1 of the order workflow ------------------------------------------------------


class S1(enum.IntEnum):
    NEW = 1
    WAITING = 2
    DONE = 3


@attrs.define
class Order1:
    sku: str = ""
    qty: int = 0


def build_v1(store: af.Store) -> af.Workflow[Order1, S1]:
    b = af.Builder("orders", Order1, S1)

    @b.step(S1.NEW, to=S1.WAITING)
    async def reserve(run: af.Run[Order1, S1]) -> S1:
        run.object.qty += 1
        return S1.WAITING

    async def paid(run: af.Run[Order1, S1], payload: bytes) -> S1:
        return S1.DONE

    async def expire(run: af.Run[Order1, S1], now: object) -> S1:
        return S1.DONE

    b.add_callback(S1.WAITING, paid, to=S1.DONE)
    b.add_timeout(S1.WAITING, af.after(timedelta(hours=1)), expire, to=S1.DONE)
    return b.build(store, poll_interval=timedelta(milliseconds=50))


async def start_v1(make: Maker, n: int = 3) -> list[str]:
    """``n`` runs waiting at WAITING (with a timer), written by version 1."""
    store = make()
    wf = build_v1(store)
    ids = []
    async with af.open_workflow(wf):
        for i in range(n):
            run_id = await wf.trigger(f"order-{i}", initial=Order1("apple", 1))
            await wf.await_status(f"order-{i}", run_id, S1.WAITING, timeout=30)
            ids.append(run_id)
    return ids


async def parked(store: af.Store, run_id: str) -> RawRecord:
    """The run once it is PAUSED. On PostgreSQL a new worker may own a run's shard only a
    moment after it started (the old worker's lease runs out): it parks the run then."""
    with trio.fail_after(30):
        while True:
            raw = await store.lookup("orders", run_id)
            if raw.run_state is af.RunState.PAUSED:
                return raw
            await trio.sleep(0.02)  # polling the stored state, with a deadline


# -- the fingerprint ----------------------------------------------------------------------


async def test_every_version_carries_the_fingerprint_and_an_unchanged_start_is_clean(
    reopen: Maker,
) -> None:
    ids = await start_v1(reopen, 2)
    wf = build_v1(reopen())
    assert len(wf.fingerprint) == 12
    history = await wf.history(ids[0])
    assert {r.meta.definition for r in history} == {wf.fingerprint}
    async with af.open_workflow(wf):
        report = wf.last_check
        # Only this definition ever wrote: no run needs reading (issue #20: a million
        # parked runs must not be read at start).
        assert report is not None and report.ok and report.only_definition
        assert report.checked == 0
        assert "the only definition that wrote to the store: all fit" in str(report)
        assert wf.states()["definition-check"] is af.ProcessState.IDLE


def test_fingerprint_changes_with_statuses_edges_and_object_schema() -> None:
    store = af.MemoryStore()
    base = build_v1(store).fingerprint
    assert build_v1(store).fingerprint == base

    @attrs.define
    class Wider:
        sku: str = ""
        qty: float = 0

    b = af.Builder("orders", Wider, S1)

    async def step(run: Any) -> S1:
        return S1.WAITING

    b.add_step(S1.NEW, step, to=S1.WAITING)
    assert b.build(store).fingerprint != base


# -- explicit migrations --------------------------------------------------------------------


class S2(enum.IntEnum):
    NEW = 1
    AWAITING_PAYMENT = 5
    DONE = 3


def build_renamed(store: af.Store, **options: Any) -> af.Workflow[Order1, S2]:
    b = af.Builder("orders", Order1, S2)
    b.rename_status(2, S2.AWAITING_PAYMENT)

    @b.step(S2.NEW, to=S2.AWAITING_PAYMENT)
    async def reserve(run: af.Run[Order1, S2]) -> S2:
        return S2.AWAITING_PAYMENT

    async def paid(run: af.Run[Order1, S2], payload: bytes) -> S2:
        run.object.sku = payload.decode()
        return S2.DONE

    async def expire(run: af.Run[Order1, S2], now: object) -> S2:
        return S2.DONE

    b.add_callback(S2.AWAITING_PAYMENT, paid, to=S2.DONE)
    b.add_timeout(S2.AWAITING_PAYMENT, af.after(timedelta(hours=1)), expire, to=S2.DONE)
    return b.build(store, poll_interval=timedelta(milliseconds=50), **options)


async def test_rename_status_moves_runs_on_load_with_their_timers(reopen: Maker) -> None:
    ids = await start_v1(reopen)
    wf = build_renamed(reopen())
    async with af.open_workflow(wf):
        report = wf.last_check
        assert report is not None and report.stranded == 0
        migrate = [f for f in report.findings if f.problem == ev.TO_MIGRATE]
        assert migrate and migrate[0].count == 3
        for run_id in ids:
            rec = await wf.await_status(
                f"order-{ids.index(run_id)}", run_id, S2.AWAITING_PAYMENT, timeout=30
            )
            assert rec.status is S2.AWAITING_PAYMENT
            assert "status 2 renamed" in rec.meta.run_state_reason
            assert rec.meta.definition == wf.fingerprint
            timers = await wf.store.list_timers("orders", run_id)
            assert [(t.status, t.kind) for t in timers] == [(5, "timeout:0")]
        done = await wf.callback("order-0", S2.AWAITING_PAYMENT, b"pear")
        assert done is not None and done.status is S2.DONE and done.object.sku == "pear"
    history = await wf.history(ids[0])
    assert [int(r.status) for r in history] == [1, 2, 5, 3]
    assert history[1].meta.definition != history[2].meta.definition


class S3(enum.IntEnum):
    NEW = 1
    DONE = 3


def build_retired(store: af.Store) -> af.Workflow[Order1, S3]:
    b = af.Builder("orders", Order1, S3)
    b.retire(2, to=S3.DONE)

    @b.step(S3.NEW, to=S3.DONE)
    async def finish(run: af.Run[Order1, S3]) -> S3:
        return S3.DONE

    return b.build(store, poll_interval=timedelta(milliseconds=50))


async def test_retire_onto_a_terminal_status_completes_the_runs(reopen: Maker) -> None:
    ids = await start_v1(reopen, 2)
    wf = build_retired(reopen())
    async with af.open_workflow(wf):
        rec = await wf.await_status("order-1", ids[1], S3.DONE, timeout=30)
        assert rec.run_state is af.RunState.COMPLETED
        assert "retired" in rec.meta.run_state_reason
        assert await wf.store.list_timers("orders", ids[1]) == []


async def test_runs_migrate_command_applies_mappings_in_bulk_and_resumes(reopen: Maker) -> None:
    ids = await start_v1(reopen, 4)
    wf = build_renamed(reopen())
    dry = await wf.migrate(dry_run=True)
    assert sum(f.count for f in dry.findings if f.problem == ev.TO_MIGRATE) == 4
    assert [(await wf.lookup(i)).status for i in ids] == [2] * 4  # nothing written
    seen: list[int] = []
    report = await wf.migrate(progress=seen.append)
    assert sum(seen) == 4 and report.checked == 4
    assert [(await wf.lookup(i)).status for i in ids] == [S2.AWAITING_PAYMENT] * 4
    again = await wf.migrate()
    assert again.ok  # resumable: migrated runs are passed over


# -- stranded runs: parked or refused ---------------------------------------------------------


def build_without_waiting(store: af.Store, **options: Any) -> af.Workflow[Order1, S3]:
    b = af.Builder("orders", Order1, S3)

    @b.step(S3.NEW, to=S3.DONE)
    async def finish(run: af.Run[Order1, S3]) -> S3:
        return S3.DONE

    return b.build(store, poll_interval=timedelta(milliseconds=50), **options)


async def test_unknown_status_is_refused_without_changing_anything(reopen: Maker) -> None:
    ids = await start_v1(reopen)
    store = reopen()
    wf = build_without_waiting(store, on_stranded="refuse")
    with pytest.raises(af.BuildError, match=r"3 run\(s\): unknown status: 2 \(not a member of S3"):
        async with af.open_workflow(wf):
            pass  # pragma: no cover
    for run_id in ids:
        rec = await store.lookup("orders", run_id)
        assert (rec.status, rec.run_state, rec.version) == (2, af.RunState.RUNNING, 2)


async def test_unknown_status_is_parked_with_the_reason(
    reopen: Maker, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await start_v1(reopen)
    wf = build_without_waiting(reopen())
    with caplog.at_level(logging.WARNING, logger="actorflow"):
        async with af.open_workflow(wf):
            report = wf.last_check
            raw = await parked(wf.store, ids[0])
            assert wf.states()["definition-check"] is af.ProcessState.ERRORING
        assert wf.states()["definition-check"] is af.ProcessState.STOPPED
    assert report is not None and report.stranded == 3
    (finding,) = report.findings
    assert finding.examples == ids and finding.count == 3
    v1 = build_v1(af.MemoryStore()).fingerprint
    assert finding.definitions == {v1: 3}
    assert f"3 by definition {v1}" in caplog.text
    assert "unknown status: 2 (not a member of S3" in raw.meta.run_state_reason
    assert raw.object == '{"sku":"apple","qty":2}'  # nothing lost
    assert [t.kind for t in await wf.store.list_timers("orders", ids[0])] == ["timeout:0"]


async def test_status_that_lost_its_callback_and_timeout_is_parked(reopen: Maker) -> None:
    ids = await start_v1(reopen, 1)

    b = af.Builder("orders", Order1, S1)

    @b.step(S1.NEW, to=S1.DONE)
    async def finish(run: af.Run[Order1, S1]) -> S1:
        return S1.DONE

    wf = b.build(reopen(), poll_interval=timedelta(milliseconds=50))
    async with af.open_workflow(wf):
        report = wf.last_check
        raw = await parked(wf.store, ids[0])
    assert report is not None
    assert [f.problem for f in report.findings] == [ev.NO_WAY_FORWARD]
    assert "WAITING" in raw.meta.run_state_reason


def build_timeout_removed(store: af.Store) -> af.Workflow[Order1, S1]:
    b = af.Builder("orders", Order1, S1)

    @b.step(S1.NEW, to=S1.WAITING)
    async def reserve(run: af.Run[Order1, S1]) -> S1:
        return S1.WAITING

    async def paid(run: af.Run[Order1, S1], payload: bytes) -> S1:
        return S1.DONE

    b.add_callback(S1.WAITING, paid, to=S1.DONE)
    return b.build(store, poll_interval=timedelta(milliseconds=50))


async def test_timers_of_a_removed_timeout_are_reported_and_dropped_with_a_reason(
    reopen: Maker,
) -> None:
    ids = await start_v1(reopen, 2)
    wf = build_timeout_removed(reopen())
    report = await wf.check()
    (finding,) = report.findings
    assert finding.problem == ev.REMOVED_TIMEOUT and finding.count == 2
    async with af.open_workflow(wf):
        done = await wf.callback("order-1", S1.WAITING, b"")
        assert done is not None and done.status is S1.DONE
        await wf.migrate()  # the other run now (it may not be loaded yet)
        for run_id in ids:
            assert await wf.store.list_timers("orders", run_id) == []
    history = await wf.history(ids[0])
    assert "timer timeout:0 of status 2 dropped" in history[-1].meta.run_state_reason


# -- the object's schema ---------------------------------------------------------------------


def build_with_object(store: af.Store, object_type: type[Any], **kw: Any) -> af.Workflow[Any, S1]:
    upgrade = kw.pop("upgrade", None)
    b = af.Builder("orders", object_type, S1)
    if upgrade is not None:
        b.upgrade_object(upgrade)

    @b.step(S1.NEW, to=S1.WAITING)
    async def reserve(run: af.Run[Any, S1]) -> S1:
        return S1.WAITING

    async def paid(run: af.Run[Any, S1], payload: bytes) -> S1:
        return S1.DONE

    async def expire(run: af.Run[Any, S1], now: object) -> S1:
        return S1.DONE

    b.add_callback(S1.WAITING, paid, to=S1.DONE)
    b.add_timeout(S1.WAITING, af.after(timedelta(hours=1)), expire, to=S1.DONE)
    return b.build(store, poll_interval=timedelta(milliseconds=50), **kw)


@attrs.define
class Evolved:
    """Order1 without ``sku``, ``qty`` widened to float, a new field with a default."""

    qty: float = 0
    gift: bool = False


async def test_add_remove_and_widen_fields_need_no_hook(reopen: Maker) -> None:
    ids = await start_v1(reopen, 1)
    wf = build_with_object(reopen(), Evolved)
    async with af.open_workflow(wf):
        assert wf.last_check is not None and wf.last_check.stranded == 0
        done = await wf.callback("order-0", S1.WAITING, b"")
        assert done is not None and done.object == Evolved(qty=2, gift=False)
    assert (await wf.lookup(ids[0])).run_state is af.RunState.COMPLETED


@attrs.define
class Renamed:
    """``qty`` is now ``quantity``: stored objects no longer fit."""

    sku: str
    quantity: int


def qty_to_quantity(data: dict[str, Any]) -> dict[str, Any]:
    data["quantity"] = data.pop("qty")
    return data


async def test_upgrade_object_converts_objects_that_no_longer_fit(reopen: Maker) -> None:
    ids = await start_v1(reopen, 2)
    wf = build_with_object(reopen(), Renamed, upgrade=qty_to_quantity)
    shown = await wf.lookup(ids[0])  # a read shows it upgraded, writes nothing
    assert shown.object == Renamed("apple", 2) and shown.version == 2
    async with af.open_workflow(wf):
        report = wf.last_check
        assert report is not None and report.stranded == 0
        assert any(f.problem == ev.TO_MIGRATE and f.count == 2 for f in report.findings)
        done = await wf.callback("order-1", S1.WAITING, b"")
        assert done is not None and done.object == Renamed("apple", 2)
    history = await wf.history(ids[1])
    assert "object upgraded by qty_to_quantity" in history[-2].meta.run_state_reason
    assert history[-2].object == Renamed("apple", 2)


async def test_object_that_no_longer_fits_without_a_hook_is_parked(reopen: Maker) -> None:
    ids = await start_v1(reopen, 1)
    wf = build_with_object(reopen(), Renamed)
    async with af.open_workflow(wf):
        raw = await parked(wf.store, ids[0])
    assert ev.OBJECT_DOES_NOT_FIT in raw.meta.run_state_reason
    assert "upgrade_object" in raw.meta.run_state_reason
    assert raw.object == '{"sku":"apple","qty":2}'


def raises(data: dict[str, Any]) -> dict[str, Any]:
    raise KeyError("quantity")


def garbage(data: dict[str, Any]) -> Any:
    return ["not", "a", "dict"]


def wrong_shape(data: dict[str, Any]) -> dict[str, Any]:
    return {"sku": 3}


async def _async_upgrade(data: dict[str, Any]) -> dict[str, Any]:
    return data


def coroutine_returning(data: dict[str, Any]) -> Any:
    """A plain function calling an async one: a coroutine, closed and named."""
    return _async_upgrade(data)


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (raises, "raised KeyError"),
        (garbage, "returned list, not a dict"),
        (wrong_shape, "returned an object that does not fit Renamed"),
        (coroutine_returning, "returned a coroutine"),
    ],
)
async def test_failing_upgrade_hook_parks_the_run_half_nothing(
    reopen: Maker, hook: Any, message: str
) -> None:
    ids = await start_v1(reopen, 1)
    refusing = build_with_object(reopen(), Renamed, upgrade=hook, on_stranded="refuse")
    with pytest.raises(af.BuildError, match=message):
        async with af.open_workflow(refusing):
            pass  # pragma: no cover
    wf = build_with_object(reopen(), Renamed, upgrade=hook)
    async with af.open_workflow(wf):
        await parked(wf.store, ids[0])
    history = await wf.store.history("orders", ids[0])
    assert [h.run_state for h in history[-2:]] == [af.RunState.RUNNING, af.RunState.PAUSED]
    assert message in history[-1].meta.run_state_reason
    assert history[-1].object == history[-2].object  # nothing half migrated
    assert history[-1].status == 2


# -- bad input --------------------------------------------------------------------------------


async def test_rename_onto_a_status_with_runs_of_its_own_is_refused(reopen: Maker) -> None:
    ids = await start_v1(reopen, 1)
    store = reopen()
    v1 = build_v1(store)
    async with af.open_workflow(v1):
        await v1.callback("order-0", S1.WAITING, b"")  # a DONE=3 run of version 1
        await v1.trigger("order-9")
        await v1.await_status("order-9", (await v1.latest("order-9")).run_id, S1.WAITING)

    class S4(enum.IntEnum):
        NEW = 1
        SETTLED = 3

    b = af.Builder("orders", Order1, S4)
    b.rename_status(2, S4.SETTLED)

    @b.step(S4.NEW, to=S4.SETTLED)
    async def go(run: Any) -> S4:
        return S4.SETTLED

    wf = b.build(store)
    with pytest.raises(af.BuildError, match="already has runs of its own"):
        async with af.open_workflow(wf):
            pass  # pragma: no cover
    assert (await store.lookup("orders", ids[0])).status == 3
    waiting = await store.latest("orders", "order-9")
    assert (waiting.status, waiting.run_state) == (2, af.RunState.RUNNING)


def test_bad_mappings_are_build_errors() -> None:
    store = af.MemoryStore()

    def builder() -> af.Builder[Order1, S1]:
        b = af.Builder("orders", Order1, S1)

        @b.step(S1.NEW, to=S1.WAITING)
        async def go(run: Any) -> S1:
            return S1.WAITING

        return b

    b = builder()
    b.rename_status(2, S1.DONE)
    b.rename_status(3, S1.WAITING)
    with pytest.raises(af.BuildError, match="mapping cycle"):
        b.build(store)
    b = builder()
    b.rename_status(9, S1.WAITING)
    b.retire(9, to=S1.DONE)
    with pytest.raises(af.BuildError, match="mapped twice"):
        b.build(store)
    b = builder()
    b.rename_status(S1.WAITING, S1.DONE)  # type: ignore[arg-type]
    with pytest.raises(af.BuildError, match="stored int value"):
        b.build(store)
    b = builder()
    b.retire(7, to=42)  # type: ignore[arg-type]
    with pytest.raises(af.BuildError, match="not a member"):
        b.build(store)
    b = builder()
    b.upgrade_object(qty_to_quantity)
    with pytest.raises(af.BuildError, match="already set"):
        b.upgrade_object(qty_to_quantity)
    with pytest.raises(af.BuildError, match="on_stranded"):
        builder().build(store, on_stranded="ignore")


# -- a newer definition's runs (rolling deploy, one process) --------------------------------


async def test_an_older_definition_leaves_runs_a_newer_one_wrote_alone(reopen: Maker) -> None:
    ids = await start_v1(reopen, 1)
    new = build_with_object(reopen(), Renamed, upgrade=qty_to_quantity)
    async with af.open_workflow(new):
        await af.testing.wait_for(
            new, "order-0", lambda rec: rec.meta.definition == new.fingerprint
        )
    old = build_v1(reopen())
    async with af.open_workflow(old):
        report = old.last_check
        assert report is not None
        assert [(f.problem, f.count) for f in report.findings] == [(ev.NEWER_DEFINITION, 1)]
        with pytest.raises(af.ActorflowError, match="newer than this process's definition"):
            await old.callback("order-0", S1.WAITING, b"")
    raw = await old.store.lookup("orders", ids[0])
    assert raw.meta.definition == new.fingerprint and raw.run_state is af.RunState.RUNNING
    assert raw.object == '{"sku":"apple","quantity":2}'


async def test_a_callback_migrates_a_run_that_was_not_loaded_yet(reopen: Maker) -> None:
    ids = await start_v1(reopen, 1)
    wf = build_renamed(reopen(), check_at_start=False)
    async with af.open_workflow(wf):
        assert wf.last_check is None
        done = await wf.callback("order-0", S2.AWAITING_PAYMENT, b"plum")
        assert done is not None and done.status is S2.DONE and done.object.sku == "plum"
    assert [int(r.status) for r in await wf.history(ids[0])] == [1, 2, 5, 3]
