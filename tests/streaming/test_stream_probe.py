"""Adversarial probes of the event-stream side, written from the API contract.

Malformed, foreign, duplicated and oversized entries on a Redis stream and a Kafka topic
consumed by connectors; streams deleted, keys of the wrong type and connections killed
under a running connector; cancellation of connectors and receivers; workflows connected
to each other; the gateway's live watch with many, slow and vanishing subscribers. Real
servers, no mocks; waits are on events, never on sleeps.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import itertools
import json
import shutil
import socket
import struct
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
import trio_websocket

import actorflow as af
from actorflow.streaming import (
    ConnectorEvent,
    StreamError,
    StreamSource,
    connector_stats,
    relay_stats,
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


# -- cancellation at every schedule point -------------------------------------------------


class CancelAtStep(trio.abc.Instrument):
    """Cancels ``scope`` just before the ``k``-th step of the task that opened it."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.steps = 0
        self.task: trio.lowlevel.Task | None = None
        self.scope: trio.CancelScope | None = None
        self.fired = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is not self.task or self.scope is None or self.fired:
            return
        self.steps += 1
        if self.steps >= self.k:
            self.fired = True
            self.scope.cancel()


async def _consume_with_cancel_at(
    streamer: af.EventStreamer, topic: str, group: str, k: int, count: int
) -> tuple[list[str], bool]:
    """Receive and ack ``count`` events, cancelled at the ``k``-th step; what was acked."""
    acked: list[str] = []
    instrument = CancelAtStep(k)
    trio.lowlevel.add_instrument(instrument)
    try:
        with trio.CancelScope() as scope:
            instrument.task = trio.lowlevel.current_task()
            instrument.scope = scope
            async with streamer.open_receiver(topic, group) as receiver:
                for _ in range(count):
                    e = await receiver.receive()
                    await receiver.ack(e)
                    acked.append(e.id)
    finally:
        trio.lowlevel.remove_instrument(instrument)
    return acked, instrument.fired


@redis
async def test_redis_receiver_cancelled_at_every_step_loses_nothing(
    rstreamer: af.RedisStreamer,
) -> None:
    sent = [event(n, "feed") for n in range(3)]
    async with rstreamer.open_sender("feed") as sender:
        await sender.send_many(sent)
    expected = [e.id for e in sent]
    for k in itertools.count(1):
        group = f"g{k}"
        acked, fired = await _consume_with_cancel_at(rstreamer, "feed", group, k, 3)
        # whatever was not acknowledged comes again, in order, and nothing acked does
        rest: list[str] = []
        async with rstreamer.open_receiver("feed", group) as receiver:
            while len(acked) + len(rest) < 3:
                with trio.fail_after(WAIT):
                    e = await receiver.receive()
                await receiver.ack(e)
                rest.append(e.id)
        assert acked + rest == expected, (k, acked, rest)
        async with raw_redis() as client:
            assert (await client.xpending(rstreamer.key("feed"), group)).pending == 0
        if not fired:
            break
    assert k > 5


class CancelAfterSteps(trio.abc.Instrument):
    """Cancels ``scope`` before the ``k``-th task step of the whole program after arming."""

    def __init__(self, k: int, scope: trio.CancelScope) -> None:
        self.k = k
        self.steps = 0
        self.scope = scope
        self.fired = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        if not self.fired and self.steps >= self.k:
            self.fired = True
            self.scope.cancel()


async def _run_connector(
    store: af.Store, source: af.EventSource, seen: Seen, last: str, cancel_at: int | None
) -> bool:
    """Run the consumer until its cursor is ``last``, or cancel it at step ``cancel_at``
    of the program; True if it was cancelled."""
    wf = consumer_workflow(store, source, seen)
    stats = connector_stats(wf)["feed"]
    with trio.CancelScope() as scope:
        instrument = None if cancel_at is None else CancelAfterSteps(cancel_at, scope)
        if instrument is not None:
            trio.lowlevel.add_instrument(instrument)
        try:
            async with af.open_workflow(wf):
                await until(lambda: stats.cursor == last)
        finally:
            if instrument is not None:
                trio.lowlevel.remove_instrument(instrument)
    return instrument is not None and instrument.fired


