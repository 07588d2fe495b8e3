"""Consecutive errors of each function on each run, kept in memory: the back-off after an
error grows with them, a run pauses when they reach its limit, and ``states()`` reports the
processes with runs in an error back-off as ERRORING."""

from __future__ import annotations

from typing import final


@final
class ErrorCounts:
    """Error counts by run id, then by key (``step fn``, ``timeout fn``, ``callback fn``)."""

    def __init__(self, processes: dict[str, str]) -> None:
        self._counts: dict[str, dict[str, int]] = {}
        self._processes = processes
        """Key -> the name of the process whose errors they are."""

    def add(self, run_id: str, key: str) -> int:
        """One more consecutive error of ``key`` on the run; returns the count."""
        counts = self._counts.setdefault(run_id, {})
        count = counts[key] = counts.get(key, 0) + 1
        return count

    def reset(self, run_id: str, key: str) -> None:
        """The function behind ``key`` returned normally: its errors are no longer
        consecutive."""
        counts = self._counts.get(run_id)
        if counts is not None:
            counts.pop(key, None)
            if not counts:
                del self._counts[run_id]

    def forget(self, run_id: str) -> None:
        """A new version of the run was stored: every count starts again."""
        if self._counts:
            self._counts.pop(run_id, None)

    def erroring(self) -> set[str]:
        """Names of the processes with runs in an error back-off."""
        found: set[str] = set()
        for counts in self._counts.values():
            for key in counts:
                name = self._processes.get(key)
                if name is not None:
                    found.add(name)
        return found
