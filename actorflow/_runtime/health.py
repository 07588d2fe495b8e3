"""What ``workflow.states()`` reports for a supervisor, worked out from what it holds now
(no bookkeeping on the hot path): each step and timeout consumer, the timers and, with
scale-out, shard ownership."""

from __future__ import annotations

from typing import Any

from actorflow._model.process import ProcessState
from actorflow._runtime.engine import Engine
from actorflow._runtime.ports import Ownership


def holds_share(ownership: Ownership | None) -> bool:
    """Whether this process holds its fair share of shard leases (always, without
    scale-out)."""
    if ownership is None:
        return True
    held = getattr(ownership, "held", None)
    if held is None:
        return True
    return len(held()) >= int(getattr(ownership, "target", 0))


def process_names(engine: Engine[Any, Any], ownership: Ownership | None) -> list[str]:
    """The names :func:`process_states` reports."""
    names = [p.name for p in engine.step_processes.values()]
    names += [p.name for p in engine.timeout_processes.values()]
    names.append("timers")
    if ownership is not None:
        names.append("shard-ownership")
    return names


def stopped_states(
    engine: Engine[Any, Any], ownership: Ownership | None
) -> dict[str, ProcessState]:
    """Every process stopped (the workflow is not served here)."""
    return dict.fromkeys(process_names(engine, ownership), ProcessState.STOPPED)


def process_states(
    engine: Engine[Any, Any],
    ownership: Ownership | None,
    *,
    busy: set[int],
    timers_armed: bool,
) -> dict[str, ProcessState]:
    """The state of each process of a served workflow; ``busy``: the statuses of the runs
    that have (or wait for) an actor."""
    erroring = engine.errors.erroring()
    found: dict[str, ProcessState] = {}
    for processes in (engine.step_processes, engine.timeout_processes):
        for status, process in processes.items():
            if process.name in erroring:
                found[process.name] = ProcessState.ERRORING
            elif status in busy:
                found[process.name] = ProcessState.RUNNING
            else:
                found[process.name] = ProcessState.IDLE
    found["timers"] = ProcessState.RUNNING if timers_armed else ProcessState.IDLE
    if ownership is not None:
        found["shard-ownership"] = (
            ProcessState.RUNNING if holds_share(ownership) else ProcessState.IDLE
        )
    return found
