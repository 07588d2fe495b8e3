"""Run-state hooks (on_complete, on_pause, on_cancel), driven by the store's event log.

A durable cursor per workflow records how far the hooks got, so a restart calls each hook
at least once per change and never forgets one.
"""

from __future__ import annotations

import enum
import logging
from datetime import timedelta
from typing import Any, TypeVar

import trio

from actorflow._model.errors import StoreError
from actorflow._model.options import Options
from actorflow._model.record import Event
from actorflow._model.run_state import RunState
from actorflow._runtime.engine import Engine
from actorflow._runtime.retry import retrying
from actorflow._runtime.user_code import user_error

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

BATCH = 200
HOOK_OF_STATE = {
    RunState.COMPLETED: "complete",
    RunState.PAUSED: "pause",
    RunState.CANCELLED: "cancel",
}


async def follow_events(
    engine: Engine[Any, Any],
    cursor_name: str,
    poll_interval: timedelta,
    handle: Any,
) -> None:
    """Call ``await handle(event)`` for each event of the workflow after the durable cursor."""
    store = engine.store
    poll = poll_interval.total_seconds() if store.shared else float("inf")
    failures = 0
    cursor: int | None = None
    while True:
        try:
            if cursor is None:
                stored = await store.get_cursor(cursor_name)
                cursor = int(stored) if stored else 0
            mark = store.feed.mark()
            events = await store.read_events(cursor, BATCH, engine.name)
            if not events:
                # An in-process commit, another process's write, or the real-time poll.
                await store.feed.wait_change(mark, poll)
                continue
            for event in events:
                await handle(event)
                cursor = event.id
            await store.set_cursor(cursor_name, str(cursor))
            failures = 0
        except StoreError as exc:
            # Handled events may be handled again (at least once); none is skipped.
            failures += 1
            delay = engine.default_options.retry_seconds(failures)
            log.warning(
                "workflow %r: %s: store error (retrying in %.1f s): %s",
                engine.name,
                cursor_name,
                delay,
                exc,
            )
            cursor = None
            await trio.sleep(delay)


async def run_hooks(engine: Engine[T, S], poll_interval: timedelta) -> None:
    """Serve the workflow's hooks until cancelled."""
    hooks = engine.definition.hooks
    options: Options = engine.default_options

    async def handle(event: Event) -> None:
        kind = HOOK_OF_STATE.get(event.run_state)
        hook = hooks.get(kind) if kind else None
        if hook is None:
            return

        async def call_hook() -> None:
            try:
                history = await engine.store.history(engine.name, event.run_id)
                raw = next(r for r in history if r.version == event.version)
                await hook(engine.typed(raw))
            except trio.Cancelled as exc:  # a stray one is the hook's error; a real one ends us
                raise user_error(exc, f"on_{kind} hook") from exc

        await retrying(
            call_hook,
            options=options,
            what=f"workflow {engine.name!r}: on_{kind} hook for run {event.run_id}",
            log=log,
        )

    await follow_events(engine, f"hooks:{engine.name}", poll_interval, handle)
