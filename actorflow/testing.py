"""Test helpers, made for pytest-trio with the autojump clock.

Virtual time drives every timer, schedule and backoff: an hour-long timeout passes
instantly and deterministically.
"""

from __future__ import annotations

import contextlib
import difflib
import enum
import json
import pprint
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from actorflow._model.clock import Clock, TrioClock
from actorflow._model.codec import converter
from actorflow._model.errors import Lagged, RunNotFound
from actorflow._model.record import Record
from actorflow.stores import Store
from actorflow.stores.feed import Subscription
from actorflow.workflow import Workflow

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

__all__ = [
    "await_timeout_insert",
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
    ``foreign_id`` (waiting for the run to be triggered if needed); return that version."""
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
                        if predicate(record):
                            return record
                await _next_change(sub, store)


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
    its object there equals ``expected`` (AssertionError with a diff otherwise)."""
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
    ``payload`` (bytes, or an attrs object / dataclass / JSON value serialised to JSON)."""
    await workflow.await_status(foreign_id, run_id, status)
    if isinstance(payload, bytes | bytearray):
        data = bytes(payload)
    elif isinstance(payload, str):
        data = payload.encode()
    else:
        data = json.dumps(converter.unstructure(payload)).encode()
    return await workflow.callback(foreign_id, status, data)


async def await_timeout_insert(
    workflow: Workflow[T, S], foreign_id: str, run_id: str, status: S
) -> None:
    """Wait until a timeout of ``status`` is stored for the run, so the test can then move
    the clock past it."""
    await workflow.await_status(foreign_id, run_id, status)
    store = workflow.store
    while True:  # once more after a lagged subscription
        with store.feed.subscribe(run_id=run_id) as sub:
            while not sub.lagged:
                timers = await store.list_timers(workflow.name, run_id)
                if any(t.status == int(status) and t.kind.startswith("timeout") for t in timers):
                    return
                await _next_change(sub, store)


async def _next_change(sub: Subscription, store: Store) -> None:
    """Wait for the next published change, or (shared stores) another process's write
    noticed by the store, or a second of real time."""
    with (
        store.feed.until_external(1.0 if store.shared else float("inf")),
        contextlib.suppress(Lagged),
    ):
        await sub.receive()
