"""The worker process of tests/stores/postgres/test_failover.py (and of
bench/postgres_scale.py's fleet).

    python tests/stores/postgres/failover_worker.py work DSN SCHEMA NAME LEASE
        (work until SIGTERM/SIGKILL)
    python tests/stores/postgres/failover_worker.py trigger DSN SCHEMA FIRST COUNT
        (trigger runs, then exit)

The workflow: A -step-> B -step-> C -durable timeout (1-3 s)-> D -step-> E. Every function
appends its letter to the object's ``trail`` and the worker's NAME to ``by``. The timeout
function and the on_complete hook also record each *execution* in a side table through
a plain psycopg connection (``fired``, ``hooked``): the object shows what was committed,
the side tables show what ran, so a timer that fired twice (even if only one of its
transitions was stored) is caught.
"""

from __future__ import annotations

import enum
import signal
import sys
import zlib
from datetime import datetime, timedelta
from typing import Any

import attrs
import psycopg
import trio
from psycopg_pool import ConnectionPool

import actorflow as af
from actorflow.stores import PostgresStore

WORKFLOW = "failover"
SIDE_TABLES = (
    "CREATE TABLE IF NOT EXISTS {s}.fired (run_id text NOT NULL, worker text NOT NULL, "
    "at timestamptz NOT NULL DEFAULT clock_timestamp())",
    "CREATE TABLE IF NOT EXISTS {s}.hooked (run_id text NOT NULL, worker text NOT NULL, "
    "at timestamptz NOT NULL DEFAULT clock_timestamp())",
)
EXPECTED = ["a", "b", "t", "d"]


class Step(enum.IntEnum):
    A = 1
    B = 2
    C = 3
    D = 4
    E = 5


@attrs.define
class Trail:
    trail: list[str] = attrs.Factory(list)
    by: list[str] = attrs.Factory(list)


def timeout_seconds(run_id: str) -> float:
    """Each run's durable timeout: 1 to 3 s, spread by a stable hash of its id."""
    return 1.0 + (zlib.crc32(run_id.encode()) % 2001) / 1000


class SideTables:
    """Records executions with plain psycopg (not through actorflow), from threads."""

    def __init__(self, dsn: str, schema: str) -> None:
        self._schema = schema
        self._pool: ConnectionPool[Any] = ConnectionPool(
            dsn, kwargs={"autocommit": True}, min_size=1, max_size=4, open=True
        )
        self._limiter = trio.CapacityLimiter(4)

    def _insert(self, table: str, run_id: str, worker: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                f'INSERT INTO "{self._schema}".{table} (run_id, worker) VALUES (%s, %s)'.encode(),
                [run_id, worker],
            )

    async def record(self, table: str, run_id: str, worker: str) -> None:
        await trio.to_thread.run_sync(self._insert, table, run_id, worker, limiter=self._limiter)

    def close(self) -> None:
        self._pool.close()


def build(
    store: af.Store, name: str, side: SideTables | None, **options: Any
) -> af.Workflow[Trail, Step]:
    builder = af.Builder(WORKFLOW, Trail, Step)

    def appending(letter: str, to: Step) -> Any:
        async def step(run: af.Run[Trail, Step]) -> Step:
            run.object.trail.append(letter)
            run.object.by.append(name)
            return to

        step.__qualname__ = f"step_{letter}"
        return step

    builder.add_step(Step.A, appending("a", Step.B), to=Step.B)
    builder.add_step(Step.B, appending("b", Step.C), to=Step.C)
    builder.add_step(Step.D, appending("d", Step.E), to=Step.E)

    def when(run: af.Run[Trail, Step], now: datetime) -> datetime:
        return now + timedelta(seconds=timeout_seconds(run.run_id))

    async def waited(run: af.Run[Trail, Step], now: datetime) -> Step:
        if side is not None:
            await side.record("fired", run.run_id, name)
        run.object.trail.append("t")
        run.object.by.append(name)
        return Step.D

    builder.add_timeout(Step.C, when, waited, to=Step.D)

    if side is not None:

        async def completed(record: af.Record[Trail, Step]) -> None:
            await side.record("hooked", record.run_id, name)

        builder.on_complete(completed)
    return builder.build(store, **options)


async def work(dsn: str, schema: str, name: str, lease: float) -> None:
    """Run the workflow until SIGTERM (graceful stop) or SIGKILL."""
    side = SideTables(dsn, schema)
    try:
        async with PostgresStore(dsn, schema=schema) as store:
            workflow = build(
                store,
                name,
                side,
                lease=timedelta(seconds=lease),
                poll_interval=timedelta(seconds=0.5),
            )
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    await nursery.start(workflow.run)
                    print(f"{name}: running", flush=True)
                    async for _ in signals:
                        print(f"{name}: stopping", flush=True)
                        workflow.stop()
                        break
            print(f"{name}: stopped", flush=True)
    finally:
        side.close()


async def trigger(dsn: str, schema: str, first: int, count: int) -> None:
    """Trigger runs ``run-{first}`` .. from a process that runs no workflow."""
    async with PostgresStore(dsn, schema=schema, pool_size=8) as store:
        workflow = build(store, "trigger", None)

        async def some(start: int) -> None:
            for i in range(start, first + count, 32):
                await workflow.trigger(f"run-{i}")

        async with trio.open_nursery() as nursery:
            for start in range(first, first + min(32, count)):
                nursery.start_soon(some, start)
    print(f"triggered {count}", flush=True)


def create_side_tables(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'.encode())
        for statement in SIDE_TABLES:
            conn.execute(statement.replace("{s}", f'"{schema}"').encode())


if __name__ == "__main__":
    mode, dsn_arg, schema_arg = sys.argv[1:4]
    if mode == "work":
        trio.run(work, dsn_arg, schema_arg, sys.argv[4], float(sys.argv[5]))
    elif mode == "trigger":
        trio.run(trigger, dsn_arg, schema_arg, int(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
