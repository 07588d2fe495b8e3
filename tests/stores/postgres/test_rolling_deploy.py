"""A rolling deploy on PostgreSQL with two real worker processes: version 1 and version 2
of one workflow side by side. Version 1 never processes a run version 2 wrote; once
version 1 stops, version 2 takes its shards over and finishes everything; nothing lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import actorflow as af
from actorflow.stores.postgres.shards import shard_of
from tests.stores.postgres.rolling_worker import SHARDS, WORKFLOW, build

DSN = os.environ.get("ACTORFLOW_PG_DSN", "")
WORKER = Path(__file__).with_name("rolling_worker.py")
ROOT = Path(__file__).resolve().parents[3]

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not DSN, reason="ACTORFLOW_PG_DSN not set: rolling deploy NOT tested"),
]


@pytest.fixture
def schema() -> Iterator[str]:
    import psycopg

    name = f"af_test_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'.encode())


def _sql(query: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        cursor = conn.execute(query.encode())
        return cursor.fetchall() if cursor.description else []


def _owners(schema: str) -> dict[int, str]:
    try:
        rows = _sql(
            f'SELECT shard, owner::text FROM "{schema}".shard_leases WHERE workflow_name = '
            f"'{WORKFLOW}' AND owner IS NOT NULL AND expires_at > now()"
        )
    except Exception:  # not created yet
        return {}
    return {int(shard): str(owner) for shard, owner in rows}


def _runs(schema: str) -> dict[str, tuple[str, int, dict[str, Any]]]:
    """foreign id -> (run id, status, object)."""
    try:
        rows = _sql(f'SELECT foreign_id, run_id, status, object FROM "{schema}".runs')
    except Exception:
        return {}
    return {fid: (rid, int(status), json.loads(obj)) for fid, rid, status, obj in rows}


def _wait(predicate: Callable[[], bool], within: float, what: str, logs: list[Path]) -> None:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)
            pytest.fail(f"not within {within} s: {what}\n{tails}")
        time.sleep(0.05)  # polling the database from a plain test, bounded by `within`


def _run(args: list[str], log: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    with log.open("ab") as out:
        done = subprocess.run(
            [sys.executable, str(WORKER), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, log.read_text()


def test_old_and_new_workers_side_by_side_never_share_a_run(schema: str, tmp_path: Path) -> None:
    fp1 = build(af.MemoryStore(), 1).fingerprint
    fp2 = build(af.MemoryStore(), 2).fingerprint
    assert fp1 != fp2
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    logs = {v: tmp_path / f"v{v}.log" for v in (1, 2)}
    trigger_log = tmp_path / "trigger.log"
    all_logs = [*logs.values(), trigger_log]
    workers: dict[int, subprocess.Popen[bytes]] = {}

    def start(version: int) -> None:
        with logs[version].open("wb") as out:
            workers[version] = subprocess.Popen(
                [sys.executable, str(WORKER), "work", DSN, schema, str(version)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    try:
        # The old deploy: version 1 alone, 10 runs waiting for their callback.
        start(1)
        _wait(lambda: len(_owners(schema)) == SHARDS, 30, "v1 holding every shard", all_logs)
        _run(["trigger", DSN, schema, "1", "0", "10"], trigger_log)
        _wait(
            lambda: sum(s == 2 for _, s, _ in _runs(schema).values()) == 10,
            30,
            "10 version-1 runs waiting",
            all_logs,
        )
        # The deploy starts: version 2 joins; the shards are split between the two.
        start(2)
        _wait(
            lambda: len(set(_owners(schema).values())) == 2 and len(_owners(schema)) == SHARDS,
            30,
            "v1 and v2 sharing the shards",
            all_logs,
        )
        owners = _owners(schema)
        # New runs come in through version 2 (a web process already deployed).
        _run(["trigger", DSN, schema, "2", "100", "40"], trigger_log)
        ids = {fid: rid for fid, (rid, _, _) in _runs(schema).items() if _new(fid)}
        assert len(ids) == 40
        # Version 2 processes the new runs of its shards; version 1 leaves the others alone.
        v2_worker = _worker_of(schema, workers[2].pid)
        mine = {fid for fid, rid in ids.items() if owners[shard_of(rid, SHARDS)] == v2_worker}
        theirs = set(ids) - mine
        assert mine and theirs, (len(mine), len(theirs))
        _wait(
            lambda: all(_runs(schema)[f][1] == 2 for f in mine),
            30,
            "v2 processing the new runs of its shards",
            all_logs,
        )
        # The same moment: every new run in version 1's shards is untouched (version 1).
        assert {_runs(schema)[f][1] for f in theirs} == {1}
        assert _sql(
            f'SELECT count(*) FROM "{schema}".history WHERE run_id IN '
            f"({', '.join(repr(ids[f]) for f in theirs)}) AND version > 1"
        ) == [(0,)]
        # The deploy finishes: version 1 stops; version 2 takes its shards over.
        workers[1].send_signal(signal.SIGTERM)
        assert workers[1].wait(timeout=30) == 0, logs[1].read_text()
        _wait(
            lambda: all(_runs(schema)[f][1] == 2 for f in ids),
            60,
            "v2 finishing the runs version 1 left",
            all_logs,
        )
        workers[2].send_signal(signal.SIGTERM)
        assert workers[2].wait(timeout=30) == 0, logs[2].read_text()
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    # Every new run: written by version 2 only, processed once, nothing lost.
    for fid, run_id in ids.items():
        history = _sql(
            f"SELECT version, status, meta->>'definition', object FROM \"{schema}\".history "
            f"WHERE run_id = '{run_id}' ORDER BY version"
        )
        assert [(v, s, d) for v, s, d, _ in history] == [(1, 1, fp2), (2, 2, fp2)], (fid, history)
        assert json.loads(history[-1][3]) == {"by": ["v2"], "priority": 7}
    # The old runs are still waiting, as version 1 left them, fit for version 2.
    old = {fid: v for fid, v in _runs(schema).items() if not _new(fid)}
    assert len(old) == 10 and {s for _, s, _ in old.values()} == {2}
    assert {json.dumps(o) for _, _, o in old.values()} == {'{"by": ["v1"]}'}
    assert "Traceback" not in logs[1].read_text() + logs[2].read_text()


def _new(foreign_id: str) -> bool:
    """Triggered by version 2 (ticket-100 and later)."""
    return int(foreign_id.removeprefix("ticket-")) >= 100


def _worker_of(schema: str, pid: int) -> str:
    rows = _sql(f'SELECT worker_id::text FROM "{schema}".workers WHERE pid = {pid}')
    assert len(rows) == 1, rows
    return str(rows[0][0])
