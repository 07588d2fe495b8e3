"""kill -9 a worker mid-way through 2,000 runs; a second process finishes every one of them.

Real processes, a real SQLite file: the worker (tests/runtime/crash_worker.py) triggers the runs
and works on them slowly; this test watches the file's event log (a read-only sqlite3
connection) and sends SIGKILL once some, but not all, runs have completed. A second
worker process opens the same file and must complete every run. Then every run's history
is checked: each transition exactly once, versions without gaps, each step applied
exactly once to the object; and the runs parked at a callback did not move.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.runtime.crash_worker import EXPECTED, PARKED, RUNS, Step

WORKER = Path(__file__).with_name("crash_worker.py")
KILL_AFTER_COMPLETED = 200
"""Completed runs to see in the event log before the kill (of RUNS)."""

INITIATED, RUNNING, COMPLETED = 1, 2, 5


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def _completed(path: Path) -> int | None:
    """Completed runs according to the event log (history), while some others are mid-way
    (RUNNING: the kill must cut runs in flight, and the runs go 20 at a time, so between
    two such groups none is); None while unreadable or none is mid-way."""
    try:
        conn = _read_only(path)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT count(*) FROM history WHERE run_state = ?", (COMPLETED,))
        mid_way = conn.execute("SELECT count(*) FROM runs WHERE run_state = ?", (RUNNING,))
        return int(row.fetchone()[0]) if mid_way.fetchone()[0] else None
    except sqlite3.Error:  # not created yet, or busy for a moment
        return None
    finally:
        conn.close()


def _kill_when_mid_way(worker: subprocess.Popen[bytes], path: Path, log: Path) -> int:
    """Poll the file until KILL_AFTER_COMPLETED runs completed, then SIGKILL the worker."""
    deadline = time.monotonic() + 40
    while True:
        done = _completed(path)
        if done is not None and done >= KILL_AFTER_COMPLETED:
            break
        if worker.poll() is not None:
            pytest.fail(f"the worker exited ({worker.returncode}):\n{log.read_text()}")
        if time.monotonic() > deadline:
            worker.kill()
            pytest.fail(f"no run completed within 40 s ({done}):\n{log.read_text()}")
        time.sleep(0.005)  # polling the file, bounded by the deadline
    os.kill(worker.pid, signal.SIGKILL)
    assert worker.wait(timeout=10) == -signal.SIGKILL
    return done


def _histories(path: Path) -> dict[str, list[tuple[int, int, int, list[str]]]]:
    """run_id -> [(version, status, run_state, applied)] from the history, oldest first."""
    conn = _read_only(path)
    try:
        found: dict[str, list[tuple[int, int, int, list[str]]]] = {}
        for run_id, version, status, run_state, obj in conn.execute(
            "SELECT run_id, version, status, run_state, object FROM history "
            "WHERE workflow_name = 'crash' ORDER BY run_id, version"
        ):
            found.setdefault(run_id, []).append(
                (version, status, run_state, json.loads(obj)["applied"])
            )
        return found
    finally:
        conn.close()


def _snapshot(path: Path) -> tuple[dict[str, str], Counter[tuple[int, int]], int]:
    """(foreign id -> run id, runs per (status, run_state), pending timers)."""
    conn = _read_only(path)
    try:
        ids = dict(conn.execute("SELECT foreign_id, run_id FROM runs").fetchall())
        states: Counter[tuple[int, int]] = Counter(
            {
                (s, r): n
                for s, r, n in conn.execute(
                    "SELECT status, run_state, count(*) FROM runs GROUP BY status, run_state"
                )
            }
        )
        timers = int(conn.execute("SELECT count(*) FROM timers").fetchone()[0])
        return ids, states, timers
    finally:
        conn.close()


@pytest.mark.slow
def test_kill_9_mid_way_then_a_second_process_completes_every_run_exactly_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "crash.db"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), "work", str(path)], stdout=out, stderr=out
        )
        try:
            seen = _kill_when_mid_way(worker, path, log)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    # Killed mid-way: some runs complete, the others spread over the statuses before.
    ids, at_kill, timers_at_kill = _snapshot(path)
    assert len(ids) == RUNS + PARKED
    completed_at_kill = at_kill[(Step.F, COMPLETED)]
    assert seen <= completed_at_kill < RUNS, at_kill
    in_flight = sum(at_kill[(s, RUNNING)] for s in (Step.B, Step.C, Step.D, Step.E))
    assert in_flight > 0, at_kill
    assert at_kill[(Step.WAITING, INITIATED)] == PARKED
    before = _histories(path)

    recovery = subprocess.run(
        [sys.executable, str(WORKER), "recover", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert recovery.returncode == 0, recovery.stdout + recovery.stderr

    histories = _histories(path)
    _, after, timers_after = _snapshot(path)
    assert after[(Step.F, COMPLETED)] == RUNS, after
    assert timers_after == 0  # every timeout fired (or was dropped with its status)
    path_statuses = [Step.A, Step.B, Step.C, Step.D, Step.E, Step.F]
    for i in range(RUNS):
        run_id = ids[f"run-{i}"]
        history = histories[run_id]
        where = f"run-{i} ({run_id}): {history}"
        assert [v for v, _, _, _ in history] == list(range(1, 7)), where
        assert [s for _, s, _, _ in history] == path_statuses, where
        assert [r for _, _, r, _ in history] == [INITIATED] + [RUNNING] * 4 + [COMPLETED], where
        # Version k holds exactly the first k-1 functions' effects: none twice, none lost.
        assert [a for _, _, _, a in history] == [EXPECTED[:k] for k in range(6)], where
        # What was stored before the kill was kept as it was.
        assert history[: len(before[run_id])] == before[run_id], where

    # Parked runs stayed passive through the kill and the recovery ...
    for i in range(1, PARKED):
        run_id = ids[f"parked-{i}"]
        assert histories[run_id] == [(1, Step.WAITING, INITIATED, [])], histories[run_id]
    # ... and one still answered its callback (the recovering worker paid parked-0).
    paid = histories[ids["parked-0"]]
    assert [(v, s) for v, s, _, _ in paid] == [(1, Step.WAITING), (2, Step.PAID)]
    assert paid[-1][3] == ["paid"]
    print(
        f"killed with {completed_at_kill}/{RUNS} runs complete, {timers_at_kill} timers "
        f"pending, statuses {dict(at_kill)}"
    )
