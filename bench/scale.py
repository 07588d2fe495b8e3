"""Scale: millions of parked runs (``python -m bench --scale``).

For each size N, a SQLite file is filled with N runs parked at a status that waits for a
callback, each with a 30-day timeout, created with ``trigger_many`` (the callback leads to
a status with a step, so recovery at start has runs to look for among them). Then a new process
opens the file and starts the workflow (a restart), and reports:

- restart: process start to ``nursery.start(workflow.run)`` returned (and the part of it
  inside ``Workflow.run``);
- peak RSS of that process, and RSS once ready;
- the longest stall of the trio loop (the longest single task step) during start and the
  seconds after it;
- callback latency (callback -> next status stored), p50 and p99 over a sample of runs;
- a timer due now: a run whose timer came due while no worker ran (fired after ready), and
  one triggered after ready with a timer 100 ms away (its lateness);
- disk per run (file size after close / N), split by table and index when SQLite has dbstat;
- trigger_many beside two baselines of the same run: `trigger` in a loop, and plain sqlite3
  writing the same rows into the same schema the fastest plain way (multi-row INSERTs, the
  floor for a store on SQLite).

Every child is a fresh interpreter, so RSS is that of a worker alone. The growth exponent
between sizes is ``log(v2 / v1) / log(N2 / N1)``: 0 is flat, 1 is linear.
"""

from __future__ import annotations

import enum
import itertools
import json
import math
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import trio

import actorflow as af

SIZES = (10_000, 100_000, 1_000_000)
CALLBACKS = 200
BASELINE_TRIGGERS = 5_000
BASELINE_INSERTS = 100_000
ROOT = Path(__file__).resolve().parent.parent


class Order(enum.IntEnum):
    PARKED = 1
    PAID = 2
    EXPIRED = 3
    ARCHIVED = 4


@attrs.define
class Parked:
    due_in: float = 30 * 86400.0
    """Seconds from entering PARKED to its timeout."""


def workflow(store: af.Store) -> af.Workflow[Parked, Order]:
    builder = af.Builder("parked", Parked, Order)

    async def paid(run: af.Run[Parked, Order], payload: bytes) -> Order:
        return Order.PAID

    async def expired(run: af.Run[Parked, Order], now: datetime) -> Order:
        return Order.EXPIRED

    def expiry(run: af.Run[Parked, Order], now: datetime) -> datetime:
        return now + timedelta(seconds=run.object.due_in)

    async def archive(run: af.Run[Parked, Order]) -> Order:
        return Order.ARCHIVED

    builder.add_callback(Order.PARKED, paid, to=Order.PAID)
    builder.add_timeout(Order.PARKED, expiry, expired, to=Order.EXPIRED)
    # A step elsewhere: recovery at start looks for runs at PAID among the parked ones.
    builder.add_step(Order.PAID, archive, to=Order.ARCHIVED)
    return builder.build(store)


# -- the children --------------------------------------------------------------------------


async def _create(path: str, count: int) -> dict[str, Any]:
    store = af.SQLiteStore(path)
    flow = workflow(store)
    started, cpu = time.perf_counter(), time.process_time()
    chunk = 100_000
    for first in range(0, count, chunk):
        results = await flow.trigger_many(f"f{i}" for i in range(first, min(first + chunk, count)))
        assert all(isinstance(r, str) for r in results), results[:3]
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    # One run whose timer comes due while no worker runs: it must fire at once on restart.
    await flow.trigger("due-while-down", initial=Parked(due_in=0.0))
    await store.aclose()
    # CPU seconds of the process (all its threads): less disturbed by other processes.
    return {"trigger_many_per_s": count / seconds, "trigger_many_cpu_per_s": count / cpu}


async def _baseline(path: str, count: int) -> dict[str, Any]:
    """``trigger`` in a loop, the way without trigger_many, on a file of its own."""
    store = af.SQLiteStore(path)
    flow = workflow(store)
    started = time.perf_counter()
    for i in range(count):
        await flow.trigger(f"b{i}")
    seconds = time.perf_counter() - started
    await store.aclose()
    return {"trigger_loop_per_s": count / seconds}


