"""PostgresStore commit rate: one task, then many concurrent tasks; raw psycopg as baseline.

Usage: ``ACTORFLOW_PG_DSN=postgresql://... python -m bench.postgres_store [commits]``.
Uses a throwaway schema, dropped at the end.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import attrs
import trio

from actorflow import RunState
from actorflow._model.record import Meta, RawRecord
from actorflow.stores import PostgresStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _record(foreign_id: str) -> RawRecord:
    return RawRecord(
        workflow_name="bench",
        foreign_id=foreign_id,
        run_id=uuid.uuid4().hex,
        status=1,
        run_state=RunState.RUNNING,
        object='{"n": 0}',
        version=1,
        created_at=T0,
        updated_at=T0,
        meta=Meta(status_description="ONE"),
    )


def _next(record: RawRecord) -> RawRecord:
    return attrs.evolve(
        record,
        version=record.version + 1,
        object=f'{{"n": {record.version}}}',
        updated_at=record.updated_at + timedelta(seconds=1),
    )


def raw_psycopg_rate(dsn: str, count: int) -> float:
    """Single-row autocommit inserts from one thread, no trio: the floor to compare with."""
    import psycopg

    schema = f"af_bench_raw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
        conn.execute(f'CREATE TABLE "{schema}".t (id bigserial PRIMARY KEY, v text)'.encode())
        insert = f'INSERT INTO "{schema}".t (v) VALUES (%s)'.encode()
        start = time.perf_counter()
        for i in range(count):
            conn.execute(insert, [str(i)])
        elapsed = time.perf_counter() - start
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())
    return count / elapsed


async def commit_rate(store: PostgresStore, tasks: int, count: int) -> float:
    """Commits per second with ``tasks`` tasks each committing its own run in a loop."""
    runs = [
        await store.create_run(_record(f"{tasks}-{i}-{uuid.uuid4().hex}")) for i in range(tasks)
    ]
    per_task = count // tasks

    async def work(record: RawRecord) -> None:
        for _ in range(per_task):
            record = await store.commit(_next(record))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for record in runs:
            nursery.start_soon(work, record)
    return per_task * tasks / (time.perf_counter() - start)


async def create_rate(store: PostgresStore, tasks: int, count: int) -> float:
    per_task = count // tasks
    prefix = uuid.uuid4().hex

    async def work(i: int) -> None:
        for j in range(per_task):
            await store.create_run(_record(f"{prefix}-{i}-{j}"))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(work, i)
    return per_task * tasks / (time.perf_counter() - start)


async def main(dsn: str, count: int) -> None:
    print(f"raw psycopg, 1 thread, autocommit insert: {raw_psycopg_rate(dsn, count):8.0f}/s")
    store = PostgresStore(
        dsn, schema=f"af_bench_{uuid.uuid4().hex[:8]}", pool_size=16, drop_schema_on_close=True
    )
    try:
        await commit_rate(store, 16, 512)  # warm up: pool grown, statements prepared
        for tasks in (1, 16):
            rate = await commit_rate(store, tasks, count)
            print(f"PostgresStore.commit, {tasks:2d} task(s):            {rate:8.0f}/s")
        for tasks in (1, 16):
            rate = await create_rate(store, tasks, count)
            print(f"PostgresStore.create_run, {tasks:2d} task(s):        {rate:8.0f}/s")
        start = time.perf_counter()
        after = 0
        read = 0
        while events := await store.read_events(after, 1000):
            after = events[-1].id
            read += len(events)
        elapsed = time.perf_counter() - start
        print(f"PostgresStore.read_events, pages of 1000:    {read / elapsed:8.0f} events/s")
    finally:
        await store.aclose()


if __name__ == "__main__":
    dsn = os.environ.get("ACTORFLOW_PG_DSN")
    if not dsn:
        sys.exit("set ACTORFLOW_PG_DSN")
    trio.run(main, dsn, int(sys.argv[1]) if len(sys.argv) > 1 else 4000)
