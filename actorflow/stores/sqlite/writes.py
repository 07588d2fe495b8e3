"""SQLiteStore's writes: what each write runs inside the group-commit transaction (module
functions: no closure per write), and ``send``, which stores a batch of them in one
transaction on the trio thread (a batch with a large create_runs in a worker thread), with
back-off while another connection holds the lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from itertools import chain
from typing import Any, Final, TypeVar, final

import trio

from actorflow._model.errors import ActorflowError, InvalidArgument, StoreError, VersionConflict
from actorflow._model.record import RawRecord
from actorflow._model.run_state import RunState
from actorflow.stores.group_commit import Write
from actorflow.stores.messages import in_progress, no_run
from actorflow.stores.scrub import DELETED_TEXT, scrub_meta_sqlite
from actorflow.stores.sqlite.codec import (
    COPY_HISTORY,
    INSERT_HISTORY,
    INSERT_RUN,
    INSERT_TIMER,
    ROWS_PER_INSERT,
    RUNS_TABLE,
    TIMERS_TABLE,
    UPDATE_RUN,
    CreateRow,
    Params,
    insert_rows_sql,
    record_params,
    to_text,
)
from actorflow.stores.sqlite.connection import (
    FIRST_BACKOFF,
    MAX_BACKOFF,
    Database,
    fails_transaction,
    is_busy,
)

R = TypeVar("R")

MAX_BATCH: Final = 2000
"""Writes per transaction at most."""
MAX_CREATE: Final = 2000
"""Runs per create_runs write at most (one transaction: the ``IN`` list of its
in-progress check is far below SQLite's limit of 32,766 variables)."""
THREAD_CREATE: Final = 200
"""A batch with a create_runs write of this many runs or more is written in a worker
thread (see :func:`send`)."""
UNFINISHED: Final = frozenset(s for s in RunState if not s.finished)
FINISHED_SQL: Final = ", ".join(str(int(s)) for s in RunState if s.finished)
PUBLISH_VALUES: Final = RawRecord(
    "", "", "", 0, RunState.INITIATED, "", 0, datetime.min, datetime.min
)
"""``publish`` of a write whose value is a list of records to publish (create_runs)."""

Outcomes = list[tuple[Any, BaseException | None]]
"""A batch's answers, write by write: (value, None) or (None, error)."""


@final
class SQLiteWrite(Write[R]):
    """One write waiting for its batch: what to run inside the transaction.

    ``apply(conn, arg)`` runs inside the transaction. The writer parks its own task
    (no Event, no closure): with thousands of writes in flight, every object less per
    write is garbage the collector does not have to walk.
    """

    __slots__ = ("apply", "arg", "publish")

    def __init__(
        self,
        apply: Callable[[sqlite3.Connection, Any], R],
        arg: Any,
        publish: RawRecord | None,
    ) -> None:
        super().__init__()
        self.apply = apply
        self.arg = arg
        self.publish = publish


class _NeedsSavepoints(Exception):
    """A write failed after it may have written: run the batch again with savepoints."""


# -- the batch ---------------------------------------------------------------------------


async def send(db: Database, batch: list[SQLiteWrite[Any]]) -> None:
    deadline = trio.current_time() + db.lock_timeout
    delay = FIRST_BACKOFF
    # A large create_runs (trigger_many) is written in a worker thread: SQLite's work
    # there and the trio thread's building of the next runs use both cores.
    in_thread = any(
        write.apply is apply_create_many and len(write.arg) >= THREAD_CREATE for write in batch
    )
    while True:
        try:
            if in_thread:
                outcomes = await db.write_in_thread(lambda: _attempt(db, batch))
            else:
                outcomes = _attempt(db, batch)
        except StoreError as exc:  # the connection could not be reopened
            db.stats.failed_transactions += 1
            db.stats.writes += len(batch)
            for write in batch:
                write.resolve(None, StoreError(*exc.args))
            return
        except sqlite3.Error as exc:
            now = trio.current_time()
            if is_busy(exc) and now < deadline:
                db.stats.lock_retries += 1
                await trio.sleep(min(delay, deadline - now))
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            db.stats.failed_transactions += 1
            db.stats.writes += len(batch)
            if is_busy(exc):
                what = (
                    f"the database stayed locked by another connection for "
                    f"{db.lock_timeout:g} s; nothing of this write was stored"
                )
            else:
                what = "the write transaction failed and was rolled back"
            for write in batch:
                failure = db.error(what, exc)
                failure.__cause__ = exc
                write.resolve(None, failure)
            return
        db.stats.transactions += 1
        db.stats.writes += len(batch)
        db.nudge_checkpointer()
        db.stats.largest_batch = max(db.stats.largest_batch, len(batch))
        _publish(db, batch, outcomes)
        for write, (value, error) in zip(batch, outcomes, strict=True):
            write.resolve(value, error)
        return


def _attempt(db: Database, batch: list[SQLiteWrite[Any]]) -> Outcomes:
    """Run the batch in one transaction; each write succeeds or fails on its own.

    Every ``apply`` raises its ActorflowErrors (conflicts, refusals) before it writes
    anything, so the fast path needs no savepoints. Any other error inside one write
    may leave part of it behind: then the transaction is rolled back and the batch
    run again with a savepoint around each write.

    Raises sqlite3.Error (after rolling back) when the transaction as a whole failed.
    """
    try:
        return _attempt_once(db, batch, savepoints=False)
    except _NeedsSavepoints:
        return _attempt_once(db, batch, savepoints=True)


def _attempt_once(db: Database, batch: list[SQLiteWrite[Any]], *, savepoints: bool) -> Outcomes:
    conn = db.connection(closing_ok=True)  # aclose waits for this batch
    conn.execute("BEGIN IMMEDIATE")
    outcomes: Outcomes = []
    try:
        for write in batch:
            if savepoints:
                conn.execute("SAVEPOINT write")
            try:
                value = write.apply(conn, write.arg)
            except Exception as exc:
                if fails_transaction(exc):
                    raise
                if savepoints:
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                elif not isinstance(exc, ActorflowError):
                    raise _NeedsSavepoints from exc
                outcomes.append((None, exc))
            else:
                if savepoints:
                    conn.execute("RELEASE write")
                outcomes.append((value, None))
        conn.execute("COMMIT")
    except BaseException:
        db.rollback(conn)
        raise
    return outcomes


def _publish(db: Database, batch: list[SQLiteWrite[Any]], outcomes: Outcomes) -> None:
    """Commit order is event order: every stored record is published before any writer
    is answered."""
    published = False
    for write, (value, error) in zip(batch, outcomes, strict=True):
        if error is None and write.publish is not None:
            if write.publish is PUBLISH_VALUES:
                stored = [record for record in value if isinstance(record, RawRecord)]
                db.feed.publish_many(stored)
                published = published or bool(stored)
            else:
                db.feed.publish(write.publish)
                published = True
    if published:
        db.tell_siblings()


# -- writes inside the transaction (module functions: no closure per write) -------------


def apply_create(conn: sqlite3.Connection, arg: CreateRow) -> RawRecord:
    record, params, timer_rows = arg
    row = conn.execute(
        "SELECT run_id, run_state FROM runs WHERE workflow_name = ? AND foreign_id = ? "
        "ORDER BY seq DESC LIMIT 1",
        (record.workflow_name, record.foreign_id),
    ).fetchone()
    if row is not None and row[1] in UNFINISHED:
        raise in_progress(record.workflow_name, record.foreign_id, row[0], row[1])
    try:
        conn.execute(INSERT_RUN, params)
    except sqlite3.IntegrityError:
        raise InvalidArgument(f"run id {record.run_id} already exists") from None
    conn.execute(INSERT_HISTORY, params)
    if timer_rows:
        conn.executemany(INSERT_TIMER, timer_rows)
    return record


def apply_create_many(
    conn: sqlite3.Connection, rows: list[CreateRow]
) -> list[RawRecord | ActorflowError]:
    """create_runs: the in-progress rule item by item, then every accepted row in a few
    ``executemany`` calls (a run id that exists: item by item, to refuse it alone)."""
    outcomes: list[RawRecord | ActorflowError] = []
    accepted: list[CreateRow] = []
    records = [row[0] for row in rows]
    latest, distinct = _latest_runs(conn, records)
    if not latest and distinct == len(rows):
        # The common case (a backfill of new foreign ids): every item is accepted.
        accepted, outcomes = rows, list(records)
    else:
        for row in rows:
            record = row[0]
            key = (record.workflow_name, record.foreign_id)
            found = latest.get(key)
            if found is not None and found[1] in UNFINISHED:
                outcomes.append(
                    in_progress(record.workflow_name, record.foreign_id, found[0], found[1])
                )
                continue
            # A later item of this chunk with the same foreign id finds this run unfinished.
            latest[key] = (record.run_id, RunState.INITIATED)
            accepted.append(row)
            outcomes.append(record)
    if not accepted:
        return outcomes
    conn.execute("SAVEPOINT create_many")
    try:
        # Every run of this transaction gets a seq above the largest so far (AUTOINCREMENT):
        # their first history rows are copied from them in one statement, in seq order.
        last = conn.execute("SELECT max(seq) FROM runs").fetchone()[0] or 0
        _insert_rows(conn, RUNS_TABLE, [row[1] for row in accepted])
        conn.execute(COPY_HISTORY, (last,))
        _insert_rows(conn, TIMERS_TABLE, [t for row in accepted for t in row[2]])
    except sqlite3.IntegrityError:
        conn.execute("ROLLBACK TO create_many")
        conn.execute("RELEASE create_many")
        return _create_one_by_one(conn, rows, outcomes)
    conn.execute("RELEASE create_many")
    return outcomes


def _insert_rows(conn: sqlite3.Connection, table: str, rows: list[Params]) -> None:
    """Insert ``rows`` with multi-row INSERTs of ``ROWS_PER_INSERT`` rows and one for the
    rest: the values of a whole group are bound at once and stored in one step (a third
    less CPU than a step per row), and the writer thread takes the GIL back once a
    statement, not once a row."""
    if not rows:
        return
    width = len(rows[0])
    for start in range(0, len(rows), ROWS_PER_INSERT):
        part = rows[start : start + ROWS_PER_INSERT]
        conn.execute(insert_rows_sql(table, width, len(part)), list(chain.from_iterable(part)))


def _latest_runs(
    conn: sqlite3.Connection, records: list[RawRecord]
) -> tuple[dict[tuple[str, str], tuple[str, int]], int]:
    """The run id and run state of the latest run of each records' foreign id that has
    one, in one query per workflow (``MAX_CREATE`` ids fit SQLite's variable limit); and
    how many distinct (workflow, foreign id) pairs the records have."""
    by_workflow: dict[str, set[str]] = {}
    if records and all(r.workflow_name == records[0].workflow_name for r in records):
        by_workflow[records[0].workflow_name] = {r.foreign_id for r in records}
    else:
        for record in records:
            by_workflow.setdefault(record.workflow_name, set()).add(record.foreign_id)
    latest: dict[tuple[str, str], tuple[str, int]] = {}
    for workflow_name, foreign_ids in by_workflow.items():
        # A bare column beside max() comes from the row holding the maximum (SQLite).
        query = conn.execute(
            "SELECT foreign_id, run_id, run_state, max(seq) FROM runs "
            f"WHERE workflow_name = ? AND foreign_id IN ({', '.join('?' * len(foreign_ids))}) "
            "GROUP BY foreign_id",
            (workflow_name, *foreign_ids),
        )
        for foreign_id, run_id, run_state, _ in query:
            latest[workflow_name, foreign_id] = (run_id, run_state)
    return latest, sum(len(ids) for ids in by_workflow.values())


def _create_one_by_one(
    conn: sqlite3.Connection,
    rows: list[CreateRow],
    outcomes: list[RawRecord | ActorflowError],
) -> list[RawRecord | ActorflowError]:
    for index, (row, outcome) in enumerate(zip(rows, outcomes, strict=True)):
        if isinstance(outcome, RawRecord):
            try:
                apply_create(conn, row)
            except ActorflowError as exc:
                outcomes[index] = exc
    return outcomes


def apply_version(conn: sqlite3.Connection, record: RawRecord) -> RawRecord:
    """A commit that leaves the run's timers and history as they are."""
    return apply_commit(conn, (record, None, False))


SCRUB_ERRORS = (
    f"UPDATE history SET meta = {scrub_meta_sqlite('meta')} WHERE run_id = :run_id "
    "AND coalesce(json_extract(meta, '$.error_message'), '') != ''"
)
"""delete_data: the error texts of the run's earlier versions (see ``stores/scrub.py``)."""


def apply_commit(
    conn: sqlite3.Connection, arg: tuple[RawRecord, list[Params] | None, bool]
) -> RawRecord:
    record, timer_rows, scrub_history = arg
    # The rows are made here, in the batch, not when the write is queued: objects that
    # wait in the queue survive garbage collections, these die at once.
    params = record_params(record)
    update = (*params[3:], record.run_id, record.workflow_name, record.foreign_id)
    if conn.execute(UPDATE_RUN, (*update, record.version - 1)).rowcount != 1:
        row = conn.execute(
            "SELECT version, foreign_id FROM runs WHERE run_id = ? AND workflow_name = ?",
            (record.run_id, record.workflow_name),
        ).fetchone()
        if row is None:
            raise no_run(record.workflow_name, record.run_id)
        if row[1] != record.foreign_id:
            raise InvalidArgument(
                f"run {record.run_id} belongs to foreign id {row[1]!r}; a commit "
                f"cannot move it to {record.foreign_id!r}"
            )
        raise VersionConflict(
            f"run {record.run_id} is at version {row[0]}, not {record.version - 1}"
        )
    conn.execute(INSERT_HISTORY, params)
    if timer_rows is not None:
        conn.execute("DELETE FROM timers WHERE run_id = ?", (record.run_id,))
        if timer_rows:
            conn.executemany(INSERT_TIMER, timer_rows)
    if scrub_history:
        conn.execute(
            "UPDATE history SET object = ? WHERE run_id = ?",
            (record.object, record.run_id),
        )
        conn.execute(SCRUB_ERRORS, {"deleted": DELETED_TEXT, "run_id": record.run_id})
    return record


def apply_set_cursor(conn: sqlite3.Connection, arg: tuple[str, str]) -> None:
    conn.execute(
        "INSERT INTO cursors (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        arg,
    )


def apply_definition(conn: sqlite3.Connection, arg: tuple[str, str, str, datetime]) -> None:
    workflow_name, fingerprint, summary, now = arg
    conn.execute(
        "INSERT INTO definitions (workflow_name, fingerprint, summary, registered_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (workflow_name, fingerprint) DO NOTHING",
        (workflow_name, fingerprint, summary, to_text(now)),
    )


def apply_claim_schedule(conn: sqlite3.Connection, arg: tuple[str, datetime]) -> bool:
    key, fire_at = arg
    cursor = conn.execute(
        "INSERT INTO schedules (key, fire_at) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET fire_at = excluded.fire_at "
        "WHERE excluded.fire_at > schedules.fire_at",
        (key, to_text(fire_at)),
    )
    return cursor.rowcount == 1


def prune_history(
    workflow_name: str,
    *,
    keep_last: int | None,
    before: datetime | None,
    finished_before: datetime,
    after_id: int,
    scan: int,
) -> Callable[[sqlite3.Connection, object], tuple[int, int | None]]:
    """The write of one ``Store.prune_history`` slice."""
    conditions = [
        "h.workflow_name = ?",
        "h.id > ?",
        "h.id <= ?",
        f"r.run_state IN ({FINISHED_SQL})",
        "r.updated_at < ?",
        "h.version < r.version",
    ]
    args: list[Any] = [workflow_name, after_id, after_id + scan, to_text(finished_before)]
    if keep_last is not None:
        conditions.append("h.version <= r.version - ?")
        args.append(keep_last)
    if before is not None:
        conditions.append("h.updated_at < ?")
        args.append(to_text(before))
    sql = (
        "DELETE FROM history WHERE id IN (SELECT h.id FROM history h "
        f"JOIN runs r ON r.run_id = h.run_id WHERE {' AND '.join(conditions)})"
    )

    def apply(conn: sqlite3.Connection, _: object) -> tuple[int, int | None]:
        deleted = conn.execute(sql, args).rowcount
        row = conn.execute("SELECT max(id) FROM history").fetchone()
        last = 0 if row is None or row[0] is None else int(row[0])
        return deleted, (after_id + scan if after_id + scan < last else None)

    return apply
