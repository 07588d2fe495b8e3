"""SQLiteStore: the embedded, durable store (WAL), with group commit on the trio thread.

The store is thin: it checks its arguments and implements the Store Protocol by handing
each call to the module that owns it: ``connection`` (the file, its connection, reads
with back-off, threads, the worker lock), ``writes`` (what each write runs in the
group-commit transaction, and the batch itself), ``queries`` (the reads) and ``codec``
(rows to records and back).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar, final

import attrs
import trio

from actorflow._model.errors import ActorflowError, InvalidArgument, StoreError
from actorflow._model.record import Event, RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow.stores.base import ClosingStore
from actorflow.stores.feed import ChangeFeed
from actorflow.stores.filters import ANY_RUN, RunFilter, check_limit
from actorflow.stores.group_commit import GroupCommit
from actorflow.stores.sqlite import queries
from actorflow.stores.sqlite import writes as w
from actorflow.stores.sqlite.codec import CreateRow, create_rows, record_params, timer_rows
from actorflow.stores.sqlite.connection import WORKER_LOCK_SUFFIX as WORKER_LOCK_SUFFIX
from actorflow.stores.sqlite.connection import WORKER_LOCKS, Database
from actorflow.stores.sqlite.connection import SQLiteStats as SQLiteStats

R = TypeVar("R")

_SYNCHRONOUS: Final = ("NORMAL", "FULL")


@final
@attrs.frozen
class PreparedRuns:
    """New runs' rows for :meth:`SQLiteStore.create_runs`, made by ``prepare_runs``."""

    rows: list[CreateRow]


