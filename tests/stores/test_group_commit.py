"""The group-commit engine both durable stores use (actorflow.stores.group_commit)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actorflow.stores.group_commit import INTERRUPTED, ORPHANED, GroupCommit, Write


class Item(Write[str]):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class Failed(Exception):
    pass


def fail(write: Item, reason: str) -> Failed:
    return Failed(f"{write.name}: {reason}")


class Sender:
    """A send that records its batches and may be held until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.hold: trio.Event | None = None
        self.error_for: set[str] = set()
        self.raise_: BaseException | None = None

    async def send(self, batch: list[Item]) -> None:
        self.batches.append([w.name for w in batch])
        if self.hold is not None:
            await self.hold.wait()
        if self.raise_ is not None:
            raise self.raise_
        for write in batch:
            if write.name in self.error_for:
                write.resolve(None, Failed(write.name))
            else:
                write.resolve(write.name.upper(), None)


def engine(sender: Sender, *, leaders: int = 1, max_batch: int = 100) -> GroupCommit[Item]:
    return GroupCommit(sender.send, leaders=leaders, max_batch=max_batch, fail=fail)


async def test_writes_of_one_moment_share_batches_of_at_most_max() -> None:
    sender = Sender()
    group = engine(sender, max_batch=4)
    results: dict[str, Any] = {}

    async def write(name: str) -> None:
        results[name] = await group.write(Item(name))

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(write, f"w{i}")
    assert [len(b) for b in sender.batches] == [4, 4, 2]
    assert sorted(n for b in sender.batches for n in b) == sorted(results)
    assert results == {f"w{i}": f"W{i}" for i in range(10)}
    assert group.idle.is_set() and group.leaders == 0 and not group.queue


async def test_each_write_gets_its_own_error() -> None:
    sender = Sender()
    sender.error_for = {"b"}
    group = engine(sender)
    outcomes: dict[str, object] = {}

    async def write(name: str) -> None:
        try:
            outcomes[name] = await group.write(Item(name))
        except Failed as exc:
            outcomes[name] = f"failed: {exc}"

    async with trio.open_nursery() as nursery:
        for name in "abc":
            nursery.start_soon(write, name)
    assert [sorted(b) for b in sender.batches] == [["a", "b", "c"]]
    assert outcomes == {"a": "A", "b": "failed: b", "c": "C"}


async def test_cancelled_while_queued_is_never_sent_in_flight_gets_its_outcome() -> None:
    sender = Sender()
    sender.hold = trio.Event()
    group = engine(sender)
    scopes: dict[str, trio.CancelScope] = {}
    outcome: dict[str, str] = {}

    async def write(name: str) -> None:
        with trio.CancelScope() as scope:
            scopes[name] = scope
            outcome[name] = await group.write(Item(name))
        if scope.cancelled_caught and name not in outcome:
            outcome[name] = "cancelled"

    async with trio.open_nursery() as nursery:
        try:
            nursery.start_soon(write, "a")
            await trio.testing.wait_all_tasks_blocked()  # a's batch is in flight, held
            nursery.start_soon(write, "b")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(write, "c")
            await trio.testing.wait_all_tasks_blocked()
            assert [w.name for w in group.queue] == ["b", "c"]
            scopes["a"].cancel()
            scopes["b"].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == {"b": "cancelled"}
        finally:
            sender.hold.set()  # a failed check must not leave the batch held
    assert outcome == {"a": "A", "b": "cancelled", "c": "C"}
    assert sender.batches == [["a"], ["c"]]  # c was handed the leading


async def test_up_to_n_leaders_send_at_once() -> None:
    sender = Sender()
    sender.hold = trio.Event()
    group = engine(sender, leaders=2)
    async with trio.open_nursery() as nursery:
        try:
            for name in "abc":
                nursery.start_soon(group.write, Item(name))
                await trio.testing.wait_all_tasks_blocked()
            assert sender.batches == [["a"], ["b"]]  # two in flight, c queued
            assert group.leaders == 2 and not group.idle.is_set()
        finally:
            sender.hold.set()
    assert sender.batches == [["a"], ["b"], ["c"]]
    assert group.idle.is_set()


async def test_unanswered_writes_fail_and_a_dead_leader_orphans_the_queue() -> None:
    class Boom(BaseException):
        pass

    sender = Sender()
    sender.hold = trio.Event()
    sender.raise_ = Boom()
    group = engine(sender, max_batch=1)
    a, b = Item("a"), Item("b")
    outcome: dict[str, str] = {}

    async def write(item: Item) -> None:
        try:
            await group.write(item)
        except Failed as exc:
            outcome[item.name] = str(exc)

    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, a)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(write, b)
            await trio.testing.wait_all_tasks_blocked()
            sender.hold.set()
    assert caught.group_contains(Boom)
    assert str(a.error) == f"a: {INTERRUPTED}"  # its batch was sent, never answered
    assert outcome == {"b": f"b: {ORPHANED}"}  # queued, nobody left to send it
    assert group.idle.is_set() and not group.queue
