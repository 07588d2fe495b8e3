"""Hostile probe of the stores and of data deletion, from the public API and docs/stores.md:
odd store arguments (paths, schemas, connection strings), retention options at their
bounds, and deletion racing the rest of a workflow. Every store must behave the same:
store tests run on MemoryStore, SQLiteStore and (with ACTORFLOW_PG_DSN) PostgresStore.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.testing import trio_clock
from tests.conftest import START
from tests.probe_stores import PG_DSN, Stores
from tests.test_adversarial_probe import Doc, St, finish, pipeline

# --- store arguments ----------------------------------------------------------------------


def test_sqlite_paths_no_file_can_have_are_clear_errors(tmp_path: Path) -> None:
    """A NUL in the path is InvalidArgument; a name longer than the file system takes, or a
    symlink loop, a StoreError naming the path: never a bare ValueError/OSError."""
    with pytest.raises(af.InvalidArgument, match="NUL"):
        af.SQLiteStore(str(tmp_path / "a\x00b.db"))
    for path in (tmp_path / ("x" * 300 + ".db"), tmp_path / "/".join(["y" * 200] * 30)):
        with pytest.raises(af.StoreError, match="choose another path"):
            af.SQLiteStore(path)
    (tmp_path / "loop1.db").symlink_to(tmp_path / "loop2.db")
    (tmp_path / "loop2.db").symlink_to(tmp_path / "loop1.db")
    with pytest.raises(af.StoreError, match=r"loop1\.db"):
        af.SQLiteStore(tmp_path / "loop1.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop1.db", "loop2.db"]


def test_postgres_schemas_and_dsns_it_cannot_use_are_refused_at_construction() -> None:
    """Schema names PostgreSQL or the store's queries cannot take ('pg_' is reserved by
    PostgreSQL, '%' broke every parameterised query, a lone surrogate cannot be encoded)
    are InvalidArgument at construction, not a StoreError (or a UnicodeEncodeError) at
    first use; a DSN with a NUL or a lone surrogate is a StoreError like any malformed DSN,
    without echoing it (it may hold a password)."""
    pytest.importorskip("psycopg")
    dsn = "postgresql://app:s3cret@127.0.0.1:1/db"
    system = ("pg_x", "pg_catalog", "pg_temp", "information_schema")
    for schema in ("a%b", "%", *system, "\ud800", "ok\udc80"):
        with pytest.raises(af.InvalidArgument, match="schema"):
            af.PostgresStore(dsn, schema=schema)
    for fine in (
        "PG_x",
        "Pg_x",
        "Information_Schema",
        "public",
        "a-b",
        'a"b',
        "a'b",
        "a b",
        "ü",
        "x" * 63,
    ):
        assert af.PostgresStore(dsn, schema=fine).schema == fine
    for bad in (dsn + "?application_name=\ud800", dsn + "?application_name=a\x00b"):
        with pytest.raises(af.StoreError, match="invalid PostgreSQL DSN") as caught:
            af.PostgresStore(bad)
        assert "s3cret" not in str(caught.value)


async def test_odd_postgres_schema_names_work_end_to_end(autojump_clock: MockClock) -> None:
    """Schema names that need quoting (quotes, spaces, dots, semicolons, backslashes,
    upper case, non-ASCII, 63 bytes) hold a whole workflow: trigger to deletion."""
    if not PG_DSN:
        pytest.skip("ACTORFLOW_PG_DSN not set")
    import uuid

    tag = uuid.uuid4().hex[:8]
    for schema in (f'Q"{tag}', f"a'b;{tag}", f"a.b\\ {tag}", f"ü{tag}" + "é" * 26):
        store = af.PostgresStore(PG_DSN, schema=schema, pool_size=2, drop_schema_on_close=True)
        try:
            wf = pipeline(store, trio_clock(START))
            async with af.open_workflow(wf):
                run_id = await finish(wf, "f")
                await wf.delete_data(run_id, "bye")
            assert [r.object.text for r in await wf.history(run_id)] == [""] * 6
            await store.vacuum()
            assert (await wf.lookup(run_id)).run_state is af.RunState.DATA_DELETED
        finally:
            await store.aclose()


async def test_a_relative_sqlite_path_stays_that_file_after_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store opened with a relative path in one working directory keeps using that file
    after the process changes directory (daemons do): count_runs (a connection in a
    thread), the worker lock and the checkpointer used to open, and create, a file of the
    same name in the new directory ("no such table: runs"), and the worker lock was taken
    on a file there (a worker started from the first directory was not locked out)."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    store = af.SQLiteStore("rel.db")
    monkeypatch.chdir(second)
    try:
        wf = pipeline(store, af.SystemClock())
        async with af.open_workflow(wf):
            run_id = await finish(wf, "f")
            assert await wf.count_runs() == {(St.DONE, af.RunState.COMPLETED): 1}
            assert (first / "rel.db-worker.lock").exists()
            await wf.delete_data(run_id, "erasure")
        assert list(second.iterdir()) == []
        assert store.path == first / "rel.db"
    finally:
        await store.aclose()


# --- retention at its bounds --------------------------------------------------------------


async def test_retention_keep_last_beyond_32_bits(
    stores: Stores, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """keep_last may be up to 2**63-1: beyond what any run has, it keeps every version
    (whatever keep_for says: a version either rule keeps is kept), and the passes succeed.
    PostgreSQL refused such a count on every pass ("integer out of range", logged as a
    failed retention), where the other stores kept everything quietly."""
    clock = trio_clock(START)
    store = stores.open()
    workflows = [
        pipeline(
            store,
            clock,
            name=f"keep{i}",
            history_retention=af.Retention(
                keep_last=keep_last,
                keep_for=keep_for,
                after_finish=timedelta(0),
                every=timedelta(minutes=1),
            ),
        )
        for i, (keep_last, keep_for) in enumerate(
            [(2**31, None), (2**40, timedelta(hours=1)), (2**63 - 1, None), (2, None)]
        )
    ]
    caplog.set_level("WARNING", logger="actorflow")
    async with af.open_workflow(*workflows):
        run_ids = [await finish(wf, "f") for wf in workflows]
        whole = [await wf.history(run_id) for wf, run_id in zip(workflows, run_ids, strict=True)]
        assert [len(h) for h in whole] == [4] * 4
        await trio.sleep(3 * 3600)
        for wf, run_id, before in zip(workflows[:3], run_ids, whole, strict=False):
            assert await wf.history(run_id) == before, wf.name
        assert await workflows[3].history(run_ids[3]) == whole[3][-2:]  # passes did run
    assert not [r.getMessage() for r in caplog.records if "retention" in r.getMessage()]


# --- deletion and retention against the event consumers -------------------------------------


def hooked(store: af.Store, clock: af.Clock, fail: set[str], got: list[Any], **build: Any) -> Any:
    """NEW -> WAITING (the object holds a secret) -callback-> DONE, with an on_complete hook
    that fails while its run's foreign id is in ``fail`` and records what it was given."""
    b = af.Builder("hooked", Doc, St)

    @b.step(St.NEW, to=St.WAITING)
    async def new(run: af.Run[Doc, St]) -> St:
        run.object.text = f"secret of {run.foreign_id}"
        return St.WAITING

    async def answer(run: af.Run[Doc, St], payload: bytes) -> St:
        return St.DONE

    b.add_callback(St.WAITING, answer, to=[St.DONE])

    async def completed(record: af.Record[Doc, St]) -> None:
        if record.foreign_id in fail:
            raise RuntimeError(f"hook down for {record.foreign_id}")
        got.append(record)

    b.on_complete(completed)
    return b.build(store, clock=clock, **build)