def _check_once_but_the_boundary(seen: Seen, expected: list[str]) -> None:
    """Every event, in order at first sight; at most one handled twice (the one in flight
    when the connector was cancelled)."""
    assert list(dict.fromkeys(seen.ids)) == expected, seen.ids
    assert len(seen.ids) - len(expected) <= 1, seen.ids


@redis
async def test_a_redis_connector_cancelled_anywhere_resumes_with_at_most_the_one_in_flight(
    rstreamer: af.RedisStreamer,
) -> None:
    for k in range(1, 1000, 3):
        topic = f"feed{k}"
        sent = [event(n, topic) for n in range(3)]
        async with rstreamer.open_sender(topic) as sender:
            await sender.send_many(sent)
        store = af.MemoryStore()
        seen = Seen()
        source = StreamSource(rstreamer, topic)
        fired = await _run_connector(store, source, seen, sent[-1].id, k)
        # Redis keeps the cursor: an event acknowledged there whose cursor write was
        # cancelled is done. A last event shows that everything before it was handled.
        sent.append(event(3, topic))
        async with rstreamer.open_sender(topic) as sender:
            await sender.send(sent[-1])
        await _run_connector(store, source, seen, sent[-1].id, None)
        _check_once_but_the_boundary(seen, [e.id for e in sent])
        if not fired:
            break
    assert k > 20  # the whole life of a connector was walked through


def producer_workflow(store: af.Store, **build: Any) -> af.Workflow[Box, Step]:
    builder = af.Builder("producer", Box, Step)

    @builder.step(Step.A, to=Step.B)
    async def a(run: af.Run[Box, Step]) -> Step:
        run.object.note = "done"
        return Step.B

    return builder.build(store, **build)


async def test_an_af_connect_connector_cancelled_anywhere_resumes_with_at_most_one_again(
    autojump_clock: Any,
) -> None:
    for k in range(1, 2000, 5):
        other, expected = await _stored_history()
        producer = producer_workflow(other)
        store = af.MemoryStore()
        seen = Seen()
        source = af.connect(producer)
        fired = await _run_connector(store, source, seen, expected[-1], k)
        await _run_connector(store, source, seen, expected[-1], None)
        _check_once_but_the_boundary(seen, expected)
        if not fired:
            break
    assert k > 20


async def _stored_history() -> tuple[af.MemoryStore, list[str]]:
    """A store holding three finished runs of ``producer``, and its event ids."""
    store = af.MemoryStore()
    producer = producer_workflow(store)
    async with af.open_workflow(producer):
        for n in range(3):
            run_id = await producer.trigger(f"p{n}")
            await producer.await_status(f"p{n}", run_id, Step.B)
    return store, [str(e.id) for e in await store.read_events(0, 100, "producer")]


@redis
async def test_a_relay_cancelled_anywhere_publishes_everything_in_order(
    rstreamer: af.RedisStreamer,
) -> None:
    for k in range(1, 2000, 3):
        store, expected = await _stored_history()
        streamer = af.RedisStreamer(REDIS_URL or "", prefix=f"{rstreamer.prefix}{k}:")
        fired = False
        for cancel_at in (k, None):
            producer = producer_workflow(store, streamer=streamer, default_options=FAST)
            stats = relay_stats(producer)
            with trio.CancelScope() as scope:
                instrument = CancelAfterSteps(cancel_at or 10**9, scope)
                trio.lowlevel.add_instrument(instrument)
                try:
                    async with af.open_workflow(producer):
                        await until(lambda s=stats, last=int(expected[-1]): s.cursor == last)
                finally:
                    trio.lowlevel.remove_instrument(instrument)
            fired = fired or instrument.fired
        async with raw_redis() as client:
            entries = await client.xrange(streamer.key("producer"))
        ids = [e.field_values[b"id"].decode() for e in entries]
        assert list(dict.fromkeys(ids)) == expected, (k, ids)
        assert len(ids) <= 2 * len(expected)
        if not fired:
            break
    assert k > 20


