"""`python -m bench --quick` runs every benchmark at a small scale and prints figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fresh_python import python_output


@pytest.mark.slow
def test_quick_benchmarks_run_and_print_figures(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    out = python_output("-m", "bench", "--quick", "--write", str(doc), timeout=120)
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
        assert figure in out, out
    assert "x batched raw" in out
    # The figures section goes where it is told, between its markers.
    text = doc.read_text()
    assert "<!-- bench:begin" in text and "<!-- bench:end -->" in text
    assert "`python -m bench --quick`" in text
    assert "| SQLiteStore: 1,000 runs x 3 no-op steps |" in text


@pytest.mark.slow
def test_scale_benchmark_runs_at_a_tiny_size() -> None:
    """`python -m bench --scale` (minutes at its real sizes) still runs end to end."""
    out = python_output("-m", "bench", "--scale", "--sizes", "500", "--no-write", timeout=180)
    for figure in (
        "| restart to ready",
        "| restart: CPU time",
        "| trigger_many per CPU second of the process (runs/s) |",
        "| trigger_many / plain sqlite3 inserts of the same rows (CPU) |",
        "| peak RSS (MB) |",
    ):
        assert figure in out, out
