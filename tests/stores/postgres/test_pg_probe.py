"""An adversarial probe of PostgresStore, written from the API contract and the issues.

Hostile values, schemas that are not ours, load on the same foreign ids, several workers
on one schema (each a PostgresStore of its own: they share nothing but the database) and
connections killed under them. Waits are on events and stored states, never on timing.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import actorflow as af
from actorflow.testing import wait_for

DSN = os.environ.get("ACTORFLOW_PG_DSN", "")
if not DSN:
    pytest.skip("ACTORFLOW_PG_DSN not set: PostgreSQL store tests skipped", allow_module_level=True)

import psycopg  # noqa: E402

pytestmark = pytest.mark.postgres


class St(enum.IntEnum):
    START = 1
    WAITING = 2
    PAID = 3
    DONE = 4


@attrs.define
class Box:
    n: int = 0
    note: str = ""
    items: list[str] = attrs.Factory(list)


def _sql(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(DSN, autocommit=True) as conn:
        cursor = conn.execute(query.encode(), params)
        return cursor.fetchall() if cursor.description else []


async def sql(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    return await trio.to_thread.run_sync(lambda: _sql(query, params))


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"af_probe_{uuid.uuid4().hex[:16]}"
    yield name
    _sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


MakeStore = Callable[..., af.PostgresStore]
LEASE = timedelta(seconds=2)


@pytest.fixture
async def make_store(schema: str) -> AsyncIterator[MakeStore]:
    """Stores on the test's schema; ``app=`` names their connections (application_name)."""
    made: list[af.PostgresStore] = []

    def make(app: str = "probe", **kwargs: Any) -> af.PostgresStore:
        kwargs.setdefault("schema", schema)
        kwargs.setdefault("pool_size", 4)
        sep = "&" if "?" in DSN else "?"
        store = af.PostgresStore(f"{DSN}{sep}application_name={app}", **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


def payments(
    store: af.Store,
    *,
    step: Callable[[af.Run[Box, St]], Any] | None = None,
    name: str = "pay",
    expire_after: timedelta = timedelta(days=1),
    on_callback: Callable[[af.Run[Box, St]], Any] | None = None,
    **build: Any,
) -> af.Workflow[Box, St]:
    """START -step-> WAITING -callback-> PAID -step-> DONE; WAITING times out after a day."""
    b = af.Builder(name, Box, St)

    async def start(run: af.Run[Box, St]) -> St:
        if step is not None:
            result = await step(run)
            if result is not None:
                return result  # type: ignore[no-any-return]
        run.object.n += 1
        return St.WAITING

    async def paid(run: af.Run[Box, St], payload: bytes) -> St:
        if payload == b"skip":
            return run.skip()
        if on_callback is not None:
            await on_callback(run)
        run.object.note = payload.decode(errors="replace")
        return St.PAID

    async def expired(run: af.Run[Box, St], now: datetime) -> St:
        run.object.note = "expired"
        return St.PAID

    async def finish(run: af.Run[Box, St]) -> St:
        if step is not None:
            await step(run)
        return St.DONE

    b.add_step(St.START, start, to=[St.WAITING])
    b.add_callback(St.WAITING, paid, to=[St.PAID])
    b.add_timeout(St.WAITING, af.after(expire_after), expired, to=[St.PAID])
    b.add_step(St.PAID, finish, to=[St.DONE])
    build.setdefault("default_options", {"error_backoff": timedelta(milliseconds=50)})
    return b.build(store, **build)


# -- hostile values: the same clear errors as MemoryStore and SQLite ----------------------


async def test_hostile_arguments_are_refused_with_clear_errors(make_store: MakeStore) -> None:
    wf = payments(make_store())
    for bad in ("a\x00b", "\ud800", "", "x" * 100_000):
        with pytest.raises(af.InvalidArgument):
            await wf.trigger(bad)
        with pytest.raises(af.InvalidArgument):
            await wf.callback(bad, St.WAITING, b"")
        if bad and len(bad) < 10:
            with pytest.raises(af.InvalidArgument):
                await wf.list_runs(foreign_id=bad)
        else:  # no run can have it: a filter that matches nothing, as on every store
            assert await wf.list_runs(foreign_id=bad) == []
            assert await wf.list_runs(foreign_id=[bad, "x"]) == []
    with pytest.raises(af.InvalidArgument):
        await wf.trigger("f", initial=Box(note="\ud800"))
    with pytest.raises(af.InvalidArgument):
        await wf.trigger("f", initial=Box(items=["ok", "\udfff"]))
    for status in (0, -1, 99, 2**63, "WAITING\x00", 1.5, True):
        with pytest.raises(af.ActorflowError):
            await wf.list_runs(status=status)  # type: ignore[arg-type]
        with pytest.raises(af.ActorflowError):
            await wf.callback("f", status, b"")  # type: ignore[arg-type]
    for run_id in ("a\x00b", "\ud800"):
        with pytest.raises(af.InvalidArgument):
            await wf.lookup(run_id)
        with pytest.raises(af.InvalidArgument):
            await wf.pause(run_id, "r")
    with pytest.raises(af.RunNotFound):
        await wf.lookup("r" * 1_000_000)  # a long unknown id is just not found
    with pytest.raises(af.RunNotFound):
        await wf.history("r" * 1_000_000)
    run_id = await wf.trigger("f")
    for reason in ("a\x00b", "\ud800"):
        with pytest.raises(af.InvalidArgument):
            await wf.pause(run_id, reason)
        with pytest.raises(af.InvalidArgument):
            await wf.cancel(run_id, reason)
    assert (await wf.lookup(run_id)).version == 1


def _wide(n: int, seed: int) -> str:
    """``n`` random 4-byte characters (incompressible: PostgreSQL cannot shrink them)."""
    rnd = random.Random(seed)
    return "".join(chr(rnd.randrange(0x10000, 0x10FFFF)) for _ in range(n))


async def test_values_every_store_takes_are_taken_by_postgres_too(make_store: MakeStore) -> None:
    """What MemoryStore and SQLite store, PostgreSQL stores byte for byte: NUL characters
    inside the object (JSON escapes them), the longest workflow name and foreign id in
    4-byte characters (once refused by PostgreSQL only: an index row over 2704 bytes), a
    multi-megabyte object. A foreign id too long in bytes is refused on every store alike."""
    store = make_store()
    name = _wide(200, 1)
    longest = payments(store, name=name)
    fid = _wide(384, 2)
    run_id = await longest.trigger(fid, initial=Box(note="nul\x00inside", items=["\x00"] * 3))
    rec = await longest.lookup(run_id)
    assert rec.foreign_id == fid and rec.object.note == "nul\x00inside"
    assert [r.run_id for r in await longest.list_runs(foreign_id=fid)] == [run_id]
    assert (await longest.latest(fid)).run_id == run_id
    with pytest.raises(af.WorkflowInProgress):
        await longest.trigger(fid)
    cjk = "\u6f22" * 512  # 512 characters of 3 bytes: taken
    assert (await longest.lookup(await longest.trigger(cjk))).foreign_id == cjk
    for wf in (longest, payments(af.MemoryStore(), name=name)):
        with pytest.raises(af.InvalidArgument, match="bytes"):
            await wf.trigger(_wide(385, 3))
        [refused] = await wf.trigger_many([_wide(385, 3)])
        assert isinstance(refused, af.InvalidArgument)
    big = Box(note="\u00e9" * 4_000_000, items=[str(i) for i in range(50_000)])
    wf = payments(store)
    big_id = await wf.trigger("big", initial=big)
    assert (await wf.lookup(big_id)).object == big


class Wide(enum.IntEnum):
    """Statuses the builder allows (up to a signed 64-bit integer), beyond PostgreSQL's
    integer: once refused by PostgresStore only ("integer out of range")."""

    LOW = 2**31
    MID = 2**40
    TOP = 2**63 - 1


async def test_status_values_up_to_64_bits_work_as_on_every_store(
    make_store: MakeStore, schema: str
) -> None:
    b = af.Builder("wide", Box, Wide)

    @b.step(Wide.LOW, to=Wide.MID)
    async def low(run: af.Run[Box, Wide]) -> Wide:
        return Wide.MID

    async def expired(run: af.Run[Box, Wide], now: datetime) -> Wide:
        return Wide.TOP

    async def paid(run: af.Run[Box, Wide], payload: bytes) -> Wide:
        return Wide.TOP

    b.add_timeout(Wide.MID, af.after(timedelta(days=1)), expired, to=Wide.TOP)
    b.add_callback(Wide.MID, paid, to=Wide.TOP)
    wf = b.build(make_store())
    async with af.open_workflow(wf):
        with trio.fail_after(20):
            run_id = await wf.trigger("w")
            await wf.await_status("w", run_id, Wide.MID)
            assert [t for (t,) in await sql(f'SELECT status FROM "{schema}".timers')] == [2**40]
            assert [r.run_id for r in await wf.list_runs(status=Wide.MID)] == [run_id]
            assert await wf.callback("w", Wide.MID, b"") is not None
            done = await wf.await_status("w", run_id, Wide.TOP)
    assert done.status is Wide.TOP and done.run_state is af.RunState.COMPLETED
    assert [r.status for r in await wf.history(run_id)] == [Wide.LOW, Wide.MID, Wide.TOP]
    counts = await wf.count_runs(status=[Wide.TOP])
    assert counts, counts


def test_status_names_no_store_can_hold_are_refused_at_build() -> None:
    """Status names are stored with every version (its status description): a NUL or a
    lone surrogate in one once worked on MemoryStore and failed every trigger on
    PostgreSQL (jsonb refuses them). Refused by the builder, whatever the store."""
    for names in ({"A\x00B": 1, "C": 2}, {"A": 1, "C\ud800": 2}):
        with pytest.raises(af.BuildError, match="status name"):
            af.Builder("odd", Box, enum.IntEnum("Odd", names))  # type: ignore[misc]
    fine = enum.IntEnum("Fine", {"Ä b-c ✓": 1, "DONE": 2})  # type: ignore[misc]
    assert af.Builder("odd", Box, fine).name == "odd"
    # A connector's durable cursor is keyed by workflow and connector name: both are
    # bounded so that PostgreSQL's index takes every key (4-byte characters included).
    b = af.Builder(_wide(200, 4), Box, St)

    async def on_event(workflow: Any, event: af.ConnectorEvent) -> None:
        pass

    b.add_connector(_wide(200, 5), af.MemorySource([]), on_event)
    with pytest.raises(af.BuildError, match="200 characters"):
        b.add_connector(_wide(201, 6), af.MemorySource([]), on_event)


async def test_hostile_text_from_user_code_is_stored_or_counted_never_stuck(
    make_store: MakeStore,
) -> None:
    """A step's pause/cancel reason and an exception's text come from user code: NUL and
    lone surrogates in them must not leave the run stuck on PostgreSQL (jsonb refuses
    \\u0000), where SQLite would have stored them."""

    raised: list[str] = []

    async def hostile(run: af.Run[Box, St]) -> St | None:
        if run.foreign_id == "pause":
            return run.pause("nul\x00 and \ud800 reason")
        if run.foreign_id == "cancel":
            return run.cancel("\x00")
        if not raised:
            raised.append(run.run_id)
            raise ValueError("error with \x00 and \udc80 inside")
        return None

    wf = payments(make_store(), step=hostile)
    async with af.open_workflow(wf):
        with trio.fail_after(20):
            for fid in ("pause", "cancel", "raise"):
                await wf.trigger(fid)
            p = await wait_for(wf, "pause", lambda r: r.run_state is af.RunState.PAUSED)
            c = await wait_for(wf, "cancel", lambda r: r.run_state is af.RunState.CANCELLED)
            r = await wait_for(wf, "raise", lambda r: r.status is St.WAITING)
    assert "reason" in p.meta.run_state_reason
    assert c.run_state is af.RunState.CANCELLED
    assert r.object.n == 1 and raised == [r.run_id]


# -- schemas that are not ours --------------------------------------------------------------


async def _open(store: af.PostgresStore) -> None:
    async with store:
        await store.list_runs("wf")


async def test_a_newer_schema_is_refused_at_open_and_left_alone(
    make_store: MakeStore, schema: str
) -> None:
    await _open(make_store())
    await sql(
        f'INSERT INTO "{schema}".schema_version (version, description) VALUES (999, %s)',
        ["from the future"],
    )
    before = await sql(f'SELECT count(*) FROM "{schema}".schema_version')
    with pytest.raises(af.StoreError, match="999"):
        await _open(make_store())
    assert await sql(f'SELECT count(*) FROM "{schema}".schema_version') == before


async def test_another_applications_tables_with_our_names_are_refused_at_open(
    make_store: MakeStore, schema: str
) -> None:
    await sql(f'CREATE SCHEMA "{schema}"')
    await sql(f'CREATE TABLE "{schema}".runs (id serial PRIMARY KEY, city text)')
    await sql(f'INSERT INTO "{schema}".runs (city) VALUES (%s)', ["Oslo"])
    with pytest.raises(af.StoreError, match="runs"):
        await _open(make_store())
    assert await sql(f'SELECT city FROM "{schema}".runs') == [("Oslo",)]
    # Nothing of ours was left behind: a failed open rolls back.
    tables = await sql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
    )
    assert tables == [("runs",)]


