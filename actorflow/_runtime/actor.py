"""RunActor: the only task that changes its run while a supervisor runs.

Its loop: handle a message if one waits, else do the run's due work (a due timeout, the
step, an automatic resume), else wait for the next deadline (the back-off after an error,
a consume lag) or for a message, whichever comes first. An actor with nothing to do, or
with a long wait ahead, exits: its state is in the store, and the supervisor spawns a new
one when the run is due again.

Collaborators: its ``Mailbox`` (``mailbox.py``), its copy of the run (``RunCopy``,
``run_copy.py``) and what it does to the run (``RunActions``, ``actions.py``).
"""

from __future__ import annotations

import enum
import logging
from contextvars import ContextVar
from datetime import timedelta
from typing import Generic, TypeVar, final

import trio

from actorflow._model.clock import trio_deadline
from actorflow._model.codec import ends_process
from actorflow._model.errors import StoreError, VersionConflict
from actorflow._model.record import RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow._runtime.actions import RunActions
from actorflow._runtime.callbacks import INTERRUPTIBLE
from actorflow._runtime.engine import Engine
from actorflow._runtime.mailbox import WAKE, Ask, Mailbox, Stopped
from actorflow._runtime.ports import ActorHost
from actorflow._runtime.run_copy import RunCopy
from actorflow._runtime.user_code import user_error

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

PASSIVATE_AFTER = 1.0
"""Waits longer than this many seconds passivate the actor instead of holding its slot."""
ASK_ATTEMPTS = 5
RETRY_DELAY = timedelta(seconds=5)
"""When a run whose actor failed is looked at again."""


ACTOR_RUN: ContextVar[tuple[ActorHost, str] | None] = ContextVar(
    "actorflow_actor_run", default=None
)
"""The run whose actor the current task is (or a task started under it), with the host of
that actor: set while an actor runs, so a supervisor can tell which run's user code waits
on another run."""