# -- workflows connected to each other ------------------------------------------------------


class Order(enum.IntEnum):
    PLACED = 1
    AWAITING = 2
    PAID = 3


class Pay(enum.IntEnum):
    REQUESTED = 1
    SETTLED = 2


def shop(store: af.Store) -> tuple[af.Workflow[Box, Order], af.Workflow[Box, Pay]]:
    """orders asks payments (a connector on its AWAITING), payments answers (a connector
    on its SETTLED calls orders back): two workflows connected both ways."""
    payments_builder = af.Builder("payments", Box, Pay)

    @payments_builder.step(Pay.REQUESTED, to=Pay.SETTLED)
    async def settle(run: af.Run[Box, Pay]) -> Pay:
        return Pay.SETTLED

    orders_builder = af.Builder("orders", Box, Order)

    @orders_builder.step(Order.PLACED, to=Order.AWAITING)
    async def ask(run: af.Run[Box, Order]) -> Order:
        return Order.AWAITING

    async def paid(run: af.Run[Box, Order], payload: bytes) -> Order:
        run.object.note += payload.decode()
        return Order.PAID

    orders_builder.add_callback(Order.AWAITING, paid, to=Order.PAID)
    payments = payments_builder.build(store)

    async def on_settled(orders: Any, event: ConnectorEvent) -> None:
        await orders.callback(event.foreign_id, Order.AWAITING, b"paid;")

    settled = af.connect(payments, status=Pay.SETTLED)
    orders_builder.add_connector("payments", settled, on_settled, **FAST)
    orders = orders_builder.build(store)

    async def on_awaiting(payments: Any, event: ConnectorEvent) -> None:
        # A redelivered event whose run finished already must not start another one.
        try:
            latest = await payments.latest(event.foreign_id)
        except af.RunNotFound:
            latest = None
        if latest is not None and latest.created_at >= event.created_at:
            return
        with contextlib.suppress(af.WorkflowInProgress):  # asked before: done
            await payments.trigger(event.foreign_id)

    payments_builder2 = af.Builder("payments", Box, Pay)
    payments_builder2.add_step(Pay.REQUESTED, settle, to=Pay.SETTLED)
    payments_builder2.add_connector(
        "orders", af.connect(orders, status=Order.AWAITING), on_awaiting, **FAST
    )
    return orders, payments_builder2.build(store)


async def test_two_workflows_connected_both_ways_survive_cancellation_anywhere(
    autojump_clock: Any,
) -> None:
    n_orders = 3
    for k in range(1, 5000, 2):
        store = af.MemoryStore()
        orders, payments = shop(store)
        for n in range(n_orders):
            await orders.trigger(f"o{n}")
        fired = False
        for cancel_at in (k, None):
            orders, payments = shop(store)
            with trio.CancelScope() as scope:
                instrument = CancelAfterSteps(cancel_at or 10**9, scope)
                trio.lowlevel.add_instrument(instrument)
                try:
                    async with af.open_workflow(orders, payments):
                        for n in range(n_orders):
                            run_id = (await orders.latest(f"o{n}")).run_id
                            await orders.await_status(f"o{n}", run_id, Order.PAID)
                finally:
                    trio.lowlevel.remove_instrument(instrument)
            fired = fired or instrument.fired
        for n in range(n_orders):
            record = await orders.latest(f"o{n}")
            assert record.object.note == "paid;", (k, record)
            assert len(await orders.list_runs(foreign_id=f"o{n}")) == 1
            assert len(await payments.list_runs(foreign_id=f"o{n}")) == 1
        if not fired:
            break
    assert k > 50