async def test_another_applications_schema_version_table_is_refused_at_open(
    make_store: MakeStore, schema: str
) -> None:
    await sql(f'CREATE SCHEMA "{schema}"')
    await sql(f'CREATE TABLE "{schema}".schema_version (version text, note text)')
    await sql(f"INSERT INTO \"{schema}\".schema_version VALUES ('v2.3-beta', 'theirs')")
    with pytest.raises(af.StoreError, match="schema_version"):
        await _open(make_store())
    await sql(f'DROP TABLE "{schema}".schema_version')
    await sql(f'CREATE TABLE "{schema}".schema_version (id int)')
    with pytest.raises(af.StoreError, match="schema_version"):
        await _open(make_store())


async def test_a_half_migrated_schema_is_refused_at_open(
    make_store: MakeStore, schema: str
) -> None:
    """The version table says the schema is up to date, but a table (or column) the code
    needs is gone: a clear StoreError at open, not a failure of the first write."""
    await _open(make_store())
    await sql(f'DROP TABLE "{schema}".shard_leases')
    with pytest.raises(af.StoreError, match="shard_leases"):
        await _open(make_store())
    with pytest.raises(af.StoreError, match="shard_leases"):
        await _open(make_store())  # still refused: nothing was changed by the refusal
    await _open(make_store(schema=schema + "_b"))
    await sql(f'ALTER TABLE "{schema}_b".history DROP COLUMN shard_key')
    try:
        with pytest.raises(af.StoreError, match="shard_key"):
            await _open(make_store(schema=schema + "_b"))
    finally:
        await sql(f'DROP SCHEMA "{schema}_b" CASCADE')


