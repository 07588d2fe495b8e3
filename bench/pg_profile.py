"""Where the CPU of one PostgreSQL worker goes, per transition (issue #18's 0.3 x target).

    ACTORFLOW_PG_DSN=postgresql://... python -m bench.pg_profile [runs]   # default 1,000

Runs, one after another, against the server of ``ACTORFLOW_PG_DSN`` (a throwaway
cluster of your own on this machine, so that no other job's backends count as server
CPU; with ``pg_stat_statements`` preloaded it also prints the statements):

1. raw batched psycopg, as in :mod:`bench.postgres_scale` (50 transitions a commit, one
   connection): the client's CPU and the server's (``/proc``) per transition;
2. one worker process of :mod:`bench.postgres_scale` (4-step workflow, runs triggered by
   this process), unprofiled: the worker's CPU over the measured window, split into its
   trio thread (``time.thread_time``), the functions it sends to worker threads (psycopg:
   ``thread_time`` around each), and the rest of the other threads (trio's thread cache:
   the thread hop's worker side); the server's CPU; thread hops per transition;
3. the same under cProfile (``time.thread_time`` clock, waits do not count): one profile
   of the trio thread, one per worker thread around the functions sent there. Own time
   per function is summed into groups by where the function lives and scaled to the
   unprofiled CPU of its side (cProfile inflates Python calls more than C calls: read the
   shares, not the digits).

The worker learns the measured window by SIGUSR1 (start) and SIGUSR2 (end), and writes
its figures to the directory in ``ACTORFLOW_BENCH_WINDOW`` when it stops.
"""

from __future__ import annotations

import cProfile
import gc
import json
import os
import pstats
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import trio

from bench import postgres_scale as scale

Groups = list[tuple[str, Callable[[str, str], bool]]]

TRIO_GROUPS: Groups = [
    (
        "thread hop, trio side (to_thread, limiter, virtual-time hold, retrying call)",
        lambda f, n: (
            "/trio/to_thread" in f
            or "/trio/_threads" in f
            or "/trio/_sync" in f
            or "/stores/realtime" in f
            or "/stores/postgres/connection" in f
        ),
    ),
    (
        "parameter building (params dict, Jsonb, writer token, shard key)",
        lambda f, n: (
            "/stores/postgres/writes" in f
            or "/stores/postgres/rows" in f
            or "psycopg" in f
            or "uuid" in f
            or "crc32" in n
        ),
    ),
    (
        "record encoding/decoding (json, codec)",
        lambda f, n: "json" in f or "json" in n or "/_model/codec" in f or "cattrs" in f,
    ),
    (
        "group commit bookkeeping (queue, leaders, publish order)",
        lambda f, n: "/stores/group_commit" in f or "/stores/postgres/batch" in f,
    ),
    (
        "NOTIFY/LISTEN, tail, shard leases, feed",
        lambda f, n: (
            "/stores/postgres/listen" in f
            or "/stores/postgres/shards" in f
            or "/stores/feed" in f
            or "/streaming/" in f
        ),
    ),
    ("trio scheduling and task switches", lambda f, n: "/trio/" in f or "outcome" in f),
    (
        "actor and engine (runtime, model, store API)",
        lambda f, n: "/actorflow/" in f or "/bench/" in f,
    ),
    ("other (built-ins called from outside actorflow)", lambda f, n: True),
]

THREAD_GROUPS: Groups = [
    ("psycopg_pool (getconn, putconn)", lambda f, n: "psycopg_pool" in f),
    (
        "psycopg adaptation (Python dumpers: Jsonb, json, uuid, datetime)",
        lambda f, n: "/psycopg/types" in f or "/psycopg/adapt" in f or "json" in f or "json" in n,
    ),
    (
        "psycopg execute, pipeline, transaction, fetch (and C adaptation, libpq)",
        lambda f, n: "psycopg" in f or "psycopg" in n,
    ),
    (
        "the store's function (batch loop, settle, attempt)",
        lambda f, n: "/actorflow/" in f or "/bench/" in f,
    ),
    ("other", lambda f, n: True),
]


def _group(groups: Groups, file: str, name: str) -> str:
    for group, test in groups:
        if test(file, name):
            return group
    return groups[-1][0]


