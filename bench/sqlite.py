"""The embedded store end to end, against plain sqlite3 measured in the same run.

(a) raw: plain ``sqlite3`` on our schema (the same DDL), WAL + synchronous=NORMAL, one
    transition = ``UPDATE runs`` + ``INSERT INTO history``; one per commit and 50 per commit
    (the batched rate is measured before and after (b), and its mean is the baseline: a
    shared machine's speed drifts within a minute).
(b) throughput: 10,000 runs of a 3-step workflow with no-op steps, all triggered at once,
    timed from the first trigger to the last completion; 3 transitions per run.
(c) latency: 200 runs triggered one at a time at light load, trigger to completion.
(d) memory: 100,000 runs parked at a status that waits on a callback, in a child process.

    python -m bench            # everything, with the table
    python -m bench.sqlite --parked 100000 PATH   # (d) alone, prints JSON
"""

from __future__ import annotations

import enum
import gc
import json
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry

import actorflow as af
from actorflow.stores.filters import RunFilter
from actorflow.stores.sqlite import schema as _sqlite_schema
from actorflow.stores.sqlite.store import SQLiteStats

RAW_BATCH = 50
"""Transitions per transaction in the batched raw baseline."""
GC_TUNED = 50_000
"""A first-generation threshold an application with thousands of runs in flight may set."""


@attrs.frozen
class Scale:
    raw_single: int = 5_000
    raw_batched: int = 30_000
    runs: int = 10_000
    latency_runs: int = 200
    parked: int = 100_000


FULL = Scale()
QUICK = Scale(raw_single=1_000, raw_batched=10_000, runs=1_000, latency_runs=30, parked=5_000)


class Three(enum.IntEnum):
    A = 1
    B = 2
    C = 3
    D = 4


@attrs.define
class Empty:
    pass


def three_steps(
    store: af.Store, name: str = "bench3", metrics: Any = False
) -> af.Workflow[Empty, Three]:
    """A -> B -> C -> D with no-op steps (metrics off unless ``metrics`` is a registry)."""
    builder = af.Builder(name, Empty, Three)

    @builder.step(Three.A, to=Three.B)
    async def a(run: af.Run[Empty, Three]) -> Three:
        return Three.B

    @builder.step(Three.B, to=Three.C)
    async def b(run: af.Run[Empty, Three]) -> Three:
        return Three.C

    @builder.step(Three.C, to=Three.D)
    async def c(run: af.Run[Empty, Three]) -> Three:
        return Three.D

    return builder.build(store, metrics=metrics)


class Parked(enum.IntEnum):
    WAITING = 1
    DONE = 2


def parked_workflow(store: af.Store, *, timeout: bool) -> af.Workflow[Empty, Parked]:
    """WAITING waits on a callback (and, with ``timeout``, a one-day timeout)."""
    builder = af.Builder("parked", Empty, Parked)

    async def paid(run: af.Run[Empty, Parked], payload: bytes) -> Parked:
        return Parked.DONE

    builder.add_callback(Parked.WAITING, paid, to=[Parked.DONE])
    if timeout:

        async def gave_up(run: af.Run[Empty, Parked], now: object) -> Parked:
            return Parked.DONE

        builder.add_timeout(Parked.WAITING, af.after(timedelta(days=1)), gave_up, to=Parked.DONE)
    return builder.build(store)


# -- (a) plain sqlite3 ---------------------------------------------------------------------


