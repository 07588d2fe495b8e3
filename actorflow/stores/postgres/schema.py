"""The PostgreSQL store's tables, its forward migrations, and the SQL it runs.

Everything lives in one PostgreSQL schema (``actorflow`` unless told otherwise), so several
stores (and tests) can share a database without seeing each other. The schema version is
the highest row of ``schema_version``; :func:`migrate` applies the missing migrations in
one transaction under an advisory lock, so concurrent openers do not race, and refuses a
schema written by a newer actorflow.

This module does not import psycopg: queries are rendered to ``bytes`` with the schema
name quoted here, and :func:`migrate` takes any connection-like object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol, final

import attrs

from actorflow._model.errors import InvalidArgument, SchemaVersionError, StoreError
from actorflow._model.run_state import RunState
from actorflow._model.text import is_valid_text, printable
from actorflow.stores.scrub import scrub_meta_postgres

_UNFINISHED = ", ".join(str(int(s)) for s in RunState if not s.finished)


@attrs.frozen
class Migration:
    """One forward migration: ``statements`` take the quoted schema as ``{s}``."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "runs, history (event log), timers, cursors, schedules",
        (
            """
            CREATE TABLE {s}.runs (
                seq           bigserial PRIMARY KEY,
                run_id        text NOT NULL UNIQUE,
                workflow_name text NOT NULL,
                foreign_id    text NOT NULL,
                status        integer NOT NULL,
                run_state     smallint NOT NULL,
                object        text NOT NULL,
                version       integer NOT NULL,
                created_at    timestamptz NOT NULL,
                updated_at    timestamptz NOT NULL,
                meta          jsonb NOT NULL
            )
            """,
            "CREATE INDEX runs_workflow_seq ON {s}.runs (workflow_name, seq)",
            "CREATE INDEX runs_workflow_foreign_seq ON {s}.runs (workflow_name, foreign_id, seq)",
            "CREATE INDEX runs_workflow_state_seq ON {s}.runs (workflow_name, run_state, seq)",
            # At most one unfinished run per foreign id: this index is what makes
            # create_run's WorkflowInProgress rule race-free across processes.
            "CREATE UNIQUE INDEX runs_one_unfinished ON {s}.runs (workflow_name, foreign_id) "
            f"WHERE run_state IN ({_UNFINISHED})",
            # One row per stored version; ``id`` is also the event-log id (read_events).
            # ``writer`` identifies the write that stored it, so a write whose outcome was
            # lost with its connection can find out whether it committed.
            """
            CREATE TABLE {s}.history (
                id            bigserial PRIMARY KEY,
                run_id        text NOT NULL,
                version       integer NOT NULL,
                workflow_name text NOT NULL,
                foreign_id    text NOT NULL,
                status        integer NOT NULL,
                run_state     smallint NOT NULL,
                object        text NOT NULL,
                created_at    timestamptz NOT NULL,
                updated_at    timestamptz NOT NULL,
                meta          jsonb NOT NULL,
                writer        uuid NOT NULL,
                UNIQUE (run_id, version)
            )
            """,
            # read_events bounds its reads by last_value: a per-session cache would hand
            # out ids below it after the bound was read. CACHE 1 is the default; be explicit.
            "ALTER SEQUENCE {s}.history_id_seq CACHE 1",
            "CREATE INDEX history_workflow_id ON {s}.history (workflow_name, id)",
            """
            CREATE TABLE {s}.timers (
                id            bigserial PRIMARY KEY,
                run_id        text NOT NULL,
                workflow_name text NOT NULL,
                status        integer NOT NULL,
                kind          text NOT NULL,
                fire_at       timestamptz NOT NULL
            )
            """,
            "CREATE INDEX timers_run ON {s}.timers (run_id)",
            "CREATE INDEX timers_workflow_fire ON {s}.timers (workflow_name, fire_at, id)",
            """
            CREATE TABLE {s}.cursors (
                name       text PRIMARY KEY,
                value      text NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            """
            CREATE TABLE {s}.schedules (
                key        text PRIMARY KEY,
                last_fired timestamptz NOT NULL,
                claimed_by uuid NOT NULL,
                claimed_at timestamptz NOT NULL DEFAULT now()
            )
            """,
        ),
    ),
    Migration(
        2,
        "scale-out: workers, shard leases, the origin of each history row",
        (
            # The store instance (process) that wrote the row: the change-feed follower
            # publishes other processes' rows only (its own were published at commit).
            "ALTER TABLE {s}.history ADD COLUMN origin uuid",
            # One row per worker process and workflow; a worker is live while expires_at
            # is in the future (database time). The live workers share the shards fairly.
            """
            CREATE TABLE {s}.workers (
                workflow_name text NOT NULL,
                worker_id     uuid NOT NULL,
                host          text NOT NULL,
                pid           integer NOT NULL,
                started_at    timestamptz NOT NULL DEFAULT now(),
                heartbeat_at  timestamptz NOT NULL,
                expires_at    timestamptz NOT NULL,
                PRIMARY KEY (workflow_name, worker_id)
            )
            """,
            # One row per (workflow, shard): who holds it until when (database time).
            # ``epoch`` grows by one at every acquisition (a fencing token for diagnostics
            # and for a renewal to know it still holds the lease it acquired).
            """
            CREATE TABLE {s}.shard_leases (
                workflow_name text NOT NULL,
                shard         integer NOT NULL,
                shards        integer NOT NULL,
                owner         uuid,
                epoch         bigint NOT NULL DEFAULT 0,
                acquired_at   timestamptz,
                expires_at    timestamptz NOT NULL DEFAULT '-infinity',
                PRIMARY KEY (workflow_name, shard)
            )
            """,
        ),
    ),
    Migration(
        3,
        "runs by creation time (list_runs/count_runs created_after/created_before)",
        ("CREATE INDEX runs_workflow_created ON {s}.runs (workflow_name, created_at)",),
    ),
    Migration(
        4,
        "workflow definitions (fingerprints) in the order they first registered",
        (
            # A worker processes runs written by its own definition or by one registered
            # before it, never by a newer one (rolling deploys, docs/upgrading.md).
            """
            CREATE TABLE {s}.definitions (
                seq           bigserial PRIMARY KEY,
                workflow_name text NOT NULL,
                fingerprint   text NOT NULL,
                summary       text NOT NULL,
                registered_at timestamptz NOT NULL,
                UNIQUE (workflow_name, fingerprint)
            )
            """,
        ),
    ),
    Migration(
        5,
        "the shard key of each history row (workers' tails read their shards only)",
        (
            # crc32(run_id), the run's shard being shard_key % shards (shards.shard_of);
            # NULL in rows written before: every worker's tail reads those.
            "ALTER TABLE {s}.history ADD COLUMN shard_key bigint",
        ),
    ),
    Migration(
        6,
        "statuses as bigint: every IntEnum value a workflow may have (up to 2**63 - 1)",
        (
            # The builder accepts status values up to a signed 64-bit integer, as SQLite
            # and MemoryStore store them; integer columns refused those beyond 2**31 - 1.
            # Rewrites the three tables (once, at the first open of this version).
            "ALTER TABLE {s}.runs ALTER COLUMN status TYPE bigint",
            "ALTER TABLE {s}.history ALTER COLUMN status TYPE bigint",
            "ALTER TABLE {s}.timers ALTER COLUMN status TYPE bigint",
        ),
    ),
]


#: The tables and columns the migrations above leave. ``migrate`` checks the schema against
#: it at every open, so a schema that is half-migrated (a table or column gone), or holds
#: another application's tables under our names, is refused then with a clear StoreError
#: instead of failing the first write that touches what is missing. A migration that adds
#: a table or a column adds it here too (tests/stores/postgres: a fresh schema matches).
TABLES: dict[str, frozenset[str]] = {
    "runs": frozenset(
        [
            "seq",
            "run_id",
            "workflow_name",
            "foreign_id",
            "status",
            "run_state",
            "object",
            "version",
            "created_at",
            "updated_at",
            "meta",
        ]
    ),
    "history": frozenset(
        [
            "id",
            "run_id",
            "version",
            "workflow_name",
            "foreign_id",
            "status",
            "run_state",
            "object",
            "created_at",
            "updated_at",
            "meta",
            "writer",
            "origin",
            "shard_key",
        ]
    ),
    "timers": frozenset(["id", "run_id", "workflow_name", "status", "kind", "fire_at"]),
    "cursors": frozenset(["name", "value", "updated_at"]),
    "schedules": frozenset(["key", "last_fired", "claimed_by", "claimed_at"]),
    "workers": frozenset(
        ["workflow_name", "worker_id", "host", "pid", "started_at", "heartbeat_at", "expires_at"]
    ),
    "shard_leases": frozenset(
        ["workflow_name", "shard", "shards", "owner", "epoch", "acquired_at", "expires_at"]
    ),
    "definitions": frozenset(["seq", "workflow_name", "fingerprint", "summary", "registered_at"]),
    "schema_version": frozenset(["version", "description", "applied_at"]),
}


def latest_version() -> int:
    """The schema version this code writes."""
    return MIGRATIONS[-1].version if MIGRATIONS else 0


def quote_schema(schema: str) -> str:
    """``schema`` as a quoted SQL identifier; rejects names PostgreSQL would mangle."""
    if not isinstance(schema, str) or not schema:
        raise InvalidArgument(f"schema must be a non-empty string, not {schema!r}")
    if not is_valid_text(schema) or "\x00" in schema or len(schema.encode()) > 63:
        raise InvalidArgument(
            f"schema {printable(schema)!r}: at most 63 bytes of valid Unicode text (no lone "
            "surrogates) and no NUL characters"
        )
    if "%" in schema:
        # The quoted name is part of queries that also take parameters, where psycopg
        # reads "%" as the start of a placeholder (it failed at first use).
        raise InvalidArgument(f"schema {schema!r}: the character '%' is not allowed")
    if schema.startswith("pg_") or schema == "information_schema":
        raise InvalidArgument(
            f"schema {schema!r}: PostgreSQL reserves names starting with 'pg_', and "
            "information_schema, for its own schemas; choose another name"
        )
    return '"' + schema.replace('"', '""') + '"'


def lock_key(*parts: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``parts``."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class _Connection(Protocol):
    """The part of a psycopg connection that :func:`migrate` uses (autocommit mode)."""

    def execute(self, query: bytes, params: Sequence[Any] | None = None) -> _Cursor: ...


def migrate(conn: _Connection, schema: str) -> int:
    """Bring ``schema`` up to :func:`latest_version`; return the version found before.

    Runs in the caller's transaction (``conn`` must be inside ``conn.transaction()``), takes
    a transaction-level advisory lock so concurrent openers apply each migration once.

    Raises:
        SchemaVersionError: the schema was written by a newer actorflow.
    """
    s = quote_schema(schema)
    conn.execute(b"SELECT pg_advisory_xact_lock(%s)", [lock_key("actorflow.migrate", schema)])
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}".encode())
    before = _columns(conn, schema)
    if "schema_version" in before and not TABLES["schema_version"] <= before["schema_version"]:
        raise StoreError(
            f"PostgreSQL schema {schema!r} holds a table schema_version that actorflow did not "
            f"create (its columns: {', '.join(sorted(before['schema_version']))}): another "
            "application uses this schema; give the store a schema of its own (schema=)"
        )
    conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {s}.schema_version (
            version     integer PRIMARY KEY,
            description text NOT NULL,
            applied_at  timestamptz NOT NULL DEFAULT now()
        )""".encode()
    )
    row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {s}.schema_version".encode())
    found = int(row.fetchone()[0])
    known = latest_version()
    if found > known:
        raise SchemaVersionError(
            f"PostgreSQL schema {schema!r} is at version {found}, but this actorflow only "
            f"knows versions up to {known}: it was written by a newer actorflow; upgrade "
            "actorflow (downgrading the schema is not supported)"
        )
    if found == 0:
        theirs = sorted(set(before) & set(TABLES) - {"schema_version"})
        if theirs:
            raise StoreError(
                f"PostgreSQL schema {schema!r} already holds tables actorflow did not create "
                f"({', '.join(theirs)}): another application uses this schema; give the store "
                "a schema of its own (schema=)"
            )
    for migration in MIGRATIONS:
        if migration.version <= found:
            continue
        for statement in migration.statements:
            conn.execute(statement.replace("{s}", s).encode())
        conn.execute(
            f"INSERT INTO {s}.schema_version (version, description) VALUES (%s, %s)".encode(),
            [migration.version, migration.description],
        )
    _check_complete(_columns(conn, schema), schema, known)
    return found


