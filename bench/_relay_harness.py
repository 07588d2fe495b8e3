"""What bench/streaming.py (Redis) and bench/kafka.py share: a workflow's event log to
publish, a streamer wrapper that tells when its last event was sent, and the small
workflow the relay (or a connector) runs in."""

from __future__ import annotations

import enum
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


class Status(enum.IntEnum):
    WAITING = 1
    DONE = 2


@attrs.define
class Empty:
    pass


def records(count: int) -> list[RawRecord]:
    """``count`` new runs, each one event of the log the relay publishes."""
    now = datetime.now(UTC)
    return [
        RawRecord(
            workflow_name="bench",
            foreign_id=f"order-{n}",
            run_id=uuid.uuid4().hex,
            status=int(Status.WAITING),
            run_state=af.RunState.INITIATED,
            object="{}",
            version=1,
            created_at=now,
            updated_at=now,
            meta=Meta(status_description="WAITING"),
        )
        for n in range(count)
    ]


async def sample_events(runs: list[RawRecord], count: int) -> list[ConnectorEvent]:
    """``count`` events as the relay sends them (made from the first run's), for the raw
    clients' baselines."""
    store = af.MemoryStore()
    await store.create_run(runs[0])
    sample = transition_event((await store.read_events(0, 1))[0])
    return [attrs.evolve(sample, id=str(n), foreign_id=f"order-{n}") for n in range(count)]


def builder(name: str) -> af.Builder[Empty, Status]:
    """A workflow whose runs wait for a callback (so only the relay or a connector works)."""
    builder = af.Builder(name, Empty, Status)

    async def done(run: Any, payload: bytes) -> Status:
        return Status.DONE

    builder.add_callback(Status.WAITING, done, to=Status.DONE)
    return builder


async def store_of(runs: list[RawRecord]) -> tuple[af.MemoryStore, int]:
    """A MemoryStore holding ``runs`` (so the store is not what is measured), and the id
    of its last event."""
    store = af.MemoryStore()
    for record in runs:
        await store.create_run(record)
    return store, await store.last_event_id()


def check_relay(workflow: af.Workflow[Any, Any]) -> None:
    """Fail the benchmark when the relay had errors (its figure would mean nothing)."""
    stats = relay_stats(workflow)
    if stats.errors:
        raise RuntimeError(f"the relay failed during the benchmark: {stats.last_error}")


@attrs.define
class FinishLine:
    """Delegates to a streamer; ``reached`` is set once the event ``last_id`` was sent."""

    inner: Any
    last_id: str
    reached: trio.Event = attrs.Factory(trio.Event)
    first_batch: int = 0
    first_done: float = 0.0
    """When the first batch was delivered (a producer's set-up is behind it)."""

    @asynccontextmanager
    async def open_sender(self, topic: str) -> AsyncIterator[FinishSender]:
        async with self.inner.open_sender(topic) as sender:
            yield FinishSender(self, sender)

    def open_receiver(self, topic: str, consumer: str, *, start: Any = "earliest") -> Any:
        return self.inner.open_receiver(topic, consumer, start=start)


@attrs.define
class FinishSender:
    line: FinishLine
    sender: EventSender

    async def send(self, event: ConnectorEvent) -> None:
        await self.send_many([event])

    async def send_many(self, events: Sequence[ConnectorEvent]) -> None:
        await self.sender.send_many(events)
        if not self.line.first_done:
            self.line.first_batch, self.line.first_done = len(events), time.perf_counter()
        if events and events[-1].id == self.line.last_id:
            self.line.reached.set()
