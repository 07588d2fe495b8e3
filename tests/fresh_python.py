"""Run Python in a fresh interpreter (nothing imported yet), from the project's root, and
return what it printed: for what only a new process shows (import side effects, missing
optional packages, the benchmarks' command line)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_output(*args: str, timeout: float = 60) -> str:
    """The standard output of ``python *args``; fails the test with both outputs if the
    process failed."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def printed_lines(script: str) -> list[str]:
    """The lines ``script`` (dedented) printed."""
    return python_output("-c", textwrap.dedent(script)).splitlines()
