"""RunActor: the only task that changes its run while a supervisor runs.

Loop: take a message if one waits, else do the run's due work (a step, a due timeout, an
automatic resume), else exit. Waits (error backoff, consume lag) are receives with a
deadline, so a callback or control call interrupts them. An actor that has nothing to do
exits at once: its state is in the store and the supervisor spawns a new one on demand.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar, final

import attrs
import trio

from actorflow._model.clock import trio_deadline
from actorflow._model.definition import StepSpec, fn_name
from actorflow._model.errors import ActorflowError, StepError, StoreError, VersionConflict
from actorflow._model.record import RawRecord, Timer
from actorflow._model.run import SpecialResult
from actorflow._model.run_state import RunState
from actorflow._runtime.engine import RESUME, Engine
from actorflow._runtime.observe import run_fields
from actorflow._runtime.ports import ActorHost
from actorflow._runtime.user_code import user_error

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

MAILBOX_SIZE = 16
PASSIVATE_AFTER = 1.0
"""Waits longer than this many seconds passivate the actor instead of holding its slot."""
ASK_ATTEMPTS = 5
RETRY_DELAY = timedelta(seconds=5)
"""When a run whose actor failed is looked at again."""
MIN_SNOOZE = timedelta(milliseconds=10)
"""The shortest wait before a skipped timeout fires again (``error_backoff`` may be 0)."""

Op = Callable[[RawRecord], Awaitable[tuple[RawRecord | None, list[Timer] | None, Any]]]
"""An operation run by the actor on its latest record: returns (new record, timers, reply)."""


class Stopped(ActorflowError):
    """The actor stopped before it handled the message; the caller does it inline."""


@final
class Reply:
    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        if not self._done.is_set():
            self._value, self._error = value, error
            self._done.set()

    async def wait(self) -> Any:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


@attrs.frozen
class Ask:
    op: Op
    reply: Reply


WAKE = object()
NOT_STARTED = object()
"""What a step or timeout returns that a graceful stop kept from starting."""
NO_TOKEN = object()
"""A step's token when only its lag alert is on (no observer to tell)."""

_Mailbox = tuple[trio.MemorySendChannel[object], trio.MemoryReceiveChannel[object]]


class _StoppedBeforeStart(Exception):
    """A graceful stop began while the step waited for its concurrency slot."""


def _resume_due(timers: list[Timer], now: datetime) -> bool:
    """Whether the automatic resume among ``timers`` is due."""
    return any(timer.kind == RESUME and timer.fire_at <= now for timer in timers)


