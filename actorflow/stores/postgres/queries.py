"""PostgresStore's reads: functions over one connection, run in a worker thread.

Each function takes the connection and the schema's rendered :class:`Queries`; the store
hands them to :meth:`PgConnection.call`. :class:`EventLog` holds the reads of the event
log (gapless, see :func:`read_events`) that the store and the change-feed follower share.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, final

from actorflow._model.record import Event, RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow.stores.filters import RunFilter
from actorflow.stores.messages import no_foreign_run, no_run
from actorflow.stores.postgres.connection import PgConnection
from actorflow.stores.postgres.rows import (
    aware,
    event_of,
    filter_params,
    record_of,
    timer_of,
    utc,
)
from actorflow.stores.postgres.schema import Queries

if TYPE_CHECKING:
    from actorflow.stores.postgres.connection import _Conn


def lookup(conn: _Conn, q: Queries, workflow_name: str, run_id: str) -> RawRecord:
    row = conn.execute(q.lookup, [run_id, workflow_name]).fetchone()
    if row is None:
        raise no_run(workflow_name, run_id)
    return record_of(row)


def latest(conn: _Conn, q: Queries, workflow_name: str, foreign_id: str) -> RawRecord:
    row = conn.execute(q.latest, [workflow_name, foreign_id]).fetchone()
    if row is None:
        raise no_foreign_run(workflow_name, foreign_id)
    return record_of(row)


def list_runs(
    conn: _Conn,
    q: Queries,
    workflow_name: str,
    flt: RunFilter,
    limit: int,
    after: str | None,
    descending: bool,
) -> list[RawRecord]:
    query = q.list_runs(
        foreign_id=flt.foreign_ids is not None,
        status=flt.statuses is not None,
        run_state=flt.run_states is not None,
        after=after is not None,
        descending=descending,
        prefix=flt.foreign_id_prefix is not None,
        created_after=flt.created_after is not None,
        created_before=flt.created_before is not None,
    )
    params = filter_params(workflow_name, flt)
    params["limit"] = limit
    if after is not None:
        row = conn.execute(q.run_seq, [after, workflow_name]).fetchone()
        if row is None:
            raise no_run(workflow_name, after, "after=")
        params["after"] = row[0]
    return [record_of(r) for r in conn.execute(query, params).fetchall()]


def count_runs(
    conn: _Conn, q: Queries, workflow_name: str, flt: RunFilter
) -> dict[tuple[int, RunState], int]:
    query = q.count_runs(
        foreign_id=flt.foreign_ids is not None,
        status=flt.statuses is not None,
        run_state=flt.run_states is not None,
        prefix=flt.foreign_id_prefix is not None,
        created_after=flt.created_after is not None,
        created_before=flt.created_before is not None,
    )
    rows = conn.execute(query, filter_params(workflow_name, flt)).fetchall()
    return {(int(s), RunState(st)): int(n) for s, st, n in rows}


def history(conn: _Conn, q: Queries, workflow_name: str, run_id: str) -> list[RawRecord]:
    rows = conn.execute(q.history, [run_id, workflow_name]).fetchall()
    if not rows:
        raise no_run(workflow_name, run_id)
    return [record_of(r) for r in rows]


def list_timers(conn: _Conn, q: Queries, workflow_name: str, run_id: str | None) -> list[Timer]:
    if run_id is None:
        rows = conn.execute(q.timers_of_workflow, [workflow_name]).fetchall()
    else:
        rows = conn.execute(q.timers_of_run, [run_id, workflow_name]).fetchall()
    return [timer_of(r) for r in rows]


def timers_after(
    conn: _Conn, q: Queries, workflow_name: str, after: tuple[datetime, int] | None, limit: int
) -> list[tuple[int, Timer]]:
    if after is None:
        rows = conn.execute(q.timers_first, [workflow_name, limit]).fetchall()
    else:
        rows = conn.execute(
            q.timers_after, [workflow_name, aware(after[0]), after[1], limit]
        ).fetchall()
    return [(int(r[5]), timer_of(r)) for r in rows]


def get_cursor(conn: _Conn, q: Queries, name: str) -> str | None:
    row = conn.execute(q.get_cursor, [name]).fetchone()
    return None if row is None else str(row[0])


def last_schedule(conn: _Conn, q: Queries, key: str) -> datetime | None:
    row = conn.execute(q.last_schedule, [key]).fetchone()
    return None if row is None else utc(row[0])


@final
class EventLog:
    """Reads of the event log (the history table, by id), each a gapless prefix.

    The history table's bigserial id is the event id. Ids are drawn when a row is
    inserted but become visible when its transaction commits, so with concurrent
    writers id 11 can be visible while id 10 is still in flight; a consumer that read
    11 and moved its cursor past 10 would lose 10 for good.

    The fix is a per-schema advisory lock. Every write takes it *shared*, in the same
    statement, before its history id is drawn (a MATERIALIZED CTE scanned before the
    insert's nextval), and holds it until its commit: writers never wait for each other.
    A group-commit batch takes it first of all, before any row lock (see
    ``batch.GroupCommit``), and holds it until the batch commits. :meth:`bound` takes it
    *exclusive* in one statement that also reads the sequence's last value: once granted,
    every id <= that bound belongs to a write that has committed or rolled back (each
    held the shared lock from before drawing its id until it finished). The rows are then
    read, in a later statement (a later snapshot), limited to ``id <= bound``: a gapless
    prefix, up to ids of rolled-back writes, which never appear. Writes that arrive while
    the exclusive lock is wanted queue behind it for about one commit (one batch: a few
    milliseconds): readers cost writers a short pause rather than every write being
    serialised through one lock.
    """

    def __init__(self, db: PgConnection, q: Queries, log_key: int, origin: uuid.UUID) -> None:
        self._db = db
        self._q = q
        self._log_key = log_key
        self._origin = origin

    def __repr__(self) -> str:
        """As the store's (the listener's and follower's log lines name it)."""
        return f"PostgresStore({self._db.where}, schema={self._db.schema!r})"

    def bound(self, conn: _Conn) -> int:
        """Wait out the writes in flight; every event id up to the result is final."""
        row = conn.execute(self._q.events_bound, [self._log_key]).fetchone()
        assert row is not None
        return int(row[0]) if row[1] else 0

    async def read_events(self, after: int, limit: int, workflow_name: str | None) -> list[Event]:
        q = self._q

        def read(conn: _Conn) -> list[Event]:
            bound = self.bound(conn)
            if bound <= after:
                return []
            if workflow_name is None:
                cursor = conn.execute(q.events, [after, bound, limit])
            else:
                cursor = conn.execute(q.events_of_workflow, [workflow_name, after, bound, limit])
            return [event_of(r) for r in cursor.fetchall()]

        return await self._db.call("read_events", read)

    async def last_event_id(self) -> int:
        """The newest event id, with no uncommitted id below it."""
        q = self._q

        def last(conn: _Conn) -> int:
            bound = self.bound(conn)
            row = conn.execute(q.last_event, [bound]).fetchone() if bound else None
            return 0 if row is None else int(row[0])

        return await self._db.call("last_event_id", last)

    async def owned_events(
        self, workflow_name: str, shards: int, held: list[int], after: int, limit: int
    ) -> tuple[list[Event], int]:
        """Events of ``workflow_name`` after ``after`` that other processes wrote to runs
        of the ``held`` shards (of ``shards``), and the position to read from next: what
        a worker's tail needs, without every other worker's commits."""
        q = self._q
        params: list[Any] = [workflow_name, after, 0, self._origin, shards, held, limit]

        def read(conn: _Conn) -> tuple[list[Event], int]:
            bound = self.bound(conn)
            if bound <= after:
                return [], after
            params[2] = bound
            events = [event_of(r) for r in conn.execute(q.owned_events, params).fetchall()]
            return events, (events[-1].id if len(events) >= limit else bound)

        return await self._db.call("read_events of the shards held", read)

    async def others_changes(self, after: int, limit: int) -> tuple[list[RawRecord], int]:
        """Versions other processes stored after event id ``after`` (a gapless prefix),
        and the position to read from next."""
        q = self._q
        params: list[Any] = [after, 0, self._origin, limit]

        def read(conn: _Conn) -> tuple[list[RawRecord], int]:
            bound = self.bound(conn)
            if bound <= after:
                return [], after
            params[1] = bound
            rows = conn.execute(q.others_changes, params).fetchall()
            position = int(rows[-1][-1]) if len(rows) >= limit else bound
            return [record_of(r) for r in rows], position

        return await self._db.call("reading other processes' changes", read)
