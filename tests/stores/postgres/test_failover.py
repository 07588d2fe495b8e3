"""Scale-out on PostgreSQL: shard leases (unit level, fast) and a real failover (slow).

The lease rules are tested without I/O (``LeaseBook``, ``fair_share``, ``shard_of``), then
with real leases on a real server but short leases (a second or less), several
``ShardOwnership`` instances standing in for worker processes. The slow test runs three
real worker processes (tests/stores/postgres/failover_worker.py) over 5,000 runs with
durable timers,
SIGKILLs the leader mid-way, and checks that every run completes with each transition
exactly once and that no timer fired twice.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import actorflow as af
from actorflow.stores.postgres.shards import (
    LeaseBook,
    ShardOwnership,
    Timings,
    fair_share,
    shard_of,
)

DSN = os.environ.get("ACTORFLOW_PG_DSN", "")
PG_SKIP_REASON = (
    "ACTORFLOW_PG_DSN not set: scale-out (shard leases, failover) was NOT tested; run "
    "`bash .ci/run` or start PostgreSQL and export ACTORFLOW_PG_DSN"
)


def needs_pg(test: Any) -> Any:
    """Marks a test ``postgres`` and skips it, loudly, without a server."""
    return pytest.mark.postgres(pytest.mark.skipif(not DSN, reason=PG_SKIP_REASON)(test))


WORKER = Path(__file__).with_name("failover_worker.py")


# -- the rules, without I/O --------------------------------------------------------------


def test_shard_of_is_a_stable_hash_of_the_run_id() -> None:
    # crc32: the same in every process and Python version (unlike hash()).
    assert shard_of("", 16) == 0
    assert shard_of("abc", 16) == 0x352441C2 % 16
    assert [shard_of(uuid.UUID(int=i).hex, 16) for i in range(3)] == [
        shard_of(uuid.UUID(int=i).hex, 16) for i in range(3)
    ]
    spread = Counter(shard_of(uuid.uuid4().hex, 16) for _ in range(16_000))
    assert set(spread) == set(range(16))
    assert min(spread.values()) > 800  # about 1,000 each


@pytest.mark.parametrize(
    ("workers", "shares"),
    [(1, [16]), (2, [8, 8]), (3, [6, 5, 5]), (5, [4, 3, 3, 3, 3]), (20, [1] * 16 + [0] * 4)],
)
def test_fair_share_splits_the_shards_evenly_in_worker_id_order(
    workers: int, shares: list[int]
) -> None:
    ids = [f"w{i:02d}" for i in range(workers)]
    assert [fair_share(ids, me, 16) for me in ids] == shares
    assert sum(fair_share(ids, me, 16) for me in ids) == 16
    # A worker that does not see itself in the list yet counts itself in.
    assert fair_share(ids[1:], ids[0], 16) == shares[0]


def test_lease_book_stops_owning_a_margin_before_the_lease_could_expire() -> None:
    timings = Timings.for_lease(10.0)
    assert (timings.renew_every, timings.margin, timings.drain) == (10 / 3, 2.0, 10 / 3)
    assert timings.takeover <= 15.0
    book = LeaseBook(timings)
    gained, lost = book.renewed({0: 1, 3: 1}, sent=100.0)
    assert (gained, lost) == ([0, 3], [])
    # Sent at 100 s: the database's expiry is at least 110 s; we stop at 108 s.
    assert book.owns(0, 107.9) and not book.owns(0, 108.0)
    assert book.held(107.9) == [0, 3]
    assert book.next_deadline() == 108.0
    # A later renewal moves the deadline; a shard missing from it was taken over.
    gained, lost = book.renewed({0: 1}, sent=103.0)
    assert (gained, lost) == ([], [3])
    assert book.owns(0, 110.9) and not book.owns(3, 104.0)
    assert book.expire(110.9) == [] and book.expire(111.0) == [0]
    assert book.held(111.0) == []


def test_lease_book_releases_the_highest_shards_and_keeps_shard_0() -> None:
    book = LeaseBook(Timings.for_lease(9.0))
    book.renewed(dict.fromkeys(range(16), 1), sent=0.0)
    extras = book.extras(5, now=1.0)
    assert extras == [15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5]
    book.start_release(extras)
    assert book.held(1.0) == [0, 1, 2, 3, 4]  # released shards stop at once, before the drain
    # Renewals while draining neither renew nor "lose" them.
    gained, lost = book.renewed(dict.fromkeys(range(5), 1), sent=3.0)
    assert (gained, lost) == ([], [])
    assert not book.owns(10, 3.0)
    book.released(extras)
    assert sorted(book.until) == [0, 1, 2, 3, 4]


class FakeLeadership:
    """An Ownership owning every run, whose leadership the test switches."""

    def __init__(self) -> None:
        self.leader = False
        self.on_change: Callable[[], None] = lambda: None

    def owns(self, run_id: str) -> bool:
        return True

    async def serve(
        self,
        on_change: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.on_change = on_change
        task_status.started()
        await trio.sleep_forever()

    def switch(self, leader: bool) -> None:
        self.leader = leader
        self.on_change()


async def test_singleton_services_run_only_while_the_process_leads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Two(enum.IntEnum):
        A = 1
        B = 2

    builder = af.Builder("lead", Box, Two)

    @builder.step(Two.A, to=Two.B)
    async def a(run: af.Run[Box, Two]) -> Two:
        return Two.B

    hooked: list[str] = []

    @builder.on_complete
    async def completed(record: af.Record[Box, Two]) -> None:
        hooked.append(record.foreign_id)

    ownership = FakeLeadership()
    workflow = builder.build(af.MemoryStore(), ownership=ownership)
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("one")
        await workflow.await_status("one", run_id, Two.B)
        await trio.sleep(5)
        assert hooked == []  # not the leader: the hooks do not run here
        ownership.switch(True)
        await trio.sleep(1)
        assert hooked == ["one"]  # leader now: they start and catch up from the cursor
        ownership.switch(False)
        run_id = await workflow.trigger("two")
        await workflow.await_status("two", run_id, Two.B)
        await trio.sleep(5)
        assert hooked == ["one"]  # stopped when the leadership went away
        ownership.switch(True)
        await trio.sleep(1)
        assert hooked == ["one", "two"]


# -- real leases, short ones -------------------------------------------------------------


@pytest.fixture
def schema() -> Iterator[str]:
    if not DSN:
        pytest.skip(PG_SKIP_REASON)
    import psycopg

    name = f"af_test_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'.encode())


class Worker:
    """One ShardOwnership served in a cancel scope of its own: a stand-in for a process."""

    def __init__(self, ownership: ShardOwnership) -> None:
        self.ownership = ownership
        self.changes = 0
        self.scope = trio.CancelScope()
        self.changed = trio.Event()

    def on_change(self) -> None:
        self.changes += 1
        self.changed.set()
        self.changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            await self.ownership.serve(self.on_change, task_status=task_status)

    def held(self) -> list[int]:
        return self.ownership.held()


@pytest.fixture
async def fleet(schema: str) -> AsyncIterator[Any]:
    """``await start(lease=..., shards=...)`` starts one more worker on the test's schema."""
    from actorflow.stores import PostgresStore

    stores: list[PostgresStore] = []
    async with trio.open_nursery() as nursery:

        async def start(lease: float = 0.9, shards: int = 16, **kwargs: Any) -> Worker:
            store = PostgresStore(DSN, schema=schema, pool_size=2, **kwargs)
            stores.append(store)
            worker = Worker(
                store.shard_ownership("wf", shards=shards, lease=timedelta(seconds=lease))
            )
            await nursery.start(worker.serve)
            return worker

        yield start
        nursery.cancel_scope.cancel()
    for store in stores:
        await store.aclose()


