"""Redis Streams beyond the contract: claims, dead letters, kills, outages (a real server)."""

from __future__ import annotations

import enum
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
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
    StreamSource,
    connector_stats,
    relay_stats,
)
from actorflow.streaming._redis import _RedisReceiver
from tests.streaming.conftest import REDIS_URL, drop_redis_keys, event

WAIT = 10
redis = pytest.mark.redis


async def receive(receiver: EventReceiver) -> ConnectorEvent:
    with trio.fail_after(WAIT):
        return await receiver.receive()


@asynccontextmanager
async def raw_client(url: str | None = None) -> AsyncIterator[Any]:
    import coredis

    async with coredis.Redis.from_url(url or REDIS_URL or "") as client:
        yield client


@pytest.fixture
async def streamer(redis_prefix: str) -> AsyncIterator[af.RedisStreamer]:
    assert REDIS_URL
    try:
        yield af.RedisStreamer(
            REDIS_URL,
            prefix=redis_prefix,
            block=timedelta(milliseconds=100),
            claim_after=timedelta(milliseconds=200),
        )
    finally:
        await drop_redis_keys(redis_prefix)


class LogWaiter(logging.Handler):
    """Sets a trio.Event when a matching record is logged (no polling)."""

    def __init__(self, pattern: str) -> None:
        super().__init__(logging.DEBUG)
        self.pattern = re.compile(pattern)
        self.matched = trio.Event()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.pattern.search(record.getMessage()):
            self.count += 1
            self.matched.set()


@contextmanager
def waiting_for_log(pattern: str) -> Iterator[LogWaiter]:
    waiter = LogWaiter(pattern)
    logger = logging.getLogger("actorflow")
    logger.addHandler(waiter)
    try:
        yield waiter
    finally:
        logger.removeHandler(waiter)


@redis
async def test_a_dead_members_entries_are_claimed_by_a_live_one(
    streamer: af.RedisStreamer, caplog: pytest.LogCaptureFixture
) -> None:
    async with streamer.open_sender("t") as sender:
        sent = [event(n, "t") for n in range(2)]
        await sender.send_many(sent)
    with trio.CancelScope() as dead:
        async with streamer.open_receiver("t", "group", member="a") as a:
            assert await receive(a) == sent[0]
            dead.cancel()  # member a dies holding two entries (one read ahead)
    async with streamer.open_receiver("t", "group", member="b") as b:
        got = [await receive(b), await receive(b)]
        for item in got:
            await b.ack(item)
    assert got == sent
    assert "member b claimed 2 entries" in caplog.text


@redis
async def test_unreadable_entries_go_to_the_dead_letter_stream(
    streamer: af.RedisStreamer, caplog: pytest.LogCaptureFixture
) -> None:
    key = streamer.key("t")
    good = event(1, "t")
    async with raw_client() as client:
        await client.xadd(key, {b"foo": b"bar"})
        bad_date = {b"id": b"x", b"foreign_id": b"f", b"type": b"t", b"created_at": b"?"}
        await client.xadd(key, bad_date)
    async with streamer.open_sender("t") as sender:
        await sender.send(good)
    async with streamer.open_receiver("t", "c") as receiver:
        assert await receive(receiver) == good
        assert receiver.dead_letters == 2  # type: ignore[attr-defined]
    async with raw_client() as client:
        dead = await client.xrange(key + b":dead")
        assert len(dead) == 2
        error = dead[0].field_values[b"error"]
        assert b"lacks the field(s) id, foreign_id, type, created_at" in error
        assert dead[0].field_values[b"f:foo"] == b"bar"
        assert b"is not a valid event" in dead[1].field_values[b"error"]
        pending = await client.xpending(key, "c")
        assert pending.pending == 1  # only the good one, not yet acknowledged
    assert "moved it to" in caplog.text


