"""The engine: turns function results and control calls into stored transitions.

It holds no task of its own; the run actors (and, when no supervisor runs in this process,
the caller's own task) drive it. Every change goes through :meth:`Engine.commit`, which
relies on the store's optimistic version check, so two writers never both win.
"""

from __future__ import annotations

import enum
import inspect
import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import attrs
import trio

from actorflow._model.clock import Clock
from actorflow._model.codec import ObjectCodec
from actorflow._model.definition import Definition, fn_name
from actorflow._model.errors import (
    ActorflowError,
    InvalidArgument,
    InvalidTransition,
    SerializationError,
    StepError,
    describe_error,
)
from actorflow._model.options import Options
from actorflow._model.record import Meta, RawRecord, Record, Timer
from actorflow._model.run import Run, Special, SpecialResult
from actorflow._model.run_state import RunState, check_transition
from actorflow._model.text import printable
from actorflow._runtime.error_counts import ErrorCounts
from actorflow._runtime.lineage import Lineage
from actorflow._runtime.observe import Observer, Process, process_name, run_fields
from actorflow._runtime.user_code import user_error
from actorflow.stores import Store

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

log = logging.getLogger(__name__)

RESUME = "resume"
META_CACHE = 256
FRESH_CACHE = 65_536
"""A bound on the objects read back from versions being stored and kept for the next step
(:meth:`Engine.encoded`): each is taken by the next step of the actor that stored it, or
dropped when that actor ends (a stop, a lag, a pause in between); this only bounds a leak."""
NO_TIMERS: list[Timer] = []
"""The timers of a version that has none. Shared (one list, not one per version in
flight), so it is never mutated: code that changes timers builds a new list."""