def _columns(conn: _Connection, schema: str) -> dict[str, set[str]]:
    """The columns of each table in ``schema`` (one catalog query)."""
    rows = conn.execute(
        b"SELECT c.relname, coalesce(array_agg(a.attname::text) FILTER (WHERE a.attnum > 0 "
        b"AND NOT a.attisdropped), '{}') FROM pg_class c JOIN pg_namespace n ON "
        b"n.oid = c.relnamespace LEFT JOIN pg_attribute a ON a.attrelid = c.oid "
        b"WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') GROUP BY c.relname",
        [schema],
    ).fetchall()
    return {str(name): set(columns) for name, columns in rows}


def _check_complete(present: dict[str, set[str]], schema: str, version: int) -> None:
    """Raise StoreError naming what a schema at the latest version lacks (half-migrated,
    or a table or column dropped by hand): refused at open, not at the first write."""
    lacking: list[str] = []
    for table, columns in TABLES.items():
        if table not in present:
            lacking.append(f"table {table}")
        else:
            missing = sorted(columns - present[table])
            lacking.extend(f"column {table}.{column}" for column in missing)
    if lacking:
        shown = ", ".join(lacking)
        raise StoreError(
            f"PostgreSQL schema {schema!r} says it is at version {version} but lacks "
            f"{shown}: it is half-migrated or was changed by hand; restore it from a backup, "
            "or point the store at another schema (schema=)"
        )


