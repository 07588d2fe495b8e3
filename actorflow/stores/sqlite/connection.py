"""SQLiteStore's database file: opening and checking it, its connection, reads with
back-off, the checkpointer and watcher threads, the worker lock, and SQLite's errors
turned into StoreErrors that say what to do."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TypeVar, final

import attrs
import trio

from actorflow._model.errors import ActorflowError, StoreError
from actorflow.stores import realtime
from actorflow.stores.feed import ChangeFeed
from actorflow.stores.sqlite import schema as _sqlite_schema

R = TypeVar("R")

OPEN_BUSY_TIMEOUT: Final = 5.0
FIRST_BACKOFF: Final = 0.001
MAX_BACKOFF: Final = 0.1
WATCH_INTERVAL: Final = 0.05
"""Real seconds between two looks of the watcher thread at ``PRAGMA data_version``."""
CHECKPOINT_GAP: Final = 0.05
"""Real seconds between two checkpoints of the checkpointer thread (at most)."""
WAL_BOUND_PAGES: Final = 16_384
"""The writer checkpoints inline only when the WAL grew past this many pages (64 MiB at
SQLite's default 4 KiB pages): the checkpointer thread could not keep up, or a reader held
an old snapshot all along. Normally the WAL stays well below (see docs/stores.md)."""
GIL_HANDOFF: Final = 0.0002
"""Python's thread switch interval (seconds) while a write runs in a worker thread: the
thread takes the GIL back after each statement within this, not within Python's default
5 ms (see :func:`quick_gil_handoff`)."""
WORKER_LOCK_SUFFIX: Final = "-worker.lock"
"""The lock file beside the database that a process running workflows holds."""


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


@final
class _Handoff:
    """How many writes run in worker threads now, and the switch interval before."""

    lock = threading.Lock()
    running = 0
    saved = 0.005


@contextlib.contextmanager
def quick_gil_handoff() -> Iterator[None]:
    """Lower Python's thread switch interval while a write runs in a worker thread.

    sqlite3 lets go of the GIL for every statement and must take it back afterwards.
    While the trio thread builds the next rows (trigger_many), it holds the GIL and
    gives it up only when the switch interval has passed: 5 ms by default, so a write
    of a dozen statements would wait far longer for the GIL than for SQLite. The old
    interval is back when the last such write is done.
    """
    with _Handoff.lock:
        if _Handoff.running == 0:
            _Handoff.saved = sys.getswitchinterval()
            sys.setswitchinterval(min(GIL_HANDOFF, _Handoff.saved))
        _Handoff.running += 1
    try:
        yield
    finally:
        with _Handoff.lock:
            _Handoff.running -= 1
            if _Handoff.running == 0:
                sys.setswitchinterval(_Handoff.saved)


_OPEN: dict[str, weakref.WeakSet[Database]] = {}
"""Open databases by resolved file path (see :meth:`Database.tell_siblings`)."""


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
class Database:
    """One SQLiteStore's file and its connection (reopened after a failure), the threads
    that watch and checkpoint it, and the reads with back-off on a locked database."""

    def __init__(self, path: Path, synchronous: str, lock_timeout: float, feed: ChangeFeed) -> None:
        self.path = path
        self.synchronous = synchronous
        self.lock_timeout = lock_timeout
        self.feed = feed
        self.closed = False
        self.stats = SQLiteStats()
        """Write-path counters."""
        try:
            self._check_path()
        except OSError as exc:  # a name too long, a symlink loop, a path not permitted
            raise self.fail(
                f"the path cannot be used: {exc.strerror or exc}", "choose another path"
            ) from None
        self._conn: sqlite3.Connection | None = self._open(migrate=True)
        self.connections = 1
        """Connections opened so far (a reopened connection counts data_version anew)."""
        self.watcher: _Watcher | None = None
        self.checkpointer: _Checkpointer | None = None
        self._writer_thread = trio.CapacityLimiter(1)
        """write_in_thread's: one transaction at a time, never waiting for other threads."""
        self._stopped_threads: list[threading.Thread] = []
        """The watcher and checkpointer threads told to stop, joined before the close."""
        self._thread_write: trio.Event | None = None
        """Set while a write transaction runs in a worker thread on the connection."""
        self._key = str(self.path.resolve())
        _OPEN.setdefault(self._key, weakref.WeakSet()).add(self)

    def watch(self) -> None:
        """Make sure a watcher thread reports other connections' commits to this trio run
        (started by the first waiter; see :meth:`ChangeFeed.wait_external`)."""
        if self.closed:
            return
        token = trio.lowlevel.current_trio_token()
        watcher = self.watcher
        if watcher is not None and watcher.token is token and watcher.alive():
            return
        if watcher is not None:
            watcher.stop()
        self.watcher = _Watcher(self.path, token, self.noticed)

    def nudge_checkpointer(self) -> None:
        checkpointer = self.checkpointer
        if checkpointer is None or not checkpointer.thread.is_alive():
            if self.closed:
                return
            checkpointer = self.checkpointer = _Checkpointer(self.path)
        checkpointer.nudge()

    def noticed(self) -> None:
        self.stats.changes_noticed += 1
        self.feed.notice_external()

    def tell_siblings(self) -> None:
        """Other SQLiteStore objects on this file, watching in this trio run, learn of the
        commit at once: no watcher thread (real time) in between, so two "processes" in
        one test under the autojump clock see each other's writes at the same virtual
        instant."""
        siblings = _OPEN.get(self._key)
        if not siblings or len(siblings) < 2:
            return
        token = trio.lowlevel.current_trio_token()
        for other in list(siblings):
            watcher = other.watcher
            if other is not self and watcher is not None and watcher.token is token:
                other.noticed()

    # -- opening -----------------------------------------------------------------------

    def fail(self, problem: str, advice: str) -> StoreError:
        return StoreError(f"SQLite store {str(self.path)!r}: {problem}; {advice}")

    def _check_path(self) -> None:
        """Refuse paths SQLite could not use, with a message better than SQLite's."""
        directory = self.path.parent
        if not directory.is_dir():
            raise self.fail(
                f"the directory {str(directory)!r} does not exist",
                "create it first or choose another path",
            )
        if self.path.is_dir():
            raise self.fail("the path is a directory", "give the path of a database file")
        effective = os.access in os.supports_effective_ids
        if self.path.exists() and not os.access(
            self.path, os.R_OK | os.W_OK, effective_ids=effective
        ):
            raise self.fail(
                "the file is not readable and writable by this process",
                "make it writable (chmod/chown) or choose another path",
            )
        if not os.access(directory, os.W_OK | os.X_OK, effective_ids=effective):
            raise self.fail(
                f"the directory {str(directory)!r} is not writable by this process (SQLite "
                "creates its -wal and -shm files beside the database)",
                "make the directory writable or choose another path",
            )

    def _open(self, *, migrate: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=OPEN_BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self.error("cannot open the database", exc) from exc
        try:
            if migrate:
                # Refuse other files before anything (even the journal mode) changes them.
                _sqlite_schema.inspect(conn, repr(str(self.path)))
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise self.fail(
                    f"SQLite refused WAL mode (journal mode is {mode!r})",
                    "use a file on a local disk",
                )
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
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
                    _sqlite_schema.migrate(conn, repr(str(self.path)))
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
            raise self.error("cannot open the database", exc) from exc
        return conn

    def check_open(self) -> None:
        """Raise StoreError when the store is closed (without opening anything: while a
        write runs in a worker thread, only that thread may reopen the connection)."""
        if self.closed:
            raise self.fail("the store is closed", "open a new SQLiteStore")

    def connection(self, *, closing_ok: bool = False) -> sqlite3.Connection:
        """The open connection (reopened after a failure); ``closing_ok`` for aclose's wait.
        Called by the writer (on the trio thread, or in the worker thread of
        write_in_thread while the trio thread's reads wait) and by reads."""
        if self.closed and not closing_ok:
            raise self.fail("the store is closed", "open a new SQLiteStore")
        if self._conn is None:
            self._conn = self._open(migrate=False)
            self.connections += 1
        return self._conn

    def error(self, what: str, exc: sqlite3.Error) -> StoreError:
        return self.fail(f"{what}: {exc}", advice(exc))

    def rollback(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        if conn.in_transaction:
            # The connection is unusable; a fresh one is opened for the next operation.
            conn.close()
            self._conn = None

    async def wipe_log(self, run_id: str) -> None:
        """Checkpoint the WAL into the database file and truncate it to zero bytes.

        The WAL holds every page written since the last checkpoint, old objects included;
        ``secure_delete`` zeroes them in the database file. Another connection reading an
        older snapshot (or checkpointing: the checkpointer thread) keeps the checkpoint
        from finishing: retried with back-off for up to ``lock_timeout`` seconds of real
        time (the other connections live in real time, also under a virtual clock: an
        autojump clock is held still meanwhile, so no timer fires during the wait), then
        StoreError (the scrub itself is stored).
        """
        deadline = realtime.now() + self.lock_timeout
        delay = FIRST_BACKOFF
        while True:
            await trio.lowlevel.checkpoint()
            await self._no_thread_write()
            problem = ""
            try:
                row = self.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if row is None or row[0] != 0:
                    problem = "another connection is reading or writing"
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise self.error("truncating the write-ahead log failed", exc) from exc
                problem = str(exc)
            if not problem:
                return
            now = realtime.now()
            if now >= deadline:
                raise self.fail(
                    f"run {run_id}: its data is scrubbed in the database, but the write-ahead "
                    f"log (which may still hold old copies) could not be truncated within "
                    f"{self.lock_timeout:g} s ({problem})",
                    "call delete_data again when the other processes are idle",
                )
            await realtime.wait_for_others(min(delay, deadline - now))
            delay = min(delay * 2, MAX_BACKOFF)

    async def write_in_thread(self, write: Callable[[], R]) -> R:
        """Run ``write`` (a whole transaction on :meth:`connection`) in a worker thread.

        The trio thread runs on meanwhile (trigger_many builds its next rows), but no
        read uses the connection until the transaction ended: it would see the rows not
        yet committed. An autojump clock stands still meanwhile. Not cancellable: the
        transaction finishes (the group commit sends its batches under a shield anyway).
        """
        done = self._thread_write = trio.Event()
        try:
            with quick_gil_handoff():
                # A limiter of its own: trio's default one is shared with the user's
                # threads, and reads wait for this transaction.
                return await realtime.to_thread(write, limiter=self._writer_thread)
        finally:
            self._thread_write = None
            done.set()

    async def _no_thread_write(self) -> None:
        """Wait until no write transaction runs in a worker thread (see write_in_thread)."""
        while (writing := self._thread_write) is not None:
            await writing.wait()

    async def read(self, what: str, query: Callable[[sqlite3.Connection], R]) -> R:
        await trio.lowlevel.checkpoint()
        self.stats.reads += 1
        deadline = trio.current_time() + self.lock_timeout
        delay = FIRST_BACKOFF
        while True:
            await self._no_thread_write()
            conn = self.connection()
            try:
                return query(conn)
            except sqlite3.Error as exc:
                now = trio.current_time()
                if not is_busy(exc) or now >= deadline:
                    raise self.error(f"{what} failed", exc) from exc
            await trio.sleep(min(delay, deadline - now))
            delay = min(delay * 2, MAX_BACKOFF)

    async def read_in_thread(self, what: str, query: Callable[[sqlite3.Connection], R]) -> R:
        """Run a long read-only ``query`` on a new connection in a worker thread (WAL
        readers never wait for the writer). Under trio's autojump clock virtual time stands
        still meanwhile (trio issue #456): a test's deadlines and sleeps are not pushed
        past while the thread works."""
        self.check_open()

        def run() -> R:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            except sqlite3.Error as exc:
                raise self.error(f"{what} failed", exc) from exc
            try:
                conn.execute("PRAGMA query_only = 1")
                return query(conn)
            except sqlite3.Error as exc:
                raise self.error(f"{what} failed", exc) from exc
            finally:
                conn.close()

        return await realtime.to_thread(run)

    def close(self) -> None:
        """Stop the threads and close the connection (a batch in flight is done)."""
        self.closed = True
        if self.watcher is not None:
            self.watcher.stop()
            self._stopped_threads.append(self.watcher.thread)
            self.watcher = None
        siblings = _OPEN.get(self._key)
        if siblings is not None:
            siblings.discard(self)
            if not siblings:
                del _OPEN[self._key]
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self._stopped_threads.append(self.checkpointer.thread)
            self.checkpointer = None

    async def close_connection(self) -> None:
        conn, self._conn = self._conn, None
        threads, self._stopped_threads = self._stopped_threads, []
        if conn is None and not threads:
            return

        def close() -> None:
            # The watcher and checkpointer close their connections as they end (the
            # checkpointer may be copying pages a while): once they did, closing the
            # file's last connection checkpoints the whole WAL into it and removes it. A
            # WAL left behind (up to 64 MiB after a backfill) is read whole by the next
            # process that opens the file.
            for thread in threads:
                thread.join()
            if conn is not None:
                conn.close()

        with trio.CancelScope(shield=True):
            await realtime.to_thread(close)


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


WORKER_LOCKS: Final = _WorkerLocks()


# -- errors ----------------------------------------------------------------------------


def primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_busy(exc: sqlite3.Error) -> bool:
    return primary_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def fails_transaction(exc: Exception) -> bool:
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


def advice(exc: sqlite3.Error) -> str:
    code = primary_code(exc)
    if code is not None and code in _ADVICE:
        return _ADVICE[code]
    return "check the file and retry"
