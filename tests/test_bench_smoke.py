"""`python -m bench --quick` runs every benchmark at a small scale and prints figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmarks_run_and_print_figures(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--write", str(doc)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for figure in (
        "raw sqlite3: UPDATE+INSERT, 50 per commit",
        "SQLiteStore: 1,000 runs x 3 no-op steps",
        "MemoryStore: 1,000 runs x 3 no-op steps",
        "trigger -> completion p99",
        "peak RSS per parked run",
        "SQLiteStore: trigger, nothing running p99.9",
        "SQLiteStore: trigger -> completion, 1,000 in flight p99",
        "SQLiteStore: 16 web handlers, runs/s",
        "x lean raw",
    ):
        assert figure in done.stdout, done.stdout
    assert "x batched raw" in done.stdout
    # The figures section goes where it is told, between its markers.
    text = doc.read_text()
    assert "<!-- bench:begin" in text and "<!-- bench:end -->" in text
    assert "`python -m bench --quick`" in text
    assert "| SQLiteStore: 1,000 runs x 3 no-op steps |" in text


@pytest.mark.slow
def test_scale_benchmark_runs_at_a_tiny_size() -> None:
    """`python -m bench --scale` (minutes at its real sizes) still runs end to end."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "--sizes", "500", "--no-write"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for figure in (
        "| restart to ready",
        "| restart: CPU time",
        "| trigger_many per CPU second of the process (runs/s) |",
        "| trigger_many / plain sqlite3 inserts of the same rows (CPU) |",
        "| peak RSS (MB) |",
    ):
        assert figure in done.stdout, done.stdout
