"""Wall clocks, and the bridge from wall time to trio deadlines.

Timers are stored as aware UTC instants and armed as trio deadlines:
``trio.current_time() + (fire_at - clock.now())``. With :func:`actorflow.testing.trio_clock`
wall time is derived from trio time, so a MockClock moves both together.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol, final, runtime_checkable

import trio

from actorflow._model.errors import InvalidArgument, describe_error, shown


@runtime_checkable
class Clock(Protocol):
    """Tells the current wall time as an aware UTC datetime."""

    def now(self) -> datetime: ...


@final
class SystemClock:
    """The real wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


@final
class TrioClock:
    """Wall time = ``start + trio.current_time()``: virtual under a MockClock."""

    def __init__(self, start: datetime) -> None:
        self._start = require_aware(start, "trio_clock start")

    def now(self) -> datetime:
        return self._start + timedelta(seconds=trio.current_time())

    def __repr__(self) -> str:
        return f"TrioClock(start={self._start.isoformat()})"


@final
class CheckedClock:
    """A user's clock, held to the contract every reader relies on: each ``now()`` is an
    aware datetime, handed on in UTC (records, timers and cron times are UTC instants); a
    naive or non-datetime answer is an InvalidArgument naming the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def now(self) -> datetime:
        try:
            when = self.clock.now()
        except Exception as exc:  # the user's clock failing: named (it is user code)
            raise InvalidArgument(
                f"the workflow clock {shown(self.clock)}: now() raised {describe_error(exc)}"
            ) from exc
        if type(when) is datetime and when.tzinfo is UTC:
            return when  # the usual answer, as it is (no message made for every call)
        return require_aware(when, f"the workflow clock {shown(self.clock)}: now()")

    def __repr__(self) -> str:
        return shown(self.clock)


def checked(clock: Clock) -> Clock:
    """``clock`` as the workflow uses it: actorflow's own clocks as they are (they tell
    UTC), any other one in a :class:`CheckedClock`."""
    if isinstance(clock, SystemClock | TrioClock | CheckedClock):
        return clock
    return CheckedClock(clock)


def require_aware(when: datetime, what: str) -> datetime:
    """Return ``when`` in UTC; raise InvalidArgument for a naive or non-datetime value."""
    if not isinstance(when, datetime):
        raise InvalidArgument(f"{what} must be a datetime, not {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidArgument(
            f"{what} is a naive datetime ({when.isoformat()}); give it a timezone, "
            "e.g. datetime(..., tzinfo=datetime.UTC)"
        )
    try:
        return when.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is in the year 10000 in UTC
        raise InvalidArgument(
            f"{what} ({when.isoformat()}) is not within the years 1-9999 in UTC"
        ) from None


def trio_deadline(clock: Clock, when: datetime) -> float:
    """The trio deadline at which ``clock`` will read ``when`` (in the past: now)."""
    return trio.current_time() + max(0.0, (when - clock.now()).total_seconds())
