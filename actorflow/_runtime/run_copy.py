"""What a run's actor knows of its run: the latest record and timers it read or stored, and
the in-memory waits (the back-off after an error, timeouts that skipped)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, final

import trio

from actorflow._model.record import RawRecord, Timer
from actorflow._runtime.engine import RESUME, Engine
from actorflow._runtime.ports import RunWithTimers
from actorflow._runtime.upgrade import upgrade

MIN_SNOOZE = timedelta(milliseconds=10)
"""The shortest wait before a skipped timeout fires again (``error_backoff`` may be 0)."""


@final
class RunCopy:
    """The actor's copy of its run. ``stale`` until read; set stale again whenever the
    store may hold a newer version (a conflict, a change by someone else)."""

    __slots__ = (
        "engine",
        "own",
        "raw",
        "retry_at",
        "run_id",
        "skipped_version",
        "snoozed",
        "stale",
        "step_scope",
        "timers",
    )

    def __init__(self, engine: Engine[Any, Any], run_id: str) -> None:
        self.engine = engine
        self.run_id = run_id
        self.stale = True
        self.raw: RawRecord | None = None
        self.own: RawRecord | None = None
        """The version this actor stored last (its next step takes it up at once)."""
        self.timers: list[Timer] | None = None
        """The run's stored timers (None: not read yet)."""
        self.retry_at = -math.inf
        """The trio time before which a failed action is not tried again."""
        self.skipped_version = 0
        """The version whose step chose to store nothing (it is not run again)."""
        self.snoozed: dict[Timer, datetime] | None = None
        """Timers whose timeout returned run.skip(): the wall time each may fire again."""
        self.step_scope: trio.CancelScope | None = None
        """The scope of the step or timeout function in flight (None: none runs)."""

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[trio.CancelScope]:
        """A scope around a step or timeout function that :meth:`interrupt_step` cancels."""
        with trio.CancelScope() as scope:
            self.step_scope = scope
            try:
                yield scope
            finally:
                self.step_scope = None

    def interrupt_step(self) -> None:
        """Cancel the step or timeout function in flight, if any (its result is dropped)."""
        if self.step_scope is not None:
            self.step_scope.cancel()

    def start_from(self, raw: RawRecord, timers: list[Timer]) -> None:
        """Begin with the run as it was just stored (saves reading it back)."""
        if self.raw is None and self.stale:
            self.raw, self.timers = raw, timers
            self.stale = False

    async def load(self) -> RawRecord:
        """The latest record: read from the store when stale (migrated, or parked, when
        another definition wrote it)."""
        if self.raw is None or self.stale:
            store = self.engine.store
            timers: list[Timer] | None = None
            if isinstance(store, RunWithTimers):  # one request for both (PostgreSQL)
                raw, timers = await store.lookup_with_timers(self.engine.name, self.run_id)
            else:
                raw = await store.lookup(self.engine.name, self.run_id)
            self.timers = None
            if raw.meta.definition != self.engine.fingerprint:
                raw = await upgrade(self.engine, raw)  # reads (and may change) the timers
            else:
                self.timers = timers
            self.raw = raw
            self.stale = False
        return self.raw

    async def load_timers(self) -> list[Timer]:
        """The run's stored timers, read once."""
        if self.timers is None:
            self.timers = await self.engine.store.list_timers(self.engine.name, self.run_id)
        return self.timers

    def stored(self, new: RawRecord, timers: list[Timer] | None) -> None:
        """This actor stored ``new`` (with ``timers``, None: unchanged). A new status or
        state ends the back-off."""
        raw = self.raw
        if raw is None or new.status != raw.status or new.run_state != raw.run_state:
            self.retry_at = -math.inf
        self.raw = self.own = new
        if timers is not None:
            self.timers = timers

    def back_off(self, seconds: float) -> None:
        """Try nothing on the run for ``seconds``."""
        self.retry_at = trio.current_time() + seconds

    def fires_at(self, timer: Timer) -> datetime:
        """When ``timer`` is due: its time, or later when its timeout skipped."""
        if self.snoozed is None:
            return timer.fire_at
        return self.snoozed.get(timer, timer.fire_at)

    def snooze(self, timer: Timer, backoff: timedelta) -> None:
        """The timeout of ``timer`` skipped: it fires again after ``backoff``, nothing stored."""
        timers = self.timers or []
        snoozed = {t: w for t, w in (self.snoozed or {}).items() if t in timers}
        snoozed[timer] = self.engine.now() + max(backoff, MIN_SNOOZE)
        self.snoozed = snoozed

    def due_timeout(self, raw: RawRecord, now: datetime) -> tuple[Timer | None, datetime | None]:
        """The timer of ``raw``'s status whose timeout is due at wall time ``now``, else
        None and the earliest time a skipped one fires again (None: none skipped)."""
        snoozed: datetime | None = None
        for timer in self.timers or ():
            if timer.kind != RESUME and timer.status == raw.status and timer.fire_at <= now:
                fires_at = self.fires_at(timer)
                if fires_at <= now:
                    return timer, None
                snoozed = fires_at if snoozed is None else min(snoozed, fires_at)
        return None, snoozed

    def resume_due(self, now: datetime) -> bool:
        """Whether the automatic resume among the run's timers is due at ``now``."""
        return any(t.kind == RESUME and t.fire_at <= now for t in self.timers or ())

    def next_wake_up(self, now: datetime) -> tuple[datetime, bool] | None:
        """The earliest future time a timer is due (and whether that time exists in memory
        only: a snoozed timeout), or None."""
        future = [(self.fires_at(t), t) for t in self.timers or ()]
        future = [(when, t) for when, t in future if when > now]
        if not future:
            return None
        when, timer = min(future, key=lambda pair: pair[0])
        return when, when != timer.fire_at
