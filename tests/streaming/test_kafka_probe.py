"""An adversarial probe of the Kafka streamer, written from docs/streaming.md,
docs/connectors.md and API.md: awkward events (empty, binary, huge, many headers, reserved
header names, odd time zones), topic names Kafka refuses, missing topics, several
partitions shared by a group, a connector function that raises, the first open with
``start="latest"``, acknowledgement misuse, and cancellation while a Kafka workflow starts.
A real Kafka-protocol broker (Tansu in CI); waits are on events or bounded polls.
"""

from __future__ import annotations

import enum
import itertools
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
import trio

import actorflow as af
from actorflow.streaming import ConnectorEvent, EventError, StreamError, connector_stats

from .conftest import event
from .conftest import kafka_streamer as _kafka_streamer

WAIT = 20
FAST = {
    "error_backoff": timedelta(milliseconds=20),
    "max_error_backoff": timedelta(milliseconds=100),
}
pytestmark = pytest.mark.kafka
KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def kafka_streamer(prefix: str, **options: Any) -> af.KafkaStreamer:
    """The test broker with quick group joins (Tansu joins in about half the session
    timeout): these tests open many groups."""
    quick: dict[str, Any] = {
        "session_timeout": timedelta(milliseconds=1000),
        "heartbeat_interval": timedelta(milliseconds=250),
    }
    return _kafka_streamer(prefix, **{**quick, **options})


def fresh() -> str:
    return f"kprobe-{uuid.uuid4().hex[:10]}-"


class Step(enum.IntEnum):
    A = 1
    B = 2
    C = 3


@attrs.define
class Box:
    note: str = ""


@attrs.define
class Seen:
    events: list[ConnectorEvent] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)
    fail: Callable[[ConnectorEvent], bool] | None = None
    attempts: int = 0

    async def fn(self, workflow: Any, e: ConnectorEvent) -> None:
        self.attempts += 1
        if self.fail is not None and self.fail(e):
            raise RuntimeError(f"refusing {e.id}")
        self.events.append(e)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool], limit: float = WAIT) -> None:
        with trio.fail_after(limit):
            while not predicate():
                await self.changed.wait()


async def until(predicate: Callable[[], bool], limit: float = WAIT) -> None:
    with trio.fail_after(limit):
        for _ in itertools.count():
            if predicate():
                return
            await trio.sleep(0.01)


def three_steps(name: str, store: af.Store, **build: Any) -> af.Workflow[Box, Step]:
    builder = af.Builder(name, Box, Step)

    @builder.step(Step.A, to=Step.B)
    async def a(run: af.Run[Box, Step]) -> Step:
        return Step.B

    @builder.step(Step.B, to=Step.C)
    async def b(run: af.Run[Box, Step]) -> Step:
        return Step.C

    return builder.build(store, **build)


def consumer(
    store: af.Store, source: af.EventSource, seen: Seen, name: str = "feed"
) -> af.Workflow[Box, Step]:
    builder = af.Builder("consumer", Box, Step)

    async def cb(run: af.Run[Box, Step], payload: bytes) -> Step:
        return Step.B

    builder.add_callback(Step.A, cb, to=Step.B)
    builder.add_connector(name, source, seen.fn, **FAST)
    return builder.build(store)


# -- what goes on a topic comes back as it was ------------------------------------------