async def _complete(wf: af.Workflow[Doc, St], foreign_id: str) -> str:
    run_id = await wf.trigger(foreign_id)
    await wf.await_status(foreign_id, run_id, St.WAITING)
    assert await wf.callback(foreign_id, St.WAITING, b"") is not None
    return run_id


async def _until_hooked(got: list[Any], count: int) -> None:
    for _ in range(3600):  # an hour of virtual time
        if len(got) >= count:
            return
        await trio.sleep(1)
    raise AssertionError(f"the hook was called {len(got)} times, not {count}")


async def test_a_hook_lagging_behind_retention_and_deletion(
    stores: Stores, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_complete hook that keeps failing while its run's data is deleted is then given
    the scrubbed record, never the deleted object. One that keeps failing until retention
    deleted its version misses that version (a warning says so) and the later runs' hooks
    are called: it used to be retried for ever ("coroutine raised StopIteration"), holding
    up every later hook of the workflow."""
    clock = trio_clock(START)
    fail = {"pruned", "deleted"}
    got: list[af.Record[Doc, St]] = []
    retention = af.Retention(
        keep_last=1, after_finish=timedelta(hours=1), every=timedelta(minutes=30)
    )
    wf = hooked(stores.open(), clock, fail, got, history_retention=retention)
    caplog.set_level("WARNING", logger="actorflow")
    async with af.open_workflow(wf):
        pruned = await _complete(wf, "pruned")
        await trio.sleep(60)
        await wf.delete_data(pruned, "erasure")
        await trio.sleep(3 * 3600)  # the COMPLETED version is pruned meanwhile
        assert [r.run_state for r in await wf.history(pruned)] == [af.RunState.DATA_DELETED]
        later = await _complete(wf, "later")
        await _until_hooked(got, 1)
        assert [(r.run_id, r.object.text) for r in got] == [(later, "secret of later")]
        deleted = await _complete(wf, "deleted")
        await trio.sleep(60)
        await wf.delete_data(deleted, "erasure")
        fail.clear()
        await _until_hooked(got, 2)
    assert got[1].run_id == deleted and got[1].run_state is af.RunState.COMPLETED
    assert got[1].object == Doc()  # read when called: already scrubbed
    assert all(r.run_id != pruned for r in got)
    assert any("no longer stored" in r.getMessage() for r in caplog.records)


# --- what delete_data leaves behind ---------------------------------------------------------


async def _stored_bytes(stores: Stores) -> bytes:
    """Everything the store under test holds, as bytes: the SQLite file and its WAL, or the
    text of every row of every table of the PostgreSQL schema (MemoryStore: nothing more
    than the API shows)."""
    if stores.kind == "sqlite":
        wal = stores.path.with_name(stores.path.name + "-wal")
        return stores.path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    if stores.kind == "postgres":
        assert PG_DSN is not None
        dsn, schema = PG_DSN, stores.schema

        def dump() -> bytes:
            import psycopg
            from psycopg import sql

            with psycopg.connect(dsn, autocommit=True) as conn:
                tables = conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema]
                ).fetchall()
                text = [
                    str(row)
                    for (table,) in tables
                    for row in conn.execute(
                        sql.SQL("SELECT t::text FROM {}.{} t").format(
                            sql.Identifier(schema), sql.Identifier(table)
                        )
                    ).fetchall()
                ]
            return "\n".join(text).encode()

        return await trio.to_thread.run_sync(dump)
    return b""


async def test_delete_data_erases_error_texts_made_from_the_object(
    stores: Stores, autojump_clock: MockClock
) -> None:
    """A step whose exception quotes the object (as "cannot mail <address>" does) pauses
    the run after its errors: the message is kept in that version's error_message and
    reason. delete_data erases it with the object from every version, on every store (it
    used to stay in the history, readable through history() and in the files); the reason
    still says why the run paused."""
    clock = trio_clock(START)
    tries: dict[str, int] = {}

    async def working(run: af.Run[Doc, St]) -> St:
        tries[run.foreign_id] = tries.get(run.foreign_id, 0) + 1
        if tries[run.foreign_id] <= 3:
            quote = f"cannot mail {run.object.text.replace(' ', '-')}"
            raise ValueError(quote if run.foreign_id == "short" else f"{quote}; " * 300)
        return St.WAITING

    wf = pipeline(
        stores.open(),
        clock,
        working=working,
        default_options=af.Options(pause_after_errors=3, error_backoff=timedelta(seconds=1)),
        resume_paused_after=None,
    )
    async with af.open_workflow(wf):
        run_ids = {}
        for fid in ("short", "long", "kept"):
            run_ids[fid] = await wf.trigger(fid)
            paused = await _await_state(wf, run_ids[fid], af.RunState.PAUSED)
            assert f"secret-of-{fid}" in paused.meta.error_message
            assert f"secret-of-{fid}" in paused.meta.run_state_reason
        for fid in ("short", "long"):
            await wf.cancel(run_ids[fid], "stop")
            await wf.delete_data(run_ids[fid], "erasure")
        kept = await wf.history(run_ids["kept"])
        for fid in ("short", "long"):
            history = await wf.history(run_ids[fid])
            assert f"secret-of-{fid}" not in repr(history)
            assert f"secret of {fid}" not in repr(history)
            reasons = [r.meta.run_state_reason for r in history]
            assert any(r.startswith("paused after 3 consecutive errors in step") for r in reasons)
            assert history[-1].run_state is af.RunState.DATA_DELETED
    # The run that was not deleted keeps its error texts; the files hold no deleted one.
    assert "secret-of-kept" in kept[-1].meta.error_message
    data = await _stored_bytes(stores)
    for fid in ("short", "long"):
        assert f"secret-of-{fid}".encode() not in data
        assert f"secret of {fid}".encode() not in data
    if stores.kind != "memory":
        assert b"secret-of-kept" in data


async def _await_state(
    wf: af.Workflow[Doc, St], run_id: str, state: af.RunState
) -> af.Record[Doc, St]:
    for _ in range(3600):
        rec = await wf.lookup(run_id)
        if rec.run_state is state:
            return rec
        await trio.sleep(1)
    raise AssertionError(f"run {run_id} never reached {state.name}")


def test_a_relative_path_when_the_working_directory_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path is made absolute at construction; with the working directory
    removed that fails: a StoreError saying so, not a bare FileNotFoundError."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(af.StoreError, match="cannot be made absolute"):
        af.SQLiteStore("relative.db")