_RUN_COLUMNS = (
    "workflow_name, foreign_id, run_id, status, run_state, object, version, "
    "created_at, updated_at, meta"
)
_TIMER_COLUMNS = "workflow_name, run_id, status, kind, fire_at"
_EVENT_COLUMNS = "id, workflow_name, foreign_id, run_id, status, run_state, version, updated_at"

# Timers arrive as five parallel arrays, so any number of them is one parameter each.
_UNNEST_TIMERS = (
    "unnest(%(t_workflow)s::text[], %(t_run)s::text[], %(t_status)s::int8[], "
    "%(t_kind)s::text[], %(t_fire)s::timestamptz[]) AS t(workflow_name, run_id, status, kind, "
    "fire_at)"
)

_HISTORY_INSERT = """
INSERT INTO {s}.history (run_id, version, workflow_name, foreign_id, status, run_state,
                         object, created_at, updated_at, meta, writer, origin, shard_key)
SELECT %(run_id)s, %(version)s::int4, %(workflow_name)s, %(foreign_id)s, %(status)s::int8,
       %(run_state)s::int2, %(object)s, %(created_at)s, %(updated_at)s, %(meta)s,
       %(writer)s::uuid, %(origin)s::uuid, %(shard_key)s::int8
  FROM log_lock
RETURNING id
"""
_HISTORY_INSERT_NOTIFY = _HISTORY_INSERT.replace("FROM log_lock", "FROM log_lock, notify")

