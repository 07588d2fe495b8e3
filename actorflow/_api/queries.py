"""Reading runs: ``lookup``, ``latest``, ``list_runs``, ``count_runs``, ``history`` and
the live ``subscribe``."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TypeVar, cast

import trio

from actorflow._api.core import WorkflowCore
from actorflow._model.errors import InvalidArgument
from actorflow._model.record import Record
from actorflow._model.run_state import RunState
from actorflow._model.statuses import member_of
from actorflow._model.text import check_text
from actorflow.stores.feed import Subscription
from actorflow.stores.filters import RunFilter

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)


class Queries(WorkflowCore[T, S]):
    """Reading runs (part of ``af.Workflow``)."""

    async def lookup(self, run_id: str) -> Record[T, S]:
        """The latest version of a run. Raises RunNotFound."""
        return self._engine.typed(await self._store.lookup(self.name, self._run_id_arg(run_id)))

    async def latest(self, foreign_id: str) -> Record[T, S]:
        """The latest version of the newest run of ``foreign_id``. Raises RunNotFound."""
        raw = await self._store.latest(self.name, self._foreign_id_arg(foreign_id))
        return self._engine.typed(raw)

    async def list_runs(
        self,
        *,
        foreign_id: str | Sequence[str] | None = None,
        status: S | Sequence[S] | None = None,
        run_state: RunState | Sequence[RunState] | None = None,
        limit: int = 25,
        after: str | None = None,
        descending: bool = False,
        foreign_id_prefix: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[Record[T, S]]:
        """The latest version of each matching run, in creation order (keyset pages).

        ``foreign_id`` is one id or a sequence of ids; ``created_after`` (inclusive) and
        ``created_before`` (exclusive) are aware datetimes. Raises InvalidArgument for bad
        filters and RunNotFound for an unknown ``after``."""
        self._filter_text(foreign_id, foreign_id_prefix)
        if not isinstance(descending, bool):
            raise InvalidArgument(
                f"workflow {self.name!r}: descending must be True or False, not {descending!r}"
            )
        if after is not None:
            after = self._run_id_arg(after, "after")
        flt = RunFilter.make(
            foreign_id=foreign_id,
            status=self._statuses_arg(status),
            run_state=run_state,
            foreign_id_prefix=foreign_id_prefix,
            created_after=created_after,
            created_before=created_before,
        )
        found = await self._store.list_runs(
            self.name, flt, limit=limit, after=after, descending=descending
        )
        return [self._engine.typed(raw) for raw in found]

    async def count_runs(
        self,
        *,
        foreign_id: str | Sequence[str] | None = None,
        status: S | Sequence[S] | None = None,
        run_state: RunState | Sequence[RunState] | None = None,
        foreign_id_prefix: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> dict[tuple[S, RunState], int]:
        """How many runs match (the filters of :meth:`list_runs`), by (status, run state).

        Pairs without runs are left out; ``sum(counts.values())`` is the total."""
        self._filter_text(foreign_id, foreign_id_prefix)
        flt = RunFilter.make(
            foreign_id=foreign_id,
            status=self._statuses_arg(status),
            run_state=run_state,
            foreign_id_prefix=foreign_id_prefix,
            created_after=created_after,
            created_before=created_before,
        )
        counts = await self._store.count_runs(self.name, flt)
        status_type = self.status_type
        found: dict[tuple[S, RunState], int] = {}
        for (value, run_state_), count in sorted(counts.items()):
            # A status no longer in the enum is counted under its value.
            key = (member_of(status_type, value) or cast(S, value), run_state_)
            found[key] = found.get(key, 0) + count
        return found

    def _statuses_arg(self, status: S | Sequence[S] | None) -> int | list[int] | None:
        if status is None:
            return None
        if isinstance(status, int | str) or not isinstance(status, Sequence):
            return int(self._status_arg(status))  # InvalidArgument for what is no status
        return [int(self._status_arg(s)) for s in status]

    def _filter_text(self, foreign_id: object, *others: object) -> None:
        """InvalidArgument for a list_runs/count_runs filter string of invalid text (the
        store checks the types)."""
        values = list(others)
        if isinstance(foreign_id, str):
            values.append(foreign_id)
        elif isinstance(foreign_id, Sequence):
            values.extend(foreign_id)
        for value in values:
            if isinstance(value, str):
                check_text(value, f"workflow {self.name!r}: filter {value!r}")

    async def history(self, run_id: str) -> list[Record[T, S]]:
        """Every stored version of a run, oldest first. Raises RunNotFound."""
        found = await self._store.history(self.name, self._run_id_arg(run_id))
        return [self._engine.typed(raw) for raw in found]

    @asynccontextmanager
    async def subscribe(
        self, *, foreign_id: str | None = None, run_id: str | None = None, buffer: int = 1024
    ) -> AsyncIterator[AsyncIterator[Record[T, S]]]:
        """Live stream of every stored change of this workflow's runs that matches.

        The iterator raises :class:`Lagged` if more than ``buffer`` changes wait unread.
        """
        if foreign_id is not None:
            foreign_id = self._foreign_id_arg(foreign_id)
        if run_id is not None:
            run_id = self._run_id_arg(run_id)
        if not isinstance(buffer, int) or isinstance(buffer, bool) or buffer < 0:
            raise InvalidArgument(
                f"workflow {self.name!r}: buffer must be an int >= 0 (changes held unread), "
                f"not {buffer!r}"
            )
        with self._store.feed.subscribe(
            workflow_name=self.name, foreign_id=foreign_id, run_id=run_id, buffer=buffer
        ) as sub:
            yield self._typed_stream(sub, foreign_id)
        await trio.lowlevel.checkpoint()

    async def _typed_stream(
        self, sub: Subscription, foreign_id: str | None
    ) -> AsyncIterator[Record[T, S]]:
        async for raw in sub:
            if raw.workflow_name == self.name and foreign_id in (None, raw.foreign_id):
                yield self._engine.typed(raw)
