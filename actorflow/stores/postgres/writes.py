"""PostgresStore's writes: the statements, their parameters, and how each is settled.

Every write is a single SQL statement (data-modifying CTEs), atomic by itself. Every
write carries a random ``writer`` token stored with it; when a connection dies before
the answer arrives, the write is retried, and the retry recognises its own earlier commit
by that token. So a write is reported done only once it is known to be committed, and
never applied twice. :class:`WriteBuilder` turns a run's create or commit into a
:class:`~actorflow.stores.postgres.batch.Write` for group commit; the other writes are
functions over one connection.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, final

import trio

from actorflow._model.errors import ActorflowError, InvalidArgument, StoreError, VersionConflict
from actorflow._model.record import RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow.stores.messages import in_progress, no_run
from actorflow.stores.postgres.batch import Write
from actorflow.stores.postgres.listen import routing_payload
from actorflow.stores.postgres.rows import aware, timer_params, writer_token
from actorflow.stores.postgres.schema import Queries

if TYPE_CHECKING:
    from actorflow.stores.postgres.connection import _Conn

_CREATE_RUN_ATTEMPTS = 5
_CREATE_MANY_IN_FLIGHT = 1000
_FINISHED = [int(s) for s in RunState if s.finished]
MAX_VERSION = 2**31 - 1
"""The largest version number (and so the largest useful ``keep_last``): ``int4``."""


@final
class WriteBuilder:
    """The group-commit writes of one store: run creations and commits."""

    def __init__(self, q: Queries, log_key: int, origin: uuid.UUID, channel: str) -> None:
        self._q = q
        self._log_key = log_key
        self._origin = origin
        self._channel = channel

    def params(
        self, record: RawRecord, timers: Sequence[Timer] | None, notify: bool
    ) -> dict[str, Any]:
        """A record's named parameters, with a fresh writer token (and the NOTIFY's
        channel and payload, naming the run, when ``notify``)."""
        from psycopg.types.json import Jsonb

        params = {
            "workflow_name": record.workflow_name,
            "foreign_id": record.foreign_id,
            "run_id": record.run_id,
            "status": int(record.status),
            "run_state": int(record.run_state),
            "object": record.object,
            "version": record.version,
            "created_at": aware(record.created_at),
            "updated_at": aware(record.updated_at),
            "meta": Jsonb(record.meta.to_dict()),
            "writer": writer_token(),
            "log_key": self._log_key,
            "origin": self._origin,
            "shard_key": zlib.crc32(record.run_id.encode()),
        }
        if notify:
            params["channel"] = self._channel
            params["payload"] = routing_payload(
                self._origin.hex, record.workflow_name, record.run_id
            )
        if timers:
            params.update(timer_params(timers))
        return params

    def create_run(self, record: RawRecord, timers: Sequence[Timer], owned: bool) -> Write:
        params = self.params(record, timers, notify=not owned)
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
        return Write(what, statement, params, settle, create, record, owned)

    def commit(
        self, record: RawRecord, timers: Sequence[Timer] | None, scrub: bool, owned: bool
    ) -> Write:
        params = self.params(record, timers, notify=not owned)
        q = self._q
        replace = "keep" if timers is None else "replace" if timers else "clear"
        statement = q.commit[replace, scrub, not owned]

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
        return Write(what, statement, params, settle, commit, record, owned)


async def create_many(
    create_run: Callable[[RawRecord, Sequence[Timer]], Awaitable[RawRecord]],
    items: Sequence[tuple[RawRecord, Sequence[Timer]]],
) -> list[RawRecord | ActorflowError]:
    """Many new runs: each a ``create_run`` of its own, all sent at once, so group commit
    carries them in few transactions (and each keeps its exact retry rules). Items are
    sent in order; a later item of a foreign id starts only once the earlier one is
    answered, so the in-progress rule holds item by item.

    Cancelled before anything is sent: nothing is written and Cancelled is raised. Once
    sent, every item's outcome is returned (the cancellation reaches the caller at its
    next checkpoint), as for one write of group commit: a caller must learn which runs it
    stored, to start them; cut short here, runs would be stored that nobody starts.

    Raises StoreError when every item failed with one (the store is closed or cannot be
    reached: nothing was stored), as a transaction of SQLiteStore does; when only some
    did, each of them is that item's result beside the runs that were stored."""
    await trio.lowlevel.checkpoint_if_cancelled()
    with trio.CancelScope(shield=True):
        results = await _create_all(create_run, items)
    errors = [r for r in results if isinstance(r, StoreError)]
    if errors and len(errors) == len(results):
        raise errors[0]
    return results


async def _create_all(
    create_run: Callable[[RawRecord, Sequence[Timer]], Awaitable[RawRecord]],
    items: Sequence[tuple[RawRecord, Sequence[Timer]]],
) -> list[RawRecord | ActorflowError]:
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
                results[index] = await create_run(record, timers)
            except ActorflowError as exc:
                results[index] = exc

        for start in range(0, len(now), _CREATE_MANY_IN_FLIGHT):
            async with trio.open_nursery() as nursery:
                for index in now[start : start + _CREATE_MANY_IN_FLIGHT]:
                    nursery.start_soon(one, index)
        pending = later
    return [r for r in results if r is not None]


def set_cursor(conn: _Conn, q: Queries, name: str, value: str) -> None:
    conn.execute(q.set_cursor, [name, value])  # an upsert: retrying is harmless


def register_definition(
    conn: _Conn, q: Queries, workflow_name: str, fingerprint: str, summary: str, now: datetime
) -> list[tuple[str, str, datetime]]:
    """Record a definition of the workflow (once); every one known, oldest first."""
    conn.execute(q.register_definition, [workflow_name, fingerprint, summary, aware(now)])
    rows = conn.execute(q.definitions, [workflow_name]).fetchall()
    return [(str(fp), str(text), at) for fp, text, at in rows]


def claim_schedule(conn: _Conn, q: Queries, params: dict[str, Any]) -> bool:
    """``params``: key, fire_at and a writer token (kept across retries)."""
    if conn.execute(q.claim_schedule, params).fetchone() is not None:
        return True
    row = conn.execute(q.claim_schedule_diagnose, params).fetchone()
    return bool(row is not None and row[0])  # True: our earlier attempt claimed it


def prune_params(
    workflow_name: str,
    *,
    keep_last: int | None,
    before: datetime | None,
    finished_before: datetime,
    after_id: int,
    scan: int,
) -> dict[str, Any]:
    return {
        "workflow_name": workflow_name,
        "low": after_id,
        "high": after_id + scan,
        "finished": _FINISHED,
        "finished_before": aware(finished_before),
        # Versions are int4 here: a larger count keeps every version all the same (it was
        # refused, "integer out of range", on every pass, and keep_for never applied).
        "keep_last": None if keep_last is None else min(keep_last, MAX_VERSION),
        "before": None if before is None else aware(before),
    }


def prune_history(conn: _Conn, q: Queries, params: dict[str, Any]) -> tuple[int, int | None]:
    """One slice of history retention: (rows deleted, where the next slice starts or
    None when this one reached the log's end)."""
    deleted = conn.execute(q.prune_history, params).rowcount
    row = conn.execute(q.last_history_id).fetchone()
    last = 0 if row is None or row[0] is None else int(row[0])
    high: int = params["high"]
    return deleted, (high if high < last else None)
