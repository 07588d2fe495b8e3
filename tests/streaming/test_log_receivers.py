"""Log-based receivers (memory, store log, MemorySource): cumulative acknowledgements."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import pytest

import actorflow as af
from actorflow.streaming import ConnectorEvent, EventError, EventReceiver
from tests.streaming.conftest import T0, _committing, event

N = 1000
EVERY = 100


Opener = Callable[[], AbstractAsyncContextManager[EventReceiver]]


async def _memory(topic: str) -> Opener:
    streamer = af.MemoryStreamer()
    async with streamer.open_sender(topic) as sender:
        await sender.send_many([event(n, topic) for n in range(N)])
    return lambda: streamer.open_receiver(topic, "c")


async def _store_log(topic: str) -> Opener:
    store = af.MemoryStore()
    await _committing(store)(topic, N)
    return lambda: af.StoreLogStreamer(store).open_receiver(topic, "c")


async def _source(topic: str) -> Opener:
    source = af.MemorySource(
        ConnectorEvent(id=str(n), foreign_id="f", type="t", created_at=T0) for n in range(N)
    )
    return lambda: source.open("c", None)


KINDS: dict[str, Callable[[str], Awaitable[Opener]]] = {
    "memory": _memory,
    "store_log": _store_log,
    "memory_source": _source,
}


async def opener(kind: str) -> Opener:
    return await KINDS[kind]("topic")


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_a_cumulative_ack_forgets_every_event_received_before_it(kind: str) -> None:
    open_receiver = await opener(kind)
    async with open_receiver() as receiver:
        got = []
        for n in range(N):
            got.append(await receiver.receive())
            if n % EVERY == EVERY - 1:
                await receiver.ack(got[-1])
        assert len(receiver._inflight) == 0  # type: ignore[attr-defined]  # not N - N / EVERY
        with pytest.raises(EventError, match="acknowledged already"):
            await receiver.ack(got[EVERY // 2])  # covered by the ack of got[EVERY - 1]


@pytest.mark.parametrize("kind", ["memory", "store_log"])
async def test_cumulative_acks_move_the_cursor_past_everything_before(kind: str) -> None:
    open_receiver = await opener(kind)
    async with open_receiver() as receiver:
        got = [await receiver.receive() for _ in range(2 * EVERY + 5)]
        await receiver.ack(got[EVERY - 1])
        await receiver.ack(got[2 * EVERY - 1])
        assert len(receiver._inflight) == 5  # type: ignore[attr-defined]
    async with open_receiver() as receiver:
        assert await receiver.receive() == got[2 * EVERY]
