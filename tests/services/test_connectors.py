"""Connectors and af.connect: at-least-once with a durable cursor, back-off, bad input."""

from __future__ import annotations

import enum
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import actorflow as af
from actorflow.streaming import EventError, EventReceiver, connector_stats
from actorflow.testing import trio_clock

START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


class Pay(enum.IntEnum):
    CREATED = 1
    SETTLED = 2
    REFUNDED = 3


class Order(enum.IntEnum):
    PLACED = 1
    PAID = 2


@attrs.define
class Box:
    notes: list[str] = attrs.Factory(list)


def payments(store: af.Store) -> af.Workflow[Box, Pay]:
    """CREATED -callback-> SETTLED -callback-> REFUNDED."""
    builder = af.Builder("payments", Box, Pay)

    async def settle(run: af.Run[Box, Pay], payload: bytes) -> Pay:
        return Pay.SETTLED

    async def refund(run: af.Run[Box, Pay], payload: bytes) -> Pay:
        return Pay.REFUNDED

    builder.add_callback(Pay.CREATED, settle, to=Pay.SETTLED)
    builder.add_callback(Pay.SETTLED, refund, to=Pay.REFUNDED)
    return builder.build(store, clock=trio_clock(START))


def sink(
    store: af.Store, source: Any, fn: Any, name: str = "sink", **options: Any
) -> af.Workflow[Box, Order]:
    """A workflow with one connector; PLACED -callback-> PAID."""
    builder = af.Builder(name, Box, Order)

    async def paid(run: af.Run[Box, Order], payload: bytes) -> Order:
        run.object.notes.append(payload.decode())
        return Order.PAID

    builder.add_callback(Order.PLACED, paid, to=Order.PAID)
    builder.add_connector("feed", source, fn, **options)
    return builder.build(store, clock=trio_clock(START))


def ev(n: int, **changes: Any) -> af.ConnectorEvent:
    fields: dict[str, Any] = {
        "id": f"e{n}",
        "foreign_id": f"f{n}",
        "type": "created",
        "headers": {"run_id": f"r{n}"},
        "created_at": START,
        "payload": json.dumps({"n": n}).encode(),
    }
    fields.update(changes)
    return af.ConnectorEvent(**fields)


@attrs.define
class Recorder:
    """A connector function that records events and signals every call."""

    seen: list[af.ConnectorEvent] = attrs.Factory(list)
    changed: trio.Event = attrs.Factory(trio.Event)

    async def __call__(self, workflow: af.Workflow[Any, Any], event: af.ConnectorEvent) -> None:
        self.seen.append(event)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, n: int) -> None:
        while len(self.seen) < n:
            await self.changed.wait()


async def test_connect_delivers_another_workflows_transitions(autojump_clock: Any) -> None:
    store = af.MemoryStore()
    pay = payments(store)
    recorder = Recorder()
    orders = sink(store, af.connect(pay), recorder)
    async with af.open_workflow(pay, orders):
        run_id = await pay.trigger("order-1")
        await pay.callback("order-1", Pay.CREATED, b"")
        await recorder.wait_for(2)
    first, second = recorder.seen
    assert (first.type, second.type) == ("1", "2")
    assert first.foreign_id == "order-1"
    assert second.headers == {
        "workflow_name": "payments",
        "foreign_id": "order-1",
        "run_id": run_id,
        "status": "2",
        "run_state": str(int(af.RunState.RUNNING)),
        "version": "2",
    }
    assert second.created_at == (await pay.lookup(run_id)).updated_at
    assert await store.get_cursor("connector:sink:feed") == second.id
    assert connector_stats(orders)["feed"].handled == 2


async def test_connect_with_a_status_delivers_only_runs_reaching_it(autojump_clock: Any) -> None:
    store = af.MemoryStore()
    pay = payments(store)
    recorder = Recorder()
    orders = sink(store, af.connect(pay, status=Pay.SETTLED), recorder)
    async with af.open_workflow(pay, orders):
        for foreign_id in ("a", "b", "c"):
            await pay.trigger(foreign_id)
        run_b = (await pay.latest("b")).run_id
        await pay.pause(run_b, "hold on")  # a pause at CREATED: not SETTLED
        await pay.callback("a", Pay.CREATED, b"")
        await pay.callback("c", Pay.CREATED, b"")
        await pay.callback("a", Pay.SETTLED, b"")  # REFUNDED: not delivered
        await recorder.wait_for(2)
        await trio.testing.wait_all_tasks_blocked()
    assert [(e.foreign_id, e.type) for e in recorder.seen] == [("a", "2"), ("c", "2")]