@final
class RunActor(Generic[T, S]):
    __slots__ = ("actions", "engine", "mailbox", "run", "run_id", "sup", "task")

    def __init__(self, supervisor: ActorHost, run_id: str) -> None:
        self.sup = supervisor
        self.engine: Engine[T, S] = supervisor.engine
        self.run_id = run_id
        self.mailbox = Mailbox()
        self.run = RunCopy(self.engine, run_id)
        self.actions = RunActions(supervisor, self.engine, self.run)
        self.task: trio.lowlevel.Task | None = None

    # -- called by the supervisor (synchronous) ----------------------------------------------

    def look_again(self) -> None:
        """Have the actor reload its run from the store and look for work again (the
        supervisor calls this when the run changed or is due while the actor lives)."""
        self.run.stale = True
        self.mailbox.post_wake()

    @property
    def active_status(self) -> int | None:
        """The status of the run while it is active as this actor knows it (else None)."""
        raw = self.run.raw
        return raw.status if raw is not None and raw.run_state.active else None

    @property
    def known_version(self) -> int:
        """The version of the run this actor last read or wrote (0 before it read it)."""
        raw = self.run.raw
        return 0 if raw is None or self.run.stale else raw.version

    def start_from(self, raw: RawRecord, timers: list[Timer]) -> None:
        """Begin with the run as it was just stored (saves reading it back)."""
        self.run.start_from(raw, timers)

    def interrupt(self) -> None:
        """Stop waiting (a graceful stop, a shard moved away)."""
        self.mailbox.interrupt()

    def interrupt_step(self) -> None:
        """Cancel the step or timeout function in flight (a pause or cancel waited long
        enough for it): nothing of it is stored, and the actor takes its messages."""
        self.run.interrupt_step()

    # -- the task ------------------------------------------------------------------------------

    async def main(self) -> None:
        """The actor's task: its loop, until nothing is left to do or the workflow stops."""
        self.task = trio.lowlevel.current_task()
        token = ACTOR_RUN.set((self.sup, self.run_id))
        try:
            await self._main()
        finally:
            ACTOR_RUN.reset(token)
            self.engine.forget_fresh(self.run_id)

    async def _main(self) -> None:
        sup = self.sup
        self.run.retry_at = sup.retry_at.pop(self.run_id, self.run.retry_at)
        if sup.snoozed:
            self.run.snoozed = sup.snoozed.pop(self.run_id, None)
        try:
            while not sup.stopping and sup.owns(self.run_id):
                message = self.mailbox.take()
                if message is not None:
                    await self._handle_message(message)
                    continue
                look_again_at = await self._do_due_work()
                if self.mailbox.has_waiting():
                    continue
                if look_again_at is None:
                    self._passivate()  # nothing to do and nothing waiting
                    return
                if look_again_at - trio.current_time() > PASSIVATE_AFTER:
                    # A long wait (error backoff, consume lag): give the slot back and let
                    # the supervisor's timer wake a new actor then.
                    self._passivate_until(look_again_at)
                    return
                if look_again_at > trio.current_time():
                    message = await self.mailbox.receive_until(look_again_at)
                    if message is not None:
                        await self._handle_message(message)
        except BaseException as exc:
            # Never let one run take the workflow down: log, and try again later.
            error = user_error(exc, "the run's actor")
            log.error(
                "%s: actor failed; retrying soon",
                self.actions.where(),
                exc_info=error,
                extra=self.actions.fields(),
            )
            sup.wake_at(self.run_id, self.engine.now() + RETRY_DELAY, pinned=True)
        finally:
            self._finish()

    def _finish(self) -> None:
        if self.run.snoozed:
            # Kept for the run's next actor: a skipped timeout waits out its back-off.
            self.sup.snoozed[self.run_id] = self.run.snoozed
        # Synchronous: no message can arrive between the last check and the removal.
        self.sup.forget(self)
        self.mailbox.close()

    # -- the run's due work ------------------------------------------------------------------

    async def _do_due_work(self) -> float | None:
        """Do what is due on the run now: a due timeout, else its step, else an automatic
        resume, or the end of a data deletion that was asked for. Returns the trio time to
        look again (now, when something was done), or None when nothing is left to do."""
        engine, run = self.engine, self.run
        raw = await run.load()
        if not engine.lineage.accepts_now(raw) and not await engine.lineage.accepts(raw):
            # A newer definition wrote it (rolling deploy): left to a worker that has it.
            return None
        now = trio.current_time()
        if now < run.retry_at:
            return run.retry_at
        if raw.run_state.active:
            return await self._do_active_work(raw, now)
        if raw.run_state is RunState.REQUESTED_DATA_DELETED:
            await self.actions.finish_deletion(raw)
            return now
        if raw.run_state is RunState.PAUSED:
            await run.load_timers()
            if run.resume_due(engine.now()):
                await self.actions.resume(raw)
                return now
        return None

    async def _do_active_work(self, raw: RawRecord, now: float) -> float | None:
        """:meth:`_do_due_work` for an active run (``now``: the trio time)."""
        engine, run = self.engine, self.run
        snoozed_until = None
        if await run.load_timers():
            timer, snoozed_until = run.due_timeout(raw, engine.now())
            if timer is not None:
                await self.actions.fire_timeout(raw, timer)
                return now
        spec = engine.definition.steps.get(raw.status)
        if spec is not None and raw.version != run.skipped_version:
            lag = spec.options.consume_lag
            if lag:
                ready = raw.updated_at + lag
                wall_now = engine.now()
                if ready > wall_now:
                    return now + (ready - wall_now).total_seconds()
            await self.actions.run_step(raw, spec)
            return now
        if snoozed_until is not None:
            return trio_deadline(engine.clock, snoozed_until)
        return None

    def _passivate(self) -> None:
        """Idle: hand the run back to the supervisor, to be woken when its next timer (or
        skipped timeout) is due."""
        next_wake_up = self.run.next_wake_up(self.engine.now())
        if next_wake_up is not None:
            when, in_memory_only = next_wake_up
            # A snoozed timeout's time exists in memory only: held whatever its time.
            self.sup.wake_at(self.run_id, when, pinned=in_memory_only)

    def _passivate_until(self, deadline: float) -> None:
        """A long wait ahead: hand the run back to the supervisor, to be woken at trio time
        ``deadline`` (the back-off is kept for the next actor)."""
        now = trio.current_time()
        if self.run.retry_at > now:
            self.sup.retry_at[self.run_id] = self.run.retry_at
        wait = timedelta(seconds=max(0.0, deadline - now))
        self.sup.wake_at(self.run_id, self.engine.now() + wait, pinned=True)

    # -- messages ----------------------------------------------------------------------------

    async def _handle_message(self, message: object) -> None:
        if message is WAKE:
            return
        assert isinstance(message, Ask)
        reply = message.reply
        if reply.withdrawn:
            return  # its caller was cancelled before it was taken: never performed
        reply.taken = True
        try:
            # Cancelled by a caller that gave up and waited the grace period for it
            # (Reply.interrupt): the op stops at its next checkpoint (a write in flight ends).
            with trio.CancelScope() as reply.scope:
                await self._perform(message)
            if reply.scope.cancelled_caught:
                self.run.stale = True
                reply.set(error=Stopped("the caller gave up"))
        except BaseException as exc:
            # Cancelled (graceful stop past its grace) or a store failure while reading:
            # the caller must never wait forever; Stopped makes it apply the op itself.
            # But user code of the op (a callback, a scrub function) that asked to end the
            # process was called: its caller gets that too, never a second call of it.
            message.reply.set(error=exc if ends_process(exc) else Stopped("run actor stopped"))
            raise

    async def _perform(self, message: Ask) -> None:
        """Perform the op of ``message`` on the latest record and answer it."""
        token = INTERRUPTIBLE.set(self.run.interruptible)
        try:
            await self._perform_op(message)
        finally:
            INTERRUPTIBLE.reset(token)

    async def _perform_op(self, message: Ask) -> None:
        run = self.run
        for attempt in range(ASK_ATTEMPTS):
            try:
                raw = await run.load()
                new, timers, value = await message.op(raw)
            except VersionConflict:
                run.stale = True
                if attempt + 1 < ASK_ATTEMPTS:
                    continue
                error = StoreError(f"{self.actions.where()}: kept changing; try again")
                message.reply.set(error=error)
                return
            except BaseException as exc:
                run.stale = True
                message.reply.set(error=user_error(exc, "a callback or control"))
                return
            if new is not None:
                run.stored(new, timers)
                if timers is not None:
                    # The op may come from another Workflow object on this store, whose
                    # engine does not arm timers here: arm them (idempotent otherwise).
                    self.sup.wake_for_timers(self.run_id, timers)
            message.reply.set(value)
            return