async def test_awkward_events_come_back_exactly_as_sent() -> None:
    streamer = kafka_streamer(fresh())
    odd_zone = timezone(timedelta(hours=5, minutes=30))
    # not transitions (no run_id/version headers): none of them may be taken for a copy
    base = attrs.evolve(event(0, "feed"), headers={"k": "v"})
    awkward = [
        attrs.evolve(base, id="empty-key", foreign_id="", payload=b""),
        attrs.evolve(base, id="unicode", foreign_id="ünï 🧾 \u202e rtl", type="tÿpe"),
        attrs.evolve(base, id="binary", payload=bytes(range(256)) * 4),
        attrs.evolve(base, id="big", payload=b"\x00\xff" * 250_000),
        attrs.evolve(
            base,
            id="headers",
            headers={f"h{n}": "v\n\t" * n + "✓" for n in range(200)} | {"": "empty name"},
        ),
        attrs.evolve(base, id="no-headers", headers={}),
        attrs.evolve(
            base, id="zone", created_at=datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=odd_zone)
        ),
    ]
    async with streamer.open_sender("feed") as sender:
        await sender.send_many(awkward)
    async with streamer.open_receiver("feed", "g") as receiver:
        got = []
        with trio.fail_after(WAIT):
            for _ in awkward:
                got.append(await receiver.receive())
                await receiver.ack(got[-1])
    for sent, back in zip(awkward, got, strict=True):
        assert back == sent, sent.id
        assert back.created_at.utcoffset() == timedelta(0)  # aware UTC, the same instant


async def test_reserved_headers_are_refused_and_acks_of_strangers_are_event_errors() -> None:
    streamer = kafka_streamer(fresh())
    good = event(1, "feed")
    bad = attrs.evolve(event(2, "feed"), headers={"af.id": "forged"})
    async with streamer.open_sender("feed") as sender:
        with pytest.raises(EventError, match=r"af\."):
            await sender.send_many([good, bad])
        with pytest.raises(EventError, match=r"af\."):
            await sender.send(bad)
        await sender.send(event(3, "feed"))
        await sender.send(event(4, "feed"))
    async with streamer.open_receiver("feed", "g") as receiver:
        with trio.fail_after(WAIT):
            first = await receiver.receive()
        # the refused batch put nothing on the topic, not even its good first event
        assert first.id == "feed-3"
        # acknowledging what this receiver did not hand out, or twice, is an EventError
        with pytest.raises(EventError):
            await receiver.ack(event(7, "feed"))
        await receiver.ack(first)
        with pytest.raises(EventError):
            await receiver.ack(first)
        with trio.fail_after(WAIT):
            assert (await receiver.receive()).id == "feed-4"


# -- topics ---------------------------------------------------------------------------------


async def test_topic_names_kafka_refuses_become_distinct_usable_topics() -> None:
    streamer = af.KafkaStreamer("127.0.0.1:1", topic_prefix="")
    names = [".", "..", "a" * 300, "a" * 301, "ünï", "a/b", "a b", "a_b", "x" * 249]
    mapped = [streamer.topic_name(name) for name in names]
    for name, topic in zip(names, mapped, strict=True):
        assert KAFKA_TOPIC.match(topic), (name, topic)
        assert topic not in {".", ".."}, name
    assert len(set(mapped)) == len(mapped)


async def test_a_long_workflow_name_streams_through_its_topic() -> None:
    streamer = kafka_streamer(fresh())
    with pytest.raises(af.BuildError, match="at most 200 characters"):
        af.Builder("x" * 201, Box, Step)
    name = "order processing/" + "x" * 180
    store = af.MemoryStore()
    wf = three_steps(name, store, streamer=streamer, default_options=FAST)
    seen = Seen()
    reader = consumer(af.MemoryStore(), streamer.source(name), seen)
    async with af.open_workflow(wf, reader):
        await wf.trigger("one")
        await seen.wait_for(lambda: len(seen.events) >= 3)
    assert [e.headers["version"] for e in seen.events] == ["1", "2", "3"]


async def test_a_missing_topic_that_may_not_be_created_is_a_clear_error_not_a_hang() -> None:
    streamer = kafka_streamer(fresh(), create_topics=False, join_timeout=timedelta(seconds=2))
    with trio.fail_after(WAIT):
        with pytest.raises(StreamError, match="nope"):
            async with streamer.open_receiver("nope", "g") as receiver:
                await receiver.receive()


# -- relay and connectors ------------------------------------------------------------------