# -- the gateway's live watch ---------------------------------------------------------------

TOKEN = "probe-token"


def watched_workflow() -> af.Workflow[Box, Step]:
    builder = af.Builder("watched", Box, Step)

    async def b(run: af.Run[Box, Step], payload: bytes) -> Step:
        run.object.note = payload.decode()
        return Step.B

    builder.add_callback(Step.A, b, to=Step.B)
    return builder.build(af.MemoryStore())


async def _gateway(nursery: trio.Nursery, wf: af.Workflow[Any, Any], **options: Any) -> str:
    port: int = await nursery.start(
        functools.partial(af.serve_gateway, [wf], "127.0.0.1", 0, token=TOKEN, **options)
    )
    return f"ws://127.0.0.1:{port}/"


async def test_many_subscribers_each_see_exactly_their_changes_in_order(
    nursery: trio.Nursery,
) -> None:
    wf = watched_workflow()
    await nursery.start(wf.run)
    url = await _gateway(nursery, wf)
    runs = 6
    got: dict[tuple[int, str | None], list[tuple[str, int]]] = {}
    ready = trio.Semaphore(0)

    async def watch(client: Any, index: int, foreign_id: str | None, expect: int) -> None:
        key = (index, foreign_id)
        got[key] = []
        async with client.subscribe("watched", foreign_id=foreign_id) as changes:
            ready.release()
            while len(got[key]) < expect:
                record = await changes.receive()
                got[key].append((record["foreign_id"], record["version"]))

    with trio.fail_after(WAIT):
        async with (
            af.open_gateway_client(url, token=TOKEN) as c1,
            af.open_gateway_client(url, token=TOKEN) as c2,
            trio.open_nursery() as watchers,
        ):
            count = 0
            for client in (c1, c2):
                for _ in range(10):  # 10 watching everything, per client
                    watchers.start_soon(watch, client, count, None, runs * 2)
                    count += 1
                for n in range(runs):  # and one per foreign id
                    watchers.start_soon(watch, client, count, f"f{n}", 2)
                    count += 1
            for _ in range(count):
                await ready.acquire()
            for n in range(runs):
                await wf.trigger(f"f{n}")
            for n in range(runs):
                await wf.callback(f"f{n}", Step.A, b"x")
    everything = [(f"f{n}", 1) for n in range(runs)] + [(f"f{n}", 2) for n in range(runs)]
    for (_, foreign_id), seen in got.items():
        if foreign_id is None:
            assert seen == everything
        else:
            assert seen == [(foreign_id, 1), (foreign_id, 2)]
    assert not wf.store.feed.has_subscribers


def _raw(url: str, **kwargs: Any) -> Any:
    return trio_websocket.open_websocket_url(
        url, extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())], **kwargs
    )


async def test_subscribers_vanishing_mid_message_free_everything(nursery: trio.Nursery) -> None:
    """Peers that reset their TCP connection while big events are being written to them:
    the gateway frees their subscriptions and goes on serving the others."""
    wf = watched_workflow()
    url = await _gateway(nursery, wf, subscription_buffer=8)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    big = "y" * 200_000
    for round_ in range(3):
        socks = []
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as peers:
                for _ in range(5):
                    sock = trio.socket.socket()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    await sock.connect(("127.0.0.1", port))
                    ws = await trio_websocket.wrap_client_stream(
                        peers, trio.SocketStream(sock), "127.0.0.1", "/",
                        extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
                    )  # fmt: skip
                    request = {"id": 1, "op": "subscribe", "workflow": "watched"}
                    await ws.send_message(json.dumps(request))
                    assert json.loads(await ws.get_message())["ok"] is True
                    socks.append(sock)
                for n in range(4):
                    await wf.trigger(f"r{round_}-{n}", initial=Box(note=big))
                # reset every connection, mid-frame (RST: SO_LINGER 0)
                for sock in socks:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                peers.cancel_scope.cancel()
        # the gateway lets go of every subscription, and serves a new client
        await until(lambda: not wf.store.feed.has_subscribers)
        with trio.fail_after(WAIT):
            async with af.open_gateway_client(url, token=TOKEN) as client:
                async with client.subscribe("watched") as changes:
                    await wf.trigger(f"after-{round_}")
                    assert (await changes.receive())["foreign_id"] == f"after-{round_}"
                assert (await client.lookup("watched", (await wf.latest("r0-0")).run_id))["object"][
                    "note"
                ] == big


