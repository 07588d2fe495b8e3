"""PostgresStore: the scale-out store, shared by processes on several machines.

psycopg 3's sync API runs in trio worker threads (``trio.to_thread.run_sync`` with a
:class:`trio.CapacityLimiter` as large as the connection pool, so no thread ever waits
for a connection while holding a worker slot another call could use). psycopg's async
API is asyncio-only, and one thread hop (~0.1 ms) is small next to a commit.

Every write is a single SQL statement (data-modifying CTEs), atomic by itself; triggers
and commits of many actors are sent together, in one transaction and one thread hop
(group commit, ``_postgres_batch.py``). Every write carries a
random ``writer`` token stored with it; when a connection dies before the answer arrives,
the write is retried, and the retry recognises its own earlier commit by that token. So a
write is reported done only once it is known to be committed, and never applied twice.

The event-log ordering problem and how it is solved is described in :meth:`read_events`.
Scale-out (shard leases, failover, the leader) is in ``_shards.py``; LISTEN/NOTIFY and the
cross-process change feed in ``_postgres_listen.py``. psycopg is imported lazily:
importing actorflow does not need it.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, final

import trio

from actorflow._model.errors import (
    ActorflowError,
    InvalidArgument,
    StoreError,
    VersionConflict,
)
from actorflow._model.record import Event, Meta, RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow.stores.feed import ChangeFeed
from actorflow.stores.filters import ANY_RUN, RunFilter, check_limit
from actorflow.stores.messages import in_progress, no_foreign_run, no_run
from actorflow.stores.postgres.batch import GroupCommit, Write
from actorflow.stores.postgres.connection import PgConnection
from actorflow.stores.postgres.listen import ChangeSignal, FollowedFeed, Notifications
from actorflow.stores.postgres.schema import Queries, lock_key, quote_schema
from actorflow.stores.postgres.shards import ShardOwnership

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg.rows import TupleRow
    from psycopg_pool import ConnectionPool

    _Conn = Connection[TupleRow]
    _Pool = ConnectionPool[_Conn]

R = TypeVar("R")

_CREATE_RUN_ATTEMPTS = 5
_CREATE_MANY_IN_FLIGHT = 1000
_FINISHED = [int(s) for s in RunState if s.finished]

_TOKENS = random.Random()
os.register_at_fork(after_in_child=_TOKENS.seed)  # a forked child must not repeat the parent


def _writer_token() -> uuid.UUID:
    """A fresh token identifying one logical write (kept across its retries).

    Not ``uuid.uuid4()``: ``os.urandom`` releases the GIL, and while the pool's threads
    run, getting it back costs the trio thread ~0.3 ms per write (measured: a quarter of
    a worker's time). Tokens must be unique, not secret: a PRNG seeded from urandom is.
    """
    return uuid.UUID(int=_TOKENS.getrandbits(128), version=4)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidArgument(f"datetimes must be timezone-aware (UTC), not {moment!r}")
    return moment


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _record(row: Sequence[Any]) -> RawRecord:
    return RawRecord(
        workflow_name=row[0],
        foreign_id=row[1],
        run_id=row[2],
        status=row[3],
        run_state=RunState(row[4]),
        object=row[5],
        version=row[6],
        created_at=_utc(row[7]),
        updated_at=_utc(row[8]),
        meta=Meta.from_dict(row[9]),
    )


def _timer(row: Sequence[Any]) -> Timer:
    return Timer(row[0], row[1], row[2], row[3], _utc(row[4]))


def _timer_params(timers: Sequence[Timer]) -> dict[str, Any]:
    return {
        "t_workflow": [t.workflow_name for t in timers],
        "t_run": [t.run_id for t in timers],
        "t_status": [int(t.status) for t in timers],
        "t_kind": [t.kind for t in timers],
        "t_fire": [_aware(t.fire_at) for t in timers],
    }


@final
class PostgresStore:
    """A store in a PostgreSQL database, shared by any number of processes.

    Args:
        dsn: a libpq connection string or URI (``postgresql://user@host:5432/db``).
        schema: the PostgreSQL schema holding the tables; created and migrated on first use.
        pool_size: the most connections (and worker threads) this store uses at once.
        connect_timeout: seconds to wait for a new connection.
        retry_timeout: seconds to keep retrying a call after the connection was lost.
        drop_schema_on_close: drop the whole schema in :meth:`aclose` (for tests).

    Construction does no I/O; the pool is opened and the schema migrated on first use.
    """

    shared = True

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "actorflow",
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        retry_timeout: float = 10.0,
        drop_schema_on_close: bool = False,
    ) -> None:
        if not isinstance(pool_size, int) or pool_size < 1:
            raise InvalidArgument(f"pool_size must be a positive int, not {pool_size!r}")
        quote_schema(schema)
        self._db = PgConnection(
            dsn,
            schema=schema,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            retry_timeout=retry_timeout,
        )
        self._schema = schema
        self._drop_schema_on_close = drop_schema_on_close
        self._q = Queries(schema)
        self._log_key = lock_key("actorflow.event-log", schema)
        self._feed = FollowedFeed()
        self._origin = _writer_token()
        channel = lock_key("actorflow.notify", schema) & 0xFFFF_FFFF_FFFF_FFFF
        self.notifications = Notifications(
            self._db, self, self._feed, f"actorflow_{channel:016x}", self._origin.hex
        )
        """LISTEN/NOTIFY (see ``_postgres_listen``); served while a workflow runs here."""
        self._ownerships: dict[str, list[ShardOwnership]] = {}
        log_lock = (b"SELECT pg_advisory_xact_lock_shared(%s::int8)", [self._log_key])
        self._group = GroupCommit(self._db.call, self._published, max(1, pool_size // 2), log_lock)
        """create_run and commit: many actors' writes in one transaction (group commit)."""

    @property
    def feed(self) -> ChangeFeed:
        return self._feed

    @property
    def calls(self) -> int:
        """Database round trips made so far (pooled and dedicated connections; for tests
        and tuning)."""
        return self._db.calls

    @property
    def changes(self) -> ChangeSignal:
        """Bumped when another process wrote a trigger, callback or control (NOTIFY):
        the supervisor's event-log tail waits on it instead of sleeping a whole poll."""
        return self.notifications.routing

    # -- scale-out --------------------------------------------------------------------------

    def shard_ownership(
        self, workflow_name: str, *, shards: int = 16, lease: timedelta = timedelta(seconds=10)
    ) -> ShardOwnership:
        """The shard leases of one worker process for ``workflow_name`` (see ``_shards``).

        ``Workflow.run`` calls this and serves the result: the workflow then works only
        on runs of the shards it holds, and fails over when another worker dies.
        """
        return ShardOwnership(self, self._db, workflow_name, shards=shards, lease=lease)

    async def listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve LISTEN/NOTIFY until cancelled: other processes' writes then reach this
        process's ``subscribe`` and ``await_status`` at once. ``Workflow.run`` does this
        by itself; call it (``nursery.start_soon(store.listen)``) in a process that only
        subscribes."""
        await self.notifications.serve(task_status=task_status)

    def register_ownership(self, ownership: ShardOwnership) -> None:
        self._ownerships.setdefault(ownership.workflow_name, []).append(ownership)

    def unregister_ownership(self, ownership: ShardOwnership) -> None:
        found = self._ownerships.get(ownership.workflow_name, [])
        if ownership in found:
            found.remove(ownership)
        if not found:
            self._ownerships.pop(ownership.workflow_name, None)

    def _owned_here(self, workflow_name: str, run_id: str) -> bool:
        """Whether a workflow running in this process owns the run (then its writes need
        no NOTIFY to be routed: the owner is right here)."""
        return any(o.owns(run_id) for o in self._ownerships.get(workflow_name, ()))

    async def others_changes(self, after: int, limit: int) -> tuple[list[RawRecord], int]:
        """Versions other processes stored after event id ``after`` (a gapless prefix,
        as :meth:`read_events`), and the position to read from next."""
        q = self._q
        origin = self._origin

        def read(conn: _Conn) -> tuple[list[RawRecord], int]:
            bound = self._event_bound(conn)
            if bound <= after:
                return [], after
            rows = conn.execute(q.others_changes, [after, bound, origin, limit]).fetchall()
            position = int(rows[-1][-1]) if len(rows) >= limit else bound
            return [_record(r) for r in rows], position

        return await self._db.call("reading other processes' changes", read)

    @property
    def schema(self) -> str:
        """The PostgreSQL schema this store keeps its tables in."""
        return self._schema

    def __repr__(self) -> str:
        return f"PostgresStore({self._db.where}, schema={self._schema!r})"

    async def __aenter__(self) -> PostgresStore:
        """Open the pool and migrate the schema now, so connection errors surface here."""
        await self._db.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _record_params(
        self, record: RawRecord, writer: uuid.UUID, *, notify: bool = False
    ) -> dict[str, Any]:
        from psycopg.types.json import Jsonb

        params = {
            "workflow_name": record.workflow_name,
            "foreign_id": record.foreign_id,
            "run_id": record.run_id,
            "status": int(record.status),
            "run_state": int(record.run_state),
            "object": record.object,
            "version": record.version,
            "created_at": _aware(record.created_at),
            "updated_at": _aware(record.updated_at),
            "meta": Jsonb(record.meta.to_dict()),
            "writer": writer,
            "log_key": self._log_key,
            "origin": self._origin,
        }
        if notify:
            params["channel"] = self.notifications.channel
            params["payload"] = self.notifications.routing_payload
        return params

    # -- writes -----------------------------------------------------------------------------

    async def create_run(self, record: RawRecord, timers: Sequence[Timer] = ()) -> RawRecord:
        owned = self._owned_here(record.workflow_name, record.run_id)
        params = self._record_params(record, _writer_token(), notify=not owned)
        if timers:
            params.update(_timer_params(timers))
        q = self._q
        statement = q.create_run[bool(timers), not owned]

        def diagnose(conn: _Conn) -> bool:
            """The statement stored nothing: True when an earlier attempt of this write
            did; raises when an unfinished run is in the way; False: try again."""
            row = conn.execute(q.create_run_diagnose, params).fetchone()
            assert row is not None
            own, blocking_id, blocking_state = row
            if own:
                return True  # an earlier attempt committed; its answer was lost
            if blocking_id is not None:
                raise in_progress(
                    record.workflow_name, record.foreign_id, blocking_id, blocking_state
                )
            return False  # the run in the way finished between the two statements

        def create(conn: _Conn) -> None:
            from psycopg.errors import UniqueViolation

            for _ in range(_CREATE_RUN_ATTEMPTS):
                try:
                    if conn.execute(statement, params).fetchone() is not None:
                        return
                except UniqueViolation:
                    # The run id exists: our own earlier attempt, or a caller's mistake.
                    row = conn.execute(q.create_run_diagnose, params).fetchone()
                    if row is not None and row[0]:
                        return
                    raise InvalidArgument(f"run id {record.run_id} already exists") from None
                if diagnose(conn):
                    return
            raise StoreError(f"create_run of {record.run_id}: the foreign id kept changing")

        def settle(conn: _Conn) -> None:
            if not diagnose(conn):
                create(conn)

        what = f"create_run of run {record.run_id}"
        await self._group.write(Write(what, statement, params, settle, create, record, owned))
        return record

    async def create_runs(
        self, items: Sequence[tuple[RawRecord, Sequence[Timer]]]
    ) -> list[RawRecord | ActorflowError]:
        """Many new runs: each is a create_run of its own, all sent at once, so group
        commit carries them in few transactions (and each keeps its exact retry rules).
        Items are sent in order; a later item of a foreign id starts only once the
        earlier one is answered, so the in-progress rule holds item by item."""
        results: list[RawRecord | ActorflowError | None] = [None] * len(items)
        pending = list(range(len(items)))
        while pending:
            seen: set[str] = set()
            now: list[int] = []
            later: list[int] = []
            for index in pending:
                foreign_id = items[index][0].foreign_id
                (later if foreign_id in seen else now).append(index)
                seen.add(foreign_id)

            async def one(index: int) -> None:
                record, timers = items[index]
                try:
                    results[index] = await self.create_run(record, timers)
                except ActorflowError as exc:
                    results[index] = exc

            for start in range(0, len(now), _CREATE_MANY_IN_FLIGHT):
                async with trio.open_nursery() as nursery:
                    for index in now[start : start + _CREATE_MANY_IN_FLIGHT]:
                        nursery.start_soon(one, index)
            pending = later
        return [r for r in results if r is not None]

    async def commit(
        self,
        record: RawRecord,
        *,
        timers: Sequence[Timer] | None = None,
        scrub_history: bool = False,
    ) -> RawRecord:
        owned = self._owned_here(record.workflow_name, record.run_id)
        params = self._record_params(record, _writer_token(), notify=not owned)
        if timers:
            params.update(_timer_params(timers))
        q = self._q
        replace = "keep" if timers is None else "replace" if timers else "clear"
        statement = q.commit[replace, scrub_history, not owned]

        def settle(conn: _Conn) -> None:
            """The statement stored nothing: why (or an earlier attempt of it did)."""
            row = conn.execute(q.commit_diagnose, params).fetchone()
            if row is None:
                raise no_run(record.workflow_name, record.run_id)
            stored, own = row
            if own:
                return  # an earlier attempt committed; its answer was lost
            raise VersionConflict(
                f"run {record.run_id} is at version {stored}, not {record.version - 1}"
            )

        def commit(conn: _Conn) -> None:
            if conn.execute(statement, params).fetchone() is None:
                settle(conn)

        what = f"commit of run {record.run_id} v{record.version}"
        await self._group.write(Write(what, statement, params, settle, commit, record, owned))
        return record

    def _published(self, writes: list[Write]) -> None:
        """Writes just committed: hand them to this process's subscribers, and let other
        processes' subscribers know when an owner wrote (others' writes NOTIFY by SQL)."""
        for write in writes:
            self._feed.publish(write.publish)
        if any(write.owned for write in writes):
            self.notifications.owner_wrote()

    async def set_cursor(self, name: str, value: str) -> None:
        q = self._q

        def set_cursor(conn: _Conn) -> None:
            conn.execute(q.set_cursor, [name, value])  # an upsert: retrying is harmless

        await self._db.call(f"set_cursor {name!r}", set_cursor, write=True)

    async def register_definition(
        self, workflow_name: str, fingerprint: str, summary: str, now: datetime
    ) -> list[tuple[str, str, datetime]]:
        """Record a definition of the workflow (once); every one known, oldest first."""
        q = self._q

        def register(conn: _Conn) -> list[tuple[str, str, datetime]]:
            conn.execute(q.register_definition, [workflow_name, fingerprint, summary, _aware(now)])
            rows = conn.execute(q.definitions, [workflow_name]).fetchall()
            return [(str(fp), str(text), at) for fp, text, at in rows]

        return await self._db.call("register_definition", register, write=True)

    async def claim_schedule(self, key: str, fire_at: datetime) -> bool:
        params = {"key": key, "fire_at": _aware(fire_at), "writer": _writer_token()}
        q = self._q

        def claim(conn: _Conn) -> bool:
            if conn.execute(q.claim_schedule, params).fetchone() is not None:
                return True
            row = conn.execute(q.claim_schedule_diagnose, params).fetchone()
            return bool(row is not None and row[0])  # True: our earlier attempt claimed it

        return await self._db.call(f"claim_schedule {key!r}", claim, write=True)

    # -- reads ------------------------------------------------------------------------------

    async def lookup(self, workflow_name: str, run_id: str) -> RawRecord:
        q = self._q

        def lookup(conn: _Conn) -> RawRecord:
            row = conn.execute(q.lookup, [run_id, workflow_name]).fetchone()
            if row is None:
                raise no_run(workflow_name, run_id)
            return _record(row)

        return await self._db.call("lookup", lookup)

    async def latest(self, workflow_name: str, foreign_id: str) -> RawRecord:
        q = self._q

        def latest(conn: _Conn) -> RawRecord:
            row = conn.execute(q.latest, [workflow_name, foreign_id]).fetchone()
            if row is None:
                raise no_foreign_run(workflow_name, foreign_id)
            return _record(row)

        return await self._db.call("latest", latest)

    async def list_runs(
        self,
        workflow_name: str,
        flt: RunFilter = ANY_RUN,
        *,
        limit: int = 25,
        after: str | None = None,
        descending: bool = False,
    ) -> list[RawRecord]:
        limit = check_limit(limit)
        query = self._q.list_runs(
            foreign_id=flt.foreign_ids is not None,
            status=flt.statuses is not None,
            run_state=flt.run_states is not None,
            after=after is not None,
            descending=descending,
            prefix=flt.foreign_id_prefix is not None,
            created_after=flt.created_after is not None,
            created_before=flt.created_before is not None,
        )
        params = _filter_params(workflow_name, flt)
        params["limit"] = limit
        q = self._q

        def list_runs(conn: _Conn) -> list[RawRecord]:
            if after is not None:
                row = conn.execute(q.run_seq, [after, workflow_name]).fetchone()
                if row is None:
                    raise no_run(workflow_name, after, "after=")
                params["after"] = row[0]
            return [_record(r) for r in conn.execute(query, params).fetchall()]

        return await self._db.call("list_runs", list_runs)

    async def count_runs(
        self, workflow_name: str, flt: RunFilter = ANY_RUN
    ) -> dict[tuple[int, RunState], int]:
        query = self._q.count_runs(
            foreign_id=flt.foreign_ids is not None,
            status=flt.statuses is not None,
            run_state=flt.run_states is not None,
            prefix=flt.foreign_id_prefix is not None,
            created_after=flt.created_after is not None,
            created_before=flt.created_before is not None,
        )
        params = _filter_params(workflow_name, flt)

        def count_runs(conn: _Conn) -> dict[tuple[int, RunState], int]:
            return {
                (int(s), RunState(st)): int(n)
                for s, st, n in conn.execute(query, params).fetchall()
            }

        return await self._db.call("count_runs", count_runs)

    async def history(self, workflow_name: str, run_id: str) -> list[RawRecord]:
        q = self._q

        def history(conn: _Conn) -> list[RawRecord]:
            rows = conn.execute(q.history, [run_id, workflow_name]).fetchall()
            if not rows:
                raise no_run(workflow_name, run_id)
            return [_record(r) for r in rows]

        return await self._db.call("history", history)

    async def list_timers(self, workflow_name: str, run_id: str | None = None) -> list[Timer]:
        q = self._q

        def list_timers(conn: _Conn) -> list[Timer]:
            if run_id is None:
                rows = conn.execute(q.timers_of_workflow, [workflow_name]).fetchall()
            else:
                rows = conn.execute(q.timers_of_run, [run_id, workflow_name]).fetchall()
            return [_timer(r) for r in rows]

        return await self._db.call("list_timers", list_timers)

    async def timers_after(
        self, workflow_name: str, after: tuple[datetime, int] | None, limit: int
    ) -> list[tuple[int, Timer]]:
        q = self._q

        def page(conn: _Conn) -> list[tuple[int, Timer]]:
            if after is None:
                rows = conn.execute(q.timers_first, [workflow_name, limit]).fetchall()
            else:
                rows = conn.execute(
                    q.timers_after, [workflow_name, _aware(after[0]), after[1], limit]
                ).fetchall()
            return [(int(r[5]), _timer(r)) for r in rows]

        return await self._db.call("timers_after", page)

    async def prune_history(
        self,
        workflow_name: str,
        *,
        keep_last: int | None,
        before: datetime | None,
        finished_before: datetime,
        after_id: int,
        scan: int,
    ) -> tuple[int, int | None]:
        q = self._q
        params = {
            "workflow_name": workflow_name,
            "low": after_id,
            "high": after_id + scan,
            "finished": _FINISHED,
            "finished_before": _aware(finished_before),
            "keep_last": keep_last,
            "before": None if before is None else _aware(before),
        }

        def prune(conn: _Conn) -> tuple[int, int | None]:
            deleted = conn.execute(q.prune_history, params).rowcount
            row = conn.execute(q.last_history_id).fetchone()
            last = 0 if row is None or row[0] is None else int(row[0])
            return deleted, (after_id + scan if after_id + scan < last else None)

        return await self._db.call("prune_history", prune, write=True)

    def _event_bound(self, conn: _Conn) -> int:
        """Wait out the writes in flight; every event id up to the result is final."""
        row = conn.execute(self._q.events_bound, [self._log_key]).fetchone()
        assert row is not None
        return int(row[0]) if row[1] else 0

    async def read_events(
        self, after: int, limit: int = 100, workflow_name: str | None = None
    ) -> list[Event]:
        """Event-log entries with ``id > after``, in id order, with no id ever skipped.

        The history table's bigserial id is the event id. Ids are drawn when a row is
        inserted but become visible when its transaction commits, so with concurrent
        writers id 11 can be visible while id 10 is still in flight; a consumer that read
        11 and moved its cursor past 10 would lose 10 for good.

        The fix is a per-schema advisory lock. Every write takes it *shared*, in the same
        statement, before its history id is drawn (a MATERIALIZED CTE scanned before the
        insert's nextval), and holds it until its commit: writers never wait for each other.
        A group-commit batch takes it first of all, before any row lock (see
        ``_postgres_batch.GroupCommit``), and holds it until the batch commits.
        This method takes it *exclusive* in one statement that also reads the sequence's
        last value ``bound``: once granted, every id <= ``bound`` belongs to a write that
        has committed or rolled back (each held the shared lock from before drawing its id
        until it finished). The rows are then read, in a later statement (a later
        snapshot), limited to ``id <= bound``: a gapless prefix, up to ids of rolled-back
        writes, which never appear. Writes that arrive while the exclusive lock is wanted
        queue behind it for about one commit (one batch: a few milliseconds): readers cost
        writers a short pause rather than every write being serialised through one lock.
        """
        if limit < 1:
            return []
        q = self._q

        def read(conn: _Conn) -> list[Event]:
            bound = self._event_bound(conn)
            if bound <= after:
                return []
            if workflow_name is None:
                cursor = conn.execute(q.events, [after, bound, limit])
            else:
                cursor = conn.execute(q.events_of_workflow, [workflow_name, after, bound, limit])
            return [
                Event(
                    id=r[0],
                    workflow_name=r[1],
                    foreign_id=r[2],
                    run_id=r[3],
                    status=r[4],
                    run_state=RunState(r[5]),
                    version=r[6],
                    created_at=_utc(r[7]),
                )
                for r in cursor.fetchall()
            ]

        return await self._db.call("read_events", read)

    async def last_event_id(self) -> int:
        """The newest event id, with no uncommitted id below it (see :meth:`read_events`)."""
        q = self._q

        def last(conn: _Conn) -> int:
            bound = self._event_bound(conn)
            row = conn.execute(q.last_event, [bound]).fetchone() if bound else None
            return 0 if row is None else int(row[0])

        return await self._db.call("last_event_id", last)

    async def get_cursor(self, name: str) -> str | None:
        q = self._q

        def get_cursor(conn: _Conn) -> str | None:
            row = conn.execute(q.get_cursor, [name]).fetchone()
            return None if row is None else str(row[0])

        return await self._db.call("get_cursor", get_cursor)

    async def last_schedule(self, key: str) -> datetime | None:
        q = self._q

        def last_schedule(conn: _Conn) -> datetime | None:
            row = conn.execute(q.last_schedule, [key]).fetchone()
            return None if row is None else _utc(row[0])

        return await self._db.call("last_schedule", last_schedule)

    # -- maintenance ------------------------------------------------------------------------

    async def vacuum(self) -> None:
        """Rewrite the tables that hold objects (``VACUUM FULL`` of ``runs`` and
        ``history``, with their TOAST tables), so the old row versions that ``delete_data``
        and every update leave behind are gone from the database files.

        PostgreSQL never overwrites a row in place: an UPDATE writes a new version and
        leaves the old one, bytes and all, as a dead tuple, which a plain VACUUM marks
        reusable but does not erase. ``VACUUM FULL`` copies the live rows into new files
        and deletes the old ones. It holds an exclusive lock on each table while it runs
        (workers and clients wait): run it in a quiet moment, e.g. after a batch of
        deletions. Write-ahead log segments, replicas and backups keep their copies until
        they are recycled or expire (see docs/stores.md).

        Raises:
            StoreError: the server refused or could not be reached.
        """
        import psycopg

        await self._db.open()  # the tables exist (the schema is migrated on first use)
        schema = quote_schema(self._schema)
        db = self._db

        def rewrite() -> None:
            with psycopg.connect(db.dsn, autocommit=True, **db.connect_kwargs) as conn:
                for table in ("runs", "history"):
                    conn.execute(f"VACUUM (FULL, ANALYZE) {schema}.{table}".encode())

        try:
            await trio.to_thread.run_sync(rewrite)
        except psycopg.Error as exc:
            raise StoreError(
                f"PostgreSQL at {db.where}: VACUUM FULL of schema {self._schema!r} failed: "
                f"{db.describe(exc)}"
            ) from None

    # -- lifecycle --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the pool (and drop the schema when asked to). Idempotent."""
        if self._db.closed:
            await trio.lowlevel.checkpoint()
            return
        self._db.closed = True  # no new calls from here on
        with trio.CancelScope(shield=True):
            await self._group.idle.wait()  # the batch in flight finishes first
            await self._db.close(drop=self._q.drop_schema if self._drop_schema_on_close else None)


def _filter_params(workflow_name: str, flt: RunFilter) -> dict[str, Any]:
    """The named parameters of a run filter's WHERE clause (see Queries.list_runs)."""
    return {
        "workflow_name": workflow_name,
        "foreign_id": list(flt.foreign_ids or ()),
        "foreign_id_prefix": flt.foreign_id_prefix,
        "status": sorted(flt.statuses or ()),
        "run_state": sorted(int(s) for s in flt.run_states or ()),
        "created_after": flt.created_after,
        "created_before": flt.created_before,
    }
