"""Adversarial probes of the event-stream side, written from the API contract.

Malformed, foreign, duplicated and oversized entries on a Redis stream and a Kafka topic
consumed by connectors; streams deleted, keys of the wrong type and connections killed
under a running connector; cancellation of connectors and receivers; workflows connected
to each other; the gateway's live watch with many, slow and vanishing subscribers. Real
servers, no mocks; waits are on events, never on sleeps.
"""

from __future__ import annotations

import enum
import itertools
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import actorflow as af
from actorflow.streaming import (
    ConnectorEvent,
    StreamSource,
    connector_stats,
)
from tests.streaming.conftest import KAFKA_BOOTSTRAP, REDIS_URL, drop_redis_keys, event

WAIT = 15
T0 = datetime(2026, 1, 1, tzinfo=UTC)
FAST = {
    "error_backoff": timedelta(milliseconds=20),
    "max_error_backoff": timedelta(milliseconds=200),
}


class Step(enum.IntEnum):
    A = 1
    B = 2


@attrs.define
class Box:
    note: str = ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def raw_redis(url: str | None = None) -> AsyncIterator[Any]:
    import coredis

    async with coredis.Redis.from_url(url or REDIS_URL or "") as client:
        yield client


@attrs.define
class Seen:
    """What a connector function was handed, with a wake-up per call (no polling)."""

    events: list[ConnectorEvent] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)
    fail_on: Callable[[ConnectorEvent], bool] | None = None

    async def fn(self, workflow: Any, event: ConnectorEvent) -> None:
        if self.fail_on is not None and self.fail_on(event):
            raise RuntimeError(f"refusing {event.id}")
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, count: int, limit: float = WAIT) -> None:
        with trio.fail_after(limit):
            while len(self.events) < count:
                await self.changed.wait()

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events]


async def until(predicate: Callable[[], bool], limit: float = WAIT) -> None:
    """Wait until ``predicate()`` holds: for counters that have no event to wait on."""
    with trio.fail_after(limit):
        for _ in itertools.count():
            if predicate():
                return
            await trio.sleep(0.01)


async def handled(wf: af.Workflow[Any, Any], count: int, name: str = "feed") -> None:
    """Wait until the connector has stored its cursor after ``count`` events."""
    stats = connector_stats(wf)[name]
    await until(lambda: stats.handled >= count)


def consumer_workflow(
    store: af.Store, source: af.EventSource, seen: Seen, **options: Any
) -> af.Workflow[Box, Step]:
    builder = af.Builder("consumer", Box, Step)

    async def b(run: af.Run[Box, Step], payload: bytes) -> Step:
        return Step.B

    builder.add_callback(Step.A, b, to=Step.B)
    builder.add_connector("feed", source, seen.fn, **{**FAST, **options})
    return builder.build(store)


# -- Redis Streams -------------------------------------------------------------------------

redis = pytest.mark.redis


@pytest.fixture
async def rstreamer() -> AsyncIterator[af.RedisStreamer]:
    assert REDIS_URL
    prefix = f"probe5:{uuid.uuid4().hex[:10]}:"
    try:
        yield af.RedisStreamer(
            REDIS_URL, prefix=prefix, block=timedelta(milliseconds=100), claim_after=None
        )
    finally:
        await drop_redis_keys(prefix)


def _fields(**values: bytes) -> dict[bytes, bytes]:
    return {key.encode(): value for key, value in values.items()}


GOOD_BASE = {
    "id": b"good",
    "foreign_id": b"f",
    "type": b"t",
    "created_at": b"2026-01-01T00:00:00+00:00",
}


def _bad_entries() -> list[dict[bytes, bytes]]:
    """Entries on the stream that are not our events, or are malformed ones."""
    base = _fields(**GOOD_BASE)
    return [
        {b"foo": b"bar"},  # foreign: some other producer's entry
        {**base, b"id": b""},  # empty id
        {**base, b"created_at": b"2026-01-01T00:00:00"},  # naive time
        {**base, b"created_at": b"not a date"},
        {**base, b"foreign_id": b"\xff\xfe"},  # not UTF-8
        {**base, b"h:\xff": b"v"},  # header name not UTF-8
        {**base, b"h:k": b"\xc0"},  # header value not UTF-8
        {**base, b"id": b"\xed\xa0\x80"},  # a lone surrogate, encoded
    ]