@pytest.mark.parametrize(
    "filters",
    [
        {"foreign_id": ["a"]},
        {"foreign_id": {"$ne": None}},
        {"foreign_id": 7},
        {"foreign_id": True},
        {"run_id": 1e308},
        {"run_id": "x" * 2_000_000},
        {"foreign_id": "a\u0000b"},
        {"foreign_id": "\ud800"},
        {"foreign_id": "", "run_id": ""},
        {"workflow": ["watched"]},
        {"workflow": "watched\u0000"},
        {"foreign_id": "*"},
        {"foreign_id": "%"},
    ],
)
async def test_hostile_subscription_filters_are_refused_or_match_literally(
    nursery: trio.Nursery, filters: dict[str, Any]
) -> None:
    wf = watched_workflow()
    url = await _gateway(nursery, wf, max_message_bytes=4 << 20)
    request = {"id": "s", "op": "subscribe", "workflow": "watched", **filters}
    with trio.fail_after(WAIT):
        async with _raw(url, max_message_size=4 << 20) as ws:
            await ws.send_message(json.dumps(request))
            reply = json.loads(await ws.get_message())
            if reply["ok"]:
                # accepted: a literal filter, which matches nothing we store
                await wf.trigger("f1")
                await ws.send_message('{"id": "p", "op": "ping"}')
                pong = json.loads(await ws.get_message())
                assert pong == {"id": "p", "ok": True, "result": "pong"}
                assert isinstance(filters.get("foreign_id", ""), str)
            else:
                assert reply["id"] == "s"
                assert reply["error"]["code"] in {"invalid_argument", "unknown_workflow", "too_big"}
            await ws.send_message('{"id": "q", "op": "ping"}')
            assert json.loads(await ws.get_message())["ok"] is True
    await until(lambda: not wf.store.feed.has_subscribers)


@kafka
async def test_a_kafka_connector_survives_a_broker_restart_and_gets_what_follows() -> None:
    from tests.streaming.test_kafka import PrivateTansu, _tansu_binary

    if _tansu_binary() is None:
        pytest.skip("Tansu is not installed: a broker restart under a connector was NOT tested")
    broker = PrivateTansu()
    await broker.start()
    try:
        streamer = af.KafkaStreamer(
            broker.bootstrap,
            session_timeout=timedelta(seconds=1),
            heartbeat_interval=timedelta(milliseconds=250),
            connect_timeout=timedelta(seconds=2),
            delivery_timeout=timedelta(seconds=1),
            poll_interval=timedelta(milliseconds=50),
            join_timeout=timedelta(seconds=10),
            client_config={"log_level": 0},
        )
        store = af.MemoryStore()
        producer = producer_workflow(store, streamer=streamer, default_options=FAST)
        seen = Seen()
        consumer = consumer_workflow(store, streamer.source("producer"), seen)
        async with af.open_workflow(producer, consumer):
            await producer.trigger("before")
            await seen.wait_for(2, WAIT * 2)
            await broker.kill()
            await producer.trigger("during")  # held in the outbox while the broker is down
            relay = relay_stats(producer)
            await until(lambda: relay.errors >= 1, WAIT * 2)
            await broker.start()  # empty: memory storage, so the group's offsets are gone
            await producer.trigger("after")
            with trio.fail_after(WAIT * 3):
                while not all(
                    [e.foreign_id for e in seen.events].count(f) >= 2 for f in ("during", "after")
                ):
                    await seen.changed.wait()
        assert "StreamError" in relay.last_error
    finally:
        await broker.kill()