class Engine(Generic[T, S]):
    """One workflow's rules applied to stored records."""

    def __init__(
        self,
        definition: Definition,
        store: Store,
        codec: ObjectCodec[T],
        clock: Clock,
        resume_paused_after: timedelta | None,
        scrub: Callable[[T], T] | None,
        default_options: Options,
    ) -> None:
        self.definition = definition
        self.name = definition.name
        self.store = store
        self.codec = codec
        self.clock = clock
        self.resume_paused_after = resume_paused_after
        self.scrub = scrub
        self.default_options = default_options
        self._limiters: dict[object, trio.CapacityLimiter] = {}
        self._metas: dict[tuple[str, int], Meta] = {}
        """Meta of error-free versions, shared: one object per (reason, status), not per run."""
        self.on_timers: Callable[[str, list[Timer]], None] | None = None
        """Set by a running supervisor: arms timers as soon as they are stored."""
        self.fingerprint = definition.fingerprint
        self.lineage = Lineage(store, definition, clock)
        """The other definitions of this workflow: whose runs this one may process."""
        self.observer: Observer | None = None
        """Metrics and traces (None: off, and the hot path skips them)."""
        self.step_processes: dict[int, Process] = {
            status: Process(
                process_name(self.status(status), "consumer"),
                spec.options.lag_alert.total_seconds(),
            )
            for status, spec in definition.steps.items()
        }
        self.timeout_processes: dict[int, Process] = {
            status: Process(process_name(self.status(status), "timeout-consumer"))
            for status in definition.timeouts
        }
        self.callback_processes: dict[int, str] = {
            status: process_name(self.status(status), "callback") for status in definition.callbacks
        }
        self.error_processes: dict[str, str] = {}
        """Error-count keys (``step fn``) -> the process whose errors they are."""
        for status, spec in definition.steps.items():
            self.error_processes[spec.key] = self.step_processes[status].name
        for status, specs in definition.timeouts.items():
            for timeout in specs:
                key = f"timeout {fn_name(timeout.fn)}"
                self.error_processes[key] = self.timeout_processes[status].name
        self.errors = ErrorCounts(self.error_processes)
        """Consecutive errors of each function on each run."""
        self._fresh: dict[str, tuple[int, str, T]] = {}
        """Run id -> (version, object text, the object decoded from it) of versions about
        to be stored (see :meth:`encoded`): the next ``make_run`` of that version takes
        it instead of decoding the same text again."""
        self.services: dict[str, Process] = {}
        """The workflow's service processes (hooks, connectors, relay, schedules, ...)."""

    def service(self, name: str, lag_alert: float = 0.0) -> Process:
        """The service process called ``name`` (made on first use)."""
        process = self.services.get(name)
        if process is None:
            process = self.services[name] = Process(name, lag_alert)
        return process

    # -- conversions -------------------------------------------------------------------------

    def status(self, value: int) -> S:
        return self.definition.status(value)  # type: ignore[return-value]

    def decoded(self, raw: RawRecord) -> T:
        """The run's object, upgraded by ``upgrade_object`` when an earlier definition
        wrote it and it does not structure as it is (nothing is written: the run itself is
        upgraded when it is next loaded).

        Raises:
            ActorflowError: it does not structure into the object type, even upgraded.
        """
        try:
            return self.codec.decode(raw.object, run_id=raw.run_id)
        except SerializationError:
            if raw.meta.definition == self.fingerprint or self.definition.evolution.upgrade is None:
                raise
            return self.codec.decode(upgraded_object(self, raw), run_id=raw.run_id)

    def typed(self, raw: RawRecord) -> Record[T, S]:
        """The record of a stored version. A status the enum no longer has is its int; an
        object that no longer structures (a stranded run, docs/upgrading.md) is its stored
        JSON data, so such runs can still be read, listed and handed to hooks."""
        try:
            obj: Any = self.decoded(raw)
        except ActorflowError:
            try:
                obj = json.loads(raw.object)
            except ValueError:
                raise ActorflowError(f"{self.where(raw)}: the stored object is not JSON") from None
        return Record(
            workflow_name=raw.workflow_name,
            foreign_id=raw.foreign_id,
            run_id=raw.run_id,
            status=self.status(raw.status),
            run_state=raw.run_state,
            object=obj,
            version=raw.version,
            created_at=raw.created_at,
            updated_at=raw.updated_at,
            meta=raw.meta,
        )

    def forget_fresh(self, run_id: str) -> None:
        """The run's actor ends: an object kept for its next step is not needed."""
        if self._fresh:
            self._fresh.pop(run_id, None)

    def make_run(self, raw: RawRecord) -> Run[T, S]:
        fresh = self._fresh.pop(raw.run_id, None) if self._fresh else None
        if fresh is not None and fresh[0] == raw.version and fresh[1] == raw.object:
            obj = fresh[2]  # decoded from that very text as it was stored, never handed out
        else:
            obj = self.codec.decode(raw.object, run_id=raw.run_id)
        return Run(raw, self.status(raw.status), obj, self.codec)

    def now(self) -> datetime:
        return self.clock.now()

    def limiter(self, key: object, options: Options) -> AbstractAsyncContextManager[Any]:
        if options.max_concurrency is None:
            return nullcontext()
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = trio.CapacityLimiter(options.max_concurrency)
        return limiter

    def where(self, raw: RawRecord, what: str = "") -> str:
        status = self.status(raw.status)
        name = status.name if isinstance(status, enum.Enum) else str(status)
        return f"workflow {self.name!r} run {raw.run_id} at {name}" + (f" ({what})" if what else "")

    # -- building versions -------------------------------------------------------------------

    def next_version(
        self,
        raw: RawRecord,
        *,
        status: int | None = None,
        run_state: RunState | None = None,
        object: str | None = None,
        reason: str | None = None,
        error_count: int = 0,
        error_message: str = "",
    ) -> RawRecord:
        new_status = raw.status if status is None else int(status)
        meta = self._meta(
            raw.meta.run_state_reason if reason is None else reason,
            new_status,
            error_count,
            error_message,
            raw.meta.trace_origin,
        )
        new_state = raw.run_state if run_state is None else run_state
        if self.observer is not None:
            # As luno/workflow: counted as the version is made, before it is stored.
            self.observer.run_state_changed(raw.run_state, new_state)
        if status is None and object is None and raw.meta.definition != self.fingerprint:
            # Only the run state changed: the data is still what that definition wrote.
            meta = attrs.evolve(meta, definition=raw.meta.definition)
        return RawRecord(
            workflow_name=raw.workflow_name,
            foreign_id=raw.foreign_id,
            run_id=raw.run_id,
            status=new_status,
            run_state=new_state,
            object=raw.object if object is None else object,
            version=raw.version + 1,
            created_at=raw.created_at,
            updated_at=max(self.now(), raw.updated_at),
            meta=meta,
        )

    def first_meta(self, status: int, trace_origin: str = "") -> Meta:
        """The Meta of a run's first version at ``status``."""
        return self._meta("", status, 0, "", trace_origin)

    def _meta(
        self, reason: str, status: int, error_count: int, error_message: str, trace_origin: str
    ) -> Meta:
        # Reasons and messages made from user code (run.pause(reason), an exception's text)
        # are stored as they are unless they hold invalid text, which no store can write.
        reason, error_message = printable(reason), printable(error_message)
        if error_count or error_message or trace_origin:
            return Meta(
                reason,
                self._description(status),
                error_count,
                error_message,
                trace_origin,
                self.fingerprint,
            )
        key = (reason, status)
        meta = self._metas.get(key)
        if meta is None:
            if len(self._metas) >= META_CACHE:
                self._metas.clear()  # reasons given to pause/cancel are open-ended
            meta = self._metas[key] = Meta(
                reason, self._description(status), definition=self.fingerprint
            )
        return meta

    def _description(self, status: int) -> str:
        member = self.status(status)
        return member.name if isinstance(member, enum.Enum) else str(status)

    def timers_for(self, run: Run[T, S], status: int, now: datetime) -> list[Timer]:
        """The timers of ``status`` for this run (what its timeouts' timer functions say)."""
        timers: list[Timer] = []
        name = self.name
        for spec in self.definition.timeouts.get(status, ()):
            try:
                when = spec.timer(run, now)
            except BaseException as caught:  # the timer's own error, named (not the step's)
                exc = user_error(caught, f"timer {fn_name(spec.timer)}")
                raise StepError(
                    f"{self.where(run._raw)}: timer {fn_name(spec.timer)} of status "
                    f"{self.status(status)!r} raised {describe_error(exc)}"
                ) from exc
            if when is None:
                continue
            if type(when) is datetime and when.tzinfo is UTC:
                fire_at = when  # already what stores keep
            else:
                fire_at = self._timer_instant(run, status, spec.timer, when)
            timers.append(Timer(name, run._raw.run_id, int(status), spec.kind, fire_at))
        return timers

    def _timer_instant(self, run: Run[T, S], status: int, timer: Any, when: Any) -> datetime:
        """What a timer function returned, as the aware UTC instant every store keeps (a
        StepError, saying what is wrong, for anything else)."""
        problem = ""
        if isinstance(when, timedelta):
            problem = "a timedelta is not an instant: return now + delta, or use af.after(delta)"
        elif not isinstance(when, datetime) or when.tzinfo is None:
            problem = "it must return an aware datetime or None"
        else:
            try:
                if when.utcoffset() is None:
                    problem = "it must return an aware datetime or None"
                else:
                    return when.astimezone(UTC)
            except OverflowError:
                problem = "that instant is beyond year 9999 in UTC"
            except Exception as exc:  # a tzinfo of the user's own that fails
                problem = f"its tzinfo failed: {describe_error(exc)}"
        raise StepError(
            f"{self.where(run._raw)}: timer {fn_name(timer)} of status "
            f"{self.status(status)!r} returned {_shown(when)}; {problem}"
        )

    # -- committing --------------------------------------------------------------------------

    async def commit(
        self,
        new: RawRecord,
        *,
        timers: list[Timer] | None = None,
        scrub_history: bool = False,
        had_timers: bool = True,
    ) -> RawRecord:
        """Store ``new`` (and replace the run's timers with ``timers`` unless None).

        ``had_timers=False`` says the version ``new`` replaces had no timers (the caller
        knows it, and the store's version check proves it is still that version): no
        timers then means nothing to delete and nothing to disarm.
        """
        if timers is not None and not timers and not had_timers:
            timers = None
        observer = self.observer
        if observer is None:
            stored = await self.store.commit(new, timers=timers, scrub_history=scrub_history)
        else:
            started = time.perf_counter()
            stored = await self.store.commit(new, timers=timers, scrub_history=scrub_history)
            observer.committed(time.perf_counter() - started, new)
        self.committed(new.run_id, timers)
        return stored

    def committed(self, run_id: str, timers: list[Timer] | None) -> None:
        """Bookkeeping after a version of the run was stored."""
        self.errors.forget(run_id)
        if timers is not None and self.on_timers is not None:
            self.on_timers(run_id, timers)

    async def apply_result(
        self,
        raw: RawRecord,
        run: Run[T, S],
        result: object,
        allowed: frozenset[enum.IntEnum],
        what: str,
        fired: Timer | None = None,
        had_timers: bool = True,
    ) -> tuple[RawRecord | None, list[Timer] | None]:
        """Store what a step/callback/timeout returned. Returns (new record or None, timers).

        ``fired`` is the timer whose timeout returned ``result``: used up by any result
        that stores something, so it never fires twice.

        Raises StepError for a result that is neither a special result nor an allowed status.
        """
        if isinstance(result, SpecialResult):
            if result.kind is Special.SKIP:
                return None, None
            if result.kind is Special.PAUSE:
                return await self.pause(raw, result.reason or f"paused by {what}", drop=fired)
            if result.kind is Special.CANCEL:
                new = self.next_version(
                    raw,
                    run_state=RunState.CANCELLED,
                    reason=result.reason or f"cancelled by {what}",
                )
                return await self.commit(new, timers=[]), []
            encoded = self.encoded(raw, run, what, keep=True)
            new = self.next_version(raw, run_state=RunState.RUNNING, object=encoded)
            if fired is None:
                return await self.commit(new), None
            remaining = _without(await self.store.list_timers(self.name, raw.run_id), fired)
            return await self.commit(new, timers=remaining), remaining
        new, timers = self.plan_status(raw, run, result, allowed, what)
        return await self.commit(new, timers=timers, had_timers=had_timers), timers

    def plan_status(
        self,
        raw: RawRecord,
        run: Run[T, S],
        result: object,
        allowed: frozenset[enum.IntEnum],
        what: str,
    ) -> tuple[RawRecord, list[Timer]]:
        """The version (and its timers) a status result stores; nothing is written yet.

        Raises StepError for a result that is not an allowed status (special results
        go through :meth:`apply_result`).
        """
        if (
            isinstance(result, bool)
            or not isinstance(result, int)
            or result not in allowed
            # A member of another enum (another workflow's statuses) equal by value is a
            # mix-up, not this workflow's status.
            or (
                isinstance(result, enum.Enum)
                and not isinstance(result, self.definition.status_type)
            )
        ):
            names = ", ".join(sorted(s.name for s in allowed))
            raise StepError(
                f"{self.where(raw, what)} returned {_shown(result)}, which is not an allowed "
                f"destination (allowed: {names}; or run.skip(), run.pause(), run.cancel(), "
                "run.save_and_repeat())"
            )
        status = int(result)
        encoded = self.encoded(raw, run, what, keep=status in self.definition.steps)
        terminal = self.definition.is_terminal(status)
        new = self.next_version(
            raw,
            status=status,
            run_state=RunState.COMPLETED if terminal else RunState.RUNNING,
            object=encoded,
        )
        if terminal or status not in self.definition.timeouts:
            return new, NO_TIMERS
        return new, self.timers_for(run, status, new.updated_at)

    def encoded(self, raw: RawRecord, run: Run[T, S], what: str, *, keep: bool = False) -> str:
        """The JSON text of ``run.object`` to store.

        Raises StepError when the function replaced it with something that is not the
        object type (a dict, None, another class: the codec would fail on it obscurely, or
        store another class's fields as if they were the object's), or left it in a state
        that does not read back (a field set to a value of another type, a validator that
        refuses it): stored, the run could not be loaded again, and readers would get its
        JSON data instead of an object. ``keep``: the version goes to a status with a step,
        which its actor runs next: the object read back is kept for it (it would decode the
        same text); a run that waits keeps nothing in memory."""
        obj = run.object
        object_type = self.codec.object_type
        if type(obj) is not object_type and not isinstance(obj, object_type):
            raise StepError(
                f"{self.where(raw, what)} set run.object to {type(obj).__name__}; it must "
                f"be a {object_type.__name__} (change its fields, or assign a new "
                f"{object_type.__name__})"
            )
        text = self.codec.encode(obj, run_id=raw.run_id)
        try:
            again = self.codec.decode(text, run_id=raw.run_id)
        except SerializationError as exc:
            raise StepError(
                f"{self.where(raw, what)} left run.object in a state that does not read "
                f"back as a {object_type.__name__}, so it was not stored: "
                f"{describe_error(exc.__cause__ or exc)}"
            ) from exc
        if keep:
            if len(self._fresh) >= FRESH_CACHE:
                self._fresh.clear()  # (only a leak would get here: actors drop theirs)
            self._fresh[raw.run_id] = (raw.version + 1, text, again)
        return text

    async def count_error(
        self, raw: RawRecord, key: str, exc: BaseException, options: Options
    ) -> tuple[int, RawRecord | None]:
        """Count a consecutive error of ``key`` for the run; pause it at the limit.

        Returns (the error count, the paused record or None)."""
        count = self.errors.add(raw.run_id, key)
        message = describe_error(exc)
        log.warning(
            "%s: error %d: %s",
            self.where(raw, key),
            count,
            message,
            exc_info=exc,
            extra={**run_fields(raw, self.error_processes.get(key, "")), "error_count": count},
        )
        if options.pause_after_errors and count >= options.pause_after_errors:
            reason = f"paused after {count} consecutive errors in {key}: {message}"[:2000]
            try:
                paused, _ = await self.pause(raw, reason, error_count=count, error_message=message)
            except InvalidTransition:
                return count, None
            return count, paused
        return count, None

    # -- run-state controls --------------------------------------------------------------------

    async def pause(
        self,
        raw: RawRecord,
        reason: str,
        *,
        error_count: int = 0,
        error_message: str = "",
        drop: Timer | None = None,
        auto_resume: bool = True,
    ) -> tuple[RawRecord, list[Timer]]:
        self.check_state(raw, RunState.PAUSED)
        timers = [
            t for t in await self.store.list_timers(self.name, raw.run_id) if t.kind != RESUME
        ]
        if drop is not None:
            timers = _without(timers, drop)
        if self.resume_paused_after is not None and auto_resume:
            timers.append(
                Timer(
                    self.name, raw.run_id, raw.status, RESUME, self.now() + self.resume_paused_after
                )
            )
        new = self.next_version(
            raw,
            run_state=RunState.PAUSED,
            reason=reason,
            error_count=error_count,
            error_message=error_message,
        )
        return await self.commit(new, timers=timers), timers

    async def resume(
        self, raw: RawRecord, reason: str = "resumed"
    ) -> tuple[RawRecord, list[Timer]]:
        self.check_state(raw, RunState.RUNNING)
        timers = [
            t for t in await self.store.list_timers(self.name, raw.run_id) if t.kind != RESUME
        ]
        new = self.next_version(raw, run_state=RunState.RUNNING, reason=reason)
        return await self.commit(new, timers=timers), timers

    async def cancel(self, raw: RawRecord, reason: str) -> tuple[RawRecord, list[Timer]]:
        self.check_state(raw, RunState.CANCELLED)
        new = self.next_version(raw, run_state=RunState.CANCELLED, reason=reason)
        return await self.commit(new, timers=[]), []

    async def delete_data(self, raw: RawRecord, reason: str) -> tuple[RawRecord, list[Timer]]:
        requested = raw.run_state is RunState.REQUESTED_DATA_DELETED
        if not requested:
            self.check_state(raw, RunState.REQUESTED_DATA_DELETED)
        # Without scrub=, what replaces the object is known first: a type that has no
        # default changes nothing (it used to store REQUESTED_DATA_DELETED, then fail on
        # every attempt, the data kept).
        scrubbed = self._default_object(raw) if self.scrub is None else None
        if not requested:
            raw = await self.commit(
                self.next_version(raw, run_state=RunState.REQUESTED_DATA_DELETED, reason=reason)
            )
        if scrubbed is None:
            # A scrub function that fails leaves the request stored (luno/workflow's rule):
            # a later delete_data, or the next worker, finishes it.
            scrubbed = self._scrubbed(raw)
        new = self.next_version(
            raw, run_state=RunState.DATA_DELETED, object=scrubbed, reason=reason
        )
        return await self.commit(new, timers=[], scrub_history=True), []

    def _scrubbed(self, raw: RawRecord) -> str:
        """The JSON text of ``scrub(object)`` (the build option), which ``delete_data``
        stores in place of the run's object.

        A stored object that no longer fits the object type (written by an earlier
        definition, no ``upgrade_object`` to convert it) cannot be handed to ``scrub``: its
        data is deleted all the same, replaced by the type's defaults.

        Raises:
            ActorflowError: the scrub function failed.
        """
        scrub = self.scrub
        assert scrub is not None
        try:
            obj = self.decoded(raw)
        except ActorflowError as exc:
            log.warning(
                "%s: the stored object cannot be given to the scrub function (%s); "
                "its data is deleted and replaced by the object type's defaults",
                self.where(raw),
                exc,
                extra=run_fields(raw),
            )
            return self._default_object(raw)
        try:
            scrubbed = scrub(obj)
        except BaseException as exc:
            error = user_error(exc, "the scrub function")
            raise ActorflowError(
                f"{self.where(raw)}: scrub function failed: {describe_error(error)}"
            ) from exc
        if not isinstance(scrubbed, self.codec.object_type):
            raise InvalidArgument(
                f"{self.where(raw)}: scrub function {fn_name(scrub)} returned "
                f"{_shown(scrubbed)}; it must return a {self.codec.object_type.__name__}"
            )
        return self.codec.encode(scrubbed, run_id=raw.run_id)

    def _default_object(self, raw: RawRecord) -> str:
        """The JSON text of a new object from the type's defaults (a scrubbed object).

        Raises:
            InvalidArgument: the object type needs arguments (build with ``scrub=``).
        """
        try:
            default = self.codec.default()
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"{self.where(raw)}: delete_data has no object to put in place of the "
                f"run's: {self.codec.object_type.__name__}() needs arguments. Build the "
                "workflow with scrub= (a function returning the scrubbed object)"
            ) from exc
        return self.codec.encode(default, run_id=raw.run_id)

    def check_state(self, raw: RawRecord, new: RunState) -> None:
        old = raw.run_state
        # A run is INITIATED until its first transition; it may do what a RUNNING run may.
        if old is RunState.INITIATED and new is RunState.CANCELLED:
            return
        check_transition(old, new, run_id=raw.run_id)

    def outcome(self, raw: RawRecord, new: RawRecord | None) -> str:
        """What a unit of work did to ``raw``, in a word (for spans and logs)."""
        if new is None:
            return "skipped"
        if new.run_state is not raw.run_state and new.run_state is not RunState.RUNNING:
            return new.run_state.name.lower()
        return new.meta.status_description or str(new.status)


