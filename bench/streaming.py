"""Events/s through the outbox relay to Redis Streams vs a raw XADD loop, in the same run.

The relay figure is end to end: a workflow's event log (MemoryStore, so the store is not
what is measured) is published by the relay, in batches, until its cursor has reached
the last event. The baseline is the simplest client loop: one awaited XADD per event,
with the same fields. A pipelined XADD loop is shown for context (the relay pipelines
its batches). Uses ``ACTORFLOW_REDIS_URL``, or starts a private ``redis-server``.

    python -c "import bench.streaming as b; b.main()"
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

import actorflow as af
from actorflow._model.record import RawRecord
from actorflow.streaming._redis import encode_event
from bench import _relay_harness as harness

DEFAULT_EVENTS = 10_000
PIPELINE = 500


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


async def _relay(url: str, prefix: str, records: list[RawRecord]) -> float:
    store, last = await harness.store_of(records)
    streamer = harness.FinishLine(af.RedisStreamer(url, prefix=prefix), str(last))
    workflow = harness.builder("bench").build(store, streamer=streamer)
    start = time.perf_counter()
    async with af.open_workflow(workflow):
        await streamer.reached.wait()
        elapsed = time.perf_counter() - start
    harness.check_relay(workflow)
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
        records = harness.records(events)
        fields = [encode_event(event) for event in await harness.sample_events(records, events)]
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