@redis
@pytest.mark.parametrize("start", ["earliest", "latest"])
async def test_redis_stream_deleted_and_refilled_at_once_loses_nothing_new(
    rstreamer: af.RedisStreamer, start: Any
) -> None:
    """The stream (and so the group) vanishes and new entries arrive before the connector
    looks again: the group created anew must not skip them, whatever ``start`` said the
    first time."""
    seen = Seen()
    wf = consumer_workflow(af.MemoryStore(), StreamSource(rstreamer, "feed", start=start), seen)
    key = rstreamer.key("feed")
    async with af.open_workflow(wf):
        # the group exists once the connector has opened: wait for one event through it
        async with rstreamer.open_sender("feed") as sender:
            for attempt in itertools.count():
                await sender.send(event(100 + attempt, "feed"))
                with trio.move_on_after(0.2):
                    await seen.wait_for(1)
                if seen.events:
                    break
        async with raw_redis() as client, client.pipeline(transaction=True) as pipe:
            pipe.delete([key])
            for n in range(3):
                pipe.xadd(key, _redis_fields(event(n, "feed")))
        await seen.wait_for(4)
    assert seen.ids[1:] == [f"feed-{n}" for n in range(3)]


@redis
async def test_a_redis_group_that_vanished_is_created_again_at_the_first_entry(
    rstreamer: af.RedisStreamer,
) -> None:
    key = rstreamer.key("feed")
    async with rstreamer.open_receiver("feed", "g", start="latest") as receiver:
        with trio.move_on_after(0.05):
            await receiver.receive()  # nothing yet
    async with raw_redis() as client, client.pipeline(transaction=True) as pipe:
        pipe.delete([key])
        for n in range(2):
            pipe.xadd(key, _redis_fields(event(n, "feed")))
    async with rstreamer.open_receiver("feed", "g", start="latest") as receiver:
        with trio.fail_after(WAIT):
            got = [await receiver.receive(), await receiver.receive()]
    assert [e.id for e in got] == ["feed-0", "feed-1"]


@kafka
async def test_kafka_an_oversized_event_is_a_clear_error_and_the_sender_goes_on() -> None:
    streamer = _kafka_streamer(f"probe5-{uuid.uuid4().hex[:10]}-")
    big = attrs.evolve(event(0, "feed"), payload=b"z" * (3 << 20))
    async with streamer.open_sender("feed") as sender:
        with pytest.raises(af.ActorflowError) as info:
            await sender.send(big)
        assert "too large" in str(info.value).lower() or "size" in str(info.value).lower()
        await sender.send_many([event(1, "feed"), event(2, "feed")])
    async with streamer.open_receiver("feed", "g") as receiver:
        with trio.fail_after(WAIT):
            got = [await receiver.receive(), await receiver.receive()]
    assert [e.id for e in got] == ["feed-1", "feed-2"]


