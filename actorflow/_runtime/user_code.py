"""Telling user code's errors from real cancellation; noticing user code that holds the
trio thread.

A ``trio.Cancelled`` that user code raises while no cancel scope around it is cancelled
(say, one caught inside the code's own ``CancelScope`` and raised again outside it) is
not a cancellation: left alone, it would end the workflow's nursery without a word. It
is an error of that code like any other, counted, logged and retried.
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Awaitable, Generator
from time import perf_counter
from typing import Any, TypeVar

import trio

from actorflow._model.codec import ends_process
from actorflow._model.definition import fn_name
from actorflow._model.errors import StepError, describe_error

log = logging.getLogger(__name__)

R = TypeVar("R")

HELD_WARNING_SECONDS = 0.5
"""A user function that runs this long (real time) between two of its checkpoints held the
trio thread: every other run, timer and service of the process waited. A warning names it
(docs/steps.md, "Blocking calls")."""


class StrayCancelled(StepError):
    """User code raised ``trio.Cancelled`` while nothing around it was cancelled."""


class StrayBaseException(StepError):
    """User code raised a ``BaseException`` that is neither an ``Exception``, a
    cancellation nor a request to end the process (``GeneratorExit``, say)."""


_PASSED_ON = (trio.Cancelled, KeyboardInterrupt, SystemExit)
"""What user code may raise that is not its error: it ends the task or the process."""


def _passed_on(exc: BaseException) -> bool:
    """Whether ``exc`` ends the task or the process (or is a group holding such: a
    group's ``Cancelled`` counts only while a scope around the current task is cancelled,
    as a user's nursery re-raising one it caught in a scope of its own is no cancellation)."""
    if ends_process(exc):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[0] is not None and not _nothing_cancelled()
    return isinstance(exc, _PASSED_ON)


def _nothing_cancelled() -> bool:
    """Whether no cancel scope around the current task is cancelled (nor past due)."""
    return trio.current_effective_deadline() > trio.current_time()


def is_stray_cancel(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``trio.Cancelled`` that no cancelled scope of the current task
    explains (its effective deadline is neither -inf nor past)."""
    return isinstance(exc, trio.Cancelled) and _nothing_cancelled()


def user_error(exc: BaseException, what: str) -> Exception:
    """The error to count for ``exc``, raised by user code named by ``what``.

    Raises ``exc`` again when it is not the code's own error: a real cancellation,
    KeyboardInterrupt, SystemExit, a group holding any of them.
    """
    if isinstance(exc, Exception):
        return exc
    error: StepError
    if is_stray_cancel(exc):
        error = StrayCancelled(
            f"{what} raised trio.Cancelled while nothing around it was cancelled (a "
            "Cancelled caught inside its own cancel scope and raised outside it?); "
            "counted as an error of that function"
        )
    elif _passed_on(exc):
        raise exc
    elif isinstance(exc, BaseExceptionGroup) and exc.split(trio.Cancelled)[0] is not None:
        error = StrayCancelled(
            f"{what} raised {describe_error(exc)}, an exception group holding trio.Cancelled "
            "while nothing around it was cancelled; counted as an error of that function"
        )
    else:
        error = StrayBaseException(
            f"{what} raised {type(exc).__name__} ({describe_error(exc)}), a BaseException "
            "that is not an Exception; counted as an error of that function"
        )
    error.__cause__ = exc
    return error


def check_returned_none(result: object, what: str) -> None:
    """Raise StepError when a function that should return None (a hook, a connector
    function) returned something awaitable: a missing ``await`` (``return
    workflow.trigger(...)``), whose work would otherwise be silently lost. A coroutine is
    closed (no 'never awaited' warning later)."""
    if result is None or not inspect.isawaitable(result):
        return
    if inspect.iscoroutine(result):
        result.close()
    raise StepError(
        f"{what} returned {type(result).__name__} {getattr(result, '__qualname__', '')} "
        "without awaiting it (a missing `await`?); what it was to do was not done"
    )


def watched(
    result: Awaitable[R], kind: str, fn: object, workflow: str, run_id: str
) -> Awaitable[R]:
    """``result`` (what ``fn`` returned: its coroutine), to be awaited as it is, but timed
    between its checkpoints: when one stretch of it (from a resumption to its next
    checkpoint) holds the trio thread for ``HELD_WARNING_SECONDS`` or more (``time.sleep``,
    blocking I/O, a long computation), a warning names the function and the run (none:
    ``run_id`` empty). Anything but a coroutine is handed back as it is."""
    if type(result) is not types.CoroutineType:
        return result
    return _watch(result, kind, fn, workflow, run_id)


@types.coroutine
def _watch(
    coro: types.CoroutineType[Any, Any, R], kind: str, fn: object, workflow: str, run_id: str
) -> Generator[Any, Any, R]:
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        began = perf_counter()
        try:
            if thrown is None:
                yielded = coro.send(sent)
            else:
                error, thrown = thrown, None
                yielded = coro.throw(error)
                del error
        except StopIteration as done:
            _held(perf_counter() - began, kind, fn, workflow, run_id)
            return done.value  # type: ignore[no-any-return]
        except BaseException:
            _held(perf_counter() - began, kind, fn, workflow, run_id)
            raise
        _held(perf_counter() - began, kind, fn, workflow, run_id)
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # a cancellation (or any error) trio delivers to it
            sent, thrown = None, exc


def _held(seconds: float, kind: str, fn: object, workflow: str, run_id: str) -> None:
    if seconds < HELD_WARNING_SECONDS:
        return
    log.warning(
        "workflow %r%s: %s %s held the trio thread for %.2f s without a checkpoint (a "
        "blocking call such as time.sleep, blocking I/O or a long computation?): every "
        "other run, timer and service of this process waited meanwhile; await "
        "trio.to_thread.run_sync(...) for blocking work",
        workflow,
        f" run {run_id}" if run_id else "",
        kind,
        fn_name(fn),
        seconds,
        extra={"workflow_name": workflow, "run_id": run_id or None, "held_seconds": seconds},
    )
