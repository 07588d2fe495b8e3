"""Timers paged by time: memory holds the timers due soon, the store the rest.

Every store (PostgreSQL too, with its shard leases), under the autojump clock: virtual
time jumps straight to the next due timer, whether it is held in memory or still on disk,
also across a restart.
"""

from __future__ import annotations

import enum
import os
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow._runtime import supervisor as _supervisor
from tests.conftest import START, StoreMaker

PG_DSN = os.environ.get("ACTORFLOW_PG_DSN")

DAY = timedelta(days=1)


class Order(enum.IntEnum):
    PARKED = 1
    PAID = 2
    EXPIRED = 3


@attrs.define
class Wait:
    days: float = 30.0


def parked(store: af.Store, clock: af.Clock, **build: object) -> af.Workflow[Wait, Order]:
    """PARKED waits for a payment (callback) or expires after ``object.days``."""
    builder = af.Builder("parked", Wait, Order)

    async def paid(run: af.Run[Wait, Order], payload: bytes) -> Order:
        return Order.PAID

    builder.add_callback(Order.PARKED, paid, to=Order.PAID)

    def expiry(run: af.Run[Wait, Order], now: datetime) -> datetime:
        return now + timedelta(days=run.object.days)

    async def expired(run: af.Run[Wait, Order], now: datetime) -> Order:
        return Order.EXPIRED

    builder.add_timeout(Order.PARKED, expiry, expired, to=Order.EXPIRED)
    # Polling for other processes' writes every virtual hour, not second: a month of
    # virtual time on SQLite then costs hundreds of reads, not millions.
    return builder.build(
        store,
        clock=clock,
        poll_interval=timedelta(hours=1),
        **build,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreMaker]:
    """A factory for the store under test; calling it again opens the same storage anew
    (a restart; the memory store is one object)."""
    opened: list[af.Store] = []
    schema = f"af_test_{uuid.uuid4().hex[:16]}"

    def make() -> af.Store:
        store: af.Store
        if request.param == "memory":
            if opened:
                return opened[0]
            store = af.MemoryStore()
        elif request.param == "sqlite":
            store = af.SQLiteStore(tmp_path / "paging.db")
        else:
            if not PG_DSN:
                pytest.skip("ACTORFLOW_PG_DSN not set")
            store = af.PostgresStore(PG_DSN, schema=schema)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()
    if request.param == "postgres" and PG_DSN:
        await af.PostgresStore(PG_DSN, schema=schema, drop_schema_on_close=True).aclose()


def window(workflow: af.Workflow[Wait, Order]) -> _supervisor.TimerWindow:
    supervisor = workflow._supervisor
    assert supervisor is not None
    return supervisor.timers


