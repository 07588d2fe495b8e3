"""``Workflow.trigger_many``: many runs in few transactions, one result per item."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import attrs
import pytest
import trio
from trio.testing import MockClock

import actorflow as af
from tests.conftest import StoreMaker
from tests.workflows import Status, YinYang, yinyang


async def test_results_in_order_with_errors_per_item(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock)
    busy = await workflow.trigger("busy")
    results = await workflow.trigger_many(
        [
            "plain",
            {"foreign_id": "mapped", "start": Status.MIDDLE, "initial": YinYang(count=7)},
            ("tupled", Status.MIDDLE),
            "busy",  # its latest run is unfinished
            "plain",  # started by an earlier item of this call
            {"foreign_id": "x", "start": 99},
            {"foreign": "typo"},
            42,
            ("",),
        ]
    )
    assert [type(r) for r in results[:3]] == [str, str, str]
    assert isinstance(results[3], af.WorkflowInProgress) and busy in str(results[3])
    assert isinstance(results[4], af.WorkflowInProgress) and str(results[0]) in str(results[4])
    for bad in results[5:]:
        assert isinstance(bad, af.InvalidArgument), bad
    assert "not a member" in str(results[5])
    assert "foreign_id" in str(results[6])
    mapped = await workflow.lookup(str(results[1]))
    assert mapped.status is Status.MIDDLE and mapped.object.count == 7
    assert mapped.foreign_id == "mapped" and mapped.version == 1
    plain = await workflow.latest("plain")
    assert plain.run_id == results[0] and plain.status is Status.STARTED
    # A run started at a status with a timeout has its timer stored.
    timers = await workflow.store.list_timers(workflow.name, str(results[2]))
    assert [t.fire_at - mapped.created_at for t in timers] == [timedelta(hours=1)]


async def test_bad_items_argument_is_refused(make_store: StoreMaker, clock: af.Clock) -> None:
    workflow = yinyang(make_store(), clock)
    with pytest.raises(af.InvalidArgument, match="iterable"):
        await workflow.trigger_many("one-foreign-id")  # type: ignore[arg-type]
    with pytest.raises(af.InvalidArgument, match="iterable"):
        await workflow.trigger_many(5)  # type: ignore[arg-type]
    assert await workflow.trigger_many([]) == []


async def test_started_runs_are_processed_by_the_running_workflow(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    workflow = yinyang(make_store(), clock, max_active_runs=3)
    async with af.open_workflow(workflow):
        # More runs than may wait for a slot: the rest are found by a recovery pass.
        ids = await workflow.trigger_many(f"f{i}" for i in range(40))
        for i, run_id in enumerate(ids):
            assert isinstance(run_id, str)
            with trio.fail_after(60):
                await workflow.await_status(f"f{i}", run_id, Status.MIDDLE)
        supervisor = workflow._supervisor
        assert supervisor is not None
        await trio.sleep(3600)  # their one-hour timeouts fire
        for i, run_id in enumerate(ids):
            done = await workflow.await_status(f"f{i}", run_id, Status.END, timeout=1)
            assert done.object.note == "timed out"


async def test_many_runs_in_few_transactions_on_sqlite(tmp_path: object, clock: af.Clock) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    store = af.SQLiteStore(tmp_path / "many.db")
    try:
        workflow = yinyang(store, clock)
        results = await workflow.trigger_many(
            {"foreign_id": f"f{i}", "start": Status.MIDDLE} for i in range(5000)
        )
        assert all(isinstance(r, str) for r in results)
        # 2,000 runs per transaction, and one to register the workflow's definition.
        assert store.stats.transactions <= 5000 // 2000 + 2
        assert len(await workflow.store.list_timers(workflow.name)) == 5000
    finally:
        await store.aclose()


async def test_timer_functions_get_an_object_of_their_own(
    make_store: StoreMaker, clock: af.Clock, autojump_clock: MockClock
) -> None:
    # Items without `initial` share one encoded default object; a timer function that
    # changes the object it is given must not change what the next item's function sees.
    builder = af.Builder("own-object", YinYang, Status)
    seen: list[int] = []

    def later(run: af.Run[YinYang, Status], now: datetime) -> datetime:
        seen.append(run.object.count)
        run.object.count += 1
        return now + timedelta(hours=1)

    async def expire(run: af.Run[YinYang, Status], now: datetime) -> Status:
        return Status.END

    builder.add_timeout(Status.STARTED, later, expire, to=Status.END)
    workflow = builder.build(make_store(), clock=clock)
    results = await workflow.trigger_many(["a", "b", "c"])
    assert all(isinstance(r, str) for r in results)
    assert seen == [0, 0, 0]
    for foreign_id in "abc":
        assert (await workflow.latest(foreign_id)).object.count == 0


async def test_a_large_backfill_lets_other_tasks_run_in_between(
    make_store: StoreMaker, clock: af.Clock
) -> None:
    """A worker in the same process keeps serving during a backfill: trigger_many yields
    while it builds runs and stores them a few hundred per transaction, never holding the
    trio thread for the whole call."""
    workflow = yinyang(make_store(), clock)
    turns = 0
    done = False

    async def other_task() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        await trio.lowlevel.checkpoint()
        turns = 0
        results = await workflow.trigger_many(f"bulk-{i}" for i in range(5000))
        done = True
    assert all(isinstance(r, str) for r in results)
    # Every 100 runs built, and every transaction: at least 50 turns for 5,000 runs.
    assert turns >= 50, turns


@attrs.define
class _Ticket:
    token: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    count: int = 0


async def test_a_default_made_by_a_factory_is_made_anew_for_every_run(
    make_store: StoreMaker, clock: af.Clock
) -> None:
    """trigger_many encodes a default object once per call only when the class makes the
    same default every time: a factory of ids gives every run its own, as trigger does."""
    builder = af.Builder("tickets", _Ticket, Status)

    @builder.step(Status.STARTED, to=Status.MIDDLE)
    async def start(run: af.Run[_Ticket, Status]) -> Status:
        return Status.MIDDLE

    builder.add_callback(Status.MIDDLE, _noop_callback, to=[Status.END])
    workflow = builder.build(make_store(), clock=clock)
    results = await workflow.trigger_many(["a", "b", "c"])
    tokens = {(await workflow.lookup(str(run_id))).object.token for run_id in results}
    assert len(tokens) == 3


async def _noop_callback(run: af.Run[_Ticket, Status], payload: bytes) -> Status:
    return Status.END


async def test_every_stored_run_has_its_first_version_and_timers_in_order(
    make_store: StoreMaker, clock: af.Clock
) -> None:
    """Stores insert a chunk's rows in groups (SQLite: 100 rows a statement, the rest one
    by one, first versions copied from the runs): sizes that are not a multiple of the
    group, refused items in between, and runs with and without timers all come out whole
    and in the order of the items."""
    store = make_store()
    workflow = yinyang(store, clock)
    busy = await workflow.trigger("f17")
    items: list[str | tuple[str, Status]] = []
    for i in range(1237):
        items.append((f"f{i}", Status.MIDDLE) if i % 3 else f"f{i}")
        if i % 250 == 0:
            items.append(f"f{i}")  # started by an earlier item of this call
    results = await workflow.trigger_many(items)
    started = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if not isinstance(r, str)]
    assert len(started) == 1236 and len(refused) == 6, refused[:3]
    assert all(isinstance(r, af.WorkflowInProgress) for r in refused)
    events = await store.read_events(0, 5000, workflow.name)
    assert [e.run_id for e in events] == [busy, *started]
    assert all(e.version == 1 for e in events)
    timers = {t.run_id: t for t in await store.list_timers(workflow.name)}
    for item, result in zip(items, results, strict=True):
        if not isinstance(result, str):
            continue
        history = await store.history(workflow.name, result)
        assert [(h.version, h.foreign_id) for h in history] == [
            (1, item if isinstance(item, str) else item[0])
        ]
        at_middle = not isinstance(item, str)
        assert (result in timers) is at_middle
        assert history[0].status == (Status.MIDDLE if at_middle else Status.STARTED)


# -- SQLite: each chunk written in a worker thread while the next one is built ---------------


async def test_reads_during_a_backfill_see_whole_transactions_only(
    tmp_path: Path, clock: af.Clock
) -> None:
    """SQLiteStore writes a backfill's chunks in a worker thread on its connection while
    the trio thread builds the next chunk and serves others: a read meanwhile waits for
    the transaction to end (on that connection it would see rows not yet committed)."""
    store = af.SQLiteStore(tmp_path / "reads.db")
    workflow = yinyang(store, clock)
    before = sys.getswitchinterval()
    seen: set[str] = set()
    intervals: set[float] = set()
    done = False

    async def reader() -> None:
        while not done:
            newest = await workflow.list_runs(limit=1, descending=True)
            seen.add(newest[0].foreign_id if newest else "")

    async def watcher() -> None:
        while not done:
            intervals.add(sys.getswitchinterval())
            await trio.lowlevel.checkpoint()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(watcher)
            results = await workflow.trigger_many(
                {"foreign_id": f"f{i}", "start": Status.MIDDLE} for i in range(7000)
            )
            done = True
        assert all(isinstance(r, str) for r in results)
        # Whole transactions of 2,000 runs only, and the reader ran meanwhile.
        assert seen <= {"", "f1999", "f3999", "f5999", "f6999"}, sorted(seen)
        assert len(seen) >= 3, seen
        # The switch interval is short only while a thread writes, then restored.
        assert min(intervals) < before
        assert sys.getswitchinterval() == before
        assert len(await store.list_timers(workflow.name)) == 7000
    finally:
        await store.aclose()


async def test_a_failing_iterable_raises_its_own_error_after_the_chunks_before(
    make_store: StoreMaker, clock: af.Clock
) -> None:
    """The caller's iterable raising mid-way: its error comes out as it is (not inside an
    exception group), the chunks handed to the store before are stored whole, and the
    store takes writes afterwards."""
    workflow = yinyang(make_store(), clock)

    def items() -> Iterator[str]:
        for i in range(4500):
            if i == 4321:
                raise LookupError("the import file is cut short")
            yield f"f{i}"

    with pytest.raises(LookupError, match="cut short"):
        await workflow.trigger_many(items())
    # The two chunks of 2,000 handed over before are stored whole, every time; the
    # items after them were never handed over.
    assert (await workflow.latest("f3999")).foreign_id == "f3999"
    with pytest.raises(af.RunNotFound):
        await workflow.latest("f4000")
    assert await workflow.trigger("after") != ""


async def test_a_store_closed_during_a_backfill_is_a_store_error(
    tmp_path: Path, clock: af.Clock
) -> None:
    """The store failing under trigger_many (closed by another task here): StoreError,
    not an exception group; the chunks before are stored, nothing after."""
    path = tmp_path / "closed.db"
    store = af.SQLiteStore(path)
    workflow = yinyang(store, clock)
    halfway = trio.Event()

    def items() -> Iterator[str]:
        for i in range(10_000):
            if i == 4500:
                halfway.set()
            yield f"f{i}"

    async def close_at_halfway() -> None:
        await halfway.wait()
        await store.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_at_halfway)
        with pytest.raises(af.StoreError):
            await workflow.trigger_many(items())
    reopened = af.SQLiteStore(path)
    try:
        runs = await yinyang(reopened, clock).list_runs(limit=1, descending=True)
        assert runs and runs[0].foreign_id in {"f1999", "f3999", "f5999"}
    finally:
        await reopened.aclose()


async def test_a_backfill_cancelled_midway_stores_whole_chunks(
    tmp_path: Path, clock: af.Clock
) -> None:
    """trigger_many cancelled while it builds: the chunks already handed over are stored
    whole (a transaction in flight finishes), nothing after, and the store goes on."""
    store = af.SQLiteStore(tmp_path / "cancel.db")
    workflow = yinyang(store, clock)
    before = sys.getswitchinterval()
    try:
        with trio.CancelScope() as scope:

            def items() -> Iterator[str]:
                for i in range(10_000):
                    if i == 5000:
                        scope.cancel()
                    yield f"f{i}"

            await workflow.trigger_many(items())
        assert scope.cancelled_caught
        runs = await workflow.list_runs(limit=1, descending=True)
        assert runs and runs[0].foreign_id in {"f1999", "f3999"}
        assert sys.getswitchinterval() == before
        assert isinstance((await workflow.trigger_many(["again"]))[0], str)
    finally:
        await store.aclose()


async def test_closing_after_a_backfill_leaves_no_write_ahead_log(
    tmp_path: Path, clock: af.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aclose waits for the checkpointer thread, which may be copying a backfill's pages,
    to close its connection: only then is the store's own the file's last connection,
    whose close checkpoints the whole WAL into the file and removes it. A WAL left behind
    (up to 64 MiB after a large backfill) was read whole by the next process opening the
    file (the scale benchmark's restart: 0.26 -> 0.49 s at 1M runs). Here every
    checkpoint takes 0.2 s more, so the thread is at work when the store closes."""
    import sqlite3
    import threading
    import time

    class SlowCheckpoints(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if "wal_checkpoint" in sql:
                time.sleep(0.2)  # in the checkpointer thread: a long copy
            return super().execute(sql, *args)  # type: ignore[arg-type]

    connect = sqlite3.connect

    def connecting(*args: object, **kwargs: object) -> sqlite3.Connection:
        if threading.current_thread().name == "actorflow-sqlite-checkpoint":
            kwargs["factory"] = SlowCheckpoints
        return connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite3, "connect", connecting)
    before = set(threading.enumerate())  # other tests' stores may have threads of their own
    path = tmp_path / "closed.db"
    store = af.SQLiteStore(path)
    workflow = yinyang(store, clock)
    await workflow.trigger_many(
        {"foreign_id": f"f{i}", "start": Status.MIDDLE} for i in range(3000)
    )
    await workflow.callback("f0", Status.MIDDLE, b"paid")  # a last commit: a checkpoint
    await store.aclose()
    ours = set(threading.enumerate()) - before
    assert [t.name for t in ours if t.name.startswith("actorflow-sqlite")] == []
    assert not await trio.Path(f"{path}-wal").exists()


async def test_a_backfill_does_not_wait_for_the_callers_threads(
    tmp_path: Path, clock: af.Clock
) -> None:
    """Every token of trio's default thread limiter held by the caller's own threads:
    SQLiteStore writes a backfill's chunks in a thread under a limiter of its own, so
    the backfill (and the reads that wait for its transactions) go on. Under the default
    limiter they waited until the caller's threads ended."""
    import threading
    from functools import partial

    store = af.SQLiteStore(tmp_path / "threads.db")
    workflow = yinyang(store, clock)
    release = threading.Event()
    safety = threading.Timer(10, release.set)  # the caller's threads end in any case
    safety.start()
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(int(trio.to_thread.current_default_thread_limiter().total_tokens)):
                nursery.start_soon(
                    partial(trio.to_thread.run_sync, release.wait, abandon_on_cancel=True)
                )
            await trio.testing.wait_all_tasks_blocked()
            results = await workflow.trigger_many(f"f{i}" for i in range(500))
            assert (await workflow.latest("f499")).foreign_id == "f499"
            assert not release.is_set(), "the backfill waited for the caller's threads"
            release.set()
        assert all(isinstance(r, str) for r in results)
    finally:
        release.set()
        safety.cancel()
        await store.aclose()
