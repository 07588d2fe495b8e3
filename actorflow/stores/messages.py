"""The errors every store raises, worded once so all stores say the same thing."""

from __future__ import annotations

from actorflow._model.errors import RunNotFound, WorkflowInProgress
from actorflow._model.run_state import RunState


def no_run(workflow_name: str, run_id: str, what: str = "") -> RunNotFound:
    """No run ``run_id`` in the workflow (``what`` names the argument, e.g. ``after=``)."""
    suffix = f" ({what})" if what else ""
    return RunNotFound(f"workflow {workflow_name!r} has no run {run_id!r}{suffix}")


def no_foreign_run(workflow_name: str, foreign_id: str) -> RunNotFound:
    """No run was ever triggered for ``foreign_id`` in the workflow."""
    return RunNotFound(f"workflow {workflow_name!r} has no run for foreign id {foreign_id!r}")


def in_progress(workflow_name: str, foreign_id: str, run_id: str, state: int) -> WorkflowInProgress:
    """The latest run of ``foreign_id`` is unfinished, so it cannot be triggered again."""
    return WorkflowInProgress(
        f"workflow {workflow_name!r}: run {run_id} of foreign id {foreign_id!r} is "
        f"{RunState(state).name}; wait for it to finish or cancel it before triggering again"
    )
