"""Events/s through the outbox relay to Redis Streams vs a raw XADD loop, in the same run.

The relay figure is end to end: a workflow's event log (MemoryStore, so the store is not
what is measured) is published by the relay, in batches, until its cursor has reached
the last event. The baseline is the simplest client loop: one awaited XADD per event,
with the same fields. A pipelined XADD loop is shown for context (the relay pipelines
its batches). Uses ``ACTORFLOW_REDIS_URL``, or starts a private ``redis-server``.

    python -c "import bench.streaming as b; b.main()"
"""

from __future__ import annotations

import enum
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

import actorflow as af
from actorflow._model.record import Meta, RawRecord
from actorflow.streaming import ConnectorEvent, EventSender, relay_stats, transition_event
from actorflow.streaming._redis import encode_event

DEFAULT_EVENTS = 10_000
PIPELINE = 500


class _Status(enum.IntEnum):
    WAITING = 1
    DONE = 2


@attrs.define
class _Empty:
    pass


@asynccontextmanager
async def _redis_url() -> AsyncIterator[str | None]:
    url = os.environ.get("ACTORFLOW_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = await trio.lowlevel.open_process(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(10):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                break
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        await process.wait()


def _records(count: int) -> list[RawRecord]:
    now = datetime.now(UTC)
    return [
        RawRecord(
            workflow_name="bench",
            foreign_id=f"order-{n}",
            run_id=uuid.uuid4().hex,
            status=int(_Status.WAITING),
            run_state=af.RunState.INITIATED,
            object="{}",
            version=1,
            created_at=now,
            updated_at=now,
            meta=Meta(status_description="WAITING"),
        )
        for n in range(count)
    ]


async def _raw_xadd(url: str, prefix: str, fields: list[dict[bytes, bytes]]) -> float:
    import coredis

    key = f"{prefix}raw".encode()
    async with coredis.Redis.from_url(url) as client:
        start = time.perf_counter()
        for entry in fields:
            await client.xadd(key, entry)
        return len(fields) / (time.perf_counter() - start)


async def _pipelined_xadd(url: str, prefix: str, fields: list[dict[bytes, bytes]]) -> float:
    import coredis

    key = f"{prefix}pipelined".encode()
    async with coredis.Redis.from_url(url) as client:
        start = time.perf_counter()
        for first in range(0, len(fields), PIPELINE):
            async with client.pipeline(transaction=False) as pipe:
                for entry in fields[first : first + PIPELINE]:
                    pipe.xadd(key, entry)
        return len(fields) / (time.perf_counter() - start)


@attrs.define
class _FinishLine:
    """Delegates to a streamer; ``reached`` is set once the event ``last_id`` was sent."""

    inner: af.RedisStreamer
    last_id: str
    reached: trio.Event = attrs.Factory(trio.Event)

    @asynccontextmanager
    async def open_sender(self, topic: str) -> AsyncIterator[_FinishSender]:
        async with self.inner.open_sender(topic) as sender:
            yield _FinishSender(self, sender)

    def open_receiver(self, topic: str, consumer: str, *, start: Any = "earliest") -> Any:
        return self.inner.open_receiver(topic, consumer, start=start)


@attrs.define
class _FinishSender:
    line: _FinishLine
    sender: EventSender

    async def send(self, event: ConnectorEvent) -> None:
        await self.send_many([event])

    async def send_many(self, events: Sequence[ConnectorEvent]) -> None:
        await self.sender.send_many(events)
        if events and events[-1].id == self.line.last_id:
            self.line.reached.set()


async def _relay(url: str, prefix: str, records: list[RawRecord]) -> float:
    store = af.MemoryStore()
    for record in records:
        await store.create_run(record)
    last = await store.last_event_id()
    builder = af.Builder("bench", _Empty, _Status)

    async def done(run: Any, payload: bytes) -> _Status:
        return _Status.DONE

    builder.add_callback(_Status.WAITING, done, to=_Status.DONE)
    streamer = _FinishLine(af.RedisStreamer(url, prefix=prefix), str(last))
    workflow = builder.build(store, streamer=streamer)
    start = time.perf_counter()
    async with af.open_workflow(workflow):
        await streamer.reached.wait()
        elapsed = time.perf_counter() - start
    stats = relay_stats(workflow)
    if stats.errors:
        raise RuntimeError(f"the relay failed during the benchmark: {stats.last_error}")
    return len(records) / elapsed


async def _drop(url: str, prefix: str) -> None:
    import coredis

    async with coredis.Redis.from_url(url) as client:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(keys)


async def run(events: int) -> dict[str, float] | None:
    """Measure; returns the figures (events/s), or None when no Redis is available."""
    async with _redis_url() as url:
        if url is None:
            return None
        prefix = f"bench:{uuid.uuid4().hex[:8]}:"
        records = _records(events)
        store = af.MemoryStore()
        for record in records[:1]:
            await store.create_run(record)
        sample = transition_event((await store.read_events(0, 1))[0])
        fields = [
            encode_event(attrs.evolve(sample, id=str(n), foreign_id=f"order-{n}"))
            for n in range(events)
        ]
        try:
            raw = await _raw_xadd(url, prefix, fields)
            pipelined = await _pipelined_xadd(url, prefix, fields)
            relay = await _relay(url, prefix, records)
        finally:
            await _drop(url, prefix)
    return {"raw_xadd": raw, "pipelined_xadd": pipelined, "relay": relay}


def main(events: int | None = None) -> None:
    """Print events/s through the relay to Redis Streams, a raw XADD loop, and their ratio."""
    count = events or int(os.environ.get("ACTORFLOW_BENCH_EVENTS", DEFAULT_EVENTS))
    figures = trio.run(run, count)
    print(f"streaming: {count} events, Redis Streams")
    if figures is None:
        print("  skipped: no Redis (set ACTORFLOW_REDIS_URL or install redis-server)")
        return
    raw, relay = figures["raw_xadd"], figures["relay"]
    print(f"  raw XADD loop (one awaited XADD per event): {raw:>10,.0f} events/s")
    print(f"  outbox relay -> RedisStreamer (MemoryStore): {relay:>9,.0f} events/s")
    print(f"  ratio relay / raw XADD loop:                {relay / raw:>10.2f}")
    print(
        f"  (context: pipelined XADD, {PIPELINE} per round trip: "
        f"{figures['pipelined_xadd']:,.0f} events/s)"
    )


if __name__ == "__main__":
    main()
