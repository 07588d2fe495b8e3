"""A run actor's mailbox alone: taking, waiting with a deadline, closing."""

from __future__ import annotations

import pytest
import trio

from actorflow._model.record import RawRecord, Timer
from actorflow._runtime.mailbox import MAILBOX_SIZE, WAKE, Ask, Mailbox, Reply, Stopped


async def _noop(raw: RawRecord) -> tuple[RawRecord | None, list[Timer] | None, object]:
    return None, None, None


def test_an_empty_mailbox_makes_no_channel() -> None:
    mailbox = Mailbox()
    assert mailbox.take() is None
    assert not mailbox.has_waiting()
    assert mailbox._channel is None  # most actors never get a message: nothing allocated


def test_wakes_are_taken_in_order_and_a_full_mailbox_drops_them() -> None:
    mailbox = Mailbox()
    ask = Ask(_noop, Reply())
    mailbox.send.send_nowait(ask)
    for _ in range(MAILBOX_SIZE + 3):
        mailbox.post_wake()  # full after MAILBOX_SIZE: the actor looks anyway
    assert mailbox.take() is ask
    assert mailbox.take() is WAKE
    taken = 1
    while mailbox.take() is not None:
        taken += 1
    assert taken == MAILBOX_SIZE - 1


async def test_closing_answers_waiting_asks_with_stopped() -> None:
    mailbox = Mailbox()
    reply = Reply()
    mailbox.send.send_nowait(Ask(_noop, reply))
    mailbox.close()
    with pytest.raises(Stopped):
        await reply.wait()
    with pytest.raises(trio.BrokenResourceError):
        mailbox.send.send_nowait(WAKE)
    mailbox.post_wake()  # a wake for a stopped actor is dropped quietly


async def test_a_mailbox_closed_before_its_first_message_refuses_it() -> None:
    mailbox = Mailbox()
    mailbox.close()
    with pytest.raises(trio.BrokenResourceError):
        await mailbox.send.send(WAKE)


async def test_receive_until_returns_the_message_or_none_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox = Mailbox()
    start = trio.current_time()
    assert await mailbox.receive_until(start + 5) is None
    assert trio.current_time() == pytest.approx(start + 5)

    async def later() -> None:
        await trio.sleep(1)
        mailbox.post_wake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        assert await mailbox.receive_until(trio.current_time() + 60) is WAKE


async def test_interrupt_ends_a_wait(autojump_clock: trio.testing.MockClock) -> None:
    mailbox = Mailbox()
    mailbox.interrupt()  # nothing waits: nothing happens
    start = trio.current_time()

    async def interrupt_soon() -> None:
        await trio.sleep(1)
        mailbox.interrupt()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(interrupt_soon)
        assert await mailbox.receive_until(start + 3600) is None
    assert trio.current_time() == pytest.approx(start + 1)


async def test_the_first_answer_of_a_reply_wins() -> None:
    reply = Reply()
    reply.set(1)
    reply.set(error=Stopped("late"))
    assert await reply.wait() == 1
    failed = Reply()
    failed.set(error=ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        await failed.wait()
