"""What a run's actor does to its run: run its step, fire a due timeout, resume it
automatically; and what follows a failure of any of them (count the error, back off, pause
the run once its options say so). Steps and timeouts are reported to the observer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, final

from actorflow._model.definition import StepSpec, fn_name
from actorflow._model.errors import StepError, StoreError, VersionConflict, describe_error
from actorflow._model.record import RawRecord, Timer
from actorflow._model.run import SpecialResult
from actorflow._runtime.engine import Engine
from actorflow._runtime.observe import Observer, run_fields
from actorflow._runtime.ports import ActorHost
from actorflow._runtime.run_copy import RunCopy
from actorflow._runtime.user_code import user_error, watched

log = logging.getLogger(__name__)

NOT_STARTED = object()
"""What a step or timeout returns that a graceful stop kept from starting."""

Stored = tuple[RawRecord | None, list[Timer] | None]
"""What an action stored: the new record (None: nothing) and the run's timers (None: as
they were)."""


class _StoppedBeforeStart(Exception):
    """A graceful stop began while the step waited for its concurrency slot, or a pause
    or cancel interrupted the step (or timeout) in flight: nothing is stored."""


async def _call_user(
    fn: Callable[..., Awaitable[Any]], kind: str, raw: RawRecord, *args: Any
) -> Any:
    """Call a user function (a ``kind`` of function of the run of ``raw``); a StoreError it
    raises is its own error, not ours."""
    try:
        return await watched(fn(*args), kind, fn, raw.workflow_name, raw.run_id)
    except StoreError as exc:
        raise StepError(f"{fn_name(fn)} raised {describe_error(exc)}") from exc
    except BaseException as exc:
        error = user_error(exc, fn_name(fn))
        if error is exc:
            raise
        raise error from exc


@final
class RunActions:
    """The actions of one actor on its run (kept in ``run``, the actor's copy)."""

    __slots__ = ("engine", "host", "run")

    def __init__(self, host: ActorHost, engine: Engine[Any, Any], run: RunCopy) -> None:
        self.host = host
        self.engine = engine
        self.run = run

    def where(self) -> str:
        return f"workflow {self.engine.name!r} run {self.run.run_id}"

    def fields(self) -> dict[str, Any]:
        """The run's identifiers as ``extra=`` fields of a log record."""
        if self.run.raw is not None:
            return run_fields(self.run.raw)
        return {"workflow_name": self.engine.name, "run_id": self.run.run_id}

    # -- the actions -----------------------------------------------------------------------

    async def run_step(self, raw: RawRecord, spec: StepSpec) -> object:
        """Run the step of the run's status and store what it returned.

        Returns the stored record (None: the step skipped), the error, or NOT_STARTED."""
        engine = self.engine
        observer = engine.observer
        attempt = self._attempt(raw, spec.key, self._step(raw, spec), spec.key, spec.options)
        if observer is None and not spec.options.lag_alert:
            return await attempt
        process = engine.step_processes[raw.status]
        # A version this actor just stored is taken up at once: its lag is nil.
        lag = 0.0 if raw is self.run.own else (engine.now() - raw.updated_at).total_seconds()
        process.took_up(observer, engine.name, lag, raw)
        if observer is None:  # only the lag alert is on
            return await attempt
        return await self._observed(attempt, "step", process.name, raw)

    async def _step(self, raw: RawRecord, spec: StepSpec) -> Stored:
        engine = self.engine
        had_timers = self.run.timers is None or bool(self.run.timers)
        run = engine.make_run(raw)
        async with engine.limiter(spec, spec.options):
            if self.host.stopping:
                raise _StoppedBeforeStart
            with self.run.interruptible() as scope:
                try:
                    result = await watched(spec.fn(run), "step", spec.fn, engine.name, raw.run_id)
                except StoreError as exc:  # raised by the step itself: its own error
                    raise StepError(f"{fn_name(spec.fn)} raised {describe_error(exc)}") from exc
            if scope.cancel_called:  # interrupted: dropped, even if it swallowed the Cancelled
                raise _StoppedBeforeStart
        if isinstance(result, SpecialResult):
            return await engine.apply_result(
                raw, run, result, spec.to, spec.key, had_timers=had_timers
            )
        new, timers = engine.plan_status(raw, run, result, spec.to, spec.key)
        # Encoded into ``new``: let the run and its object go before the wait for the
        # commit (objects held across it outlive garbage collections).
        del run, result
        await engine.commit(new, timers=timers, had_timers=had_timers)
        return new, timers

    async def fire_timeout(self, raw: RawRecord, timer: Timer) -> None:
        """Call the timeout function of ``timer`` (due now) and store what it returned; a
        timer that the definition no longer has is dropped."""
        engine = self.engine
        specs = engine.definition.timeouts.get(raw.status, ())
        spec = next((s for s in specs if s.kind == timer.kind), None)
        if spec is None:
            remaining = [t for t in self.run.timers or () if t != timer]
            await self._attempt(raw, "dropping a stale timer", self._replace_timers(raw, remaining))
            return
        key = f"timeout {fn_name(spec.fn)}"

        async def action() -> Stored:
            run = engine.make_run(raw)
            async with engine.limiter(spec, spec.options):
                if self.host.stopping:
                    raise _StoppedBeforeStart
                with self.run.interruptible() as scope:
                    result = await _call_user(spec.fn, "timeout", raw, run, timer.fire_at)
                if scope.cancel_called:  # interrupted (see _step)
                    raise _StoppedBeforeStart
            new, timers = await engine.apply_result(raw, run, result, spec.to, key, fired=timer)
            if new is None:  # skipped: nothing is stored; it fires again after the back-off
                engine.errors.reset(raw.run_id, key)
                self.run.snooze(timer, spec.options.error_backoff)
                return raw, None
            return new, timers

        attempt = self._attempt(raw, key, action(), key, spec.options)
        if engine.observer is None:
            await attempt
            return
        process = engine.timeout_processes[raw.status]
        lag = (engine.now() - timer.fire_at).total_seconds()
        process.took_up(engine.observer, engine.name, lag, raw)
        await self._observed(attempt, "timeout", process.name, raw)

    async def resume(self, raw: RawRecord) -> None:
        """Resume the paused run (its automatic resume is due)."""
        await self._attempt(
            raw, "automatic resume", self.engine.resume(raw, "resumed automatically")
        )

    async def finish_deletion(self, raw: RawRecord) -> None:
        """Scrub the run whose deletion was requested but not finished (the process that
        asked for it stopped in between), with the reason given then."""
        reason = raw.meta.run_state_reason or "data deleted"
        await self._attempt(raw, "data deletion", self.engine.delete_data(raw, reason))

    async def _replace_timers(self, raw: RawRecord, timers: list[Timer]) -> Stored:
        # A version with unchanged data: the only way to change timers atomically.
        new = self.engine.next_version(raw)
        return await self.engine.commit(new, timers=timers), timers

    # -- outcomes ----------------------------------------------------------------------------

    async def _attempt(
        self,
        raw: RawRecord,
        what: str,
        action: Awaitable[Stored],
        key: str = "",
        options: Any = None,
    ) -> object:
        """Await ``action`` on ``raw`` and keep what it stored; on an error count it (when
        ``key`` names the function) and back off.

        Returns the stored record (None: nothing stored), the error, or NOT_STARTED."""
        try:
            new, timers = await action
        except _StoppedBeforeStart:
            return NOT_STARTED
        except BaseException as exc:
            error = user_error(exc, what)
            await self._after_failure(raw, what, error, key, options)
            return error
        if new is None:  # the action chose to store nothing
            self.run.skipped_version = raw.version
            if key:
                self.engine.errors.reset(raw.run_id, key)
        else:
            self.run.stored(new, timers)
        return new

    async def _after_failure(
        self, raw: RawRecord, what: str, exc: Exception, key: str, options: Any
    ) -> None:
        """An action on ``raw`` failed: count the error (when ``key`` is given), back off,
        or pause the run once its options say so."""
        run = self.run
        if isinstance(exc, VersionConflict):
            run.stale = True
            return
        if isinstance(exc, StoreError):
            where, fields = self.where(), self.fields()
            log.warning("%s: store error during %s: %s", where, what, exc, extra=fields)
            run.back_off(self.engine.default_options.retry_seconds(1))
            return
        if not key:
            # Not a function with options of its own (an automatic resume, a data deletion
            # whose scrub function fails): counted all the same, so that the back-off
            # grows instead of retrying (and logging) every second for ever.
            count = self.engine.errors.add(raw.run_id, what)
            where, fields = self.where(), self.fields()
            log.exception(
                "%s: %s failed (error %d)", where, what, count, exc_info=exc, extra=fields
            )
            run.back_off(self.engine.default_options.retry_seconds(count))
            return
        opts = options or self.engine.default_options
        try:
            count, paused = await self.engine.count_error(raw, key, exc, opts)
        except VersionConflict:
            run.stale = True
            return
        if paused is not None:
            run.stored(paused, None)
            run.timers = None
        else:
            run.back_off(opts.retry_seconds(count))

    async def _observed(
        self, attempt: Awaitable[object], kind: str, process: str, raw: RawRecord
    ) -> object:
        """Await ``attempt`` (a step or timeout of ``process`` on ``raw``), telling the
        observer when it begins and how it ends."""
        observer = self.engine.observer
        assert observer is not None
        token = observer.begin(kind, process, raw)
        try:
            result = await attempt
        except BaseException as exc:  # cancelled (a stop past its grace period)
            observer.end(token, "cancelled", exc)
            raise
        self._report(observer, token, raw, result, process)
        return result

    def _report(
        self, observer: Observer, token: object, raw: RawRecord, result: object, process: str
    ) -> None:
        """Tell the observer how the step or timeout begun with ``token`` ended."""
        if isinstance(result, BaseException):
            observer.end(token, "error", result)
        elif result is NOT_STARTED:
            observer.end(token, "not started")
        elif result is None or result is raw:  # a timeout that skips stores nothing
            observer.skipped(process, "run.skip()")
            observer.end(token, "skipped")
        else:
            assert isinstance(result, RawRecord)
            observer.end(token, self.engine.outcome(raw, result))
