"""The streamer contract: every EventStreamer must pass all of this unchanged."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import actorflow as af
from actorflow.streaming import ConnectorEvent, EventError, EventReceiver, StreamError
from tests.streaming.conftest import Harness

WAIT = 10  # seconds; a real clock: Redis talks over sockets


async def receive(receiver: EventReceiver) -> ConnectorEvent:
    with trio.fail_after(WAIT):
        return await receiver.receive()


async def receive_n(receiver: EventReceiver, n: int, *, ack: bool = False) -> list[ConnectorEvent]:
    got = []
    for _ in range(n):
        event = await receive(receiver)
        if ack:
            await receiver.ack(event)
        got.append(event)
    return got


async def nothing_waiting(receiver: EventReceiver) -> bool:
    """True if no event arrives for a little while (a negative check, kept short)."""
    with trio.move_on_after(0.3):
        await receiver.receive()
        return False
    return True


async def test_is_an_event_streamer(harness: Harness) -> None:
    assert isinstance(harness.streamer, af.EventStreamer)


async def test_events_arrive_in_order_and_intact(harness: Harness) -> None:
    sent = await harness.publish(5)
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        assert await receive_n(receiver, 5) == sent


async def test_receive_waits_for_the_next_event(harness: Harness) -> None:
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        assert await nothing_waiting(receiver)
        got: list[ConnectorEvent] = []
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                got.append(await receive(receiver))

            nursery.start_soon(consume)
            sent = await harness.publish(1)
        assert got == sent


async def test_a_cancelled_receive_loses_nothing(harness: Harness) -> None:
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        assert await nothing_waiting(receiver)  # a receive cancelled while it waits
        sent = await harness.publish(2)
        assert await receive_n(receiver, 2) == sent


async def test_acknowledged_events_are_not_delivered_again(harness: Harness) -> None:
    sent = await harness.publish(4)
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        assert await receive_n(receiver, 2, ack=True) == sent[:2]
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        assert await receive_n(receiver, 2, ack=True) == sent[2:]
        assert await nothing_waiting(receiver)


async def test_a_consumer_killed_between_receive_and_ack_gets_the_event_again(
    harness: Harness,
) -> None:
    sent = await harness.publish(3)
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        await receiver.ack(await receive(receiver))
    got: list[ConnectorEvent] = []

    async def consumer(task_status: trio.TaskStatus[None]) -> None:
        async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
            got.append(await receive(receiver))
            task_status.started()
            await trio.sleep_forever()  # killed here, before the ack

    async with trio.open_nursery() as nursery:
        await nursery.start(consumer)
        nursery.cancel_scope.cancel()
    assert got == [sent[1]]
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        assert await receive_n(receiver, 2, ack=True) == sent[1:]
        assert await nothing_waiting(receiver)


async def test_unacknowledged_events_come_back_in_order(harness: Harness) -> None:
    sent = await harness.publish(4)
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        assert await receive_n(receiver, 3) == sent[:3]
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        assert await receive_n(receiver, 4) == sent


async def test_consumer_names_have_their_own_cursors(harness: Harness) -> None:
    sent = await harness.publish(3)
    async with harness.streamer.open_receiver(harness.topic, "a") as a:
        assert await receive_n(a, 3, ack=True) == sent
    async with harness.streamer.open_receiver(harness.topic, "b") as b:
        assert await receive_n(b, 3, ack=True) == sent


async def test_topics_are_separate(harness: Harness) -> None:
    other = harness.topic + "-other"
    mine = await harness.publish(2)
    theirs = await harness.publish(2, topic=other)
    async with harness.streamer.open_receiver(other, "c") as receiver:
        assert await receive_n(receiver, 2) == theirs
        assert await nothing_waiting(receiver)
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        assert await receive_n(receiver, 2) == mine


async def test_start_latest_skips_what_was_sent_before_the_first_open(harness: Harness) -> None:
    await harness.publish(2)
    async with harness.streamer.open_receiver(harness.topic, "late", start="latest") as receiver:
        assert await nothing_waiting(receiver)
    # The cursor was made at the first open: what is sent after it is not missed.
    sent = await harness.publish(2)
    async with harness.streamer.open_receiver(harness.topic, "late", start="latest") as receiver:
        assert await receive_n(receiver, 2) == sent


async def test_start_only_matters_for_a_new_consumer_name(harness: Harness) -> None:
    sent = await harness.publish(3)
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        await receiver.ack(await receive(receiver))
    async with harness.streamer.open_receiver(harness.topic, "c", start="latest") as receiver:
        assert await receive_n(receiver, 2) == sent[1:]


async def test_many_events_in_order(harness: Harness) -> None:
    sent = await harness.publish(1100)
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        got = []
        for _ in range(len(sent)):
            got.append(await receive(receiver))
            if len(got) % 100 == 0:
                await receiver.ack(got[-1])
        assert [e.id for e in got] == [e.id for e in sent]
        assert got == sent


async def test_acknowledging_a_foreign_event_is_an_error(harness: Harness) -> None:
    sent = await harness.publish(1)
    stranger = ConnectorEvent(id="nope", foreign_id="f", type="1")
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        with pytest.raises(EventError, match="not received"):
            await receiver.ack(stranger)
        event = await receive(receiver)
        assert event == sent[0]
        await receiver.ack(event)
        with pytest.raises(EventError, match="acknowledged already"):
            await receiver.ack(event)


async def test_bad_arguments_are_refused(harness: Harness) -> None:
    with pytest.raises(af.ActorflowError, match="start must be"):
        async with harness.streamer.open_receiver(harness.topic, "c", start="middle"):  # type: ignore[arg-type]
            pass
    with pytest.raises(af.ActorflowError, match="consumer must be"):
        async with harness.streamer.open_receiver(harness.topic, ""):
            pass
    with pytest.raises(af.ActorflowError, match="topic must be"):
        async with harness.streamer.open_sender(""):
            pass
    async with harness.streamer.open_sender(harness.topic) as sender:
        with pytest.raises(af.ActorflowError, match="only ConnectorEvents"):
            await sender.send_many([{"id": "1"}])  # type: ignore[list-item]


async def test_a_sender_or_receiver_used_after_its_block_is_refused(harness: Harness) -> None:
    """Once its ``async with`` block has ended, a receiver's receive and ack and a sender's
    sends are a StreamError saying so: before, the in-memory and store-log receivers
    waited for ever, Redis and Kafka raised their client library's RuntimeError, and acks
    and sends were taken silently. A receive still waiting in a task outside the block
    when it ends gets the same error."""
    await harness.publish(1)
    async with harness.streamer.open_receiver(harness.topic, "c") as receiver:
        event = await receive(receiver)
    with pytest.raises(StreamError, match="closed"):
        await receive(receiver)
    with pytest.raises(StreamError, match="closed"):
        await receiver.ack(event)
    async with harness.streamer.open_receiver(harness.topic, "c") as again:
        assert await receive(again) == event  # the refused ack acknowledged nothing
    async with harness.streamer.open_sender(harness.topic) as sender:
        pass
    with pytest.raises(StreamError, match="closed"):
        await sender.send(event)
    with pytest.raises(StreamError, match="closed"):
        await sender.send_many([event])

    refused: list[BaseException] = []
    async with (
        trio.open_nursery() as nursery,
        harness.streamer.open_receiver(harness.topic, "other") as waiting,
    ):
        await receive(waiting)  # the one event; the next receive waits

        async def wait_outside() -> None:
            with pytest.raises(StreamError, match="closed") as caught:
                with trio.fail_after(WAIT):
                    await waiting.receive()
            refused.append(caught.value)

        nursery.start_soon(wait_outside)
        await trio.testing.wait_all_tasks_blocked()  # it waits in receive()
    assert len(refused) == 1
