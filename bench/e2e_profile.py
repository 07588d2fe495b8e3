"""Where the CPU of benchmark (4) of bench/latency.py goes, per transition.

    python -m bench.e2e_profile [runs]     # default 3,000 runs x 3 steps

Runs, in one process and one after another: the lean raw sqlite3 loop (CPU per
transition), the end-to-end benchmark unprofiled (CPU per transition, statements per
transition through ``set_trace_callback``), and the same under cProfile with
``time.process_time`` as its clock (waits do not count). The profile's own time per
function (tottime) is summed into groups by where the function lives, scaled to the
unprofiled CPU per transition (cProfile inflates Python calls more than C calls, so the
split is an estimate: read the shares, not the digits).
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

import actorflow as af
from bench.latency import end_to_end_rate, raw_lean_rate

# (group, test on the profile's (file, line, function) key), the first that matches.
GROUPS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("sqlite3 statements (execute, executemany, fetch, commit)", lambda f, n: "sqlite3" in n),
    (
        "record encoding/decoding (json, codec, params)",
        lambda f, n: (
            "json" in f
            or "json" in n
            or "/_model/codec" in f
            or "cattrs" in f
            or "/stores/sqlite/codec" in f
        ),
    ),
    (
        "group commit and the store's write path (queue, batch, publish order)",
        lambda f, n: "/stores/group_commit" in f or "/stores/sqlite/" in f,
    ),
    ("feed publishing and subscribers", lambda f, n: "/stores/feed" in f),
    ("trio scheduling and task switches", lambda f, n: "/trio/" in f or "outcome" in f),
    (
        "actor and engine (runtime, model, API)",
        lambda f, n: "/actorflow/" in f or "/bench/" in f,
    ),
    ("other (built-ins called from outside actorflow)", lambda f, n: True),
]


def _group(file: str, name: str) -> str:
    for group, test in GROUPS:
        if test(file, name):
            return group
    return GROUPS[-1][0]


@attrs.define
class Cpu:
    """CPU seconds of one measured call: the process (every thread), the calling thread
    (the trio thread, for the engine) and the collector's passes within it."""

    process: float = 0.0
    thread: float = 0.0
    collector: float = 0.0
    collections: int = 0
    wall: float = 0.0


def _cpu(fn: Callable[[], Any]) -> tuple[Any, Cpu]:
    gc.collect()
    found = Cpu()
    started: list[float] = []

    def collector(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            found.collections += 1
            started.append(time.thread_time())
        elif started:
            found.collector += time.thread_time() - started.pop()

    gc.callbacks.append(collector)
    process, thread, wall = time.process_time(), time.thread_time(), time.perf_counter()
    try:
        value = fn()
    finally:
        gc.callbacks.remove(collector)
    found.process = time.process_time() - process
    found.thread = time.thread_time() - thread
    found.wall = time.perf_counter() - wall
    return value, found


def e2e(
    path: Path, runs: int, *, profile: cProfile.Profile | None = None, count: bool = False
) -> tuple[Cpu, Counter[str]]:
    """CPU of the end-to-end benchmark on a new file, and (``count``) its statements."""
    statements: Counter[str] = Counter()

    async def main() -> None:
        store = af.SQLiteStore(path)
        try:
            conn = store._db.connection()
            if count:
                conn.set_trace_callback(lambda sql: statements.update([sql.split(None, 1)[0]]))
            if profile is not None:
                profile.enable()
            await end_to_end_rate(store, runs)
            if profile is not None:
                profile.disable()
            conn.set_trace_callback(None)
        finally:
            await store.aclose()

    _, cpu = _cpu(lambda: trio.run(main))
    return cpu, statements


def _own_times(stats: pstats.Stats) -> Counter[str]:
    """Own time per group; a built-in's (isinstance, dict methods, ...) goes to its
    callers' groups in proportion, except SQL and JSON, which are groups of their own."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    totals: Counter[str] = Counter()
    for (file, _, name), (_, _, own, _, callers) in raw.items():
        group = _group(file, name)
        if file != "~" or group != GROUPS[-1][0] or not callers:
            totals[group] += own
            continue
        called = sum(entry[2] for entry in callers.values()) or 1.0
        for (caller_file, _, caller_name), entry in callers.items():
            totals[_group(caller_file, caller_name)] += own * entry[2] / called
    return totals


def main(runs: int = 3_000) -> None:
    transitions = 3 * runs
    with tempfile.TemporaryDirectory(prefix="actorflow-e2e-profile-") as tmp:
        directory = Path(tmp)
        lean_rate, raw = _cpu(lambda: raw_lean_rate(directory, 20 * runs))
        plain, _ = e2e(directory / "plain.db", runs)
        _, statements = e2e(directory / "counted.db", runs, count=True)
        profile = cProfile.Profile(time.thread_time)
        e2e(directory / "profiled.db", runs, profile=profile)
    raw_per = raw.process / (20 * runs)
    per = plain.thread / transitions
    us = 1e6
    totals = _own_times(pstats.Stats(profile))
    profiled = sum(totals.values())
    print(f"{runs:,} runs x 3 steps, {transitions:,} transitions (+ {runs:,} triggers)")
    print(
        f"wall: lean raw {lean_rate:,.0f}/s, actorflow {transitions / plain.wall:,.0f}/s "
        f"({transitions / plain.wall / lean_rate:.3f} x lean raw)"
    )
    print(f"lean raw sqlite3: {raw_per * us:.1f} us CPU per transition (process)")
    print(
        f"actorflow: {per * us:.1f} us CPU per transition on the trio thread "
        f"({raw_per / per:.3f} x raw), {plain.process / transitions * us:.1f} us in the "
        f"process (other threads: checkpointer, watcher); collector "
        f"{plain.collector / transitions * us:.1f} us ({plain.collections} passes)"
    )
    verbs = {k: round(v / transitions, 2) for k, v in statements.most_common()}
    print(f"statements per transition: {sum(statements.values()) / transitions:.2f} {verbs}")
    collector = plain.collector / plain.thread
    print("\n| part | us per transition | share |\n|---|---:|---:|")
    for group, _ in GROUPS:
        share = totals[group] / profiled * (1 - collector)
        print(f"| {group} | {share * per * us:.1f} | {share:.0%} |")
    print(
        f"| the collector (gc callbacks, unprofiled) | {collector * per * us:.1f} "
        f"| {collector:.0%} |"
    )
    print(f"| total (trio thread CPU, unprofiled) | {per * us:.1f} | 100% |")
    print(f"| lean raw sqlite3, same run | {raw_per * us:.1f} | {raw_per / per:.0%} |")
    print("\ntop 30 by own time (profiled run):")
    pstats.Stats(profile).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3_000)
