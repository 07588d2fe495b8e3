"""Testing an hour-long timeout in milliseconds, with trio's virtual clock.

The workflow gets a wall clock derived from trio's clock
(``actorflow.testing.trio_clock(start)``: wall time = ``start + trio.current_time()``), and
the test runs under a ``trio.testing.MockClock``, so moving trio's clock moves the
workflow's time and its timers:

- With the ``autojump_clock`` fixture (pytest-trio; ``trio_mode = true`` in
  pyproject.toml), time jumps to the next deadline whenever every task is waiting: the hour
  passes at once, and at the exact instant.
- With a plain ``MockClock()``, time stands still until the test moves it with
  ``clock.jump``; ``await_timeout_insert`` waits until the timer is stored first.

Run these with ``pytest examples/timeout``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

import actorflow as af
from actorflow.testing import await_timeout_insert, trio_clock
from examples.timeout.main import Reservation, Table, build

START = datetime(2026, 1, 1, 18, 0, tzinfo=UTC)


async def test_an_unconfirmed_table_is_released_after_an_hour(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = build(af.MemoryStore(), clock=trio_clock(START))
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("table-1", initial=Reservation("ada"))
        released = await workflow.await_status("table-1", run_id, Table.RELEASED)
    assert released.updated_at == START + timedelta(hours=1)
    assert released.object.released_at == (START + timedelta(hours=1)).isoformat()
    assert trio.current_time() == pytest.approx(3600)  # virtual seconds; the test took ms


async def test_a_confirmation_a_minute_before_the_hour_wins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = build(af.MemoryStore(), clock=trio_clock(START))
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("table-1", initial=Reservation("ada"))
        await trio.sleep(59 * 60)
        confirmed = await workflow.callback("table-1", Table.HELD, b"on our way")
        await trio.sleep(2 * 3600)  # long past the hour: the timer was dropped
    assert confirmed is not None and confirmed.status is Table.CONFIRMED
    history = await workflow.history(run_id)
    assert [r.status for r in history] == [Table.HELD, Table.CONFIRMED]
    assert history[-1].updated_at == START + timedelta(minutes=59)


def test_moving_a_mock_clock_by_hand() -> None:
    clock = trio.testing.MockClock()  # virtual time that moves only when told to

    async def scenario() -> af.Record[Reservation, Table]:
        workflow = build(af.MemoryStore(), clock=trio_clock(START))
        async with af.open_workflow(workflow):
            run_id = await workflow.trigger("table-1", initial=Reservation("ada"))
            await await_timeout_insert(workflow, "table-1", run_id, Table.HELD)
            clock.jump(3599)
            await trio.testing.wait_all_tasks_blocked()
            assert (await workflow.lookup(run_id)).status is Table.HELD  # one second to go
            clock.jump(1)
            return await workflow.await_status("table-1", run_id, Table.RELEASED)

    released = trio.run(scenario, clock=clock)
    assert released.updated_at == START + timedelta(hours=1)