# NOTIFY in the write's own statement: delivered only if the write commits, and after it.
# ``notify`` yields one row when the write matched (its ``source`` CTE did), none otherwise.
_NOTIFY = """notify AS (
            SELECT pg_notify(%(channel)s, %(payload)s) FROM {source}
        )"""


def _create_run(with_timers: bool, notify: bool) -> str:
    parts = [
        f"""
        WITH ins AS (
            INSERT INTO {{s}}.runs ({_RUN_COLUMNS})
            VALUES (%(workflow_name)s, %(foreign_id)s, %(run_id)s, %(status)s::int8,
                    %(run_state)s::int2, %(object)s, %(version)s::int4, %(created_at)s,
                    %(updated_at)s, %(meta)s)
            ON CONFLICT (workflow_name, foreign_id) WHERE run_state IN ({_UNFINISHED})
            DO NOTHING
            RETURNING run_id
        )"""
    ]
    if with_timers:
        parts.append(
            f"""new_timers AS (
            INSERT INTO {{s}}.timers ({_TIMER_COLUMNS})
            SELECT t.workflow_name, t.run_id, t.status, t.kind, t.fire_at
              FROM ins, {_UNNEST_TIMERS}
        )"""
        )
    parts.append(
        """log_lock AS MATERIALIZED (
            SELECT pg_advisory_xact_lock_shared(%(log_key)s::int8) FROM ins
        )"""
    )
    if notify:
        parts.append(_NOTIFY.replace("{source}", "ins"))
        return ", ".join(parts) + _HISTORY_INSERT_NOTIFY
    return ", ".join(parts) + _HISTORY_INSERT