@final
class SQLiteStore(ClosingStore):
    """The embedded durable store: one SQLite file in WAL mode.

    Every write (create_run, commit, set_cursor, claim_schedule) goes through group
    commit (:mod:`actorflow.stores.group_commit`, one leader): the first writer to arrive
    leads, yields once so that other runnable tasks can add their writes, then stores the
    whole batch in one transaction and answers each writer on its own (a conflict for one
    write does not fail the others). Records are published on :attr:`feed` only after
    COMMIT returned. No background task is needed.

    All SQLite calls run inline on the trio thread, never in a worker thread, so trio's
    autojump clock stays honest; writes are short. When another process holds the write
    lock, a batch is retried with ``trio.sleep`` backoff for up to ``lock_timeout``
    seconds (trio time), then fails with :class:`~actorflow.StoreError`.

    Several processes may open one file at the same time (on one machine; not over a
    network file system): SQLite serialises their transactions and the version checks
    keep every run consistent, so a process that only triggers, calls back or reads is
    safe beside a worker. Only one process should run workflows (``Workflow.run``) on a
    file: two would each run steps and timers for the same runs. The change feed is
    in-process: subscribers see only the writes of their own process.

    Args:
        path: the database file; its directory must exist and be writable (WAL keeps
            ``-wal`` and ``-shm`` files beside it).
        synchronous: ``"NORMAL"`` (default: durable against process crashes, may lose the
            last transactions on power loss) or ``"FULL"`` (fsync on every commit).
        lock_timeout: seconds a write waits for another process's write lock.

    Raises:
        InvalidArgument: ``synchronous`` or ``lock_timeout`` is not valid.
        SchemaVersionError: the file was written by a newer actorflow.
        StoreError: the file cannot be opened or written (missing directory, read-only,
            not a database); the message names the path and what to do.
    """

    shared = True
    """Other processes may write to the same file (see the class docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        lock_timeout: float = 5.0,
    ) -> None:
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise InvalidArgument(
                f"synchronous must be one of {', '.join(map(repr, _SYNCHRONOUS))}, "
                f"not {synchronous!r}"
            )
        if (
            not isinstance(lock_timeout, int | float)
            or isinstance(lock_timeout, bool)
            or not lock_timeout >= 0
        ):
            raise InvalidArgument(f"lock_timeout must be seconds >= 0, not {lock_timeout!r}")
        if not isinstance(path, str | os.PathLike):
            raise InvalidArgument(
                f"SQLiteStore needs the path of a database file (a str or os.PathLike), "
                f"not {path!r:.100}"
            )
        text = os.fspath(path)
        if not isinstance(text, str) or text in ("", ":memory:") or text.startswith("file:"):
            raise InvalidArgument(
                f"SQLiteStore needs the path of a database file, not {text!r} "
                "(for an in-memory store use MemoryStore)"
            )
        if "\x00" in text:
            raise InvalidArgument(
                f"SQLiteStore: the path {text.replace(chr(0), '?')!r} holds a NUL character "
                "(U+0000), which no file name can"
            )
        self._feed = ChangeFeed()
        # Absolute now: the file, its worker lock and the connections opened later (the
        # watcher, the checkpointer, reads in threads, a reopen) stay this one file when the
        # process changes its working directory afterwards (they used to open, and create,
        # another file of that name there).
        try:
            path_now = Path(text).absolute()
        except OSError as exc:  # a relative path, and the working directory was removed
            raise StoreError(
                f"SQLite store {text!r}: the relative path cannot be made absolute "
                f"({exc.strerror or exc}); give an absolute path"
            ) from None
        self._db = Database(path_now, synchronous.upper(), float(lock_timeout), self._feed)
        self._feed.watch = self._db.watch
        self.stats: SQLiteStats = self._db.stats
        """Write-path counters."""
        db = self._db
        self._group: GroupCommit[w.SQLiteWrite[Any]] = GroupCommit(
            lambda batch: w.send(db, batch),
            leaders=1,
            max_batch=w.MAX_BATCH,
            fail=lambda _, reason: db.fail(reason, "retry the write"),
        )

    @property
    def feed(self) -> ChangeFeed:
        return self._feed

    @property
    def path(self) -> Path:
        """The database file."""
        return self._db.path

    @property
    def storage_key(self) -> tuple[str, str]:
        """What this store holds, for this process: every SQLiteStore of one file has the
        same key (the file's real path), so that a workflow served through two of them
        in this process works on its runs once (the second stands by)."""
        return ("sqlite", os.path.realpath(self._db.path))

    @property
    def synchronous(self) -> str:
        """The ``PRAGMA synchronous`` level in use: ``"NORMAL"`` or ``"FULL"``."""
        return self._db.synchronous

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, synchronous={self.synchronous!r})"

    @contextlib.contextmanager
    def worker_lock(self) -> Iterator[None]:
        """Hold the file's worker lock while workflows run on it in this process.

        One process runs workflows on a SQLite file (two would both run steps and timers
        for the same runs); any number of others may trigger, call back and read. The lock
        is an exclusive ``flock`` on ``<database>-worker.lock``, shared by every workflow
        of this process on the file and released when the last one stops, or by the
        operating system when the process dies (also by kill -9).

        Raises:
            StoreError: another process holds it.
        """
        with WORKER_LOCKS.hold(self._db.path, self._db.fail):
            yield

    # -- writes ------------------------------------------------------------------------

    async def _submit(
        self,
        apply: Callable[[sqlite3.Connection, Any], R],
        arg: Any,
        publish: RawRecord | None = None,
    ) -> R:
        """Write with the batch it joins (see :mod:`actorflow.stores.group_commit`)."""
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled already: nothing written
        self._db.check_open()
        value: R = await self._group.write(w.SQLiteWrite(apply, arg, publish))
        return value

    async def create_run(self, record: RawRecord, timers: Sequence[Timer] = ()) -> RawRecord:
        params = record_params(record)
        rows = timer_rows(record, timers)
        return await self._submit(w.apply_create, (record, params, rows), record)

    async def commit(
        self,
        record: RawRecord,
        *,
        timers: Sequence[Timer] | None = None,
        scrub_history: bool = False,
    ) -> RawRecord:
        rows = None if timers is None else timer_rows(record, timers)
        if rows is None and not scrub_history:
            return await self._submit(w.apply_version, record, record)
        stored = await self._submit(w.apply_commit, (record, rows, scrub_history), record)
        if scrub_history:
            # Every stored object of the run is overwritten: wipe the old copies out of
            # the write-ahead log too. Shielded (bounded by lock_timeout): a caller cancelled
            # now would leave them on disk with the scrub reported stored (and the actor
            # cancelled here made its caller delete the data again, a second round).
            with trio.CancelScope(shield=True):
                await self._db.wipe_log(record.run_id)
        return stored

    def prepare_runs(self, items: Sequence[tuple[RawRecord, Sequence[Timer]]]) -> PreparedRuns:
        """:meth:`create_runs`' rows, made ahead: trigger_many makes a chunk's rows while
        the chunk before is being written in a worker thread (see docs/stores.md)."""
        return PreparedRuns(create_rows(items))

    async def create_runs(
        self, items: Sequence[tuple[RawRecord, Sequence[Timer]]] | PreparedRuns
    ) -> list[RawRecord | ActorflowError]:
        """Many new runs, ``MAX_CREATE`` per transaction (each a single write of the group
        commit; a large one is written in a worker thread, see ``writes.send``)."""
        rows = items.rows if isinstance(items, PreparedRuns) else create_rows(items)
        results: list[RawRecord | ActorflowError] = []
        for start in range(0, len(rows), w.MAX_CREATE):
            chunk = rows[start : start + w.MAX_CREATE]
            results.extend(await self._submit(w.apply_create_many, chunk, w.PUBLISH_VALUES))
        return results

    async def set_cursor(self, name: str, value: str) -> None:
        await self._submit(w.apply_set_cursor, (name, value))

    async def register_definition(
        self, workflow_name: str, fingerprint: str, summary: str, now: datetime
    ) -> list[tuple[str, str, datetime]]:
        """Record a definition of the workflow (once); every one known, oldest first."""
        await self._submit(w.apply_definition, (workflow_name, fingerprint, summary, now))
        return await self._db.read(
            "register_definition", lambda conn: queries.definitions(conn, workflow_name)
        )

    async def claim_schedule(self, key: str, fire_at: datetime) -> bool:
        return await self._submit(w.apply_claim_schedule, (key, fire_at))

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
        apply = w.prune_history(
            workflow_name,
            keep_last=keep_last,
            before=before,
            finished_before=finished_before,
            after_id=after_id,
            scan=scan,
        )
        return await self._submit(apply, None)

    # -- reads -------------------------------------------------------------------------

    async def lookup(self, workflow_name: str, run_id: str) -> RawRecord:
        return await self._db.read(
            "lookup", lambda conn: queries.lookup(conn, workflow_name, run_id)
        )

    async def latest(self, workflow_name: str, foreign_id: str) -> RawRecord:
        return await self._db.read(
            "latest", lambda conn: queries.latest(conn, workflow_name, foreign_id)
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
        limit = check_limit(limit)
        return await self._db.read(
            "list_runs",
            lambda conn: queries.list_runs(conn, workflow_name, flt, limit, after, descending),
        )

    async def count_runs(
        self, workflow_name: str, flt: RunFilter = ANY_RUN
    ) -> dict[tuple[int, RunState], int]:
        # Counting reads every matching run (a second or more for a million): on a
        # connection of its own in a worker thread, so the trio thread runs on meanwhile.
        return await self._db.read_in_thread(
            "count_runs", lambda conn: queries.count_runs(conn, workflow_name, flt)
        )

    async def history(self, workflow_name: str, run_id: str) -> list[RawRecord]:
        return await self._db.read(
            "history", lambda conn: queries.history(conn, workflow_name, run_id)
        )

    async def list_timers(self, workflow_name: str, run_id: str | None = None) -> list[Timer]:
        return await self._db.read(
            "list_timers", lambda conn: queries.list_timers(conn, workflow_name, run_id)
        )

    async def timers_after(
        self, workflow_name: str, after: tuple[datetime, int] | None, limit: int
    ) -> list[tuple[int, Timer]]:
        return await self._db.read(
            "timers_after", lambda conn: queries.timers_after(conn, workflow_name, after, limit)
        )

    async def read_events(
        self, after: int, limit: int = 100, workflow_name: str | None = None
    ) -> list[Event]:
        return await self._db.read(
            "read_events", lambda conn: queries.read_events(conn, after, limit, workflow_name)
        )

    async def data_version(self) -> tuple[int, int]:
        """A value that changes whenever another connection (another process, or another
        SQLiteStore on the same file) commits, and never for this store's own writes
        (``PRAGMA data_version``, with the connection it was read on: after a reconnect
        the value is new as well).

        The supervisor's event-log tail reads the log only when it changed, instead of
        reading back every version this store wrote.
        """
        db = self._db
        return await db.read(
            "data_version", lambda conn: (db.connections, queries.data_version(conn))
        )

    async def last_event_id(self) -> int:
        return await self._db.read("last_event_id", queries.last_event_id)

    async def get_cursor(self, name: str) -> str | None:
        return await self._db.read("get_cursor", lambda conn: queries.get_cursor(conn, name))

    async def last_schedule(self, key: str) -> datetime | None:
        return await self._db.read("last_schedule", lambda conn: queries.last_schedule(conn, key))

    # -- closing -----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Finish the batch in flight, then close the database and end the waits and
        subscriptions on its feed (StoreError). Idempotent."""
        self._db.close()
        with trio.CancelScope(shield=True):
            await self._group.idle.wait()
        self._feed.close(str(self._db.fail("the store is closed", "open a new SQLiteStore")))
        await self._db.close_connection()
        await trio.lowlevel.checkpoint()