async def test_a_fresh_schema_has_exactly_the_tables_and_columns_checked_at_open(
    make_store: MakeStore, schema: str
) -> None:
    from actorflow.stores.postgres.schema import TABLES

    await _open(make_store())
    rows = await sql(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s",
        [schema],
    )
    found: dict[str, set[str]] = {}
    for table, column in rows:
        found.setdefault(table, set()).add(column)
    assert found == {table: set(columns) for table, columns in TABLES.items()}


# -- load: many callers on the same foreign ids, two processes ------------------------------


def _check_histories(
    histories: dict[str, list[tuple[int, int, int]]], fid_of: dict[str, str]
) -> None:
    """Every run: versions 1..n without gaps, each status stored once, in order."""
    for run_id, history in histories.items():
        where = f"{fid_of.get(run_id)} {run_id}: {history}"
        assert [v for v, _, _ in history] == list(range(1, len(history) + 1)), where
        statuses = [s for _, s, _ in history]
        assert statuses == sorted(set(statuses)), where


async def _histories(schema: str, name: str = "pay") -> tuple[dict[str, Any], dict[str, str]]:
    rows = await sql(
        f'SELECT run_id, foreign_id, version, status, run_state FROM "{schema}".history '
        "WHERE workflow_name = %s ORDER BY run_id, version",
        [name],
    )
    histories: dict[str, list[tuple[int, int, int]]] = {}
    fid_of: dict[str, str] = {}
    for run_id, fid, version, status, state in rows:
        histories.setdefault(run_id, []).append((version, status, state))
        fid_of[run_id] = fid
    return histories, fid_of


