"""The examples under examples/: each runs, in-process and as ``python -m examples.NAME``.

(The connector example has its own tests in test_examples_connector.py; the timeout
example's own tests, examples/timeout/test_timeout.py, are collected from there.)
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

import actorflow as af
from actorflow.demo.main import (
    DEMO_ORDERS,
    check,
    expected_status,
    report_clock_offset,
    run_demo,
    summary,
)
from actorflow.demo.workflow import OrderStatus, ReportStatus
from actorflow.testing import trio_clock
from examples.callback.main import Expense
from examples.callback.main import run_example as run_callback
from examples.getting_started.main import Status
from examples.getting_started.main import run_example as run_getting_started
from examples.schedule.main import simulate_week
from examples.timeout.main import Table
from examples.timeout.main import run_example as run_timeout
from tests.conftest import START

ROOT = Path(__file__).resolve().parent.parent


async def test_getting_started_on_sqlite(tmp_path: Path) -> None:
    async with af.SQLiteStore(tmp_path / "yinyang.db") as store:
        with trio.fail_after(10):
            history = await run_getting_started(store)
    assert [(r.version, r.status, r.run_state) for r in history] == [
        (1, Status.STARTED, af.RunState.INITIATED),
        (2, Status.MIDDLE, af.RunState.RUNNING),
        (3, Status.END, af.RunState.COMPLETED),
    ]
    assert history[-1].object.yin and history[-1].object.yang


async def test_callback_approves_one_claim_and_rejects_the_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(10):
        final = await run_callback(af.MemoryStore())
    assert final["claim-1"].status is Expense.PAID
    assert final["claim-1"].object.decided_by == "manager"
    assert final["claim-2"].status is Expense.REJECTED
    assert final["claim-2"].run_state is af.RunState.COMPLETED
    assert "the same decision again does nothing: None" in capsys.readouterr().out


async def test_timeout_example_with_the_real_hour(autojump_clock: trio.testing.MockClock) -> None:
    final = await run_timeout(af.MemoryStore(), timedelta(hours=1), trio_clock(START))
    assert final["table-1"].status is Table.CONFIRMED
    assert final["table-1"].updated_at == START + timedelta(minutes=30)
    assert final["table-2"].status is Table.RELEASED
    assert final["table-2"].updated_at == START + timedelta(hours=1)


async def test_schedule_example_fires_on_weekdays_but_not_on_the_holiday(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = await simulate_week()
    assert [r.created_at for r in runs] == [
        datetime(2026, 1, day, 9, 0, tzinfo=UTC) for day in (5, 7, 8, 9)
    ]
    assert all(r.run_state is af.RunState.COMPLETED for r in runs)


async def test_order_processing_demo_in_process(tmp_path: Path) -> None:
    lines: list[str] = []
    with trio.fail_after(30):
        outcome = await run_demo(tmp_path / "demo.db", payment_timeout=1.0, out=lines.append)
    assert check(outcome) == []
    for order, record in zip(DEMO_ORDERS, outcome.orders, strict=True):
        assert (record.status, record.run_state) == expected_status(order)
        assert record.foreign_id == order.foreign_id
    paid = [r for r in outcome.orders if r.status is OrderStatus.SHIPPED]
    assert len(paid) == 3 and all(r.object.payment_reference.startswith("pay_") for r in paid)
    expired = [r for r in outcome.orders if r.status is OrderStatus.PAYMENT_EXPIRED]
    assert len(expired) == 2
    for record in expired:  # the durable timeout fired after the payment timeout
        assert not record.object.stock_reserved
        assert record.updated_at - record.created_at >= timedelta(seconds=1)
    report = outcome.report
    assert report.status is ReportStatus.PUBLISHED
    assert (report.object.shipped, report.object.expired, report.object.cancelled) == (3, 2, 1)
    # One live line per stored change: 6 triggers, 6 reservations, 3 x (paid, shipped),
    # 2 expiries, 1 cancel, and the report's two versions.
    changes = [line for line in lines if re.match(r"\s*\d+\.\d\ds  \S+\s+v\d", line)]
    assert len(changes) == 6 + 6 + 6 + 2 + 1 + 2, "\n".join(lines)
    table = summary(outcome)
    assert "order-1003    PAYMENT_EXPIRED   COMPLETED  3" in table
    assert "sales-report  PUBLISHED" in table


def test_report_clock_offset_lands_on_a_minute_after_the_last_report() -> None:
    now = datetime(2026, 1, 1, 9, 0, 10, tzinfo=UTC)
    lead = timedelta(seconds=5)
    offset = report_clock_offset(now, lead, None)
    assert offset == timedelta(seconds=45)  # 09:00:15 -> 09:01:00
    assert (now + offset + lead).second == 0
    # An earlier demo on the same database already reported at 09:01: the next is 09:02.
    last = datetime(2026, 1, 1, 9, 1, 0, 2000, tzinfo=UTC)
    assert now + report_clock_offset(now, lead, last) + lead == datetime(
        2026, 1, 1, 9, 2, tzinfo=UTC
    )
    exact = datetime(2026, 1, 1, 9, 0, 55, tzinfo=UTC)
    assert report_clock_offset(exact, lead, None) == timedelta(0)


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("getting_started", [], "v3  END      COMPLETED  YinYang(yin=True, yang=True)"),
        ("callback", [], "claim-2: alan 2500.00 -> REJECTED by director"),
        ("timeout", ["--hold", "0.4"], "table-2 (alan): RELEASED after 0.4 s"),
        ("schedule", [], "Fri 2026-01-09 09:00:00 UTC  invoices  SENT  3"),
    ],
)
async def test_example_runs_with_python_m(name: str, args: list[str], expected: str) -> None:
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", f"examples.{name}", *args],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert expected in out
    assert result.stderr == b""
