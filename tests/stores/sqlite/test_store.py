"""SQLiteStore beyond the shared contract: durability, schema, bad files, locks, group commit."""

from __future__ import annotations

import enum
import os
import pwd
import shutil
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

import actorflow as af
from actorflow._model.record import RawRecord, Timer
from actorflow.stores import SQLiteStore
from actorflow.stores.sqlite import schema as _sqlite_schema
from tests.stores.test_contract import T0, nxt, raw


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    made = SQLiteStore(tmp_path / "store.db")
    try:
        yield made
    finally:
        await made.aclose()


def _schema_versions(path: Path) -> list[int]:
    with closing(sqlite3.connect(path)) as conn:
        return [v for (v,) in conn.execute("SELECT version FROM schema_version")]


# -- durability ------------------------------------------------------------------------


async def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    first = SQLiteStore(path)
    done = raw("a")
    timer = Timer("wf", done.run_id, 1, "timeout:0", T0 + timedelta(hours=1))
    await first.create_run(done, [timer])
    done2 = await first.commit(nxt(done, status=2, run_state=af.RunState.RUNNING))
    done3 = await first.commit(nxt(done2, status=3, run_state=af.RunState.COMPLETED), timers=[])
    waiting = raw("b", workflow="other")
    resume = Timer("other", waiting.run_id, 1, "resume", T0 + timedelta(minutes=5, microseconds=7))
    await first.create_run(waiting, [resume])
    await first.set_cursor("connector:x", "42")
    await first.claim_schedule("cron:y", T0 + timedelta(microseconds=1))
    events = await first.read_events(0, 100)
    await first.aclose()

    again = SQLiteStore(path)
    try:
        assert await again.history("wf", done.run_id) == [done, done2, done3]
        assert await again.lookup("wf", done.run_id) == done3
        assert await again.latest("other", "b") == waiting
        assert await again.list_runs("other") == [waiting]
        assert await again.list_timers("wf") == []
        assert await again.list_timers("other") == [resume]
        assert await again.read_events(0, 100) == events
        assert await again.get_cursor("connector:x") == "42"
        assert await again.last_schedule("cron:y") == T0 + timedelta(microseconds=1)
        assert not await again.claim_schedule("cron:y", T0)
        # New writes continue the creation order and the event ids.
        later = await again.create_run(raw("c"))
        assert [r.run_id for r in await again.list_runs("wf")] == [done.run_id, later.run_id]
        assert (await again.read_events(events[-1].id, 10))[0].run_id == later.run_id
    finally:
        await again.aclose()


async def test_datetimes_round_trip_as_aware_utc(store: SQLiteStore) -> None:
    plus_two = timezone(timedelta(hours=2))
    record = attrs.evolve(
        raw(),
        created_at=datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=plus_two),
        updated_at=datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    )
    await store.create_run(record)
    got = await store.lookup("wf", record.run_id)
    assert got == record
    assert got.created_at.utcoffset() == timedelta(0)
    assert got.created_at == datetime(2026, 5, 6, 5, 8, 9, 123456, tzinfo=UTC)
    assert isinstance(got.run_state, af.RunState)


async def test_naive_datetimes_and_foreign_timers_are_refused(store: SQLiteStore) -> None:
    naive = attrs.evolve(raw(), created_at=datetime(2026, 1, 1))
    with pytest.raises(af.InvalidArgument, match="timezone-aware"):
        await store.create_run(naive)
    record = raw()
    stranger = Timer("wf", "another-run", 1, "timeout:0", T0)
    with pytest.raises(af.InvalidArgument, match="belongs to run"):
        await store.create_run(record, [stranger])
    assert await store.list_runs("wf") == []


# -- schema ----------------------------------------------------------------------------


async def test_new_file_gets_the_latest_schema_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await SQLiteStore(path).aclose()
    await SQLiteStore(path).aclose()
    assert _schema_versions(path) == [_sqlite_schema.latest_version()]


async def test_newer_schema_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await SQLiteStore(path).aclose()
    newer = _sqlite_schema.latest_version() + 1
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE schema_version SET version = ?", (newer,))
    with pytest.raises(af.SchemaVersionError) as info:
        SQLiteStore(path)
    message = str(info.value)
    assert str(path) in message and f"schema version {newer}" in message
    assert "Upgrade actorflow" in message
    assert isinstance(info.value, af.StoreError)
    assert _schema_versions(path) == [newer]