async def test_no_event_follows_the_unsubscribe_reply_and_ids_are_reusable(
    nursery: trio.Nursery,
) -> None:
    wf = watched_workflow()
    url = await _gateway(nursery, wf, rate=10_000.0, burst=10_000)
    subscribe = json.dumps({"id": "s", "op": "subscribe", "workflow": "watched"})
    unsubscribe = json.dumps({"id": "x", "op": "unsubscribe", "subscription": "s"})

    async def flood(round_: int) -> None:
        for n in range(300):
            await wf.trigger(f"u{round_}-{n}")

    async def next_message(ws: Any) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await ws.get_message())
        return message

    with trio.fail_after(WAIT):
        async with _raw(url) as ws:
            for round_ in range(3):  # the id "s" is free again after each unsubscribe
                await ws.send_message(subscribe)
                assert (await next_message(ws))["ok"] is True
                await ws.send_message(subscribe)  # the same id again: refused
                dup = await next_message(ws)
                assert dup["ok"] is False and dup["error"]["code"] == "invalid_argument", dup
                async with trio.open_nursery() as producers:
                    producers.start_soon(flood, round_)
                    while True:  # unsubscribe in the middle of the flood
                        message = await next_message(ws)
                        assert message.get("event") == "record", message
                        if message["record"]["foreign_id"] == f"u{round_}-20":
                            break
                    await ws.send_message(unsubscribe)
                    while True:  # records queued before the reply, none after it
                        message = await next_message(ws)
                        if message.get("id") == "x":
                            assert message == {"id": "x", "ok": True, "result": True}
                            break
                        assert message.get("event") == "record", message
                    producers.cancel_scope.cancel()
                await ws.send_message('{"id": "p", "op": "ping"}')
                assert await next_message(ws) == {"id": "p", "ok": True, "result": "pong"}
    await until(lambda: not wf.store.feed.has_subscribers)


def test_an_event_id_a_store_cannot_hold_as_a_cursor_is_refused() -> None:
    for bad in ("a\x00b", "\ud800"):
        with pytest.raises(af.InvalidArgument, match=r"ConnectorEvent\.id"):
            ConnectorEvent(id=bad, foreign_id="f", type="t")
        with pytest.raises(af.InvalidArgument):
            af.MemorySource([ConnectorEvent(id=bad, foreign_id="f", type="t")])


@redis
async def test_redis_entries_whose_id_cannot_be_a_cursor_are_dead_letters(
    rstreamer: af.RedisStreamer, tmp_path: Path
) -> None:
    """A NUL in an id would be handed to the function, then fail the cursor write on
    PostgreSQL (and run the function again on a positional source): it is malformed."""
    key = rstreamer.key("feed")
    async with raw_redis() as client:
        await client.xadd(key, {**_fields(**GOOD_BASE), b"id": b"a\x00b"})
        await client.xadd(key, _redis_fields(event(1, "feed")))
    seen = Seen()
    wf = consumer_workflow(af.SQLiteStore(tmp_path / "c.db"), StreamSource(rstreamer, "feed"), seen)
    async with af.open_workflow(wf):
        await seen.wait_for(1)
        await handled(wf, 1)
        assert connector_stats(wf)["feed"].source_errors == 0
    assert seen.ids == ["feed-1"]
    async with raw_redis() as client:
        dead = await client.xrange(key + b":dead")
    assert len(dead) == 1 and b"NUL" in dead[0].field_values[b"error"]


@kafka
async def test_kafka_messages_whose_id_cannot_be_a_cursor_are_skipped() -> None:
    streamer = _kafka_streamer(f"probe5-{uuid.uuid4().hex[:10]}-")
    topic = streamer.topic_name("feed")
    async with streamer.open_sender("feed"):
        pass  # creates the topic
    await trio.to_thread.run_sync(
        _produce_raw, topic, [{"value": b"x", "headers": [("af.id", b"a\x00b")]}]
    )
    async with streamer.open_sender("feed") as sender:
        await sender.send(event(1, "feed"))
    async with streamer.open_receiver("feed", "g") as receiver:
        with trio.fail_after(WAIT):
            got = await receiver.receive()
        assert receiver.undecodable == 1  # type: ignore[attr-defined]
    assert got.id == "feed-1"


