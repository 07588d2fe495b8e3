"""Test helpers, made for pytest-trio with the autojump clock.

Virtual time drives every timer, schedule and backoff: an hour-long timeout passes
instantly and deterministically.
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import inspect
import json
import pprint
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from actorflow._model.clock import Clock, TrioClock
from actorflow._model.codec import ObjectCodec, converter
from actorflow._model.definition import fn_name, is_async_callable
from actorflow._model.errors import BuildError, InvalidArgument, Lagged, RunNotFound
from actorflow._model.record import RawRecord, Record, new_run_id
from actorflow._model.run import Run, Special, SpecialResult
from actorflow._model.run_state import RunState
from actorflow._model.statuses import member_of
from actorflow.builder import Builder
from actorflow.stores import Store
from actorflow.stores.feed import Subscription
from actorflow.workflow import Workflow

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

__all__ = [
    "Special",
    "SpecialResult",
    "await_timeout_insert",
    "make_run",
    "require",
    "trigger_callback_on",
    "trio_clock",
    "wait_for",
]


def trio_clock(start: datetime) -> Clock:
    """A clock for ``build(clock=...)`` whose wall time is ``start + trio.current_time()``."""
    return TrioClock(start)


async def wait_for(
    workflow: Workflow[T, S],
    foreign_id: str,
    predicate: Callable[[Record[T, S]], bool],
) -> Record[T, S]:
    """Wait until ``predicate`` holds for some stored version of the latest run of
    ``foreign_id`` (waiting for the run to be triggered if needed); return that version.

    Raises:
        InvalidArgument: ``workflow`` is not an ``af.Workflow``, or ``predicate`` is not
            a plain (not async) callable: a coroutine it returned is always true, so the
            wait would end at once with a version the predicate never looked at.
        ActorflowError: no version satisfies it, and nothing can store another one (the
            workflow is not running in this process and its store is a MemoryStore no
            other process reaches), as for ``await_status``.
    """
    _check_workflow(workflow, "wait_for")
    if not callable(predicate):
        raise InvalidArgument(f"wait_for needs a predicate(record) -> bool, not {predicate!r}")
    if is_async_callable(predicate):
        raise InvalidArgument(_async_predicate(predicate))
    store = workflow.store
    while True:  # once more after a lagged subscription
        with store.feed.subscribe(workflow_name=workflow.name, foreign_id=foreign_id) as sub:
            while not sub.lagged:
                try:
                    latest = await workflow.latest(foreign_id)
                except RunNotFound:
                    latest = None
                if latest is not None:
                    for record in await workflow.history(latest.run_id):
                        if _holds(predicate, record):
                            return record
                    if workflow._runs_nowhere():  # nothing will ever store another version
                        raise workflow._not_running(
                            f"wait_for: no version of run {latest.run_id} of {foreign_id!r} "
                            "satisfies the predicate, and none will ever be stored"
                        )
                await _next_change(sub, store)


def _async_predicate(predicate: object) -> str:
    return (
        f"wait_for: predicate {fn_name(predicate)} is async (or returned an awaitable); it "
        "must be a plain function predicate(record) -> bool, as an awaitable is always true"
    )


def _holds(predicate: Callable[[Record[T, S]], bool], record: Record[T, S]) -> bool:
    """What ``predicate`` says of ``record``; InvalidArgument for an awaitable answer (a
    lambda calling an async function, say), which is true whatever the record."""
    result: object = predicate(record)
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # no 'never awaited' warning on top of the error
        raise InvalidArgument(_async_predicate(predicate))
    return bool(result)


def _diff(expected: object, actual: object) -> str:
    def show(value: object) -> list[str]:
        try:
            data = converter.unstructure(value)
        except Exception:
            data = value
        return pprint.pformat(data, width=88, sort_dicts=True).splitlines()

    return "\n".join(
        difflib.unified_diff(show(expected), show(actual), "expected", "actual", lineterm="")
    )


async def require(
    workflow: Workflow[T, S], foreign_id: str, status: S, expected: T
) -> Record[T, S]:
    """Wait until the latest run of ``foreign_id`` has been at ``status``, then assert that
    its object there equals ``expected`` (AssertionError with a diff otherwise).

    Raises:
        InvalidArgument: ``workflow`` is not an ``af.Workflow`` or ``status`` is not one of
            its statuses (it would never be reached).
    """
    _check_workflow(workflow, "require")
    status = _status_of(workflow.status_type, status, f"require({workflow.name!r})")
    if int(status) <= 0:  # the enum may have one (UNKNOWN = 0), no graph does: for ever
        raise InvalidArgument(
            f"require({workflow.name!r}): {status!r} is a reserved status (<= 0): no run is "
            "ever at it, the wait would never end"
        )
    record = await wait_for(workflow, foreign_id, lambda r: r.status == status)
    if record.object != expected:
        raise AssertionError(
            f"workflow {workflow.name!r} foreign id {foreign_id!r} at {status!r}: object "
            f"differs from the expected one\n{_diff(expected, record.object)}"
        )
    return record


async def trigger_callback_on(
    workflow: Workflow[T, S], foreign_id: str, run_id: str, status: S, payload: Any
) -> Record[T, S] | None:
    """Wait for the run to reach ``status``, then call ``workflow.callback`` with
    ``payload`` (bytes, or an attrs object / dataclass / JSON value serialised to JSON).

    Raises:
        InvalidArgument: ``workflow`` is not an ``af.Workflow`` (or an argument is bad, as
            for ``await_status`` and ``callback``).
    """
    _check_workflow(workflow, "trigger_callback_on")
    await workflow.await_status(foreign_id, run_id, status)
    if isinstance(payload, bytes | bytearray):
        data = bytes(payload)
    elif isinstance(payload, str):
        data = payload.encode()
    else:
        try:
            data = json.dumps(converter.unstructure(payload)).encode()
        except Exception as exc:  # (a set, an object cattrs cannot unstructure, NaN ...)
            raise InvalidArgument(
                f"trigger_callback_on({workflow.name!r}): payload must be bytes, str, or an "
                f"attrs object / dataclass / JSON value; {type(payload).__name__} cannot be "
                f"serialised to JSON: {exc}"
            ) from exc
    return await workflow.callback(foreign_id, status, data)


async def await_timeout_insert(
    workflow: Workflow[T, S], foreign_id: str, run_id: str, status: S
) -> None:
    """Wait until a timeout of ``status`` is stored for the run, so the test can then move
    the clock past it. Returns at once when the run has already left ``status`` (or is
    paused or finished there): its timeout was stored and has fired or been dropped.

    Raises:
        InvalidArgument: ``workflow`` is not an ``af.Workflow``, ``status`` has no timeout
            or the run is at ``status`` with none stored (its timer function returned
            None: nothing would ever be stored, the wait would never end), or an argument
            is bad, as for ``await_status``.
    """
    _check_workflow(workflow, "await_timeout_insert")
    where = f"await_timeout_insert({workflow.name!r})"
    member = _status_of(workflow.status_type, status, where)
    if member not in workflow.definition.timeouts:
        raise InvalidArgument(
            f"{where}: status {member.name} has no timeout (add one with "
            "builder.add_timeout), so none will ever be stored"
        )
    await workflow.await_status(foreign_id, run_id, status)
    store = workflow.store
    while True:  # once more after a lagged subscription
        with store.feed.subscribe(run_id=run_id) as sub:
            while not sub.lagged:
                before = await store.lookup(workflow.name, run_id)
                timers = await store.list_timers(workflow.name, run_id)
                if any(t.status == int(member) and t.kind.startswith("timeout") for t in timers):
                    return
                # A run's timers are stored with the version that enters the status: a run
                # that has left it (or stopped) had its timeout stored, and fired or dropped
                # since (a timer in the past fires at once); waiting on would be for ever.
                latest = await store.lookup(workflow.name, run_id)
                if latest.status != int(member) or not latest.run_state.active:
                    return
                if latest.version == before.version:
                    # At the status all along, and none stored with the version that
                    # entered it: its timer functions returned None for this run (no
                    # timeout), and none ever will be (this waited for ever).
                    raise InvalidArgument(
                        f"{where}: run {run_id} is at {member.name} with no timeout stored: "
                        "the timer function returned None for it (no timeout for this "
                        "run), so none will be stored"
                    )
                await _next_change(sub, store)


async def _next_change(sub: Subscription, store: Store) -> None:
    """Wait for the next published change, or (shared stores) another process's write
    noticed by the store, or a second of real time."""
    with (
        store.feed.until_external(1.0 if store.shared else float("inf")),
        contextlib.suppress(Lagged),
    ):
        await sub.receive()


def make_run(
    workflow_or_builder: Workflow[T, S] | Builder[T, S],
    obj: T,
    *,
    status: S | None = None,
    foreign_id: str = "test",
    run_id: str | None = None,
) -> Run[T, S]:
    """An ``af.Run`` to call one step, callback or timeout function with directly: no
    store, no supervisor, no trio run needed.

    ``run.object`` is ``obj`` itself, so the test sees what the function changed. A special
    result (``run.skip()``, ``run.pause(reason)``, ``run.cancel(reason)``,
    ``run.save_and_repeat()``) is a :class:`SpecialResult` that compares equal to the same
    call: ``assert await fn(run) == run.pause("out of stock")``; its ``kind`` is a
    :class:`Special` and its ``reason`` the text given.

    Args:
        workflow_or_builder: the workflow (or its builder) the function belongs to.
        obj: the run's object, an instance of the workflow's object type.
        status: the status the run is at (default: the workflow's start status).
        foreign_id: the run's foreign id.
        run_id: the run's id (default: a new one).

    Raises:
        InvalidArgument: ``obj`` is not of the object type (or cannot be stored as JSON),
            ``status`` is not one of the workflow's statuses, or an id is not a non-empty
            string.
    """
    codec, name, status_type, start = _run_target(workflow_or_builder)
    where = f"make_run({name!r})"
    codec.check(obj, f"{where} object")
    status = cast(S, start) if status is None else _status_of(status_type, status, where)
    for label, value in (("foreign_id", foreign_id), ("run_id", run_id)):
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidArgument(f"{where}: {label} must be a non-empty string, not {value!r}")
    now = datetime.now(UTC)
    raw = RawRecord(
        workflow_name=name,
        foreign_id=foreign_id,
        run_id=run_id or new_run_id(),
        status=int(status),
        run_state=RunState.RUNNING,
        object=codec.encode(obj, f" ({where} object)"),
        version=1,
        created_at=now,
        updated_at=now,
    )
    return Run(raw, status, obj, codec)


def _check_workflow(workflow: object, helper: str) -> None:
    """InvalidArgument unless ``workflow`` is an ``af.Workflow`` (the helpers read its store
    and definition; anything else would fail later with an unrelated AttributeError)."""
    if not isinstance(workflow, Workflow):
        raise InvalidArgument(
            f"{helper} needs an af.Workflow (built with builder.build), not {workflow!r}"
        )


def _run_target(
    workflow_or_builder: Workflow[T, S] | Builder[T, S],
) -> tuple[ObjectCodec[T], str, type[S], enum.IntEnum]:
    """What make_run needs of the workflow (or builder): codec, name, statuses, start."""
    if isinstance(workflow_or_builder, Workflow):
        workflow: Workflow[T, S] = workflow_or_builder
        return workflow._codec, workflow.name, workflow.status_type, workflow.definition.start
    if isinstance(workflow_or_builder, Builder):
        builder: Builder[T, S] = workflow_or_builder
        try:
            start = builder.definition().start
        except BuildError:
            start = next(iter(builder.status_type))  # an unfinished graph: its first status
        return builder._codec, builder.name, builder.status_type, start
    raise InvalidArgument(
        f"make_run needs an af.Workflow or an af.Builder, not {workflow_or_builder!r}"
    )


def _status_of(status_type: type[S], status: object, where: str) -> S:
    """``status`` as a member of ``status_type``; InvalidArgument when it is none (or a
    member of another enum)."""
    foreign = isinstance(status, enum.Enum) and not isinstance(status, status_type)
    if isinstance(status, int) and not isinstance(status, bool) and not foreign:
        member = member_of(status_type, status)
        if member is not None:
            return member
    raise InvalidArgument(f"{where}: status must be a {status_type.__name__}, not {status!r}")
