"""Crash and load probe, written from the public contract (API.md) and the docs: user code
that ends the process in the middle of a call, a schedule ended between its claim and its
trigger, callers (callback, trigger, trigger_many from another process, delete_data,
migrate) cancelled at every checkpoint, kill -9 of worker processes at random points while
hooks, a connector (af.connect) and timeouts feed another workflow. Runs survive, nothing
is lost, nothing is done twice that a user can see. Store tests run on MemoryStore,
SQLiteStore and (with ACTORFLOW_PG_DSN) PostgresStore.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import trio_clock, wait_for
from tests.conftest import START
from tests.probe_stores import PG_DSN, Stores


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
    assert [type(e) for e in outcome] == [ending]  # the caller is told, as when inline
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


def one_step(
    store: af.Store, clock: af.Clock | None = None, **build: Any
) -> af.Workflow[Box, Three]:
    b = af.Builder("sched", Box, Three)

    @b.step(Three.A, to=Three.B)
    async def go(run: af.Run[Box, Three]) -> Three:
        return Three.B

    return b.build(store, clock=clock or trio_clock(START), **build)


@pytest.mark.parametrize("where", ["after the claim", "in the trigger"])
async def test_a_schedule_ended_between_claim_and_trigger_fires_that_time_after_a_restart(
    stores: Stores, where: str, autojump_clock: MockClock
) -> None:
    """The process ends (kill -9, or the schedule's task is cancelled) after a cron time
    was claimed and before its run was stored: the next start triggers that time, once.
    (It used to be lost: claimed, so never fired, and never triggered.)"""
    store = stores.open()
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

    wf = one_step(stores.open())  # the restart, at 10:00 still (or a little later)
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
    wf = one_step(stores.open())
    async with af.open_workflow(wf):
        with trio.move_on_after(600):
            await wf.schedule_trigger("report", "@hourly")
    assert len(await wf.list_runs()) == 3


# --- what a call cut short reports ---------------------------------------------------------------


async def _cut_after(checkpoints: int, call: Any) -> tuple[bool, Any]:
    """Run ``call``, cancelling it once a sibling task passed ``checkpoints`` schedule
    points: (True, its value) when it returned, (False, None) when it was cancelled."""
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
    return (True, result[0]) if result else (False, None)


@pytest.mark.parametrize("worker", [True, False])
async def test_a_call_cut_short_reports_what_it_did(
    stores: Any, worker: bool, autojump_clock: MockClock
) -> None:
    """callback, trigger and the controls cancelled after k checkpoints, through a worker
    and from a handle without one: a call that returns tells the truth (a record: its
    transition is stored, once; None: the run did not move; a run id: that run exists),
    and a call that was cancelled either did it once or not at all."""
    applied: Counter[str] = Counter()

    async def answer(run: af.Run[Box, C], payload: bytes) -> C:
        applied[run.foreign_id] += 1
        run.object.notes.append(payload.decode())
        return C.DONE

    wf = waiting(stores.open(), answer)
    handle = wf if worker else waiting(stores.open(), answer)
    tries = 25
    async with af.open_workflow(wf):
        ids = {k: await wf.trigger(f"r{k}") for k in range(tries)}
        for k, run_id in ids.items():
            await wf.await_status(f"r{k}", run_id, C.WAITING)
        for k, run_id in ids.items():
            done, value = await _cut_after(
                k,
                lambda k=k: handle.callback(f"r{k}", C.WAITING, b"paid"),  # type: ignore[misc]
            )
            latest = await wf.lookup(run_id)
            where = (k, done, value, latest)
            if done and value is not None:
                assert value.status is C.DONE and latest.status is C.DONE, where
                assert value.version == latest.version == 3, where
            elif done:
                assert latest.status is C.WAITING, where
            if latest.status is C.DONE:
                assert latest.object.notes == ["paid"], where
        for k in range(tries):
            done, value = await _cut_after(
                k,
                lambda k=k: handle.trigger(f"t{k}"),  # type: ignore[misc]
            )
            runs = await wf.list_runs(foreign_id=f"t{k}")
            if done:
                assert [r.run_id for r in runs] == [value], (k, runs)
            else:
                assert len(runs) <= 1, (k, runs)
        for r in await wf.list_runs(limit=100):  # every stored run is worked, now
            with trio.fail_after(120):
                await wf.await_status(r.foreign_id, r.run_id, C.WAITING)
    assert set(applied.values()) <= {1}


# --- kill -9 of a worker whose hooks, connector and timeouts feed another workflow ---------------


class Ord(enum.IntEnum):
    NEW = 1
    WAITING = 2
    PAID = 3
    EXPIRED = 4


class Led(enum.IntEnum):
    OPEN = 1
    BOOKED = 2


def orders_and_ledger(
    store: af.Store, clock: af.Clock, *, say: Any = None, **build: Any
) -> tuple[af.Workflow[Box, Ord], af.Workflow[Box, Led]]:
    """Orders: NEW -step-> WAITING -callback-> PAID, or -0.3 s timeout-> EXPIRED. Every
    completed order books ``done-<run id>`` in the ledger (an on_complete hook), and every
    paid one ``paid-<foreign id>`` (a connector following the orders that reach PAID),
    each checking first that it was not booked already (the docs' recipe for a function
    that may be handed the same change twice). ``say`` reports each function's work."""
    report = say or (lambda line: None)
    ob = af.Builder("orders", Box, Ord)

    @ob.step(Ord.NEW, to=Ord.WAITING)
    async def take(run: af.Run[Box, Ord]) -> Ord:
        report(f"step {run.run_id} {run.record.version}")
        return Ord.WAITING

    async def pay(run: af.Run[Box, Ord], payload: bytes) -> Ord:
        run.object.notes.append(payload.decode())
        return Ord.PAID

    async def expire(run: af.Run[Box, Ord], now: object) -> Ord:
        report(f"expired {run.run_id}")
        return Ord.EXPIRED

    ob.add_callback(Ord.WAITING, pay, to=[Ord.PAID])
    ob.add_timeout(Ord.WAITING, af.after(timedelta(milliseconds=300)), expire, to=[Ord.EXPIRED])
    ledgers: list[af.Workflow[Box, Led]] = []

    async def book(foreign_id: str) -> None:
        ledger = ledgers[0]
        try:
            await ledger.latest(foreign_id)
            return  # booked already: this change was handed over again
        except af.RunNotFound:
            pass
        try:
            await ledger.trigger(foreign_id)
        except af.WorkflowInProgress:
            return
        report(f"booked {foreign_id}")

    async def on_complete(record: af.Record[Box, Ord]) -> None:
        await book(f"done-{record.run_id}")

    ob.on_complete(on_complete)
    orders = ob.build(store, clock=clock, **build)

    lb = af.Builder("ledger", Box, Led)

    @lb.step(Led.OPEN, to=Led.BOOKED)
    async def booked(run: af.Run[Box, Led]) -> Led:
        return Led.BOOKED

    async def on_paid(workflow: Any, event: af.ConnectorEvent) -> None:
        await book(f"paid-{event.foreign_id}")

    lb.add_connector("paid", af.connect(orders, status=Ord.PAID), on_paid)
    ledgers.append(lb.build(store, clock=clock, **build))
    return orders, ledgers[0]


ORDERS_CHILD = """
import sys
from datetime import UTC, datetime, timedelta

import trio

import actorflow as af
from tests.test_crash_load_probe import Ord, orders_and_ledger


def say(line):
    print(line, flush=True)


async def main(kind, where, schema):
    if kind == "sqlite":
        store = af.SQLiteStore(where)
    else:
        store = af.PostgresStore(where, schema=schema, pool_size=4)
    async with store:
        orders, ledger = orders_and_ledger(
            store, af.SystemClock(), say=say, lease=timedelta(seconds=1)
        )
        async with af.open_workflow(orders, ledger):
            for i in range(100_000):
                fids = [f"o{i}-{j}" for j in range(20)]
                results = await orders.trigger_many(fids)
                say(f"batch {i}")
                async with trio.open_nursery() as nursery:
                    for fid, run_id in list(zip(fids, results))[::2]:  # half of them are paid
                        nursery.start_soon(pay, orders, fid, run_id)


async def pay(orders, fid, run_id):
    await orders.await_status(fid, run_id, Ord.WAITING)
    if await orders.callback(fid, Ord.WAITING, b"paid") is not None:
        say(f"paid {fid}")

trio.run(main, *sys.argv[1:])
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_kill_9_while_hooks_connectors_and_timeouts_feed_another_workflow(
    kind: str, tmp_path: Path, autojump_clock: MockClock
) -> None:
    """A worker paying orders by callback while others expire by timeout, its on_complete
    hook and its connector (af.connect) booking each in a second workflow, is killed with
    SIGKILL; a new worker on the same store finishes. Every order ends once (PAID or
    EXPIRED; every acknowledged payment PAID), every completed order is booked once by its
    hook and every paid one once by the connector (no change lost, none booked twice), no
    foreign id has two runs."""
    import os
    import signal
    import subprocess
    import sys

    from tests.fresh_python import ROOT

    if kind == "postgres" and not PG_DSN:
        pytest.skip("ACTORFLOW_PG_DSN not set")
    stores = Stores(kind, tmp_path)
    where = str(stores.path) if kind == "sqlite" else str(PG_DSN)
    script = tmp_path / "child.py"
    script.write_text(ORDERS_CHILD)
    lines: list[str] = []
    kill_after = random.randrange(50, 600)  # output lines: in the message of any failure

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
            seen: Counter[str] = Counter()
            for line in child.stdout:  # blocks on the child's output: no guessing
                lines.append(line.strip())
                seen[line.split()[0]] += 1
                if line.startswith("booked paid-"):
                    seen["connector"] += 1
                enough = seen["expired"] >= 10 and seen["connector"] >= 10 and seen["batch"] >= 3
                if enough and len(lines) >= kill_after:  # a random point past the first ones
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
    paid = {x.split()[1] for x in lines if x.startswith("paid ")}
    booked_before = Counter(x.split()[1] for x in lines if x.startswith("booked "))
    booked_after: Counter[str] = Counter()
    print(f"killed after {len(lines)} lines of output (drawn: {kill_after})")
    try:
        orders, ledger = orders_and_ledger(
            stores.open(),
            trio_clock(datetime.now(UTC)),  # the child's timers are due about now
            say=lambda line: booked_after.update(
                [line.split()[1]] if line.startswith("booked ") else []
            ),
            lease=timedelta(seconds=1),
        )
        async with af.open_workflow(orders, ledger):
            runs = await _all(orders)
            assert len({r.foreign_id for r in runs}) == len(runs), "a foreign id got two runs"
            for r in runs:
                with trio.fail_after(3600):
                    last = await wait_for(orders, r.foreign_id, lambda x: x.run_state.finished)
                    await wait_for(ledger, f"done-{r.run_id}", lambda x: x.status is Led.BOOKED)
                    if last.status is Ord.PAID:
                        await wait_for(
                            ledger, f"paid-{r.foreign_id}", lambda x: x.status is Led.BOOKED
                        )
                history = await orders.history(r.run_id)
                assert [h.version for h in history] == [1, 2, 3], history
                assert [h.status for h in history][:2] == [Ord.NEW, Ord.WAITING], history
                assert last.status in (Ord.PAID, Ord.EXPIRED), last
                if r.foreign_id in paid:
                    assert last.status is Ord.PAID and last.object.notes == ["paid"], last
            booked = await _all(ledger)
    finally:
        await stores.close_all()
    expected = {f"done-{r.run_id}" for r in runs} | {
        f"paid-{r.foreign_id}" for r in runs if r.foreign_id in paid
    }
    fids = Counter(b.foreign_id for b in booked)
    assert set(fids.values()) == {1}, [f for f, n in fids.items() if n > 1]
    assert expected <= set(fids), expected - set(fids)
    assert set(fids) <= expected | {f"paid-{r.foreign_id}" for r in runs}
    twice = (booked_before & booked_after) + Counter(
        f for f, n in (booked_before + booked_after).items() if n > 1
    )
    assert not twice, twice
    print(f"{len(runs)} orders, {len(paid)} paid, {len(booked_before)} booked before the kill")


async def _all(wf: af.Workflow[Any, Any]) -> list[af.Record[Any, Any]]:
    runs: list[af.Record[Any, Any]] = []
    after = None
    while True:
        page = await wf.list_runs(limit=500, after=after)
        runs.extend(page)
        if len(page) < 500:
            return runs
        after = page[-1].run_id


async def test_backfills_cut_short_from_another_process_are_all_worked(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """trigger_many from a second store handle (another process's view, no worker),
    cancelled after k checkpoints: every run it stored is found and worked by the worker
    (its step runs, once), and triggering again refuses exactly those."""
    if stores.kind == "memory":
        pytest.skip("one process: the same store object")
    steps: Counter[str] = Counter()

    async def answer(run: af.Run[Box, C], payload: bytes) -> C:
        return C.DONE

    b = af.Builder("cb", Box, C)

    @b.step(C.NEW, to=C.WAITING)
    async def go(run: af.Run[Box, C]) -> C:
        steps[run.run_id] += 1
        return C.WAITING

    b.add_callback(C.WAITING, answer, to=[C.DONE])
    wf = b.build(stores.open(), clock=trio_clock(START))
    other = waiting(stores.open(), answer)
    tries, size = (10, 30) if stores.kind == "postgres" else (14, 60)
    async with af.open_workflow(wf):
        for k in range(tries):
            items = [f"b{k}-{j}" for j in range(size)]
            await _cut_after(k, lambda items=items: other.trigger_many(items))  # type: ignore[misc]
        stored = await _all(wf)
        assert stored, "nothing stored: cancelled too early every time"
        with trio.fail_after(120):
            for r in stored:
                await wf.await_status(r.foreign_id, r.run_id, C.WAITING)
        again = await other.trigger_many([r.foreign_id for r in stored])
        assert all(isinstance(x, af.WorkflowInProgress) for x in again)
    assert len(steps) == len(stored) and set(steps.values()) == {1}


# --- a deletion cut short after its scrub was stored ---------------------------------------------


async def test_a_deletion_cut_short_leaves_no_copy_of_the_object_in_the_files(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    """delete_data cancelled after k checkpoints (a handle without a worker, as a script
    or the CLI): once the scrub is stored, no copy of the object is left in the store's
    files, the write-ahead log included (the wipe of the log was skipped by the
    cancellation: the secret stayed on disk with the run reported DATA_DELETED)."""
    path = tmp_path / "erase.db"

    async def secret(run: af.Run[Box, C], payload: bytes) -> C:
        run.object.notes.append(payload.decode())
        return C.DONE

    tries = 40
    async with af.SQLiteStore(path) as store:
        wf = waiting(store, secret)
        async with af.open_workflow(wf):
            ids = {k: await wf.trigger(f"e{k}") for k in range(tries)}
            for k, run_id in ids.items():
                await wf.await_status(f"e{k}", run_id, C.WAITING)
                await wf.callback(f"e{k}", C.WAITING, f"secret-{k:03}-x".encode())
        cut = 0
        for k, run_id in ids.items():
            await _cut_after(k, lambda run_id=run_id: wf.delete_data(run_id, "erasure"))  # type: ignore[misc]
            if (await wf.lookup(run_id)).run_state is not af.RunState.DATA_DELETED:
                continue
            cut += 1
            wal = path.with_name(path.name + "-wal")
            data = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
            assert f"secret-{k:03}-x".encode() not in data, k
    assert cut, "no deletion got as far as its scrub"


# --- a migration cut short ----------------------------------------------------------------------


async def test_migrations_cut_short_at_every_checkpoint_migrate_each_run_once(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """workflow.migrate() (``actorflow runs migrate``) cancelled after k checkpoints, again
    and again, then callbacks racing with a last migrate while the new worker runs: each
    run is migrated once (one version with the reason, its timer moved once), none is
    lost, and each callback applies once."""
    from tests.test_evolution import S1, S2, Order1, build_renamed, build_v1

    n = 12
    old = build_v1(stores.open())
    async with af.open_workflow(old):
        ids = [await old.trigger(f"order-{i}", initial=Order1("apple", 1)) for i in range(n)]
        for i, run_id in enumerate(ids):
            await old.await_status(f"order-{i}", run_id, S1.WAITING)
    new = build_renamed(stores.open())
    for k in range(0, 60, 3):
        await _cut_after(k, new.migrate)
    async with af.open_workflow(new), trio.open_nursery() as nursery:
        nursery.start_soon(new.migrate)
        results = {}
        for i in range(0, n, 2):
            with trio.fail_after(60):
                results[i] = await new.callback(f"order-{i}", S2.AWAITING_PAYMENT, b"pear")
        for i, run_id in enumerate(ids):
            with trio.fail_after(60):
                await new.await_status(f"order-{i}", run_id, S2.AWAITING_PAYMENT)
    for i, run_id in enumerate(ids):
        history = await new.history(run_id)
        where = (i, [(int(r.status), r.meta.run_state_reason) for r in history])
        statuses = [int(r.status) for r in history]
        assert statuses[:3] == [1, 2, int(S2.AWAITING_PAYMENT)], where
        assert [r.version for r in history] == list(range(1, len(history) + 1)), where
        if i % 2 == 0:
            assert results[i] is not None and results[i].status is S2.DONE, where
            assert statuses == [1, 2, int(S2.AWAITING_PAYMENT), int(S2.DONE)], where
        else:
            assert statuses == [1, 2, int(S2.AWAITING_PAYMENT)], where
            timers = await new.store.list_timers("orders", run_id)
            assert len(timers) == 1 and timers[0].status == int(S2.AWAITING_PAYMENT), timers


SCHEDULE_CHILD = """
import sys
from datetime import UTC, datetime, timedelta

import trio

import actorflow as af
from actorflow.testing import trio_clock
from tests.test_crash_load_probe import one_step


async def main(kind, where, schema, claim_at):
    if kind == "sqlite":
        store = af.SQLiteStore(where)
    else:
        store = af.PostgresStore(where, schema=schema, pool_size=2)
    claim = store.claim_schedule

    async def claim_and_say(key, fire_at):
        claimed = await claim(key, fire_at)
        if key.startswith("schedule:"):
            print(f"claimed {fire_at.isoformat()}", flush=True)
            if claim_at == "after":
                await trio.sleep_forever()  # killed here, between the claim and the trigger
        return claimed

    store.claim_schedule = claim_and_say
    async with store:
        # a wall clock that reads half a second before 10:00 now
        base = datetime(2026, 1, 1, 9, 59, 59, 500_000, UTC)
        clock = trio_clock(base - timedelta(seconds=trio.current_time()))
        wf = one_step(store, clock, lease=timedelta(seconds=1))
        async with af.open_workflow(wf):
            await wf.schedule_trigger("report", "@hourly")

trio.run(main, *sys.argv[1:])
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_kill_9_between_a_schedules_claim_and_its_trigger(
    kind: str, tmp_path: Path, autojump_clock: MockClock
) -> None:
    """A real worker process killed with SIGKILL right after it claimed a cron time and
    before it stored the run: the next start triggers that time, once."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    from tests.fresh_python import ROOT

    if kind == "postgres" and not PG_DSN:
        pytest.skip("ACTORFLOW_PG_DSN not set")
    stores = Stores(kind, tmp_path)
    where = str(stores.path) if kind == "sqlite" else str(PG_DSN)
    script = tmp_path / "child.py"
    script.write_text(SCHEDULE_CHILD)

    def run_child() -> str:
        child = subprocess.Popen(
            [sys.executable, str(script), kind, where, stores.schema, "after"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        bound = threading.Timer(60, child.kill)  # a child that never claims fails the test
        bound.start()
        try:
            line = child.stdout.readline()  # blocks until the claim: no guessing
            os.kill(child.pid, signal.SIGKILL)
        finally:
            bound.cancel()
            child.kill()
            _, err = child.communicate(timeout=30)
        assert line.startswith("claimed "), (line, err)
        return line.split()[1]

    claimed = await trio.to_thread.run_sync(run_child)
    first = START + timedelta(hours=1)
    assert claimed == first.isoformat()
    try:
        clock = trio_clock(first + timedelta(minutes=1))
        wf = one_step(stores.open(), clock, lease=timedelta(seconds=1))
        assert await wf.list_runs() == []  # claimed, never triggered
        async with af.open_workflow(wf), trio.open_nursery() as nursery:
            nursery.start_soon(wf.schedule_trigger, "report", "@hourly")
            with trio.fail_after(600):
                rec = await wait_for(wf, "report", lambda r: r.status is Three.B)
            await trio.sleep(3600)  # 11:00 fires as usual, 10:00 not again
            nursery.cancel_scope.cancel()
        runs = await wf.list_runs()
    finally:
        await stores.close_all()
    assert first <= rec.created_at < first + timedelta(minutes=10)
    assert [(r.created_at - first) // timedelta(hours=1) for r in runs] == [0, 1]