@redis
async def test_a_frozen_redis_is_a_stream_error_not_a_hang_and_nothing_is_lost(
    own_redis: OwnRedis,
) -> None:
    """SIGSTOP the server under a relay and a connector: both report StreamError within
    ``timeout`` (not hang for ever), and once it thaws every event arrives."""
    import signal

    streamer = af.RedisStreamer(
        own_redis.url,
        prefix="f:",
        block=timedelta(milliseconds=100),
        claim_after=None,
        timeout=timedelta(milliseconds=500),
    )
    store = af.MemoryStore()
    producer = producer_workflow(store, streamer=streamer, default_options=FAST)
    seen = Seen()
    consumer = consumer_workflow(store, StreamSource(streamer, "producer"), seen)
    assert own_redis.process is not None
    async with af.open_workflow(producer, consumer):
        await producer.trigger("before")
        await seen.wait_for(2)
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            await producer.trigger("during")
            relay = relay_stats(producer)
            connector = connector_stats(consumer)["feed"]
            await until(lambda: relay.errors >= 1 and connector.source_errors >= 1)
            assert "got no answer within" in relay.last_error
            assert "got no answer within" in connector.last_error
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        await producer.trigger("after")
        with trio.fail_after(WAIT):
            while {e.foreign_id for e in seen.events} != {"before", "during", "after"} or len(
                {e.id for e in seen.events}
            ) < 6:
                await seen.changed.wait()


async def test_a_redis_server_that_never_answers_fails_the_open_with_stream_error(
    nursery: trio.Nursery,
) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, silent, 0)
    port = listeners[0].socket.getsockname()[1]
    streamer = af.RedisStreamer(f"redis://127.0.0.1:{port}/0", timeout=timedelta(milliseconds=300))
    with trio.fail_after(WAIT), pytest.raises(StreamError, match="no answer"):
        async with streamer.open_receiver("t", "c"):
            pass
    with trio.fail_after(WAIT), pytest.raises(StreamError, match="no answer"):
        async with streamer.open_sender("t") as sender:
            await sender.send(event(1, "t"))
    with pytest.raises(af.InvalidArgument, match="timeout"):
        af.RedisStreamer("redis://x", timeout=timedelta(0))


async def test_a_gateway_that_never_answers_the_handshake_is_a_gateway_error(
    nursery: trio.Nursery,
) -> None:
    """A peer that accepts the TCP connection and says nothing (a frozen gateway, the
    wrong port): open_gateway_client fails after connect_timeout, not never."""

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, silent, 0)
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(WAIT), pytest.raises(af.GatewayError) as info:
        async with af.open_gateway_client(
            f"ws://127.0.0.1:{port}/", token=TOKEN, connect_timeout=0.3
        ):
            pytest.fail("connected to a silent peer")
    assert info.value.code == "connection_failed"
    assert "no websocket handshake within 0.3 s" in str(info.value)


@redis
async def test_redis_relay_republications_reach_a_connector_once(
    rstreamer: af.RedisStreamer,
) -> None:
    """A relay that failed after XADD publishes the batch again: the receiver hands each
    transition out once (acknowledging the copy), like the Kafka receiver; events that
    are not transitions are never taken for copies."""
    first = [event(n, "feed") for n in range(3)]
    later = attrs.evolve(first[0], id="feed-later", headers={**first[0].headers, "version": "99"})
    foreign = ConnectorEvent(
        id="x", foreign_id="f", type="t", headers={"run_id": "r", "version": "1"}
    )
    async with rstreamer.open_sender("feed") as sender:
        await sender.send_many(first)
        await sender.send_many(first)  # re-published
        await sender.send_many([later, foreign, attrs.evolve(foreign, id="y")])
        await sender.send(first[1])  # older than what was handed out: a copy too
    seen = Seen()
    wf = consumer_workflow(af.MemoryStore(), StreamSource(rstreamer, "feed"), seen)
    async with af.open_workflow(wf):
        await seen.wait_for(6)
        await handled(wf, 6)
    assert seen.ids == ["feed-0", "feed-1", "feed-2", "feed-later", "x", "y"]
    async with raw_redis() as client:
        pending = await client.xpending(rstreamer.key("feed"), "connector:consumer:feed")
    assert pending.pending == 0