def _raw_inserts(path: str, count: int) -> dict[str, Any]:
    """The floor: plain sqlite3 writing rows like trigger_many's (a run, its first history
    row and its timer) into the same schema, the fastest plain way we know: 500 runs per
    transaction, 100 rows per multi-row INSERT, history rows copied from the runs."""
    from actorflow.stores.sqlite import schema

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for migration in schema.MIGRATIONS:
        for statement in migration:
            conn.execute(statement)
    columns = (
        "workflow_name, foreign_id, run_id, status, run_state, object, version, created_at, "
        "updated_at, meta"
    )
    group = 100
    insert_runs = f"INSERT INTO runs ({columns}) VALUES " + ", ".join(
        ["(" + ", ".join("?" * 10) + ")"] * group
    )
    copy_history = (
        f"INSERT INTO history ({columns}) SELECT {columns} FROM runs WHERE seq > ? ORDER BY seq"
    )
    insert_timers = "INSERT INTO timers (workflow_name, run_id, status, kind, fire_at) VALUES " + (
        ", ".join(["(?, ?, ?, ?, ?)"] * group)
    )
    now = datetime.now(UTC)
    created, due = now.isoformat(timespec="microseconds"), (now + timedelta(days=30)).isoformat()
    meta = json.dumps({"status_description": "PARKED", "definition": "0" * 16})
    obj = json.dumps({"due_in": 30 * 86400.0})
    started, cpu = time.perf_counter(), time.process_time()
    last = 0
    for first in range(0, count, 500):
        runs = [
            (
                "parked",
                f"f{i}",
                f"{time.time_ns():020x}{i:012x}",
                1,
                1,
                obj,
                1,
                created,
                created,
                meta,
            )
            for i in range(first, min(first + 500, count))
        ]
        conn.execute("BEGIN IMMEDIATE")
        for start in range(0, len(runs), group):
            part = runs[start : start + group]
            if len(part) == group:
                conn.execute(insert_runs, list(itertools.chain.from_iterable(part)))
                conn.execute(
                    insert_timers,
                    [v for run in part for v in ("parked", run[2], 1, "timeout:0", due)],
                )
            else:
                conn.executemany(
                    f"INSERT INTO runs ({columns}) VALUES ({', '.join('?' * 10)})", part
                )
                conn.executemany(
                    "INSERT INTO timers (workflow_name, run_id, status, kind, fire_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [("parked", run[2], 1, "timeout:0", due) for run in part],
                )
        conn.execute(copy_history, (last,))
        last += len(runs)
        conn.execute("COMMIT")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    return {"raw_insert_per_s": count / seconds, "raw_insert_cpu_per_s": count / cpu}


