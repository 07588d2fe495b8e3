"""``schedule_trigger``: trigger a run at every cron time (croniter), durably de-duplicated.

The last fired cron time is claimed in the store before triggering, so a restart (or a
second process) never fires one time twice. It is claimed once the ``filter`` has decided:
a filter that raises is logged and asked again about the same time after the back-off. A
time missed while nothing ran fires once at start; earlier missed times are skipped.

A time to trigger is noted as such before it is claimed, and as triggered once its run is
stored (two more keys of the schedule): a process that ended in between (kill -9, or the
schedule's task cancelled) left a time claimed, so never fired again, whose run may not
exist; the next start triggers it then, unless a run of the foreign id was created since.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, TypeVar

import attrs
import trio
from croniter import croniter

from actorflow._model.clock import trio_deadline
from actorflow._model.definition import fn_name
from actorflow._model.errors import (
    ActorflowError,
    InvalidArgument,
    RunNotFound,
    StepError,
    StoreError,
    WorkflowInProgress,
    describe_error,
)
from actorflow._model.process import ProcessState
from actorflow._model.text import key_part
from actorflow._runtime.observe import Process, process_name
from actorflow._runtime.retry import retrying
from actorflow._runtime.user_code import user_error, watched
from actorflow._services.context import ServiceContext

log = logging.getLogger(__name__)

R = TypeVar("R")
_TICK = timedelta(microseconds=1)

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def parse_cron(spec: str) -> str:
    """The 5-field expression for ``spec``; InvalidArgument when it is not valid."""
    if not isinstance(spec, str):
        raise InvalidArgument(f"cron spec must be a string, not {spec!r}")
    expression = ALIASES.get(spec.strip().lower(), spec.strip())
    problem = ""
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        problem = "use 5 fields (minute hour day month weekday) or one of " + ", ".join(
            sorted(ALIASES)
        )
    else:
        try:  # valid syntax can still never match (e.g. 31 February)
            croniter(expression, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
        except Exception as exc:
            problem = f"it never matches ({exc})"
    if problem:
        raise InvalidArgument(f"invalid cron spec {spec!r}: {problem}")
    return expression


def _next_after(expression: str, after: datetime, tz: tzinfo) -> datetime | None:
    """The first cron time after ``after``; None when there is none before the end of the
    year 9999 (the last a datetime can hold)."""
    try:
        return croniter(expression, after.astimezone(tz)).get_next(datetime).astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _prev_before(expression: str, before: datetime, tz: tzinfo) -> datetime:
    return croniter(expression, before.astimezone(tz)).get_prev(datetime).astimezone(UTC)


async def _allowed(filter: Callable[..., Any] | None, when: datetime, workflow: str) -> bool:
    """What ``filter`` says of the cron time ``when``; StepError when it raises (a warning
    when it holds the trio thread, as for every user function)."""
    if filter is None:
        return True
    try:
        takes_time = bool(inspect.signature(filter).parameters)
    except (TypeError, ValueError):
        takes_time = True
    try:
        result = filter(when) if takes_time else filter()
        if inspect.isawaitable(result):
            result = await watched(result, "schedule filter", filter, workflow, "")
        if result is None:  # a missing `return`: skipping silently for ever would hide it
            log.warning(
                "schedule filter %s returned None for %s (a missing return?); taken as "
                "False: that time is skipped",
                fn_name(filter),
                when.isoformat(),
            )
        return bool(result)
    except BaseException as caught:
        exc = user_error(caught, f"schedule filter {fn_name(filter)}")
        raise StepError(f"schedule filter {fn_name(filter)} raised {describe_error(exc)}") from exc


async def schedule_trigger(
    ctx: ServiceContext,
    foreign_id: str,
    spec: str,
    start: Any = None,
    *,
    initial: Any = None,
    filter: Callable[..., Any] | None = None,
    tz: tzinfo = UTC,
) -> None:
    expression = parse_cron(spec)
    ctx.check_trigger_args(foreign_id, start, initial)
    if filter is not None and not callable(filter):
        raise InvalidArgument(
            f"schedule filter must be a function filter(when) -> bool (or async), not {filter!r}"
        )
    # luno/workflow's name for a schedule's process: ``<foreign id>-scheduler-<spec>``.
    process = ctx.service(process_name(foreign_id, "scheduler", spec), 0.0)
    process.state = ProcessState.RUNNING
    try:
        await _schedule(ctx, process, expression, foreign_id, start, initial, filter, tz)
    finally:
        process.state = ProcessState.STOPPED


async def _schedule(
    ctx: ServiceContext,
    process: Process,
    expression: str,
    foreign_id: str,
    start: Any,
    initial: Any,
    filter: Callable[..., Any] | None,
    tz: tzinfo,
) -> None:
    clock = ctx.clock
    store = ctx.store
    # the workflow name escaped (a cron expression holds no ":"): no two workflows'
    # schedules share a key, whatever their names and foreign ids hold
    keys = _Keys(f"{key_part(ctx.name)}:{foreign_id}:{expression}")
    key = keys.claimed
    last = await retrying(
        lambda: store.last_schedule(key),
        options=ctx.default_options,
        what=f"schedule {key!r}: reading its last cron time",
        log=log,
        retry_on=StoreError,
    )
    if last is not None:
        await retrying(
            lambda: _trigger_lost(ctx, keys, last, foreign_id, start, initial),
            options=ctx.default_options,
            what=f"schedule {key!r}: checking the run of {last}",
            log=log,
            retry_on=StoreError,
        )
    now = clock.now()
    due = _next_after(expression, now if last is None else last, tz)
    if due is not None and due < now:  # missed while nothing ran: fire the latest once, now
        due = _prev_before(expression, now + _TICK, tz)
    failures = 0
    while True:
        if due is None:
            # No cron time is left that a datetime can hold: nothing will ever fire again.
            log.info(
                "schedule %r: no time of the spec is left before the year 10000",
                key,
                extra={"workflow_name": ctx.name, "foreign_id": foreign_id},
            )
            process.state = ProcessState.IDLE
            await trio.sleep_forever()
        await trio.sleep_until(trio_deadline(clock, due))
        # A wall clock that runs slow against trio's: wait out the rest.
        while clock.now() < due:  # noqa: ASYNC110
            await trio.sleep_until(trio_deadline(clock, due))
        fired = due
        try:
            await _fire(ctx, keys, fired, foreign_id, start, initial, filter)
        except ActorflowError as exc:
            failures += 1
            process.state = ProcessState.ERRORING
            if ctx.observer is not None:
                ctx.observer.error(process.name)
            delay = ctx.default_options.retry_seconds(failures)
            log.warning(
                "schedule %r: %s failed (retrying in %.3g s): %s",
                key,
                fired,
                delay,
                exc,
                extra={
                    "workflow_name": ctx.name,
                    "process_name": process.name,
                    "foreign_id": foreign_id,
                    "error_count": failures,
                },
            )
            await trio.sleep(delay)
            continue  # the same cron time again, unless it was claimed
        failures = 0
        process.state = ProcessState.RUNNING
        due = _next_after(expression, max(fired, clock.now()), tz)


@attrs.frozen
class _Keys:
    """The store keys of one schedule (``schedule:<workflow>:<foreign id>:<cron>`` and two
    more, with prefixes of their own: none equals another schedule's key)."""

    name: str

    @property
    def claimed(self) -> str:
        """The last cron time decided (fired or skipped): never decided again."""
        return f"schedule:{self.name}"

    @property
    def to_trigger(self) -> str:
        """The last cron time decided to be triggered, noted before it is claimed."""
        return f"schedule-to-trigger:{self.name}"

    @property
    def triggered(self) -> str:
        """The last cron time whose run is known to be stored."""
        return f"schedule-triggered:{self.name}"


async def _trigger_lost(
    ctx: ServiceContext,
    keys: _Keys,
    last: datetime,
    foreign_id: str,
    start: Any,
    initial: Any,
) -> None:
    """At start: trigger the last claimed time ``last`` if it was to be triggered and the
    process that claimed it ended before its run was known to be stored (and no run of the
    foreign id was created since: then the trigger was stored after all)."""
    store = ctx.store
    if await store.last_schedule(keys.to_trigger) != last:
        return  # skipped, or claimed by a version without these keys: decided
    triggered = await store.last_schedule(keys.triggered)
    if triggered is not None and triggered >= last:
        return
    try:
        latest = await ctx.handle.latest(foreign_id)
        stored = latest.created_at >= last or not latest.run_state.finished
    except RunNotFound:
        stored = False
    if not stored:
        log.info(
            "schedule %r: %s was claimed but its run was never stored (the process ended "
            "in between); triggering it now",
            keys.claimed,
            last,
            extra={"workflow_name": ctx.name, "foreign_id": foreign_id},
        )
        with contextlib.suppress(WorkflowInProgress):
            await ctx.handle.trigger(foreign_id, start, initial=initial)
    await store.claim_schedule(keys.triggered, last)


async def _fire(
    ctx: ServiceContext,
    keys: _Keys,
    fired: datetime,
    foreign_id: str,
    start: Any,
    initial: Any,
    filter: Callable[..., Any] | None,
) -> None:
    """Trigger at ``fired`` unless told to skip. ``fired`` is claimed (so it is never
    fired twice) once that is decided: a filter that raises leaves it unclaimed, to be
    tried again."""
    key = keys.claimed
    try:
        latest = await ctx.handle.latest(foreign_id)
        unfinished = not latest.run_state.finished
    except RunNotFound:
        unfinished = False
    if unfinished:
        if await ctx.store.claim_schedule(key, fired):
            log.info(
                "schedule %r: %s skipped, run %s unfinished",
                key,
                fired,
                latest.run_id,
                extra={
                    "workflow_name": ctx.name,
                    "foreign_id": foreign_id,
                    "run_id": latest.run_id,
                },
            )
        return
    allowed = await _allowed(filter, fired, ctx.name)
    if allowed:
        # Noted before the claim: a process that ends between the claim and the stored run
        # leaves this behind, and the next start triggers the time (_trigger_lost).
        await ctx.store.claim_schedule(keys.to_trigger, fired)
    if not await ctx.store.claim_schedule(key, fired) or not allowed:
        return

    async def trigger() -> None:
        try:
            await ctx.handle.trigger(foreign_id, start, initial=initial)
        except WorkflowInProgress:
            return

    # Claimed: this time is ours alone to fire, so a store error is retried here (trying
    # the claim again would find it taken and never trigger).
    await retrying(
        trigger,
        options=ctx.default_options,
        what=f"schedule {key!r}: triggering the run of {fired}",
        log=log,
        retry_on=StoreError,
    )
    await retrying(
        lambda: ctx.store.claim_schedule(keys.triggered, fired),
        options=ctx.default_options,
        what=f"schedule {key!r}: noting the run of {fired} stored",
        log=log,
        retry_on=StoreError,
    )
