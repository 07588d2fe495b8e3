"""SQLiteStore: the embedded, durable store (WAL), with group commit on the trio thread."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar, final

import attrs
import trio

from actorflow._model.errors import (
    ActorflowError,
    InvalidArgument,
    StoreError,
    VersionConflict,
)
from actorflow._model.record import Event, Meta, RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow.stores import realtime
from actorflow.stores.feed import ChangeFeed
from actorflow.stores.filters import ANY_RUN, RunFilter, check_limit, prefix_upper_bound
from actorflow.stores.group_commit import GroupCommit, Write
from actorflow.stores.messages import in_progress, no_foreign_run, no_run
from actorflow.stores.sqlite import schema as _sqlite_schema

R = TypeVar("R")

_SYNCHRONOUS: Final = ("NORMAL", "FULL")
_MAX_BATCH: Final = 2000
_OPEN_BUSY_TIMEOUT: Final = 5.0
_FIRST_BACKOFF: Final = 0.001
_MAX_BACKOFF: Final = 0.1
WATCH_INTERVAL: Final = 0.05
"""Real seconds between two looks of the watcher thread at ``PRAGMA data_version``."""
CHECKPOINT_GAP: Final = 0.05
"""Real seconds between two checkpoints of the checkpointer thread (at most)."""
WAL_BOUND_PAGES: Final = 16_384
"""The writer checkpoints inline only when the WAL grew past this many pages (64 MiB at
SQLite's default 4 KiB pages): the checkpointer thread could not keep up, or a reader held
an old snapshot all along. Normally the WAL stays well below (see docs/stores.md)."""

_RECORD_COLUMNS: Final = (
    "workflow_name, foreign_id, run_id, status, run_state, object, version, created_at, "
    "updated_at, meta"
)
_INSERT_RUN: Final = f"INSERT INTO runs ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_HISTORY: Final = (
    f"INSERT INTO history ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# foreign_id is checked, not set: assigning an indexed column rewrites its index entry.
_UPDATE_RUN: Final = (
    "UPDATE runs SET status = ?, run_state = ?, object = ?, version = ?, created_at = ?, "
    "updated_at = ?, meta = ? "
    "WHERE run_id = ? AND workflow_name = ? AND foreign_id = ? AND version = ?"
)
_INSERT_TIMER: Final = (
    "INSERT INTO timers (workflow_name, run_id, status, kind, fire_at) VALUES (?, ?, ?, ?, ?)"
)
_UNFINISHED: Final = frozenset(s for s in RunState if not s.finished)
_FINISHED_SQL: Final = ", ".join(str(int(s)) for s in RunState if s.finished)
_MAX_CREATE: Final = 2000
_PUBLISH_VALUES: Final = RawRecord(
    "", "", "", 0, RunState.INITIATED, "", 0, datetime.min, datetime.min
)
"""``publish`` of a write whose value is a list of records to publish (create_runs)."""
WORKER_LOCK_SUFFIX: Final = "-worker.lock"
"""The lock file beside the database that a process running workflows holds."""

_Params = tuple[Any, ...]


@final
@attrs.define
class SQLiteStats:
    """Counters of a :class:`SQLiteStore`'s write path (for tests, metrics and tuning)."""

    transactions: int = 0
    """Write transactions committed (one per batch of writes)."""
    writes: int = 0
    """Write operations answered (successful or not)."""
    largest_batch: int = 0
    """The most writes ever carried by one transaction."""
    lock_retries: int = 0
    """Times a batch waited because another connection held the write lock."""
    failed_transactions: int = 0
    """Batches rolled back and reported as StoreError to all their writers."""
    reads: int = 0
    """Read operations (lookups, histories, event-log reads, data_version...)."""
    changes_noticed: int = 0
    """Times the watcher thread saw another connection commit and woke the trio side."""


class _NeedsSavepoints(Exception):
    """A write failed after it may have written: run the batch again with savepoints."""


@final
class _Write(Write[R]):
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


_OPEN: dict[str, weakref.WeakSet[SQLiteStore]] = {}
"""Open SQLiteStore objects by resolved file path (see ``SQLiteStore._tell_siblings``)."""


@final
class _Watcher:
    """A thread that looks at ``PRAGMA data_version`` on a connection of its own every
    ``interval`` real seconds, and tells the trio run (through its token) only when it
    changed: some other connection, in this process or another one, committed.

    It never touches the store's connection, holds no lock between looks, and ends when
    stopped or when the trio run it reports to is over.
    """

    def __init__(
        self, path: Path, token: trio.lowlevel.TrioToken, notice: Callable[[], None]
    ) -> None:
        self.token = token
        self._path = path
        self._notice = notice
        self._stop = threading.Event()
        self.thread = threading.Thread(
            target=self._serve, name="actorflow-sqlite-watch", daemon=True
        )
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive() and not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        last: int | None = None
        try:
            while not self._stop.is_set():
                try:
                    if conn is None:
                        conn = sqlite3.connect(self._path, timeout=0, isolation_level=None)
                        # A new connection counts anew, and commits may have slipped in
                        # before it looked: its first look reports a change, to be safe.
                        last = None
                    row = conn.execute("PRAGMA data_version").fetchone()
                    version = int(row[0])
                except sqlite3.Error:
                    if conn is not None:
                        conn.close()
                    conn = None
                else:
                    if version != last:
                        self.token.run_sync_soon(self._notice)
                    last = version
                self._stop.wait(WATCH_INTERVAL)
        except trio.RunFinishedError:
            pass
        finally:
            if conn is not None:
                conn.close()


@final
class _Checkpointer:
    """A thread that copies the write-ahead log back into the database file
    (``PRAGMA wal_checkpoint(PASSIVE)``) on a connection of its own.

    SQLite's own auto-checkpoint runs inside the ``COMMIT`` that crosses 1,000 WAL pages,
    on the trio thread: a stall of milliseconds for whichever caller's write is in that
    batch. Here the writer only nudges the thread after each transaction; a PASSIVE
    checkpoint never waits for the writer nor blocks it, and releases the GIL while it
    copies and syncs. The thread is started by the first write and ends with the store.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.checkpoints = 0
        """Checkpoints done (read by tests and stats; written by the thread only)."""
        self.done = threading.Condition()
        self.thread = threading.Thread(
            target=self._serve, name="actorflow-sqlite-checkpoint", daemon=True
        )
        self.thread.start()

    def nudge(self) -> None:
        """A transaction was committed: checkpoint soon."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wait_for(self, checkpoints: int, timeout: float) -> bool:
        """Block (in a worker thread) until ``checkpoints`` were done, or ``timeout``."""
        with self.done:
            return self.done.wait_for(lambda: self.checkpoints >= checkpoints, timeout)

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                if self._stop.is_set():
                    return
                self._wake.clear()
                try:
                    if conn is None:
                        conn = sqlite3.connect(self._path, timeout=0, isolation_level=None)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:  # busy, or the file went away: try again later
                    if conn is not None:
                        conn.close()
                    conn = None
                else:
                    with self.done:
                        self.checkpoints += 1
                        self.done.notify_all()
                self._stop.wait(CHECKPOINT_GAP)
        finally:
            if conn is not None:
                conn.close()


@final
class SQLiteStore:
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
        text = os.fspath(path)
        if not isinstance(text, str) or text in ("", ":memory:") or text.startswith("file:"):
            raise InvalidArgument(
                f"SQLiteStore needs the path of a database file, not {text!r} "
                "(for an in-memory store use MemoryStore)"
            )
        self._path = Path(text)
        self._synchronous: str = synchronous.upper()
        self._lock_timeout = float(lock_timeout)
        self._feed = ChangeFeed()
        self._group: GroupCommit[_Write[Any]] = GroupCommit(
            self._execute, leaders=1, max_batch=_MAX_BATCH, fail=self._unanswered
        )
        self._closed = False
        self.stats = SQLiteStats()
        """Write-path counters."""
        self._check_path()
        self._conn: sqlite3.Connection | None = self._open(migrate=True)
        self._connections = 1
        """Connections opened so far (a reopened connection counts data_version anew)."""
        self._watcher: _Watcher | None = None
        self._feed.watch = self._watch
        self._key = str(self._path.resolve())
        _OPEN.setdefault(self._key, weakref.WeakSet()).add(self)
        self._checkpointer: _Checkpointer | None = None

    def _watch(self) -> None:
        """Make sure a watcher thread reports other connections' commits to this trio run
        (started by the first waiter; see :meth:`ChangeFeed.wait_external`)."""
        if self._closed:
            return
        token = trio.lowlevel.current_trio_token()
        watcher = self._watcher
        if watcher is not None and watcher.token is token and watcher.alive():
            return
        if watcher is not None:
            watcher.stop()
        self._watcher = _Watcher(self._path, token, self._noticed)

    def _nudge_checkpointer(self) -> None:
        checkpointer = self._checkpointer
        if checkpointer is None or not checkpointer.thread.is_alive():
            if self._closed:
                return
            checkpointer = self._checkpointer = _Checkpointer(self._path)
        checkpointer.nudge()

    def _noticed(self) -> None:
        self.stats.changes_noticed += 1
        self._feed.notice_external()

    def _tell_siblings(self) -> None:
        """Other SQLiteStore objects on this file, watching in this trio run, learn of the
        commit at once: no watcher thread (real time) in between, so two "processes" in
        one test under the autojump clock see each other's writes at the same virtual
        instant."""
        siblings = _OPEN.get(self._key)
        if not siblings or len(siblings) < 2:
            return
        token = trio.lowlevel.current_trio_token()
        for other in list(siblings):
            watcher = other._watcher
            if other is not self and watcher is not None and watcher.token is token:
                other._noticed()

    @property
    def feed(self) -> ChangeFeed:
        return self._feed

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def synchronous(self) -> str:
        """The ``PRAGMA synchronous`` level in use: ``"NORMAL"`` or ``"FULL"``."""
        return self._synchronous

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self._path)!r}, synchronous={self._synchronous!r})"

    async def __aenter__(self) -> SQLiteStore:
        await trio.lowlevel.checkpoint()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- opening -----------------------------------------------------------------------

    def _fail(self, problem: str, advice: str) -> StoreError:
        return StoreError(f"SQLite store {str(self._path)!r}: {problem}; {advice}")

    def _check_path(self) -> None:
        """Refuse paths SQLite could not use, with a message better than SQLite's."""
        directory = self._path.parent
        if not directory.is_dir():
            raise self._fail(
                f"the directory {str(directory)!r} does not exist",
                "create it first or choose another path",
            )
        if self._path.is_dir():
            raise self._fail("the path is a directory", "give the path of a database file")
        effective = os.access in os.supports_effective_ids
        if self._path.exists() and not os.access(
            self._path, os.R_OK | os.W_OK, effective_ids=effective
        ):
            raise self._fail(
                "the file is not readable and writable by this process",
                "make it writable (chmod/chown) or choose another path",
            )
        if not os.access(directory, os.W_OK | os.X_OK, effective_ids=effective):
            raise self._fail(
                f"the directory {str(directory)!r} is not writable by this process (SQLite "
                "creates its -wal and -shm files beside the database)",
                "make the directory writable or choose another path",
            )

    def _open(self, *, migrate: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self._path,
                timeout=_OPEN_BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self._error("cannot open the database", exc) from exc
        try:
            if migrate:
                # Refuse other files before anything (even the journal mode) changes them.
                _sqlite_schema.inspect(conn, repr(str(self._path)))
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise self._fail(
                    f"SQLite refused WAL mode (journal mode is {mode!r})",
                    "use a file on a local disk",
                )
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            # Checkpoints run in a thread of their own (see _Checkpointer); the writer's
            # COMMIT checkpoints inline only past this bound.
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_BOUND_PAGES}")
            # Deleted and overwritten content is zeroed, not left in free space: what
            # delete_data scrubs leaves no copy in the file (see _wipe_log for the WAL).
            conn.execute("PRAGMA secure_delete = ON")
            if migrate:
                # Blocking (with the busy timeout) is fine here: this is not async code.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    _sqlite_schema.migrate(conn, repr(str(self._path)))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            # From here on nobody blocks the trio thread: a locked database is retried
            # with trio.sleep backoff instead.
            conn.execute("PRAGMA busy_timeout = 0")
        except ActorflowError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise self._error("cannot open the database", exc) from exc
        return conn

    def _connection(self, *, closing_ok: bool = False) -> sqlite3.Connection:
        """The open connection (reopened after a failure); ``closing_ok`` for aclose's wait."""
        if self._closed and not closing_ok:
            raise self._fail("the store is closed", "open a new SQLiteStore")
        if self._conn is None:
            self._conn = self._open(migrate=False)
            self._connections += 1
        return self._conn

    def _error(self, what: str, exc: sqlite3.Error) -> StoreError:
        return self._fail(f"{what}: {exc}", _advice(exc))

    # -- group commit ------------------------------------------------------------------

    async def _submit(
        self,
        apply: Callable[[sqlite3.Connection, Any], R],
        arg: Any,
        publish: RawRecord | None = None,
    ) -> R:
        """Write with the batch it joins (see :mod:`actorflow.stores.group_commit`)."""
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled already: nothing written
        self._connection()  # raises when closed
        value: R = await self._group.write(_Write(apply, arg, publish))
        return value

    def _unanswered(self, write: _Write[Any], reason: str) -> StoreError:
        return self._fail(reason, "retry the write")

    async def _execute(self, batch: list[_Write[Any]]) -> None:
        deadline = trio.current_time() + self._lock_timeout
        delay = _FIRST_BACKOFF
        while True:
            try:
                outcomes = self._attempt(batch)
            except StoreError as exc:  # the connection could not be reopened
                self.stats.failed_transactions += 1
                self.stats.writes += len(batch)
                for write in batch:
                    write.resolve(None, StoreError(*exc.args))
                return
            except sqlite3.Error as exc:
                now = trio.current_time()
                if _is_busy(exc) and now < deadline:
                    self.stats.lock_retries += 1
                    await trio.sleep(min(delay, deadline - now))
                    delay = min(delay * 2, _MAX_BACKOFF)
                    continue
                self.stats.failed_transactions += 1
                self.stats.writes += len(batch)
                if _is_busy(exc):
                    what = (
                        f"the database stayed locked by another connection for "
                        f"{self._lock_timeout:g} s; nothing of this write was stored"
                    )
                else:
                    what = "the write transaction failed and was rolled back"
                for write in batch:
                    failure = self._error(what, exc)
                    failure.__cause__ = exc
                    write.resolve(None, failure)
                return
            self.stats.transactions += 1
            self.stats.writes += len(batch)
            self._nudge_checkpointer()
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            # Commit order is event order: publish every stored record first, then answer.
            published = False
            for write, (value, error) in zip(batch, outcomes, strict=True):
                if error is None and write.publish is not None:
                    if write.publish is _PUBLISH_VALUES:
                        for record in value:
                            if isinstance(record, RawRecord):
                                self._feed.publish(record)
                                published = True
                    else:
                        self._feed.publish(write.publish)
                        published = True
            if published:
                self._tell_siblings()
            for write, (value, error) in zip(batch, outcomes, strict=True):
                write.resolve(value, error)
            return

    def _attempt(self, batch: list[_Write[Any]]) -> list[tuple[Any, BaseException | None]]:
        """Run the batch in one transaction; each write succeeds or fails on its own.

        Every ``apply`` raises its ActorflowErrors (conflicts, refusals) before it writes
        anything, so the fast path needs no savepoints. Any other error inside one write
        may leave part of it behind: then the transaction is rolled back and the batch
        run again with a savepoint around each write.

        Raises sqlite3.Error (after rolling back) when the transaction as a whole failed.
        """
        try:
            return self._attempt_once(batch, savepoints=False)
        except _NeedsSavepoints:
            return self._attempt_once(batch, savepoints=True)

    def _attempt_once(
        self, batch: list[_Write[Any]], *, savepoints: bool
    ) -> list[tuple[Any, BaseException | None]]:
        conn = self._connection(closing_ok=True)  # aclose waits for this batch
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            for write in batch:
                if savepoints:
                    conn.execute("SAVEPOINT write")
                try:
                    value = write.apply(conn, write.arg)
                except Exception as exc:
                    if _fails_transaction(exc):
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
            self._rollback(conn)
            raise
        return outcomes

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        if conn.in_transaction:
            # The connection is unusable; a fresh one is opened for the next operation.
            conn.close()
            self._conn = None

    # -- writes ------------------------------------------------------------------------

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
        with _WORKER_LOCKS.hold(self._path, self._fail):
            yield

    async def create_run(self, record: RawRecord, timers: Sequence[Timer] = ()) -> RawRecord:
        params = _record_params(record)
        timer_rows = _timer_rows(record, timers)
        return await self._submit(_apply_create, (record, params, timer_rows), record)

    async def commit(
        self,
        record: RawRecord,
        *,
        timers: Sequence[Timer] | None = None,
        scrub_history: bool = False,
    ) -> RawRecord:
        timer_rows = None if timers is None else _timer_rows(record, timers)
        if timer_rows is None and not scrub_history:
            return await self._submit(_apply_version, record, record)
        if scrub_history:
            return await self._scrub(record, timer_rows)
        return await self._submit(_apply_commit, (record, timer_rows, scrub_history), record)

    async def _scrub(self, record: RawRecord, timer_rows: list[_Params] | None) -> RawRecord:
        """Commit a version that overwrites every stored object of the run, then wipe the
        old copies out of the write-ahead log too."""
        stored = await self._submit(_apply_commit, (record, timer_rows, True), record)
        await self._wipe_log(record.run_id)
        return stored

    async def _wipe_log(self, run_id: str) -> None:
        """Checkpoint the WAL into the database file and truncate it to zero bytes.

        The WAL holds every page written since the last checkpoint, old objects included;
        ``secure_delete`` zeroes them in the database file. Another connection reading an
        older snapshot (or checkpointing: the checkpointer thread) keeps the checkpoint
        from finishing: retried with back-off for up to ``lock_timeout`` seconds of real
        time (the other connections live in real time, also under a virtual clock), then
        StoreError (the scrub itself is stored).
        """
        deadline = realtime.now() + self._lock_timeout
        delay = _FIRST_BACKOFF
        while True:
            await trio.lowlevel.checkpoint()
            problem = ""
            try:
                row = self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if row is None or row[0] != 0:
                    problem = "another connection is reading or writing"
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise self._error("truncating the write-ahead log failed", exc) from exc
                problem = str(exc)
            if not problem:
                return
            now = realtime.now()
            if now >= deadline:
                raise self._fail(
                    f"run {run_id}: its data is scrubbed in the database, but the write-ahead "
                    f"log (which may still hold old copies) could not be truncated within "
                    f"{self._lock_timeout:g} s ({problem})",
                    "call delete_data again when the other processes are idle",
                )
            await realtime.sleep(min(delay, deadline - now))
            delay = min(delay * 2, _MAX_BACKOFF)

    async def create_runs(
        self, items: Sequence[tuple[RawRecord, Sequence[Timer]]]
    ) -> list[RawRecord | ActorflowError]:
        """Many new runs, ``_MAX_CREATE`` per transaction (each a single write of the group
        commit, so a transaction holds the trio thread for a few milliseconds only)."""
        results: list[RawRecord | ActorflowError] = []
        for start in range(0, len(items), _MAX_CREATE):
            chunk = items[start : start + _MAX_CREATE]
            rows = [
                (record, _record_params(record), _timer_rows(record, timers))
                for record, timers in chunk
            ]
            results.extend(await self._submit(_apply_create_many, rows, _PUBLISH_VALUES))
        return results

    async def set_cursor(self, name: str, value: str) -> None:
        def apply(conn: sqlite3.Connection, _: object) -> None:
            conn.execute(
                "INSERT INTO cursors (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

        await self._submit(apply, None)

    async def register_definition(
        self, workflow_name: str, fingerprint: str, summary: str, now: datetime
    ) -> list[tuple[str, str, datetime]]:
        """Record a definition of the workflow (once); every one known, oldest first."""

        def apply(conn: sqlite3.Connection, _: object) -> None:
            conn.execute(
                "INSERT INTO definitions (workflow_name, fingerprint, summary, registered_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (workflow_name, fingerprint) DO NOTHING",
                (workflow_name, fingerprint, summary, _to_text(now)),
            )

        await self._submit(apply, None)

        def query(conn: sqlite3.Connection) -> list[tuple[str, str, datetime]]:
            rows = conn.execute(
                "SELECT fingerprint, summary, registered_at FROM definitions "
                "WHERE workflow_name = ? ORDER BY seq",
                (workflow_name,),
            ).fetchall()
            return [(fp, text, _from_text(at)) for fp, text, at in rows]

        return await self._read("register_definition", query)

    async def claim_schedule(self, key: str, fire_at: datetime) -> bool:
        stamp = _to_text(fire_at)

        def apply(conn: sqlite3.Connection, _: object) -> bool:
            cursor = conn.execute(
                "INSERT INTO schedules (key, fire_at) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET fire_at = excluded.fire_at "
                "WHERE excluded.fire_at > schedules.fire_at",
                (key, stamp),
            )
            return cursor.rowcount == 1

        return await self._submit(apply, None)

    # -- reads -------------------------------------------------------------------------

    async def _read(self, what: str, query: Callable[[sqlite3.Connection], R]) -> R:
        await trio.lowlevel.checkpoint()
        self.stats.reads += 1
        deadline = trio.current_time() + self._lock_timeout
        delay = _FIRST_BACKOFF
        while True:
            conn = self._connection()
            try:
                return query(conn)
            except sqlite3.Error as exc:
                now = trio.current_time()
                if not _is_busy(exc) or now >= deadline:
                    raise self._error(f"{what} failed", exc) from exc
            await trio.sleep(min(delay, deadline - now))
            delay = min(delay * 2, _MAX_BACKOFF)

    async def lookup(self, workflow_name: str, run_id: str) -> RawRecord:
        def query(conn: sqlite3.Connection) -> RawRecord:
            row = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM runs WHERE run_id = ? AND workflow_name = ?",
                (run_id, workflow_name),
            ).fetchone()
            if row is None:
                raise no_run(workflow_name, run_id)
            return _decode_record(row)

        return await self._read("lookup", query)

    async def latest(self, workflow_name: str, foreign_id: str) -> RawRecord:
        def query(conn: sqlite3.Connection) -> RawRecord:
            row = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM runs WHERE workflow_name = ? AND foreign_id = ? "
                "ORDER BY seq DESC LIMIT 1",
                (workflow_name, foreign_id),
            ).fetchone()
            if row is None:
                raise no_foreign_run(workflow_name, foreign_id)
            return _decode_record(row)

        return await self._read("latest", query)

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
        where, args = _run_conditions(workflow_name, flt)

        def query(conn: sqlite3.Connection) -> list[RawRecord]:
            conditions, values = list(where), list(args)
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
                f"SELECT {_RECORD_COLUMNS} FROM runs WHERE seq IN (SELECT seq FROM runs "
                f"{hint}WHERE {' AND '.join(conditions)} ORDER BY seq {order} LIMIT ?) "
                f"ORDER BY seq {order}",
                (*values, limit),
            ).fetchall()
            return [_decode_record(row) for row in rows]

        return await self._read("list_runs", query)

    async def count_runs(
        self, workflow_name: str, flt: RunFilter = ANY_RUN
    ) -> dict[tuple[int, RunState], int]:
        where, args = _run_conditions(workflow_name, flt)
        hint = ""
        if flt.foreign_ids is not None:
            hint = "INDEXED BY runs_by_foreign_id "
        elif flt.run_states is not None and flt.statuses is None:
            hint = "INDEXED BY runs_by_run_state "  # SQLite prefers the status index
        sql = (
            f"SELECT status, run_state, count(*) FROM runs {hint}WHERE {' AND '.join(where)} "
            "GROUP BY status, run_state"
        )

        def query(conn: sqlite3.Connection) -> dict[tuple[int, RunState], int]:
            return {(s, RunState(st)): n for s, st, n in conn.execute(sql, args)}

        # Counting reads every matching run (a second or more for a million): on a
        # connection of its own in a worker thread, so the trio thread runs on meanwhile.
        return await self._read_in_thread("count_runs", query)

    async def _read_in_thread(self, what: str, query: Callable[[sqlite3.Connection], R]) -> R:
        """Run a long read-only ``query`` on a new connection in a worker thread (WAL
        readers never wait for the writer). Under trio's autojump clock, virtual time
        may run on meanwhile (trio issue #456)."""
        self._connection()  # raises when closed

        def run() -> R:
            try:
                conn = sqlite3.connect(self._path, isolation_level=None, timeout=5.0)
            except sqlite3.Error as exc:
                raise self._error(f"{what} failed", exc) from exc
            try:
                conn.execute("PRAGMA query_only = 1")
                return query(conn)
            except sqlite3.Error as exc:
                raise self._error(f"{what} failed", exc) from exc
            finally:
                conn.close()

        return await trio.to_thread.run_sync(run)

    async def history(self, workflow_name: str, run_id: str) -> list[RawRecord]:
        def query(conn: sqlite3.Connection) -> list[RawRecord]:
            rows = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM history WHERE run_id = ? AND workflow_name = ? "
                "ORDER BY version",
                (run_id, workflow_name),
            ).fetchall()
            if not rows:
                raise no_run(workflow_name, run_id)
            return [_decode_record(row) for row in rows]

        return await self._read("history", query)

    async def list_timers(self, workflow_name: str, run_id: str | None = None) -> list[Timer]:
        def query(conn: sqlite3.Connection) -> list[Timer]:
            sql = "SELECT workflow_name, run_id, status, kind, fire_at FROM timers "
            if run_id is None:
                rows = conn.execute(
                    sql + "WHERE workflow_name = ? ORDER BY fire_at, id", (workflow_name,)
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
            return [Timer(w, r, s, k, _from_text(f)) for w, r, s, k, f in rows]

        return await self._read("list_timers", query)

    async def timers_after(
        self, workflow_name: str, after: tuple[datetime, int] | None, limit: int
    ) -> list[tuple[int, Timer]]:
        sql = "SELECT id, run_id, status, kind, fire_at FROM timers WHERE workflow_name = ? "
        args: tuple[Any, ...] = (workflow_name,)
        if after is not None:
            # Written so the (workflow_name, fire_at) index (whose rows end with the rowid,
            # ``id``) serves both the range and the order: no sort, however many timers.
            sql += "AND fire_at >= ? AND (fire_at > ? OR id > ?) "
            text = _to_text(after[0])
            args += (text, text, after[1])
        sql += "ORDER BY fire_at, id LIMIT ?"
        args += (limit,)

        def query(conn: sqlite3.Connection) -> list[tuple[int, Timer]]:
            return [
                (i, Timer(workflow_name, r, s, k, _from_text(f)))
                for i, r, s, k, f in conn.execute(sql, args)
            ]

        return await self._read("timers_after", query)

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
        conditions = [
            "h.workflow_name = ?",
            "h.id > ?",
            "h.id <= ?",
            f"r.run_state IN ({_FINISHED_SQL})",
            "r.updated_at < ?",
            "h.version < r.version",
        ]
        args: list[Any] = [workflow_name, after_id, after_id + scan, _to_text(finished_before)]
        if keep_last is not None:
            conditions.append("h.version <= r.version - ?")
            args.append(keep_last)
        if before is not None:
            conditions.append("h.updated_at < ?")
            args.append(_to_text(before))
        sql = (
            "DELETE FROM history WHERE id IN (SELECT h.id FROM history h "
            f"JOIN runs r ON r.run_id = h.run_id WHERE {' AND '.join(conditions)})"
        )

        def apply(conn: sqlite3.Connection, _: object) -> tuple[int, int | None]:
            deleted = conn.execute(sql, args).rowcount
            row = conn.execute("SELECT max(id) FROM history").fetchone()
            last = 0 if row is None or row[0] is None else int(row[0])
            return deleted, (after_id + scan if after_id + scan < last else None)

        return await self._submit(apply, None)

    async def read_events(
        self, after: int, limit: int = 100, workflow_name: str | None = None
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

        def query(conn: sqlite3.Connection) -> list[Event]:
            return [
                Event(i, w, f, r, s, RunState(st), v, _from_text(u))
                for i, w, f, r, s, st, v, u in conn.execute(sql, args)
            ]

        return await self._read("read_events", query)

    async def data_version(self) -> tuple[int, int]:
        """A value that changes whenever another connection (another process, or another
        SQLiteStore on the same file) commits, and never for this store's own writes
        (``PRAGMA data_version``, with the connection it was read on: after a reconnect
        the value is new as well).

        The supervisor's event-log tail reads the log only when it changed, instead of
        reading back every version this store wrote.
        """

        def query(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute("PRAGMA data_version").fetchone()
            return self._connections, int(row[0])

        return await self._read("data_version", query)

    async def last_event_id(self) -> int:
        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT max(id) FROM history").fetchone()
            return 0 if row is None or row[0] is None else int(row[0])

        return await self._read("last_event_id", query)

    async def get_cursor(self, name: str) -> str | None:
        def query(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
            return None if row is None else str(row[0])

        return await self._read("get_cursor", query)

    async def last_schedule(self, key: str) -> datetime | None:
        def query(conn: sqlite3.Connection) -> datetime | None:
            row = conn.execute("SELECT fire_at FROM schedules WHERE key = ?", (key,)).fetchone()
            return None if row is None else _from_text(row[0])

        return await self._read("last_schedule", query)

    # -- closing -----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Finish the batch in flight, then close the database. Idempotent."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        siblings = _OPEN.get(self._key)
        if siblings is not None:
            siblings.discard(self)
            if not siblings:
                del _OPEN[self._key]
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        with trio.CancelScope(shield=True):
            await self._group.idle.wait()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        await trio.lowlevel.checkpoint()


# -- the worker lock -------------------------------------------------------------------


@final
class _WorkerLocks:
    """This process's worker locks, one per database file, counted by their holders."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[int, int]] = {}
        """lock file -> (file descriptor, holders)."""
        self._mutex = threading.Lock()

    @contextlib.contextmanager
    def hold(self, database: Path, fail: Callable[[str, str], StoreError]) -> Iterator[None]:
        path = os.path.realpath(str(database) + WORKER_LOCK_SUFFIX)
        self._acquire(path, fail)
        try:
            yield
        finally:
            self._release(path)

    def _acquire(self, path: str, fail: Callable[[str, str], StoreError]) -> None:
        with self._mutex:
            held = self._held.get(path)
            if held is not None:
                self._held[path] = (held[0], held[1] + 1)
                return
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as exc:
                raise fail(
                    f"cannot open the worker lock file {path!r}: {exc.strerror}",
                    "make the database's directory writable",
                ) from None
            try:
                _lock_exclusively(fd)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise fail(
                    f"another process (pid {holder}) already runs workflows on this file "
                    f"(it holds {path!r})",
                    "run one worker process per SQLite file (others may still trigger, call "
                    "back and read), stop the other one first, or use PostgresStore to run "
                    "several workers",
                ) from None
            except OSError as exc:
                os.close(fd)
                raise fail(f"cannot lock {path!r}: {exc.strerror}", "use a local disk") from None
            text = f"{os.getpid()}\n".encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)
            self._held[path] = (fd, 1)

    def _release(self, path: str) -> None:
        with self._mutex:
            fd, holders = self._held[path]
            if holders > 1:
                self._held[path] = (fd, holders - 1)
                return
            del self._held[path]
            os.close(fd)  # releases the lock


def _lock_exclusively(fd: int) -> None:
    """An exclusive, non-blocking lock on ``fd``; BlockingIOError when someone holds it."""
    import fcntl  # POSIX (Linux, macOS): where actorflow runs

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


_WORKER_LOCKS: Final = _WorkerLocks()


# -- writes inside the transaction (module functions: no closure per write) -------------


def _apply_create(
    conn: sqlite3.Connection, arg: tuple[RawRecord, _Params, list[_Params]]
) -> RawRecord:
    record, params, timer_rows = arg
    row = conn.execute(
        "SELECT run_id, run_state FROM runs WHERE workflow_name = ? AND foreign_id = ? "
        "ORDER BY seq DESC LIMIT 1",
        (record.workflow_name, record.foreign_id),
    ).fetchone()
    if row is not None and row[1] in _UNFINISHED:
        raise in_progress(record.workflow_name, record.foreign_id, row[0], row[1])
    try:
        conn.execute(_INSERT_RUN, params)
    except sqlite3.IntegrityError:
        raise InvalidArgument(f"run id {record.run_id} already exists") from None
    conn.execute(_INSERT_HISTORY, params)
    if timer_rows:
        conn.executemany(_INSERT_TIMER, timer_rows)
    return record


def _apply_create_many(
    conn: sqlite3.Connection, rows: list[tuple[RawRecord, _Params, list[_Params]]]
) -> list[RawRecord | ActorflowError]:
    """create_runs: the in-progress rule item by item, then every accepted row in a few
    ``executemany`` calls (a run id that exists: item by item, to refuse it alone)."""
    outcomes: list[RawRecord | ActorflowError] = []
    accepted: list[tuple[RawRecord, _Params, list[_Params]]] = []
    created: dict[str, str] = {}
    for row in rows:
        record = row[0]
        blocking = created.get(record.foreign_id)
        if blocking is not None:
            outcomes.append(
                in_progress(record.workflow_name, record.foreign_id, blocking, RunState.INITIATED)
            )
            continue
        found = conn.execute(
            "SELECT run_id, run_state FROM runs WHERE workflow_name = ? AND foreign_id = ? "
            "ORDER BY seq DESC LIMIT 1",
            (record.workflow_name, record.foreign_id),
        ).fetchone()
        if found is not None and found[1] in _UNFINISHED:
            outcomes.append(
                in_progress(record.workflow_name, record.foreign_id, found[0], found[1])
            )
            continue
        created[record.foreign_id] = record.run_id
        accepted.append(row)
        outcomes.append(record)
    if not accepted:
        return outcomes
    conn.execute("SAVEPOINT create_many")
    try:
        params = [row[1] for row in accepted]
        conn.executemany(_INSERT_RUN, params)
        conn.executemany(_INSERT_HISTORY, params)
        conn.executemany(_INSERT_TIMER, [t for row in accepted for t in row[2]])
    except sqlite3.IntegrityError:
        conn.execute("ROLLBACK TO create_many")
        conn.execute("RELEASE create_many")
        return _create_one_by_one(conn, rows, outcomes)
    conn.execute("RELEASE create_many")
    return outcomes


def _create_one_by_one(
    conn: sqlite3.Connection,
    rows: list[tuple[RawRecord, _Params, list[_Params]]],
    outcomes: list[RawRecord | ActorflowError],
) -> list[RawRecord | ActorflowError]:
    for index, (row, outcome) in enumerate(zip(rows, outcomes, strict=True)):
        if isinstance(outcome, RawRecord):
            try:
                _apply_create(conn, row)
            except ActorflowError as exc:
                outcomes[index] = exc
    return outcomes


def _apply_version(conn: sqlite3.Connection, record: RawRecord) -> RawRecord:
    """A commit that leaves the run's timers and history as they are."""
    return _apply_commit(conn, (record, None, False))


def _apply_commit(
    conn: sqlite3.Connection, arg: tuple[RawRecord, list[_Params] | None, bool]
) -> RawRecord:
    record, timer_rows, scrub_history = arg
    # The rows are made here, in the batch, not when the write is queued: objects that
    # wait in the queue survive garbage collections, these die at once.
    params = _record_params(record)
    update = (*params[3:], record.run_id, record.workflow_name, record.foreign_id)
    if conn.execute(_UPDATE_RUN, (*update, record.version - 1)).rowcount != 1:
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
    conn.execute(_INSERT_HISTORY, params)
    if timer_rows is not None:
        conn.execute("DELETE FROM timers WHERE run_id = ?", (record.run_id,))
        if timer_rows:
            conn.executemany(_INSERT_TIMER, timer_rows)
    if scrub_history:
        conn.execute(
            "UPDATE history SET object = ? WHERE run_id = ?",
            (record.object, record.run_id),
        )
    return record


# -- encoding --------------------------------------------------------------------------


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
            args.append(_to_text(flt.created_after))
        if flt.created_before is not None:
            where.append("created_at < ?")
            args.append(_to_text(flt.created_before))
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
        far = _capped_count(conn, "runs_by_created", where, [workflow_name, _to_text(far_side)])
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


def _run_conditions(workflow_name: str, flt: RunFilter) -> tuple[list[str], list[Any]]:
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
        args.append(_to_text(flt.created_after))
    if flt.created_before is not None:
        where.append("created_at < ?")
        args.append(_to_text(flt.created_before))
    return where, args


def _to_text(moment: datetime) -> str:
    """The stored text of an instant: UTC, ISO 8601 to the microsecond (sorts by time)."""
    offset = moment.utcoffset() if isinstance(moment, datetime) else None
    if offset is None:
        raise InvalidArgument(f"datetimes must be timezone-aware (UTC), not {moment!r}")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _from_text(text: str) -> datetime:
    return datetime.fromisoformat(text)


@functools.lru_cache(maxsize=1024)
def _meta_text(meta: Meta) -> str:
    return json.dumps(meta.to_dict(), ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=1024)
def _meta_from_text(text: str) -> Meta:
    return Meta.from_dict(json.loads(text))


def _record_params(record: RawRecord) -> _Params:
    return (
        record.workflow_name,
        record.foreign_id,
        record.run_id,
        int(record.status),
        int(record.run_state),
        record.object,
        record.version,
        _to_text(record.created_at),
        _to_text(record.updated_at),
        _meta_text(record.meta),
    )


def _decode_record(row: Any) -> RawRecord:
    workflow_name, foreign_id, run_id, status, run_state, obj, version, created, updated, meta = row
    return RawRecord(
        workflow_name=workflow_name,
        foreign_id=foreign_id,
        run_id=run_id,
        status=status,
        run_state=RunState(run_state),
        object=obj,
        version=version,
        created_at=_from_text(created),
        updated_at=_from_text(updated),
        meta=_meta_from_text(meta),
    )


def _timer_rows(record: RawRecord, timers: Sequence[Timer]) -> list[_Params]:
    rows = []
    for timer in timers:
        if timer.run_id != record.run_id or timer.workflow_name != record.workflow_name:
            raise InvalidArgument(
                f"timer {timer.kind!r} belongs to run {timer.run_id} of workflow "
                f"{timer.workflow_name!r}, not to run {record.run_id} of workflow "
                f"{record.workflow_name!r}"
            )
        rows.append(
            (
                timer.workflow_name,
                timer.run_id,
                int(timer.status),
                timer.kind,
                _to_text(timer.fire_at),
            )
        )
    return rows


# -- errors ----------------------------------------------------------------------------


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _is_busy(exc: sqlite3.Error) -> bool:
    return _primary_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _fails_transaction(exc: Exception) -> bool:
    """Whether an error inside one write dooms the whole transaction (I/O, full, locked)."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.ProgrammingError):
        return False
    return isinstance(exc, sqlite3.DatabaseError)


_ADVICE: Final = {
    sqlite3.SQLITE_BUSY: (
        "another process holds the write lock; make sure only short transactions run "
        "against this file, then retry"
    ),
    sqlite3.SQLITE_LOCKED: "another connection holds a lock; retry",
    sqlite3.SQLITE_FULL: (
        "the disk (or the database's max_page_count) is full; free space and retry"
    ),
    sqlite3.SQLITE_IOERR: "the disk reported an I/O error; check the disk and retry",
    sqlite3.SQLITE_READONLY: (
        "the file or its directory is read-only for this process; make both writable or "
        "choose another path"
    ),
    sqlite3.SQLITE_CANTOPEN: (
        "SQLite cannot open the file; check that the path is a file in an existing, "
        "writable directory"
    ),
    sqlite3.SQLITE_NOTADB: (
        "the file is not a SQLite database; choose another path (actorflow never overwrites it)"
    ),
    sqlite3.SQLITE_CORRUPT: "the database file is corrupt; restore it from a backup",
    sqlite3.SQLITE_PERM: "permission denied; check the file's permissions",
}


def _advice(exc: sqlite3.Error) -> str:
    code = _primary_code(exc)
    if code is not None and code in _ADVICE:
        return _ADVICE[code]
    return "check the file and retry"