def _commit(timers: str, scrub: bool, notify: bool) -> str:
    parts = [
        """
        WITH upd AS (
            UPDATE {s}.runs
               SET status = %(status)s::int8, run_state = %(run_state)s::int2,
                   object = %(object)s, version = %(version)s::int4,
                   updated_at = %(updated_at)s, meta = %(meta)s
             WHERE run_id = %(run_id)s AND workflow_name = %(workflow_name)s
               AND version = %(version)s::int4 - 1
            RETURNING run_id
        )"""
    ]
    if timers in ("clear", "replace"):
        parts.append(
            """old_timers AS (
            DELETE FROM {s}.timers WHERE run_id = (SELECT run_id FROM upd)
        )"""
        )
    if timers == "replace":
        parts.append(
            f"""new_timers AS (
            INSERT INTO {{s}}.timers ({_TIMER_COLUMNS})
            SELECT t.workflow_name, t.run_id, t.status, t.kind, t.fire_at
              FROM upd, {_UNNEST_TIMERS}
        )"""
        )
    if scrub:
        parts.append(
            """scrub AS (
            UPDATE {s}.history SET object = %(object)s, meta = """
            + scrub_meta_postgres("meta")
            + """
             WHERE run_id = (SELECT run_id FROM upd)
        )"""
        )
    parts.append(
        """log_lock AS MATERIALIZED (
            SELECT pg_advisory_xact_lock_shared(%(log_key)s::int8) FROM upd
        )"""
    )
    if notify:
        parts.append(_NOTIFY.replace("{source}", "upd"))
        return ", ".join(parts) + _HISTORY_INSERT_NOTIFY
    return ", ".join(parts) + _HISTORY_INSERT


