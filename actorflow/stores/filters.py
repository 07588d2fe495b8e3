"""Validation of list_runs filters, shared by every store."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from actorflow._model.errors import InvalidArgument
from actorflow._model.record import RawRecord
from actorflow._model.run_state import RunState

MAX_PAGE = 10_000


@attrs.frozen
class RunFilter:
    """A checked list_runs filter; ``statuses``/``run_states`` are None for 'any'."""

    foreign_id: str | None
    statuses: frozenset[int] | None
    run_states: frozenset[RunState] | None
    limit: int

    @classmethod
    def make(
        cls,
        *,
        foreign_id: str | None,
        status: int | Sequence[int] | None,
        run_state: RunState | Sequence[RunState] | None,
        limit: int,
    ) -> RunFilter:
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be an int from 1 to {MAX_PAGE}, not {limit!r}")
        statuses = None
        if status is not None:
            statuses = frozenset([int(status)] if isinstance(status, int) else map(int, status))
        run_states = None
        if run_state is not None:
            try:
                if isinstance(run_state, int):
                    run_states = frozenset([RunState(run_state)])
                else:
                    run_states = frozenset(RunState(s) for s in run_state)
            except ValueError as exc:
                raise InvalidArgument(f"run_state: {exc}") from None
        return cls(foreign_id, statuses, run_states, limit)

    def matches(self, record: RawRecord) -> bool:
        return (
            (self.foreign_id is None or record.foreign_id == self.foreign_id)
            and (self.statuses is None or record.status in self.statuses)
            and (self.run_states is None or record.run_state in self.run_states)
        )