class _Stalls(trio.abc.Instrument):
    """The longest single task step: how long the loop was held by one task."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_cpu = 0.0
        self.where = ""
        self._began = 0.0
        self._began_cpu = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._began = time.perf_counter()
        self._began_cpu = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.perf_counter() - self._began
        if took > self.longest:
            self.longest, self.where = took, task.name
        # CPU time of the step: what the loop was held for by our code, without the time
        # the operating system gave the CPU to other processes meanwhile.
        self.longest_cpu = max(self.longest_cpu, time.thread_time() - self._began_cpu)


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


async def _restart(path: str, count: int, launched: float, stalls: _Stalls) -> dict[str, Any]:
    entered = time.time()
    store = af.SQLiteStore(path)
    flow = workflow(store)
    figures: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        before = time.perf_counter()
        await nursery.start(flow.run)
        ready = time.time()
        figures["start_s"] = time.perf_counter() - before
        figures["restart_s"] = ready - launched
        figures["in_process_ms"] = (ready - entered) * 1000
        usage = resource.getrusage(resource.RUSAGE_SELF)
        figures["restart_cpu_s"] = usage.ru_utime + usage.ru_stime
        figures["rss_ready_mb"] = _rss_mb()
        due = await flow.latest("due-while-down")
        with trio.fail_after(30):
            fired = await flow.await_status("due-while-down", due.run_id, Order.EXPIRED)
        figures["overdue_fired_after_ready_ms"] = (fired.updated_at.timestamp() - ready) * 1000
        # Callbacks on parked runs spread over the file.
        step = max(count // CALLBACKS, 1)
        latencies = []
        for i in range(0, count, step)[:CALLBACKS]:
            began = time.perf_counter()
            record = await flow.callback(f"f{i}", Order.PARKED, b"paid")
            latencies.append(time.perf_counter() - began)
            assert record is not None and record.status is Order.PAID
        latencies.sort()
        figures["callback_p50_ms"] = latencies[len(latencies) // 2] * 1000
        figures["callback_p99_ms"] = latencies[int(len(latencies) * 0.99) - 1] * 1000
        # A timer armed now, 100 ms away, among all those parked ones.
        run_id = await flow.trigger("fresh", initial=Parked(due_in=0.1))
        armed = time.perf_counter()
        with trio.fail_after(30):
            await flow.await_status("fresh", run_id, Order.EXPIRED)
        figures["fresh_timer_late_ms"] = (time.perf_counter() - armed - 0.1) * 1000
        await trio.sleep(1.0)  # the timer loop and recovery settle
        flow.stop()
    await store.aclose()
    figures["longest_stall_ms"] = stalls.longest * 1000
    figures["longest_stall_cpu_ms"] = stalls.longest_cpu * 1000
    figures["longest_stall_task"] = stalls.where
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000
    return figures


def _disk(path: str, count: int) -> dict[str, Any]:
    size = sum(p.stat().st_size for p in Path(path).parent.glob(Path(path).name + "*"))
    figures: dict[str, Any] = {"disk_per_run_b": size / count}
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
    except sqlite3.Error:
        rows = []
    finally:
        conn.close()
    tables = {"runs": "runs", "history": "history", "timers": "timers"}
    split: dict[str, float] = {}
    for name, pages in rows:
        owner = next((t for t in tables if name == t or name.startswith(t + "_")), None)
        if owner is None and name.startswith("sqlite_autoindex_"):
            owner = name.split("_")[2]
        if owner is not None:
            split[owner] = split.get(owner, 0.0) + pages / count
    figures["disk_split_b"] = split
    return figures


def _child(argv: list[str]) -> None:
    what, path, count = argv[0], argv[1], int(argv[2])
    if what == "create":
        print(json.dumps(trio.run(_create, path, count)))
    elif what == "raw":
        print(json.dumps(_raw_inserts(path, count)))
    elif what == "baseline":
        print(json.dumps(trio.run(_baseline, path, count)))
    elif what == "restart":
        stalls = _Stalls()
        figures = trio.run(_restart, path, count, float(argv[3]), stalls, instruments=[stalls])
        print(json.dumps(figures))
    elif what == "import":
        print(json.dumps({"import_s": time.time() - float(argv[3])}))
    elif what == "disk":
        print(json.dumps(_disk(path, count)))


# -- the parent ----------------------------------------------------------------------------


def _run_child(*args: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    launched = time.time()
    argv = [sys.executable, "-m", "bench.scale", *args]
    if args[0] in ("restart", "import"):
        argv.append(repr(launched))
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.scale {' '.join(args)} failed:\n{done.stderr}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def measure(sizes: tuple[int, ...] = SIZES) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="actorflow-scale-") as tmp:
        # The baselines at no more than the largest size (a quick run stays quick).
        triggers, inserts = min(BASELINE_TRIGGERS, max(sizes)), min(BASELINE_INSERTS, max(sizes))
        baseline = _run_child("baseline", str(Path(tmp) / "baseline.db"), str(triggers))
        baseline.update(_run_child("raw", str(Path(tmp) / "raw.db"), str(inserts)))
        # The same interpreter start and imports, without opening or starting anything.
        imports = sorted(_run_child("import", "-", "0")["import_s"] for _ in range(3))
        baseline["import_s"] = imports[1]
        print(f"scale: trigger in a loop: {baseline['trigger_loop_per_s']:,.0f} runs/s")
        for count in sizes:
            path = str(Path(tmp) / f"parked-{count}.db")
            figures: dict[str, Any] = {"runs": count, **baseline}
            figures.update(_run_child("create", path, str(count)))
            figures.update(_run_child("disk", path, str(count)))
            figures.update(_run_child("restart", path, str(count)))
            print(f"scale: {count:,} parked runs: {json.dumps(figures)}")
            results.append(figures)
            for leftover in Path(tmp).glob(f"parked-{count}.db*"):
                leftover.unlink()
    return results


GROWING = (
    ("restart_s", "restart to ready (process start to nursery.start returned)", "s"),
    ("restart_cpu_s", "restart: CPU time (user + system) of the process until ready", "s"),
    ("import_s", "baseline: process start to `import actorflow` done, same run", "s"),
    ("in_process_ms", "of which after the imports (SQLiteStore(), build, run)", "ms"),
    ("peak_rss_mb", "peak RSS", "MB"),
    ("rss_ready_mb", "RSS when ready", "MB"),
    ("longest_stall_ms", "longest loop stall (wall time of one task step)", "ms"),
    ("longest_stall_cpu_ms", "longest loop stall (CPU time of one task step)", "ms"),
    ("callback_p50_ms", "callback -> next status, p50", "ms"),
    ("callback_p99_ms", "callback -> next status, p99", "ms"),
    ("overdue_fired_after_ready_ms", "overdue timer fired after ready", "ms"),
    ("fresh_timer_late_ms", "new 100 ms timer fired late by", "ms"),
    ("disk_per_run_b", "disk per parked run", "B"),
    ("trigger_many_per_s", "trigger_many", "runs/s"),
    ("trigger_many_cpu_per_s", "trigger_many per CPU second of the process", "runs/s"),
)


def _exponent(small: dict[str, Any], large: dict[str, Any], key: str) -> str:
    a, b = small[key], large[key]
    if a <= 0 or b <= 0:
        return ""
    return f"{math.log(b / a) / math.log(large['runs'] / small['runs']):+.2f}"


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one column per size, then the growth exponents."""
    sizes = [f"{r['runs']:,}" for r in results]
    pairs = list(itertools.pairwise(results))
    head = ["figure", *sizes, *(f"growth {a['runs']:,}->{b['runs']:,}" for a, b in pairs)]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for key, name, unit in GROWING:
        values = [r[key] for r in results]
        shown = [f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}" for v in values]
        growth = [_exponent(a, b, key) for a, b in pairs]
        lines.append(f"| {name} ({unit}) | " + " | ".join(shown + growth) + " |")
    baseline = results[0]["trigger_loop_per_s"]
    ratios = " | ".join(f"{r['trigger_many_per_s'] / baseline:.1f}x" for r in results)
    lines.append(f"| trigger_many / trigger in a loop | {ratios} |" + " |" * len(pairs))
    for key, what in (("", "wall"), ("cpu_", "CPU")):
        raw = results[0][f"raw_insert_{key}per_s"]
        ratios = " | ".join(f"{r[f'trigger_many_{key}per_s'] / raw:.2f}" for r in results)
        lines.append(
            f"| trigger_many / plain sqlite3 inserts of the same rows ({what}) | {ratios} |"
            + " |" * len(pairs)
        )
    for part in ("runs", "history", "timers"):
        values = [r["disk_split_b"].get(part, 0.0) for r in results]
        if any(values):
            shown = " | ".join(f"{v:,.0f}" for v in values)
            lines.append(f"| of which {part} (+ indexes) (B) | {shown} |" + " |" * len(pairs))
    return "\n".join(lines)


def main(sizes: tuple[int, ...] = SIZES) -> str:
    started = time.perf_counter()
    results = measure(sizes)
    text = table(results)
    print()
    print(text)
    print(f"\n({time.perf_counter() - started:.0f} s, {datetime.now(UTC):%Y-%m-%d})")
    return text


if __name__ == "__main__":
    _child(sys.argv[1:])
