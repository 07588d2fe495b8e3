"""Two store instances on one SQLite file (as two processes would be): a worker notices
triggers, callbacks and controls written through the other instance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.stores import realtime
from tests.workflows import Status, Three, three_steps, yinyang

pytestmark = pytest.mark.skipif(not hasattr(af, "SQLiteStore"), reason="no SQLiteStore")


async def test_worker_notices_writes_of_another_process(
    tmp_path: Path, clock: af.Clock, autojump_clock: MockClock
) -> None:
    path = tmp_path / "shared.db"
    worker_store = af.SQLiteStore(path)  # type: ignore[attr-defined]
    client_store = af.SQLiteStore(path)  # type: ignore[attr-defined]
    worker = three_steps(worker_store, clock)
    client = three_steps(client_store, clock)
    waiting_worker = yinyang(worker_store, clock)
    waiting_client = yinyang(client_store, clock)
    try:
        async with af.open_workflow(worker, waiting_worker):
            run_id = await client.trigger("from-elsewhere")
            done = await client.await_status("from-elsewhere", run_id, Three.D)
            assert done.object.steps == ["a", "b", "c"]
            # The worker notices the other process's writes in real time; meanwhile an
            # autojump clock would jump to the run's 1-hour timeout and end it before the
            # callback arrives. Virtual time stands still for the exchange.
            with realtime.holding_virtual_time():
                parked = await waiting_client.trigger("p")
                await waiting_client.await_status("p", parked, Status.MIDDLE)
                paid = await waiting_client.callback("p", Status.MIDDLE, b"paid")
            assert paid is not None and paid.status is Status.END
            assert [r.version for r in await waiting_worker.history(parked)] == [1, 2, 3]
    finally:
        await worker_store.aclose()
        await client_store.aclose()


async def test_subscribers_see_another_process_s_writes_once_and_in_order(
    tmp_path: Path, clock: af.Clock, autojump_clock: MockClock
) -> None:
    path = tmp_path / "shared.db"
    worker_store = af.SQLiteStore(path)  # type: ignore[attr-defined]
    client_store = af.SQLiteStore(path)  # type: ignore[attr-defined]
    worker = yinyang(worker_store, clock)
    client = yinyang(client_store, clock)
    seen: list[tuple[str, int]] = []
    try:
        async with af.open_workflow(worker), worker.subscribe() as changes:
            # Runs created while the worker starts may be found by its start-up recovery
            # before its event-log tail relays their first version (then v2 comes first).
            await trio.sleep(1)
            run_id = await client.trigger("elsewhere")  # v1, written by the "other process"
            async for record in changes:
                seen.append((record.foreign_id, record.version))
                if record.status is Status.MIDDLE:
                    break
            await client.callback("elsewhere", Status.MIDDLE, b"paid")  # v3, also elsewhere
            async for record in changes:
                seen.append((record.foreign_id, record.version))
                if record.status is Status.END:
                    break
        assert seen == [("elsewhere", 1), ("elsewhere", 2), ("elsewhere", 3)]
        assert run_id
    finally:
        await worker_store.aclose()
        await client_store.aclose()


async def test_a_failed_read_of_the_event_log_is_read_again(
    tmp_path: Path, clock: af.Clock, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shared.db"
    worker_store = af.SQLiteStore(path)  # type: ignore[attr-defined]
    client_store = af.SQLiteStore(path)  # type: ignore[attr-defined]
    worker = three_steps(worker_store, clock)
    client = three_steps(client_store, clock)
    read_events = worker_store.read_events
    failures = [0]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise af.StoreError("simulated: the disk hiccuped")
        return await read_events(*args, **kwargs)

    monkeypatch.setattr(worker_store, "read_events", flaky)
    try:
        async with af.open_workflow(worker):
            await trio.sleep(2)
            failures[0] = 1  # the tail's next read, right after another connection's write
            run_id = await client.trigger("elsewhere")
            # Nothing else is written: only reading again finds it. Other processes' writes
            # are noticed in real time (virtual time would jump past any virtual bound).
            done = None
            with realtime.move_on_after(10):
                done = await client.await_status("elsewhere", run_id, Three.D)
            assert done is not None, "the failed read of the event log was not read again"
            assert failures[0] == 0
            assert done.object.steps == ["a", "b", "c"]
    finally:
        await worker_store.aclose()
        await client_store.aclose()
