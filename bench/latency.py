"""What one caller feels on the embedded store, beside plain sqlite3 in the same run.

(1) latency: ``trigger`` alone, and trigger -> completion of a 3-step run, one at a time,
    p50/p99/p99.9 over thousands of samples; raw: one plain sqlite3 transaction of the
    same shape (UPDATE runs + INSERT history), timed the same way.
(2) under load: the same trigger -> completion percentiles for one interactive caller
    while 10,000 runs are in flight.
(3) web-handler shape: 16 concurrent clients, each doing trigger + ``await_status(final)``
    in a loop for a fixed time: runs/s and p50/p99 per run.
(4) end to end: 8 concurrent triggerers start N runs of a 3-step workflow; the clock stops
    when all are complete; beside a lean raw baseline (sqlite3, WAL/NORMAL, two rows per
    transition, 100 transitions per commit).

    python -m bench.latency          # prints the table
"""

from __future__ import annotations

import gc
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import attrs
import trio

import actorflow as af
from bench.sqlite import Row, Three, _raw_connection, percentile, three_steps

R = TypeVar("R")

WARMUP = 20


@attrs.frozen
class Scale:
    samples: int = 5_000
    loaded_in_flight: int = 10_000
    loaded_samples: int = 100
    handler_seconds: float = 10.0
    handler_clients: int = 16
    e2e_runs: int = 5_000
    raw_transitions: int = 60_000


FULL = Scale()
QUICK = Scale(
    samples=300,
    loaded_in_flight=1_000,
    loaded_samples=30,
    handler_seconds=1.0,
    e2e_runs=1_000,
    raw_transitions=6_000,
)


def _ms(seconds: float) -> float:
    return seconds * 1000


def _percentiles(name: str, values: list[float], baseline: list[float] | None) -> list[Row]:
    rows = []
    for q in (50, 99, 99.9):
        value = percentile(values, q)
        ratio = ""
        if baseline:
            ratio = f"{value / percentile(baseline, q):.1f} x raw p{q:g}"
        rows.append(Row(f"{name} p{q:g} ({len(values):,} samples)", _ms(value), "ms", ratio))
    return rows


# -- raw baselines ---------------------------------------------------------------------------


def raw_single_commits(directory: Path, samples: int) -> list[float]:
    """Seconds per plain sqlite3 transaction of one transition, one at a time."""
    conn = _raw_connection(directory / "raw-latency.db", samples)
    update = "UPDATE runs SET status = 2, version = 2, updated_at = ? WHERE run_id = ?"
    insert = (
        "INSERT INTO history (workflow_name, foreign_id, run_id, status, run_state, object, "
        "version, created_at, updated_at, meta) VALUES ('raw', ?, ?, 2, 2, '{}', 2, ?, ?, '{}')"
    )
    stamp = "2026-01-01T09:00:00.000000+00:00"
    found = []
    try:
        for i in range(samples):
            run_id = f"{i:032x}"
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(update, (stamp, run_id))
            conn.execute(insert, (f"f{i}", run_id, stamp, stamp))
            conn.execute("COMMIT")
            found.append(time.perf_counter() - start)
    finally:
        conn.close()
    return found


