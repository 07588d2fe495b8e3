"""A run created while the workflow is being cancelled: the supervisor's actors are gone
but its services are still shutting down. The trigger is stored (the next start picks it
up) and nothing tries to start a task in the closed nursery of the actors."""

from __future__ import annotations

from collections.abc import Callable

import trio

import actorflow as af
from tests.workflows import yinyang


class _TriggersOnTheWayOut:
    """An ownership (all runs are ours) whose shutdown, after the actors' nursery has
    closed, triggers a run: what a trigger from any other task can meet in that window."""

    def __init__(self) -> None:
        self.workflow: af.Workflow[object, object] | None = None
        self.run_id: str | None = None
        self.error: BaseException | None = None

    def owns(self, run_id: str) -> bool:
        return True

    async def serve(
        self,
        on_change: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                for _ in range(20):  # let the actors' nursery finish closing
                    await trio.lowlevel.checkpoint()
                assert self.workflow is not None
                try:
                    self.run_id = await self.workflow.trigger("late")
                except BaseException as exc:  # recorded for the test
                    self.error = exc


async def test_trigger_while_cancelled_is_stored_not_crashed() -> None:
    ownership = _TriggersOnTheWayOut()
    store = af.MemoryStore()
    workflow = yinyang(store, af.SystemClock(), ownership=ownership)
    ownership.workflow = workflow  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        await nursery.start(workflow.run)
        nursery.cancel_scope.cancel()
    assert ownership.error is None, repr(ownership.error)
    assert ownership.run_id is not None
    record = await workflow.lookup(ownership.run_id)
    assert record.foreign_id == "late"