async def _until(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Seconds until ``predicate()`` holds (polled every 20 ms); fails after ``within``."""
    start = trio.current_time()
    while not predicate():
        if trio.current_time() - start > within:
            pytest.fail(f"not within {within} s: {what}")
        await trio.sleep(0.02)
    return trio.current_time() - start


def _balanced(workers: list[Worker], shares: list[int]) -> bool:
    held = [w.held() for w in workers]
    every = sorted(s for h in held for s in h)
    return every == list(range(sum(shares))) and sorted(map(len, held)) == sorted(shares)


@needs_pg
async def test_leases_are_shared_fairly_by_one_two_and_three_workers(fleet: Any) -> None:
    first = await fleet()
    assert first.held() == list(range(16))  # alone: everything, at once
    assert first.ownership.leader
    second = await fleet()
    await _until(lambda: _balanced([first, second], [8, 8]), 5, "8 + 8")
    third = await fleet()
    await _until(lambda: _balanced([first, second, third], [6, 5, 5]), 5, "6 + 5 + 5")
    workers = [first, second, third]
    # Exactly one leader (shard 0 stays where it was: the highest shards move first).
    assert [w.ownership.leader for w in workers] == [True, False, False]
    assert all(w.changes >= 1 for w in workers)
    # And it stays that way: no flapping.
    held = [w.held() for w in workers]
    await trio.sleep(1.5)
    assert [w.held() for w in workers] == held


@needs_pg
async def test_a_dead_workers_shards_are_taken_over_after_its_lease_expires(
    fleet: Any, schema: str
) -> None:
    lease = 0.9
    a = await fleet(lease)
    b = await fleet(lease)
    await _until(lambda: _balanced([a, b], [8, 8]), 5, "8 + 8")

    async def crash() -> None:  # no clean exit: its leases stay in the table until they expire
        await a.ownership._db.aclose()

    a.ownership._exit = crash  # type: ignore[method-assign]
    a_shards = a.held()
    a.scope.cancel()
    took = await _until(lambda: b.held() == list(range(16)), 5, "b takes all 16 over")
    # Not before the lease could have expired, and within lease + one renewal interval.
    timings = Timings.for_lease(lease)
    assert took <= timings.takeover + 0.5, took
    assert took >= timings.lease - timings.renew_every - 0.2, took
    assert b.ownership.leader or 0 not in a_shards


@needs_pg
async def test_a_clean_exit_hands_the_shards_over_quickly(fleet: Any) -> None:
    a = await fleet(3.0)
    b = await fleet(3.0)
    await _until(lambda: _balanced([a, b], [8, 8]), 8, "8 + 8")
    a.scope.cancel()
    took = await _until(lambda: b.held() == list(range(16)), 5, "b takes all 16 over")
    assert took < 3.0  # well before a's leases would have expired


@needs_pg
async def test_a_worker_that_cannot_renew_stops_owning_before_its_lease_expires(
    fleet: Any, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    lease = 1.2
    a = await fleet(lease)
    b = await fleet(lease)
    await _until(lambda: _balanced([a, b], [8, 8]), 5, "8 + 8")
    shards = a.held()
    real_run = a.ownership._db.run

    async def unreachable(fn: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        raise af.StoreError("PostgreSQL at test: connection refused (simulated)")

    changes = a.changes
    a.ownership._db.run = unreachable  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="actorflow"):
        await _until(lambda: not a.held(), 2 * lease, "a stops owning")
        # held() turns empty by the clock; the supervisor is told by the expiry watcher
        # as it wakes at that same deadline (a moment after this poll may have looked).
        await _until(lambda: a.changes > changes, lease, "a tells its supervisor")
    # At that moment the database still has a as the holder, unexpired: nobody else can
    # have started on those shards yet.
    with psycopg.connect(DSN, autocommit=True) as conn:
        rows = conn.execute(
            f'SELECT shard, owner::text, expires_at > now() FROM "{schema}".shard_leases '
            "WHERE workflow_name = 'wf' ORDER BY shard".encode()
        ).fetchall()
    for shard in shards:
        assert rows[shard][1] == a.ownership.worker_id and rows[shard][2], rows[shard]
    assert not any(s in b.held() for s in shards)
    assert "could not renew its shard leases" in caplog.text
    assert "stops working on shards" in caplog.text
    # b takes them over once they expired; a, reachable again, gets its share back.
    await _until(lambda: b.held() == list(range(16)), 3 * lease, "b takes over")
    a.ownership._db.run = real_run  # type: ignore[method-assign]
    await _until(lambda: _balanced([a, b], [8, 8]), 6 * lease, "8 + 8 again")


@needs_pg
async def test_workers_with_different_shard_counts_are_refused(fleet: Any) -> None:
    await fleet(shards=16)
    with pytest.raises(af.InvalidArgument, match=r"shards=16 .* this one has shards=8"):
        await fleet(shards=8)


@needs_pg
async def test_server_down_at_start_is_waited_for_a_wrong_database_or_newer_schema_refused(
    schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    from actorflow.stores import PostgresStore

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = PostgresStore(f"postgresql://nobody:pw@127.0.0.1:{port}/db", schema=schema)
    ownership = down.shard_ownership("wf", shards=4, lease=timedelta(seconds=1))
    with caplog.at_level(logging.DEBUG, logger="actorflow"):
        with trio.move_on_after(1.5):
            async with trio.open_nursery() as nursery:
                await nursery.start(ownership.serve, lambda: None)
                pytest.fail("reported started without a database")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot reach the database yet (attempt 1," in warnings[0]
    assert "cannot reach the database yet (attempt 3," in caplog.text  # kept trying (debug)
    assert f"127.0.0.1:{port}" in caplog.text and ":pw@" not in caplog.text
    await down.aclose()

    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(DSN)
    info["dbname"] = "no_such_db_" + uuid.uuid4().hex[:8]
    wrong = PostgresStore(psycopg.conninfo.make_conninfo("", **info), schema=schema)
    ownership = wrong.shard_ownership("wf", shards=4, lease=timedelta(seconds=1))
    with pytest.raises(af.StoreError, match=f"cannot connect.*{info['dbname']}"):
        await ownership.serve(lambda: None)
    await wrong.aclose()

    # A schema written by a newer actorflow: refused at start, not retried.
    from actorflow.stores.postgres import schema as _postgres_schema

    newer = _postgres_schema.latest_version() + 1
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
        conn.execute(
            f'CREATE TABLE "{schema}".schema_version (version integer PRIMARY KEY, '
            "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())".encode()
        )
        conn.execute(f"INSERT INTO \"{schema}\".schema_version VALUES ({newer}, 'future')".encode())
    future = PostgresStore(DSN, schema=schema)
    ownership = future.shard_ownership("wf", shards=4, lease=timedelta(seconds=1))
    with pytest.raises(af.SchemaVersionError, match="newer actorflow"):
        await ownership.serve(lambda: None)
    await future.aclose()


# -- LISTEN/NOTIFY -------------------------------------------------------------------------


class Hop(enum.IntEnum):
    A = 1
    B = 2
    C = 3
    WAIT = 10
    PAID = 11


@attrs.define
class Box:
    steps: list[str] = attrs.Factory(list)


def _hops(store: af.Store) -> af.Workflow[Box, Hop]:
    builder = af.Builder("hops", Box, Hop)

    @builder.step(Hop.A, to=Hop.B)
    async def a(run: af.Run[Box, Hop]) -> Hop:
        run.object.steps.append("a")
        return Hop.B

    @builder.step(Hop.B, to=Hop.C)
    async def b(run: af.Run[Box, Hop]) -> Hop:
        run.object.steps.append("b")
        return Hop.C

    async def paid(run: af.Run[Box, Hop], payload: bytes) -> Hop:
        run.object.steps.append(payload.decode())
        return Hop.PAID

    builder.add_callback(Hop.WAIT, paid, to=[Hop.PAID])
    # Polling every 30 s: whatever arrives sooner came through NOTIFY.
    return builder.build(store, poll_interval=timedelta(seconds=30), lease=timedelta(seconds=2))


async def _collect(sub: Any, into: list[tuple[str, int]]) -> None:
    with contextlib.suppress(trio.EndOfChannel):  # the subscription ends
        async for record in sub:
            into.append((record.run_id, record.version))


@needs_pg
async def test_notify_routes_other_processes_writes_to_the_owner_and_feeds_subscribers(
    schema: str,
) -> None:
    import psycopg

    from actorflow.stores import PostgresStore

    worker_store = PostgresStore(DSN, schema=schema)
    # Another connection string: not a sibling in this process (tell_siblings), so only
    # NOTIFY can carry the writes across, as between two processes.
    client_store = PostgresStore(_another_process(DSN), schema=schema)
    worker, client = _hops(worker_store), _hops(client_store)
    seen_by_worker: list[tuple[str, int]] = []
    seen_by_client: list[tuple[str, int]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(client_store.listen)  # the client runs no workflow
        async with (
            af.open_workflow(worker),
            worker.subscribe() as worker_sub,
            client.subscribe() as client_sub,
        ):
            nursery.start_soon(_collect, worker_sub, seen_by_worker)
            nursery.start_soon(_collect, client_sub, seen_by_client)
            await _until(lambda: client_store.notifications.listening, 5, "client listening")
            runs: list[str] = []
            for round_ in range(2):
                # A trigger from a process that owns nothing reaches the owner at once ...
                start = trio.current_time()
                run_id = await client.trigger(f"r{round_}")
                runs.append(run_id)
                await client.await_status(f"r{round_}", run_id, Hop.C, timeout=3)
                assert trio.current_time() - start < 3  # not the 30 s poll
                # ... and so does a callback the client applies itself (it is not the owner).
                parked = await client.trigger(f"p{round_}", Hop.WAIT)
                runs.append(parked)
                done = await client.callback(f"p{round_}", Hop.WAIT, b"paid")
                assert done is not None and done.status is Hop.PAID
                if round_ == 0:
                    # The listener's connection dies: it reconnects, nothing is missed.
                    with psycopg.connect(DSN, autocommit=True) as conn:
                        killed = conn.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE query = %s",
                            [f"LISTEN {client_store.notifications.channel}"],
                        ).fetchall()
                    assert killed
                    await _until(
                        lambda: (
                            client_store.notifications.connections == 2
                            and worker_store.notifications.connections == 2
                            and client_store.notifications.listening
                            and worker_store.notifications.listening
                        ),
                        10,
                        "listeners back",
                    )
            expected = sorted(
                [(r, v) for r in runs[0::2] for v in (1, 2, 3)]
                + [(r, v) for r in runs[1::2] for v in (1, 2)]
            )

            def complete() -> bool:
                return sorted(seen_by_worker) == expected == sorted(seen_by_client)

            # Each process sees every version once: its own from its commits, the other's
            # from the history (never its own twice).
            await _until(complete, 5, f"{seen_by_worker} / {seen_by_client} == {expected}")
        nursery.cancel_scope.cancel()
    await worker_store.aclose()
    await client_store.aclose()


def _another_process(dsn: str) -> str:
    """``dsn`` with an application name: the same database, seen as another process's."""
    return dsn + ("&" if "?" in dsn else "?") + "application_name=actorflow-client"


@needs_pg
async def test_workers_in_one_process_see_each_others_writes_at_the_same_virtual_instant(
    schema: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Two PostgresStores of one schema in one trio run (the test stand-in for two
    processes) under the autojump clock: a run triggered through one and owned by the other
    is worked on at the same virtual instant. Through NOTIFY alone the other learned of it
    in real time, while the clock jumped to the next deadline (here the await's hour; in a
    scheduling test the next check, so that hour's run was found unworked)."""
    from actorflow.stores import PostgresStore, realtime

    stores = [PostgresStore(DSN, schema=schema) for _ in range(2)]
    worked: dict[str, str] = {}

    def hops(name: str, store: af.Store) -> af.Workflow[Box, Hop]:
        builder = af.Builder("hops", Box, Hop)

        @builder.step(Hop.A, to=Hop.C)
        async def a(run: af.Run[Box, Hop]) -> Hop:
            worked[run.run_id] = name
            return Hop.C

        return builder.build(store, poll_interval=timedelta(seconds=30), lease=timedelta(seconds=1))

    one, two = hops("one", stores[0]), hops("two", stores[1])
    slowest = 0.0
    async with af.open_workflow(one, two):
        # Until the second worker has its share (real time: leases), then ten more runs.
        with realtime.move_on_after(30):
            n = 0
            while list(worked.values()).count("two") < 10:
                start = trio.current_time()
                run_id = await one.trigger(f"r{n}")
                await one.await_status(f"r{n}", run_id, Hop.C, timeout=3600)
                if worked[run_id] == "two":
                    slowest = max(slowest, trio.current_time() - start)
                n += 1
    for store in stores:
        await store.aclose()
    assert list(worked.values()).count("two") >= 10, worked
    # The owner's wake-up settles 5 ms (listen.SETTLE); without the sibling's word the
    # clock jumped to the next deadline: 50 ms (a feed notification's gap), or the hour.
    assert slowest < 0.02, f"a run routed to the other worker took {slowest} virtual seconds"


async def test_a_handle_that_runs_no_workflow_tells_the_worker_in_one_process_too(
    schema: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A second PostgresStore in the same trio run that runs no workflow (the stand-in for
    another process that only triggers and controls runs) tells the worker of its writes
    at the same virtual instant, as a worker would. It was told only when two stores
    were serving workflows: the worker learned of the run by NOTIFY, in real time, while
    the clock jumped to its next deadline (a test resuming a run that way waited out its
    whole await)."""
    from actorflow.stores import PostgresStore, realtime

    worker_store, remote_store = (PostgresStore(DSN, schema=schema) for _ in range(2))
    worked: list[str] = []

    def hops(store: af.Store) -> af.Workflow[Box, Hop]:
        builder = af.Builder("hops", Box, Hop)

        @builder.step(Hop.A, to=Hop.C)
        async def a(run: af.Run[Box, Hop]) -> Hop:
            worked.append(run.run_id)
            return Hop.C

        return builder.build(store, poll_interval=timedelta(seconds=30))

    worker, remote = hops(worker_store), hops(remote_store)
    slowest = 0.0
    async with af.open_workflow(worker):
        with realtime.move_on_after(30):
            for n in range(10):
                start = trio.current_time()
                run_id = await remote.trigger(f"r{n}")
                await worker.await_status(f"r{n}", run_id, Hop.C, timeout=3600)
                slowest = max(slowest, trio.current_time() - start)
    for store in (worker_store, remote_store):
        await store.aclose()
    assert len(worked) == 10 and len(set(worked)) == 10, worked
    assert slowest < 0.02, f"a run triggered by the other handle took {slowest} virtual s"


# -- the database goes away mid-run ---------------------------------------------------------


class Proxy:
    """A TCP proxy to the PostgreSQL server that the test can cut (every connection
    dropped, new ones refused: the server is "down") and restore on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._serve)
            task_status.started()
            await trio.sleep_forever()  # keeps the nursery open for restore()

    async def _serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream(*self.target) as server:

            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    async for chunk in source:
                        await sink.send_all(chunk)
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, server)
                nursery.start_soon(pump, server, client)

    def cut(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def restore(self) -> None:
        assert self._nursery is not None
        await self._nursery.start(self._serve)


@needs_pg
async def test_database_outage_mid_run_workers_retry_and_nothing_is_lost(
    schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    from actorflow.stores import PostgresStore
    from tests.stores.postgres.failover_worker import EXPECTED, Step, build

    info = psycopg.conninfo.conninfo_to_dict(DSN)
    proxy = Proxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
    caplog.set_level(logging.WARNING, logger="actorflow")
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        through_proxy = psycopg.conninfo.make_conninfo(
            DSN, host="127.0.0.1", hostaddr="127.0.0.1", port=str(proxy.port)
        )
        worker_store = PostgresStore(through_proxy, schema=schema, retry_timeout=2.0)
        direct = PostgresStore(DSN, schema=schema)
        worker = build(
            worker_store,
            "w",
            None,
            lease=timedelta(seconds=1.5),
            poll_interval=timedelta(seconds=0.2),
            default_options={"error_backoff": timedelta(milliseconds=200)},
        )
        client = build(direct, "client", None)
        async with af.open_workflow(worker):
            before = [await client.trigger(f"before-{i}") for i in range(30)]
            await client.await_status("before-0", before[0], Step.C, timeout=10)
            proxy.cut()
            # Down for longer than the lease: the worker stops owning its shards, its
            # calls fail and are retried; meanwhile other processes keep writing.
            during = [await client.trigger(f"during-{i}") for i in range(30)]
            await trio.sleep(3.0)
            assert worker._supervisor is not None and worker._supervisor.ownership is not None
            assert worker._supervisor.ownership.owns(before[0]) is False
            await proxy.restore()
            with trio.fail_after(30):
                for i, run_id in enumerate(before):
                    await client.await_status(f"before-{i}", run_id, Step.E)
                for i, run_id in enumerate(during):
                    await client.await_status(f"during-{i}", run_id, Step.E)
        for run_id in before + during:
            history = await direct.history("failover", run_id)
            assert [r.version for r in history] == [1, 2, 3, 4, 5], history
            assert [json.loads(r.object)["trail"] for r in history] == [
                EXPECTED[:k] for k in range(5)
            ]
        await worker_store.aclose()
        await direct.aclose()
        nursery.cancel_scope.cancel()
    text = caplog.text
    assert "could not renew its shard leases (attempt 1," in text, text
    assert "(attempt 2," not in text  # one warning per outage (and every 30 s), not a flood
    assert "stops working on shards" in text
    assert "renews its leases again" in text
    assert "LISTEN connection lost" in text or "LISTEN connection failed" in text


# -- the real thing: processes, SIGKILL, 5,000 runs ---------------------------------------

RUNS = 5_000
LEASE = 3.0
KILL_AFTER_COMPLETED = 1_500


def _sql(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        cursor = conn.execute(query.encode(), params)
        return cursor.fetchall() if cursor.description else []


def _completed(schema: str) -> int:
    try:
        rows = _sql(f'SELECT count(*) FROM "{schema}".runs WHERE run_state = 5')
    except Exception:  # not created yet
        return 0
    return int(rows[0][0])


def _hooked(schema: str) -> int:
    return int(_sql(f'SELECT count(DISTINCT run_id) FROM "{schema}".hooked')[0][0])


def _owners(schema: str) -> dict[int, str]:
    """shard -> live owner (expires in the future)."""
    try:
        rows = _sql(
            f'SELECT shard, owner::text FROM "{schema}".shard_leases '
            "WHERE workflow_name = 'failover' AND owner IS NOT NULL AND expires_at > now()"
        )
    except Exception:
        return {}
    return {int(shard): str(owner) for shard, owner in rows}


def _worker_ids(schema: str) -> dict[int, str]:
    """pid -> worker id of the live workers."""
    rows = _sql(
        f'SELECT pid, worker_id::text FROM "{schema}".workers '
        "WHERE workflow_name = 'failover' AND expires_at > now()"
    )
    return {int(pid): str(worker) for pid, worker in rows}


def _wait(predicate: Callable[[], bool], within: float, what: str, logs: list[Path]) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)
            pytest.fail(f"not within {within} s: {what}\n{tails}")
        time.sleep(0.05)  # polling the database from a plain test, bounded by `within`
    return time.monotonic() - start


@pytest.mark.slow
@needs_pg
def test_three_workers_5000_runs_kill_9_the_leader_every_run_completes_exactly_once(
    schema: str, tmp_path: Path
) -> None:
    from tests.stores.postgres.failover_worker import EXPECTED, Step, create_side_tables

    create_side_tables(DSN, schema)
    names = ["w0", "w1", "w2"]
    logs = [tmp_path / f"{name}.log" for name in names]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers: dict[str, subprocess.Popen[bytes]] = {}
    trigger: subprocess.Popen[bytes] | None = None
    try:
        for name, log in zip(names, logs, strict=True):
            with log.open("wb") as out:
                workers[name] = subprocess.Popen(
                    [sys.executable, str(WORKER), "work", DSN, schema, name, str(LEASE)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
        # All three hold a fair share before any run exists.
        _wait(
            lambda: sorted(Counter(_owners(schema).values()).values()) == [5, 5, 6],
            30,
            "3 workers holding 6 + 5 + 5 shards",
            logs,
        )
        # Trigger from a process that runs no workflow (each trigger NOTIFYs its owner),
        # in the background: the kill comes while runs are still arriving.
        started = time.monotonic()
        trigger_log = tmp_path / "trigger.log"
        logs.append(trigger_log)
        with trigger_log.open("wb") as out:
            trigger = subprocess.Popen(
                [sys.executable, str(WORKER), "trigger", DSN, schema, "0", str(RUNS)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

        # Kill the leader (the holder of shard 0, which also runs the hooks) mid-way.
        _wait(lambda: _completed(schema) >= KILL_AFTER_COMPLETED, 60, "runs completing", logs)
        ids = _worker_ids(schema)
        leader_id = _owners(schema)[0]
        victim = next(n for n, p in workers.items() if ids.get(p.pid) == leader_id)
        victim_shards = sorted(s for s, o in _owners(schema).items() if o == leader_id)
        completed_at_kill = _completed(schema)
        triggered_at_kill = int(_sql(f'SELECT count(*) FROM "{schema}".runs')[0][0])
        os.kill(workers[victim].pid, signal.SIGKILL)
        assert workers[victim].wait(timeout=10) == -signal.SIGKILL
        ((killed_at,),) = _sql("SELECT clock_timestamp()")  # database time, after the kill
        survivors = [n for n in names if n != victim]
        survivor_ids = {ids[workers[n].pid] for n in survivors}

        takeover = _wait(
            lambda: set(_owners(schema).values()) == survivor_ids and len(_owners(schema)) == 16,
            30,
            "the survivors holding all 16 shards",
            logs,
        )
        # Lease 3 s: the victim's leases expire <= 3 s after its last renewal, seen within
        # one renewal interval (1 s) more.
        assert takeover <= LEASE * 4 / 3 + 1.5, takeover

        assert trigger.wait(timeout=120) == 0, trigger_log.read_text()
        triggered = time.monotonic() - started
        _wait(lambda: _completed(schema) == RUNS, 90, f"all {RUNS} runs completed", logs)
        finished = time.monotonic() - started
        # The new leader's hooks catch up from the durable cursor the victim left.
        _wait(lambda: _hooked(schema) == RUNS, 60, "on_complete called for every run", logs)
        hooks_done = time.monotonic() - started
        for name in survivors:
            workers[name].send_signal(signal.SIGTERM)
        for name in survivors:
            assert workers[name].wait(timeout=30) == 0, logs[names.index(name)].read_text()
    finally:
        for process in [*workers.values(), *([trigger] if trigger else [])]:
            if process.poll() is None:
                process.kill()
                process.wait()

    # Every run: each transition exactly once, versions without gaps, each function's
    # effect exactly once in the committed object.
    histories: dict[str, list[tuple[int, int, int, dict[str, list[str]]]]] = {}
    for run_id, version, status, run_state, obj in _sql(
        f'SELECT run_id, version, status, run_state, object FROM "{schema}".history '
        "WHERE workflow_name = 'failover' ORDER BY run_id, version"
    ):
        histories.setdefault(run_id, []).append((version, status, run_state, json.loads(obj)))
    assert len(histories) == RUNS
    statuses = [Step.A, Step.B, Step.C, Step.D, Step.E]
    moved_by_victim_then_survivor = 0
    for run_id, history in histories.items():
        where = f"{run_id}: {history}"
        assert [v for v, _, _, _ in history] == [1, 2, 3, 4, 5], where
        assert [s for _, s, _, _ in history] == statuses, where
        assert [r for _, _, r, _ in history] == [1, 2, 2, 2, 5], where
        assert [o["trail"] for _, _, _, o in history] == [EXPECTED[:k] for k in range(5)], where
        by = history[-1][3]["by"]
        if victim in by and by[-1] != victim:
            moved_by_victim_then_survivor += 1
    # Some runs were started by the victim and finished by a survivor: real takeovers.
    assert moved_by_victim_then_survivor > 0

    # No timer fired twice, none was lost; no timer is left. The one exception is a crash
    # replay, inherent in at-least-once functions: the victim ran a timeout function but
    # was killed before its transition was stored, so the new owner ran it again, after
    # the kill. Two live owners never ran one.
    executions: dict[str, list[tuple[str, Any]]] = {}
    for run_id, worker, at in _sql(
        f'SELECT run_id, worker, at FROM "{schema}".fired ORDER BY run_id, at'
    ):
        executions.setdefault(run_id, []).append((worker, at))
    assert set(executions) == set(histories)
    replays = 0
    for run_id, runs in executions.items():
        if len(runs) == 1:
            continue
        (first, first_at), (second, second_at), *more = runs
        assert not more and first == victim and first_at <= killed_at < second_at, runs
        assert second != victim and histories[run_id][3][3]["by"][-1] == second, runs
        replays += 1
    assert _sql(f'SELECT count(*) FROM "{schema}".timers') == [(0,)]

    # on_complete hooks: at least once per run (a leader killed mid-batch may repeat a
    # few), and never run by two live workers at once: only the leader ran them.
    hooked = Counter(run_id for (run_id,) in _sql(f'SELECT run_id FROM "{schema}".hooked'))
    assert set(hooked) == set(histories)
    repeated = sum(n - 1 for n in hooked.values())
    hook_workers = _sql(
        f'SELECT worker, min(at), max(at) FROM "{schema}".hooked GROUP BY worker ORDER BY 2'
    )
    if len(hook_workers) > 1:
        # The victim's last hook call came before the new leader's first.
        assert hook_workers[0][0] == victim and hook_workers[0][2] <= hook_workers[1][1]
    print(
        f"\n{RUNS} runs, 3 workers: triggered in {triggered:.1f} s, all complete after "
        f"{finished:.1f} s, hooks done after {hooks_done:.1f} s; killed {victim} (the "
        f"leader, shards {victim_shards}) with {completed_at_kill} complete and "
        f"{triggered_at_kill} triggered; survivors held all shards {takeover:.1f} s after "
        f"the kill (lease {LEASE} s); {moved_by_victim_then_survivor} runs finished by a "
        f"survivor after the victim began them; hooks repeated {repeated} times; every "
        f"timer fired once but {replays} crash replays of the victim's"
    )


@needs_pg
async def test_a_worker_is_woken_only_for_its_own_shards_runs_and_each_completes(
    schema: str,
) -> None:
    """Two workers share the shards; a client's triggers NOTIFY with the run named, so
    only the owner's tail wakes, and it reads only other processes' rows of its shards.
    Every run still completes through NOTIFY (the safety-net poll is 30 s)."""
    from actorflow.stores import PostgresStore

    stores = [PostgresStore(DSN, schema=schema) for _ in range(3)]
    a_store, b_store, client_store = stores
    client = _hops(client_store)
    async with (
        trio.open_nursery() as nursery,
        af.open_workflow(_hops(a_store)),
        af.open_workflow(_hops(b_store)),
    ):
        await nursery.start(client_store.listen)  # the client runs no workflow
        owners = [s.owners._by_workflow["hops"][0] for s in (a_store, b_store)]

        def shared() -> bool:
            return sorted(len(o.held()) for o in owners) == [8, 8]

        await _until(shared, 15, "two workers holding 8 shards each")
        marks = [s.changes.mark() for s in (a_store, b_store)]
        start = trio.current_time()
        runs = [await client.trigger(f"r{i}") for i in range(12)]
        for i, run_id in enumerate(runs):
            await client.await_status(f"r{i}", run_id, Hop.C, timeout=10)
        assert trio.current_time() - start < 20  # not the 30 s poll
        for store, owner, mark in zip((a_store, b_store), owners, marks, strict=True):
            owned = sum(owner.owns(r) for r in runs)
            woken = store.changes.mark() - mark
            assert woken <= owned < len(runs)  # never for the other worker's runs
            # Its tail reads other processes' rows of its shards only: the triggers.
            events, _ = await owner.owned_events(0, 100)
            assert sorted(e.run_id for e in events) == sorted(r for r in runs if owner.owns(r))
            assert all(e.version == 1 for e in events)
        nursery.cancel_scope.cancel()
    for store in stores:
        await store.aclose()
