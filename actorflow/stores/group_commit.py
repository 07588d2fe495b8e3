"""Group commit: the writes of many tasks in one transaction, each writer answered alone.

The engine both durable stores use (SQLite with one leader, running its batches inline
on the trio thread, or a batch with a large ``create_runs`` in a worker thread;
PostgreSQL with a few, sending theirs from worker threads). A store
gives it ``send(batch)``, which stores a batch of writes and resolves each of them; the
engine decides who sends what, and when:

- Writers queue. A writer that finds fewer than ``leaders`` leaders at work becomes one:
  it yields once (``cancel_shielded_checkpoint``) so that every task runnable now can add
  its write, then sends the queue in batches of at most ``max_batch`` writes, under a
  shield (other writers wait on those batches), until its own write is answered.
- A leader whose own write is answered hands the leading to the oldest writer still
  queued (which then leads in its turn), or gives it up when nobody is queued: no writer
  serves others for long.
- Every other writer parks its own task (``wait_task_rescheduled``; the write object is
  its own abort function, so a write costs no Event and no closure). Cancelled while its
  write is QUEUED, the write leaves the queue unsent and the writer gets Cancelled. Once
  the write is IN_FLIGHT the writer waits for its outcome and gets it (its value or its
  error); the cancellation reaches it at its next checkpoint. Never a write whose fate
  the caller cannot know.
- A write its ``send`` left unanswered is failed as interrupted; if the last leader dies
  of an unexpected BaseException (KeyboardInterrupt, a bug), the writes still queued are
  failed rather than left hanging.
- :attr:`GroupCommit.idle` is set whenever no leader is at work (closing waits on it).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar

import trio

R = TypeVar("R")

INTERRUPTED: Final = "the write was interrupted"
"""The reason given to ``fail`` for a write its batch's ``send`` left unanswered."""
ORPHANED: Final = "the write leader failed"
"""The reason given to ``fail`` for a queued write no leader is left to send."""


class State(enum.Enum):
    QUEUED = enum.auto()
    IN_FLIGHT = enum.auto()
    DONE = enum.auto()


class Write(Generic[R]):
    """One write waiting for its batch, and its answer (a store subclasses it with what
    its ``send`` needs). The write is also the abort function of its parked writer."""

    __slots__ = ("error", "lead", "queue", "state", "task", "value")

    queue: list[Any]
    """The queue it waits in (set when it is queued)."""

    def __init__(self) -> None:
        self.state = State.QUEUED
        self.value: R | None = None
        self.error: BaseException | None = None
        self.task: trio.lowlevel.Task | None = None
        self.lead = False
        """Set when a leader whose own write is done hands the leading over to this one."""

    def __call__(self, _: Any) -> trio.lowlevel.Abort:
        """Cancelled while queued: the write leaves the queue, never sent, and the writer
        gets Cancelled. Once its batch is in flight (or it is handed the leading) the
        writer waits for the outcome and gets it."""
        if self.state is State.QUEUED and not self.lead:
            self.queue.remove(self)
            self.task = None
            return trio.lowlevel.Abort.SUCCEEDED
        return trio.lowlevel.Abort.FAILED

    def resolve(self, value: Any, error: BaseException | None) -> None:
        """Answer the write (once; later answers are ignored) and wake its writer."""
        if self.state is State.DONE:
            return
        self.value = value
        self.error = error
        self.state = State.DONE
        self.wake()

    def wake(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def result(self) -> R:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


W = TypeVar("W", bound=Write[Any])


class GroupCommit(Generic[W]):
    """The write queue of one store (see the module docstring).

    Args:
        send: stores a batch (``max_batch`` writes at most, in queue order) and resolves
            each write with its value or error; called by a leader under a shield.
        leaders: how many leaders may send batches at once.
        max_batch: writes per batch at most.
        fail: the error a write gets when it is never answered: ``fail(write, reason)``
            with ``reason`` one of :data:`INTERRUPTED`, :data:`ORPHANED`.
    """

    def __init__(
        self,
        send: Callable[[list[W]], Awaitable[None]],
        *,
        leaders: int,
        max_batch: int,
        fail: Callable[[W, str], BaseException],
    ) -> None:
        if leaders < 1 or max_batch < 1:
            raise ValueError("a group commit needs at least one leader and one write a batch")
        self._send = send
        self._max_leaders = leaders
        self._max_batch = max_batch
        self._fail = fail
        self.queue: list[W] = []
        """The writes waiting for a batch (read by tests)."""
        self.leaders = 0
        """Leaders at work now."""
        self.idle = trio.Event()
        """Set while no leader is at work."""
        self.idle.set()

    async def write(self, write: W) -> Any:
        """Store ``write`` with the batch it joins; return its value or raise its error.

        Cancelled before its batch is sent: nothing is written and Cancelled is raised.
        Once sent, the outcome is returned (or its error raised) whatever happens.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled already: nothing sent
        write.queue = self.queue
        self.queue.append(write)
        if self.leaders < self._max_leaders:
            if not self.leaders:
                self.idle = trio.Event()
            self.leaders += 1
            await self._lead(write)
        while write.state is not State.DONE:
            # Another leader has it (or will take it); or it is handed the leading.
            write.task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(write)
            if write.lead:
                write.lead = False
                await self._lead(write)
        return write.result()

    async def _lead(self, own: W) -> None:
        """Send batches until ``own`` is answered (or the queue is empty), then hand the
        leading to the oldest queued writer, or give it up. ``leaders`` counts this
        leader already."""
        handed = False
        try:
            # Let every task that is runnable now add its write to this batch.
            await trio.lowlevel.cancel_shielded_checkpoint()
            # Others wait on the batches: they finish even if the leader is cancelled.
            with trio.CancelScope(shield=True):
                while self.queue and own.state is not State.DONE:
                    await self._send_next()
            successor = next((w for w in self.queue if w.task is not None), None)
            if successor is not None:
                successor.lead = handed = True
                successor.wake()
        finally:
            if not handed:
                self.leaders -= 1
                if not self.leaders:
                    self.idle.set()
                    # Only after an unexpected BaseException: nobody leads what is queued.
                    for orphan in self.queue:
                        orphan.resolve(None, self._fail(orphan, ORPHANED))
                    self.queue.clear()

    async def _send_next(self) -> None:
        batch = self.queue[: self._max_batch]
        del self.queue[: self._max_batch]
        for write in batch:
            write.state = State.IN_FLIGHT
        try:
            await self._send(batch)
        finally:
            for write in batch:
                if write.state is not State.DONE:
                    write.resolve(None, self._fail(write, INTERRUPTED))
