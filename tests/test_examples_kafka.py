"""The Kafka example: two workflows on two stores talk only through Kafka."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import trio

import actorflow as af
from examples.kafka.main import Order, OrderStatus, make_streamer, run_example

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = os.environ.get("ACTORFLOW_KAFKA_BOOTSTRAP")

pytestmark = [
    pytest.mark.kafka,
    # In CI (.ci/run starts a broker) a missing broker fails these tests instead.
    pytest.mark.skipif(
        not BOOTSTRAP and not os.environ.get("CI"),
        reason="ACTORFLOW_KAFKA_BOOTSTRAP is not set: the Kafka example was NOT tested",
    ),
]


async def test_every_order_is_paid_through_kafka_then_shipped(tmp_path: Path) -> None:
    assert BOOTSTRAP
    streamer = make_streamer(BOOTSTRAP, f"extest-{uuid.uuid4().hex[:8]}-")
    with trio.fail_after(60):
        records = await run_example(streamer, tmp_path, count=4, quiet=True)
    assert [r.foreign_id for r in records] == [f"order-{n}" for n in range(1, 5)]
    payments = af.SQLiteStore(tmp_path / "payments.db")
    try:
        for n, record in enumerate(records, start=1):
            assert record.status is OrderStatus.SHIPPED
            assert record.run_state is af.RunState.COMPLETED
            paid = await payments.latest("payments", f"order-{n}")
            assert record.object == Order(100 * n, paid.run_id, shipped=True)
    finally:
        await payments.aclose()
    # Each workflow published to its own topic; each connector has its own group.
    assert streamer.topic_name("orders").endswith("-orders")
    # Every order's AWAITING_PAYMENT reached payments, and every SETTLED reached orders,
    # through Kafka (what the relays sent after the last order shipped may not be sent yet).
    assert streamer.stats.received >= 4 + 4 and streamer.stats.sent >= 4 + 4
    assert streamer.stats.undecodable == 0


async def test_the_example_runs_from_the_command_line() -> None:
    assert BOOTSTRAP
    result = await trio.run_process(
        [sys.executable, "-m", "examples.kafka", "--bootstrap", BOOTSTRAP, "--orders", "2"],
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
    )
    lines = result.stdout.decode().splitlines()
    assert [line.split(":")[0] for line in lines] == ["order-1", "order-2"], result.stderr
    assert all(line.endswith("shipped") for line in lines)
