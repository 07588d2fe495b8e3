"""Run a short Python script in a fresh interpreter (nothing imported yet), from the
project's root, and return the lines it printed: for what only a new process shows
(import side effects, missing optional packages)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def printed_lines(script: str) -> list[str]:
    """The lines ``script`` (dedented) printed; fails the test with its stderr if it failed."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()
