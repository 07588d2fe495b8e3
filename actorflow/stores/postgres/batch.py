"""Group commit for PostgresStore: the writes of many actors in one transaction, one
thread hop, one round trip (pipelined) and one WAL flush, each writer answered on its own.

The first writer to arrive leads: it yields once so that every task runnable now can add
its write, then hands the whole batch to a worker thread, which sends every write's own
statement, pipelined, inside one transaction (consecutive writes with the same statement
as one ``executemany``, which saves psycopg a cursor and a query conversion per write). A
statement that stored nothing (its version check failed, an unfinished run was in the
way, or an earlier attempt of it committed already) is settled on its own: its diagnosis
raises its ActorflowError and the others go on. While batches are in the threads the next
ones queue up, so the batches grow with the load; a few batches may be in flight at once.
Queueing, leading and cancellation are the rules of :mod:`actorflow.stores.group_commit`;
this module sends.

Every write keeps the single-statement form and the writer token of ``_postgres``: a
batch whose answer was lost is retried whole, and each write recognises its own earlier
commit. When the server refuses a batch as a whole (an error that is not a lost
connection), its writes are run again one by one, each in its own transaction, so that
only the write at fault fails.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, final

from actorflow._model.errors import ActorflowError, StoreError
from actorflow._model.record import RawRecord
from actorflow.stores import group_commit
from actorflow.stores.postgres.connection import is_transient

if TYPE_CHECKING:
    from actorflow.stores.postgres.connection import _Conn

MAX_BATCH: Final = 500
"""Writes per transaction at most (each is a round trip inside it)."""

Call = Callable[..., Awaitable[Any]]
"""``PostgresStore._call``: runs a function on a pooled connection in a worker thread."""


@final
class Write(group_commit.Write[None]):
    """One write waiting for its batch: its statement, how to settle it when the
    statement stored nothing, and how to run it alone."""

    __slots__ = ("alone", "owned", "params", "publish", "settle", "statement", "what")

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
        super().__init__()
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
                    cursors = _send(conn, batch)
                rows = [row for cursor in cursors for row in _first_rows(cursor)]
                for write, row in zip(batch, rows, strict=True):
                    try:
                        if row is None:
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


def _send(conn: _Conn, batch: list[Write]) -> list[Any]:
    """Send the batch's statements in order, pipelined: each run of consecutive writes
    with the same statement as one ``executemany`` (one cursor, one query conversion);
    returns the cursors, in order."""
    cursors: list[Any] = []
    for statement, run in itertools.groupby(batch, key=lambda w: w.statement):
        cursor = conn.cursor()
        cursor.executemany(statement, [w.params for w in run], returning=True)
        cursors.append(cursor)
    return cursors


def _first_rows(cursor: Any) -> list[Any]:
    """The first row (or None) of each statement an ``executemany`` cursor ran."""
    return [result.fetchone() for result in cursor.results()]


@final
class GroupCommit(group_commit.GroupCommit[Write]):
    """The group commit of one PostgresStore (see the module docstring and
    :mod:`actorflow.stores.group_commit`): up to ``in_flight`` leaders, each batch sent in
    a worker thread.

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
        super().__init__(self._send_batch, leaders=in_flight, max_batch=MAX_BATCH, fail=_fail)
        self._call = call
        self._published = published
        self._log_lock = log_lock

    async def _send_batch(self, batch: list[Write]) -> None:
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
                write.resolve(None, copy.copy(exc))  # its type too (ServerUnavailable, ...)
            return
        if outcomes is _REFUSED:
            await self._one_by_one(batch)
            return
        done = [w for w, error in zip(batch, outcomes, strict=True) if error is None]
        self._published(done)  # commit order is event order: publish, then answer
        for write, error in zip(batch, outcomes, strict=True):
            write.resolve(None, error)

    async def _one_by_one(self, batch: list[Write]) -> None:
        for write in batch:
            try:
                await self._call(write.what, write.alone, write=True)
            except Exception as exc:
                write.resolve(None, exc)
            else:
                self._published([write])
                write.resolve(None, None)


def _fail(write: Write, reason: str) -> StoreError:
    return StoreError(f"{write.what}: {reason}")
