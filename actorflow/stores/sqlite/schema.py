"""The SQLite store's schema: forward migrations and the ``schema_version`` table.

Migration ``n`` (1-based) takes a database from schema version ``n - 1`` to ``n``. They
are applied in order when a store opens a file, inside the open transaction, so a file is
always at one known version. A file written by a newer actorflow (a version beyond the
last migration here) is refused, never downgraded.

Datetimes are stored as fixed-width ISO 8601 text in UTC with microseconds
(``2026-01-01T00:00:00.000000+00:00``): exact, readable with the sqlite3 shell, and
ordered correctly by plain text comparison.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from actorflow._model.errors import SchemaVersionError, StoreError

Migration = Sequence[str]

_V1: Migration = (
    # The latest version of every run; ``seq`` is the creation order (keyset pagination).
    """
    CREATE TABLE runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL UNIQUE,
        workflow_name TEXT NOT NULL,
        foreign_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        run_state INTEGER NOT NULL,
        object TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        meta TEXT NOT NULL
    )
    """,
    "CREATE INDEX runs_by_foreign_id ON runs (workflow_name, foreign_id, seq)",
    "CREATE INDEX runs_by_workflow ON runs (workflow_name, seq)",
    "CREATE INDEX runs_by_run_state ON runs (workflow_name, run_state, seq)",
    "CREATE INDEX runs_by_status ON runs (workflow_name, status, seq)",
    # One row per stored version; ``id`` is also the event id read by read_events.
    """
    CREATE TABLE history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        workflow_name TEXT NOT NULL,
        foreign_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        run_state INTEGER NOT NULL,
        object TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        meta TEXT NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX history_by_run ON history (run_id, version)",
    "CREATE INDEX history_by_workflow ON history (workflow_name, id)",
    """
    CREATE TABLE timers (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        workflow_name TEXT NOT NULL,
        status INTEGER NOT NULL,
        kind TEXT NOT NULL,
        fire_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX timers_by_fire_at ON timers (workflow_name, fire_at)",
    "CREATE INDEX timers_by_run ON timers (run_id)",
    "CREATE TABLE cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE schedules (key TEXT PRIMARY KEY, fire_at TEXT NOT NULL) WITHOUT ROWID",
)

_V2: Migration = (
    # list_runs/count_runs with a created-at range (the web console's date filter).
    "CREATE INDEX runs_by_created ON runs (workflow_name, created_at)",
)

_V3_DEFINITIONS: Migration = (
    # Every workflow definition (fingerprint) that ran on this store, in the order they
    # first registered: a worker processes runs written by its own definition or by one
    # registered before it, never by a newer one (rolling deploys, docs/upgrading.md).
    """
    CREATE TABLE definitions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow_name TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        summary TEXT NOT NULL,
        registered_at TEXT NOT NULL,
        UNIQUE (workflow_name, fingerprint)
    )
    """,
)

MIGRATIONS: list[Migration] = [_V1, _V2, _V3_DEFINITIONS]
"""Forward migrations; append only. Index ``i`` upgrades version ``i`` to ``i + 1``."""


def latest_version() -> int:
    """The schema version this code writes."""
    return len(MIGRATIONS)


def inspect(conn: sqlite3.Connection, where: str) -> int | None:
    """The schema version of the file (None: an empty file), without changing anything.

    Raises:
        SchemaVersionError: the file was written by a newer actorflow.
        StoreError: the file is a SQLite database but not an actorflow store.
        sqlite3.Error: the file cannot be read (not a database, I/O); the caller maps it.
    """
    known = latest_version()
    tables = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if "schema_version" not in tables:
        foreign = sorted(tables - {"sqlite_sequence"})
        if foreign:
            raise StoreError(
                f"SQLite store {where}: the file is a SQLite database but not an actorflow "
                f"store (it has tables {', '.join(foreign)} and no schema_version); use a "
                "new path"
            )
        return None
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    if row is None or row[0] is None:
        raise StoreError(
            f"SQLite store {where}: the schema_version table is empty, so the schema of "
            "this file is unknown; restore it from a backup or use a new path"
        )
    found = int(row[0])
    if found > known:
        raise SchemaVersionError(
            f"SQLite store {where}: the file has schema version {found}, but this actorflow "
            f"only knows versions up to {known}; it was written by a newer actorflow. "
            "Upgrade actorflow to open it (the file was not changed)"
        )
    return found


def migrate(conn: sqlite3.Connection, where: str) -> int:
    """Bring the database up to :func:`latest_version`; returns the version found.

    Must run inside a write transaction (``BEGIN IMMEDIATE``) so that two processes
    opening one new file do not both migrate it. ``where`` names the file in messages.

    Raises:
        SchemaVersionError: the file was written by a newer actorflow.
        StoreError: the file is a SQLite database but not an actorflow store.
        sqlite3.Error: the statements failed (the caller rolls back and maps it).
    """
    found = inspect(conn, where)
    if found is None:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        found = 0
    for migration in MIGRATIONS[found:]:
        for statement in migration:
            conn.execute(statement)
    # Always written, even when nothing changed: it proves at open that the file is writable.
    conn.execute("UPDATE schema_version SET version = ?", (latest_version(),))
    return found
