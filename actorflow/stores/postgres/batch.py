"""Group commit for PostgresStore: the writes of many actors in one transaction, one
thread hop, one round trip (pipelined) and one WAL flush, each writer answered on its own.

The first writer to arrive leads: it yields once so that every task runnable now can add
its write, then hands the whole batch to a worker thread, which sends every write's own
statement, pipelined, inside one transaction. A statement that stored nothing (its
version check failed, an unfinished run was in the way, or an earlier attempt of it
committed already) is settled on its own: its diagnosis raises its ActorflowError and the
others go on. While batches are in the threads the next ones queue up, so the batches
grow with the load; a few batches may be in flight at once.

Every write keeps the single-statement form and the writer token of ``_postgres``: a
batch whose answer was lost is retried whole, and each write recognises its own earlier
commit. When the server refuses a batch as a whole (an error that is not a lost
connection), its writes are run again one by one, each in its own transaction, so that
only the write at fault fails.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, final

import trio

from actorflow._model.errors import ActorflowError, StoreError
from actorflow._model.record import RawRecord
from actorflow.stores.postgres.connection import is_transient

if TYPE_CHECKING:
    from actorflow.stores.postgres.connection import _Conn

MAX_BATCH: Final = 500
"""Writes per transaction at most (each is a round trip inside it)."""

Call = Callable[..., Awaitable[Any]]
"""``PostgresStore._call``: runs a function on a pooled connection in a worker thread."""


class _State(enum.Enum):
    QUEUED = enum.auto()
    IN_FLIGHT = enum.auto()
    DONE = enum.auto()


@final
class Write:
    """One write waiting for its batch: its statement, how to settle it when the
    statement stored nothing, how to run it alone, and its answer.

    The write is also the abort function of its parked writer (see :meth:`__call__`).
    """

    __slots__ = (
        "alone",
        "error",
        "lead",
        "owned",
        "params",
        "publish",
        "queue",
        "settle",
        "state",
        "statement",
        "task",
        "what",
    )

    def __init__(
        self,
        what: str,
        statement: bytes,
        params: dict[str, Any],
        settle: Callable[[_Conn], None],
        alone: Callable[[_Conn], None],
        publish: RawRecord,
        owned: bool,
    ) -> None:
        self.what = what
        self.statement = statement
        self.params = params
        self.settle = settle
        """Run after ``statement`` returned no row: returns when the write is stored after
        all (an earlier attempt), raises its ActorflowError when it is refused."""
        self.alone = alone
        """The whole write on its own (statement, then settle when needed)."""
        self.publish = publish
        self.owned = owned
        self.queue: list[Write] = []
        self.state = _State.QUEUED
        self.error: BaseException | None = None
        self.task: trio.lowlevel.Task | None = None
        self.lead = False
        """Set when a leader whose own write is done hands the leading over to this one."""

    def __call__(self, _: Any) -> trio.lowlevel.Abort:
        """Cancelled while queued: the write leaves the queue, never sent, and the writer
        gets Cancelled. Once its batch is in flight the writer waits for the outcome and
        gets it; the cancellation reaches it at its next checkpoint."""
        if self.state is _State.QUEUED and not self.lead:
            self.queue.remove(self)
            self.task = None
            return trio.lowlevel.Abort.SUCCEEDED
        return trio.lowlevel.Abort.FAILED

    def resolve(self, error: BaseException | None) -> None:
        if self.state is _State.DONE:
            return
        self.error = error
        self.state = _State.DONE
        self.wake()

    def wake(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)


_REFUSED: Final = object()
"""What a batch returns when the server refused it as a whole."""


def _run_batch(batch: list[Write], log_lock: tuple[bytes, list[Any]]) -> Callable[[_Conn], Any]:
    def run(conn: _Conn) -> list[BaseException | None] | object:
        import psycopg

        outcomes: list[BaseException | None] = []
        try:
            with conn.transaction():
                with conn.pipeline():
                    # The event-log lock before any row lock (see GroupCommit).
                    conn.execute(*log_lock)
                    cursors = [conn.execute(w.statement, w.params) for w in batch]
                for write, cursor in zip(batch, cursors, strict=True):
                    try:
                        if cursor.fetchone() is None:
                            write.settle(conn)
                    except ActorflowError as exc:  # refused: it stored nothing
                        outcomes.append(exc)
                    else:
                        outcomes.append(None)
        except psycopg.Error as exc:
            if is_transient(conn, exc):
                raise  # an OperationalError: the batch is retried whole
            return _REFUSED
        return outcomes

    return run


@final
class GroupCommit:
    """The write queue of one PostgresStore (see the module docstring).

    Up to ``in_flight`` writers lead at once, each sending batches from the queue. A
    leader whose own write is done leaves as soon as its batch is answered, handing the
    leading to the oldest queued writer, so no writer serves others for long.

    Each batch takes the event-log lock (shared) before any row lock: a transaction that
    held it while waiting for a row lock could stall behind a reader waiting for the
    exclusive lock, which waits for that transaction (a cycle PostgreSQL only breaks after
    ``deadlock_timeout``). A single write is one statement and holds no lock while waiting.
    """

    def __init__(
        self,
        call: Call,
        published: Callable[[list[Write]], None],
        in_flight: int,
        log_lock: tuple[bytes, list[Any]],
    ) -> None:
        self._call = call
        self._published = published
        self._in_flight = in_flight
        self._log_lock = log_lock
        self._queue: list[Write] = []
        self._leaders = 0
        self.idle = trio.Event()
        self.idle.set()

    async def write(self, write: Write) -> None:
        """Store ``write`` with the batch it joins; raises its own error, if any.

        Cancelled before its batch is sent: nothing is written and Cancelled is raised.
        Once sent, the outcome is returned (or its error raised) whatever happens, and a
        cancellation reaches the caller at its next checkpoint: never a write whose fate
        the caller cannot know.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled already: nothing sent
        write.queue = self._queue
        self._queue.append(write)
        if self._leaders < self._in_flight:
            if not self._leaders:
                self.idle = trio.Event()
            self._leaders += 1
            await self._lead(write)
        while write.state is not _State.DONE:
            # Another leader has it (or will take it); or it is handed the leading.
            write.task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(write)
            if write.lead:
                write.lead = False
                await self._lead(write)
        if write.error is not None:
            raise write.error

    async def _lead(self, own: Write) -> None:
        """Send batches until ``own`` is answered (or the queue is empty), then hand the
        leading to the oldest queued writer, or give it up. ``_leaders`` counts this
        leader already."""
        handed = False
        try:
            # Let every task that is runnable now add its write to this batch.
            await trio.lowlevel.cancel_shielded_checkpoint()
            # Others wait on the batches: they finish even if the leader is cancelled.
            with trio.CancelScope(shield=True):
                while self._queue and own.state is not _State.DONE:
                    batch = self._queue[:MAX_BATCH]
                    del self._queue[:MAX_BATCH]
                    for write in batch:
                        write.state = _State.IN_FLIGHT
                    try:
                        await self._send(batch)
                    finally:
                        for write in batch:
                            if write.state is not _State.DONE:
                                write.resolve(StoreError(f"{write.what}: interrupted"))
            successor = next((w for w in self._queue if w.task is not None), None)
            if successor is not None:
                successor.lead = handed = True
                successor.wake()
        finally:
            if not handed:
                self._leaders -= 1
                if not self._leaders:
                    self.idle.set()
                    # Only after an unexpected BaseException: nobody leads what is queued.
                    for orphan in self._queue:
                        orphan.resolve(StoreError(f"{orphan.what}: the write leader failed"))
                    self._queue.clear()

    async def _send(self, batch: list[Write]) -> None:
        if len(batch) == 1:
            await self._one_by_one(batch)  # no transaction around a single statement
            return
        try:
            outcomes = await self._call(
                f"group commit of {len(batch)} writes ({batch[0].what}, ...)",
                _run_batch(batch, self._log_lock),
                write=True,
            )
        except StoreError as exc:
            for write in batch:
                write.resolve(copy.copy(exc))  # its type too (ServerUnavailable, ...)
            return
        if outcomes is _REFUSED:
            await self._one_by_one(batch)
            return
        done = [w for w, error in zip(batch, outcomes, strict=True) if error is None]
        self._published(done)  # commit order is event order: publish, then answer
        for write, error in zip(batch, outcomes, strict=True):
            write.resolve(error)

    async def _one_by_one(self, batch: list[Write]) -> None:
        for write in batch:
            try:
                await self._call(write.what, write.alone, write=True)
            except Exception as exc:
                write.resolve(exc)
            else:
                self._published([write])
                write.resolve(None)