async def test_50_callers_trigger_and_call_back_the_same_foreign_ids_from_two_processes(
    make_store: MakeStore, schema: str
) -> None:
    """50 tasks, half on each of two stores (processes), trigger and call back 5 foreign ids
    as fast as they can while one of them runs the workflow: at most one unfinished run per
    foreign id at any time, each run's callback taken exactly once, nothing stored twice."""
    worker = payments(make_store("probe-worker"))
    caller_store = make_store("probe-caller")
    caller = payments(caller_store)
    fids = [f"fid-{i}" for i in range(5)]
    started: dict[str, list[str]] = {fid: [] for fid in fids}
    taken: list[tuple[str, str]] = []
    rounds = 10

    async def hammer(wf: af.Workflow[Box, St], k: int) -> None:
        for i in range(rounds):
            fid = fids[(k + i) % len(fids)]
            with contextlib.suppress(af.WorkflowInProgress):
                started[fid].append(await wf.trigger(fid))
            rec = await wf.callback(fid, St.WAITING, f"{k}/{i}".encode())
            if rec is not None:
                assert rec.status is St.PAID and rec.object.note == f"{k}/{i}"
                taken.append((rec.run_id, rec.object.note))
            await trio.lowlevel.checkpoint()

    async with af.open_workflow(worker), trio.open_nursery() as listening:
        await listening.start(caller_store.listen)  # the caller process hears the worker
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for k in range(50):
                    nursery.start_soon(hammer, worker if k % 2 else caller, k)
            # Finish what is left: every started run gets its callback and completes.
            for fid in fids:
                latest = await caller.latest(fid)
                if latest.status is St.WAITING or latest.status is St.START:
                    await caller.await_status(fid, latest.run_id, St.WAITING)
                    if await caller.callback(fid, St.WAITING, b"last") is not None:
                        taken.append((latest.run_id, "last"))
                await caller.await_status(fid, latest.run_id, St.DONE)
        listening.cancel_scope.cancel()
    every = [run_id for ids in started.values() for run_id in ids]
    assert len(every) == len(set(every)) >= len(fids)
    print(f"{len(every)} runs started, {len(taken)} callbacks taken")
    assert sorted(run_id for run_id, _ in taken) == sorted(every)  # one callback per run
    histories, fid_of = await _histories(schema)
    assert set(histories) == set(every)
    _check_histories(histories, fid_of)
    for history in histories.values():
        assert [s for _, s, _ in history] == [1, 2, 3, 4]
    # Runs of one foreign id never overlapped: each was created (event-log order) after the
    # previous one completed. (Their created_at/updated_at are the writers' wall clocks,
    # read before the write queued: they may cross by a few ms.)
    rows = await sql(
        f'SELECT foreign_id, run_id, min(id), max(id), max(run_state) FROM "{schema}".history '
        "GROUP BY foreign_id, run_id ORDER BY foreign_id, min(id)"
    )
    previous: dict[str, int] = {}
    for fid, _run_id, first, last, state in rows:
        assert state == af.RunState.COMPLETED
        if fid in previous:
            assert first > previous[fid], fid
        previous[fid] = last


async def test_trigger_many_with_duplicates_from_two_processes_at_once(
    make_store: MakeStore, schema: str
) -> None:
    one = payments(make_store("probe-a"))
    two = payments(make_store("probe-b"))
    await one.trigger("busy")
    items: list[Any] = [
        "a",
        "b",
        "a",
        {"foreign_id": "busy"},
        ("b", St.WAITING, Box(n=7)),
        {"foreign_id": "c", "start": St.WAITING},
        "c",
        {"foreign_id": "a\x00"},
    ]
    results = await one.trigger_many(items)
    assert [type(r).__name__ if not isinstance(r, str) else "id" for r in results] == [
        "id",
        "id",
        "WorkflowInProgress",
        "WorkflowInProgress",
        "WorkflowInProgress",
        "id",
        "WorkflowInProgress",
        "InvalidArgument",
    ]
    # Two processes backfilling overlapping ids at once: each foreign id started once.
    batch = [f"x{i % 300}" for i in range(600)]
    outcomes: list[list[str | af.ActorflowError]] = []

    async def backfill(wf: af.Workflow[Box, St], items: list[str]) -> None:
        outcomes.append(await wf.trigger_many(items))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(backfill, one, batch)
        nursery.start_soon(backfill, two, list(reversed(batch)))
    ids = [r for out in outcomes for r in out if isinstance(r, str)]
    refused = [r for out in outcomes for r in out if not isinstance(r, str)]
    assert len(ids) == len(set(ids)) == 300
    assert all(isinstance(r, af.WorkflowInProgress) for r in refused) and len(refused) == 900
    assert await sql(
        f'SELECT count(*), count(DISTINCT foreign_id) FROM "{schema}".runs '
        "WHERE foreign_id LIKE 'x%%'"
    ) == [(300, 300)]


