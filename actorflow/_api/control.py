"""Changing runs: ``callback`` and the run-state controls (pause, resume, cancel,
delete_data), through the run's actor when it runs here, else on the store directly."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from actorflow._api.core import WorkflowCore
from actorflow._model.errors import InvalidArgument, StoreError, VersionConflict
from actorflow._model.record import RawRecord, Record, Timer
from actorflow._model.run_state import RunState
from actorflow._model.text import check_text
from actorflow._runtime.callbacks import run_callbacks
from actorflow._runtime.mailbox import Op, Stopped
from actorflow._runtime.upgrade import upgrade

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

INLINE_ATTEMPTS = 5

_TARGETS = {
    "pause": RunState.PAUSED,
    "resume": RunState.RUNNING,
    "cancel": RunState.CANCELLED,
    "delete_data": RunState.REQUESTED_DATA_DELETED,
}
"""The run state each control moves a run to."""


class Control(WorkflowCore[T, S]):
    """Changing runs (part of ``af.Workflow``)."""

    async def _perform(self, run_id: str, op: Op, *, interrupt: bool = False) -> Any:
        """Perform ``op`` on the run: through its actor when it runs here, else on the
        store. ``interrupt``: a step in flight that has not ended within the grace period
        is cancelled (a pause or cancel of a run whose step hangs still happens)."""
        supervisor = self._local_supervisor()
        if supervisor is not None and supervisor.owns(run_id):
            wait = self._grace_period.total_seconds() if interrupt else None
            try:
                return await supervisor.ask(run_id, op, interrupt_after=wait)
            except Stopped:
                pass
        # Not ours to run (no worker here, or another process owns its shard): apply it
        # directly; the store's version check serialises it with the owner's transitions.
        for _ in range(INLINE_ATTEMPTS):
            raw = await self._store.lookup(self.name, run_id)
            try:
                if raw.meta.definition != self._engine.fingerprint:
                    raw = await upgrade(self._engine, raw)  # migrated as it loads
                new, timers, value = await op(raw)
            except VersionConflict:
                continue
            if new is not None:
                self._stored_directly(run_id, timers)
            return value
        raise StoreError(f"workflow {self.name!r} run {run_id} kept changing; try again")

    def _stored_directly(self, run_id: str, timers: list[Timer] | None) -> None:
        """A change this process stored on the store directly: wake the run here if this
        process works on it after all. Its shard may have arrived while the change was
        made, after the recovery that follows a gain had read the run; the store counts
        the write as the owner's own (no notification, not in this process's tail), so
        nobody else would ever look at the run again."""
        supervisor = self._local_supervisor()
        if supervisor is None:
            return
        if timers is not None:
            supervisor.wake_for_timers(run_id, timers)
        supervisor.wake_now(run_id)

    async def callback(self, foreign_id: str, status: S, payload: bytes) -> Record[T, S] | None:
        """Hand ``payload`` to the callback of the latest run of ``foreign_id`` at ``status``.

        Returns the record after the callback's transition is durably stored, or None when
        the run is not at ``status`` (or not running, or the callback skipped).

        Raises:
            RunNotFound: no run for ``foreign_id``.
            CallbackError: the callback raised or returned an invalid result (counted like a
                step error; the run may be paused by it).
        """
        foreign_id = self._foreign_id_arg(foreign_id)
        wanted = self._status_arg(status)
        if wanted not in self._definition.callbacks:
            raise InvalidArgument(
                f"workflow {self.name!r} has no callback at {wanted.name}; "
                "add one with builder.add_callback"
            )
        if isinstance(payload, bytearray | memoryview):
            payload = bytes(payload)
        if not isinstance(payload, bytes):
            raise InvalidArgument(
                f"workflow {self.name!r}: callback payload must be bytes, "
                f"not {type(payload).__name__}"
            )
        latest = await self._store.latest(self.name, foreign_id)
        if (
            self._engine.lineage.mapped_status(latest.status) != int(wanted)
            or not latest.run_state.active
        ):
            if self._runs_nowhere() and latest.run_state.active:
                raise self._not_running(
                    f"the latest run of {foreign_id!r} is at "
                    f"{latest.meta.status_description or latest.status}, not at "
                    f"{wanted.name}, and nothing will move it there"
                )
            return None
        engine = self._engine
        parent = self._trace_origin()  # the caller's trace: the callback's span continues it

        async def op(raw: RawRecord) -> tuple[RawRecord | None, list[Timer] | None, Any]:
            if raw.status != int(wanted) or not raw.run_state.active:
                return None, None, None
            new, timers = await run_callbacks(engine, raw, int(wanted), payload, parent=parent)
            return new, timers, (engine.typed(new) if new is not None else None)

        result: Record[T, S] | None = await self._perform(latest.run_id, op)
        return result

    async def _control(self, run_id: str, action: str, reason: str) -> Record[T, S]:
        run_id = self._run_id_arg(run_id)
        if not isinstance(reason, str):
            raise InvalidArgument(f"workflow {self.name!r}: reason must be a string")
        check_text(reason, f"workflow {self.name!r}: reason {reason!r}")
        stored = await self._store.lookup(self.name, run_id)  # RunNotFound before anything else
        engine = self._engine
        # Refused at once when the stored run state does not allow it: a step in flight
        # (one that hangs, say) must not hold a resume or delete_data of a run that is not
        # paused or finished until the step ends. The actor checks again as it applies it.
        if not (action == "delete_data" and stored.run_state is RunState.REQUESTED_DATA_DELETED):
            engine.check_state(stored, _TARGETS[action])
        methods: dict[str, Callable[[RawRecord, str], Awaitable[tuple[RawRecord, list[Timer]]]]] = {
            "pause": engine.pause,
            "resume": engine.resume,
            "cancel": engine.cancel,
            "delete_data": engine.delete_data,
        }
        method = methods[action]

        async def op(raw: RawRecord) -> tuple[RawRecord | None, list[Timer] | None, Any]:
            new, timers = await method(raw, reason)
            return new, timers, engine.typed(new)

        interrupt = action in ("pause", "cancel")
        record: Record[T, S] = await self._perform(run_id, op, interrupt=interrupt)
        supervisor = self._local_supervisor()
        if action == "resume" and supervisor is not None:
            supervisor.wake_now(run_id)
        return record

    async def pause(self, run_id: str, reason: str = "paused") -> Record[T, S]:
        """Pause a run. Raises InvalidTransition unless it is INITIATED or RUNNING."""
        return await self._control(run_id, "pause", reason)

    async def resume(self, run_id: str, reason: str = "resumed") -> Record[T, S]:
        """Resume a paused run. Raises InvalidTransition unless it is PAUSED."""
        return await self._control(run_id, "resume", reason)

    async def cancel(self, run_id: str, reason: str = "cancelled") -> Record[T, S]:
        """Cancel a run. Raises InvalidTransition for a finished run."""
        return await self._control(run_id, "cancel", reason)

    async def delete_data(self, run_id: str, reason: str = "data deleted") -> Record[T, S]:
        """Scrub a COMPLETED or CANCELLED run's object, history included; ends DATA_DELETED."""
        return await self._control(run_id, "delete_data", reason)
