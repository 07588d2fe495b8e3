"""The connector example: orders wait for payments, on MemoryStore and on SQLite."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
import trio.testing

import actorflow as af
from actorflow.streaming import connector_stats
from actorflow.testing import trio_clock
from examples.connector.main import Order, OrderStatus, build, run_example

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


async def test_every_order_is_paid_then_shipped_on_memory(autojump_clock: Any) -> None:
    store = af.MemoryStore()
    records = await run_example(store, count=5, clock=trio_clock(START), quiet=True)
    assert [r.foreign_id for r in records] == [f"order-{n}" for n in range(1, 6)]
    for n, record in enumerate(records, start=1):
        assert record.status is OrderStatus.SHIPPED
        assert record.run_state is af.RunState.COMPLETED
        assert record.object == Order(100 * n, f"ch_order-{n}_{100 * n}", shipped=True)
    assert await store.get_cursor("connector:orders:payments") is not None


async def test_the_example_on_a_sqlite_file(tmp_path: Path) -> None:
    store = af.SQLiteStore(tmp_path / "connector.db")
    try:
        with trio.fail_after(30):
            records = await run_example(store, count=3, quiet=True)
        assert all(r.object.shipped for r in records)
        # After a restart the connector resumes after its cursor: it handles the payments
        # settled after the cursor (at most the last one, if the stop came between its
        # handling and the cursor write), then the next order's payment.
        settled = [e.id for e in await store.read_events(0, 1000, "payments") if e.status == 2]
        cursor = await store.get_cursor("connector:orders:payments")
        after = settled.index(int(cursor)) + 1 if cursor is not None else 0
        assert after >= len(settled) - 1
        payments, orders = build(store)
        async with af.open_workflow(payments, orders):
            run_id = await orders.trigger("order-4", initial=Order(400))
            with trio.fail_after(30):
                await orders.await_status("order-4", run_id, OrderStatus.SHIPPED)
            await trio.testing.wait_all_tasks_blocked()  # the connector has stored its cursor
        assert connector_stats(orders)["payments"].handled == len(settled) - after + 1
    finally:
        await store.aclose()


async def test_the_example_runs_from_the_command_line() -> None:
    for argv in (["-m", "examples.connector"], ["-m", "examples.connector", "--memory"]):
        result = await trio.run_process(
            [sys.executable, *argv], cwd=ROOT, capture_stdout=True, capture_stderr=True
        )
        lines = result.stdout.decode().splitlines()
        assert lines == [
            f"order-{n}: {100 * n} cents paid (ch_order-{n}_{100 * n}), shipped" for n in (1, 2, 3)
        ], result.stderr.decode()
