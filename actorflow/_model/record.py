"""Records: the stored versions of a run.

A :class:`RawRecord` is what stores keep (object as JSON text, status as int); a
:class:`Record` is the typed view users see (object decoded, status as the enum member).
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from typing import Any, Generic, TypeVar

import attrs

from actorflow._model.run_state import RunState

T = TypeVar("T")
S = TypeVar("S", bound=int)


def _run_state(value: int) -> RunState:
    return value if type(value) is RunState else RunState(value)


class _Entropy(threading.local):
    """Random hex digits for run ids, drawn from the OS a few kilobytes at a time (one
    system call per ``_ENTROPY_IDS`` ids, not one per id); per thread, and dropped in a
    forked child (which must not reuse its parent's bytes)."""

    def __init__(self) -> None:
        self.pool = ""
        self.used = 0
        self.millis = -1
        self.prefix = ""


_ENTROPY_IDS = 256
_VARIANT = {f"{n:x}": "89ab"[n & 3] for n in range(16)}
"""A random hex digit to the variant digit (``10xx``: 8, 9, a or b), keeping 2 random bits."""
_entropy = _Entropy()


def _forget_entropy() -> None:
    global _entropy
    _entropy = _Entropy()


os.register_at_fork(after_in_child=_forget_entropy)


def new_run_id() -> str:
    """A new run's id: a time-ordered UUID (version 7, RFC 9562) as 32 hex digits.

    The first 48 bits are the Unix time in milliseconds, so new runs land at the end of the
    stores' indexes (and ids sort by creation time across processes, to the millisecond);
    the remaining 74 bits are random (from ``os.urandom``). Built as text from a pool of
    random hex digits: a backfill makes hundreds of thousands of them.
    """
    millis = time.time_ns() // 1_000_000
    entropy = _entropy
    if millis != entropy.millis:
        entropy.millis = millis
        entropy.prefix = f"{millis & 0xFFFF_FFFF_FFFF:012x}7"  # the version digit
    used = entropy.used
    pool = entropy.pool
    if used >= len(pool):
        pool = entropy.pool = os.urandom(10 * _ENTROPY_IDS).hex()
        used = 0
    # 20 random hex digits an id: 3 after the version digit, one for the variant digit's
    # 2 random bits and 15 after it (74 random bits, as RFC 9562 has it); one unused.
    entropy.used = used + 20
    return (
        f"{entropy.prefix}{pool[used : used + 3]}{_VARIANT[pool[used + 3]]}"
        f"{pool[used + 4 : used + 4 + 15]}"
    )


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
    definition: str = ""
    """The fingerprint of the workflow definition that wrote this version (empty for
    versions written before fingerprints were stored)."""

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
