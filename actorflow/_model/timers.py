"""Timer functions for ``add_timeout``: when a timeout of a run expires."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from actorflow._model.clock import require_aware
from actorflow._model.errors import BuildError

TimerFn = Callable[[Any, datetime], datetime | None]
"""``timer(run, now) -> datetime | None``: the expiry instant, or None for no timeout."""


def after(delay: timedelta) -> TimerFn:
    """A timer that expires ``delay`` after the run enters the status."""
    if not isinstance(delay, timedelta):
        raise BuildError(f"after() takes a timedelta, not {type(delay).__name__}")
    if delay < timedelta(0):
        raise BuildError(f"after() takes a delay >= 0, not {delay}")

    def timer(run: Any, now: datetime) -> datetime:
        try:
            return now + delay
        except OverflowError:  # past the year 9999: as good as never, the latest instant
            return datetime.max.replace(tzinfo=UTC)

    timer.__qualname__ = timer.__name__ = f"after({delay})"
    return timer


def at(when: datetime) -> TimerFn:
    """A timer that expires at a fixed instant (aware datetime; in the past: at once)."""
    try:
        fixed = require_aware(when, "at()")
    except Exception as exc:
        raise BuildError(str(exc)) from None

    def timer(run: Any, now: datetime) -> datetime:
        return fixed

    timer.__qualname__ = timer.__name__ = f"at({fixed.isoformat()})"
    return timer