def upgraded_object(engine: Engine[Any, Any], raw: RawRecord) -> str:
    """The stored object run through the definition's ``upgrade_object`` function, as JSON
    text. Raises ActorflowError naming the function and what went wrong."""
    fn = engine.definition.evolution.upgrade
    assert fn is not None
    try:
        data = json.loads(raw.object)
    except ValueError as exc:
        raise ActorflowError(f"the stored object is not JSON: {exc}") from None
    try:
        result = fn(data)
    except BaseException as caught:  # a stray BaseException is its error too
        error = user_error(caught, f"upgrade_object function {fn_name(fn)}")
        raise ActorflowError(
            f"upgrade_object function {fn_name(fn)} raised {type(error).__name__}: {error}"
        ) from error
    if not isinstance(result, dict):
        raise ActorflowError(
            f"upgrade_object function {fn_name(fn)} returned "
            f"{_shown(result) if inspect.iscoroutine(result) else type(result).__name__}, "
            "not a dict"
        )
    try:
        text = json.dumps(result, ensure_ascii=False, separators=(",", ":"))
        obj = engine.codec.decode(text, run_id=raw.run_id)
        return engine.codec.encode(obj, run_id=raw.run_id)
    except (ActorflowError, TypeError, ValueError) as exc:
        raise ActorflowError(
            f"upgrade_object function {fn_name(fn)} returned an object that does not fit "
            f"{engine.codec.object_type.__name__}: {exc}"
        ) from None


def _shown(result: object) -> str:
    """A function's unwanted result, for its error: a coroutine (a missing ``await``) is
    named as such and closed (no 'never awaited' warning later); ``repr`` never fails."""
    if inspect.iscoroutine(result):
        result.close()
        return f"a coroutine ({result.__qualname__}; a missing `await`?)"
    try:
        return repr(result)[:200]
    except Exception:
        return f"a {type(result).__name__} (whose repr() failed)"


def _without(timers: list[Timer], timer: Timer | None) -> list[Timer]:
    """``timers`` without ``timer``."""
    return [t for t in timers if t != timer]
