"""PostgresStore beyond the contract: schema versions, errors, races between processes.

Two PostgresStore instances on one schema stand in for two processes: they share
nothing but the database.
"""

from __future__ import annotations

import enum
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import actorflow as af
from actorflow._model.record import RawRecord, Timer
from actorflow.stores import PostgresStore
from actorflow.stores.filters import RunFilter
from tests.stores.test_contract import T0, nxt, raw

DSN = os.environ.get("ACTORFLOW_PG_DSN", "")
if not DSN:
    pytest.skip("ACTORFLOW_PG_DSN not set: PostgreSQL store tests skipped", allow_module_level=True)

import psycopg  # noqa: E402

from actorflow.stores.postgres import schema as _postgres_schema  # noqa: E402
from actorflow.stores.postgres.connection import PgConnection, Transient  # noqa: E402

pytestmark = pytest.mark.postgres

MakeStore = Callable[..., PostgresStore]


def _sql(query: str, params: Any = None, *, dsn: str = DSN) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(query.encode(), params)
        return cursor.fetchall() if cursor.description else []


async def sql(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    return await trio.to_thread.run_sync(lambda: _sql(query, params))


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"af_test_{uuid.uuid4().hex[:16]}"
    yield name
    _sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
async def make_store(schema: str) -> AsyncIterator[MakeStore]:
    """Stores on the test's schema (or another one), closed at the end of the test."""
    made: list[PostgresStore] = []

    def make(**kwargs: Any) -> PostgresStore:
        kwargs.setdefault("schema", schema)
        store = PostgresStore(kwargs.pop("dsn", DSN), **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- schema versions ---------------------------------------------------------------------


async def test_first_use_creates_schema_at_latest_version(
    make_store: MakeStore, schema: str
) -> None:
    store = make_store()
    assert await sql("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]) == []
    await store.create_run(raw())  # construction did no I/O; first use migrates
    versions = await sql(f'SELECT version FROM "{schema}".schema_version ORDER BY version')
    assert [v for (v,) in versions] == [m.version for m in _postgres_schema.MIGRATIONS]
    again = make_store()  # a second opener finds it up to date and changes nothing
    assert len(await again.list_runs("wf")) == 1
    assert await sql(f'SELECT version FROM "{schema}".schema_version') == versions


async def test_forward_migration_applied_at_open(
    make_store: MakeStore, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = make_store()
    kept = await old.create_run(raw())
    latest = _postgres_schema.latest_version()
    extra = _postgres_schema.Migration(
        latest + 1, "test: a new column", ("ALTER TABLE {s}.runs ADD COLUMN note text",)
    )
    monkeypatch.setattr(_postgres_schema, "MIGRATIONS", [*_postgres_schema.MIGRATIONS, extra])
    new = make_store()
    assert await new.lookup("wf", kept.run_id) == kept
    versions = await sql(f'SELECT max(version) FROM "{schema}".schema_version')
    assert versions == [(latest + 1,)]
    columns = await sql(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'runs' AND column_name = 'note'",
        [schema],
    )
    assert columns == [("note",)]


async def test_newer_schema_version_is_refused(make_store: MakeStore, schema: str) -> None:
    await make_store().create_run(raw())
    newer = _postgres_schema.latest_version() + 1
    await sql(
        f"INSERT INTO \"{schema}\".schema_version (version, description) VALUES (%s, 'future')",
        [newer],
    )
    store = make_store()
    with pytest.raises(af.SchemaVersionError, match=f"version {newer}.*newer actorflow"):
        await store.lookup("wf", "x")
    with pytest.raises(af.SchemaVersionError):  # and again: the store did not half-open
        await store.list_runs("wf")


async def test_invalid_schema_name_is_refused_at_construction() -> None:
    with pytest.raises(af.InvalidArgument):
        PostgresStore(DSN, schema="x" * 64)


# -- errors ------------------------------------------------------------------------------


async def test_unreachable_server_raises_clear_store_error(make_store: MakeStore) -> None:
    port = _free_port()
    secret = "s3cr3t-pw"
    store = make_store(dsn=f"postgresql://someone:{secret}@127.0.0.1:{port}/nodb")
    assert secret not in repr(store)
    with pytest.raises(af.StoreError) as info:
        await store.lookup("wf", "x")
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "cannot connect" in message and "refused" in message.lower()
    assert secret not in message
    assert secret not in str(info.value.__context__)


async def test_wrong_database_and_bad_dsn(make_store: MakeStore) -> None:
    info = psycopg.conninfo.conninfo_to_dict(DSN)
    info["dbname"] = "no_such_db_" + uuid.uuid4().hex[:8]
    store = make_store(dsn=psycopg.conninfo.make_conninfo("", **info))
    with pytest.raises(af.StoreError, match=str(info["dbname"])):
        await store.latest("wf", "f")
    with pytest.raises(af.StoreError, match="invalid PostgreSQL DSN") as bad:
        PostgresStore("host=x password=hunter22 nonsense")
    assert "hunter22" not in str(bad.value)


async def test_missing_psycopg_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "psycopg_pool", None)
    with pytest.raises(af.StoreError, match=r"pip install actorflow\[postgres\]"):
        PostgresStore(DSN)


# -- lost connections and lost answers ---------------------------------------------------


async def test_calls_survive_killed_connections(make_store: MakeStore) -> None:
    app = f"af_test_{uuid.uuid4().hex[:12]}"
    store = make_store(dsn=f"{DSN}?application_name={app}", pool_size=3)
    v1 = await store.create_run(raw())
    killed = await sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        [app],
    )
    assert killed and all(ok for (ok,) in killed)
    assert await store.lookup("wf", v1.run_id) == v1  # read retried on a new connection
    await sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        [app],
    )
    v2 = await store.commit(nxt(v1, status=2))  # write known not to have happened: retried
    assert await store.history("wf", v1.run_id) == [v1, v2]


async def test_write_whose_answer_was_lost_is_recognised_not_repeated(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store()
    await store.list_runs("wf")  # open the pool first
    real = PgConnection._attempt
    lost = {"n": 0}

    def attempt_and_lose_answer(self: PgConnection, pool: Any, fn: Any, timeout: float) -> Any:
        result = real(self, pool, fn, timeout)  # the write commits...
        if lost["n"] < 1:
            lost["n"] += 1  # ...but the answer is lost with the connection
            raise Transient(psycopg.OperationalError("simulated"), sent=True)
        return result

    monkeypatch.setattr(PgConnection, "_attempt", attempt_and_lose_answer)
    with store.feed.subscribe(workflow_name="wf") as sub:
        v1 = await store.create_run(raw())
        lost["n"] = 0
        v2 = await store.commit(nxt(v1, status=2))
        lost["n"] = 0
        assert await store.claim_schedule("s", T0)
        assert await sub.receive() == v1
        assert await sub.receive() == v2
    assert await store.history("wf", v1.run_id) == [v1, v2]
    assert await store.last_schedule("s") == T0
    assert not await store.claim_schedule("s", T0)


async def test_unreachable_for_too_long_raises_and_says_the_outcome_is_unknown(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(retry_timeout=0.3)
    v1 = await store.create_run(raw())

    def always_lost(self: PgConnection, pool: Any, fn: Any, timeout: float) -> Any:
        raise Transient(psycopg.OperationalError("server went away"), sent=True)

    monkeypatch.setattr(PgConnection, "_attempt", always_lost)
    with store.feed.subscribe(workflow_name="wf") as sub:
        with pytest.raises(af.StoreError, match="may or may not have been stored"):
            await store.commit(nxt(v1, status=2))
        with pytest.raises(af.StoreError, match="server went away") as info:
            await store.lookup("wf", v1.run_id)
        assert "may or may not" not in str(info.value)
        with trio.move_on_after(0.05):
            await sub.receive()
            pytest.fail("an unconfirmed write was published")


# -- group commit --------------------------------------------------------------------------


async def test_concurrent_writes_share_transactions_and_are_answered_each_on_their_own(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(pool_size=4)
    runs = [await store.create_run(raw(f"f{i}")) for i in range(20)]
    calls: list[object] = []
    real = PgConnection._attempt

    def counting(self: PostgresStore, pool: Any, fn: Any, timeout: float) -> Any:
        calls.append(fn)  # one transaction (or one single statement) in a worker thread
        return real(self, pool, fn, timeout)

    monkeypatch.setattr(PgConnection, "_attempt", counting)
    outcomes: dict[int, str] = {}

    async def commit(i: int) -> None:
        # Every third write is stale (its base is not the stored version): it alone fails.
        base = nxt(runs[i], status=2) if i % 3 == 0 else runs[i]
        try:
            await store.commit(nxt(base, status=3))
            outcomes[i] = "ok"
        except af.VersionConflict:
            outcomes[i] = "conflict"

    before = store.feed.published
    with store.feed.subscribe(workflow_name="wf") as sub:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(commit, i)
        with trio.fail_after(5):
            published = [await sub.receive() for _ in range(store.feed.published - before)]
    assert outcomes == {i: "conflict" if i % 3 == 0 else "ok" for i in range(20)}
    assert len(calls) < 10, calls  # far fewer transactions than writes
    assert sorted(r.foreign_id for r in published) == sorted(
        f"f{i}" for i in range(20) if i % 3 != 0
    )
    for i in range(20):
        history = await store.history("wf", runs[i].run_id)
        assert [h.version for h in history] == ([1] if i % 3 == 0 else [1, 2])


async def test_a_batch_the_server_refuses_is_run_again_write_by_write(
    make_store: MakeStore,
) -> None:
    store = make_store(pool_size=2)
    taken = await store.create_run(raw("taken"))
    results: dict[str, object] = {}

    async def create(record: RawRecord) -> None:
        try:
            results[record.foreign_id] = await store.create_run(record)
        except af.ActorflowError as exc:
            results[record.foreign_id] = exc

    # The duplicate run id fails inside the shared transaction (a unique violation aborts
    # all of it): the others are stored one by one, and only the duplicate fails.
    duplicate = attrs.evolve(raw("other"), run_id=taken.run_id)
    async with trio.open_nursery() as nursery:
        for record in [raw("a"), duplicate, raw("b"), raw("c")]:
            nursery.start_soon(create, record)
    assert isinstance(results["other"], af.InvalidArgument)
    assert "already exists" in str(results["other"])
    for foreign_id in "abc":
        stored = results[foreign_id]
        assert isinstance(stored, RawRecord)
        assert await store.lookup("wf", stored.run_id) == stored


async def test_a_write_the_server_refuses_for_good_fails_alone_and_at_once(
    make_store: MakeStore,
) -> None:
    # An index row too large is filed by psycopg as an OperationalError, yet retrying
    # cannot cure it: only that write fails, without retrying for retry_timeout.
    store = make_store(pool_size=2, retry_timeout=30)
    results: dict[str, object] = {}

    async def create(record: RawRecord) -> None:
        try:
            results[record.foreign_id[:5]] = await store.create_run(record)
        except af.ActorflowError as exc:
            results[record.foreign_id[:5]] = exc

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for record in [raw("a"), raw("huge-" + os.urandom(6_000).hex()), raw("b"), raw("c")]:
            nursery.start_soon(create, record)
    assert trio.current_time() - started < 10
    assert isinstance(results["huge-"], af.StoreError)
    assert "refused" in str(results["huge-"])
    assert "may or may not" not in str(results["huge-"])
    for foreign_id in "abc":
        assert isinstance(results[foreign_id], RawRecord)


async def test_a_writer_cancelled_while_its_batch_is_in_flight_gets_its_outcome(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    store = make_store(pool_size=2)
    runs = [await store.create_run(raw(f"f{i}")) for i in range(2)]
    in_flight, release = threading.Event(), threading.Event()
    real = PgConnection._attempt

    def held(self: PostgresStore, pool: Any, fn: Any, timeout: float) -> Any:
        in_flight.set()
        release.wait(10)
        return real(self, pool, fn, timeout)

    monkeypatch.setattr(PgConnection, "_attempt", held)
    outcome: dict[int, str] = {}
    scopes: dict[int, trio.CancelScope] = {}

    async def commit(i: int) -> None:
        with trio.CancelScope() as scope:
            scopes[i] = scope
            stored = await store.commit(nxt(runs[i], status=2))
            outcome[i] = f"stored v{stored.version}"
            await trio.lowlevel.checkpoint()  # the cancellation comes here
            outcome[i] += ", not cancelled"

    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(commit, i)
        await trio.to_thread.run_sync(in_flight.wait, 10)
        for scope in scopes.values():
            scope.cancel()
        await trio.sleep(0.05)
        assert outcome == {}  # both wait for their batch, which is still in the thread
        release.set()
    assert outcome == {0: "stored v2", 1: "stored v2"}
    for run in runs:
        assert (await store.lookup("wf", run.run_id)).version == 2


# -- races between processes -------------------------------------------------------------


async def test_create_run_race_across_processes_one_wins(make_store: MakeStore) -> None:
    stores = [make_store(pool_size=6), make_store(pool_size=6)]
    for round_ in range(8):
        outcomes: list[RawRecord | str] = []

        async def attempt(store: PostgresStore, outcomes: list[RawRecord | str]) -> None:
            try:
                outcomes.append(await store.create_run(raw("contested")))
            except af.WorkflowInProgress:
                outcomes.append("in progress")

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(attempt, stores[i % 2], outcomes)
        winners = [o for o in outcomes if isinstance(o, RawRecord)]
        assert len(winners) == 1, outcomes
        assert outcomes.count("in progress") == 11
        runs = await stores[0].list_runs("wf", RunFilter.make(foreign_id="contested"), limit=100)
        assert len(runs) == round_ + 1
        assert (await stores[1].latest("wf", "contested")).run_id == winners[0].run_id
        done = await stores[round_ % 2].commit(nxt(winners[0], run_state=af.RunState.CANCELLED))
        assert done.run_state.finished


async def test_concurrent_commits_across_processes_one_version_wins(
    make_store: MakeStore,
) -> None:
    a, b = make_store(pool_size=5), make_store(pool_size=5)
    v1 = await a.create_run(raw())
    for version in range(2, 6):
        results: list[str] = []

        async def attempt(
            store: PostgresStore, status: int, base: RawRecord, results: list[str]
        ) -> None:
            try:
                await store.commit(nxt(base, status=status))
                results.append("ok")
            except af.VersionConflict:
                results.append("conflict")

        async with trio.open_nursery() as nursery:
            for status in range(10):
                nursery.start_soon(attempt, (a, b)[status % 2], status, v1, results)
        assert sorted(results) == ["conflict"] * 9 + ["ok"]
        v1 = await b.lookup("wf", v1.run_id)
        assert v1.version == version
    assert [h.version for h in await a.history("wf", v1.run_id)] == [1, 2, 3, 4, 5]


async def _wait_until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    with trio.move_on_after(10):
        while True:
            if await predicate():
                return
            await trio.sleep(0.01)  # the database has no event to wait on
    pytest.fail(f"timed out waiting until {what}")


async def test_read_events_waits_for_a_write_in_flight_instead_of_skipping_it(
    make_store: MakeStore, schema: str
) -> None:
    writer_a, writer_b, reader = make_store(), make_store(), make_store()
    r1 = await writer_a.create_run(raw("one"))
    r2 = await writer_b.create_run(raw("two"))
    start = await reader.last_event_id()
    # Hold history key (r1, v2) in an open transaction: writer A's commit of r1 v2 then
    # draws its event id and blocks before committing, like a slow writer.
    blocker = await trio.to_thread.run_sync(lambda: psycopg.connect(DSN))
    try:
        await trio.to_thread.run_sync(
            lambda: blocker.execute(
                f'INSERT INTO "{schema}".history (run_id, version, workflow_name, foreign_id, '
                "status, run_state, object, created_at, updated_at, meta, writer) "
                "VALUES (%s, 2, 'wf', 'one', 1, 1, '{}', now(), now(), '{}', gen_random_uuid())",
                [r1.run_id],
            )
        )
        results: dict[str, Any] = {}

        async def commit_a() -> None:
            results["a"] = await writer_a.commit(nxt(r1, status=2))

        async def read() -> None:
            results["events"] = await reader.read_events(start, 100)

        async def waiting_on_locks() -> int:
            rows = await sql(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE NOT l.granted AND a.datname = current_database()"
            )
            return int(rows[0][0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit_a)
            try:
                await _wait_until(lambda: _ge(waiting_on_locks, 1), "writer A blocks")
                b2 = await writer_b.commit(nxt(r2, status=2))  # a later id, committed first
                nursery.start_soon(read)
                await _wait_until(
                    lambda: _ge(waiting_on_locks, 2) if "events" not in results else _true(),
                    "the reader waits or returns",
                )
                assert "events" not in results, "the reader did not wait for writer A"
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(blocker.rollback)
    finally:
        await trio.to_thread.run_sync(blocker.close)
    events = results["events"]
    assert [(e.run_id, e.version) for e in events] == [(r1.run_id, 2), (b2.run_id, 2)]
    assert events[0].id < events[1].id
    assert results["a"].version == 2


async def _true() -> bool:
    await trio.lowlevel.checkpoint()
    return True


async def _ge(count: Callable[[], Awaitable[int]], n: int) -> bool:
    return await count() >= n


async def test_read_events_never_skips_under_concurrent_writers(
    make_store: MakeStore, schema: str
) -> None:
    writers = [make_store(pool_size=8), make_store(pool_size=8)]
    reader = make_store(pool_size=2)
    seen: list[int] = []
    done = trio.Event()

    async def consume() -> None:
        after = 0
        while True:
            finished = done.is_set()
            events = await reader.read_events(after, 37)
            for event in events:
                seen.append(event.id)
                after = event.id
            if finished and not events:
                return

    async def write(i: int) -> None:
        store = writers[i % 2]
        record = await store.create_run(raw(f"f{i}"))
        for _ in range(6):
            record = await store.commit(nxt(record, status=record.status + 1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        async with trio.open_nursery() as writing:
            for i in range(48):
                writing.start_soon(write, i)
        done.set()
    stored = [i for (i,) in await sql(f'SELECT id FROM "{schema}".history ORDER BY id')]
    assert len(stored) == 48 * 7
    assert seen == stored


async def test_timers_and_schedules_shared_between_processes(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    v1 = raw()
    timer = Timer("wf", v1.run_id, 1, "timeout:0", T0 + timedelta(hours=1))
    await a.create_run(v1, [timer])
    assert await b.list_timers("wf") == [timer]
    claims = []

    async def claim(store: PostgresStore) -> None:
        claims.append(await store.claim_schedule("cron", T0))

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(claim, (a, b)[i % 2])
    assert sorted(claims) == [False] * 9 + [True]
    await a.set_cursor("c", "7")
    assert await b.get_cursor("c") == "7"
    assert await b.lookup("wf", v1.run_id) == v1


async def test_async_with_opens_at_once_and_closes(schema: str) -> None:
    async with PostgresStore(DSN, schema=schema) as store:
        assert await sql("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]) == [(1,)]
        await store.create_run(raw())
    with pytest.raises(af.StoreError, match="closed"):
        await store.list_runs("wf")
    with pytest.raises(af.StoreError, match="cannot connect"):
        async with PostgresStore(f"postgresql://x@127.0.0.1:{_free_port()}/db"):
            pass  # pragma: no cover


async def test_naive_datetimes_are_refused(make_store: MakeStore) -> None:
    store = make_store()
    naive = T0.replace(tzinfo=None)
    with pytest.raises(af.InvalidArgument, match="timezone-aware"):
        await store.create_run(attrs.evolve(raw(), created_at=naive))
    with pytest.raises(af.InvalidArgument, match="timezone-aware"):
        await store.claim_schedule("s", naive)
    assert await store.list_runs("wf") == []


# -- delete_data and the bytes left in the files --------------------------------------


class Stage(enum.IntEnum):
    WAITING = 1
    DONE = 2


@attrs.define
class Private:
    text: str = ""


async def _copies_on_disk(schema: str, marker: str) -> int:
    """How often ``marker`` appears in the files of the runs and history tables (and their
    TOAST tables), byte for byte, after a checkpoint wrote every page out."""
    await sql("CHECKPOINT")
    paths = await sql(
        "SELECT pg_relation_filepath(c.oid) FROM pg_class c "
        "WHERE c.oid IN (%(runs)s::regclass, %(history)s::regclass) "
        "OR c.oid IN (SELECT reltoastrelid FROM pg_class "
        "WHERE oid IN (%(runs)s::regclass, %(history)s::regclass))",
        {"runs": f'"{schema}".runs', "history": f'"{schema}".history'},
    )
    assert len(paths) == 4
    found = 0
    for (path,) in paths:
        (content,) = (await sql("SELECT pg_read_binary_file(%s)", [path]))[0]
        found += bytes(content).count(marker.encode())
    return found


async def test_vacuum_removes_what_delete_data_scrubbed_from_the_table_files(
    make_store: MakeStore, schema: str
) -> None:
    store = make_store()
    builder = af.Builder("private", Private, Stage)

    async def done(run: af.Run[Private, Stage], payload: bytes) -> Stage:
        return Stage.DONE

    builder.add_callback(Stage.WAITING, done, to=Stage.DONE)
    workflow = builder.build(store)
    secret, kept = f"SECRET-{uuid.uuid4().hex}", f"KEPT-{uuid.uuid4().hex}"
    run_id = await workflow.trigger("a", initial=Private(secret))
    await workflow.trigger("b", initial=Private(kept))
    await workflow.cancel(run_id, "no")
    await workflow.delete_data(run_id, "erasure request")
    assert all(r.object == Private() for r in await workflow.history(run_id))
    # PostgreSQL's guarantee: the old row versions stay in the files as dead tuples.
    assert await _copies_on_disk(schema, secret) > 0
    await store.vacuum()
    assert await _copies_on_disk(schema, secret) == 0
    assert await _copies_on_disk(schema, kept) > 0  # the check does see what is there
    assert (await workflow.lookup(run_id)).run_state is af.RunState.DATA_DELETED


# -- routing notifications and the workers' tails ------------------------------------------


def test_a_routing_notification_wakes_only_the_process_that_wants_its_run() -> None:
    from actorflow.stores.postgres.listen import (
        MAX_PAYLOAD,
        FollowedFeed,
        Notifications,
        routing_payload,
    )

    wanted = {("wf", "mine:1")}
    n = Notifications(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        FollowedFeed(),
        "chan",
        "me",
        lambda workflow, run: (workflow, run) in wanted,
    )
    n.received(routing_payload("other", "wf", "theirs"))
    assert (n.routing.mark(), n.feed.mark()) == (0, 1)  # the feed still hears of it
    n.received(routing_payload("other", "wf", "mine:1"))
    assert n.routing.mark() == 1
    n.received(routing_payload("other", "w:f", "mine:1"))  # another workflow, same run id
    assert n.routing.mark() == 1
    n.received(routing_payload("me", "wf", "mine:1"))  # our own write
    assert (n.routing.mark(), n.feed.mark()) == (1, 3)
    # A notification naming no run (an older writer, or a name too long) wakes everybody.
    n.received("other:r")
    assert n.routing.mark() == 2
    assert routing_payload("other", "wf", "x" * MAX_PAYLOAD) == "other:r"
    n.received("other:f")
    assert (n.routing.mark(), n.feed.mark()) == (2, 5)


async def test_owned_events_are_other_processes_rows_of_the_shards_held(
    make_store: MakeStore,
) -> None:
    from actorflow.stores.postgres.shards import shard_of

    worker, client = make_store(), make_store()
    from_client = [await client.create_run(raw(f"c{i}")) for i in range(16)]
    own = await worker.create_run(raw("w"))
    # A row from before shard keys (an older writer) is read by every worker.
    legacy = await client.create_run(raw("legacy"))
    await sql(
        f'UPDATE "{worker.schema}".history SET shard_key = NULL WHERE run_id = %s',
        [legacy.run_id],
    )
    held = [0, 2]
    events, position = await worker.log.owned_events("wf", 4, held, 0, 100)
    expected = [r.run_id for r in from_client if shard_of(r.run_id, 4) in held]
    assert [e.run_id for e in events] == [*expected, legacy.run_id]
    assert own.run_id not in {e.run_id for e in events}
    assert position == await worker.last_event_id()  # past the rows left out
    # A page: the position is the last row returned, so nothing is skipped.
    first, after = await worker.log.owned_events("wf", 4, held, 0, 1)
    assert [e.run_id for e in first] == expected[:1] and after == first[0].id
    assert await worker.log.owned_events("wf", 4, held, position, 100) == ([], position)


class Hand(enum.IntEnum):
    NEW = 1
    DONE = 2


@attrs.define
class Handed:
    n: int = 0


async def test_a_worker_waiting_for_its_leases_holds_virtual_time(
    make_store: MakeStore, autojump_clock: trio.testing.MockClock
) -> None:
    """A worker that starts while another one's leases are still blocked (it just stopped)
    waits real seconds for its shards; under the autojump clock virtual time stands still
    meanwhile, so a test's virtual deadline does not run out before the workflow can act
    (it did: await_status(timeout=60) failed at once on a restarted workflow)."""
    from actorflow.testing import trio_clock

    def build(store: PostgresStore) -> af.Workflow[Handed, Hand]:
        builder = af.Builder("handover", Handed, Hand)

        @builder.step(Hand.NEW, to=Hand.DONE)
        async def done(run: af.Run[Handed, Hand]) -> Hand:
            return Hand.DONE

        return builder.build(store, clock=trio_clock(datetime(2026, 1, 1, tzinfo=UTC)))

    first = build(make_store())
    async with af.open_workflow(first):
        run_id = await first.trigger("a")
        await first.await_status("a", run_id, Hand.DONE, timeout=60)
    second = build(make_store())
    async with af.open_workflow(second):
        start = trio.current_time()
        run_id = await second.trigger("b")
        await second.await_status("b", run_id, Hand.DONE, timeout=60)
        assert trio.current_time() - start < 1
