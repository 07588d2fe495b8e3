"""Connectors: consume an EventSource with a durable cursor and call ``fn(workflow, event)``.

Each connector is one task in the workflow's services nursery. Its cursor lives in the
workflow's store as ``connector:<workflow>:<connector>`` (the id of the last event
handled). An event is acknowledged only after the function returned, so delivery is
at-least-once: a crash or stop in between hands the same event over again. A failing
function is retried with the connector's back-off (``error_backoff`` doubling up to
``max_error_backoff``), never skipped; a failing source is reopened the same way, and
so is a failing ``ack`` or cursor write: the back-off keeps growing until an event has
been handled, acknowledged and its cursor stored.

A connector built with ``max_concurrency=N`` (N > 1) is N such consumers, as luno's
ParallelCount: shard ``i`` of N reads the whole source with a cursor of its own
(``connector-shard:<workflow>:<connector>:<i>-of-<N>``) and handles, in order, the events
whose shard key falls to it (the foreign id, or the event id when there is none: a
number is its own key, other text its CRC-32), acknowledging the others unhandled. Events
of one foreign id stay in order; different shards run at once.
"""

from __future__ import annotations

import inspect
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from actorflow._model.clock import trio_deadline
from actorflow._model.definition import ConnectorSpec, fn_name, shown
from actorflow._model.errors import InvalidArgument, describe_error
from actorflow._model.options import Options
from actorflow._model.process import ProcessState
from actorflow._model.text import key_part
from actorflow._runtime.observe import Observer, Process, process_name
from actorflow._runtime.user_code import check_returned_none, user_error, watched
from actorflow._services.context import ServiceContext
from actorflow.streaming._protocol import ConnectorEvent, EventSource
from actorflow.streaming._stats import ConnectorStats, connector_stats

log = logging.getLogger(__name__)


def cursor_name(workflow_name: str, connector_name: str) -> str:
    """The store cursor of a connector (the workflow name escaped by ``key_part``, so
    no two workflows' connectors share one)."""
    return f"connector:{key_part(workflow_name)}:{connector_name}"


def shard_cursor_name(workflow_name: str, connector_name: str, shard: int, shards: int) -> str:
    """The store cursor of shard ``shard`` (1-based) of ``shards`` of a connector (both
    names escaped, and a prefix of its own: no plain connector's cursor can equal it)."""
    return (
        f"connector-shard:{key_part(workflow_name)}:{key_part(connector_name)}:{shard}-of-{shards}"
    )


def shard_of(event: ConnectorEvent, shards: int) -> int:
    """The shard (1-based) of ``shards`` that handles ``event``: by its foreign id (so the
    events of one foreign id stay in order), or its id when it has no foreign id; a key of
    digits is its own number, other text its CRC-32 (the same in every process)."""
    key = event.foreign_id or event.id
    number = int(key) if key.isascii() and key.isdigit() else zlib.crc32(key.encode())
    return number % shards + 1


def process_of(ctx: ServiceContext, spec: ConnectorSpec) -> Process:
    """The process (``<name>-connector-consumer``) that reports a connector's state."""
    return ctx.service(
        process_name(spec.name, "connector-consumer"), spec.options.lag_alert.total_seconds()
    )


def event_fields(ctx: ServiceContext, spec: ConnectorSpec, event: ConnectorEvent) -> dict[str, Any]:
    """The ``extra=`` fields of a log record about a connector's event."""
    return {
        "workflow_name": ctx.name,
        "process_name": process_name(spec.name, "connector-consumer"),
        "connector": spec.name,
        "event_id": event.id,
        "foreign_id": event.foreign_id,
        "event_type": event.type,
    }


async def run_connectors(ctx: ServiceContext) -> None:
    """Serve every connector of the workflow until cancelled.

    Raises:
        InvalidArgument: a connector's source is not an ``af.EventSource``.
    """
    connectors = ctx.definition.connectors
    for spec in connectors:
        if not isinstance(spec.source, EventSource):
            raise InvalidArgument(
                f"workflow {ctx.name!r} connector {spec.name!r}: the source "
                f"{shown(spec.source)} is not an af.EventSource (use af.connect(...), "
                "af.MemorySource(...) or an object with an open(consumer, after) method)"
            )
    stats = connector_stats(ctx.handle)
    async with trio.open_nursery() as nursery:
        for spec in connectors:
            nursery.start_soon(serve_connector, ctx, spec, stats[spec.name])


async def serve_connector(ctx: ServiceContext, spec: ConnectorSpec, stats: ConnectorStats) -> None:
    """Consume one connector's source until cancelled."""
    process = process_of(ctx, spec)
    process.state = ProcessState.RUNNING
    shards = spec.options.max_concurrency or 1
    try:
        if shards == 1:
            await _serve(ctx, spec, stats, process, cursor_name(ctx.name, spec.name), None)
            return
        async with trio.open_nursery() as nursery:
            for shard in range(1, shards + 1):
                name = shard_cursor_name(ctx.name, spec.name, shard, shards)
                nursery.start_soon(_serve, ctx, spec, stats, process, name, (shard, shards))
    finally:
        process.state = ProcessState.STOPPED


