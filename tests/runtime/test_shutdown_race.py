"""A run created while the workflow is being cancelled: the supervisor's actors are gone
but its services are still shutting down. The trigger is stored (the next start picks it
up) and nothing tries to start a task in the closed nursery of the actors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

import actorflow as af
from tests.workflows import Status, YinYang, yinyang


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


@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "sqlite"])
async def test_triggers_at_every_checkpoint_of_a_cancellation_are_stored(
    on_disk: bool, tmp_path: Path
) -> None:
    """The window between the actors' last task ending and the supervisor resuming: a
    caller that triggers at every scheduling point of the shutdown meets every state of it
    (the bench's background load did, once, in CI) and never a closed nursery. Before the
    fix about half the rounds met one."""
    for round_ in range(12):
        path = tmp_path / f"round-{round_}.db"
        store: af.Store = af.SQLiteStore(str(path)) if on_disk else af.MemoryStore()
        workflow = yinyang(store, af.SystemClock())
        stored: list[str] = []
        errors: list[BaseException] = []

        async with trio.open_nursery() as nursery:
            await nursery.start(workflow.run)
            for i in range(20):  # actors alive when the cancellation comes
                await workflow.trigger(f"early-{i}")
            nursery.start_soon(_trigger_at_every_checkpoint, workflow, stored, errors)
            await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
        assert errors == [], f"round {round_}: {errors[0]!r}"
        assert len(stored) == 60
        for run_id in stored:
            await workflow.lookup(run_id)
        if isinstance(store, af.SQLiteStore):
            await store.aclose()


async def _trigger_at_every_checkpoint(
    workflow: af.Workflow[YinYang, Status], stored: list[str], errors: list[BaseException]
) -> None:
    """Once cancelled, trigger 60 runs, one per scheduling point, shielded."""
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            for i in range(60):
                try:
                    stored.append(await workflow.trigger(f"late-{i}"))
                except BaseException as exc:  # recorded for the test
                    errors.append(exc)
                await trio.lowlevel.checkpoint()
