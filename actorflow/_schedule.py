"""``schedule_trigger``: trigger a run at every cron time (croniter), durably de-duplicated.

The last fired cron time is claimed in the store before triggering, so a restart (or a
second process) never fires one time twice. A time missed while nothing ran fires once at
start; earlier missed times are skipped.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

import trio
from croniter import croniter

from ._clock import trio_deadline
from ._engine import log
from ._errors import InvalidArgument, RunNotFound, WorkflowInProgress

if TYPE_CHECKING:
    from ._workflow import Workflow

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
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise InvalidArgument(
            f"invalid cron spec {spec!r}: use 5 fields (minute hour day month weekday) "
            "or one of " + ", ".join(sorted(ALIASES))
        )
    return expression


def _next_after(expression: str, after: datetime, tz: tzinfo) -> datetime:
    return croniter(expression, after.astimezone(tz)).get_next(datetime).astimezone(UTC)


def _prev_before(expression: str, before: datetime, tz: tzinfo) -> datetime:
    return croniter(expression, before.astimezone(tz)).get_prev(datetime).astimezone(UTC)


async def _allowed(filter: Callable[..., Any] | None, when: datetime) -> bool:
    if filter is None:
        return True
    try:
        takes_time = bool(inspect.signature(filter).parameters)
    except (TypeError, ValueError):
        takes_time = True
    result = filter(when) if takes_time else filter()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


async def schedule_trigger(
    workflow: Workflow[Any, Any],
    foreign_id: str,
    spec: str,
    start: Any = None,
    *,
    initial: Any = None,
    filter: Callable[..., Any] | None = None,
    tz: tzinfo = UTC,
) -> None:
    expression = parse_cron(spec)
    if not isinstance(foreign_id, str) or not foreign_id:
        raise InvalidArgument("schedule_trigger: foreign_id must be a non-empty string")
    if start is not None:
        workflow._status_arg(start, "start")
    if initial is not None:
        workflow._codec.check(initial, "initial")
    clock = workflow.clock
    store = workflow.store
    key = f"schedule:{workflow.name}:{foreign_id}:{expression}"
    last = await store.last_schedule(key)
    now = clock.now()
    if last is None:
        due = _next_after(expression, now, tz)
    else:
        due = _next_after(expression, last, tz)
        if due <= now:
            due = _prev_before(expression, now, tz) if due < now else due  # missed: fire once
    while True:
        await trio.sleep_until(trio_deadline(clock, due))
        # A wall clock that runs slow against trio's: wait out the rest.
        while clock.now() < due:  # noqa: ASYNC110
            await trio.sleep_until(trio_deadline(clock, due))
        fired = due
        due = _next_after(expression, max(fired, clock.now()), tz)
        if not await store.claim_schedule(key, fired):
            continue
        try:
            latest = await workflow.latest(foreign_id)
            if not latest.run_state.finished:
                log.info("schedule %r: %s skipped, run %s unfinished", key, fired, latest.run_id)
                continue
        except RunNotFound:
            pass
        if not await _allowed(filter, fired):
            continue
        try:
            await workflow.trigger(foreign_id, start, initial=initial)
        except WorkflowInProgress:
            continue
