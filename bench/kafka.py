"""Events/s through Kafka: the outbox relay and a connector, beside confluent-kafka's own
produce and consume rates measured in the same run, against the same broker.

- ``raw_produce``: one idempotent producer (``acks=all``, like the streamer's) produces N
  messages with the same key, headers and value as the relay's, then flushes.
- ``raw_consume``: one consumer in a fresh group reads them, committing every 500.
- ``relay``: a workflow's event log (MemoryStore, so the store is not what is measured) is
  published by the relay through ``af.KafkaStreamer`` until its last event is delivered.
  Both producer figures leave out the idempotent producer's set-up (about 0.5 s on Tansu):
  the raw one starts after a warm-up message, the relay's after its first batch.
- ``connector``: a workflow's connector on that topic handles (a no-op) and acknowledges
  every event; each acknowledgement is a synchronous offset commit.
- ``connector_async_commits``: the same with ``async_commits=True``.
- ``memory_connector``: the same connector over an ``af.MemorySource`` of as many events:
  what the connector machinery itself allows, without Kafka.

Uses ``ACTORFLOW_KAFKA_BOOTSTRAP``.

    python -c "import bench.kafka as b; b.main()"
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from typing import Any

import trio

import actorflow as af
from actorflow._model.record import RawRecord
from actorflow.streaming import ConnectorEvent
from actorflow.streaming._kafka import encode_headers
from bench import _relay_harness as harness

DEFAULT_EVENTS = 10_000
COMMIT_EVERY = 500


def _raw_produce(bootstrap: str, topic: str, events: list[ConnectorEvent]) -> float:
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
    )
    messages = [(e.foreign_id.encode(), e.payload, encode_headers(e)) for e in events]
    # The idempotent producer's set-up (InitProducerId) is not the produce rate.
    producer.produce(topic, value=b"warm-up")
    producer.flush(30)
    start = time.perf_counter()
    for key, value, headers in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                producer.poll(0.01)
    if producer.flush(60) != 0:
        raise RuntimeError("raw producer: messages left undelivered")
    return len(messages) / (time.perf_counter() - start)


def _raw_consume(bootstrap: str, topic: str, count: int) -> float:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 1000,
            "heartbeat.interval.ms": 250,
        }
    )
    consumer.subscribe([topic])
    got = 0
    start: float | None = None
    try:
        while got < count:
            for message in consumer.consume(COMMIT_EVERY, 1.0):
                if message.error() is not None:
                    continue
                if start is None:  # the group join is not the consume rate
                    start = time.perf_counter()
                got += 1
                if got % COMMIT_EVERY == 0 or got == count:
                    consumer.commit(message, asynchronous=False)
        assert start is not None
        return (count - 1) / (time.perf_counter() - start)
    finally:
        consumer.close()


def _streamer(bootstrap: str, prefix: str, **options: Any) -> af.KafkaStreamer:
    return af.KafkaStreamer(
        bootstrap,
        topic_prefix=prefix,
        **options,
        session_timeout=timedelta(seconds=1),
        heartbeat_interval=timedelta(milliseconds=250),
    )


async def _relay(bootstrap: str, prefix: str, records: list[RawRecord]) -> float:
    store, last = await harness.store_of(records)
    streamer = harness.FinishLine(_streamer(bootstrap, prefix), str(last))
    async with streamer.inner.open_sender("bench"):
        pass  # the topic exists before the clock starts
    workflow = harness.builder("bench").build(store, streamer=streamer)
    async with af.open_workflow(workflow):
        await streamer.reached.wait()
        end = time.perf_counter()
    harness.check_relay(workflow)
    # From the first batch's delivery on: the producer's set-up is not the relay's rate.
    return (len(records) - streamer.first_batch) / (end - streamer.first_done)


async def _connector(
    bootstrap: str | None, prefix: str, count: int, name: str, **options: Any
) -> float:
    """A connector handling ``count`` events of the relay's topic (``bootstrap`` None: the
    same number of events from an ``af.MemorySource``, the connector machinery alone)."""
    source: af.EventSource
    if bootstrap is None:
        source = af.MemorySource(
            ConnectorEvent(id=str(n), foreign_id=f"order-{n}", type="1") for n in range(count)
        )
    else:
        source = _streamer(bootstrap, prefix, **options).source("bench")
    handled = 0
    first: float | None = None
    finished = trio.Event()

    async def on_event(workflow: Any, event: ConnectorEvent) -> None:
        nonlocal handled, first
        if first is None:  # the group join is not the consume rate
            first = time.perf_counter()
        handled += 1
        if handled == count:
            finished.set()

    builder = harness.builder(name)
    builder.add_connector("bench", source, on_event)
    workflow = builder.build(af.MemoryStore())
    async with af.open_workflow(workflow):
        await finished.wait()
        assert first is not None
        return (count - 1) / (time.perf_counter() - first)


async def run(events: int, bootstrap: str | None = None) -> dict[str, float] | None:
    """Measure; returns the figures (events/s), or None without a broker address."""
    bootstrap = bootstrap or os.environ.get("ACTORFLOW_KAFKA_BOOTSTRAP")
    if not bootstrap:
        return None
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    records = harness.records(events)
    sample_events = await harness.sample_events(records, events)
    raw_topic = f"{prefix}raw"
    async with _streamer(bootstrap, prefix).open_sender("raw"):
        pass  # created with one partition, like the streamer's
    raw_produce = await trio.to_thread.run_sync(_raw_produce, bootstrap, raw_topic, sample_events)
    raw_consume = await trio.to_thread.run_sync(_raw_consume, bootstrap, raw_topic, events)
    relay = await _relay(bootstrap, prefix, records)
    memory_connector = await _connector(None, prefix, events, "memory")
    connector = await _connector(bootstrap, prefix, events, "sink")
    connector_async = await _connector(bootstrap, prefix, events, "sink2", async_commits=True)
    return {
        "raw_produce": raw_produce,
        "raw_consume": raw_consume,
        "relay": relay,
        "connector": connector,
        "connector_async_commits": connector_async,
        "memory_connector": memory_connector,
    }


def main(events: int | None = None) -> None:
    """Print events/s through the relay and a connector beside confluent-kafka's own."""
    count = events or int(os.environ.get("ACTORFLOW_BENCH_EVENTS", DEFAULT_EVENTS))
    figures = trio.run(run, count)
    print(f"kafka: {count} events")
    if figures is None:
        print("  skipped: set ACTORFLOW_KAFKA_BOOTSTRAP")
        return
    for name, value in figures.items():
        print(f"  {name:<12} {value:>10,.0f} events/s")
    print(f"  relay / raw produce:     {figures['relay'] / figures['raw_produce']:.2f}")
    for name in ("connector", "connector_async_commits"):
        print(f"  {name} / memory connector: {figures[name] / figures['memory_connector']:.2f}")


if __name__ == "__main__":
    main()