def raw_lean_rate(directory: Path, transitions: int) -> float:
    """Transitions/s of a lean plain sqlite3 loop: two rows per transition (a run row
    updated, a history row inserted), 100 transitions per commit, WAL/NORMAL."""
    conn = sqlite3.connect(directory / "raw-lean.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, status INT, object TEXT)")
    conn.execute("CREATE TABLE history (id INTEGER PRIMARY KEY, run INT, status INT, object TEXT)")
    runs = max(1, transitions // 3)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO runs VALUES (?, 1, '{}')", [(i,) for i in range(runs)])
    conn.execute("COMMIT")
    try:
        start = time.perf_counter()
        done = 0
        while done < transitions:
            conn.execute("BEGIN")
            for n in range(done, min(done + 100, transitions)):
                run, status = n % runs, n // runs + 2
                conn.execute("UPDATE runs SET status = ? WHERE id = ?", (status, run))
                conn.execute(
                    "INSERT INTO history (run, status, object) VALUES (?, ?, '{}')", (run, status)
                )
            conn.execute("COMMIT")
            done = min(done + 100, transitions)
        return transitions / (time.perf_counter() - start)
    finally:
        conn.close()


# -- actorflow -------------------------------------------------------------------------------


async def trigger_latencies(store: af.Store, samples: int) -> list[float]:
    """Seconds per ``trigger`` with no workflow running (nothing else on the loop)."""
    workflow = three_steps(store, "bench-trigger")
    found = []
    for i in range(samples + WARMUP):
        start = time.perf_counter()
        await workflow.trigger(f"t-{i}")
        if i >= WARMUP:
            found.append(time.perf_counter() - start)
    return found


async def completion_latencies(
    store: af.Store, samples: int, *, in_flight: int = 0
) -> tuple[list[float], list[float]]:
    """Seconds of ``trigger`` and of trigger -> completion for one caller, one run at a
    time, while ``in_flight`` other runs are being worked on."""
    workflow = three_steps(store, f"bench-interactive-{in_flight}")
    triggers: list[float] = []
    completions: list[float] = []
    async with af.open_workflow(workflow), trio.open_nursery() as nursery:
        if in_flight:
            background = three_steps(store, "bench-background")
            nursery.start_soon(_keep_busy, background, in_flight)
            await trio.sleep(0.2)  # let the backlog build up
        for i in range(samples + WARMUP):
            start = time.perf_counter()
            run_id = await workflow.trigger(f"c-{i}")
            triggered = time.perf_counter()
            await workflow.await_status(f"c-{i}", run_id, Three.D, timeout=60)
            if i >= WARMUP:
                triggers.append(triggered - start)
                completions.append(time.perf_counter() - start)
        nursery.cancel_scope.cancel()
    return triggers, completions


async def _keep_busy(workflow: af.Workflow[object, Three], in_flight: int) -> None:
    """Keep about ``in_flight`` runs of ``workflow`` in flight until cancelled."""
    async with af.open_workflow(workflow):
        n = 0
        limiter = trio.Semaphore(in_flight)

        async def one(foreign_id: str) -> None:
            try:
                run_id = await workflow.trigger(foreign_id)
                await workflow.await_status(foreign_id, run_id, Three.D, timeout=120)
            finally:
                limiter.release()

        async with trio.open_nursery() as nursery:
            while True:
                await limiter.acquire()
                nursery.start_soon(one, f"bg-{n}")
                n += 1


async def handler_shape(store: af.Store, clients: int, seconds: float) -> tuple[float, list[float]]:
    """Runs/s and per-run seconds for ``clients`` concurrent trigger + await loops."""
    workflow = three_steps(store, "bench-handlers")
    found: list[float] = []
    async with af.open_workflow(workflow):
        deadline = time.perf_counter() + seconds

        async def client(c: int) -> None:
            i = 0
            while time.perf_counter() < deadline:
                foreign_id = f"h-{c}-{i}"
                start = time.perf_counter()
                run_id = await workflow.trigger(foreign_id)
                await workflow.await_status(foreign_id, run_id, Three.D, timeout=60)
                found.append(time.perf_counter() - start)
                i += 1

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for c in range(clients):
                nursery.start_soon(client, c)
        elapsed = time.perf_counter() - start
    return len(found) / elapsed, found


async def end_to_end_rate(store: af.Store, runs: int, triggerers: int = 8) -> float:
    """Transitions/s with the triggers inside the window: ``triggerers`` tasks start the
    runs one after another; the clock stops when every run completed."""
    workflow = three_steps(store, "bench-e2e")
    feed = store.feed
    expected = feed.published + 4 * runs
    async with af.open_workflow(workflow):
        start = time.perf_counter()

        async def triggerer(t: int) -> None:
            for i in range(t, runs, triggerers):
                await workflow.trigger(f"e-{i}")

        async with trio.open_nursery() as nursery:
            for t in range(triggerers):
                nursery.start_soon(triggerer, t)
        while feed.published < expected:
            await feed.wait_published()
        elapsed = time.perf_counter() - start
    return 3 * runs / elapsed


def _on_file(path: Path, measure: Callable[[af.SQLiteStore], Awaitable[R]]) -> R:
    """``measure(store)`` on a new SQLiteStore at ``path`` (closed after), in ``trio.run``."""

    async def run() -> R:
        store = af.SQLiteStore(path)
        try:
            return await measure(store)
        finally:
            await store.aclose()

    return trio.run(run)


def measure(scale: Scale) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="actorflow-latency-") as tmp:
        directory = Path(tmp)
        raw = raw_single_commits(directory, scale.samples)
        rows.extend(_percentiles("raw sqlite3: one transition per commit", raw, None))

        async def interactive(
            store: af.SQLiteStore,
        ) -> tuple[list[float], list[float], list[float]]:
            alone = await trigger_latencies(store, scale.samples)
            triggers, completions = await completion_latencies(store, scale.samples)
            return alone, triggers, completions

        alone, triggers, completions = _on_file(directory / "interactive.db", interactive)
        rows.extend(_percentiles("SQLiteStore: trigger, nothing running", alone, raw))
        rows.extend(_percentiles("SQLiteStore: trigger, workflow running", triggers, raw))
        four_raw = [4 * value for value in raw]
        rows.extend(
            _percentiles("SQLiteStore: trigger -> completion, 1 at a time", completions, four_raw)
        )

        async def loaded(store: af.SQLiteStore) -> list[float]:
            in_flight = scale.loaded_in_flight
            return (await completion_latencies(store, scale.loaded_samples, in_flight=in_flight))[1]

        under_load = _on_file(directory / "loaded.db", loaded)
        rows.extend(
            _percentiles(
                f"SQLiteStore: trigger -> completion, {scale.loaded_in_flight:,} in flight",
                under_load,
                four_raw,
            )
        )
        rate, per_run = _on_file(
            directory / "handlers.db",
            lambda store: handler_shape(store, scale.handler_clients, scale.handler_seconds),
        )
        rows.append(
            Row(f"SQLiteStore: {scale.handler_clients} web handlers, runs/s", rate, "runs/s", "")
        )
        rows.extend(_percentiles("  per run (trigger + await final)", per_run, four_raw))
        rows.extend(_end_to_end(directory, scale))
    return rows


def _end_to_end(directory: Path, scale: Scale) -> list[Row]:
    """Transitions/s with triggers arriving while runs move, beside lean raw sqlite3."""
    lean = raw_lean_rate(directory, scale.raw_transitions)
    gc.collect()
    rate = _on_file(directory / "e2e.db", lambda store: end_to_end_rate(store, scale.e2e_runs))
    return [
        Row(
            "raw sqlite3: lean, 2 rows per transition, 100 per commit",
            lean,
            "transitions/s",
            "baseline",
        ),
        Row(
            f"SQLiteStore: {scale.e2e_runs:,} runs x 3 steps, 8 triggerers in the window",
            rate,
            "transitions/s",
            f"{rate / lean:.2f} x lean raw",
        ),
    ]


def main(quick: bool = False) -> list[Row]:
    rows = measure(QUICK if quick else FULL)
    for row in rows:
        print(row)
    return rows


if __name__ == "__main__":
    import sys

    main("--quick" in sys.argv)