@redis
async def test_pending_entries_deleted_before_their_ack_are_skipped_loudly(
    streamer: af.RedisStreamer, caplog: pytest.LogCaptureFixture
) -> None:
    sent = [event(n, "t") for n in range(3)]
    async with streamer.open_sender("t") as sender:
        await sender.send_many(sent)
    ids = []
    async with raw_client() as client:
        ids = [e.identifier for e in await client.xrange(streamer.key("t"))]
    async with streamer.open_receiver("t", "c") as receiver:
        assert [await receive(receiver) for _ in range(2)] == sent[:2]
    async with raw_client() as client:
        await client.xdel(streamer.key("t"), [ids[0]])  # trimmed while pending
    async with streamer.open_receiver("t", "c") as receiver:
        assert [await receive(receiver) for _ in range(2)] == sent[1:]
    assert "1 pending entries were deleted (trimmed) before they were acknowledged" in caplog.text


def _failing_once(monkeypatch: pytest.MonkeyPatch, how: str) -> list[int]:
    """Make the first dead-lettering fail (StreamError) or hang until cancelled."""
    original = _RedisReceiver._dead_letter
    calls: list[int] = []

    async def flaky(self: _RedisReceiver, *args: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            if how == "error":
                raise StreamError("redis hiccup while dead-lettering")
            await trio.sleep_forever()
        await original(self, *args)

    monkeypatch.setattr(_RedisReceiver, "_dead_letter", flaky)
    return calls


@redis
@pytest.mark.parametrize("how", ["error", "cancelled"])
@pytest.mark.parametrize("path", ["new", "pending"])
async def test_a_batch_interrupted_while_dead_lettering_strands_nothing(
    streamer: af.RedisStreamer, monkeypatch: pytest.MonkeyPatch, how: str, path: str
) -> None:
    """A dead letter that fails (or is cancelled) half-way through a batch: the rest of the
    batch stays pending for this member, and this very receiver delivers it next (without
    claims, which would hide the problem by taking the member's own entries after a while).
    """
    streamer = af.RedisStreamer(
        streamer.url, prefix=streamer.prefix, block=timedelta(milliseconds=100), claim_after=None
    )
    key = streamer.key("t")
    async with streamer.open_receiver("t", "g", member="m"):
        pass  # the group exists from the first entry on
    async with raw_client() as client:
        await client.xadd(key, {b"garbage": b"1"})
    sent = [event(n, "t") for n in range(3)]
    async with streamer.open_sender("t") as sender:
        await sender.send_many(sent)
    if path == "pending":  # the member read them before and never acknowledged
        async with raw_client() as client:
            await client.xreadgroup("g", "m", {key: ">"}, count=10)
    calls = _failing_once(monkeypatch, how)
    async with streamer.open_receiver("t", "g", member="m") as receiver:
        if how == "error":
            with pytest.raises(StreamError, match="hiccup"):
                await receive(receiver)
        else:
            with trio.move_on_after(0.2):
                await receiver.receive()
                pytest.fail("the dead letter should hang")
        got = [await receive(receiver) for _ in range(3)]
        assert got == sent
        assert receiver.dead_letters == 1  # type: ignore[attr-defined]
        for item in got:
            await receiver.ack(item)
    assert len(calls) == 2
    async with raw_client() as client:
        assert (await client.xpending(key, "g")).pending == 0


@redis
async def test_claimed_entries_deleted_from_the_stream_are_acknowledged_and_skipped(
    streamer: af.RedisStreamer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis 6.2 keeps a deleted entry in the pending list and answers XAUTOCLAIM with nil
    for it (which coredis cannot parse); the claim must neither fail nor lose the others."""
    key = streamer.key("t")
    sent = [event(n, "t") for n in range(3)]
    async with streamer.open_receiver("t", "g", member="live"):
        pass
    async with streamer.open_sender("t") as sender:
        await sender.send_many(sent)
    async with raw_client() as client:
        await client.xreadgroup("g", "dead", {key: ">"}, count=10)  # "dead" holds all three
        ids = [entry.identifier for entry in await client.xrange(key)]
    calls: list[dict[str, Any]] = []

    async def like_redis_6_2(
        self: Any, key_: bytes, group: str, consumer: str, min_idle: Any, start: Any, **kw: Any
    ) -> Any:
        """Move every entry of "dead" to the caller, delete the middle one from the stream,
        and answer as Redis 6.2 does: the deleted entry stays pending, and is nil in a
        full reply."""
        calls.append(kw)
        if len(calls) > 1:
            return (b"0-0", (), ())
        async with raw_client() as client:
            await client.xclaim(key_, group, consumer, 0, ids, justid=True)
            await client.xdel(key_, [ids[1]])
        if kw.get("justid"):
            return (b"0-0", tuple(ids), ())
        return (b"0-0", (None,), ())  # what a full reply would hold, at best

    import coredis

    monkeypatch.setattr(coredis.Redis, "xautoclaim", like_redis_6_2)
    fast = af.RedisStreamer(
        streamer.url,
        prefix=streamer.prefix,
        block=timedelta(milliseconds=50),
        claim_after=timedelta(0),
    )
    async with fast.open_receiver("t", "g", member="live") as receiver:
        got = [await receive(receiver), await receive(receiver)]
        for item in got:
            await receiver.ack(item)
    assert got == [sent[0], sent[2]]
    async with raw_client() as client:
        assert (await client.xpending(key, "g")).pending == 0  # the deleted one is acked
    assert "1 pending entries were deleted (trimmed)" in caplog.text


@redis
async def test_claimed_entries_behind_a_full_page_of_unacknowledged_ones_are_delivered(
    streamer: af.RedisStreamer,
) -> None:
    """Claimed entries are read from this member's pending list, which starts with the
    entries it holds unacknowledged: the read pages past them, however many."""
    busy = af.RedisStreamer(
        streamer.url,
        prefix=streamer.prefix,
        block=timedelta(milliseconds=50),
        claim_after=timedelta(0),
        batch=2,
    )
    key = busy.key("t")
    sent = [event(n, "t") for n in range(6)]
    async with busy.open_receiver("t", "g", member="live") as receiver:
        async with busy.open_sender("t") as sender:
            await sender.send_many(sent[:4])
        held = [await receive(receiver) for _ in range(4)]  # two pages, not acknowledged
        async with busy.open_sender("t") as sender:
            await sender.send_many(sent[4:])
        async with raw_client() as client:
            await client.xreadgroup("g", "dead", {key: ">"}, count=10)
        claimed = [await receive(receiver), await receive(receiver)]
        for item in held + claimed:
            await receiver.ack(item)
    assert held + claimed == sent


CONSUMER_SCRIPT = """
import sys, trio, actorflow as af
from datetime import timedelta

async def main():
    streamer = af.RedisStreamer(sys.argv[1], prefix=sys.argv[2], block=timedelta(milliseconds=100))
    async with streamer.open_receiver("t", "c") as receiver:
        event = await receiver.receive()
        print(event.id, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


@redis
async def test_a_consumer_process_killed_between_receive_and_ack_gets_it_again(
    streamer: af.RedisStreamer,
) -> None:
    sent = [event(n, "t") for n in range(2)]
    async with streamer.open_sender("t") as sender:
        await sender.send_many(sent)
    assert REDIS_URL
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CONSUMER_SCRIPT, REDIS_URL, streamer.prefix],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        output = b""
        with trio.fail_after(WAIT * 2):
            while b"\n" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, "the consumer process exited early"
                output += chunk
    finally:
        process.send_signal(signal.SIGKILL)  # between receive and ack
        await process.wait()
    assert output.decode().strip() == sent[0].id
    async with streamer.open_receiver("t", "c") as receiver:
        again = await receive(receiver)
        assert again == sent[0]
        await receiver.ack(again)
        assert await receive(receiver) == sent[1]


async def test_an_unreachable_server_raises_stream_error_not_a_group() -> None:
    port = _free_port()
    streamer = af.RedisStreamer(f"redis://:secret@127.0.0.1:{port}/0")
    with pytest.raises(StreamError, match=rf"Redis at redis://:\*\*\*@127.0.0.1:{port}/0"):
        async with streamer.open_receiver("t", "c"):
            pass
    with pytest.raises(StreamError, match="XADD failed"):
        async with streamer.open_sender("t") as sender:
            await sender.send(event(1, "t"))
    assert "secret" not in repr(streamer)


async def test_without_coredis_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "coredis", None)
    with pytest.raises(af.ActorflowError, match=re.escape("pip install actorflow[redis]")):
        af.RedisStreamer("redis://127.0.0.1:6379/0")


async def test_bad_options_are_refused() -> None:
    with pytest.raises(af.InvalidArgument, match="redis:// URL"):
        af.RedisStreamer("")
    with pytest.raises(af.InvalidArgument, match="block must be"):
        af.RedisStreamer("redis://x", block=timedelta(0))
    with pytest.raises(af.InvalidArgument, match="batch must be"):
        af.RedisStreamer("redis://x", batch=0)


# -- Redis going down mid-stream --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.define
class PrivateRedis:
    """A redis-server of our own that persists every write (so a restart loses nothing)."""

    directory: Path
    port: int = attrs.field(factory=_free_port)
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = await trio.lowlevel.open_process(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with trio.fail_after(WAIT):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.02)  # the server is starting: nothing to wait on
                    continue
                await stream.aclose()
                return

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()


class Step(enum.IntEnum):
    A = 1
    B = 2


@attrs.define
class Nothing:
    pass


@pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed: Redis going down mid-stream was NOT tested",
)
async def test_redis_down_mid_stream_backs_off_and_loses_nothing(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    await server.start()
    try:
        await _down_mid_stream(server)
    finally:
        await server.kill()


async def _down_mid_stream(server: PrivateRedis) -> None:
    prefix = f"down:{uuid.uuid4().hex[:8]}:"
    streamer = af.RedisStreamer(
        server.url, prefix=prefix, block=timedelta(milliseconds=100), claim_after=None
    )
    store = af.MemoryStore()
    backoff = {
        "error_backoff": timedelta(milliseconds=50),
        "max_error_backoff": timedelta(milliseconds=500),
    }

    producer_builder = af.Builder("producer", Nothing, Step)

    @producer_builder.step(Step.A, to=Step.B)
    async def a(run: af.Run[Nothing, Step]) -> Step:
        return Step.B

    producer = producer_builder.build(store, streamer=streamer, default_options=backoff)

    seen: list[ConnectorEvent] = []
    progressed = trio.Event()

    async def record(workflow: Any, event: ConnectorEvent) -> None:
        nonlocal progressed
        seen.append(event)
        progressed.set()
        progressed = trio.Event()

    async def b(run: af.Run[Nothing, Step], payload: bytes) -> Step:
        return Step.B

    consumer_builder = af.Builder("consumer", Nothing, Step)
    consumer_builder.add_callback(Step.A, b, to=Step.B)
    source = StreamSource(streamer, "producer")
    consumer_builder.add_connector("producer", source, record, **backoff)
    consumer = consumer_builder.build(store)

    async def wait_until_seen(count: int) -> None:
        with trio.fail_after(WAIT * 3):
            while len({e.id for e in seen}) < count:
                await progressed.wait()

    async with af.open_workflow(producer, consumer):
        for i in range(5):
            await producer.trigger(f"before-{i}")
        await wait_until_seen(10)
        with (
            waiting_for_log(r"relay to .* failed") as relay_failed,
            waiting_for_log(r"connector 'producer': source .* failed") as source_failed,
        ):
            await server.kill()
            for i in range(5):
                await producer.trigger(f"during-{i}")  # stored; Redis is down
            with trio.fail_after(WAIT):
                await relay_failed.matched.wait()
                await source_failed.matched.wait()
            await server.start()
            await wait_until_seen(20)
        relay = relay_stats(producer)
        connector = connector_stats(consumer)["producer"]
        assert relay.errors >= 1 and "StreamError" in relay.last_error
        assert connector.source_errors >= 1
        # Backed off: a handful of attempts while down, not a busy loop.
        assert relay_failed.count < 50 and source_failed.count < 50
    expected = [str(e.id) for e in await store.read_events(0, 1000, "producer")]
    assert list(dict.fromkeys(e.id for e in seen)) == expected  # all, in order at first sight
    async with raw_client(server.url) as client:
        entries = await client.xrange(streamer.key("producer"))
    firsts = list(dict.fromkeys(e.field_values[b"id"].decode() for e in entries))
    assert firsts == expected


async def test_an_asyncio_only_coredis_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import coredis

    monkeypatch.setattr(coredis, "__version__", "4.16.0")
    with pytest.raises(af.ActorflowError, match="coredis >= 6"):
        af.RedisStreamer("redis://127.0.0.1:6379/0")