async def test_orders_wait_for_payments(autojump_clock: Any) -> None:
    store = af.MemoryStore()
    pay = payments(store)

    async def on_settled(orders: af.Workflow[Box, Order], event: af.ConnectorEvent) -> None:
        payload = f"paid by run {event.header('run_id')}".encode()
        await orders.callback(event.foreign_id, Order.PLACED, payload)

    orders = sink(store, af.connect(pay, status=Pay.SETTLED), on_settled, name="orders")
    async with af.open_workflow(pay, orders):
        order_run = await orders.trigger("o1")
        pay_run = await pay.trigger("o1")
        await pay.callback("o1", Pay.CREATED, b"")
        done = await orders.await_status("o1", order_run, Order.PAID)
    assert done.object == Box([f"paid by run {pay_run}"])


async def test_a_restart_redelivers_the_event_in_flight_and_only_it(autojump_clock: Any) -> None:
    store = af.MemoryStore()
    source = af.MemorySource([ev(1), ev(2), ev(3), ev(4)])
    calls: list[str] = []
    stuck = trio.Event()

    async def blocks_on_e3(workflow: Any, event: af.ConnectorEvent) -> None:
        calls.append(event.id)
        if event.id == "e3" and calls.count("e3") == 1:
            stuck.set()
            await trio.sleep_forever()  # the process dies here

    first = sink(store, source, blocks_on_e3)
    async with af.open_workflow(first):
        await stuck.wait()
    assert await store.get_cursor("connector:sink:feed") == "e2"
    second = sink(store, source, blocks_on_e3)
    async with af.open_workflow(second):
        with trio.fail_after(60):  # fails instead of hanging if e4 never comes
            while len(calls) < 5:
                await trio.testing.wait_all_tasks_blocked()
    assert calls == ["e1", "e2", "e3", "e3", "e4"]
    assert await store.get_cursor("connector:sink:feed") == "e4"


