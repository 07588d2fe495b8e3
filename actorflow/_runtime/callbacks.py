"""Callbacks: running the callback functions of a run's status on a payload from outside
(``workflow.callback``), storing what the first one that moves the run returned, and
counting the errors of those that fail (the caller gets a CallbackError)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, NoReturn

import trio

from actorflow._model.definition import CallbackSpec, fn_name
from actorflow._model.errors import (
    ActorflowError,
    CallbackError,
    StepError,
    StoreError,
    describe_error,
)
from actorflow._model.record import RawRecord, Timer
from actorflow._runtime.engine import Engine
from actorflow._runtime.user_code import user_error, watched

Stored = tuple[RawRecord | None, list[Timer] | None]

INTERRUPTIBLE: ContextVar[Callable[[], AbstractContextManager[trio.CancelScope]] | None] = (
    ContextVar("actorflow_interruptible", default=None)
)
"""Set by a run's actor while it performs a callback: the scope to call the callback
function in, which a pause or cancel that waited the grace period for it cancels (a
callback that hangs must not hold the run's controls forever). None: called inline."""


async def run_callbacks(
    engine: Engine[Any, Any], raw: RawRecord, status: int, payload: bytes, *, parent: str = ""
) -> Stored:
    """Run the callbacks of ``status`` on the run; (None, None) when none moved it or the
    run is not at ``status`` any more.

    ``parent``: the traceparent of the caller of ``workflow.callback`` (tracing on)."""
    if raw.status != status or not raw.run_state.active:
        return None, None
    if not await engine.lineage.accepts(raw):
        raise ActorflowError(
            f"{engine.where(raw)} was last written by definition {raw.meta.definition}, "
            f"which is newer than this process's definition {engine.fingerprint}: call "
            "back through a process that runs the newer definition"
        )
    for spec in engine.definition.callbacks.get(status, ()):
        new, timers = await _run_callback(engine, spec, raw, payload, parent)
        if new is not None:
            return new, timers
    return None, None


async def _run_callback(
    engine: Engine[Any, Any], spec: CallbackSpec, raw: RawRecord, payload: bytes, parent: str
) -> Stored:
    """Call one callback function and store what it returned, reporting to the observer."""
    observer = engine.observer
    run = engine.make_run(raw)
    key = f"callback {fn_name(spec.fn)}"
    token = (
        None
        if observer is None
        else observer.begin("callback", engine.callback_processes[raw.status], raw, parent=parent)
    )
    interruptible = INTERRUPTIBLE.get()
    try:
        try:
            with interruptible() if interruptible else trio.CancelScope() as scope:
                result = await watched(
                    spec.fn(run, payload), "callback", spec.fn, engine.name, raw.run_id
                )
        except StoreError as exc:  # raised by the user's code: its own error
            raise StepError(f"{key} raised {describe_error(exc)}") from exc
        if scope.cancel_called:  # interrupted, even if it swallowed the Cancelled
            if observer is not None:
                observer.end(token, "cancelled")
            raise _Interrupted(
                f"{engine.where(raw, key)} was interrupted: it was still running when a "
                "pause or cancel of the run had waited the grace period for it; nothing "
                "of it was stored"
            )
        new, timers = await engine.apply_result(raw, run, result, spec.to, key)
        # Only a result that was allowed (and stored) ends a run of errors: a callback that
        # keeps returning junk counts up to its limit like one that keeps raising.
        engine.errors.reset(raw.run_id, key)
    except _Interrupted as exc:
        raise CallbackError(str(exc)) from None
    except StoreError as exc:
        if observer is not None:
            observer.end(token, "error", exc)
        raise
    except BaseException as exc:
        try:
            error = user_error(exc, key)
        except BaseException:
            if observer is not None:
                observer.end(token, "cancelled", exc)
            raise
        if observer is not None:
            observer.end(token, "error", error)
        await _failed(engine, raw, key, error)
    if observer is not None:
        observer.end(token, engine.outcome(raw, new))
    return new, timers


class _Interrupted(Exception):
    """The callback function was interrupted (not its error: not counted)."""


async def _failed(engine: Engine[Any, Any], raw: RawRecord, key: str, exc: Exception) -> NoReturn:
    """Count the callback's error (pausing the run at its limit) and raise CallbackError."""
    count, paused = await engine.count_error(raw, key, exc, engine.default_options)
    note = f"; the run was paused ({paused.meta.run_state_reason})" if paused else ""
    raise CallbackError(
        f"{engine.where(raw, key)} failed ({count} consecutive error(s)){note}: "
        f"{describe_error(exc)}"
    ) from exc
