"""``await_status``: waiting until a run has been at a status, wherever it runs."""

from __future__ import annotations

import contextlib
import enum
from typing import TypeVar

import attrs
import trio

from actorflow._api.core import WorkflowCore
from actorflow._model.errors import (
    ActorflowError,
    InvalidArgument,
    Lagged,
    RunNotFound,
    StatusNotReached,
)
from actorflow._model.record import RawRecord, Record
from actorflow._runtime.engine import log
from actorflow.stores.feed import Subscription

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

math_inf = float("inf")
UNATTENDED_AFTER = 60.0
"""Seconds (trio time) ``await_status`` waits on a shared store, with the workflow not
running in this process and the run unchanged, before it logs one warning."""


class Awaiting(WorkflowCore[T, S]):
    """Waiting for a status (part of ``af.Workflow``)."""

    async def await_status(
        self,
        foreign_id: str,
        run_id: str,
        status: S,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the API's name)
    ) -> Record[T, S]:
        """Wait until the run has been at ``status``; return it as it was when it got there.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            RunNotFound: no such run for that foreign id.
            StatusNotReached: the run finished without reaching ``status``.
        """
        wanted = int(self._status_arg(status))
        if wanted <= 0:  # the enum may have one (UNKNOWN = 0), no graph does: for ever
            raise InvalidArgument(
                f"workflow {self.name!r}: {self._definition.status(wanted)!r} is a reserved "
                "status (<= 0): no run is ever at it, the wait would never end"
            )
        foreign_id = self._foreign_id_arg(foreign_id)
        run_id = self._run_id_arg(run_id)
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not _seconds_ok(timeout)
        ):
            raise InvalidArgument(
                f"workflow {self.name!r}: timeout must be a number of seconds >= 0 or None, "
                f"not {timeout!r}"
            )
        if timeout is None:
            return await self._await_status(foreign_id, run_id, wanted)
        with trio.move_on_after(timeout):
            return await self._await_status(foreign_id, run_id, wanted)
        # The deadline may have cut a read short (a timeout of 0 cuts the first one): what
        # is stored when it passed decides, so a status reached in time is never a timeout.
        found = await self._look(foreign_id, run_id, wanted)
        if found is not None:
            return found
        raise TimeoutError(
            f"workflow {self.name!r} run {run_id} did not reach "
            f"{self._definition.status(wanted)!r} within {timeout} s"
        )

    async def _await_status(self, foreign_id: str, run_id: str, wanted: int) -> Record[T, S]:
        poll = self._poll_interval.total_seconds() if self._store.shared else math_inf
        watch = _Unattended(trio.current_time())
        while True:
            with self._store.feed.subscribe(run_id=run_id) as sub:
                found = await self._await_in(sub, foreign_id, run_id, wanted, poll, watch)
            if found is not None:
                return found

    async def _await_in(
        self,
        sub: Subscription,
        foreign_id: str,
        run_id: str,
        wanted: int,
        poll: float,
        watch: _Unattended,
    ) -> Record[T, S] | None:
        while True:
            history = await self._history(foreign_id, run_id)
            for raw in history:
                if raw.status == wanted:
                    return self._engine.typed(raw)
            self._check_reachable(history[-1], wanted)
            if self._runs_nowhere():
                at = history[-1].meta.status_description or history[-1].status
                raise self._not_running(
                    f"run {run_id} is at {at} and would wait for "
                    f"{self._definition.status(wanted)!r} forever"
                )
            self._check_not_within(run_id, wanted)
            await self._warn_if_unattended(history[-1], wanted, watch)
            if sub.lagged:
                return None
            found = None  # another process wrote, or the poll: read the history again
            unattended = not watch.warned and self._local_supervisor() is None
            warn_at = watch.since + UNATTENDED_AFTER if unattended else math_inf
            supervisor = self._local_supervisor()
            waiting = supervisor.waiting_on(run_id) if supervisor else contextlib.nullcontext()
            with waiting, self._store.feed.until_external(poll), trio.move_on_at(warn_at):
                found = await _next_matching(sub, wanted)
            if found is not None:
                return self._engine.typed(found)

    async def _history(self, foreign_id: str, run_id: str) -> list[RawRecord]:
        """The run's stored versions (RunNotFound: no such run of that foreign id)."""
        history = await self._store.history(self.name, run_id)
        if history[0].foreign_id != foreign_id:
            raise RunNotFound(
                f"workflow {self.name!r}: run {run_id} belongs to foreign id "
                f"{history[0].foreign_id!r}, not {foreign_id!r}"
            )
        return history

    async def _look(self, foreign_id: str, run_id: str, wanted: int) -> Record[T, S] | None:
        """One read: the version at ``wanted`` if the run has been there, else None
        (StatusNotReached: it finished without getting there)."""
        history = await self._history(foreign_id, run_id)
        for raw in history:
            if raw.status == wanted:
                return self._engine.typed(raw)
        self._check_reachable(history[-1], wanted)
        return None

    async def _warn_if_unattended(self, raw: RawRecord, wanted: int, watch: _Unattended) -> None:
        """A shared store, the workflow not running in this process, and the run unchanged
        for UNATTENDED_AFTER seconds with no timer of its own due meanwhile: say so once
        (is a worker running elsewhere?)."""
        now = trio.current_time()
        if raw.version != watch.version or self._local_supervisor() is not None:
            watch.version, watch.since = raw.version, now
            return
        if not watch.warned and now - watch.since >= UNATTENDED_AFTER:
            timers = await self._store.list_timers(self.name, raw.run_id)
            due = [t.fire_at for t in timers if t.fire_at >= self._engine.now()]
            if due:  # waiting for its timer is not being unattended: look again after it
                wait = min(due) - self._engine.now()
                watch.since = trio.current_time() + wait.total_seconds()
                return
            watch.warned = True
            log.warning(
                "workflow %r: run %s has waited %.0f s at %s for %r and nothing moved it; "
                "the workflow is not running in this process: is a worker running on %r?",
                self.name,
                raw.run_id,
                now - watch.since,
                raw.meta.status_description or raw.status,
                self._definition.status(wanted),
                self._store,
            )

    def _check_not_within(self, run_id: str, wanted: int) -> None:
        """Raise when the caller is the run's own user code (its step, timeout or
        callback, or a task of theirs): the run cannot move on while it waits for itself."""
        supervisor = self._local_supervisor()
        if supervisor is not None and supervisor.within_actor(run_id):
            raise ActorflowError(
                f"workflow {self.name!r} run {run_id}: a step, timeout or callback of the run "
                f"cannot await {self._definition.status(wanted)!r} of its own run (it would "
                "wait for itself forever); return the status to go on instead"
            )

    def _check_reachable(self, raw: RawRecord, wanted: int) -> None:
        if raw.run_state.finished:
            raise StatusNotReached(
                f"workflow {self.name!r} run {raw.run_id} is {raw.run_state.name} at "
                f"{raw.meta.status_description} and never reached "
                f"{self._definition.status(wanted)!r}"
                + (
                    " (or its version there was deleted by history retention)"
                    if self._settings.history_retention is not None
                    else ""
                )
            )


@attrs.define
class _Unattended:
    """How long an ``await_status`` has seen its run unchanged (see UNATTENDED_AFTER)."""

    since: float
    version: int = 0
    warned: bool = False


async def _next_matching(sub: Subscription, wanted: int) -> RawRecord | None:
    """The next published version at ``wanted``; None to re-read the history (lag).
    The caller bounds the wait (another process's write, or the real-time poll)."""
    while True:
        try:
            raw = await sub.receive()
        except Lagged:  # re-read the history (a closed store's StoreError is the caller's)
            return None
        if raw.status == wanted:
            return raw
        if raw.run_state.finished:
            return None


def _seconds_ok(timeout: float) -> bool:
    """A timeout trio can take: not negative, not NaN, and an int that fits a float."""
    try:
        return float(timeout) >= 0
    except OverflowError:
        return False
