"""An adversarial probe of PostgresStore, written from the API contract and the issues.

Hostile values, schemas that are not ours, load on the same foreign ids, several workers
on one schema (each a PostgresStore of its own: they share nothing but the database) and
connections killed under them. Waits are on events and stored states, never on timing.
"""

from __future__ import annotations

import enum
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
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
        run.object.note = payload.decode(errors="replace")
        return St.PAID

    async def expired(run: af.Run[Box, St], now: datetime) -> St:
        run.object.note = "expired"
        return St.PAID

    async def finish(run: af.Run[Box, St]) -> St:
        return St.DONE

    b.add_step(St.START, start, to=[St.WAITING])
    b.add_callback(St.WAITING, paid, to=[St.PAID])
    b.add_timeout(St.WAITING, af.after(timedelta(days=1)), expired, to=[St.PAID])
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