async def _serve(
    ctx: ServiceContext,
    spec: ConnectorSpec,
    stats: ConnectorStats,
    process: Process,
    name: str,
    shard: tuple[int, int] | None,
) -> None:
    """Consume the source with the cursor ``name``: every event, or (``shard``: this
    shard and the number of shards) only this shard's, acknowledging the others."""
    store = ctx.store
    source: EventSource = spec.source
    failures = 0
    while True:
        try:
            after = await store.get_cursor(name)
            stats.cursor = after
            opened = source.open(name, after)
            if inspect.iscoroutine(opened):  # checked at build; a wrapper may still hide one
                opened.close()
                raise InvalidArgument(
                    f"workflow {ctx.name!r} connector {spec.name!r}: the source's open() "
                    "returned a coroutine, not an async context manager (an async def open? "
                    "decorate an async generator with @contextlib.asynccontextmanager)"
                )
            async with opened as receiver:
                while True:
                    event = await receiver.receive()
                    if not isinstance(event, ConnectorEvent):  # a source of the user's own
                        raise InvalidArgument(
                            f"workflow {ctx.name!r} connector {spec.name!r}: the source's "
                            f"receive() returned {type(event).__name__}, not an "
                            "af.ConnectorEvent"
                        )
                    if shard is not None and shard_of(event, shard[1]) != shard[0]:
                        await receiver.ack(event)
                        await store.set_cursor(name, event.id)
                        continue
                    await _wait_for_lag(ctx, spec.options, event)
                    lag = (ctx.clock.now() - event.created_at).total_seconds()
                    process.took_up(ctx.observer, ctx.name, lag, event_fields(ctx, spec, event))
                    await _handle(ctx, spec, stats, event, process)
                    await receiver.ack(event)
                    await store.set_cursor(name, event.id)
                    # Only a fully handled event ends a run of failures: an ack or cursor
                    # write that keeps failing must keep backing off, not re-run fn at once.
                    failures = 0
                    stats.handled += 1
                    stats.cursor = event.id
                    process.state = ProcessState.RUNNING
        except BaseException as caught:
            exc = user_error(caught, f"connector {spec.name!r} source {shown(source)}")
            failures += 1
            stats.source_errors += 1
            stats.last_error = ctx.failed(process, exc)
            delay = spec.options.retry_seconds(failures)
            log.warning(
                "workflow %r connector %r: source %s failed (%d in a row), reopening in %.3g s: %s",
                ctx.name,
                spec.name,
                shown(source),
                failures,
                delay,
                stats.last_error,
                extra={
                    "workflow_name": ctx.name,
                    "process_name": process.name,
                    "connector": spec.name,
                    "error_count": failures,
                },
            )
            await trio.sleep(delay)


async def _wait_for_lag(ctx: ServiceContext, options: Options, event: ConnectorEvent) -> None:
    if not options.consume_lag:
        return
    due = event.created_at + options.consume_lag
    deadline = trio_deadline(ctx.clock, due)
    if deadline > trio.current_time():
        await trio.sleep_until(deadline)


async def _handle(
    ctx: ServiceContext,
    spec: ConnectorSpec,
    stats: ConnectorStats,
    event: ConnectorEvent,
    process: Process,
) -> None:
    """Call the connector function until it succeeds, backing off between failures."""
    errors = 0
    while (exc := await _call(ctx, spec, event, process)) is not None:
        process.state = ProcessState.ERRORING
        errors += 1
        stats.errors += 1
        stats.last_error = describe_error(exc)
        delay = spec.options.retry_seconds(errors)
        log.warning(
            "workflow %r connector %r: %s failed on event %s (foreign id %r, type %r), "
            "attempt %d, retrying in %.3g s: %s",
            ctx.name,
            spec.name,
            fn_name(spec.fn),
            event.id,
            event.foreign_id,
            event.type,
            errors,
            delay,
            stats.last_error,
            extra={**event_fields(ctx, spec, event), "error_count": errors},
        )
        await trio.sleep(delay)


async def _call(
    ctx: ServiceContext, spec: ConnectorSpec, event: ConnectorEvent, process: Process
) -> Exception | None:
    """Call the connector function once, in its span; returns its error, or None.

    Raises:
        BaseException: a real cancellation (or KeyboardInterrupt...), after ending the span.
    """
    observer = ctx.observer
    token = None if observer is None else _begin_span(observer, ctx, spec, event, process)
    try:
        fn: Callable[..., Awaitable[object]] = spec.fn  # typed None; a careless one is not
        returned = await watched(
            fn(ctx.handle, event),
            f"connector {spec.name!r} (event {event.id}) function",
            spec.fn,
            ctx.name,
            "",
        )
        check_returned_none(returned, f"connector function {fn_name(spec.fn)}")
    except BaseException as caught:
        try:
            exc = user_error(caught, f"connector function {fn_name(spec.fn)}")
        except BaseException:
            if observer is not None:
                observer.end(token, "cancelled", caught)
            raise
        if observer is not None:
            observer.end(token, "error", exc)
        return exc
    if observer is not None:
        observer.end(token, "handled")
    return None


def _begin_span(
    observer: Observer,
    ctx: ServiceContext,
    spec: ConnectorSpec,
    event: ConnectorEvent,
    process: Process,
) -> object:
    """Begin the span of one call, a child of the event's trace context (if it has one)."""
    return observer.begin(
        "connector",
        process.name,
        None,
        parent=event.headers.get("traceparent", ""),
        attributes={
            "actorflow.workflow": ctx.name,
            "actorflow.connector": spec.name,
            "actorflow.event_id": event.id,
            "actorflow.foreign_id": event.foreign_id,
            "actorflow.event_type": event.type,
        },
    )