async def test_await_status_from_many_tasks_in_two_processes(make_store: MakeStore) -> None:
    worker = payments(make_store("probe-worker"))
    other = payments(make_store("probe-other"))
    got: list[af.Record[Box, St]] = []

    async def wait(wf: af.Workflow[Box, St], run_id: str, status: St) -> None:
        got.append(await wf.await_status("f", run_id, status, timeout=60))

    async with af.open_workflow(worker):
        run_id = await other.trigger("f")
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for k in range(100):
                    wf = worker if k % 2 else other
                    nursery.start_soon(wait, wf, run_id, St.DONE if k % 3 else St.WAITING)
                await worker.await_status("f", run_id, St.WAITING)
                await other.callback("f", St.WAITING, b"paid")
    assert len(got) == 100
    done = [r for r in got if r.status is St.DONE]
    waiting = [r for r in got if r.status is St.WAITING]
    assert len({r.version for r in done}) == 1 and len({r.version for r in waiting}) == 1
    assert done[0].object.note == "paid" and waiting[0].version == 2


# -- several workers on one schema: shards move, nothing is done twice -----------------------


class Fleet:
    """Workers (each a PostgresStore and a Workflow of its own, in a cancel scope of its
    own: stand-ins for processes) and a caller store that only triggers and calls back."""

    def __init__(self, make_store: MakeStore, nursery: trio.Nursery, **build: Any) -> None:
        self.make_store = make_store
        self.nursery = nursery
        self.build = {"lease": timedelta(seconds=1), "shards": 8, **build}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.workflows: dict[str, af.Workflow[Box, St]] = {}
        self.ran: list[tuple[str, str, int]] = []  # (worker, run id, status) per execution

    def step_of(self, worker: str) -> Callable[[af.Run[Box, St]], Any]:
        async def step(run: af.Run[Box, St]) -> None:
            self.ran.append((worker, run.run_id, int(run.status)))
            run.object.items.append(f"{worker}:{int(run.status)}")

        return step

    async def start(self, worker: str, **extra: Any) -> af.Workflow[Box, St]:
        wf = payments(
            self.make_store(f"probe-{worker}"), step=self.step_of(worker), **self.build, **extra
        )
        scope = trio.CancelScope()

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await wf.run(task_status=task_status)

        await self.nursery.start(serve)
        self.scopes[worker] = scope
        self.workflows[worker] = wf
        return wf


