"""Run states and the table of legal run-state changes (as luno/workflow allows)."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from actorflow._model.errors import InvalidTransition


class RunState(enum.IntEnum):
    """Where a run is in its life, apart from its workflow status."""

    INITIATED = 1
    RUNNING = 2
    PAUSED = 3
    CANCELLED = 4
    COMPLETED = 5
    DATA_DELETED = 6
    REQUESTED_DATA_DELETED = 7

    def __str__(self) -> str:
        # IntEnum prints as its number since Python 3.11; a run state reads better by name.
        return f"RunState.{self.name}"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else format(int(self), spec)

    @property
    def finished(self) -> bool:
        """True when the run will not move by itself any more (PAUSED is unfinished)."""
        return self not in _UNFINISHED

    @property
    def stopped(self) -> bool:
        """True when the run waits for someone to act on it (resume it, delete its data):
        PAUSED, CANCELLED and the data-deleted states, as luno's ``Stopped()``. A COMPLETED
        run is finished but not stopped."""
        return self in _STOPPED

    @property
    def active(self) -> bool:
        """True when steps, callbacks and timeouts may act on the run."""
        return self in (RunState.INITIATED, RunState.RUNNING)


_UNFINISHED = frozenset({RunState.INITIATED, RunState.RUNNING, RunState.PAUSED})
_STOPPED = frozenset(
    {
        RunState.PAUSED,
        RunState.CANCELLED,
        RunState.DATA_DELETED,
        RunState.REQUESTED_DATA_DELETED,
    }
)

TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    RunState.INITIATED: frozenset({RunState.RUNNING, RunState.PAUSED}),
    RunState.RUNNING: frozenset({RunState.COMPLETED, RunState.PAUSED, RunState.CANCELLED}),
    RunState.PAUSED: frozenset({RunState.RUNNING, RunState.CANCELLED}),
    RunState.COMPLETED: frozenset({RunState.REQUESTED_DATA_DELETED}),
    RunState.CANCELLED: frozenset({RunState.REQUESTED_DATA_DELETED}),
    RunState.REQUESTED_DATA_DELETED: frozenset({RunState.DATA_DELETED}),
    RunState.DATA_DELETED: frozenset({RunState.REQUESTED_DATA_DELETED}),
}


def can_transition(old: RunState, new: RunState) -> bool:
    """Whether ``old -> new`` is a legal run-state change."""
    return new in TRANSITIONS[old]


def check_transition(old: RunState, new: RunState, *, run_id: str = "") -> None:
    """Raise :class:`InvalidTransition` unless ``old -> new`` is legal."""
    if not can_transition(old, new):
        allowed = ", ".join(s.name for s in sorted(TRANSITIONS[old])) or "nothing"
        where = f"run {run_id}: " if run_id else ""
        raise InvalidTransition(
            f"{where}cannot go from {old.name} to {new.name}; from {old.name} a run may go to "
            f"{allowed}"
        )