def own_times(stats: pstats.Stats, groups: Groups) -> Counter[str]:
    """Own time per group; a built-in's goes to its callers' groups in proportion (unless
    a group names it)."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    totals: Counter[str] = Counter()
    last = groups[-1][0]
    for (file, _, name), (_, _, own, _, callers) in raw.items():
        group = _group(groups, file, name)
        if file != "~" or group != last or not callers:
            totals[group] += own
            continue
        called = sum(entry[2] for entry in callers.values()) or 1.0
        for (caller_file, _, caller_name), entry in callers.items():
            totals[_group(groups, caller_file, caller_name)] += own * entry[2] / called
    return totals


# -- the worker side ------------------------------------------------------------------------


def windowed_worker(
    dsn: str,
    schema: str,
    directory: str,
    worker: Callable[[str, str], Coroutine[Any, Any, None]],
) -> None:
    """Run ``worker`` (trio), measuring between SIGUSR1 and SIGUSR2; with
    ACTORFLOW_BENCH_CPROFILE=1 also under cProfile (trio thread and worker threads)."""
    profiling = os.environ.get("ACTORFLOW_BENCH_CPROFILE") == "1"
    trio_profile = cProfile.Profile(time.thread_time)
    lock = threading.Lock()
    thread_profiles: list[cProfile.Profile] = []
    local = threading.local()
    found: dict[str, float] = Counter()
    active = [False]
    main_thread = threading.get_ident()
    collecting: list[float] = []

    def collector(phase: str, info: dict[str, int]) -> None:
        if not active[0] or threading.get_ident() != main_thread:
            return
        if phase == "start":
            collecting.append(time.thread_time())
        elif collecting:
            found["trio_collector"] += time.thread_time() - collecting.pop()

    def in_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            if not active[0]:
                return fn(*args)
            profile: cProfile.Profile | None = None
            if profiling:
                profile = getattr(local, "profile", None)
                if profile is None:
                    profile = local.profile = cProfile.Profile(time.thread_time)
                    with lock:
                        thread_profiles.append(profile)
                profile.enable()
            start = time.thread_time()
            try:
                return fn(*args)
            finally:
                spent = time.thread_time() - start
                if profile is not None:
                    profile.disable()
                with lock:
                    found["in_calls"] += spent

        return call

    original = trio.to_thread.run_sync

    async def run_sync(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if active[0]:
            found["hops"] += 1
        return await original(in_thread(fn), *args, **kwargs)

    trio.to_thread.run_sync = run_sync  # type: ignore[assignment]

    def start(*_: Any) -> None:
        found["trio_cpu"] -= time.thread_time()
        found["process_cpu"] -= time.process_time()
        active[0] = True
        if profiling:
            trio_profile.enable()

    def stop(*_: Any) -> None:
        if profiling:
            trio_profile.disable()
        active[0] = False
        found["trio_cpu"] += time.thread_time()
        found["process_cpu"] += time.process_time()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    gc.callbacks.append(collector)
    trio.run(worker, dsn, schema)
    out = Path(directory)
    (out / "worker.json").write_text(json.dumps(found))
    if profiling:
        trio_profile.dump_stats(out / "trio.prof")
        with lock:
            profiles = [p for p in thread_profiles if p.getstats()]
        if profiles:
            pstats.Stats(*profiles).dump_stats(out / "threads.prof")  # type: ignore[arg-type]


# -- the measuring side ---------------------------------------------------------------------


def raw_batched(dsn: str, transitions: int) -> tuple[float, float, float]:
    """Raw batched psycopg: (transitions/s, client CPU s and server CPU s per transition)."""
    import psycopg

    schema = f"af_bench_raw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        scale._raw_schema(admin, schema, scale.RAW_THREADS)
        statement = scale._transition(schema)
        try:
            batches = max(1, transitions // scale.RAW_BATCH)
            with psycopg.connect(dsn) as conn:
                server = {pid: scale._cpu_seconds(pid) for pid in scale._server_pids(dsn)}
                client, wall = time.process_time(), time.perf_counter()
                for b in range(batches):
                    with conn.cursor() as cursor:
                        cursor.executemany(
                            statement,
                            [
                                {"r": f"r{k % scale.RAW_THREADS}", "o": f"{b}"}
                                for k in range(scale.RAW_BATCH)
                            ],
                        )
                    conn.commit()
                client = time.process_time() - client
                wall = time.perf_counter() - wall
                server_cpu = sum(
                    max(0.0, scale._cpu_seconds(pid) - server.get(pid, 0.0))
                    for pid in {*server, *scale._server_pids(dsn)}
                )
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE'.encode())
    done = batches * scale.RAW_BATCH
    return done / wall, client / done, server_cpu / done


def _statements(dsn: str, reset: bool) -> list[tuple[Any, ...]]:
    """pg_stat_statements (reset, or the top statements by time); empty without it."""
    try:
        if reset:
            scale._sql(dsn, "SELECT pg_stat_statements_reset()")
            return []
        return scale._sql(
            dsn,
            "SELECT calls, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) "
            "FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' "
            "ORDER BY total_exec_time DESC LIMIT 12",
        )
    except Exception:
        return []


def one_worker(dsn: str, runs: int, profiled: bool) -> tuple[dict[str, Any], Path]:
    directory = Path(tempfile.mkdtemp(prefix="actorflow-pg-profile-"))
    os.environ["ACTORFLOW_BENCH_WINDOW"] = str(directory)
    os.environ["ACTORFLOW_BENCH_CPROFILE"] = "1" if profiled else "0"
    try:
        rate, _, cpu, server_share = scale.fleet(dsn, 1, runs, window=True)
    finally:
        del os.environ["ACTORFLOW_BENCH_WINDOW"], os.environ["ACTORFLOW_BENCH_CPROFILE"]
    found: dict[str, Any] = json.loads((directory / "worker.json").read_text())
    per = cpu / 1000  # CPU s per transition, worker + server
    found.update(rate=rate, total=per, server=per * server_share)
    return found, directory


def main(runs: int = 1_000) -> None:
    dsn = os.environ.get("ACTORFLOW_PG_DSN")
    if not dsn:
        print("pg_profile: set ACTORFLOW_PG_DSN")
        return
    transitions = runs * scale.STEPS
    us = 1e6
    raw_rate, raw_client, raw_server = raw_batched(dsn, max(4_000, transitions))
    _statements(dsn, reset=True)
    plain, _ = one_worker(dsn, runs, profiled=False)
    statements = _statements(dsn, reset=False)
    profiled, where = one_worker(dsn, runs, profiled=True)

    n = transitions
    trio_cpu = plain["trio_cpu"] / n
    process = plain["process_cpu"] / n
    in_calls = plain.get("in_calls", 0.0) / n
    hop_rest = max(0.0, process - trio_cpu - in_calls)
    server = plain["server"]
    total = trio_cpu + in_calls + hop_rest + server
    raw_total = raw_client + raw_server
    print(f"1 worker, {runs:,} runs x {scale.STEPS} steps, {n:,} transitions")
    print(
        f"raw batched psycopg: {raw_rate:,.0f} transitions/s, CPU {raw_total * us:.1f} us "
        f"per transition (client {raw_client * us:.1f}, server {raw_server * us:.1f})"
    )
    print(
        f"actorflow, 1 worker: {plain['rate']:,.0f} transitions/s "
        f"({plain['rate'] / raw_rate:.3f} x raw batched); CPU {total * us:.1f} us per "
        f"transition ({raw_total / total:.3f} x raw batched's); thread hops "
        f"{plain.get('hops', 0) / n:.2f} per transition; trio-thread collector "
        f"{plain.get('trio_collector', 0.0) / n * us:.1f} us"
    )
    print(
        f"worker process CPU {process * us:.1f} us per transition: trio thread "
        f"{trio_cpu * us:.1f}, functions in worker threads {in_calls * us:.1f}, the rest "
        f"of the other threads {hop_rest * us:.1f}; server {server * us:.1f}"
    )
    print(
        f"profiled run: {profiled['rate']:,.0f} transitions/s, worker process CPU "
        f"{profiled['process_cpu'] / n * us:.1f} us per transition (unprofiled "
        f"{process * us:.1f})"
    )
    rows: list[tuple[str, float]] = []
    trio_stats = pstats.Stats(str(where / "trio.prof"))
    totals = own_times(trio_stats, TRIO_GROUPS)
    profiled_sum = sum(totals.values()) or 1.0
    for group, _ in TRIO_GROUPS:
        rows.append((f"trio thread: {group}", totals[group] / profiled_sum * trio_cpu))
    if (where / "threads.prof").exists():
        thread_totals = own_times(pstats.Stats(str(where / "threads.prof")), THREAD_GROUPS)
        thread_sum = sum(thread_totals.values()) or 1.0
        for group, _ in THREAD_GROUPS:
            share = thread_totals[group] / thread_sum
            rows.append((f"worker threads: {group}", share * in_calls))
    else:
        rows.append(("worker threads: functions sent there", in_calls))
    rows.append(("worker threads: the rest (thread cache, waking trio)", hop_rest))
    rows.append(("PostgreSQL server (all its processes)", server))
    print("\n| part | us per transition | share |\n|---|---:|---:|")
    for part, seconds in rows:
        print(f"| {part} | {seconds * us:.1f} | {seconds / total:.0%} |")
    print(f"| total: worker process + server (unprofiled) | {total * us:.1f} | 100% |")
    print(
        f"| raw batched psycopg, same run: client + server | {raw_total * us:.1f} "
        f"| {raw_total / total:.0%} |"
    )
    if statements:
        print("\npg_stat_statements of the unprofiled run (calls per transition, ms total):")
        for calls, ms, query in statements:
            print(f"  {calls / n:6.2f} {ms:9.1f}  {query}")
    print("\ntop 25 by own time, trio thread:")
    trio_stats.sort_stats("tottime").print_stats(25)
    if (where / "threads.prof").exists():
        print("top 15 by own time, worker threads:")
        pstats.Stats(str(where / "threads.prof")).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000)
