"""Rows and parameters of PostgresStore: stored rows to records, records to parameters.

Pure conversions (no I/O, no psycopg at import): the reads in ``queries.py`` and the
writes in ``writes.py`` share them.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from actorflow._model.errors import InvalidArgument
from actorflow._model.record import Event, Meta, RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow.stores.filters import RunFilter

_TOKENS = random.Random()
os.register_at_fork(after_in_child=_TOKENS.seed)  # a forked child must not repeat the parent


def writer_token() -> uuid.UUID:
    """A fresh token identifying one logical write (kept across its retries).

    Not ``uuid.uuid4()``: ``os.urandom`` releases the GIL, and while the pool's threads
    run, getting it back costs the trio thread ~0.3 ms per write (measured: a quarter of
    a worker's time). Tokens must be unique, not secret: a PRNG seeded from urandom is.
    """
    return uuid.UUID(int=_TOKENS.getrandbits(128), version=4)


def aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidArgument(f"datetimes must be timezone-aware (UTC), not {moment!r}")
    return moment


def utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def record_of(row: Sequence[Any]) -> RawRecord:
    return RawRecord(
        workflow_name=row[0],
        foreign_id=row[1],
        run_id=row[2],
        status=row[3],
        run_state=RunState(row[4]),
        object=row[5],
        version=row[6],
        created_at=utc(row[7]),
        updated_at=utc(row[8]),
        meta=Meta.from_dict(row[9]),
    )


def timer_of(row: Sequence[Any]) -> Timer:
    return Timer(row[0], row[1], row[2], row[3], utc(row[4]))


def event_of(row: Sequence[Any]) -> Event:
    return Event(
        id=row[0],
        workflow_name=row[1],
        foreign_id=row[2],
        run_id=row[3],
        status=row[4],
        run_state=RunState(row[5]),
        version=row[6],
        created_at=utc(row[7]),
    )


def timer_params(timers: Sequence[Timer]) -> dict[str, Any]:
    """Timers as five parallel arrays (one parameter each, whatever their number)."""
    return {
        "t_workflow": [t.workflow_name for t in timers],
        "t_run": [t.run_id for t in timers],
        "t_status": [int(t.status) for t in timers],
        "t_kind": [t.kind for t in timers],
        "t_fire": [aware(t.fire_at) for t in timers],
    }


def filter_params(workflow_name: str, flt: RunFilter) -> dict[str, Any]:
    """The named parameters of a run filter's WHERE clause (see Queries.list_runs)."""
    return {
        "workflow_name": workflow_name,
        "foreign_id": list(flt.foreign_ids or ()),
        "foreign_id_prefix": flt.foreign_id_prefix,
        "status": sorted(flt.statuses or ()),
        "run_state": sorted(int(s) for s in flt.run_states or ()),
        "created_after": flt.created_after,
        "created_before": flt.created_before,
    }