async def test_several_partitions_keep_each_runs_versions_in_order_and_once() -> None:
    streamer = kafka_streamer(fresh(), partitions=3)
    store = af.MemoryStore()
    wf = three_steps("orders", store, streamer=streamer, default_options=FAST)
    seen = Seen()
    reader = consumer(af.MemoryStore(), streamer.source("orders"), seen)
    runs = 30
    async with af.open_workflow(wf, reader):
        for n in range(runs):
            await wf.trigger(f"o-{n}")
        await seen.wait_for(lambda: len(seen.events) >= 3 * runs)
    by_run: dict[str, list[int]] = {}
    for e in seen.events:
        by_run.setdefault(e.headers["run_id"], []).append(int(e.headers["version"]))
    assert len(by_run) == runs
    assert all(versions == [1, 2, 3] for versions in by_run.values()), by_run
    assert len({e.headers["foreign_id"] for e in seen.events}) == runs


async def test_a_raising_connector_function_holds_its_event_and_skips_nothing() -> None:
    streamer = kafka_streamer(fresh())
    sent = [event(n, "feed") for n in range(4)]
    async with streamer.open_sender("feed") as sender:
        await sender.send_many(sent)
    failures = 3

    def fail(e: ConnectorEvent) -> bool:
        nonlocal failures
        if e.id == "feed-1" and failures:
            failures -= 1
            return True
        return False

    seen = Seen(fail=fail)
    store = af.MemoryStore()
    wf = consumer(store, streamer.source("feed"), seen)
    async with af.open_workflow(wf):
        await seen.wait_for(lambda: len(seen.events) >= 4)
        stats = connector_stats(wf)["feed"]
        await until(lambda: stats.handled >= 4)
        assert stats.errors == 3
    assert [e.id for e in seen.events] == [e.id for e in sent]
    # started again on the same store: everything handled stays handled
    async with streamer.open_sender("feed") as sender:
        await sender.send(event(9, "feed"))
    again = Seen()
    wf = consumer(store, streamer.source("feed"), again)
    async with af.open_workflow(wf):
        await again.wait_for(lambda: bool(again.events))
    assert [e.id for e in again.events] == ["feed-9"]


async def test_latest_creates_the_cursor_at_the_first_open() -> None:
    streamer = kafka_streamer(fresh())
    async with streamer.open_sender("feed") as sender:
        await sender.send(event(0, "feed"))  # before the first open: not for "late"
    async with streamer.open_receiver("feed", "late", start="latest") as receiver:
        async with streamer.open_sender("feed") as sender:
            await sender.send(event(1, "feed"))
        with trio.fail_after(WAIT):
            assert (await receiver.receive()).id == "feed-1"  # received, not acknowledged
    async with streamer.open_sender("feed") as sender:
        await sender.send(event(2, "feed"))
    async with streamer.open_receiver("feed", "late", start="latest") as receiver:
        with trio.fail_after(WAIT):
            got = [await receiver.receive(), await receiver.receive()]
    assert [e.id for e in got] == ["feed-1", "feed-2"]


async def test_cancelling_a_kafka_workflow_while_it_starts_never_hangs_or_loses() -> None:
    streamer = kafka_streamer(fresh())
    store = af.MemoryStore()
    wf = three_steps("orders", store, streamer=streamer, default_options=FAST)
    seen = Seen()
    reader_store = af.MemoryStore()
    triggered = 0
    for delay in (0.0, 0.001, 0.01, 0.05, 0.2, 0.5, 1.0):
        await wf.trigger(f"o-{triggered}")
        triggered += 1
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(delay):
                    await nursery.start(wf.run)
                    await nursery.start(consumer(reader_store, streamer.source("orders"), seen).run)
                nursery.cancel_scope.cancel()
    reader = consumer(reader_store, streamer.source("orders"), seen)
    async with af.open_workflow(wf, reader):
        await seen.wait_for(
            lambda: (
                {(e.foreign_id, e.headers["version"]) for e in seen.events}
                >= {(f"o-{n}", v) for n in range(triggered) for v in "123"}
            ),
            WAIT * 2,
        )
    # a user sees each version once, in order per run
    keys = [(e.headers["run_id"], int(e.headers["version"])) for e in seen.events]
    assert len(keys) == len(set(keys))
    for run_id in {k for k, _ in keys}:
        versions = [v for k, v in keys if k == run_id]
        assert versions == sorted(versions)


