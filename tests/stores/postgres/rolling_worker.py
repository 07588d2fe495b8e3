"""The worker process of tests/stores/postgres/test_rolling_deploy.py: version 1 or 2 of
one workflow, as an old and a new deploy would run it side by side.

    python tests/stores/postgres/rolling_worker.py work DSN SCHEMA VERSION
        (work until SIGTERM)
    python tests/stores/postgres/rolling_worker.py trigger DSN SCHEMA VERSION FIRST COUNT
        (trigger runs as that version, then exit)

Version 1: NEW -step-> WAITING -callback-> DONE; the object is a ``Ticket``.
Version 2 adds a status (WAITING -callback-> REVIEW -step-> DONE) and a field with a
default (``priority``). Every step appends its version to ``by``: a run version 1 wrongly
processed would show "v1" there (and version 1's fingerprint in its history).
"""

from __future__ import annotations

import enum
import signal
import sys
from datetime import timedelta
from typing import Any

import attrs
import trio

import actorflow as af
from actorflow.stores import PostgresStore

WORKFLOW = "rolling"
SHARDS = 8


class V1(enum.IntEnum):
    NEW = 1
    WAITING = 2
    DONE = 3


@attrs.define
class Ticket:
    by: list[str] = attrs.Factory(list)


class V2(enum.IntEnum):
    NEW = 1
    WAITING = 2
    DONE = 3
    REVIEW = 4


@attrs.define
class Ticket2:
    by: list[str] = attrs.Factory(list)
    priority: int = 0


def build(store: af.Store, version: int, **options: Any) -> af.Workflow[Any, Any]:
    options = {"shards": SHARDS, **options}
    if version == 1:
        b1 = af.Builder(WORKFLOW, Ticket, V1)

        @b1.step(V1.NEW, to=V1.WAITING)
        async def open_v1(run: af.Run[Ticket, V1]) -> V1:
            run.object.by.append("v1")
            return V1.WAITING

        async def answered_v1(run: af.Run[Ticket, V1], payload: bytes) -> V1:
            run.object.by.append("v1")
            return V1.DONE

        b1.add_callback(V1.WAITING, answered_v1, to=V1.DONE)
        return b1.build(store, **options)
    b2 = af.Builder(WORKFLOW, Ticket2, V2)

    @b2.step(V2.NEW, to=V2.WAITING)
    async def open_v2(run: af.Run[Ticket2, V2]) -> V2:
        run.object.by.append("v2")
        run.object.priority = 7
        return V2.WAITING

    async def answered_v2(run: af.Run[Ticket2, V2], payload: bytes) -> V2:
        run.object.by.append("v2")
        return V2.REVIEW

    @b2.step(V2.REVIEW, to=V2.DONE)
    async def reviewed(run: af.Run[Ticket2, V2]) -> V2:
        run.object.by.append("v2")
        return V2.DONE

    b2.add_callback(V2.WAITING, answered_v2, to=V2.REVIEW)
    return b2.build(store, **options)


async def work(dsn: str, schema: str, version: int) -> None:
    async with PostgresStore(dsn, schema=schema) as store:
        workflow = build(
            store,
            version,
            lease=timedelta(seconds=2),
            poll_interval=timedelta(seconds=0.2),
        )
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(workflow.run)
                print(f"v{version}: running {workflow.fingerprint}", flush=True)
                async for _ in signals:
                    workflow.stop()
                    break
        print(f"v{version}: stopped", flush=True)


async def trigger(dsn: str, schema: str, version: int, first: int, count: int) -> None:
    async with PostgresStore(dsn, schema=schema) as store:
        workflow = build(store, version)
        for i in range(first, first + count):
            await workflow.trigger(f"ticket-{i}")
    print(f"triggered {count} as v{version}", flush=True)


if __name__ == "__main__":
    mode, dsn_arg, schema_arg, version_arg = sys.argv[1:5]
    if mode == "work":
        trio.run(work, dsn_arg, schema_arg, int(version_arg))
    elif mode == "trigger":
        trio.run(trigger, dsn_arg, schema_arg, int(version_arg), *map(int, sys.argv[5:7]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