async def _call_user(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Call a user function; a StoreError it raises is its own error, not ours."""
    try:
        return await fn(*args)
    except StoreError as exc:
        raise StepError(f"{fn_name(fn)} raised {type(exc).__name__}: {exc}") from exc
    except trio.Cancelled as exc:
        raise user_error(exc, fn_name(fn)) from exc


@final
class RunActor(Generic[T, S]):
    def __init__(self, supervisor: ActorHost, run_id: str) -> None:
        self.sup = supervisor
        self.engine: Engine[T, S] = supervisor.engine
        self.run_id = run_id
        # The mailbox is made on first use: most actors never get a message, and a
        # memory channel is about eight objects for the garbage collector to walk.
        self._mailbox: _Mailbox | None = None
        self._closed = False
        self.reload_needed = True
        self._raw: RawRecord | None = None
        self._own: RawRecord | None = None
        """The version this actor stored last (its next step takes it up at once)."""
        self._timers: list[Timer] | None = None
        self._retry_at = -math.inf
        self._skipped_version = 0
        self._wait_scope: trio.CancelScope | None = None
        self._snoozed: dict[Timer, datetime] | None = None
        """Timers whose timeout returned run.skip(): the wall time each may fire again."""
        self.task: trio.lowlevel.Task | None = None

    # -- the mailbox -----------------------------------------------------------------------

    @property
    def send(self) -> trio.MemorySendChannel[object]:
        """Where messages for this actor go (BrokenResourceError once it has stopped)."""
        return self._open_mailbox()[0]

    def _open_mailbox(self) -> _Mailbox:
        if self._mailbox is None:
            self._mailbox = trio.open_memory_channel[object](MAILBOX_SIZE)
            if self._closed:
                self._mailbox[1].close()
        return self._mailbox

    def _take(self) -> object:
        """The next waiting message; raises WouldBlock when there is none."""
        if self._mailbox is None:
            raise trio.WouldBlock
        return self._mailbox[1].receive_nowait()

    def _poll(self) -> object | None:
        """The next waiting message, or None (no exception: this runs on every step)."""
        if self._mailbox is None or not self._mailbox[1].statistics().current_buffer_used:
            return None
        try:
            return self._mailbox[1].receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return None

    # -- called by the supervisor (synchronous) ----------------------------------------------

    def look_again(self) -> None:
        """Have the actor reload its run from the store and look for work again (the
        supervisor calls this when the run changed or is due while the actor lives)."""
        self.reload_needed = True
        with contextlib.suppress(
            trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            self.send.send_nowait(WAKE)

    @property
    def active_status(self) -> int | None:
        """The status of the run while it is active as this actor knows it (else None)."""
        raw = self._raw
        return raw.status if raw is not None and raw.run_state.active else None

    @property
    def known_version(self) -> int:
        """The version of the run this actor last read or wrote (0 before it read it)."""
        return 0 if self._raw is None or self.reload_needed else self._raw.version

    def start_from(self, raw: RawRecord, timers: list[Timer]) -> None:
        """Begin with the run as it was just stored (saves reading it back)."""
        if self._raw is None and self.reload_needed:
            self._raw, self._timers = raw, timers
            self.reload_needed = False

    def interrupt(self) -> None:
        """Stop waiting (used by a graceful stop)."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    # -- the task ------------------------------------------------------------------------------

    async def main(self) -> None:
        sup = self.sup
        self.task = trio.lowlevel.current_task()
        self._retry_at = sup.retry_at.pop(self.run_id, -math.inf)
        if sup.snoozed:
            self._snoozed = sup.snoozed.pop(self.run_id, None)
        try:
            # The loop is written here, not in a method of its own: one coroutine frame
            # less for every run in flight.
            while not sup.stopping and sup.owns(self.run_id):
                message = self._poll()
                if message is None:
                    spec = self._ready_step()
                    if spec is not None and self._raw is not None:
                        await self._step(self._raw, spec)  # the common case
                        continue
                if not await self._turn(message):
                    return
        except (Exception, trio.Cancelled) as exc:
            # Never let one run take the workflow down: log, and try again later.
            error = user_error(exc, "the run's actor")
            log.error(
                "%s: actor failed; retrying soon",
                self._where(),
                exc_info=error,
                extra=self._fields(),
            )
            sup.wake_at(self.run_id, self.engine.now() + RETRY_DELAY, pinned=True)
        finally:
            self._close()

    def _close(self) -> None:
        if self._snoozed:
            # Kept for the run's next actor: a skipped timeout waits out its back-off.
            self.sup.snoozed[self.run_id] = self._snoozed
        # Synchronous: no message can arrive between the last check and the removal.
        self.sup.forget(self)
        while True:
            try:
                message = self._take()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(message, Ask):
                message.reply.set(error=Stopped("run actor stopped"))
        self._closed = True
        if self._mailbox is not None:
            self._mailbox[1].close()

    def _arm_pending_timers(self) -> None:
        """Before passivating: make sure the supervisor wakes the run for its next timer."""
        if self._timers:
            now = self.engine.now()
            future = [(self._fires_at(t), t) for t in self._timers]
            future = [(w, t) for w, t in future if w > now]
            if future:
                when, timer = min(future, key=lambda pair: pair[0])
                # A snoozed timeout's time exists in memory only: held whatever its time.
                self.sup.wake_at(self.run_id, when, pinned=when != timer.fire_at)

    def _wake_later(self, deadline: float) -> None:
        """Passivating during a long wait: have a new actor look at the run at trio time
        ``deadline`` (and keep the back-off for it)."""
        now = trio.current_time()
        if self._retry_at > now:
            self.sup.retry_at[self.run_id] = self._retry_at
        wait = timedelta(seconds=max(0.0, deadline - now))
        self.sup.wake_at(self.run_id, self.engine.now() + wait, pinned=True)

    def _fires_at(self, timer: Timer) -> datetime:
        """When ``timer`` is due: its time, or later when its timeout skipped."""
        snoozed = self._snoozed
        if snoozed is None:
            return timer.fire_at
        return snoozed.get(timer, timer.fire_at)

    def _snooze(self, timer: Timer, backoff: timedelta) -> None:
        """The timeout of ``timer`` skipped: it fires again after ``backoff``, nothing stored."""
        timers = self._timers or []
        snoozed = {t: w for t, w in (self._snoozed or {}).items() if t in timers}
        snoozed[timer] = self.engine.now() + max(backoff, MIN_SNOOZE)
        self._snoozed = snoozed

    def _where(self) -> str:
        return f"workflow {self.engine.name!r} run {self.run_id}"

    def _fields(self) -> dict[str, Any]:
        """The run's identifiers as ``extra=`` fields of a log record."""
        if self._raw is not None:
            return run_fields(self._raw)
        return {"workflow_name": self.engine.name, "run_id": self.run_id}

    async def _turn(self, message: object | None) -> bool:
        """A turn of the actor's loop other than a plain step: handle ``message``, or do
        the run's due work, or wait. False when the actor should stop (passivate)."""
        if message is not None:
            await self._handle(message)
            return True
        deadline = await self._work()
        if deadline is None:
            message = self._poll()
            if message is None:
                self._arm_pending_timers()
                return False  # nothing to do and nothing waiting: passivate
            await self._handle(message)
            return True
        now = trio.current_time()
        if deadline - now > PASSIVATE_AFTER:
            # A long wait (error backoff, consume lag): give the slot back and let the
            # supervisor's timer wake a new actor then.
            message = self._poll()
            if message is None:
                self._wake_later(deadline)
                return False
            await self._handle(message)
            return True
        if deadline > now:
            await self._wait(deadline)
        return True

    async def _wait(self, deadline: float) -> None:
        message: object = None
        with trio.CancelScope(deadline=deadline) as scope:
            self._wait_scope = scope
            try:
                message = await self._open_mailbox()[1].receive()
            finally:
                self._wait_scope = None
        if message is not None:
            await self._handle(message)

    async def _handle(self, message: object) -> None:
        if message is WAKE:
            return
        assert isinstance(message, Ask)
        try:
            await self._answer(message)
        except BaseException:
            # Cancelled (graceful stop past its grace) or a store failure while reading:
            # the caller must never wait forever; Stopped makes it apply the op itself.
            message.reply.set(error=Stopped("run actor stopped"))
            raise

    async def _answer(self, message: Ask) -> None:
        for attempt in range(ASK_ATTEMPTS):
            try:
                raw = await self._current()
                new, timers, value = await message.op(raw)
            except VersionConflict:
                self.reload_needed = True
                if attempt + 1 < ASK_ATTEMPTS:
                    continue
                message.reply.set(error=StoreError(f"{self._where()}: kept changing; try again"))
                return
            except (Exception, trio.Cancelled) as exc:
                error = user_error(exc, "a callback or control")
                self.reload_needed = True
                message.reply.set(error=error)
                return
            if new is not None:
                self._stored(new, timers)
                if timers is not None:
                    # The op may come from another Workflow object on this store, whose
                    # engine does not arm timers here: arm them (idempotent otherwise).
                    self.sup.wake_for_timers(self.run_id, timers)
            message.reply.set(value)
            return

    async def _current(self) -> RawRecord:
        if self._raw is None or self.reload_needed:
            raw = await self.engine.lookup(self.run_id)
            self._timers = None
            if raw.meta.definition != self.engine.fingerprint:
                # Written by another definition: migrate it (or park it) as it loads.
                upgraded = await self.engine.upgrade(raw)
                if upgraded is not raw:
                    raw = upgraded
            self._raw = raw
            self.reload_needed = False
        return self._raw

    def _stored(self, new: RawRecord, timers: list[Timer] | None) -> None:
        if (
            self._raw is None
            or new.status != self._raw.status
            or new.run_state != self._raw.run_state
        ):
            self._retry_at = -math.inf
        self._raw = self._own = new
        if timers is not None:
            self._timers = timers

    async def _run_timers(self) -> list[Timer]:
        if self._timers is None:
            self._timers = await self.engine.store.list_timers(self.engine.name, self.run_id)
        return self._timers

    def _ready_step(self) -> StepSpec | None:
        """The step of the run (``_raw``) when it is all there is to do now, known without
        reading anything: no timers, no backoff, no consume lag. Else None, and
        :meth:`_work` sorts it out."""
        raw = self._raw
        if raw is None or self.reload_needed or self._timers is None or self._timers:
            return None
        if not raw.run_state.active or raw.version == self._skipped_version:
            return None
        if raw.meta.definition is not self.engine.fingerprint and not self.engine.accepts_now(raw):
            return None
        if self._retry_at != -math.inf and trio.current_time() < self._retry_at:
            return None
        spec = self.engine.definition.steps.get(raw.status)
        if spec is None or spec.options.consume_lag:
            return None
        return spec

    async def _work(self) -> float | None:
        """Do the run's due work. Returns when to look again, or None when idle."""
        engine = self.engine
        raw = self._raw
        if raw is None or self.reload_needed:
            raw = await self._current()
        if not engine.accepts_now(raw) and not await engine.accepts(raw):
            # A newer definition wrote it (rolling deploy): left to a worker that has it.
            return None
        now_trio = trio.current_time()
        if now_trio < self._retry_at:
            return self._retry_at
        timers = self._timers
        if raw.run_state.active:
            if timers is None:
                timers = await self._run_timers()
            snoozed: datetime | None = None
            if timers:
                now = engine.now()
                for timer in timers:
                    if timer.kind != RESUME and timer.status == raw.status and timer.fire_at <= now:
                        fires_at = self._fires_at(timer)
                        if fires_at <= now:
                            await self._fire_timeout(raw, timer)
                            return now_trio
                        snoozed = fires_at if snoozed is None else min(snoozed, fires_at)
            spec = engine.definition.steps.get(raw.status)
            if spec is not None and raw.version != self._skipped_version:
                lag = spec.options.consume_lag
                if lag:
                    now = engine.now()
                    ready = raw.updated_at + lag
                    if ready > now:
                        return now_trio + (ready - now).total_seconds()
                await self._step(raw, spec)
                return now_trio
            if snoozed is not None:
                return trio_deadline(engine.clock, snoozed)
            return None
        if raw.run_state is RunState.PAUSED:
            if timers is None:
                timers = await self._run_timers()
            if _resume_due(timers, engine.now()):
                await self._guarded(
                    raw, "automatic resume", engine.resume(raw, "resumed automatically")
                )
                return now_trio
        return None

    async def _guarded(
        self,
        raw: RawRecord,
        what: str,
        action: Awaitable[tuple[RawRecord | None, list[Timer] | None]],
        *,
        key: str = "",
        options: Any = None,
    ) -> object:
        """Await ``action``; on an error count it (when ``key`` is given) and back off.

        Returns the stored record (None: nothing stored), the error, or NOT_STARTED."""
        try:
            new, timers = await action
        except _StoppedBeforeStart:
            return NOT_STARTED
        except (Exception, trio.Cancelled) as exc:
            error = user_error(exc, what)
            await self._failed(raw, what, error, key, options)
            return error
        self._settled(raw, key, new, timers)
        return new

    def _settled(
        self, raw: RawRecord, key: str, new: RawRecord | None, timers: list[Timer] | None
    ) -> None:
        """An action on ``raw`` stored ``new`` (None: it chose to store nothing)."""
        if new is None:
            self._skipped_version = raw.version
            if key:
                self.engine.reset_errors(raw.run_id, key)
            return
        self._stored(new, timers)

    async def _failed(
        self, raw: RawRecord, what: str, exc: Exception, key: str, options: Any
    ) -> None:
        """An action on ``raw`` failed: count the error (when ``key`` is given), back off,
        or pause the run once its options say so."""
        if isinstance(exc, VersionConflict):
            self.reload_needed = True
            return
        if isinstance(exc, StoreError):
            log.warning(
                "%s: store error during %s: %s", self._where(), what, exc, extra=self._fields()
            )
            self._back_off(1, self.engine.default_options)
            return
        if not key:
            log.exception("%s: %s failed", self._where(), what, exc_info=exc, extra=self._fields())
            self._back_off(1, self.engine.default_options)
            return
        opts = options or self.engine.default_options
        try:
            count, paused = await self.engine.count_error(raw, key, exc, opts)
        except VersionConflict:
            self.reload_needed = True
            return
        if paused is not None:
            self._stored(paused, None)
            self._timers = None
        else:
            self._back_off(count, opts)

    def _back_off(self, count: int, options: Any) -> None:
        self._retry_at = trio.current_time() + options.retry_seconds(count)

    def _begin_step(self, raw: RawRecord) -> object:
        """A step starts with metrics, traces or a lag alert on: check the lag, tell the
        observer; returns the token for :meth:`_end_step`."""
        engine = self.engine
        observer = engine.observer
        process = engine.step_processes[raw.status]
        # A version this actor just stored is taken up at once: its lag is nil, and
        # reading the wall clock for it would cost more than the rest of the metrics.
        lag = 0.0 if raw is self._own else (engine.now() - raw.updated_at).total_seconds()
        process.took_up(observer, engine.name, lag, raw)
        return NO_TOKEN if observer is None else observer.begin("step", process.name, raw)

    def _end_step(self, token: object, raw: RawRecord, result: object) -> None:
        observer = self.engine.observer
        if token is NO_TOKEN or observer is None:
            return
        if type(result) is RawRecord:  # the common case: a transition was stored
            observer.end(token, self.engine.outcome(raw, result))
        else:
            self._report(token, raw, result, self.engine.step_processes[raw.status].name)

    def _report(self, token: object, raw: RawRecord, result: object, process: str) -> None:
        observer = self.engine.observer
        assert observer is not None
        if isinstance(result, BaseException):
            observer.end(token, "error", result)
        elif result is NOT_STARTED:
            observer.end(token, "not started")
        else:
            assert result is None or isinstance(result, RawRecord)
            if result is None or result is raw:  # a timeout that skips stores nothing
                observer.skipped(process, "run.skip()")
                observer.end(token, "skipped")
                return
            observer.end(token, self.engine.outcome(raw, result))

    async def _step(self, raw: RawRecord, spec: StepSpec) -> object:
        """Run the step of the run's status and store what it returned.

        Returns the stored record (None: the step skipped), the error, or NOT_STARTED.

        The hot path of the engine: written flat (no helper coroutines, no closures), as
        every coroutine frame here is held by each of thousands of runs in flight. With
        metrics, traces or a lag alert on, it reports to the observer at start and end
        (``token``); otherwise that costs a test per exit.
        """
        engine = self.engine
        key = spec.key
        had_timers = self._timers is None or bool(self._timers)
        token = (
            None
            if engine.observer is None and not spec.options.lag_alert
            else self._begin_step(raw)
        )
        try:
            try:
                run = engine.make_run(raw)
                if spec.options.max_concurrency is None:
                    if self.sup.stopping:
                        if token is not None:
                            self._end_step(token, raw, NOT_STARTED)
                        return NOT_STARTED
                    result = await spec.fn(run)
                else:
                    async with engine.limiter(spec, spec.options):
                        if self.sup.stopping:
                            if token is not None:
                                self._end_step(token, raw, NOT_STARTED)
                            return NOT_STARTED
                        result = await spec.fn(run)
            except StoreError as exc:  # raised by the step itself: its own error, not ours
                step_error = StepError(f"{fn_name(spec.fn)} raised {type(exc).__name__}: {exc}")
                step_error.__cause__ = exc
                await self._failed(raw, key, step_error, key, spec.options)
                if token is not None:
                    self._end_step(token, raw, step_error)
                return step_error
            except (Exception, trio.Cancelled) as exc:
                error = user_error(exc, key)
                await self._failed(raw, key, error, key, spec.options)
                if token is not None:
                    self._end_step(token, raw, error)
                return error
            try:
                if isinstance(result, SpecialResult):
                    new, timers = await engine.apply_result(
                        raw, run, result, spec.to, key, had_timers=had_timers
                    )
                else:
                    new, timers = engine.plan_status(raw, run, result, spec.to, key)
                    # Encoded into ``new``: let the run and its object go before the wait
                    # for the commit (objects held across it outlive garbage collections).
                    del run, result
                    await engine.commit(new, timers=timers, had_timers=had_timers)
            except (Exception, trio.Cancelled) as exc:  # a timer function is user code too
                error = user_error(exc, key)
                await self._failed(raw, key, error, key, spec.options)
                if token is not None:
                    self._end_step(token, raw, error)
                return error
        except BaseException as exc:  # cancelled (a stop past its grace period)
            if token is not None and token is not NO_TOKEN and engine.observer is not None:
                engine.observer.end(token, "cancelled", exc)
            raise
        self._settled(raw, key, new, timers)
        if token is not None:
            self._end_step(token, raw, new)
        return new

    async def _fire_timeout(self, raw: RawRecord, timer: Timer) -> None:
        engine = self.engine
        specs = engine.definition.timeouts.get(raw.status, ())
        spec = next((s for s in specs if s.kind == timer.kind), None)
        if spec is None:
            # The definition changed since the timer was stored: drop it.
            assert self._timers is not None
            remaining = [t for t in self._timers if t != timer]
            await self._guarded(raw, "dropping a stale timer", self._replace_timers(raw, remaining))
            return
        key = f"timeout {fn_name(spec.fn)}"

        async def action() -> tuple[RawRecord | None, list[Timer] | None]:
            run = engine.make_run(raw)
            async with engine.limiter(spec, spec.options):
                if self.sup.stopping:
                    raise _StoppedBeforeStart
                result = await _call_user(spec.fn, run, timer.fire_at)
            new, timers = await engine.apply_result(raw, run, result, spec.to, key, fired=timer)
            if new is None:  # skipped: nothing is stored; it fires again after the back-off
                engine.reset_errors(raw.run_id, key)
                self._snooze(timer, spec.options.error_backoff)
                return raw, None
            return new, timers

        observer = engine.observer
        if observer is None:
            await self._guarded(raw, key, action(), key=key, options=spec.options)
            return
        process = engine.timeout_processes[raw.status]
        lag = (engine.now() - timer.fire_at).total_seconds()
        process.took_up(observer, engine.name, lag, raw)
        token = observer.begin("timeout", process.name, raw)
        try:
            result = await self._guarded(raw, key, action(), key=key, options=spec.options)
        except BaseException as exc:
            observer.end(token, "cancelled", exc)
            raise
        self._report(token, raw, result, process.name)

    async def _replace_timers(
        self, raw: RawRecord, timers: list[Timer]
    ) -> tuple[RawRecord | None, list[Timer] | None]:
        # A version with unchanged data: the only way to change timers atomically.
        new = self.engine.next_version(raw)
        return await self.engine.commit(new, timers=timers), timers