async def test_a_second_member_of_a_group_shares_partitions_and_nothing_is_seen_twice() -> None:
    streamer = kafka_streamer(fresh(), partitions=4)
    sent = [attrs.evolve(event(n, "feed"), foreign_id=f"k{n}") for n in range(40)]
    async with streamer.open_sender("feed") as sender:
        await sender.send_many(sent[:20])
    got: list[ConnectorEvent] = []
    async with streamer.open_receiver("feed", "g") as first:
        with trio.fail_after(WAIT):
            for _ in range(5):
                e = await first.receive()
                await first.ack(e)
                got.append(e)
        async with trio.open_nursery() as nursery:

            async def drain(receiver: Any) -> None:
                while True:
                    e = await receiver.receive()
                    got.append(e)
                    await receiver.ack(e)

            async def second() -> None:
                async with streamer.open_receiver("feed", "g") as receiver:
                    await drain(receiver)

            nursery.start_soon(drain, first)
            nursery.start_soon(second)
            async with streamer.open_sender("feed") as sender:
                await sender.send_many(sent[20:])
            await until(lambda: {e.id for e in got} >= {e.id for e in sent}, WAIT * 2)
            nursery.cancel_scope.cancel()
    # a rebalance may hand an unacknowledged event over again, but never an acknowledged one
    ids = [e.id for e in got]
    assert set(ids) == {e.id for e in sent}
    per_key: dict[str, list[int]] = {}
    for e in got:
        per_key.setdefault(e.foreign_id, []).append(int(e.id.split("-")[1]))
    assert all(len(v) == 1 for v in per_key.values()), per_key


def test_created_at_must_be_aware() -> None:
    with pytest.raises((EventError, ValueError, TypeError)):
        ConnectorEvent(
            id="x", foreign_id="f", type="t", headers={}, created_at=datetime(2026, 1, 1)
        )
    ConnectorEvent(id="x", foreign_id="f", type="t", headers={}, created_at=datetime.now(UTC))


def _produce(topic: str, messages: list[dict[str, Any]]) -> None:
    from confluent_kafka import Producer

    from .conftest import KAFKA_BOOTSTRAP

    assert KAFKA_BOOTSTRAP
    producer = Producer({"bootstrap.servers": KAFKA_BOOTSTRAP})
    for message in messages:
        producer.produce(topic, **message)
    assert producer.flush(10) == 0


async def test_an_empty_or_null_af_id_is_undecodable_not_a_positional_id() -> None:
    """docs/streaming.md: an ``af.id`` that is empty is undecodable: skipped, counted."""
    streamer = kafka_streamer(fresh())
    topic = streamer.topic_name("feed")
    async with streamer.open_sender("feed"):
        pass  # creates the topic
    await trio.to_thread.run_sync(
        _produce,
        topic,
        [
            {"value": b"a", "headers": [("af.id", b""), ("af.type", b"t")]},
            {"value": b"b", "headers": [("af.id", None)]},
        ],
    )
    async with streamer.open_sender("feed") as sender:
        await sender.send(event(1, "feed"))
    async with streamer.open_receiver("feed", "g") as receiver:
        with trio.fail_after(WAIT):
            got = await receiver.receive()
        assert got.id == "feed-1"
        assert receiver.undecodable == 2  # type: ignore[attr-defined]


