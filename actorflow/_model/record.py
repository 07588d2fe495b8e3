"""Records: the stored versions of a run.

A :class:`RawRecord` is what stores keep (object as JSON text, status as int); a
:class:`Record` is the typed view users see (object decoded, status as the enum member).
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from typing import Any, Generic, TypeVar

import attrs

from actorflow._model.run_state import RunState

T = TypeVar("T")
S = TypeVar("S", bound=int)


def _run_state(value: int) -> RunState:
    return value if type(value) is RunState else RunState(value)


_ID_BYTES = 16
_POOL_IDS = 256
_random = bytearray()
"""Random bytes for the next run ids: one ``os.urandom`` call per 256 ids, not per id."""
_random_lock = threading.Lock()
"""Event loops in several threads may trigger at once."""


def _forget_random() -> None:
    global _random_lock
    _random.clear()  # a forked child must never hand out its parent's ids
    _random_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_random)


def new_run_id() -> str:
    """A new run's id: a random (version 4) UUID as 32 hex digits, like ``uuid4().hex``
    (from a pool of ``os.urandom`` bytes, without a UUID object: this runs per trigger)."""
    with _random_lock:
        if not _random:
            _random.extend(os.urandom(_ID_BYTES * _POOL_IDS))
        raw = _random[-_ID_BYTES:]
        del _random[-_ID_BYTES:]
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


@attrs.frozen
class Meta:
    """Bookkeeping stored with every version of a run."""

    run_state_reason: str = ""
    """Why the run state last changed (the reason given to pause, cancel, delete_data)."""
    status_description: str = ""
    """The name of the status (``Status.MIDDLE.name``)."""
    error_count: int = 0
    """Consecutive errors of the current step when the version was stored."""
    error_message: str = ""
    """The last error, when the run was paused because of errors."""
    trace_origin: str = ""
    """The W3C ``traceparent`` of the trace that was active when the run was triggered
    (tracing on; luno/workflow's ``Meta.TraceOrigin``): the parent of its steps' spans."""

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        if not self.trace_origin:
            del data["trace_origin"]  # stored only when there is one
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Meta:
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@attrs.frozen
class RawRecord:
    """One stored version of a run, as stores keep it."""

    workflow_name: str
    foreign_id: str
    run_id: str
    status: int
    run_state: RunState = attrs.field(converter=_run_state)
    object: str
    """The workflow object as JSON text."""
    version: int
    created_at: datetime
    updated_at: datetime
    meta: Meta = Meta()


@attrs.frozen
class Record(Generic[T, S]):
    """One stored version of a run, typed: ``object`` is your attrs object, ``status`` your enum."""

    workflow_name: str
    foreign_id: str
    run_id: str
    status: S
    run_state: RunState
    object: T
    version: int
    created_at: datetime
    updated_at: datetime
    meta: Meta = Meta()


@attrs.frozen
class Timer:
    """A durable timer of one run: fires at ``fire_at`` (aware UTC) unless the run moves on.

    ``kind`` is ``"timeout:<index>"`` for the index-th timeout of ``status``, or ``"resume"``
    for the automatic resume of a paused run.
    """

    workflow_name: str
    run_id: str
    status: int
    kind: str
    fire_at: datetime


@attrs.frozen
class Event:
    """An entry of a store's event log: one stored version of one run (no object)."""

    id: int
    workflow_name: str
    foreign_id: str
    run_id: str
    status: int
    run_state: RunState = attrs.field(converter=_run_state)
    version: int
    created_at: datetime
