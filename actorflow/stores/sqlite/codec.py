"""How SQLiteStore stores records and timers: the row codecs (records to statement
parameters and back, instants as sortable text) and the statements that write rows."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from actorflow._model.errors import InvalidArgument
from actorflow._model.record import Meta, RawRecord, Timer
from actorflow._model.run_state import RunState

RECORD_COLUMNS: Final = (
    "workflow_name, foreign_id, run_id, status, run_state, object, version, created_at, "
    "updated_at, meta"
)
INSERT_RUN: Final = f"INSERT INTO runs ({RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_HISTORY: Final = (
    f"INSERT INTO history ({RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# foreign_id is checked, not set: assigning an indexed column rewrites its index entry.
UPDATE_RUN: Final = (
    "UPDATE runs SET status = ?, run_state = ?, object = ?, version = ?, created_at = ?, "
    "updated_at = ?, meta = ? "
    "WHERE run_id = ? AND workflow_name = ? AND foreign_id = ? AND version = ?"
)
INSERT_TIMER: Final = (
    "INSERT INTO timers (workflow_name, run_id, status, kind, fire_at) VALUES (?, ?, ?, ?, ?)"
)
ROWS_PER_INSERT: Final = 500
"""Rows of one multi-row INSERT of create_runs at most (5,000 parameters: far below
SQLite's limit of 32,766). Few large statements: the writer thread takes the GIL back
after each one (see ``connection.quick_gil_handoff``)."""
RUNS_TABLE: Final = f"runs ({RECORD_COLUMNS})"
TIMERS_TABLE: Final = "timers (workflow_name, run_id, status, kind, fire_at)"


@functools.lru_cache(maxsize=32)
def insert_rows_sql(table: str, width: int, rows: int) -> str:
    """``INSERT INTO <table> VALUES`` with ``rows`` rows of ``width`` parameters each."""
    row = "(" + ", ".join("?" * width) + ")"
    return f"INSERT INTO {table} VALUES " + ", ".join([row] * rows)


COPY_HISTORY: Final = (
    f"INSERT INTO history ({RECORD_COLUMNS}) SELECT {RECORD_COLUMNS} FROM runs "
    "WHERE seq > ? ORDER BY seq"
)
"""The first history rows of the runs created after a seq, copied from them."""

Params = tuple[Any, ...]
"""The parameters of one statement."""


def to_text(moment: datetime) -> str:
    """The stored text of an instant: UTC, ISO 8601 to the microsecond (sorts by time)."""
    if type(moment) is datetime and moment.tzinfo is UTC:
        return _utc_text(moment)
    offset = moment.utcoffset() if isinstance(moment, datetime) else None
    if offset is None:
        raise InvalidArgument(f"datetimes must be timezone-aware (UTC), not {moment!r}")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@functools.lru_cache(maxsize=256)
def _utc_text(moment: datetime) -> str:
    """trigger_many: one created_at and one fire_at for many runs. (UTC only: equal local
    times may be different instants, as on either side of a daylight-saving fold.)"""
    return moment.isoformat(timespec="microseconds")


def from_text(text: str) -> datetime:
    return datetime.fromisoformat(text)


@functools.lru_cache(maxsize=1024)
def meta_text(meta: Meta) -> str:
    """The stored Meta: members at their defaults (empty text, zero) are left out, as
    :meth:`Meta.from_dict` gives them back (a parked run's versions are 50 bytes
    smaller each)."""
    data = {name: value for name, value in meta.to_dict().items() if value not in ("", 0)}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=1024)
def meta_from_text(text: str) -> Meta:
    return Meta.from_dict(json.loads(text))


def record_params(record: RawRecord) -> Params:
    created = to_text(record.created_at)
    updated = created if record.updated_at is record.created_at else to_text(record.updated_at)
    return _row(record, created, updated, meta_text(record.meta))


def _row(record: RawRecord, created: str, updated: str, meta: str) -> Params:
    """The parameters of ``INSERT_RUN``/``INSERT_HISTORY`` (``RECORD_COLUMNS``)."""
    return (
        record.workflow_name,
        record.foreign_id,
        record.run_id,
        int(record.status),
        int(record.run_state),
        record.object,
        record.version,
        created,
        updated,
        meta,
    )


CreateRow = tuple[RawRecord, Params, list[Params]]
"""A new run as create_runs stores it: its record, its row, its timers' rows."""


def create_rows(items: Iterable[tuple[RawRecord, Sequence[Timer]]]) -> list[CreateRow]:
    """create_runs' rows. A backfill's runs share their instants and Meta: each distinct
    one is converted to text once, not once per run."""
    texts: dict[datetime, str] = {}
    meta: Meta | None = None
    meta_json = ""
    rows: list[CreateRow] = []
    for record, timers in items:
        at = _text(record.created_at, texts)
        updated = at if record.updated_at is record.created_at else to_text(record.updated_at)
        if record.meta is not meta:
            meta = record.meta
            meta_json = meta_text(meta)
        rows.append(
            (record, _row(record, at, updated, meta_json), timer_rows(record, timers, texts))
        )
    return rows


def decode_record(row: Any) -> RawRecord:
    workflow_name, foreign_id, run_id, status, run_state, obj, version, created, updated, meta = row
    return RawRecord(
        workflow_name=workflow_name,
        foreign_id=foreign_id,
        run_id=run_id,
        status=status,
        run_state=RunState(run_state),
        object=obj,
        version=version,
        created_at=from_text(created),
        updated_at=from_text(updated),
        meta=meta_from_text(meta),
    )


def timer_rows(
    record: RawRecord, timers: Sequence[Timer], texts: dict[datetime, str] | None = None
) -> list[Params]:
    """The rows of a run's timers; ``texts`` keeps instants already converted (a chunk
    of create_runs)."""
    rows = []
    for timer in timers:
        if timer.run_id != record.run_id or timer.workflow_name != record.workflow_name:
            raise InvalidArgument(
                f"timer {timer.kind!r} belongs to run {timer.run_id} of workflow "
                f"{timer.workflow_name!r}, not to run {record.run_id} of workflow "
                f"{record.workflow_name!r}"
            )
        fire_at = to_text(timer.fire_at) if texts is None else _text(timer.fire_at, texts)
        rows.append((timer.workflow_name, timer.run_id, int(timer.status), timer.kind, fire_at))
    return rows


def _text(moment: datetime, texts: dict[datetime, str]) -> str:
    """``to_text(moment)``, converted once per distinct instant of ``texts``."""
    text = texts.get(moment)
    if text is None:
        text = texts[moment] = to_text(moment)
    return text