@final
class Queries:
    """Every statement the store runs, rendered once for one schema."""

    def __init__(self, schema: str) -> None:
        s = quote_schema(schema)

        def q(text: str) -> bytes:
            return text.replace("{s}", s).encode()

        self.schema = s
        # create_run: one statement (autocommit), so one round trip. The insert into runs
        # yields no row when an unfinished run of the foreign id exists (unique partial
        # index); then nothing else happens. ``log_lock`` is MATERIALIZED and scanned before
        # the history row's nextval() is evaluated: the event-log lock is held before the
        # id is drawn (see the store's read_events). One variant with timers, one without:
        # parameters nobody needs cost time to send. With ``notify`` (a write whose run
        # this process does not own), the statement also NOTIFYs the owner.
        self.create_run = {
            (with_timers, notify): q(_create_run(with_timers, notify))
            for with_timers in (False, True)
            for notify in (False, True)
        }
        # Why create_run stored nothing: an earlier attempt of this very write committed
        # (its connection was lost before the answer came), or the unfinished run in the way.
        self.create_run_diagnose = q(
            f"""
            SELECT (SELECT writer = %(writer)s::uuid FROM {{s}}.history
                     WHERE run_id = %(run_id)s AND version = %(version)s::int4),
                   b.run_id, b.run_state
              FROM (SELECT 1) AS one
              LEFT JOIN LATERAL (
                    SELECT run_id, run_state FROM {{s}}.runs
                     WHERE workflow_name = %(workflow_name)s AND foreign_id = %(foreign_id)s
                       AND run_state IN ({_UNFINISHED})
                     ORDER BY seq DESC LIMIT 1) AS b ON true
            """
        )
        # commit: one statement. The version check is the UPDATE's WHERE; when it matches
        # no row every other part does nothing either. Variants: timers kept / cleared /
        # replaced, history scrubbed or not.
        self.commit = {
            (timers, scrub, notify): q(_commit(timers, scrub, notify))
            for timers in ("keep", "clear", "replace")
            for scrub in (False, True)
            for notify in (False, True)
        }
        self.commit_diagnose = q(
            """
            SELECT r.version, h.writer = %(writer)s::uuid
              FROM {s}.runs r
              LEFT JOIN {s}.history h ON h.run_id = r.run_id AND h.version = %(version)s::int4
             WHERE r.run_id = %(run_id)s AND r.workflow_name = %(workflow_name)s
            """
        )
        self.lookup = q(
            f"SELECT {_RUN_COLUMNS} FROM {{s}}.runs WHERE run_id = %s AND workflow_name = %s"
        )
        self.latest = q(
            f"SELECT {_RUN_COLUMNS} FROM {{s}}.runs WHERE workflow_name = %s AND foreign_id = %s "
            "ORDER BY seq DESC LIMIT 1"
        )
        self.run_seq = q("SELECT seq FROM {s}.runs WHERE run_id = %s AND workflow_name = %s")
        self.history = q(
            f"SELECT {_RUN_COLUMNS} FROM {{s}}.history "
            "WHERE run_id = %s AND workflow_name = %s ORDER BY version"
        )
        self.timers_of_run = q(
            f"SELECT {_TIMER_COLUMNS} FROM {{s}}.timers WHERE run_id = %s AND workflow_name = %s "
            "ORDER BY fire_at, id"
        )
        self.timers_of_workflow = q(
            f"SELECT {_TIMER_COLUMNS} FROM {{s}}.timers WHERE workflow_name = %s "
            "ORDER BY fire_at, id"
        )
        # The supervisor's timer pages: keyset on (fire_at, id), served by the index
        # timers_workflow_fire in order, whatever the number of timers.
        self.timers_first = q(
            f"SELECT {_TIMER_COLUMNS}, id FROM {{s}}.timers WHERE workflow_name = %s "
            "ORDER BY fire_at, id LIMIT %s"
        )
        self.timers_after = q(
            f"SELECT {_TIMER_COLUMNS}, id FROM {{s}}.timers WHERE workflow_name = %s "
            "AND (fire_at, id) > (%s, %s) ORDER BY fire_at, id LIMIT %s"
        )
        # History retention: a slice of ids at a time, so a pass never holds long locks.
        self.prune_history = q(
            """
            DELETE FROM {s}.history h USING {s}.runs r
             WHERE h.workflow_name = %(workflow_name)s
               AND h.id > %(low)s AND h.id <= %(high)s
               AND r.run_id = h.run_id
               AND r.run_state = ANY(%(finished)s::int2[])
               AND r.updated_at < %(finished_before)s
               AND h.version < r.version
               AND (%(keep_last)s::int4 IS NULL OR h.version <= r.version - %(keep_last)s::int4)
               AND (%(before)s::timestamptz IS NULL OR h.updated_at < %(before)s::timestamptz)
            """
        )
        self.last_history_id = q("SELECT max(id) FROM {s}.history")
        # read_events, step 1: wait until no write holds the event-log lock, and read the
        # highest id drawn so far (see the store's read_events for why this is enough).
        self.events_bound = q(
            "SELECT last_value, is_called, pg_advisory_xact_lock(%s::int8)::text "
            "FROM {s}.history_id_seq"
        )
        self.events = q(
            f"SELECT {_EVENT_COLUMNS} FROM {{s}}.history WHERE id > %s AND id <= %s "
            "ORDER BY id LIMIT %s"
        )
        self.events_of_workflow = q(
            f"SELECT {_EVENT_COLUMNS} FROM {{s}}.history "
            "WHERE workflow_name = %s AND id > %s AND id <= %s ORDER BY id LIMIT %s"
        )
        # A worker's tail: other processes' rows of the shards it holds (and rows from
        # before shard keys), so no worker reads every other worker's commits.
        self.owned_events = q(
            f"SELECT {_EVENT_COLUMNS} FROM {{s}}.history "
            "WHERE workflow_name = %s AND id > %s AND id <= %s "
            "AND origin IS DISTINCT FROM %s::uuid "
            "AND (shard_key IS NULL OR shard_key %% %s = ANY(%s::int4[])) ORDER BY id LIMIT %s"
        )
        self.last_event = q("SELECT coalesce(max(id), 0) FROM {s}.history WHERE id <= %s")
        # The change-feed follower: other processes' versions, full records, in id order.
        self.others_changes = q(
            f"SELECT {_RUN_COLUMNS}, id FROM {{s}}.history "
            "WHERE id > %s AND id <= %s AND origin IS DISTINCT FROM %s::uuid "
            "ORDER BY id LIMIT %s"
        )
        self.notify = b"SELECT pg_notify(%s, %s)"
        self.get_cursor = q("SELECT value FROM {s}.cursors WHERE name = %s")
        self.set_cursor = q(
            "INSERT INTO {s}.cursors AS c (name, value) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
        )
        # claim_schedule: an atomic compare-and-set in one statement.
        self.claim_schedule = q(
            """
            INSERT INTO {s}.schedules AS sc (key, last_fired, claimed_by)
            VALUES (%(key)s, %(fire_at)s, %(writer)s::uuid)
            ON CONFLICT (key) DO UPDATE
               SET last_fired = EXCLUDED.last_fired, claimed_by = EXCLUDED.claimed_by,
                   claimed_at = now()
             WHERE sc.last_fired < EXCLUDED.last_fired
            RETURNING 1
            """
        )
        self.claim_schedule_diagnose = q(
            "SELECT claimed_by = %(writer)s::uuid AND last_fired = %(fire_at)s "
            "FROM {s}.schedules WHERE key = %(key)s"
        )
        self.last_schedule = q("SELECT last_fired FROM {s}.schedules WHERE key = %s")
        self.register_definition = q(
            "INSERT INTO {s}.definitions (workflow_name, fingerprint, summary, registered_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (workflow_name, fingerprint) DO NOTHING"
        )
        self.definitions = q(
            "SELECT fingerprint, summary, registered_at FROM {s}.definitions "
            "WHERE workflow_name = %s ORDER BY seq"
        )
        self.drop_schema = q("DROP SCHEMA IF EXISTS {s} CASCADE")
        self._list_runs: dict[tuple[bool, ...], bytes] = {}

    def _runs_where(
        self,
        *,
        foreign_id: bool,
        status: bool,
        run_state: bool,
        prefix: bool = False,
        created_after: bool = False,
        created_before: bool = False,
    ) -> str:
        where = ["workflow_name = %(workflow_name)s"]
        if foreign_id:
            where.append("foreign_id = ANY(%(foreign_id)s::text[])")
        if prefix:
            where.append("starts_with(foreign_id, %(foreign_id_prefix)s::text)")
        if status:
            where.append("status = ANY(%(status)s::int8[])")
        if run_state:
            where.append("run_state = ANY(%(run_state)s::int2[])")
        if created_after:
            where.append("created_at >= %(created_after)s")
        if created_before:
            where.append("created_at < %(created_before)s")
        return " AND ".join(where)

    def list_runs(
        self,
        *,
        foreign_id: bool,
        status: bool,
        run_state: bool,
        after: bool,
        descending: bool,
        prefix: bool = False,
        created_after: bool = False,
        created_before: bool = False,
    ) -> bytes:
        """The list_runs statement for this combination of filters (named parameters)."""
        key = (
            foreign_id,
            status,
            run_state,
            after,
            descending,
            prefix,
            created_after,
            created_before,
        )
        found = self._list_runs.get(key)
        if found is None:
            where = self._runs_where(
                foreign_id=foreign_id,
                status=status,
                run_state=run_state,
                prefix=prefix,
                created_after=created_after,
                created_before=created_before,
            )
            if after:
                where += " AND " + (
                    "seq < %(after)s::int8" if descending else "seq > %(after)s::int8"
                )
            order = "DESC" if descending else "ASC"
            found = (
                f"SELECT {_RUN_COLUMNS} FROM {self.schema}.runs WHERE {where} "
                f"ORDER BY seq {order} LIMIT %(limit)s::int8"
            ).encode()
            self._list_runs[key] = found
        return found

    def count_runs(
        self,
        *,
        foreign_id: bool,
        status: bool,
        run_state: bool,
        prefix: bool,
        created_after: bool,
        created_before: bool,
    ) -> bytes:
        """The count_runs statement for this combination of filters."""
        where = self._runs_where(
            foreign_id=foreign_id,
            status=status,
            run_state=run_state,
            prefix=prefix,
            created_after=created_after,
            created_before=created_before,
        )
        return (
            f"SELECT status, run_state, count(*) FROM {self.schema}.runs WHERE {where} "
            "GROUP BY status, run_state"
        ).encode()
