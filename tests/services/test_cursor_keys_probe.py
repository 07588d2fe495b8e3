"""Durable keys built from several names (a connector's cursor, a schedule's last cron
time, a store-log consumer's cursor) stay apart when a name holds the separator ``:``:
two workflows on one store must never share one."""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta

import attrs
import trio
from trio.testing import MockClock

import actorflow as af
from actorflow.streaming import ConnectorEvent
from actorflow.testing import trio_clock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class S(enum.IntEnum):
    A = 1
    B = 2


@attrs.define
class Nothing:
    pass


def events() -> list[ConnectorEvent]:
    return [
        ConnectorEvent(id=str(n), foreign_id=f"f{n}", type="t", headers={}, created_at=T0)
        for n in range(3)
    ]


@attrs.define
class Seen:
    ids: list[str] = attrs.field(factory=list)
    all_three: trio.Event = attrs.field(factory=trio.Event)


def with_connector(
    store: af.Store, workflow: str, connector: str, seen: Seen, clock: af.Clock | None = None
) -> af.Workflow[Nothing, S]:
    builder = af.Builder(workflow, Nothing, S)

    @builder.step(S.A, to=S.B)
    async def finish(run: af.Run[Nothing, S]) -> S:
        return S.B

    async def fn(wf: object, event: ConnectorEvent) -> None:
        seen.ids.append(event.id)
        if len(seen.ids) == 3:
            seen.all_three.set()

    builder.add_connector(connector, af.MemorySource(events()), fn)
    return builder.build(store, **({"clock": clock} if clock is not None else {}))


async def test_connectors_of_two_workflows_never_share_a_cursor() -> None:
    store = af.MemoryStore()
    first, second = Seen(), Seen()
    # "connector:" + "a:b" + ":" + "c" and "connector:" + "a" + ":" + "b:c" read alike
    one = with_connector(store, "a:b", "c", first)
    two = with_connector(store, "a", "b:c", second)
    async with af.open_workflow(one):
        with trio.fail_after(10):
            await first.all_three.wait()
    async with af.open_workflow(two):
        with trio.fail_after(10):
            await second.all_three.wait()
    assert second.ids == ["0", "1", "2"]


async def test_schedules_of_two_workflows_never_share_their_cron_times(
    autojump_clock: MockClock,
) -> None:
    store = af.MemoryStore()
    clock = trio_clock(T0)
    one = with_connector(store, "s:x", "c", Seen(), clock)
    two = with_connector(store, "s", "c", Seen(), clock)
    async with af.open_workflow(one, two), trio.open_nursery() as nursery:
        nursery.start_soon(one.schedule_trigger, "f", "@hourly")
        await trio.sleep(1.5 * 3600)
        nursery.start_soon(two.schedule_trigger, "x:f", "@hourly")
        await trio.sleep(1 * 3600)
        nursery.cancel_scope.cancel()
    assert len(await one.list_runs()) == 2
    # the second schedule fires at 02:00 although "s:x"'s schedule of "f" claimed it too
    assert [r.created_at - T0 for r in await two.list_runs()] == [timedelta(hours=2)]


async def test_store_log_consumers_of_two_topics_never_share_a_cursor() -> None:
    store = af.MemoryStore()
    streamer = af.StoreLogStreamer(store)
    a = with_connector(store, "a", "c", Seen())
    ab = with_connector(store, "a:b", "c", Seen())
    await a.trigger("one")
    await ab.trigger("two")
    async with streamer.open_receiver("a:b", "c") as receiver:
        with trio.fail_after(10):
            event = await receiver.receive()
        await receiver.ack(event)
    async with streamer.open_receiver("a", "b:c") as receiver:
        with trio.fail_after(10):
            event = await receiver.receive()
    assert event.foreign_id == "one"
