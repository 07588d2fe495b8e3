"""Outbox relay: publish every stored transition to the workflow's EventStreamer.

The store's event log is the outbox: each commit writes its entry atomically with the
record. The relay follows the log after a durable cursor (``relay:<workflow>`` in the
store), sends each batch to the topic named after the workflow, and moves the cursor
only after the streamer accepted the batch. A crash or a streamer failure re-publishes
from the cursor, so delivery is at-least-once and in commit order (hence in order per
run); nothing is skipped.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from actorflow._model.errors import InvalidArgument
from actorflow._model.process import ProcessState
from actorflow._runtime.observe import Process
from actorflow._runtime.user_code import user_error
from actorflow._services.context import ServiceContext
from actorflow.streaming._stats import relay_stats
from actorflow.streaming._store_log import (
    LogFollower,
    StoreLogStreamer,
    check_relay_streamer,
    parse_cursor,
    transition_event,
)

log = logging.getLogger(__name__)

BATCH = 500
PROCESS = "outbox-consumer"
"""The relay's process name (luno/workflow's outbox consumer)."""


def cursor_name(workflow_name: str) -> str:
    """The store cursor of a workflow's relay."""
    return f"relay:{workflow_name}"


async def run_relay(ctx: ServiceContext, streamer: Any) -> None:
    """Publish the workflow's event log to ``streamer`` until cancelled.

    Raises:
        InvalidArgument: ``streamer`` is not an ``af.EventStreamer``, or is a
            StoreLogStreamer over another store (whose sender would drop every event).
    """
    problem = check_relay_streamer(streamer, ctx.store)
    if problem is not None:  # Builder.build refuses these already
        raise InvalidArgument(f"workflow {ctx.name!r}: {problem}")
    process = ctx.service(PROCESS, 0.0)
    process.state = ProcessState.RUNNING
    try:
        if isinstance(streamer, StoreLogStreamer):
            await trio.sleep_forever()  # the store's log is the stream: nothing to copy
        await _relay(ctx, streamer, process)
    finally:
        process.state = ProcessState.STOPPED


async def _relay(ctx: ServiceContext, streamer: Any, process: Process) -> None:
    stats = relay_stats(ctx.handle)
    store = ctx.store
    name = cursor_name(ctx.name)
    options = ctx.default_options
    poll = ctx.poll_interval
    failures = 0
    while True:
        try:
            follower = LogFollower(
                store,
                ctx.name,
                parse_cursor(await store.get_cursor(name), name),
                batch=BATCH,
                **({"poll_interval": poll} if poll else {}),
            )
            stats.cursor = follower.after
            async with streamer.open_sender(ctx.name) as sender:
                while True:
                    events = await follower.next_batch()
                    if events:
                        lag = (ctx.clock.now() - events[0].created_at).total_seconds()
                        process.took_up(ctx.observer, ctx.name, lag, {"workflow_name": ctx.name})
                    await sender.send_many([transition_event(event) for event in events])
                    await store.set_cursor(name, str(follower.after))
                    failures = 0
                    process.state = ProcessState.RUNNING
                    stats.published += len(events)
                    stats.batches += 1
                    stats.cursor = follower.after
        except BaseException as caught:
            exc = user_error(caught, f"streamer {streamer!r}")
            failures += 1
            stats.errors += 1
            stats.last_error = ctx.failed(process, exc)
            delay = options.retry_seconds(failures)
            log.warning(
                "workflow %r: relay to %r failed (%d in a row), re-publishing from event %d "
                "in %.3g s: %s",
                ctx.name,
                streamer,
                failures,
                stats.cursor,
                delay,
                stats.last_error,
                extra={"workflow_name": ctx.name, "process_name": PROCESS, "error_count": failures},
            )
            await trio.sleep(delay)