async def test_three_workers_runs_done_once_while_workers_stop_are_cancelled_and_join(
    make_store: MakeStore, schema: str
) -> None:
    """Two workers share the runs; one is cancelled mid-flight, a third joins, the first
    stops gracefully: every run completes, each transition stored once, callbacks and
    timeouts delivered to runs whose shard moved meanwhile."""
    caller_store = make_store("probe-caller")
    caller = payments(caller_store, expire_after=timedelta(seconds=1))
    n = 60
    async with trio.open_nursery() as nursery:
        await nursery.start(caller_store.listen)
        fleet = Fleet(make_store, nursery, expire_after=timedelta(seconds=1))
        w0 = await fleet.start("w0")
        await fleet.start("w1")
        with trio.fail_after(40):
            ids = [await caller.trigger(f"r{i}") for i in range(n)]
            # Half the runs get a callback, the other half time out (1 s) meanwhile.
            for i in range(0, n // 2):
                await caller.await_status(f"r{i}", ids[i], St.WAITING)
            fleet.scopes["w1"].cancel()  # w1 dies mid-flight: its leases must expire
            called: list[str] = []
            for i in range(0, n // 4):
                rec = await caller.callback(f"r{i}", St.WAITING, b"paid")
                if rec is not None:
                    called.append(ids[i])
            await fleet.start("w2")
            for i in range(n // 4, n // 2):
                rec = await caller.callback(f"r{i}", St.WAITING, b"paid")
                if rec is not None:
                    called.append(ids[i])
            w0.stop()  # graceful: hands its shards over
            done = [await caller.await_status(f"r{i}", ids[i], St.DONE) for i in range(n)]
        nursery.cancel_scope.cancel()
    histories, fid_of = await _histories(schema)
    assert set(histories) == set(ids)
    for run_id, history in histories.items():
        assert [s for _, s, _ in history] == [1, 2, 3, 4], (fid_of[run_id], history)
        assert [v for v, _, _ in history] == [1, 2, 3, 4], (fid_of[run_id], history)
    notes = {r.run_id: r.object.note for r in done}
    for run_id in ids:
        # Each run was paid by its callback or expired, never both (a callback answered
        # None only because the timeout had already moved the run).
        assert notes[run_id] == ("paid" if run_id in called else "expired"), run_id
        # Each step's effect once in the stored object.
        items = next(r.object.items for r in done if r.run_id == run_id)
        assert [item.split(":")[1] for item in items] == ["1", "3"], (run_id, items)
    workers = {item.split(":")[0] for r in done for item in r.object.items}
    assert {"w0", "w2"} <= workers  # the runs really moved between workers
    assert await sql(f'SELECT count(*) FROM "{schema}".timers') == [(0,)]


async def _database_shows(query: str, params: Any) -> None:
    """Wait until ``query`` returns a row: another connection's state, which no trio event
    can tell (bounded by the caller's fail_after)."""
    while not await sql(query, params):  # noqa: ASYNC110
        await trio.sleep(0.01)


async def _until(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds: lease ticks and recovery passes, which no event
    announces (bounded by the caller's fail_after)."""
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)


def _kill_connections(schema: str, channel: str, apps: tuple[str, ...]) -> int:
    """Terminate the backends of this test's stores (pools by application_name; lease and
    listen connections by what they last ran): never another test's or helper's."""
    rows = _sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND (application_name = ANY(%s) "
        "OR (application_name IN ('actorflow-leases', 'actorflow-listen') "
        "AND (strpos(query, %s) > 0 OR strpos(query, %s) > 0)))",
        [list(apps), schema, channel],
    )
    return int(rows[0][0])


async def test_connections_killed_mid_step_mid_callback_and_mid_batch_lose_nothing(
    make_store: MakeStore, schema: str
) -> None:
    """pg_terminate_backend on every connection of two workers and a caller, from inside
    steps and callbacks (so while other actors' batches are in flight): the workers retry,
    callers get their answers (or a clear StoreError), every run completes once."""
    caller_store = make_store("probe-caller")
    apps = ("probe-w0", "probe-w1", "probe-caller")
    channel = caller_store.notifications.channel
    kills: list[int] = []

    async def kill() -> None:
        kills.append(await trio.to_thread.run_sync(_kill_connections, schema, channel, apps))

    async def step(run: af.Run[Box, St]) -> None:
        if int(run.foreign_id[1:]) % 7 == 0:
            await kill()

    async def on_callback(run: af.Run[Box, St]) -> None:
        if int(run.foreign_id[1:]) % 5 == 0:
            await kill()

    caller = payments(caller_store)
    n = 80
    async with trio.open_nursery() as nursery:
        await nursery.start(caller_store.listen)
        workers = [
            payments(
                make_store(app), step=step, on_callback=on_callback, lease=timedelta(seconds=2)
            )
            for app in apps[:2]
        ]
        for wf in workers:
            await nursery.start(wf.run)
        with trio.fail_after(60):
            results = await caller.trigger_many([f"r{i}" for i in range(n)])
            ids = [r for r in results if isinstance(r, str)]
            assert len(ids) == n, results
            answers: dict[str, af.Record[Box, St] | None] = {}

            async def pay(i: int) -> None:
                await caller.await_status(f"r{i}", ids[i], St.WAITING)
                wf = workers[i % 2] if i % 3 else caller  # through an actor, or the store
                answers[ids[i]] = await wf.callback(f"r{i}", St.WAITING, b"paid")

            async with trio.open_nursery() as payers:
                for i in range(n):
                    payers.start_soon(pay, i)
                    if i % 10 == 0:
                        payers.start_soon(kill)
            try:
                done = [await caller.await_status(f"r{i}", ids[i], St.DONE) for i in range(n)]
            except trio.Cancelled:  # say which runs were left behind
                print("not done:", _sql(f'SELECT * FROM "{schema}".runs WHERE run_state <> 5'))
                raise
        nursery.cancel_scope.cancel()
    assert sum(kills) > 20, kills  # connections really were killed, many times
    assert all(a is not None and a.status is St.PAID for a in answers.values()), answers
    assert all(r.object.note == "paid" for r in done)
    histories, fid_of = await _histories(schema)
    assert set(histories) == set(ids)
    for run_id, history in histories.items():
        assert [(v, s) for v, s, _ in history] == [(1, 1), (2, 2), (3, 3), (4, 4)], (
            fid_of[run_id],
            history,
        )


# -- a frozen worker (SIGSTOP) comes back: it must not act on the shards it lost -----------

WORKER = Path(__file__).with_name("failover_worker.py")


def _poll(predicate: Callable[[], bool], within: float, what: str, logs: list[Path]) -> None:
    """Poll the database from a plain test, bounded by ``within`` (processes, not tasks)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)
            pytest.fail(f"not within {within} s: {what}\n{tails}")
        time.sleep(0.05)


def _live_owners(schema: str) -> dict[int, str]:
    try:
        rows = _sql(
            f'SELECT shard, owner::text FROM "{schema}".shard_leases '
            "WHERE owner IS NOT NULL AND expires_at > now()"
        )
    except psycopg.Error:
        return {}
    return {int(shard): str(owner) for shard, owner in rows}


def _count(schema: str, where: str = "true") -> int:
    try:
        return int(_sql(f'SELECT count(*) FROM "{schema}".runs WHERE {where}')[0][0])
    except psycopg.Error:
        return 0


@pytest.mark.slow
def test_a_frozen_worker_loses_its_shards_and_comes_back_without_doing_anything_twice(
    schema: str, tmp_path: Path
) -> None:
    from tests.stores.postgres.failover_worker import EXPECTED, Step, create_side_tables

    create_side_tables(DSN, schema)
    runs, lease = 60, 1.5
    names = ["w0", "w1"]
    logs = [tmp_path / f"{name}.log" for name in names]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, log in zip(names, logs, strict=True):
            with log.open("wb") as out:
                workers[name] = subprocess.Popen(
                    [sys.executable, str(WORKER), "work", DSN, schema, name, str(lease)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
        _poll(lambda: len(set(_live_owners(schema).values())) == 2, 30, "two owners", logs)
        subprocess.run(
            [sys.executable, str(WORKER), "trigger", DSN, schema, "0", str(runs)],
            check=True,
            env=env,
            capture_output=True,
        )
        _poll(lambda: _count(schema, "run_state = 5") >= 15, 30, "runs completing", logs)
        frozen = workers["w0"]
        pid_rows = _sql(
            f'SELECT worker_id::text FROM "{schema}".workers WHERE pid = %s', [frozen.pid]
        )
        frozen_id = pid_rows[0][0]
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            _poll(
                lambda: (
                    len(_live_owners(schema)) == 16
                    and frozen_id not in _live_owners(schema).values()
                ),
                30,
                "w1 holding every shard while w0 is frozen",
                logs,
            )
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        _poll(lambda: _count(schema, "run_state = 5") == runs, 60, "every run complete", logs)
        # w0 rejoins: the shards are shared again.
        _poll(lambda: len(set(_live_owners(schema).values())) == 2, 30, "w0 back", logs)
        for process in workers.values():
            process.send_signal(signal.SIGTERM)
        for name, process in workers.items():
            assert process.wait(timeout=30) == 0, logs[names.index(name)].read_text()
    finally:
        for process in workers.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait()
    histories: dict[str, list[tuple[int, int, list[str]]]] = {}
    for run_id, version, status, obj in _sql(
        f'SELECT run_id, version, status, object FROM "{schema}".history ORDER BY run_id, version'
    ):
        histories.setdefault(run_id, []).append((version, status, json.loads(obj)["trail"]))
    assert len(histories) == runs
    for run_id, history in histories.items():
        assert [v for v, _, _ in history] == [1, 2, 3, 4, 5], (run_id, history)
        assert [s for _, s, _ in history] == list(Step), (run_id, history)
        assert [t for _, _, t in history] == [EXPECTED[:k] for k in range(5)], (run_id, history)
    # A timeout function runs twice only when the frozen worker had begun it when it froze
    # (its commit then loses to the new owner's): never two runs by live owners.
    fired = Counter(_sql(f'SELECT run_id, worker FROM "{schema}".fired'))
    per_run = Counter(run_id for run_id, _ in fired.elements())
    assert set(per_run) == set(histories)
    for run_id, times in per_run.items():
        if times > 1:
            assert times == 2 and fired[(run_id, "w0")] == 1 and fired[(run_id, "w1")] == 1
    assert _sql(f'SELECT count(*) FROM "{schema}".timers') == [(0,)]


async def test_an_event_committed_while_its_shard_arrives_is_not_skipped_by_the_tail(
    make_store: MakeStore, schema: str
) -> None:
    """The race behind a callback lost while its shard moved: a worker's tail reads the
    log for the shards it holds; shard 1 arrives while that read waits for a write in
    flight. A write to a run of shard 1 committing meanwhile (a callback by another
    process) may come after the recovery that follows the gain read that run, so the
    read must not move its position past shard 1's events: it reads them too."""
    from actorflow.stores import realtime
    from actorflow.stores.postgres.schema import lock_key
    from actorflow.stores.postgres.shards import shard_of
    from tests.stores.test_contract import raw

    worker = make_store("probe-w0")
    other = make_store("probe-other")
    ownership = worker.shard_ownership("wf", shards=2, lease=timedelta(seconds=30))
    ownership.book.renewed({0: 1}, realtime.now())  # holds shard 0 only (no heartbeat)
    record = raw("moving")
    while shard_of(record.run_id, 2) != 1:
        record = raw("moving")
    start = await worker.log.last_event_id()
    await other.create_run(record)  # another process writes to a run of shard 1
    log_key = lock_key("actorflow.event-log", schema)
    in_flight = await trio.to_thread.run_sync(lambda: psycopg.connect(DSN, autocommit=True))
    try:
        # A write in flight: it holds the event log's lock shared until it commits.
        await trio.to_thread.run_sync(in_flight.execute, b"BEGIN")
        await trio.to_thread.run_sync(
            in_flight.execute, b"SELECT pg_advisory_xact_lock_shared(%s)", [log_key]
        )
        result: list[tuple[list[Any], int]] = []
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                result.append(await ownership.owned_events(start, 100))

            nursery.start_soon(read)
            # The tail's read now waits for the write in flight (its exclusive lock).
            with trio.fail_after(10):
                await _database_shows(
                    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND objid = (%s::int8 & 4294967295)::oid",
                    [log_key],
                )
            ownership.book.renewed({0: 1, 1: 1}, realtime.now())  # shard 1 arrives
            await trio.to_thread.run_sync(in_flight.execute, b"COMMIT")
        events, position = result[0]
        assert [e.run_id for e in events] == [record.run_id]
        assert position >= events[0].id
    finally:
        await trio.to_thread.run_sync(in_flight.close)


async def test_a_schema_at_version_5_is_migrated_to_bigint_statuses_keeping_its_runs(
    make_store: MakeStore, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actorflow.stores.postgres import schema as pg_schema

    monkeypatch.setattr(pg_schema, "MIGRATIONS", pg_schema.MIGRATIONS[:5])
    old = payments(make_store())
    run_id = await old.trigger("kept", initial=Box(n=5))
    monkeypatch.undo()
    new = payments(make_store())
    assert (await new.lookup(run_id)).object == Box(n=5)
    types = await sql(
        "SELECT table_name, data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND column_name = 'status' ORDER BY table_name",
        [schema],
    )
    assert types == [("history", "bigint"), ("runs", "bigint"), ("timers", "bigint")]


def test_the_listeners_log_lines_name_the_store_not_an_internal_object() -> None:
    store = af.PostgresStore(DSN, schema="named")
    assert repr(store.log) == repr(store) and "named" in repr(store.log)


_ALLOWED = {
    (1, 2), (1, 3), (1, 4), (2, 5), (2, 3), (2, 4), (3, 2), (3, 4),
    (5, 7), (4, 7), (7, 6), (6, 7),
}  # fmt: skip


async def test_controls_racing_from_two_processes_store_only_legal_transitions(
    make_store: MakeStore, schema: str
) -> None:
    """40 tasks on two stores pause, resume and cancel the same runs while a worker moves
    them: each control succeeds or raises InvalidTransition, never anything else, and the
    stored history holds only transitions the run-state table allows."""
    worker = payments(make_store("probe-worker"))
    other = payments(make_store("probe-other"))
    outcomes: list[str] = []

    async def meddle(wf: af.Workflow[Box, St], run_id: str, k: int) -> None:
        for i in range(8):
            action = ("pause", "resume", "cancel")[(k + i) % 3] if i > 3 else "pause"
            try:
                if action == "resume":
                    await wf.resume(run_id)
                else:
                    await getattr(wf, action)(run_id, f"{action} by {k}")
                outcomes.append(action)
            except af.InvalidTransition:
                outcomes.append("refused")
            await trio.lowlevel.checkpoint()

    async with af.open_workflow(worker):
        with trio.fail_after(30):
            ids = [await other.trigger(f"c{i}") for i in range(5)]
            async with trio.open_nursery() as nursery:
                for k in range(40):
                    wf = worker if k % 2 else other
                    nursery.start_soon(meddle, wf, ids[k % 5], k)
    assert "refused" in outcomes and "pause" in outcomes
    rows = await sql(
        f'SELECT run_id, version, run_state FROM "{schema}".history ORDER BY run_id, version'
    )
    last: dict[str, tuple[int, int]] = {}
    for run_id, version, state in rows:
        if run_id in last:
            before_version, before = last[run_id]
            assert version == before_version + 1, run_id
            assert before == state or (before, state) in _ALLOWED, (run_id, before, state)
        last[run_id] = (version, state)


async def test_the_longest_connector_cursor_key_fits_postgres(make_store: MakeStore) -> None:
    from actorflow._services.connectors import cursor_name

    store = make_store()
    name = cursor_name(_wide(200, 7), _wide(200, 8))
    await store.set_cursor(name, "42")
    assert await store.get_cursor(name) == "42"


async def test_trigger_many_survives_its_connections_killed_mid_backfill(
    make_store: MakeStore, schema: str
) -> None:
    """The caller's connections are killed (twice) while a 3000-run backfill is being
    stored: the calls are retried, every item gets its run id, none is stored twice."""
    store = make_store("probe-backfill")
    wf = payments(store)
    kills: list[int] = []
    channel = store.notifications.channel

    async def killer() -> None:
        for at in (600, 1800):
            await _database_shows(f'SELECT 1 FROM "{schema}".runs HAVING count(*) >= %s', [at])
            kills.append(
                await trio.to_thread.run_sync(
                    _kill_connections, schema, channel, ("probe-backfill",)
                )
            )

    await wf.trigger("warm-up")  # the schema exists before the killer looks at it
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            results = await wf.trigger_many([f"b{i}" for i in range(3000)])
    assert len(kills) == 2 and all(kills), kills
    ids = [r for r in results if isinstance(r, str)]
    assert len(ids) == len(set(ids)) == 3000, [r for r in results if not isinstance(r, str)][:3]
    assert await sql(
        f'SELECT count(*), count(DISTINCT foreign_id) FROM "{schema}".history WHERE version = 1'
    ) == [(3001, 3001)]


async def test_a_callback_stored_here_as_its_shard_arrives_here_moves_the_run_on(
    make_store: MakeStore,
) -> None:
    """A worker hands a callback to the store directly (another worker holds the run's
    shard), and the shard arrives here while the callback runs, after the recovery that
    follows the gain. The store counts the write as the owner's own (no notification, not
    in this worker's tail): this worker must move the run on by itself."""
    holder_store = make_store("probe-holder")
    holder = holder_store.shard_ownership("pay", shards=16, lease=LEASE)
    arrived = trio.Event()
    worker: list[af.Workflow[Box, St]] = []

    async def on_callback(run: af.Run[Box, St]) -> None:
        holder_scope.cancel()  # the holder exits: its leases come free
        supervisor = worker[0]._supervisor  # type: ignore[attr-defined]
        with trio.fail_after(20):
            await _until(lambda: supervisor.owns(run.run_id) and not supervisor.recovery._running)
        arrived.set()

    async with trio.open_nursery() as nursery:
        holder_scope = trio.CancelScope()

        async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with holder_scope:
                await holder.serve(lambda: None, task_status=task_status)

        await nursery.start(hold)
        with trio.fail_after(20):
            await _until(lambda: len(holder.held()) == 16)
        wf = payments(make_store("probe-w0"), on_callback=on_callback, lease=LEASE)
        worker.append(wf)
        await nursery.start(wf.run)
        with trio.fail_after(30):
            run_id = await wf.trigger("moving", St.WAITING)
            assert not wf._supervisor.owns(run_id)  # type: ignore[attr-defined]
            paid = await wf.callback("moving", St.WAITING, b"paid")
            assert arrived.is_set() and paid is not None
            done = await wf.await_status("moving", run_id, St.DONE)
        nursery.cancel_scope.cancel()
    assert done.object.note == "paid"
