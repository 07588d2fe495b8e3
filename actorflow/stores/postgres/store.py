"""PostgresStore: the scale-out store, shared by processes on several machines.

psycopg 3's sync API runs in trio worker threads (``trio.to_thread.run_sync`` with a
:class:`trio.CapacityLimiter` as large as the connection pool, so no thread ever waits
for a connection while holding a worker slot another call could use). psycopg's async
API is asyncio-only, and one thread hop (~0.1 ms) is small next to a commit.

This class is thin: it implements the Store Protocol by handing work to the modules that
own each concept. Reads are functions over a connection (``queries.py``; the event log's
gapless reads are :class:`~actorflow.stores.postgres.queries.EventLog`); writes, their
retry-safe settlement and writer tokens are in ``writes.py``; triggers and commits of many
actors are sent together, in one transaction and one thread hop (group commit,
``batch.py``). Scale-out (shard leases, failover, the leader) is in ``shards.py``;
LISTEN/NOTIFY and the cross-process change feed in ``listen.py``. psycopg is imported
lazily: importing actorflow does not need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, final

import trio

from actorflow._model.errors import ActorflowError, InvalidArgument, StoreError
from actorflow._model.record import Event, RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow.stores import realtime
from actorflow.stores.feed import ChangeFeed
from actorflow.stores.filters import ANY_RUN, RunFilter, check_limit
from actorflow.stores.postgres import queries, writes
from actorflow.stores.postgres.batch import GroupCommit, Write
from actorflow.stores.postgres.connection import PgConnection
from actorflow.stores.postgres.listen import ChangeSignal, FollowedFeed, Notifications
from actorflow.stores.postgres.queries import EventLog
from actorflow.stores.postgres.rows import aware, writer_token
from actorflow.stores.postgres.schema import Queries, lock_key, quote_schema
from actorflow.stores.postgres.shards import Owners, ShardOwnership
from actorflow.stores.postgres.writes import WriteBuilder

MAX_TIMEOUT = 1e9
"""The longest connect or retry timeout in seconds (about 31 years): finite, and one
that trio's deadlines and libpq's whole seconds can take."""

if TYPE_CHECKING:
    from actorflow.stores.postgres.connection import _Conn


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
        if not isinstance(dsn, str):
            raise InvalidArgument(
                f"PostgresStore needs a DSN string (postgresql://user@host:port/db), "
                f"not {type(dsn).__name__}"
            )
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise InvalidArgument(f"pool_size must be a positive int, not {pool_size!r}")
        for name, seconds in (
            ("connect_timeout", connect_timeout),
            ("retry_timeout", retry_timeout),
        ):
            if (
                not isinstance(seconds, int | float)
                or isinstance(seconds, bool)
                or not 0 < seconds < MAX_TIMEOUT
            ):
                raise InvalidArgument(
                    f"{name} must be a number of seconds > 0 (and finite), not {seconds!r}"
                )
        if not isinstance(drop_schema_on_close, bool):
            raise InvalidArgument(
                f"drop_schema_on_close must be True or False, not {drop_schema_on_close!r}"
            )
        quote_schema(schema)
        self._db = PgConnection(
            dsn,
            schema=schema,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            retry_timeout=retry_timeout,
        )
        self.schema = schema
        """The PostgreSQL schema this store keeps its tables in."""
        self._drop_schema_on_close = drop_schema_on_close
        self._q = Queries(schema)
        log_key = lock_key("actorflow.event-log", schema)
        origin = writer_token()
        self._feed = FollowedFeed()
        self.feed: ChangeFeed = self._feed
        self.log = EventLog(self._db, self._q, log_key, origin)
        """The event log's gapless reads (see :class:`EventLog`)."""
        channel = lock_key("actorflow.notify", schema) & 0xFFFF_FFFF_FFFF_FFFF
        self.owners = Owners()
        """The shard ownerships of workflows running in this process."""
        self.notifications = Notifications(
            self._db,
            self.log,
            self._feed,
            f"actorflow_{channel:016x}",
            origin.hex,
            self.owners.wants,
        )
        """LISTEN/NOTIFY (see ``listen.py``); served while a workflow runs here."""
        self.changes: ChangeSignal = self.notifications.routing
        """Bumped when another process wrote a trigger, callback or control (NOTIFY):
        the supervisor's event-log tail waits on it instead of sleeping a whole poll."""
        self._writes = WriteBuilder(self._q, log_key, origin, self.notifications.channel)
        log_lock = (b"SELECT pg_advisory_xact_lock_shared(%s::int8)", [log_key])
        self._group = GroupCommit(self._db.call, self._published, max(1, pool_size // 2), log_lock)
        """create_run and commit: many actors' writes in one transaction (group commit)."""

    @property
    def calls(self) -> int:
        """Database round trips made so far (pooled and dedicated connections; for tests
        and tuning)."""
        return self._db.calls

    def __repr__(self) -> str:
        return f"PostgresStore({self._db.where}, schema={self.schema!r})"

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

    # -- scale-out --------------------------------------------------------------------------

    def shard_ownership(
        self, workflow_name: str, *, shards: int = 16, lease: timedelta = timedelta(seconds=10)
    ) -> ShardOwnership:
        """The shard leases of one worker process for ``workflow_name`` (see ``shards.py``).

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

    # -- writes -----------------------------------------------------------------------------

    async def create_run(self, record: RawRecord, timers: Sequence[Timer] = ()) -> RawRecord:
        owned = self.owners.here(record.workflow_name, record.run_id)
        await self._group.write(self._writes.create_run(record, timers, owned))
        return record

    async def create_runs(
        self, items: Sequence[tuple[RawRecord, Sequence[Timer]]]
    ) -> list[RawRecord | ActorflowError]:
        return await writes.create_many(self.create_run, items)

    async def commit(
        self,
        record: RawRecord,
        *,
        timers: Sequence[Timer] | None = None,
        scrub_history: bool = False,
    ) -> RawRecord:
        owned = self.owners.here(record.workflow_name, record.run_id)
        await self._group.write(self._writes.commit(record, timers, scrub_history, owned))
        return record

    def _published(self, done: list[Write]) -> None:
        """Writes just committed: hand them to this process's subscribers, and let other
        processes' subscribers know when an owner wrote (others' writes NOTIFY by SQL)."""
        for write in done:
            self._feed.publish(write.publish)
        owner_wrote = any(write.owned for write in done)
        if owner_wrote:
            self.notifications.owner_wrote()
        routed = [write.publish for write in done if not write.owned]
        self.notifications.tell_siblings(routed, owner_wrote)

    async def set_cursor(self, name: str, value: str) -> None:
        q = self._q
        await self._db.call(
            f"set_cursor {name!r}", lambda c: writes.set_cursor(c, q, name, value), write=True
        )

    async def register_definition(
        self, workflow_name: str, fingerprint: str, summary: str, now: datetime
    ) -> list[tuple[str, str, datetime]]:
        """Record a definition of the workflow (once); every one known, oldest first."""
        q = self._q
        return await self._db.call(
            "register_definition",
            lambda c: writes.register_definition(c, q, workflow_name, fingerprint, summary, now),
            write=True,
        )

    async def claim_schedule(self, key: str, fire_at: datetime) -> bool:
        params = {"key": key, "fire_at": aware(fire_at), "writer": writer_token()}
        q = self._q
        return await self._db.call(
            f"claim_schedule {key!r}", lambda c: writes.claim_schedule(c, q, params), write=True
        )

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
        params = writes.prune_params(
            workflow_name,
            keep_last=keep_last,
            before=before,
            finished_before=finished_before,
            after_id=after_id,
            scan=scan,
        )
        q = self._q
        return await self._db.call(
            "prune_history", lambda c: writes.prune_history(c, q, params), write=True
        )

    # -- reads ------------------------------------------------------------------------------

    async def lookup(self, workflow_name: str, run_id: str) -> RawRecord:
        q = self._q
        return await self._db.call("lookup", lambda c: queries.lookup(c, q, workflow_name, run_id))

    async def lookup_with_timers(
        self, workflow_name: str, run_id: str
    ) -> tuple[RawRecord, list[Timer]]:
        """The run and its timers in one call (one thread hop; see ``RunWithTimers``)."""
        q = self._q

        def read(c: _Conn) -> tuple[RawRecord, list[Timer]]:
            raw = queries.lookup(c, q, workflow_name, run_id)
            return raw, queries.list_timers(c, q, workflow_name, run_id)

        return await self._db.call("lookup", read)

    async def latest(self, workflow_name: str, foreign_id: str) -> RawRecord:
        q = self._q
        return await self._db.call(
            "latest", lambda c: queries.latest(c, q, workflow_name, foreign_id)
        )

    async def list_runs(
        self,
        workflow_name: str,
        flt: RunFilter = ANY_RUN,
        *,
        limit: int = 25,
        after: str | None = None,
        descending: bool = False,
    ) -> list[RawRecord]:
        page = (check_limit(limit), after, descending)
        q = self._q
        return await self._db.call(
            "list_runs", lambda c: queries.list_runs(c, q, workflow_name, flt, *page)
        )

    async def count_runs(
        self, workflow_name: str, flt: RunFilter = ANY_RUN
    ) -> dict[tuple[int, RunState], int]:
        q = self._q
        return await self._db.call(
            "count_runs", lambda c: queries.count_runs(c, q, workflow_name, flt)
        )

    async def history(self, workflow_name: str, run_id: str) -> list[RawRecord]:
        q = self._q
        return await self._db.call(
            "history", lambda c: queries.history(c, q, workflow_name, run_id)
        )

    async def list_timers(self, workflow_name: str, run_id: str | None = None) -> list[Timer]:
        q = self._q
        return await self._db.call(
            "list_timers", lambda c: queries.list_timers(c, q, workflow_name, run_id)
        )

    async def timers_after(
        self, workflow_name: str, after: tuple[datetime, int] | None, limit: int
    ) -> list[tuple[int, Timer]]:
        q = self._q
        return await self._db.call(
            "timers_after", lambda c: queries.timers_after(c, q, workflow_name, after, limit)
        )

    async def read_events(
        self, after: int, limit: int = 100, workflow_name: str | None = None
    ) -> list[Event]:
        """Event-log entries with ``id > after``, in id order, with no id ever skipped
        (see :class:`~actorflow.stores.postgres.queries.EventLog` for how)."""
        if limit < 1:
            return []
        return await self.log.read_events(after, limit, workflow_name)

    async def last_event_id(self) -> int:
        """The newest event id, with no uncommitted id below it (see :meth:`read_events`)."""
        return await self.log.last_event_id()

    async def get_cursor(self, name: str) -> str | None:
        q = self._q
        return await self._db.call("get_cursor", lambda c: queries.get_cursor(c, q, name))

    async def last_schedule(self, key: str) -> datetime | None:
        q = self._q
        return await self._db.call("last_schedule", lambda c: queries.last_schedule(c, q, key))

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
        schema = quote_schema(self.schema)
        db = self._db

        def rewrite() -> None:
            with psycopg.connect(db.dsn, autocommit=True, **db.connect_kwargs) as conn:
                for table in ("runs", "history"):
                    conn.execute(f"VACUUM (FULL, ANALYZE) {schema}.{table}".encode())

        try:
            await realtime.to_thread(rewrite)
        except psycopg.Error as exc:
            raise StoreError(
                f"PostgreSQL at {db.where}: VACUUM FULL of schema {self.schema!r} failed: "
                f"{db.describe(exc)}"
            ) from None

    # -- lifecycle --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the pool (and drop the schema when asked to), and end the waits and
        subscriptions on its feed (StoreError). Idempotent."""
        if self._db.closed:
            await trio.lowlevel.checkpoint()
            return
        self._db.closed = True  # no new calls from here on
        with trio.CancelScope(shield=True):
            await self._group.idle.wait()  # the batch in flight finishes first
            self._feed.close(f"PostgreSQL at {self._db.where}: the store is closed")
            await self._db.close(drop=self._q.drop_schema if self._drop_schema_on_close else None)