async def test_errors_back_off_are_counted_and_lose_nothing(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    source = af.MemorySource([ev(1), ev(2)])
    attempts: list[tuple[str, float]] = []
    done = trio.Event()

    async def flaky(workflow: Any, event: af.ConnectorEvent) -> None:
        attempts.append((event.id, trio.current_time()))
        if event.id == "e1" and len(attempts) <= 3:
            raise RuntimeError("downstream unavailable")
        if event.id == "e2":
            done.set()

    workflow = sink(
        af.MemoryStore(),
        source,
        flaky,
        error_backoff=timedelta(seconds=2),
        max_error_backoff=timedelta(seconds=5),
    )
    async with af.open_workflow(workflow):
        await done.wait()
    assert [a[0] for a in attempts] == ["e1", "e1", "e1", "e1", "e2"]
    gaps = [round(b[1] - a[1], 6) for a, b in itertools.pairwise(attempts[:4])]
    assert gaps == [2, 4, 5]  # doubling, capped: never a busy loop
    stats = connector_stats(workflow)["feed"]
    assert (stats.errors, stats.handled) == (3, 2)
    assert "RuntimeError: downstream unavailable" in stats.last_error
    assert "connector 'feed'" in caplog.text and "failed on event e1" in caplog.text


async def test_bad_events_give_clear_errors_and_wait_for_a_fix(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An event without the header the function needs, and a payload it cannot parse: the
    errors name the event, the connector backs off, and the events are handled once the
    function is fixed (nothing is skipped)."""
    no_header = ev(1, headers={})
    bad_payload = ev(2, payload=b"{not json")
    source = af.MemorySource([no_header, bad_payload, ev(3)])
    fixed = False
    handled: list[str] = []
    failures: list[str] = []
    all_done = trio.Event()

    async def parse(workflow: Any, event: af.ConnectorEvent) -> None:
        try:
            run_id = event.header("run_id")
            body = json.loads(event.payload)
        except (EventError, ValueError) as exc:
            failures.append(str(exc))
            if not fixed:
                raise
            run_id, body = "?", None
        handled.append(f"{event.id}:{run_id}:{body}")
        if len(handled) == 3:
            all_done.set()

    workflow = sink(af.MemoryStore(), source, parse, error_backoff=timedelta(seconds=1))
    async with af.open_workflow(workflow):
        with trio.move_on_after(60):
            await all_done.wait()
        assert handled == []
        stats = connector_stats(workflow)["feed"]
        assert 5 <= stats.errors <= 10  # backed off for a minute: no busy loop
        fixed = True  # "deploy the fix"
        await all_done.wait()
    assert handled == ["e1:?:None", "e2:?:None", "e3:r3:{'n': 3}"]
    assert "event 'e1' (foreign id 'f1', type 'created') has no header 'run_id'" in failures[0]
    assert "has no header 'run_id'" in caplog.text


async def test_consume_lag_holds_events_until_they_are_old_enough(autojump_clock: Any) -> None:
    clock = trio_clock(START)
    recorder = Recorder()
    source = af.MemorySource([ev(1, created_at=START + timedelta(minutes=1))])
    workflow = sink(af.MemoryStore(), source, recorder, consume_lag=timedelta(minutes=10))
    async with af.open_workflow(workflow):
        await recorder.wait_for(1)
        now = clock.now()
    assert now >= START + timedelta(minutes=11)


@attrs.define
class BrokenSource:
    """Fails to open ``failures`` times, then serves ``inner``."""

    inner: af.MemorySource
    failures: int
    opened: list[str | None] = attrs.Factory(list)

    @asynccontextmanager
    async def open(self, consumer: str, after: str | None) -> AsyncIterator[EventReceiver]:
        self.opened.append(after)
        if self.failures:
            self.failures -= 1
            raise af.streaming.StreamError("server down")
        async with self.inner.open(consumer, after) as receiver:
            yield receiver


async def test_a_failing_source_is_reopened_with_back_off(autojump_clock: Any) -> None:
    recorder = Recorder()
    source = BrokenSource(af.MemorySource([ev(1)]), failures=2)
    workflow = sink(af.MemoryStore(), source, recorder, error_backoff=timedelta(seconds=1))
    async with af.open_workflow(workflow):
        await recorder.wait_for(1)
        elapsed = trio.current_time()
    stats = connector_stats(workflow)["feed"]
    assert stats.source_errors == 2
    assert "server down" in stats.last_error
    assert elapsed >= 1 + 2
    assert source.opened == [None, None, None]


@attrs.define
class AckFails:
    """Serves ``inner``, but every acknowledgement fails."""

    inner: af.MemorySource

    @asynccontextmanager
    async def open(self, consumer: str, after: str | None) -> AsyncIterator[EventReceiver]:
        async with self.inner.open(consumer, after) as receiver:
            yield _FailingAck(receiver)


@attrs.define
class _FailingAck:
    inner: EventReceiver

    async def receive(self) -> af.ConnectorEvent:
        return await self.inner.receive()

    async def ack(self, event: af.ConnectorEvent) -> None:
        raise af.streaming.StreamError("ack failed")


class FailingCursorStore(af.MemoryStore):
    """A store whose connector cursor cannot be written."""

    async def set_cursor(self, name: str, value: str) -> None:
        if name.startswith("connector:"):
            raise af.StoreError("disk full")
        await super().set_cursor(name, value)


@pytest.mark.parametrize("failing", ["ack", "set_cursor"])
async def test_a_persistently_failing_ack_or_cursor_write_backs_off(
    autojump_clock: Any, failing: str
) -> None:
    """The function re-runs only after a growing back-off, not at the first delay forever."""
    calls: list[float] = []

    async def fn(workflow: Any, event: af.ConnectorEvent) -> None:
        calls.append(trio.current_time())

    inner = af.MemorySource([ev(1)])
    source = AckFails(inner) if failing == "ack" else inner
    store = FailingCursorStore() if failing == "set_cursor" else af.MemoryStore()
    workflow = sink(
        store,
        source,
        fn,
        error_backoff=timedelta(seconds=1),
        max_error_backoff=timedelta(minutes=10),
    )
    async with af.open_workflow(workflow):
        await trio.sleep(3600)
    gaps = [round(b - a) for a, b in itertools.pairwise(calls)]
    assert gaps[:6] == [1, 2, 4, 8, 16, 32]
    assert len(calls) < 20  # not one call per second
    stats = connector_stats(workflow)["feed"]
    assert stats.handled == 0
    assert stats.source_errors == len(calls)


async def test_memory_source_resumes_after_an_id_and_refuses_unknown_ones() -> None:
    source = af.MemorySource([ev(1), ev(2)])
    async with source.open("c", "e1") as receiver:
        assert (await receiver.receive()).id == "e2"
        source.append(ev(3))
        assert (await receiver.receive()).id == "e3"
    with pytest.raises(EventError, match="no event with id 'e9'"):
        async with source.open("c", "e9"):
            pass
    with pytest.raises(af.InvalidArgument, match="used twice"):
        source.append(ev(1))


async def test_connect_and_connectors_refuse_bad_arguments(autojump_clock: Any) -> None:
    pay = payments(af.MemoryStore())
    with pytest.raises(af.InvalidArgument, match="needs a built workflow"):
        af.connect("payments")  # type: ignore[arg-type]
    with pytest.raises(af.InvalidArgument, match="is not a Pay"):
        af.connect(pay, status=Order.PAID)
    with pytest.raises(af.InvalidArgument, match="not a member of Pay"):
        af.connect(pay, status=7)  # type: ignore[arg-type]
    with pytest.raises(af.BuildError, match="used twice"):
        builder = af.Builder("x", Box, Order)
        builder.add_callback(Order.PLACED, Recorder(), to=Order.PAID)  # type: ignore[arg-type]
        builder.add_connector("a", af.connect(pay), Recorder())
        builder.add_connector("a", af.connect(pay), Recorder())
        builder.build(af.MemoryStore())
    with pytest.raises(af.BuildError, match=r"connector 'feed'.* is not an af\.EventSource"):
        sink(af.MemoryStore(), "not a source", Recorder())


async def test_a_bad_source_fails_the_build_not_sibling_workflows(autojump_clock: Any) -> None:
    """Found at build time, not after ``run`` reported started (which would crash every
    workflow sharing the nursery)."""
    good = sink(af.MemoryStore(), af.MemorySource([ev(1)]), Recorder(), name="good")
    with pytest.raises(af.BuildError, match=r"is not an af\.EventSource"):
        sink(af.MemoryStore(), object(), Recorder(), name="bad")
    async with trio.open_nursery() as nursery:
        await nursery.start(good.run)
        assert good.running
        nursery.cancel_scope.cancel()


def test_connector_events_check_their_fields() -> None:
    event = ev(1)
    assert event.created_at.tzinfo is UTC
    with pytest.raises(af.InvalidArgument, match="id must be a non-empty string"):
        ev(1, id="")
    with pytest.raises(af.InvalidArgument, match="headers must map str to str"):
        ev(1, headers={"n": 1})
    with pytest.raises(af.InvalidArgument, match="aware datetime"):
        ev(1, created_at=datetime(2026, 1, 1))
    with pytest.raises(af.InvalidArgument, match="payload must be bytes"):
        ev(1, payload="text")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.id = "other"  # type: ignore[misc]
    with pytest.raises(EventError, match="no header 'nope'"):
        event.header("nope")


def test_connector_events_are_hashable_for_deduplication() -> None:
    first, again = ev(1), ev(1)
    other_headers = ev(1, headers={"run_id": "elsewhere"})
    assert hash(first) == hash(again)
    assert {first, again, ev(2)} == {first, ev(2)}
    assert first != other_headers  # headers are still compared
    assert len({first, other_headers}) == 2
    seen: dict[af.ConnectorEvent, int] = {first: 1}
    assert seen[again] == 1


def test_the_streaming_names_are_exported() -> None:
    import actorflow.streaming as streaming

    for name in (
        "EventStreamer",
        "EventSource",
        "ConnectorEvent",
        "connect",
        "MemorySource",
        "MemoryStreamer",
        "StoreLogStreamer",
        "RedisStreamer",
        "KafkaStreamer",
    ):
        assert hasattr(af, name), name
    for name in streaming.__all__:
        assert hasattr(streaming, name), name
    assert isinstance(af.MemoryStreamer(), af.EventStreamer)
    assert isinstance(af.StoreLogStreamer(af.MemoryStore()), af.EventStreamer)
    assert isinstance(af.MemorySource(), af.EventSource)
    assert isinstance(af.connect(payments(af.MemoryStore())), af.EventSource)