async def test_forward_migrations_run_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.db"
    old = SQLiteStore(path)
    record = await old.create_run(raw())
    await old.aclose()
    base = _sqlite_schema.latest_version()
    monkeypatch.setattr(
        _sqlite_schema,
        "MIGRATIONS",
        [*_sqlite_schema.MIGRATIONS, ("CREATE TABLE extra (x INTEGER)",)],
    )
    upgraded = SQLiteStore(path)
    try:
        assert await upgraded.lookup("wf", record.run_id) == record
    finally:
        await upgraded.aclose()
    assert _schema_versions(path) == [base + 1]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM extra").fetchone() == (0,)


def test_other_sqlite_databases_are_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    before = path.read_bytes()
    with pytest.raises(af.StoreError, match="not an actorflow store"):
        SQLiteStore(path)
    assert path.read_bytes() == before  # not even switched to WAL


# -- files that cannot be used ---------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "store.db"
    with pytest.raises(af.StoreError) as info:
        SQLiteStore(path)
    assert str(path) in str(info.value) and "does not exist" in str(info.value)
    assert not path.parent.exists()


def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    junk = b"these are my notes, not a database\n" * 200
    path.write_bytes(junk)
    with pytest.raises(af.StoreError) as info:
        SQLiteStore(path)
    assert str(path) in str(info.value) and "not a SQLite database" in str(info.value)
    assert not isinstance(info.value, sqlite3.Error)
    assert path.read_bytes() == junk


@pytest.mark.parametrize("value", ["OFF", "EXTRA", "fast", 2, None])
def test_invalid_synchronous_is_refused(tmp_path: Path, value: object) -> None:
    with pytest.raises(af.InvalidArgument, match="'NORMAL', 'FULL'"):
        SQLiteStore(tmp_path / "store.db", synchronous=value)  # type: ignore[arg-type]
    assert not (tmp_path / "store.db").exists()


@pytest.mark.parametrize("path", [":memory:", ""])
def test_memory_paths_are_refused(path: str) -> None:
    with pytest.raises(af.InvalidArgument, match="MemoryStore"):
        SQLiteStore(path)


@pytest.mark.parametrize("level", ["NORMAL", "FULL", "full"])
async def test_pragmas(tmp_path: Path, level: str) -> None:
    made = SQLiteStore(tmp_path / "store.db", synchronous=level)
    try:
        assert made.synchronous == level.upper()
        conn = made._db.connection()
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        expected = {"NORMAL": 1, "FULL": 2}[level.upper()]
        assert conn.execute("PRAGMA synchronous").fetchone() == (expected,)
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (0,)
    finally:
        await made.aclose()


@contextmanager
def _unprivileged() -> Iterator[None]:
    """Drop root's effective ids (root ignores file permissions); no-op for other users."""
    if os.geteuid() != 0:
        yield
        return
    nobody = pwd.getpwnam("nobody")
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory outside pytest's private tmp tree, so an unprivileged user can reach it."""
    made = Path(tempfile.mkdtemp(prefix="actorflow-sqlite-"))
    made.chmod(0o777)
    try:
        yield made
    finally:
        made.chmod(0o777)
        shutil.rmtree(made)


