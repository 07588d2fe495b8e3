"""Scale-out on PostgreSQL: transitions/s and CPU per transition with 1, 2 and 4 worker
processes, against the raw commit rate of the same server measured in the same run.

(a) raw: plain psycopg on the same server; one "transition" = ``UPDATE`` of a run row +
    ``INSERT`` of a history row, as the store writes it. Single transitions per commit
    from 16 threads (what concurrent actors look like), and 50 per commit from one
    connection (the batched ceiling).
(b) fleet: N worker processes (this module's ``worker`` mode) run a 4-step workflow with
    no-op steps on one schema. Once they share the shards, this process triggers the runs
    (16 tasks; it runs no workflow, so each trigger NOTIFYs its owner) and times from the
    first trigger to the last completion (polling the runs table every 50 ms). CPU: user +
    system seconds of the workers and of the local PostgreSQL server's processes over the
    same window, per 1,000 transitions: on 2 cores throughput cannot double with more
    workers, but coordination overhead shows as CPU per transition.

    ACTORFLOW_PG_DSN=postgresql://... python -m bench.postgres_scale [runs]
    python -m bench.postgres_scale worker DSN SCHEMA   # one worker (used by (b))

Every schema it makes is dropped at the end.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import attrs
import trio

import actorflow as af
from actorflow.stores import PostgresStore

STEPS = 4
RAW_BATCH = 50
RAW_THREADS = 16
LEASE = timedelta(seconds=3)


class Four(enum.IntEnum):
    A = 1
    B = 2
    C = 3
    D = 4
    E = 5


@attrs.define
class Counter:
    n: int = 0


def four_steps(store: af.Store) -> af.Workflow[Counter, Four]:
    builder = af.Builder("scale", Counter, Four)

    def step(to: Four) -> Any:
        async def fn(run: af.Run[Counter, Four]) -> Four:
            run.object.n += 1
            return to

        fn.__qualname__ = f"to_{to.name}"
        return fn

    for start, to in ((Four.A, Four.B), (Four.B, Four.C), (Four.C, Four.D), (Four.D, Four.E)):
        builder.add_step(start, step(to), to=to)
    return builder.build(store, lease=LEASE, poll_interval=timedelta(seconds=0.5))


# -- (a) the raw baseline -------------------------------------------------------------------


def _raw_schema(conn: Any, schema: str, runs: int) -> None:
    conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
    conn.execute(
        f'CREATE TABLE "{schema}".runs (run_id text PRIMARY KEY, version int NOT NULL, '
        "object text NOT NULL)".encode()
    )
    conn.execute(
        f'CREATE TABLE "{schema}".history (id bigserial PRIMARY KEY, run_id text NOT NULL, '
        "version int NOT NULL, object text NOT NULL, UNIQUE (run_id, version))".encode()
    )
    conn.execute(
        f"INSERT INTO \"{schema}\".runs SELECT 'r' || g, 0, '{{}}' "
        f"FROM generate_series(0, {runs - 1}) g".encode()
    )


def _transition(schema: str) -> bytes:
    return (
        f'WITH u AS (UPDATE "{schema}".runs SET version = version + 1, object = %(o)s '
        "WHERE run_id = %(r)s RETURNING run_id, version) "
        f'INSERT INTO "{schema}".history (run_id, version, object) '
        "SELECT run_id, version, %(o)s FROM u"
    ).encode()


def raw_rates(dsn: str, transitions: int) -> tuple[float, float]:
    """(single transitions per commit from 16 threads, 50 per commit from one) per second."""
    import psycopg

    schema = f"af_bench_raw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        _raw_schema(admin, schema, RAW_THREADS)
        statement = _transition(schema)
        try:
            per_thread = max(1, transitions // RAW_THREADS)

            def single(i: int) -> None:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    for k in range(per_thread):
                        conn.execute(statement, {"r": f"r{i}", "o": f'{{"n": {k}}}'})

            threads = [threading.Thread(target=single, args=(i,)) for i in range(RAW_THREADS)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            single_rate = per_thread * RAW_THREADS / (time.perf_counter() - start)

            batches = max(1, transitions // RAW_BATCH)
            with psycopg.connect(dsn) as conn:
                start = time.perf_counter()
                for b in range(batches):
                    with conn.cursor() as cursor:
                        cursor.executemany(
                            statement,
                            [{"r": f"r{k % RAW_THREADS}", "o": f"{b}"} for k in range(RAW_BATCH)],
                        )
                    conn.commit()
                batched_rate = batches * RAW_BATCH / (time.perf_counter() - start)
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())
    return single_rate, batched_rate


# -- (b) the fleet --------------------------------------------------------------------------


async def worker(dsn: str, schema: str) -> None:
    """Run the workflow until SIGTERM."""
    async with PostgresStore(dsn, schema=schema, pool_size=16) as store:
        workflow = four_steps(store)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(workflow.run)
                print("running", flush=True)
                async for _ in signals:
                    workflow.stop()
                    break


def _sql(dsn: str, query: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(query.encode())
        return cursor.fetchall() if cursor.description else []


def _wait(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: not within {within} s: {what}")
        time.sleep(0.05)


def _balanced(dsn: str, schema: str, workers: int) -> bool:
    try:
        rows = _sql(
            dsn,
            f'SELECT owner, count(*) FROM "{schema}".shard_leases '
            "WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner",
        )
    except Exception:
        return False
    counts = sorted(n for _, n in rows)
    return len(counts) == workers and sum(counts) == 16 and counts[-1] - counts[0] <= 1


def _completed(dsn: str, schema: str) -> int:
    return int(_sql(dsn, f'SELECT count(*) FROM "{schema}".runs WHERE run_state = 5')[0][0])


async def _trigger(dsn: str, schema: str, runs: int) -> float:
    """Trigger ``runs`` runs from 16 tasks; returns the trigger rate."""
    async with PostgresStore(dsn, schema=schema, pool_size=16) as store:
        workflow = four_steps(store)
        start = time.perf_counter()

        async def some(first: int) -> None:
            for i in range(first, runs, 16):
                await workflow.trigger(f"run-{i}")

        async with trio.open_nursery() as nursery:
            for first in range(16):
                nursery.start_soon(some, first)
        return runs / (time.perf_counter() - start)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _server_pids(dsn: str) -> list[int]:
    """The local PostgreSQL server's processes: its postmaster and the postmaster's
    children (empty when the server is not on this machine)."""
    backend = int(_sql(dsn, "SELECT pg_backend_pid()")[0][0])
    try:
        with open(f"/proc/{backend}/status") as status:
            parent = next(int(line.split()[1]) for line in status if line.startswith("PPid:"))
        children = [
            int(pid)
            for pid in os.listdir("/proc")
            if pid.isdigit() and _parent_of(int(pid)) == parent
        ]
    except (OSError, StopIteration):
        return []
    return [parent, *children]


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def fleet(
    dsn: str, workers: int, runs: int, *, window: bool = False
) -> tuple[float, float, float, float]:
    """(transitions/s end to end, triggers/s, CPU seconds per 1,000 transitions of the
    workers and the PostgreSQL server together, the server's part of that CPU) with
    ``workers`` worker processes. ``window``: the workers get SIGUSR1 when the measured
    window starts and SIGUSR2 when it ends (``bench.pg_profile`` profiles inside it)."""
    schema = f"af_bench_scale_{uuid.uuid4().hex[:8]}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(workers):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.postgres_scale", "worker", dsn, schema],
                    stdout=subprocess.DEVNULL,
                )
            )
        _wait(lambda: _balanced(dsn, schema, workers), 60, f"{workers} workers sharing shards")
        # Server processes that start during the window (connections the pools open
        # later) count from zero; the workers' own processes are known from the start.
        server_before = {pid: _cpu_seconds(pid) for pid in _server_pids(dsn)}
        workers_before = sum(_cpu_seconds(process.pid) for process in processes)
        if window:
            for process in processes:
                process.send_signal(signal.SIGUSR1)
        start = time.perf_counter()
        trigger_rate = trio.run(_trigger, dsn, schema, runs)
        _wait(lambda: _completed(dsn, schema) >= runs, 600, f"{runs} runs completing")
        elapsed = time.perf_counter() - start
        if window:
            for process in processes:
                process.send_signal(signal.SIGUSR2)
        server_cpu = sum(
            max(0.0, _cpu_seconds(pid) - server_before.get(pid, 0.0))  # 0: gone since
            for pid in {*server_before, *_server_pids(dsn)}
        )
        cpu = sum(_cpu_seconds(process.pid) for process in processes) - workers_before
        cpu += server_cpu
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _sql(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return runs * STEPS / elapsed, trigger_rate, cpu / (runs * STEPS / 1000), server_cpu / cpu


def main(dsn: str | None = None, runs: int = 4_000) -> dict[str, float]:
    """Measure and print; returns the figures (transitions/s unless named otherwise)."""
    dsn = dsn or os.environ.get("ACTORFLOW_PG_DSN")
    if not dsn:
        print("postgres_scale: set ACTORFLOW_PG_DSN")
        return {}
    single, batched = raw_rates(dsn, max(2_000, runs * 2))
    figures = {"raw_single_16_threads": single, f"raw_batched_{RAW_BATCH}": batched}
    print(f"raw psycopg, 1 transition per commit, {RAW_THREADS} threads: {single:,.0f}/s")
    print(f"raw psycopg, {RAW_BATCH} transitions per commit, 1 connection: {batched:,.0f}/s")
    for workers in (1, 2, 4):
        rate, triggers, cpu, server_share = fleet(dsn, workers, runs)
        figures[f"workers_{workers}"] = rate
        figures[f"workers_{workers}_triggers_per_s"] = triggers
        figures[f"workers_{workers}_cpu_s_per_1000"] = cpu
        per_worker = rate / workers
        print(
            f"{workers} worker process(es), {runs:,} runs x {STEPS} steps: {rate:,.0f} "
            f"transitions/s ({rate / batched:.2f} x raw batched, {rate / single:.2f} x raw "
            f"single; {per_worker / batched:.2f} x raw batched per worker); triggers "
            f"{triggers:,.0f}/s; CPU {cpu:.3f} s per 1,000 transitions (workers + server; "
            f"server {server_share:.0%})"
            + (
                f", {cpu / figures['workers_1_cpu_s_per_1000']:.2f} x 1 worker"
                if workers > 1
                else ""
            )
        )
    return figures


def _profiled_worker(dsn: str, schema: str) -> None:
    """A worker; with ACTORFLOW_BENCH_PROFILE=DIR, under cProfile, its stats written to
    DIR/worker-PID.prof when it stops (``python -m pstats`` reads them). With
    ACTORFLOW_BENCH_WINDOW=DIR, ``bench.pg_profile``'s measured worker instead."""
    where = os.environ.get("ACTORFLOW_BENCH_PROFILE")
    window = os.environ.get("ACTORFLOW_BENCH_WINDOW")
    if window:
        from bench.pg_profile import windowed_worker

        windowed_worker(dsn, schema, window, worker)
        return
    if not where:
        trio.run(worker, dsn, schema)
        return
    import cProfile

    profile = cProfile.Profile(time.thread_time)  # CPU of the trio thread, not waits
    profile.runcall(trio.run, worker, dsn, schema)
    profile.dump_stats(os.path.join(where, f"worker-{os.getpid()}.prof"))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        _profiled_worker(sys.argv[2], sys.argv[3])
    else:
        main(None, int(sys.argv[1]) if len(sys.argv) > 1 else 4_000)
