"""How the command line shows records: tables, one line per change, JSON.

Records are formatted from their JSON form (the gateway's, see docs/gateway.md), so the
store commands and ``watch`` (which reads the gateway) print alike.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from actorflow._model.record import Record
from actorflow.gateway.protocol import record_to_json
from actorflow.workflow import Workflow


def to_json(workflow: Workflow[Any, Any], record: Record[Any, Any]) -> dict[str, Any]:
    """A record as the JSON object the gateway sends."""
    return record_to_json(record, workflow.object_type)


def dumps(value: object, *, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=indent is not None)


_UNSAFE = [
    *range(0x20),  # C0 controls: ESC starts terminal sequences; CR and LF break lines
    *range(0x7F, 0xA0),  # DEL and the C1 controls (0x9b is a one-byte CSI)
    0x2028,  # line and paragraph separators
    0x2029,
    *range(0x202A, 0x202F),  # bidirectional embeddings and overrides
    *range(0x2066, 0x206A),  # bidirectional isolates
]
_ESCAPES = str.maketrans({c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _UNSAFE})


def shown(value: object) -> str:
    """Stored text (a foreign id, a reason, an error message) as a terminal may show it:
    control characters, line separators and bidirectional controls written as escapes
    (``\\x1b``), so what a client stored can neither drive the terminal (colours, a
    cleared screen, a moved cursor) nor break the line it is printed on."""
    return str(value).translate(_ESCAPES)


def _time(text: object) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS.mmm`` in UTC (the stores keep UTC)."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _clock_time(text: object) -> str:
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _note(record: Mapping[str, Any]) -> str:
    meta = record.get("meta") or {}
    parts = []
    if meta.get("run_state_reason"):
        parts.append(str(meta["run_state_reason"]))
    if meta.get("error_message") and meta.get("error_message") != meta.get("run_state_reason"):
        parts.append(f"error: {meta['error_message']}")
    return shown("; ".join(" ".join(p.split()) for p in parts))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(widths[i]) for i, c in enumerate(cells[:-1])]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def runs_table(records: Sequence[Mapping[str, Any]]) -> str:
    """``runs list``: one line per run."""
    rows = [
        [
            shown(r["run_id"]),
            shown(r["foreign_id"]),
            shown(r["status_name"]),
            str(r["run_state"]),
            str(r["version"]),
            _time(r["updated_at"]),
            _note(r),
        ]
        for r in records
    ]
    headers = ["RUN ID", "FOREIGN ID", "STATUS", "RUN STATE", "VERSION", "UPDATED (UTC)", "NOTE"]
    return table(headers, rows)


def history_table(records: Sequence[Mapping[str, Any]]) -> str:
    """``runs history``: one line per stored version."""
    rows = [
        [
            str(r["version"]),
            _time(r["updated_at"]),
            f"{r['status_name']} ({r['status']})",
            str(r["run_state"]),
            str((r.get("meta") or {}).get("definition") or "-"),
            _note(r),
        ]
        for r in records
    ]
    return table(["VERSION", "STORED AT (UTC)", "STATUS", "RUN STATE", "DEFINITION", "NOTE"], rows)


def show_record(record: Mapping[str, Any]) -> str:
    """``runs show``: one run, field by field, with its object as JSON."""
    meta = record.get("meta") or {}
    fields = [
        ("workflow", record["workflow_name"]),
        ("foreign id", record["foreign_id"]),
        ("run id", record["run_id"]),
        ("status", f"{record['status_name']} ({record['status']})"),
        ("run state", record["run_state"]),
        ("version", record["version"]),
        ("created at", _time(record["created_at"]) + " UTC"),
        ("updated at", _time(record["updated_at"]) + " UTC"),
    ]
    if meta.get("run_state_reason"):
        fields.append(("reason", meta["run_state_reason"]))
    if meta.get("definition"):
        fields.append(("definition", meta["definition"]))
    if meta.get("error_count"):
        fields.append(("errors", meta["error_count"]))
    if meta.get("error_message"):
        fields.append(("last error", meta["error_message"]))
    width = max(len(name) for name, _ in fields)
    lines = [f"{name.ljust(width)}  {shown(value)}" for name, value in fields]
    obj = json.dumps(record.get("object"), indent=2, ensure_ascii=False, sort_keys=True)
    lines.append("object")
    lines.extend("  " + shown(line) for line in obj.splitlines())
    return "\n".join(lines)


def change_line(record: Mapping[str, Any]) -> str:
    """One line for a change seen live (``watch``)."""
    note = _note(record)
    line = (
        f"{_clock_time(record['updated_at'])}  {shown(record['workflow_name'])}  "
        f"{shown(record['foreign_id'])}  v{record['version']}  {shown(record['status_name'])}  "
        f"{record['run_state']}  run {shown(record['run_id'])}"
    )
    return f"{line}  ({note})" if note else line


def short(record: Mapping[str, Any]) -> str:
    """A run's state in a few words (after trigger, callback, pause...)."""
    note = _note(record)
    line = (
        f"run {shown(record['run_id'])} ({shown(record['workflow_name'])} "
        f"{shown(record['foreign_id'])}): "
        f"{shown(record['status_name'])}, {record['run_state']}, version {record['version']}"
    )
    return f"{line} ({note})" if note else line


@contextlib.contextmanager
def progress_bar(
    label: str, total: int | None = None, *, quiet: bool = False
) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (rich, from the ``actorflow[cli]`` extra; a plain count
    without it); yields ``advance(n)``."""
    if quiet:
        yield lambda n: None
        return
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    except ImportError:
        done = [0]

        def count(n: int) -> None:
            done[0] += n
            if done[0] % 1000 == 0:
                print(f"{label}: {done[0]} runs", file=sys.stderr, flush=True)

        yield count
        print(f"{label}: {done[0]} runs", file=sys.stderr, flush=True)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
