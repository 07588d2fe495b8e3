"""Run-state hooks (on_complete, on_pause, on_cancel), driven by the store's event log.

A durable cursor per workflow records how far the hooks got, so a restart calls each hook
at least once per change and never forgets one.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, Generic, TypeVar

import attrs
import trio

from actorflow._model.definition import HookFn, fn_name
from actorflow._model.errors import StoreError
from actorflow._model.options import Options
from actorflow._model.process import ProcessState
from actorflow._model.record import Event
from actorflow._model.run_state import RunState
from actorflow._runtime.engine import Engine
from actorflow._runtime.observe import RUN_STATE_NAMES, Process, process_name
from actorflow._runtime.retry import retrying
from actorflow._runtime.user_code import check_returned_none, user_error, watched
from actorflow.streaming._store_log import LogFollower

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

HOOK_OF_STATE = {
    RunState.COMPLETED: "complete",
    RunState.PAUSED: "pause",
    RunState.CANCELLED: "cancel",
}
STATE_OF_HOOK = {kind: state for state, kind in HOOK_OF_STATE.items()}


def hook_process(kind: str) -> str:
    """The process name of the ``on_<kind>`` hook, as luno/workflow names its hook
    consumers (``completed-run-state-change-hook-consumer``)."""
    return process_name(RUN_STATE_NAMES[STATE_OF_HOOK[kind]], "run-state-change-hook-consumer")


async def follow_events(
    engine: Engine[Any, Any],
    cursor_name: str,
    poll_interval: timedelta,
    handle: Any,
) -> None:
    """Call ``await handle(event)`` for each event of the workflow after the durable cursor.

    The log is read by the same :class:`LogFollower` as the store-log streamer's; the
    cursor is stored after each batch, so after a store error the batch since the stored
    cursor is handled again (at least once), and no event is skipped."""
    store = engine.store
    failures = 0
    while True:
        try:
            stored = await store.get_cursor(cursor_name)
            follower = LogFollower(
                store, engine.name, int(stored) if stored else 0, poll_interval=poll_interval
            )
            while True:
                for event in await follower.next_batch():
                    await handle(event)
                await store.set_cursor(cursor_name, str(follower.after))
                failures = 0
        except StoreError as exc:
            failures += 1
            delay = engine.default_options.retry_seconds(failures)
            log.warning(
                "workflow %r: %s: store error (retrying in %.1f s): %s",
                engine.name,
                cursor_name,
                delay,
                exc,
                extra={"workflow_name": engine.name, "cursor": cursor_name},
            )
            await trio.sleep(delay)


async def run_hooks(engine: Engine[T, S], poll_interval: timedelta) -> None:
    """Serve the workflow's hooks until cancelled."""
    processes: dict[str, Process] = {
        kind: engine.service(hook_process(kind))
        for kind in engine.definition.hooks
        if kind in STATE_OF_HOOK
    }
    hooks = _Hooks(engine, engine.default_options, processes)
    for process in processes.values():
        process.state = ProcessState.RUNNING
    try:
        await follow_events(engine, f"hooks:{engine.name}", poll_interval, hooks.handle)
    finally:
        for process in processes.values():
            process.state = ProcessState.STOPPED


@attrs.frozen
class _Hooks(Generic[T, S]):
    """Calls the hook of each run-state change, retrying it with the workflow's back-off."""

    engine: Engine[T, S]
    options: Options
    processes: Mapping[str, Process]

    async def handle(self, event: Event) -> None:
        """Call the hook of ``event``'s run state, if there is one, until it succeeds."""
        kind = HOOK_OF_STATE.get(event.run_state)
        hook = self.engine.definition.hooks.get(kind) if kind else None
        if hook is None or kind is None:
            return
        process = self.processes[kind]
        attempts = 0

        async def call_hook() -> None:
            nonlocal attempts
            attempts += 1
            await self._call(hook, kind, event, process, first=attempts == 1)

        await retrying(
            call_hook,
            options=self.options,
            what=f"workflow {self.engine.name!r}: on_{kind} hook for run {event.run_id}",
            log=log,
            extra={
                "workflow_name": self.engine.name,
                "process_name": process.name,
                "run_id": event.run_id,
                "foreign_id": event.foreign_id,
                "version": event.version,
            },
        )

    async def _call(
        self, hook: HookFn, kind: str, event: Event, process: Process, *, first: bool
    ) -> None:
        """One call of ``hook`` on the version of ``event``, in its span; its error raised
        (a stray ``trio.Cancelled`` as the hook's error, a real one as it is)."""
        engine = self.engine
        observer = engine.observer
        token: object = None
        try:
            history = await engine.store.history(engine.name, event.run_id)
            raw = next((r for r in history if r.version == event.version), None)
            if raw is None:
                # History retention deleted the version while the hook lagged behind (its
                # earlier calls failed for longer than after_finish): it cannot come back,
                # so the hook misses it, as docs/stores.md says of lagging consumers. (It
                # was retried for ever, "coroutine raised StopIteration", holding up every
                # later hook of the workflow.)
                log.warning(
                    "workflow %r: on_%s hook for run %s skipped: version %d is no longer "
                    "stored (history retention deleted it before the hook succeeded)",
                    engine.name,
                    kind,
                    event.run_id,
                    event.version,
                    extra={
                        "workflow_name": engine.name,
                        "process_name": process.name,
                        "run_id": event.run_id,
                        "version": event.version,
                    },
                )
                return
            if first:
                lag = (engine.now() - raw.updated_at).total_seconds()
                process.took_up(observer, engine.name, lag, raw)
            if observer is not None:
                token = observer.begin("hook", process.name, raw)
            fn: Callable[..., Awaitable[object]] = hook  # typed None; a careless one is not
            returned = await watched(
                fn(engine.typed(raw)), f"on_{kind} hook", hook, engine.name, raw.run_id
            )
            check_returned_none(returned, f"on_{kind} hook {fn_name(hook)}")
        except Exception as exc:
            self._failed(process, token, exc)
            raise
        except BaseException as exc:  # a stray one is the hook's error; a real one ends us
            try:
                error = user_error(exc, f"on_{kind} hook")
            except BaseException:
                if observer is not None and token is not None:
                    observer.end(token, "cancelled", exc)
                raise
            self._failed(process, token, error)
            raise error from exc
        if observer is not None:
            observer.end(token, "handled")
        process.state = ProcessState.RUNNING

    def _failed(self, process: Process, token: object, error: BaseException) -> None:
        observer = self.engine.observer
        if observer is not None:
            if token is None:
                observer.error(process.name)
            else:
                observer.end(token, "error", error)
        process.state = ProcessState.ERRORING