@redis
async def test_redis_foreign_and_malformed_entries_never_stop_or_duplicate_good_ones(
    rstreamer: af.RedisStreamer,
) -> None:
    key = rstreamer.key("feed")
    good = [event(n, "feed") for n in range(4)]
    big = attrs.evolve(good[3], payload=b"\x00\xff" * 500_000)  # 1 MB, binary
    good[3] = big
    async with raw_redis() as client:
        for index, bad in enumerate(_bad_entries()):
            await client.xadd(key, bad)
            if index % 3 == 0:
                await client.xadd(key, _redis_fields(good[index // 3]))
    seen = Seen()
    store = af.MemoryStore()
    wf = consumer_workflow(store, StreamSource(rstreamer, "feed"), seen)
    async with af.open_workflow(wf):
        await seen.wait_for(3)
        async with rstreamer.open_sender("feed") as sender:
            await sender.send(good[3])
        await seen.wait_for(4)
        await handled(wf, 4)
    assert seen.events == good
    async with raw_redis() as client:
        dead = await client.xrange(key + b":dead")
        assert len(dead) == len(_bad_entries())
        pending = await client.xpending(key, "connector:consumer:feed")
        assert pending.pending == 0
    # A restart hands nothing over again.
    seen2 = Seen()
    wf2 = consumer_workflow(store, StreamSource(rstreamer, "feed"), seen2)
    async with af.open_workflow(wf2):
        async with rstreamer.open_sender("feed") as sender:
            await sender.send(event(9, "feed"))
        await seen2.wait_for(1)
    assert seen2.ids == ["feed-9"]


def _redis_fields(e: ConnectorEvent) -> dict[bytes, bytes]:
    from actorflow.streaming._redis import encode_event

    return encode_event(e)


@redis
async def test_redis_stream_deleted_under_a_connector_resumes_with_new_entries(
    rstreamer: af.RedisStreamer,
) -> None:
    seen = Seen()
    wf = consumer_workflow(af.MemoryStore(), StreamSource(rstreamer, "feed"), seen)
    async with af.open_workflow(wf):
        async with rstreamer.open_sender("feed") as sender:
            await sender.send_many([event(n, "feed") for n in range(2)])
        await seen.wait_for(2)
        async with raw_redis() as client:
            await client.delete([rstreamer.key("feed")])
        async with rstreamer.open_sender("feed") as sender:
            await sender.send_many([event(n, "feed") for n in range(2, 4)])
        await seen.wait_for(4)
    assert seen.ids == [f"feed-{n}" for n in range(4)]


@redis
async def test_redis_key_of_another_type_is_a_clear_error_and_the_connector_waits(
    rstreamer: af.RedisStreamer,
) -> None:
    key = rstreamer.key("feed")
    async with raw_redis() as client:
        await client.set(key, b"not a stream")
    seen = Seen()
    wf = consumer_workflow(af.MemoryStore(), StreamSource(rstreamer, "feed"), seen)
    async with af.open_workflow(wf):
        stats = connector_stats(wf)["feed"]
        await until(lambda: stats.source_errors >= 2)
        assert "StreamError" in stats.last_error and "wrong kind" in stats.last_error
        async with raw_redis() as client:
            await client.delete([key])
        async with rstreamer.open_sender("feed") as sender:
            await sender.send(event(1, "feed"))
        await seen.wait_for(1)
    assert seen.ids == ["feed-1"]


# -- a Redis server of our own: connections killed, restarts --------------------------------


@attrs.define
class OwnRedis:
    directory: Path
    port: int = attrs.field(factory=_free_port)
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = await trio.lowlevel.open_process(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--save", "", "--appendonly", "yes", "--appendfsync",
             "always"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with trio.fail_after(WAIT):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.02)  # starting: nothing to wait on
                    continue
                await stream.aclose()
                return

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@redis
async def test_redis_connections_killed_mid_stream_lose_and_repeat_nothing(
    own_redis: OwnRedis,
) -> None:
    streamer = af.RedisStreamer(
        own_redis.url, prefix="k:", block=timedelta(milliseconds=100), claim_after=None
    )
    seen = Seen()
    wf = consumer_workflow(af.MemoryStore(), StreamSource(streamer, "feed"), seen)
    total = 0
    async with af.open_workflow(wf), raw_redis(own_redis.url) as admin:
        for _ in range(5):
            async with streamer.open_sender("feed") as sender:
                await sender.send_many([event(total + n, "feed") for n in range(3)])
            total += 3
            await seen.wait_for(total)
            # kill every other client (the connector's), mid blocking read
            from coredis.tokens import PureToken

            await admin.client_kill(type_=PureToken.NORMAL, skipme=True)
    assert seen.ids == [f"feed-{n}" for n in range(total)]


# -- cancellation ---------------------------------------------------------------------------


@redis
@pytest.mark.parametrize("step", range(6))
async def test_redis_receiver_cancelled_at_any_point_strands_nothing(
    rstreamer: af.RedisStreamer, step: int
) -> None:
    """Cancel a connector's receive/ack at many points: after a restart each event is
    handled, and the pending list is empty once all were acknowledged."""
    async with rstreamer.open_sender("feed") as sender:
        await sender.send_many([event(n, "feed") for n in range(6)])
    store = af.MemoryStore()
    got: list[str] = []
    with trio.CancelScope() as scope:
        async with rstreamer.open_receiver("feed", "g") as receiver:
            for n in range(6):
                if n == step:
                    scope.cancel()
                e = await receiver.receive()
                got.append(e.id)
                await receiver.ack(e)
    del store
    async with rstreamer.open_receiver("feed", "g") as receiver:
        while len(got) < 6:
            with trio.fail_after(WAIT):
                e = await receiver.receive()
            got.append(e.id)
            await receiver.ack(e)
        with trio.move_on_after(0.3):
            extra = await receiver.receive()
            pytest.fail(f"delivered again: {extra}")
    assert got == [f"feed-{n}" for n in range(6)]


# -- Kafka ----------------------------------------------------------------------------------

kafka = pytest.mark.kafka


def _kafka_streamer(prefix: str) -> af.KafkaStreamer:
    from tests.streaming.conftest import kafka_streamer

    return kafka_streamer(prefix)


def _produce_raw(topic: str, messages: list[dict[str, Any]]) -> None:
    from confluent_kafka import Producer

    assert KAFKA_BOOTSTRAP
    producer = Producer({"bootstrap.servers": KAFKA_BOOTSTRAP})
    for message in messages:
        producer.produce(topic, **message)
    assert producer.flush(10) == 0


@kafka
async def test_kafka_foreign_malformed_and_duplicate_messages_never_stop_good_ones() -> None:
    prefix = f"probe5-{uuid.uuid4().hex[:10]}-"
    streamer = _kafka_streamer(prefix)
    topic = streamer.topic_name("feed")
    good = [event(n, "feed") for n in range(3)]
    # our own events first (creates the topic), then the hostile ones, then more of ours
    async with streamer.open_sender("feed") as sender:
        await sender.send(good[0])
    hostile: list[dict[str, Any]] = [
        {"value": b"plain foreign message"},  # no headers at all: someone else's
        {"key": b"\xff\xfe", "value": b"x"},  # key not UTF-8
        {"value": b"x", "headers": [("af.created_at", b"yesterday")]},
        {"value": b"x", "headers": [("af.created_at", b"2026-01-01T00:00:00")]},  # naive
        {"value": b"x", "headers": [("af.id", b"")]},  # empty id
        {"value": b"x", "headers": [("h", b"\xc0")]},  # header value not UTF-8
        {"value": b"x", "headers": [("af.id", b"\xed\xa0\x80")]},  # lone surrogate
        {"value": b"x", "headers": [("af.id", b"dup"), ("h", None)]},  # null header value
        {"value": None, "key": None},  # a tombstone
    ]
    await trio.to_thread.run_sync(_produce_raw, topic, hostile)
    async with streamer.open_sender("feed") as sender:
        await sender.send_many(good[1:])
        await sender.send(good[1])  # a re-publication of a transition
    seen = Seen()
    wf = consumer_workflow(af.MemoryStore(), streamer.source("feed"), seen)
    async with af.open_workflow(wf):
        # every good one, in order; foreign ones are delivered as foreign events
        with trio.fail_after(WAIT * 2):
            while "feed-2" not in seen.ids:
                await seen.changed.wait()
    ours = [e for e in seen.events if e.id.startswith("feed-")]
    assert ours == good
    foreign = [e for e in seen.events if not e.id.startswith("feed-")]
    for e in foreign:
        assert e.id  # never empty
        e.id.encode()  # valid text


@kafka
async def test_kafka_foreign_messages_that_look_like_transitions_are_all_delivered() -> None:
    """Only our relay's re-publications are duplicates: another producer's messages with
    ``run_id``/``version`` headers of their own (or digits int() refuses) are events."""
    prefix = f"probe5-{uuid.uuid4().hex[:10]}-"
    streamer = _kafka_streamer(prefix)
    topic = streamer.topic_name("feed")
    async with streamer.open_sender("feed"):
        pass  # creates the topic
    foreign: list[dict[str, Any]] = [
        {"key": b"k", "value": f"m{n}".encode(), "headers": [("run_id", b"job"), ("version", v)]}
        for n, v in enumerate([b"1", b"1", "\u00b2".encode(), b"0", "\u0661".encode()])
    ]
    await trio.to_thread.run_sync(_produce_raw, topic, foreign)
    seen = Seen()
    wf = consumer_workflow(af.MemoryStore(), streamer.source("feed"), seen)
    async with af.open_workflow(wf):
        await seen.wait_for(5, WAIT * 2)
        await handled(wf, 5)
        assert connector_stats(wf)["feed"].source_errors == 0
    assert [e.payload for e in seen.events] == [f"m{n}".encode() for n in range(5)]
