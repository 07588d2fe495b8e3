"""The outbox relay: every stored transition reaches the streamer, at least once, in order."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import actorflow as af
from actorflow.streaming import (
    TRANSITION_HEADERS,
    ConnectorEvent,
    EventReceiver,
    EventSender,
    StreamError,
    relay_stats,
    transition_event,
)
from actorflow.testing import trio_clock

START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


class Step(enum.IntEnum):
    A = 1
    B = 2
    C = 3


@attrs.define
class Note:
    text: str = ""


def chain(store: af.Store, **build: Any) -> af.Workflow[Note, Step]:
    """A -> B -> C."""
    builder = af.Builder("chain", Note, Step)

    @builder.step(Step.A, to=Step.B)
    async def a(run: af.Run[Note, Step]) -> Step:
        return Step.B

    @builder.step(Step.B, to=Step.C)
    async def b(run: af.Run[Note, Step]) -> Step:
        return Step.C

    return builder.build(store, clock=trio_clock(START), **build)


async def receive_all(receiver: EventReceiver, n: int) -> list[ConnectorEvent]:
    return [await receiver.receive() for _ in range(n)]


async def expected_events(store: af.Store, name: str) -> list[ConnectorEvent]:
    return [transition_event(e) for e in await store.read_events(0, 10_000, name)]


async def test_every_transition_is_published_in_order_with_headers(autojump_clock: Any) -> None:
    store = af.MemoryStore()
    streamer = af.MemoryStreamer()
    workflow = chain(store, streamer=streamer)
    async with (
        streamer.open_receiver("chain", "test") as receiver,
        af.open_workflow(workflow),
    ):
        runs = {await workflow.trigger(f"f{i}"): f"f{i}" for i in range(5)}
        for run_id, foreign_id in runs.items():
            await workflow.await_status(foreign_id, run_id, Step.C)
        got = await receive_all(receiver, 15)
    assert got == await expected_events(store, "chain")
    for event in got:
        assert set(TRANSITION_HEADERS) <= set(event.headers)
        assert event.type == event.headers["status"]
        assert event.headers["workflow_name"] == "chain"
        assert event.foreign_id == runs[event.headers["run_id"]]
    for run_id in runs:
        mine = [e for e in got if e.headers["run_id"] == run_id]
        pairs = [(e.headers["version"], e.type) for e in mine]
        assert pairs == [("1", "1"), ("2", "2"), ("3", "3")]
        assert [af.RunState(int(e.headers["run_state"])) for e in mine] == [
            af.RunState.INITIATED,
            af.RunState.RUNNING,
            af.RunState.COMPLETED,
        ]
    stats = relay_stats(workflow)
    assert stats.published == 15
    assert stats.errors == 0
    assert await store.get_cursor("relay:chain") == str(await store.last_event_id())


@attrs.define
class FlakyStreamer:
    """Wraps a streamer; the first ``fail`` batches are stored and then reported failed
    (a relay crash between publishing and moving its cursor)."""

    inner: af.MemoryStreamer
    fail: int = 1
    failures: int = 0
    recovered: trio.Event = attrs.Factory(trio.Event)

    @asynccontextmanager
    async def open_sender(self, topic: str) -> AsyncIterator[EventSender]:
        async with self.inner.open_sender(topic) as sender:
            yield _FlakySender(self, sender)

    def open_receiver(self, topic: str, consumer: str, *, start: Any = "earliest") -> Any:
        return self.inner.open_receiver(topic, consumer, start=start)


@attrs.define
class _FlakySender:
    owner: FlakyStreamer
    sender: EventSender

    async def send(self, event: ConnectorEvent) -> None:
        await self.send_many([event])

    async def send_many(self, events: Sequence[ConnectorEvent]) -> None:
        await self.sender.send_many(events)
        if self.owner.failures < self.owner.fail:
            self.owner.failures += 1
            raise StreamError("connection lost after the send")
        if self.owner.failures:
            self.owner.recovered.set()


async def test_a_failed_publish_is_published_again_and_nothing_is_lost(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = af.MemoryStore()
    inner = af.MemoryStreamer()
    streamer = FlakyStreamer(inner, fail=2)
    workflow = chain(
        store, streamer=streamer, default_options={"error_backoff": timedelta(seconds=3)}
    )
    before = trio.current_time()
    async with af.open_workflow(workflow):
        run_id = await workflow.trigger("f1")
        await workflow.await_status("f1", run_id, Step.C)
        await streamer.recovered.wait()
        await trio.testing.wait_all_tasks_blocked()
        waited = trio.current_time() - before
    stats = relay_stats(workflow)
    assert stats.errors == 2
    assert "connection lost after the send" in stats.last_error
    assert "re-publishing from event 0" in caplog.text
    assert waited >= 3 + 6  # backed off: error_backoff, then doubled
    # At least once: duplicates allowed, but every event, and in order at first sight.
    expected = await expected_events(store, "chain")
    published = inner.events("chain")
    assert list(dict.fromkeys(e.id for e in published)) == [e.id for e in expected]
    assert all(e in expected for e in published)
    assert published[-len(expected) :] == expected  # the last attempt sent them all, in order
    assert await store.get_cursor("relay:chain") == expected[-1].id


async def test_a_restart_resumes_after_the_cursor(autojump_clock: Any) -> None:
    store = af.MemoryStore()
    streamer = af.MemoryStreamer()
    first = chain(store, streamer=streamer)
    async with af.open_workflow(first):
        run_id = await first.trigger("f1")
        await first.await_status("f1", run_id, Step.C)
        async with streamer.open_receiver("chain", "test") as receiver:
            await receive_all(receiver, 3)
        await trio.testing.wait_all_tasks_blocked()  # the relay has moved its cursor
    # Written while no relay runs: published by the next one, after the cursor.
    await first.trigger("f2")
    second = chain(store, streamer=streamer)
    async with streamer.open_receiver("chain", "test2") as receiver, af.open_workflow(second):
        run_id = (await second.latest("f2")).run_id
        await second.await_status("f2", run_id, Step.C)
        got = await receive_all(receiver, 6)
        await trio.testing.wait_all_tasks_blocked()
    assert got == await expected_events(store, "chain")
    assert streamer.events("chain") == got  # nothing sent twice


async def test_the_store_log_streamer_of_the_same_store_needs_no_relay(autojump_clock: Any) -> None:
    store = af.MemoryStore()
    streamer = af.StoreLogStreamer(store)
    workflow = chain(store, streamer=streamer)
    async with streamer.open_receiver("chain", "test") as receiver, af.open_workflow(workflow):
        run_id = await workflow.trigger("f1")
        await workflow.await_status("f1", run_id, Step.C)
        got = await receive_all(receiver, 3)
    assert got == await expected_events(store, "chain")
    assert await store.get_cursor("relay:chain") is None


def test_a_streamer_that_is_not_one_is_refused_at_build() -> None:
    with pytest.raises(af.BuildError, match=r"streamer= must be an af\.EventStreamer"):
        chain(af.MemoryStore(), streamer=object())


def test_a_store_log_streamer_over_another_store_is_refused_at_build() -> None:
    """Its sender accepts and drops events: the relay would move its cursor over events that
    no reader of that other store ever sees."""
    with pytest.raises(af.BuildError, match="reads the event log of another store"):
        chain(af.MemoryStore(), streamer=af.StoreLogStreamer(af.MemoryStore()))


def test_a_store_log_streamer_over_the_same_sqlite_file_is_accepted(tmp_path: Any) -> None:
    path = tmp_path / "app.db"
    chain(af.SQLiteStore(path), streamer=af.StoreLogStreamer(af.SQLiteStore(path)))
    with pytest.raises(af.BuildError, match="another store"):
        chain(af.SQLiteStore(path), streamer=af.StoreLogStreamer(af.SQLiteStore(tmp_path / "b")))


async def test_the_relay_refuses_a_bad_streamer_if_build_was_bypassed(
    autojump_clock: Any,
) -> None:
    from datetime import timedelta

    from actorflow._services.context import ServiceContext
    from actorflow._services.relay import run_relay

    workflow = chain(af.MemoryStore())
    context = ServiceContext(
        name=workflow.name,
        store=workflow.store,
        clock=workflow.clock,
        definition=workflow.definition,
        default_options=workflow.default_options,
        poll_interval=timedelta(seconds=1),
        handle=workflow,
        check_trigger_args=workflow.check_trigger_args,
    )
    for streamer, message in [
        (object(), "must be an af.EventStreamer"),
        (af.StoreLogStreamer(af.MemoryStore()), "another store"),
    ]:
        with pytest.raises(af.InvalidArgument, match=message):
            await run_relay(context, streamer)
