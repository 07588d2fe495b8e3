"""Connectors: consume an EventSource with a durable cursor and call ``fn(workflow, event)``.

Each connector is one task in the workflow's services nursery. Its cursor lives in the
workflow's store as ``connector:<workflow>:<connector>`` (the id of the last event
handled). An event is acknowledged only after the function returned, so delivery is
at-least-once: a crash or stop in between hands the same event over again. A failing
function is retried with the connector's back-off (``error_backoff`` doubling up to
``max_error_backoff``), never skipped; a failing source is reopened the same way, and
so is a failing ``ack`` or cursor write: the back-off keeps growing until an event has
been handled, acknowledged and its cursor stored.
"""

from __future__ import annotations

import logging

import trio

from actorflow._model.clock import trio_deadline
from actorflow._model.definition import ConnectorSpec, fn_name
from actorflow._model.errors import InvalidArgument
from actorflow._model.options import Options
from actorflow._runtime.user_code import user_error
from actorflow._services.context import ServiceContext
from actorflow.streaming._protocol import ConnectorEvent, EventSource
from actorflow.streaming._stats import ConnectorStats, connector_stats

log = logging.getLogger(__name__)


def cursor_name(workflow_name: str, connector_name: str) -> str:
    """The store cursor of a connector."""
    return f"connector:{workflow_name}:{connector_name}"


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
                f"{spec.source!r} is not an af.EventSource (use af.connect(...), "
                "af.MemorySource(...) or an object with an open(consumer, after) method)"
            )
    stats = connector_stats(ctx.handle)
    async with trio.open_nursery() as nursery:
        for spec in connectors:
            nursery.start_soon(serve_connector, ctx, spec, stats[spec.name])


async def serve_connector(ctx: ServiceContext, spec: ConnectorSpec, stats: ConnectorStats) -> None:
    """Consume one connector's source until cancelled."""
    store = ctx.store
    name = cursor_name(ctx.name, spec.name)
    source: EventSource = spec.source
    failures = 0
    while True:
        try:
            after = await store.get_cursor(name)
            stats.cursor = after
            async with source.open(name, after) as receiver:
                while True:
                    event = await receiver.receive()
                    await _wait_for_lag(ctx, spec.options, event)
                    await _handle(ctx, spec, stats, event)
                    await receiver.ack(event)
                    await store.set_cursor(name, event.id)
                    # Only a fully handled event ends a run of failures: an ack or cursor
                    # write that keeps failing must keep backing off, not re-run fn at once.
                    failures = 0
                    stats.handled += 1
                    stats.cursor = event.id
        except (Exception, trio.Cancelled) as caught:
            exc = user_error(caught, f"connector {spec.name!r} source {source!r}")
            failures += 1
            stats.source_errors += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
            delay = spec.options.retry_seconds(failures)
            log.warning(
                "workflow %r connector %r: source %r failed (%d in a row), reopening in %.3g s: %s",
                ctx.name,
                spec.name,
                source,
                failures,
                delay,
                stats.last_error,
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
    ctx: ServiceContext, spec: ConnectorSpec, stats: ConnectorStats, event: ConnectorEvent
) -> None:
    """Call the connector function until it succeeds, backing off between failures."""
    errors = 0
    while True:
        try:
            await spec.fn(ctx.handle, event)
            return
        except (Exception, trio.Cancelled) as caught:
            exc = user_error(caught, f"connector function {fn_name(spec.fn)}")
            errors += 1
            stats.errors += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
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
            )
            await trio.sleep(delay)
