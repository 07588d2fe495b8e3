"""An EventSource over one topic of an EventStreamer."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import final

from actorflow._model.errors import InvalidArgument
from actorflow.streaming._protocol import (
    EventReceiver,
    EventStreamer,
    Start,
    check_start,
    check_topic,
)


@final
class StreamSource:
    """Consume ``topic`` of ``streamer`` from a connector.

    The streamer keeps the cursor of each consumer name (the connector passes its own
    name), so the connector's ``after`` is not needed as a position. It still tells that
    the name is not new: once the connector has handled an event, ``start="latest"`` no
    longer applies, so a cursor the platform lost (a stream deleted, Redis flushed, a
    broker emptied) starts again at the oldest event there, and the events that arrived
    since are delivered rather than skipped.
    """

    def __init__(self, streamer: EventStreamer, topic: str, *, start: Start = "earliest") -> None:
        if not isinstance(streamer, EventStreamer):
            raise InvalidArgument(f"StreamSource needs an EventStreamer, not {streamer!r}")
        self.streamer = streamer
        self.topic = check_topic(topic)
        self.start = check_start(start)

    def __repr__(self) -> str:
        return f"StreamSource({self.streamer!r}, {self.topic!r})"

    def open(self, consumer: str, after: str | None) -> AbstractAsyncContextManager[EventReceiver]:
        """The streamer's receiver of the topic for ``consumer``."""
        start: Start = "earliest" if after is not None else self.start
        return self.streamer.open_receiver(self.topic, consumer, start=start)

    async def check_reachable(self) -> None:
        """Check that the streamer's platform answers (when the streamer can tell)."""
        await check_reachable([self.streamer])


async def check_reachable(streams: Iterable[object]) -> None:
    """Call ``check_reachable()`` on each streamer or source that has one (Kafka waits a
    bounded time for its cluster), so ``Workflow.run`` fails to start with a clear
    StreamError instead of retrying a wrong address in the background for ever."""
    for stream in streams:
        check = getattr(stream, "check_reachable", None)
        if check is not None:
            await check()