async def _one_life(
    store: af.Store, streamer: af.KafkaStreamer, seen: list[str], target: str | None, when: str
) -> None:
    """Run a connector over the topic until it is cancelled inside ``target``'s function
    call (``before`` or ``after`` recording it), or, without a target, until it handled
    the last event."""
    scope = trio.CancelScope()
    reached = trio.Event()

    async def fn(workflow: Any, e: ConnectorEvent) -> None:
        if e.id == target and when == "before":
            scope.cancel()
            await trio.lowlevel.checkpoint()
        seen.append(e.id)
        if e.id == target:
            scope.cancel()
            await trio.lowlevel.checkpoint()
        if e.id == "feed-11":
            reached.set()

    builder = af.Builder("consumer", Box, Step)

    async def cb(run: af.Run[Box, Step], payload: bytes) -> Step:
        return Step.B

    builder.add_callback(Step.A, cb, to=Step.B)
    builder.add_connector("feed", streamer.source("feed"), fn, **FAST)
    wf = builder.build(store)
    with trio.fail_after(WAIT * 2), scope:
        async with af.open_workflow(wf):
            await reached.wait()
            stats = connector_stats(wf)["feed"]
            await until(lambda: stats.handled >= 1)
    assert target is None or scope.cancelled_caught


@pytest.mark.parametrize("async_commits", [True])
async def test_a_kafka_connector_cancelled_mid_event_repeats_at_most_that_event(
    async_commits: bool,
) -> None:
    streamer = kafka_streamer(fresh(), async_commits=async_commits)
    sent = [event(n, "feed") for n in range(12)]
    async with streamer.open_sender("feed") as sender:
        await sender.send_many(sent)
    store = af.MemoryStore()
    seen: list[str] = []
    for target, when in [("feed-2", "after"), ("feed-5", "before")]:
        await _one_life(store, streamer, seen, target, when)
    await _one_life(store, streamer, seen, None, "")
    # everything, in order; only an event a cancellation interrupted comes again
    expected = [e.id for e in sent]
    assert list(dict.fromkeys(seen)) == expected
    repeated = {i for i in seen if seen.count(i) > 1}
    assert repeated <= {"feed-2"}, seen
    assert all(seen.count(i) <= 2 for i in expected), seen


async def test_receives_cancelled_at_random_lose_and_repeat_nothing() -> None:
    """A receive cancelled while the consumer fetches in its worker thread must keep what
    that fetch brought: the next receive hands it out, in order."""
    streamer = kafka_streamer(fresh())
    sent = [event(n, "feed") for n in range(30)]
    got: list[str] = []
    async with streamer.open_sender("feed") as sender:
        await sender.send(sent[0])
        async with streamer.open_receiver("feed", "g") as receiver:
            with trio.fail_after(WAIT * 2):
                for n, e in enumerate(sent[1:], 1):
                    if n % 5 == 0:
                        await sender.send_many(sent[n : n + 5])
                    elif n < 5:
                        await sender.send(e)
                    with trio.move_on_after(0.001 * (n % 7)):
                        while True:
                            got.append((received := await receiver.receive()).id)
                            await receiver.ack(received)
                while len(got) < len(sent):
                    got.append((received := await receiver.receive()).id)
                    await receiver.ack(received)
    assert got == [e.id for e in sent]


async def test_many_opens_of_a_new_topic_at_once_all_work() -> None:
    """Senders and receivers racing to create one missing topic: each sees it exist."""
    streamer = kafka_streamer(fresh())
    got: list[str] = []

    async def send(n: int) -> None:
        async with streamer.open_sender("feed") as sender:
            await sender.send(attrs.evolve(event(n, "feed"), headers={}))

    async def receive() -> None:
        async with streamer.open_receiver("feed", "g") as receiver:
            while len(got) < 6:
                e = await receiver.receive()
                got.append(e.id)
                await receiver.ack(e)

    with trio.fail_after(WAIT * 2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for n in range(6):
                nursery.start_soon(send, n)
    assert sorted(got) == sorted(f"feed-{n}" for n in range(6))
