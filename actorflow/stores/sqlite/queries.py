"""SQLiteStore's reads: plain functions over a connection (the store runs them with
back-off on a locked database), and the filter and index choice of list_runs/count_runs."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any, Final

from actorflow._model.record import Event, RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow.stores.filters import RunFilter, prefix_upper_bound
from actorflow.stores.messages import no_foreign_run, no_run
from actorflow.stores.sqlite.codec import RECORD_COLUMNS, decode_record, from_text, to_text


def lookup(conn: sqlite3.Connection, workflow_name: str, run_id: str) -> RawRecord:
    row = conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM runs WHERE run_id = ? AND workflow_name = ?",
        (run_id, workflow_name),
    ).fetchone()
    if row is None:
        raise no_run(workflow_name, run_id)
    return decode_record(row)


def latest(conn: sqlite3.Connection, workflow_name: str, foreign_id: str) -> RawRecord:
    row = conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM runs WHERE workflow_name = ? AND foreign_id = ? "
        "ORDER BY seq DESC LIMIT 1",
        (workflow_name, foreign_id),
    ).fetchone()
    if row is None:
        raise no_foreign_run(workflow_name, foreign_id)
    return decode_record(row)


def list_runs(
    conn: sqlite3.Connection,
    workflow_name: str,
    flt: RunFilter,
    limit: int,
    after: str | None,
    descending: bool,
) -> list[RawRecord]:
    conditions, values = run_conditions(workflow_name, flt)
    if after is not None:
        row = conn.execute(
            "SELECT seq FROM runs WHERE run_id = ? AND workflow_name = ?",
            (after, workflow_name),
        ).fetchone()
        if row is None:
            raise no_run(workflow_name, after, "after=")
        conditions.append("seq < ?" if descending else "seq > ?")
        values.append(row[0])
    order = "DESC" if descending else "ASC"
    # The page's seqs first (from an index alone where it can), then its rows.
    index = _page_index(conn, workflow_name, flt, descending)
    hint = f"INDEXED BY {index} " if index else ""
    rows = conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM runs WHERE seq IN (SELECT seq FROM runs "
        f"{hint}WHERE {' AND '.join(conditions)} ORDER BY seq {order} LIMIT ?) "
        f"ORDER BY seq {order}",
        (*values, limit),
    ).fetchall()
    return [decode_record(row) for row in rows]


def count_runs(
    conn: sqlite3.Connection, workflow_name: str, flt: RunFilter
) -> dict[tuple[int, RunState], int]:
    where, args = run_conditions(workflow_name, flt)
    hint = ""
    if flt.foreign_ids is not None:
        hint = "INDEXED BY runs_by_foreign_id "
    elif flt.run_states is not None and flt.statuses is None:
        hint = "INDEXED BY runs_by_run_state "  # SQLite prefers the status index
    sql = (
        f"SELECT status, run_state, count(*) FROM runs {hint}WHERE {' AND '.join(where)} "
        "GROUP BY status, run_state"
    )
    return {(s, RunState(st)): n for s, st, n in conn.execute(sql, args)}


def history(conn: sqlite3.Connection, workflow_name: str, run_id: str) -> list[RawRecord]:
    rows = conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM history WHERE run_id = ? AND workflow_name = ? "
        "ORDER BY version",
        (run_id, workflow_name),
    ).fetchall()
    if not rows:
        raise no_run(workflow_name, run_id)
    return [decode_record(row) for row in rows]


def list_timers(conn: sqlite3.Connection, workflow_name: str, run_id: str | None) -> list[Timer]:
    if run_id is None:
        rows = conn.execute(
            "SELECT workflow_name, run_id, status, kind, fire_at FROM timers "
            "WHERE workflow_name = ? ORDER BY fire_at, id",
            (workflow_name,),
        ).fetchall()
    else:
        # INDEXED BY: left alone, SQLite walks the (workflow_name, fire_at) index
        # for its order, which reads every timer of the workflow (0.7 s at 1M).
        rows = conn.execute(
            "SELECT workflow_name, run_id, status, kind, fire_at FROM timers "
            "INDEXED BY timers_by_run "
            "WHERE run_id = ? AND workflow_name = ? ORDER BY fire_at, id",
            (run_id, workflow_name),
        ).fetchall()
    return [Timer(w, r, s, k, from_text(f)) for w, r, s, k, f in rows]


def timers_after(
    conn: sqlite3.Connection,
    workflow_name: str,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[tuple[int, Timer]]:
    sql = "SELECT id, run_id, status, kind, fire_at FROM timers WHERE workflow_name = ? "
    args: tuple[Any, ...] = (workflow_name,)
    if after is not None:
        # Written so the (workflow_name, fire_at) index (whose rows end with the rowid,
        # ``id``) serves both the range and the order: no sort, however many timers.
        sql += "AND fire_at >= ? AND (fire_at > ? OR id > ?) "
        text = to_text(after[0])
        args += (text, text, after[1])
    sql += "ORDER BY fire_at, id LIMIT ?"
    args += (limit,)
    return [
        (i, Timer(workflow_name, r, s, k, from_text(f)))
        for i, r, s, k, f in conn.execute(sql, args)
    ]


def read_events(
    conn: sqlite3.Connection, after: int, limit: int, workflow_name: str | None
) -> list[Event]:
    sql = (
        "SELECT id, workflow_name, foreign_id, run_id, status, run_state, version, "
        "updated_at FROM history WHERE id > ? "
    )
    args: tuple[Any, ...] = (after,)
    if workflow_name is not None:
        sql += "AND workflow_name = ? "
        args += (workflow_name,)
    sql += "ORDER BY id LIMIT ?"
    args += (limit,)
    return [
        Event(i, w, f, r, s, RunState(st), v, from_text(u))
        for i, w, f, r, s, st, v, u in conn.execute(sql, args)
    ]


def last_event_id(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(id) FROM history").fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def data_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA data_version").fetchone()
    return int(row[0])


def get_cursor(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def last_schedule(conn: sqlite3.Connection, key: str) -> datetime | None:
    row = conn.execute("SELECT fire_at FROM schedules WHERE key = ?", (key,)).fetchone()
    return None if row is None else from_text(row[0])


def definitions(conn: sqlite3.Connection, workflow_name: str) -> list[tuple[str, str, datetime]]:
    rows = conn.execute(
        "SELECT fingerprint, summary, registered_at FROM definitions "
        "WHERE workflow_name = ? ORDER BY seq",
        (workflow_name,),
    ).fetchall()
    return [(fp, text, from_text(at)) for fp, text, at in rows]


# -- filters and indexes ---------------------------------------------------------------


_NARROW: Final = 40_000
"""A creation-time or foreign-id-prefix range with fewer runs than this is read from its
index and sorted; a wider one is walked in creation order (see ``_page_index``)."""


def _page_index(
    conn: sqlite3.Connection, workflow_name: str, flt: RunFilter, descending: bool
) -> str | None:
    """The index a page of ``flt`` should be read with, None to leave it to SQLite.

    SQLite cannot know how many runs a range holds (no statistics unless ANALYZE ran), and
    guessing wrong costs a sort of the whole range, or a walk past every run outside it.
    A capped count on the range's own index (at most ``_NARROW`` index entries) decides:
    a narrow range is read whole from its index (covering: no row is read) and sorted; a
    wide one is walked in creation order, where matches come soon. Measured by
    bench/console_queries.py."""
    if flt.foreign_ids is not None:
        return "runs_by_foreign_id"  # a few runs per id
    ranges: list[tuple[int, str]] = []
    if flt.created_after is not None or flt.created_before is not None:
        where, args = ["workflow_name = ?"], [workflow_name]
        if flt.created_after is not None:
            where.append("created_at >= ?")
            args.append(to_text(flt.created_after))
        if flt.created_before is not None:
            where.append("created_at < ?")
            args.append(to_text(flt.created_before))
        ranges.append((_capped_count(conn, "runs_by_created", where, args), "runs_by_created"))
    if flt.foreign_id_prefix is not None:
        prefix = flt.foreign_id_prefix
        where, args = ["workflow_name = ?", "foreign_id >= ?"], [workflow_name, prefix]
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            where.append("foreign_id < ?")
            args.append(upper)
        ranges.append(
            (_capped_count(conn, "runs_by_foreign_id", where, args), "runs_by_foreign_id")
        )
    if not ranges:
        return None
    size, index = min(ranges)
    if size < _NARROW:
        return index
    # A wide range: walk in creation order, unless a creation-time range starts far from
    # where the walk starts (many runs created on the walk's side of it).
    far_side = flt.created_before if descending else flt.created_after
    if index == "runs_by_created" and far_side is not None:
        where = ["workflow_name = ?", "created_at >= ?" if descending else "created_at < ?"]
        far = _capped_count(conn, "runs_by_created", where, [workflow_name, to_text(far_side)])
        if far >= _NARROW:
            return "runs_by_created"
    if flt.statuses is None and flt.run_states is None:
        return "runs_by_workflow"
    return None  # a status or run state index walks in creation order too


def _capped_count(conn: sqlite3.Connection, index: str, where: list[str], args: list[Any]) -> int:
    row = conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM runs INDEXED BY {index} "
        f"WHERE {' AND '.join(where)} LIMIT {_NARROW})",
        args,
    ).fetchone()
    return int(row[0])


def run_conditions(workflow_name: str, flt: RunFilter) -> tuple[list[str], list[Any]]:
    """The WHERE conditions (joined with AND) and their parameters for a run filter."""
    where = ["workflow_name = ?"]
    args: list[Any] = [workflow_name]
    if flt.foreign_ids is not None and len(flt.foreign_ids) == 1:
        where.append("foreign_id = ?")
        args.append(flt.foreign_ids[0])
    elif flt.foreign_ids is not None:
        # One parameter however many ids (SQLite limits the number of parameters).
        where.append("foreign_id IN (SELECT value FROM json_each(?))")
        args.append(json.dumps(flt.foreign_ids))
    if flt.foreign_id_prefix is not None:
        # A range the (workflow_name, foreign_id, seq) index can serve, and the exact test.
        prefix = flt.foreign_id_prefix
        where.append("foreign_id >= ?")
        args.append(prefix)
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            where.append("foreign_id < ?")
            args.append(upper)
        where.append("substr(foreign_id, 1, ?) = ?")
        args.extend((len(prefix), prefix))
    for column, values in (("status", flt.statuses), ("run_state", flt.run_states)):
        if values is not None:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            args.extend(sorted(int(v) for v in values))
    if flt.created_after is not None:
        where.append("created_at >= ?")
        args.append(to_text(flt.created_after))
    if flt.created_before is not None:
        where.append("created_at < ?")
        args.append(to_text(flt.created_before))
    return where, args