async def test_a_timer_beyond_the_window_fires_on_time(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = parked(make_store(), clock)
    async with af.open_workflow(workflow):
        far, soon = await workflow.trigger_many(
            [("far", None, Wait(days=30)), ("soon", None, Wait(days=0.01))]
        )
        assert isinstance(far, str) and isinstance(soon, str)
        await trio.sleep(1)
        timers = window(workflow)
        assert timers.armed(far) is None  # 30 days away: on disk only
        assert timers.armed(soon) is not None  # 14.4 minutes away: in memory
        await workflow.await_status("soon", soon, Order.EXPIRED)
        done = await workflow.await_status("far", far, Order.EXPIRED)
        assert done.updated_at == START + 30 * DAY
        assert trio.current_time() == pytest.approx(30 * DAY.total_seconds())


async def test_a_timer_beyond_the_window_fires_after_a_restart(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    # Stored while no worker runs; then a worker starts (a restart).
    first = parked(make_store(), clock)
    ids = await first.trigger_many(
        [(f"r{i}", None, Wait(days=10 + i)) for i in range(5)] + [("due", None, Wait(days=0))]
    )
    await trio.sleep(DAY.total_seconds())  # "due" came due while nothing ran
    restarted = parked(make_store(), clock)
    async with af.open_workflow(restarted):
        timers = window(restarted)
        due = await restarted.await_status("due", str(ids[-1]), Order.EXPIRED)
        assert due.updated_at == START + DAY  # at once after the start
        assert len(timers) == 0  # the others are 9+ days away: nothing held for them
        for i, run_id in enumerate(ids[:-1]):
            done = await restarted.await_status(f"r{i}", str(run_id), Order.EXPIRED)
            assert done.updated_at == START + (10 + i) * DAY
    # And once more with a callback racing the timer of a run read back from disk.
    again = parked(make_store(), clock)
    run_id = await again.trigger("late", initial=Wait(days=2))
    async with af.open_workflow(again):
        await trio.sleep(DAY.total_seconds())
        record = await again.callback("late", Order.PARKED, b"paid")
        assert record is not None and record.status is Order.PAID
        await trio.sleep(3 * DAY.total_seconds())
        assert (await again.lookup(run_id)).status is Order.PAID


async def test_memory_stays_bounded_with_many_timers_due_soon(
    make_store: StoreMaker,
    clock: af.Clock,
    autojump_clock: MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_supervisor, "TIMER_CAPACITY", 8)
    workflow = parked(make_store(), clock)
    most = 0
    async with af.open_workflow(workflow):
        ids = await workflow.trigger_many(
            [(f"r{i}", None, Wait(days=(i % 7 + 1) / 24 / 60)) for i in range(60)]
        )

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, window(workflow).stored_in_memory)
                await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for i, run_id in enumerate(ids):
                done = await workflow.await_status(f"r{i}", str(run_id), Order.EXPIRED)
                assert done.updated_at - done.created_at == timedelta(minutes=i % 7 + 1)
            nursery.cancel_scope.cancel()
    assert 0 < most <= 16


async def test_readiness_does_not_wait_for_timers(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    store = make_store()
    first = parked(store, clock)
    await first.trigger_many([(f"r{i}", None, Wait(days=30)) for i in range(200)])
    restarted = parked(make_store(), clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.run)
        assert window(restarted).pages_read == 0  # ready before any timer was read
        await trio.sleep(1)
        timers = window(restarted)
        assert timers.pages_read >= 1 and len(timers) == 0
        restarted.stop()


class Takeover:
    """An Ownership that owns no run until ``take()`` (a shard takeover, in one step)."""

    def __init__(self) -> None:
        self.owned = False
        self._on_change: Callable[[], None] | None = None

    def owns(self, run_id: str) -> bool:
        return self.owned

    def take(self) -> None:
        self.owned = True
        assert self._on_change is not None
        self._on_change()

    async def serve(
        self,
        on_change: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._on_change = on_change
        task_status.started()
        await trio.sleep_forever()


async def test_a_takeover_reads_the_timers_it_got_page_by_page(
    make_store: StoreMaker,
    clock: af.Clock,
    autojump_clock: MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_supervisor, "TIMER_CAPACITY", 50)
    store = make_store()
    ids = await parked(store, clock).trigger_many(
        [(f"r{i}", None, Wait(days=(i % 10 + 1) / 24 / 60)) for i in range(300)]
        + [("later", None, Wait(days=2))]
    )
    takeover = Takeover()
    workflow = parked(store, clock, ownership=takeover)
    async with af.open_workflow(workflow):
        await trio.sleep(3600)
        for run_id in ids:
            assert (await workflow.lookup(str(run_id))).status is Order.PARKED
        timers = window(workflow)
        assert len(timers) == 0  # none of them ours
        takeover.take()
        for i, run_id in enumerate(ids[:-1]):
            done = await workflow.await_status(f"r{i}", str(run_id), Order.EXPIRED)
            assert done.updated_at == START + timedelta(hours=1)  # overdue: at once
        assert timers.stored_in_memory <= 100
        assert timers.armed(str(ids[-1])) is None  # 2 days away: on disk
        late = await workflow.await_status("later", str(ids[-1]), Order.EXPIRED)
        assert late.updated_at == START + 2 * DAY