def _raw_connection(path: Path, runs: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for migration in _sqlite_schema.MIGRATIONS:
        for statement in migration:
            conn.execute(statement)
    stamp = "2026-01-01T09:00:00.000000+00:00"
    rows = [("raw", f"f{i}", f"{i:032x}", 1, 1, "{}", 1, stamp, stamp, _META) for i in range(runs)]
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO runs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    conn.executemany(f"INSERT INTO history ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    conn.execute("COMMIT")
    return conn


_COLUMNS = (
    "workflow_name, foreign_id, run_id, status, run_state, object, version, created_at, "
    "updated_at, meta"
)
_META = '{"run_state_reason":"","status_description":"B","error_count":0,"error_message":""}'


def raw_rate(directory: Path, transitions: int, per_commit: int, name: str = "") -> float:
    """Transitions/s in plain sqlite3: each an UPDATE of the run and an INSERT of history."""
    runs = max(1, transitions // 3)
    conn = _raw_connection(directory / f"raw-{per_commit}{name}.db", runs)
    update = (
        "UPDATE runs SET status = ?, run_state = ?, object = ?, version = ?, created_at = ?, "
        "updated_at = ?, meta = ? WHERE run_id = ? AND workflow_name = ? AND foreign_id = ? "
        "AND version = ?"
    )
    insert = f"INSERT INTO history ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
    stamp = "2026-01-01T09:00:00.000000+00:00"
    try:
        start = time.perf_counter()
        done = 0
        while done < transitions:
            conn.execute("BEGIN IMMEDIATE")
            for n in range(done, min(done + per_commit, transitions)):
                i, version = n % runs, n // runs + 2
                run_id, foreign_id = f"{i:032x}", f"f{i}"
                params = (version, 2, "{}", version, stamp, stamp, _META, run_id, "raw")
                if conn.execute(update, (*params, foreign_id, version - 1)).rowcount != 1:
                    raise RuntimeError("raw baseline: the update missed its row")
                conn.execute(
                    insert,
                    ("raw", foreign_id, run_id, version, 2, "{}", version, stamp, stamp, _META),
                )
            conn.execute("COMMIT")
            done = min(done + per_commit, transitions)
        return transitions / (time.perf_counter() - start)
    finally:
        conn.close()


# -- (b) throughput --------------------------------------------------------------------------


async def transitions_rate(store: af.Store, runs: int, metrics: Any = False) -> float:
    """Transitions/s for ``runs`` runs of :func:`three_steps`, all triggered at once."""
    workflow = three_steps(store, metrics=metrics)
    feed = store.feed
    expected = feed.published + 4 * runs  # each run: its first version and 3 transitions
    async with af.open_workflow(workflow):
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(runs):
                nursery.start_soon(workflow.trigger, f"run-{i}")
        while feed.published < expected:
            await feed.wait_published()
        elapsed = time.perf_counter() - start
    done = await store.list_runs(
        workflow.name, RunFilter.make(run_state=af.RunState.COMPLETED), limit=runs
    )
    if len(done) != runs:
        raise RuntimeError(f"only {len(done)} of {runs} runs completed")
    return 3 * runs / elapsed


async def step_rate(store: af.Store, runs: int) -> float:
    """Step transitions/s alone: ``runs`` runs are triggered before the clock starts (no
    worker running), then a worker starts and completes them all (3 transitions each)."""
    workflow = three_steps(store, "bench3steps")
    async with trio.open_nursery() as nursery:
        for i in range(runs):
            nursery.start_soon(workflow.trigger, f"run-{i}")
    feed = store.feed
    expected = feed.published + 3 * runs
    start = time.perf_counter()
    async with af.open_workflow(workflow):
        while feed.published < expected:
            await feed.wait_published()
        elapsed = time.perf_counter() - start
    return 3 * runs / elapsed


# -- (c) latency -----------------------------------------------------------------------------


async def latencies(store: af.Store, runs: int) -> list[float]:
    """Seconds from trigger to completion, one run at a time."""
    workflow = three_steps(store, "bench3-latency")
    found: list[float] = []
    async with af.open_workflow(workflow):
        for i in range(runs + 10):
            start = time.perf_counter()
            run_id = await workflow.trigger(f"latency-{i}")
            await workflow.await_status(f"latency-{i}", run_id, Three.D, timeout=30)
            if i >= 10:  # the first ones warm caches up
                found.append(time.perf_counter() - start)
    return found


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# -- (d) memory of parked runs ---------------------------------------------------------------


def _maxrss_bytes() -> int:
    """Peak RSS of this process, in bytes.

    ``getrusage`` inherits the parent's peak across fork and exec on Linux (a child of a
    big benchmark process would report the parent's peak), so the kernel's high-water mark
    of this process's own memory, ``VmHWM``, is used where it exists.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


async def _parked(runs: int, path: str, with_timeout: bool) -> dict[str, Any]:
    async with af.SQLiteStore(path) as store:
        workflow = parked_workflow(store, timeout=with_timeout)
        async with af.open_workflow(workflow):
            supervisor = workflow._supervisor
            assert supervisor is not None

            async def trigger(first: int, count: int) -> None:
                for i in range(first, first + count):
                    await workflow.trigger(f"parked-{i}")

            # Warm up (code paths, caches, the SQLite page cache) before the baseline.
            warm = min(2_000, runs)
            async with trio.open_nursery() as nursery:
                for first in range(0, warm, 100):
                    nursery.start_soon(trigger, -warm + first, min(100, warm - first))
            before = _maxrss_bytes()
            started = time.perf_counter()
            chunk = max(1, runs // 100)  # 100 tasks trigger at once
            async with trio.open_nursery() as nursery:
                for first in range(0, runs, chunk):
                    nursery.start_soon(trigger, first, min(chunk, runs - first))
            elapsed = time.perf_counter() - started
            await trio.sleep(0.05)  # let anything the triggers woke settle
            after = _maxrss_bytes()
            actors = len(supervisor.actors)
            heap = len(supervisor.timers)  # wake-ups held in memory
    return {
        "runs": runs,
        "timeout": with_timeout,
        "maxrss_before": before,
        "maxrss_after": after,
        "per_run": (after - before) / runs,
        "actors": actors,
        "timers_armed": heap,
        "trigger_rate": runs / elapsed,
        "warm_up_runs": warm,
    }


def parked_child(runs: int, directory: Path, *, timeout: bool) -> dict[str, Any]:
    """Run :func:`_parked` in a fresh interpreter, so its peak RSS is its own."""
    path = directory / f"parked-{int(timeout)}.db"
    argv = [sys.executable, "-m", "bench.sqlite", "--parked", str(runs), str(path)]
    if timeout:
        argv.append("--timeout")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"parked-runs child failed:\n{done.stderr}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["file_bytes_per_run"] = path.stat().st_size / (runs + figures["warm_up_runs"])
    return figures


# -- everything ------------------------------------------------------------------------------


@attrs.define
class Row:
    """One line of the table: a figure, its unit, and what it is compared with."""

    name: str
    value: float
    unit: str
    ratio: str = ""


def _timed(what: str, fn: Callable[[], Any]) -> Any:
    print(f"  ... {what}", file=sys.stderr, flush=True)
    return fn()


def measure(scale: Scale) -> list[Row]:
    """Every figure of this module, measured now, in this process (and one child)."""
    with tempfile.TemporaryDirectory(prefix="actorflow-bench-") as tmp:
        directory = Path(tmp)
        rows, single = _throughput_rows(directory, scale)
        rows += _latency_rows(directory, scale, single)
        rows += _parked_rows(directory, scale)
    return rows


def _throughput_rows(directory: Path, scale: Scale) -> tuple[list[Row], float]:
    """Transitions/s of the stores beside raw sqlite3's, measured in this order; also
    returns the raw rate of one write per commit (the latency figures' baseline)."""
    single = _timed("raw sqlite3, 1 per commit", lambda: raw_rate(directory, scale.raw_single, 1))
    batched_before = _timed(
        f"raw sqlite3, {RAW_BATCH} per commit",
        lambda: raw_rate(directory, scale.raw_batched, RAW_BATCH, "-before"),
    )

    async def on_sqlite(
        name: str = "throughput.db", metrics: Any = False
    ) -> tuple[float, SQLiteStats]:
        async with af.SQLiteStore(directory / name) as store:
            rate = await transitions_rate(store, scale.runs, metrics)
            return rate, store.stats

    sqlite_rate, stats = _timed(f"SQLiteStore, {scale.runs} runs", lambda: trio.run(on_sqlite))
    with_metrics, without_metrics = _metrics_on_and_off(on_sqlite)

    def with_gc_tuned() -> float:
        thresholds = gc.get_threshold()
        gc.set_threshold(GC_TUNED, *thresholds[1:])
        try:
            return float(trio.run(on_sqlite, "tuned.db")[0])
        finally:
            gc.set_threshold(*thresholds)

    tuned_rate = _timed("SQLiteStore, collector tuned", with_gc_tuned)

    async def steps_on_sqlite() -> float:
        async with af.SQLiteStore(directory / "steps.db") as store:
            return await step_rate(store, scale.runs)

    steps_only = _timed("SQLiteStore, steps only", lambda: trio.run(steps_on_sqlite))
    memory_rate = _timed(
        f"MemoryStore, {scale.runs} runs",
        lambda: trio.run(transitions_rate, af.MemoryStore(), scale.runs),
    )
    # Shared machines change speed within a minute: the baseline is the mean of the
    # batched raw rate measured before and after the runs it is compared with.
    batched_after = _timed(
        f"raw sqlite3, {RAW_BATCH} per commit, again",
        lambda: raw_rate(directory, scale.raw_batched, RAW_BATCH, "-after"),
    )
    return _throughput_table(
        scale,
        _Throughput(
            single=single,
            batched_before=batched_before,
            batched_after=batched_after,
            sqlite=sqlite_rate,
            stats=stats,
            with_metrics=with_metrics,
            without_metrics=without_metrics,
            steps_only=steps_only,
            tuned=tuned_rate,
            memory=memory_rate,
        ),
    ), single


@attrs.frozen
class _Throughput:
    """The figures of ``_throughput_rows`` (transitions/s; ``stats``: the SQLiteStore's)."""

    single: float
    batched_before: float
    batched_after: float
    sqlite: float
    stats: SQLiteStats
    with_metrics: float
    without_metrics: float
    steps_only: float
    tuned: float
    memory: float


def _throughput_table(scale: Scale, f: _Throughput) -> list[Row]:
    single, batched_before, batched_after = f.single, f.batched_before, f.batched_after
    sqlite_rate, stats, steps_only, tuned_rate = f.sqlite, f.stats, f.steps_only, f.tuned
    with_metrics, without_metrics, memory_rate = f.with_metrics, f.without_metrics, f.memory
    batched = (batched_before + batched_after) / 2
    return [
        Row(
            "raw sqlite3: UPDATE+INSERT, 1 per commit",
            single,
            "transitions/s",
            f"{single / batched:.2f} x batched raw",
        ),
        Row(
            f"raw sqlite3: UPDATE+INSERT, {RAW_BATCH} per commit",
            batched,
            "transitions/s",
            f"baseline: mean of {batched_before:,.0f} before and {batched_after:,.0f} after",
        ),
        Row(
            f"SQLiteStore: {scale.runs:,} runs x 3 no-op steps",
            sqlite_rate,
            "transitions/s",
            f"{sqlite_rate / batched:.2f} x batched raw, {sqlite_rate / single:.2f} x 1/commit",
        ),
        Row(
            "  the same with metrics on (prometheus-client registry)",
            with_metrics,
            "transitions/s",
            f"{with_metrics / without_metrics:.3f} x metrics off "
            f"({without_metrics:,.0f}/s off; best of three each, interleaved)",
        ),
        Row(
            "  steps only (runs triggered before the clock starts)",
            steps_only,
            "transitions/s",
            f"{steps_only / batched:.2f} x batched raw",
        ),
        Row(
            f"  the same with gc.set_threshold({GC_TUNED:_}, ...)",
            tuned_rate,
            "transitions/s",
            f"{tuned_rate / batched:.2f} x batched raw",
        ),
        Row(
            "  (its writes per transaction, on average)",
            stats.writes / max(1, stats.transactions),
            "writes/txn",
            f"largest {stats.largest_batch}",
        ),
        Row(
            f"MemoryStore: {scale.runs:,} runs x 3 no-op steps",
            memory_rate,
            "transitions/s",
            f"{memory_rate / batched:.2f} x batched raw",
        ),
    ]


def _metrics_on_and_off(
    on_sqlite: Callable[[str, Any], Awaitable[tuple[float, SQLiteStats]]],
) -> tuple[float, float]:
    """Transitions/s with metrics on and off: three runs each in the order on off off on
    on off (a run that comes first or later in a process is not favoured), each on a new
    file; the best of three each (a shared machine drifts and stalls)."""
    metrics_on: list[float] = []
    metrics_off: list[float] = []
    for turn, metrics in enumerate((True, False, False, True, True, False)):
        rates = metrics_on if metrics else metrics_off
        rates.append(
            _timed(
                f"SQLiteStore, metrics {'on' if metrics else 'off'} ({len(rates) + 1}/3)",
                lambda turn=turn, metrics=metrics: trio.run(
                    on_sqlite, f"metrics-{turn}.db", CollectorRegistry() if metrics else False
                )[0],
            )
        )
    return max(metrics_on), max(metrics_off)


def _latency_rows(directory: Path, scale: Scale, single: float) -> list[Row]:
    """Trigger-to-completion latency, one run at a time, beside 4 raw single commits."""

    async def latency_on_sqlite() -> list[float]:
        async with af.SQLiteStore(directory / "latency.db") as store:
            return await latencies(store, scale.latency_runs)

    lat = _timed(f"latency, {scale.latency_runs} runs", lambda: trio.run(latency_on_sqlite))
    four_commits = 4 / single  # a run is 4 commits: its trigger and 3 transitions
    rows = [
        Row(
            f"SQLiteStore: trigger -> completion p{q} (1 run at a time)",
            percentile(lat, q) * 1000,
            "ms",
            f"{percentile(lat, q) / four_commits:.1f} x 4 raw single commits",
        )
        for q in (50, 99)
    ]
    lat_mem = _timed(
        "latency on MemoryStore",
        lambda: trio.run(latencies, af.MemoryStore(), scale.latency_runs),
    )
    rows.append(
        Row("MemoryStore: trigger -> completion p50", statistics.median(lat_mem) * 1000, "ms", "")
    )
    return rows


def _parked_rows(directory: Path, scale: Scale) -> list[Row]:
    """Peak memory per parked run (waiting for a callback, with and without a timer)."""
    rows = []
    for timeout in (False, True):
        what = "callback + 1-day timeout" if timeout else "callback"
        parked = _timed(
            f"{scale.parked} parked runs ({what})",
            lambda t=timeout: parked_child(scale.parked, directory, timeout=t),  # type: ignore[misc]
        )
        if parked["actors"] > 10:
            raise RuntimeError(f"{parked['actors']} actors alive for parked runs; want ~0")
        rows.append(
            Row(
                f"peak RSS per parked run ({what}; {scale.parked:,} runs)",
                parked["per_run"],
                "bytes",
                f"{parked['per_run'] / 2048:.2f} x the 2 KB target; "
                f"{parked['actors']} actors alive, {parked['timers_armed']} timers armed; "
                f"{parked['file_bytes_per_run']:.0f} bytes/run on disk",
            )
        )
    return rows


def main(quick: bool = False) -> list[Row]:
    """Measure and print this module's figures."""
    rows = measure(QUICK if quick else FULL)
    for row in rows:
        print(f"{row.name:<58} {row.value:>12,.1f} {row.unit:<14} {row.ratio}")
    return rows


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--parked":
        result = trio.run(_parked, int(sys.argv[2]), sys.argv[3], "--timeout" in sys.argv[4:])
        print(json.dumps(result))
    else:
        main("--quick" in sys.argv[1:])
