"""The web console's queries on a large SQLite store: a page of 50 out of 1,000,000 runs.

The console lists runs newest first, 50 to a page, filtered by status, run state, foreign
id (prefix or several ids) and creation time, pages on with keyset pagination, and counts
runs by status and run state. This measures each of those through ``SQLiteStore`` (the
real code path) on a file of ``--runs`` runs (plus a tenth as many of another workflow,
which every query must skip), against a baseline measured in the same run on the same
file: plain ``sqlite3`` reading the newest 50 rows of one workflow.

    python -m bench.console_queries                  # 1,000,000 runs (builds the file once)
    python -m bench.console_queries --runs 100000 --db /tmp/console.db

The target is < 50 ms for a page. Each figure is the median of ``--repeat`` calls after
one warm-up call.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

import actorflow as af
from actorflow.stores.filters import RunFilter

WORKFLOW = "orders"
OTHER = "refunds"
DAYS = 30
START = datetime(2026, 1, 1, tzinfo=UTC)
PAGE = 50

# Where runs are, as most production workflows look: nearly all finished.
# (status, run_state, share per 1000)
MIX = [
    (5, af.RunState.COMPLETED, 880),
    (6, af.RunState.COMPLETED, 30),
    (2, af.RunState.RUNNING, 50),
    (3, af.RunState.RUNNING, 20),
    (3, af.RunState.PAUSED, 12),
    (2, af.RunState.CANCELLED, 5),
    (4, af.RunState.PAUSED, 3),
]


def _mix() -> list[tuple[int, af.RunState]]:
    table: list[tuple[int, af.RunState]] = []
    for status, run_state, share in MIX:
        table.extend([(status, run_state)] * share)
    assert len(table) == 1000
    return table


def _text(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def _rows(workflow: str, count: int, offset: int) -> Iterator[tuple[Any, ...]]:
    mix = _mix()
    span = timedelta(days=DAYS).total_seconds()
    meta = '{"run_state_reason":"","status_description":"","error_count":0,"error_message":""}'
    for i in range(count):
        status, run_state = mix[(i * 7919) % 1000]
        created = START + timedelta(seconds=span * i / count)
        yield (
            f"{workflow[:3]}{offset + i:012x}",
            workflow,
            f"order-{i:07d}",
            status,
            int(run_state),
            '{"amount_cents": 1234, "items": ["keyboard"]}',
            4,
            _text(created),
            _text(created + timedelta(seconds=5)),
            meta,
        )


async def build(path: Path, runs: int) -> None:
    """Create the store's schema, then bulk-load the runs with plain sqlite3."""
    store = af.SQLiteStore(path)
    await store.count_runs(WORKFLOW)  # opens the file: schema at the latest version
    await store.aclose()
    conn = sqlite3.connect(path)
    try:
        sql = (
            "INSERT INTO runs (run_id, workflow_name, foreign_id, status, run_state, object, "
            "version, created_at, updated_at, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        with conn:
            # The other workflow's runs are interleaved with ours, as in a shared store.
            conn.executemany(sql, _rows(OTHER, runs // 20, 0))
            conn.executemany(sql, _rows(WORKFLOW, runs, runs))
            conn.executemany(sql, _rows(OTHER, runs // 20, runs * 3))
    finally:
        conn.close()


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def _time(call: Callable[[], Awaitable[object]], repeat: int) -> float:
    await call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return _median_ms(samples)


def _baseline(path: Path, repeat: int) -> float:
    conn = sqlite3.connect(path)
    try:
        sql = f"SELECT * FROM runs WHERE workflow_name = ? ORDER BY seq DESC LIMIT {PAGE}"
        conn.execute(sql, (WORKFLOW,)).fetchall()
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            conn.execute(sql, (WORKFLOW,)).fetchall()
            samples.append(time.perf_counter() - started)
        return _median_ms(samples)
    finally:
        conn.close()


_DAY = timedelta(days=1)
_TEN_DAYS_AGO = START + timedelta(days=DAYS - 10)
_ONE_DAY = {"created_after": _TEN_DAYS_AGO, "created_before": _TEN_DAYS_AGO + _DAY}
_P, _R = af.RunState.PAUSED, af.RunState.RUNNING


def _queries(runs: int, deep_after: str) -> list[tuple[str, dict[str, Any]]]:
    """The console's list queries: (what, filters)."""
    several = [f"order-{i:07d}" for i in range(0, runs, max(1, runs // 50))][:50]
    return [
        ("newest page, no filter", {}),
        ("a page in the middle (keyset after=)", {"after": deep_after}),
        ("run state PAUSED (1.5%)", {"run_state": _P}),
        ("status 4 and PAUSED (0.3%)", {"status": 4, "run_state": _P}),
        ("run state RUNNING or PAUSED", {"run_state": [_R, _P]}),
        ("foreign id prefix, 10% of runs", {"foreign_id_prefix": "order-09"}),
        ("foreign id prefix, 100 runs", {"foreign_id_prefix": f"order-{runs // 2:07d}"[:-2]}),
        ("50 foreign ids", {"foreign_id": several}),
        ("created in one day, 10 days ago", _ONE_DAY),
        (
            "created in the last hour",
            {"created_after": START + timedelta(days=DAYS) - timedelta(hours=1)},
        ),
        ("created before the first day ended", {"created_before": START + _DAY}),
        ("created in the first 5 days (wide, far back)", {"created_before": START + 5 * _DAY}),
        ("PAUSED, created in one day", {"run_state": _P, **_ONE_DAY}),
    ]


_COUNTS: list[tuple[str, dict[str, Any]]] = [
    ("count_runs, every run", {}),
    ("count_runs, one day", _ONE_DAY),
    ("count_runs, PAUSED", {"run_state": _P}),
]


async def measure(path: Path, runs: int, repeat: int) -> list[tuple[str, float, int]]:
    """(what, median ms, rows answered) for each console query."""
    store = af.SQLiteStore(path)
    try:
        middle = await store.list_runs(
            WORKFLOW, RunFilter.make(foreign_id=f"order-{runs // 2:07d}"), limit=1
        )
        figures: list[tuple[str, float, int]] = []
        for what, filters in _queries(runs, middle[0].run_id):
            found = await _page(store, filters)

            async def page(filters: dict[str, Any] = filters) -> object:
                return await _page(store, filters)

            figures.append((f"page of {PAGE}: {what}", await _time(page, repeat), len(found)))
        for what, filters in _COUNTS:
            total = sum((await store.count_runs(WORKFLOW, RunFilter.make(**filters))).values())

            async def count(filters: dict[str, Any] = filters) -> object:
                return await store.count_runs(WORKFLOW, RunFilter.make(**filters))

            figures.append((what, await _time(count, max(3, repeat // 4)), total))
        return figures
    finally:
        await store.aclose()


async def _page(store: af.SQLiteStore, filters: dict[str, Any]) -> list[Any]:
    """A newest-first page of the runs ``filters`` match (``after`` is a paging argument)."""
    paging = {"after": filters["after"]} if "after" in filters else {}
    flt = RunFilter.make(**{k: v for k, v in filters.items() if k != "after"})
    return await store.list_runs(WORKFLOW, flt, limit=PAGE, descending=True, **paging)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--db", type=Path, help="reuse (or build) this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="actorflow-bench-") as directory:
        path = args.db or Path(directory) / "console.db"
        if not path.exists():
            started = time.perf_counter()
            trio.run(build, path, args.runs)
            print(f"built {args.runs:,} runs in {time.perf_counter() - started:.1f} s: {path}")
        baseline = _baseline(path, args.repeat)
        figures = trio.run(measure, path, args.runs, args.repeat)
    print(f"\n{args.runs:,} runs of {WORKFLOW!r} (+{args.runs // 10:,} of another workflow)")
    print(f"baseline, raw sqlite3 newest {PAGE} rows: {baseline:.2f} ms\n")
    print("| query | median ms | x baseline | rows |\n|---|---:|---:|---:|")
    for what, ms, rows in figures:
        print(f"| {what} | {ms:.2f} | {ms / baseline:.1f}x | {rows:,} |")


if __name__ == "__main__":
    main()