@pytest.fixture(params=["checked", "sqlite"])
def permission_check(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each read-only case with the store's own check, and with only SQLite's errors."""
    if request.param == "sqlite":
        monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
    return str(request.param)


async def _make_store_file(path: Path) -> RawRecord:
    made = SQLiteStore(path)
    record = await made.create_run(raw())
    await made.aclose()
    return record


def _make_read_only(directory: Path, path: Path, case: str) -> bytes | None:
    if case == "read-only file":
        path.chmod(0o444)
    else:
        if path.exists():
            path.chmod(0o666)
        directory.chmod(0o555)
    return path.read_bytes() if path.exists() else None


@pytest.mark.parametrize("case", ["read-only file", "read-only directory", "new file"])
async def test_read_only_places_are_refused(
    open_dir: Path, permission_check: str, case: str
) -> None:
    path = open_dir / "store.db"
    if case != "new file":
        await _make_store_file(path)
    before = _make_read_only(open_dir, path, case)
    with _unprivileged(), pytest.raises(af.StoreError) as info:
        SQLiteStore(path)
    message = str(info.value)
    assert str(path) in message
    assert "writable" in message or "read-only" in message
    assert before is None or path.read_bytes() == before


# -- failures while writing ------------------------------------------------------------


@contextmanager
def _write_locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection (as another process would) holding the write lock."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


async def test_locked_database_is_retried_then_reported(
    store: SQLiteStore, autojump_clock: trio.testing.MockClock
) -> None:
    v1 = await store.create_run(raw())
    with _write_locked(store.path):
        assert await store.lookup("wf", v1.run_id) == v1  # WAL: readers are not blocked
        start = trio.current_time()
        with pytest.raises(af.StoreError) as info:
            await store.commit(nxt(v1, status=2))
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.2)
    message = str(info.value)
    assert str(store.path) in message and "locked" in message
    assert store.stats.lock_retries > 5 and store.stats.failed_transactions == 1
    assert await store.history("wf", v1.run_id) == [v1]
    assert [e.version for e in await store.read_events(0)] == [1]
    # The store keeps serving writes once the lock is gone.
    v2 = await store.commit(nxt(v1, status=2))
    other = await store.create_run(raw("f2"))
    assert await store.history("wf", v1.run_id) == [v1, v2]
    assert await store.latest("wf", "f2") == other


async def test_lock_released_while_waiting_lets_the_batch_through(store: SQLiteStore) -> None:
    v1 = await store.create_run(raw())
    with _write_locked(store.path) as other:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.commit, nxt(v1, status=2))
            await trio.sleep(0.05)
            assert store.stats.lock_retries > 0
            other.execute("ROLLBACK")
    assert (await store.lookup("wf", v1.run_id)).version == 2
    assert store.stats.failed_transactions == 0


async def test_aclose_waits_for_the_batch_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    v1 = await store.create_run(raw())
    stored: list[RawRecord] = []

    async def write() -> None:
        stored.append(await store.commit(nxt(v1, status=2)))

    with _write_locked(path) as other:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await trio.sleep(0.02)
            nursery.start_soon(store.aclose)
            await trio.sleep(0.02)
            assert stored == []
            other.execute("ROLLBACK")
    assert stored == [nxt(v1, status=2)]
    async with SQLiteStore(path) as again:
        assert await again.lookup("wf", v1.run_id) == stored[0]


async def test_a_writer_cancelled_before_it_starts_writes_nothing(store: SQLiteStore) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.create_run(raw())
    assert scope.cancelled_caught
    assert await store.list_runs("wf") == []
    assert store.stats.writes == 0


async def test_failed_transaction_fails_its_whole_batch_and_store_recovers(
    store: SQLiteStore,
) -> None:
    records = [await store.create_run(raw(f"f{i}")) for i in range(5)]
    conn = store._db.connection()
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is "full"
    errors: list[BaseException] = []
    big = '{"blob": "' + "x" * 200_000 + '"}'

    async def write(record: RawRecord, obj: str) -> None:
        try:
            await store.commit(nxt(record, object=obj))
        except af.StoreError as exc:
            errors.append(exc)

    with store.feed.subscribe() as sub:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, records[0], big)
            for record in records[1:]:
                nursery.start_soon(write, record, "{}")
        assert len(errors) == 5 and store.stats.failed_transactions == 1
        assert all(str(store.path) in str(e) and "full" in str(e) for e in errors)
        assert len({id(e) for e in errors}) == 5  # one exception object per writer
        for record in records:
            assert await store.history("wf", record.run_id) == [record]
        assert len(await store.read_events(0)) == 5
        with trio.move_on_after(0.01) as scope:
            await sub.receive()
        assert scope.cancelled_caught  # nothing was published

        conn.execute("PRAGMA max_page_count = 1073741823")
        v2 = await store.commit(nxt(records[0], object=big))
        assert await sub.receive() == v2
    assert await store.lookup("wf", records[0].run_id) == v2


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "store.db") as made:
        await made.create_run(raw())
    with pytest.raises(af.StoreError, match="closed"):
        await made.lookup("wf", "x")
    with pytest.raises(af.StoreError, match="closed"):
        await made.create_run(raw())
    await made.aclose()


# -- group commit ----------------------------------------------------------------------


async def test_concurrent_writes_share_transactions(store: SQLiteStore) -> None:
    records = [await store.create_run(raw(f"f{i}")) for i in range(100)]
    assert store.stats.transactions == 100  # one awaited writer at a time: no waiting for others
    async with trio.open_nursery() as nursery:
        for record in records:
            nursery.start_soon(store.commit, nxt(record, status=2))
    assert store.stats.transactions - 100 <= 3
    assert store.stats.largest_batch >= 50
    assert {r.version for r in await store.list_runs("wf", limit=1000)} == {2}
    assert len(await store.read_events(0, 1000)) == 200


async def test_each_write_in_a_batch_succeeds_or_fails_alone(store: SQLiteStore) -> None:
    v1 = await store.create_run(raw("busy"))
    other = await store.create_run(raw("other"))
    before = store.stats.transactions
    outcomes: dict[str, object] = {}

    async def attempt(name: str, write: object) -> None:
        try:
            outcomes[name] = await write  # type: ignore[misc]
        except af.ActorflowError as exc:
            outcomes[name] = type(exc)

    fresh = raw("fresh")
    v2 = nxt(v1, status=2)
    other2 = nxt(other, status=5)
    with store.feed.subscribe(workflow_name="wf") as sub:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, "commit", store.commit(v2))
            nursery.start_soon(attempt, "conflict", store.commit(attrs.evolve(v2, version=7)))
            nursery.start_soon(attempt, "missing", store.commit(nxt(raw())))
            nursery.start_soon(attempt, "in progress", store.create_run(raw("busy")))
            nursery.start_soon(attempt, "create", store.create_run(fresh))
            nursery.start_soon(attempt, "other", store.commit(other2, timers=[]))
            nursery.start_soon(attempt, "cursor", store.set_cursor("c", "1"))
            nursery.start_soon(attempt, "schedule", store.claim_schedule("s", T0))
        published = [await sub.receive() for _ in range(3)]
    assert store.stats.transactions == before + 1
    assert outcomes == {
        "commit": v2,
        "conflict": af.VersionConflict,
        "missing": af.RunNotFound,
        "in progress": af.WorkflowInProgress,
        "create": fresh,
        "other": other2,
        "cursor": None,
        "schedule": True,
    }
    assert sorted(r.run_id for r in published) == sorted([v1.run_id, fresh.run_id, other.run_id])
    assert await store.history("wf", v1.run_id) == [v1, v2]


async def test_a_write_failing_halfway_is_undone_alone(store: SQLiteStore) -> None:
    v1 = await store.create_run(raw())
    before = store.stats.transactions

    def half_then_boom(conn: sqlite3.Connection, _: object) -> None:
        conn.execute("INSERT INTO cursors (name, value) VALUES ('half', 'written')")
        raise RuntimeError("boom")

    outcomes: dict[str, object] = {}

    async def broken() -> None:
        try:
            await store._submit(half_then_boom, None)
        except RuntimeError as exc:
            outcomes["broken"] = str(exc)

    async def good() -> None:
        outcomes["good"] = await store.commit(nxt(v1, status=2))

    async def cursor() -> None:
        await store.set_cursor("whole", "written")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(good)
        nursery.start_soon(broken)
        nursery.start_soon(cursor)
    assert outcomes == {"broken": "boom", "good": nxt(v1, status=2)}
    assert await store.get_cursor("half") is None
    assert await store.get_cursor("whole") == "written"
    assert store.stats.transactions == before + 1


async def test_run_ids_and_foreign_ids_cannot_be_reused_or_moved(store: SQLiteStore) -> None:
    first = await store.create_run(raw())
    with pytest.raises(af.InvalidArgument, match="already exists"):
        await store.create_run(attrs.evolve(raw("f2", workflow="other"), run_id=first.run_id))
    with pytest.raises(af.InvalidArgument, match="cannot move"):
        await store.commit(nxt(first, foreign_id="f3"))
    assert await store.history("wf", first.run_id) == [first]
    assert await store.list_runs("other") == []


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (in real time: the store's lock back-off runs on it) until ``condition()``."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110 (counters of the store, no event to wait on)
            await trio.sleep(0.001)


async def test_cancelled_writers(store: SQLiteStore) -> None:
    """A queued writer that is cancelled is not written; one already in a batch is, and
    its caller gets the result (the cancellation comes at its next checkpoint)."""
    records = [await store.create_run(raw(f"f{i}")) for i in range(4)]
    scopes: dict[str, trio.CancelScope] = {}
    outcome: dict[str, str] = {}

    async def write(name: str, record: RawRecord) -> None:
        with trio.CancelScope() as scope:
            scopes[name] = scope
            await store.commit(nxt(record))
            outcome[name] = "returned"
            await trio.lowlevel.checkpoint()
            outcome[name] = "returned, not cancelled"
        if scope.cancelled_caught and name not in outcome:
            outcome[name] = "cancelled"

    with _write_locked(store.path) as other:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, "a", records[0])
            nursery.start_soon(write, "b", records[1])
            # a and b are one batch, now waiting for the lock
            await _until(lambda: store.stats.lock_retries > 0)
            nursery.start_soon(write, "c", records[2])
            nursery.start_soon(write, "d", records[3])
            await _until(lambda: len(store._group.queue) == 2)  # c and d queued behind that batch
            for name in "abc":
                scopes[name].cancel()
            await _until(lambda: "c" in outcome)
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == {"c": "cancelled"}  # a and b wait for their batch's outcome
            other.execute("ROLLBACK")
    assert outcome == {
        "a": "returned",  # stored: the caller knows, then its next checkpoint is cancelled
        "b": "returned",
        "c": "cancelled",  # never written
        "d": "returned, not cancelled",
    }
    versions = [(await store.lookup("wf", r.run_id)).version for r in records]
    assert versions == [2, 2, 1, 2]


# -- several connections to one file ---------------------------------------------------


async def test_two_stores_on_one_file_stay_consistent(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as one, SQLiteStore(path) as two:
        v1 = await one.create_run(raw())
        with pytest.raises(af.WorkflowInProgress):
            await two.create_run(raw())
        v2 = await two.commit(nxt(v1, status=2))
        with pytest.raises(af.VersionConflict):
            await one.commit(nxt(v1, status=3))
        assert await one.lookup("wf", v1.run_id) == v2
        assert [e.version for e in await one.read_events(0)] == [1, 2]


async def test_data_version_moves_only_for_other_connections_writes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as one, SQLiteStore(path) as two:
        start = await one.data_version()
        v1 = await one.create_run(raw())
        await one.commit(nxt(v1, status=2))
        assert await one.data_version() == start  # its own writes
        await two.set_cursor("c", "1")
        after_other = await one.data_version()
        assert after_other != start
        assert await one.data_version() == after_other  # nothing new since


_ROOT = Path(__file__).resolve().parents[3]
_WRITER = """
import sys
import trio
from actorflow import VersionConflict
from actorflow.stores import SQLiteStore
from tests.stores.test_contract import nxt, raw

async def main(path, name):
    store = SQLiteStore(path, lock_timeout=30)
    shared = await store.lookup("wf", "shared")
    async def run(i):
        record = await store.create_run(raw(f"{name}-{i}"))
        for _ in range(3):
            record = await store.commit(nxt(record, status=2))
    async def contend():
        won = 0
        for _ in range(50):
            current = await store.lookup("wf", shared.run_id)
            try:
                await store.commit(nxt(current, status=2))
                won += 1
            except VersionConflict:
                pass
        print(won)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(contend)
        for i in range(100):
            nursery.start_soon(run, i)
    await store.aclose()

trio.run(main, sys.argv[1], sys.argv[2])
"""


@pytest.mark.slow
async def test_two_processes_write_one_file_safely(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as store:
        shared = await store.create_run(attrs.evolve(raw("shared"), run_id="shared"))
    results: list[int] = []
    async with trio.open_nursery() as nursery:
        for name in ("p1", "p2"):

            async def writer(name: str = name) -> None:
                done = await trio.run_process(
                    [sys.executable, "-c", _WRITER, str(path), name],
                    cwd=_ROOT,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                assert done.returncode == 0, done.stderr.decode()
                results.append(int(done.stdout))

            nursery.start_soon(writer)
    async with SQLiteStore(path) as store:
        runs = await store.list_runs("wf", limit=1000)
        assert len(runs) == 201
        assert {r.version for r in runs if r.run_id != shared.run_id} == {4}
        history = await store.history("wf", shared.run_id)
        assert [h.version for h in history] == list(range(1, sum(results) + 2))
        events = await store.read_events(0, 10_000)
        assert len(events) == 200 * 4 + len(history)
        assert [e.id for e in events] == sorted({e.id for e in events})


# -- delete_data leaves no copy in the files -------------------------------------------


class Steps(enum.IntEnum):
    ONE = 1
    TWO = 2
    THREE = 3
    DONE = 4


@attrs.define
class Secret:
    text: str = ""
    count: int = 0


def _secret_workflow(store: af.Store) -> af.Workflow[Secret, Steps]:
    builder = af.Builder("secrets", Secret, Steps)

    async def advance(run: af.Run[Secret, Steps]) -> Steps:
        run.object.count += 1
        return Steps(run.status + 1)

    for status in (Steps.ONE, Steps.TWO, Steps.THREE):
        builder.add_step(status, advance, to=Steps(status + 1))
    return builder.build(store)


def _copies(path: Path, marker: str) -> int:
    """How often ``marker`` appears in the database file and its WAL, byte for byte."""
    found = 0
    for file in (path, path.with_name(path.name + "-wal")):
        if file.exists():
            found += file.read_bytes().count(marker.encode())
    return found


async def test_delete_data_leaves_no_copy_in_the_database_file_or_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    workflow = _secret_workflow(store)
    secret, kept = f"SECRET-{uuid.uuid4().hex}", f"KEPT-{uuid.uuid4().hex}"
    try:
        async with af.open_workflow(workflow):
            deleted = await workflow.trigger("a", initial=Secret(secret * 200))
            other = await workflow.trigger("b", initial=Secret(kept * 200))
            for run_id in (deleted, other):
                await workflow.await_status("a" if run_id == deleted else "b", run_id, Steps.DONE)
            assert _copies(path, secret) >= 4  # one per version, at least
            record = await workflow.delete_data(deleted, "erasure request")
            assert record.run_state is af.RunState.DATA_DELETED
            assert record.object == Secret()
            # Right after delete_data returns, with the store still open.
            assert _copies(path, secret) == 0
            assert _copies(path, kept) >= 1  # the check does see what is there
    finally:
        await store.aclose()
    assert _copies(path, secret) == 0


async def test_delete_data_waits_for_a_reader_of_an_old_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(path, lock_timeout=0.2)
    workflow = _secret_workflow(store)
    secret = f"SECRET-{uuid.uuid4().hex}"
    try:
        run_id = await workflow.trigger("a", initial=Secret(secret))
        await workflow.cancel(run_id, "no")
        with closing(sqlite3.connect(path, isolation_level=None)) as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM history").fetchone()  # holds its snapshot
            with pytest.raises(af.StoreError, match="could not be truncated"):
                await workflow.delete_data(run_id, "erasure request")
            reader.execute("COMMIT")
        # The run is scrubbed in the database; asking again also empties the WAL.
        assert (await workflow.lookup(run_id)).run_state is af.RunState.DATA_DELETED
        await workflow.delete_data(run_id, "erasure request, again")
        assert _copies(path, secret) == 0
    finally:
        await store.aclose()


async def test_checkpoints_run_in_a_thread_and_keep_the_wal_small(store: SQLiteStore) -> None:
    """The writer's COMMIT does not checkpoint (SQLite's auto-checkpoint would, inline, every
    1,000 pages); the checkpointer thread does, so the WAL stays small while far more than
    its size is written."""
    wal = trio.Path(f"{store.path}-wal")
    record = await store.create_run(raw())
    payload = '"' + "x" * 4000 + '"'  # about a page per version, twice (runs + history)
    written = 0
    largest_wal = 0
    for _ in range(30):
        for _ in range(60):
            record = await store.commit(nxt(record, object=payload))
            written += 2 * len(payload)
        largest_wal = max(largest_wal, (await wal.stat()).st_size)
        checkpointer = store._db.checkpointer
        assert checkpointer is not None
        target = checkpointer.checkpoints + 1
        assert await trio.to_thread.run_sync(checkpointer.wait_for, target, 60.0)
    assert store.stats.transactions >= 1800
    # Without the thread, nothing below the bound of 16,384 pages (64 MiB) would
    # checkpoint, and the WAL would hold everything written (more than 14 MB here).
    assert written > 14_000_000
    assert largest_wal < written * 0.7


async def test_the_checkpointer_ends_with_the_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c.db")
    await store.create_run(raw())
    checkpointer = store._db.checkpointer
    assert checkpointer is not None and checkpointer.thread.is_alive()
    await store.aclose()
    await trio.to_thread.run_sync(checkpointer.thread.join, 10.0)
    assert not checkpointer.thread.is_alive()


async def test_reads_in_a_thread_hold_virtual_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """count_runs (a read in a worker thread) and closing the file (a checkpoint in a
    thread) keep the autojump clock still: a test's pending deadline is not jumped to while
    the thread works (it was: a workflow with metrics stopped 60 virtual seconds late)."""
    store = SQLiteStore(tmp_path / "held.db")
    for i in range(50):
        await store.create_run(raw(f"f{i}"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 3600)  # a deadline the clock could jump to
        start = trio.current_time()
        for _ in range(20):
            await store.count_runs("wf")
        await store.aclose()
        assert trio.current_time() == start
        nursery.cancel_scope.cancel()
