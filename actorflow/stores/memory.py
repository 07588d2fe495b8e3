"""MemoryStore: the in-process store for tests and demos. Nothing survives the process."""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from datetime import datetime
from typing import final

import attrs
import trio

from actorflow._model.errors import ActorflowError, InvalidArgument, StoreError, VersionConflict
from actorflow._model.record import Event, RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow.stores.base import ClosingStore
from actorflow.stores.feed import ChangeFeed
from actorflow.stores.filters import ANY_RUN, RunFilter, check_limit, count_key
from actorflow.stores.messages import in_progress, no_foreign_run, no_run
from actorflow.stores.scrub import scrub_meta

CLOSED = "MemoryStore: the store is closed; open a new MemoryStore"


def _first(item: tuple[tuple[datetime, int], Timer]) -> tuple[datetime, int]:
    return item[0]


def prunable(
    old: RawRecord, latest: RawRecord, keep_last: int | None, before: datetime | None
) -> bool:
    """Whether history retention lets version ``old`` of a finished run go (see
    :meth:`Store.prune_history`)."""
    if old.version >= latest.version:
        return False
    if keep_last is not None and old.version > latest.version - keep_last:
        return False
    return before is None or old.updated_at < before


@attrs.define
class _WorkflowRuns:
    order: list[str] = attrs.Factory(list)
    seq: dict[str, int] = attrs.Factory(dict)
    latest_by_foreign: dict[str, str] = attrs.Factory(dict)


@final
class MemoryStore(ClosingStore):
    """A store held in dictionaries. Fast, deterministic under the autojump clock, volatile."""

    shared = False

    def __init__(self) -> None:
        self._feed = ChangeFeed()
        self._workflows: dict[str, _WorkflowRuns] = {}
        self._runs: dict[str, RawRecord] = {}
        self._history: dict[str, list[RawRecord]] = {}
        self._events: list[Event] = []
        self._timers: dict[str, list[Timer]] = {}
        self._timer_ids: dict[str, int] = {}
        """run id -> the id of its first timer (the others follow): ids for timers_after."""
        self._next_timer_id = 1
        self._cursors: dict[str, str] = {}
        self._schedules: dict[str, datetime] = {}
        self._definitions: dict[str, dict[str, tuple[str, datetime]]] = {}
        self._closed = False

    @property
    def feed(self) -> ChangeFeed:
        return self._feed

    def __repr__(self) -> str:
        return f"MemoryStore(runs={len(self._runs)})"

    async def _open(self) -> None:
        """The checkpoint every call starts with; StoreError once the store is closed."""
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise StoreError(CLOSED)

    def _log(self, record: RawRecord) -> None:
        self._history.setdefault(record.run_id, []).append(record)
        self._events.append(
            Event(
                id=len(self._events) + 1,
                workflow_name=record.workflow_name,
                foreign_id=record.foreign_id,
                run_id=record.run_id,
                status=record.status,
                run_state=record.run_state,
                version=record.version,
                created_at=record.updated_at,
            )
        )
        self._feed.publish(record)

    async def create_run(self, record: RawRecord, timers: Sequence[Timer] = ()) -> RawRecord:
        await self._open()
        return self._create(record, timers)

    async def create_runs(
        self, items: Sequence[tuple[RawRecord, Sequence[Timer]]]
    ) -> list[RawRecord | ActorflowError]:
        await self._open()
        results: list[RawRecord | ActorflowError] = []
        for record, timers in items:
            try:
                results.append(self._create(record, timers))
            except ActorflowError as exc:
                results.append(exc)
        return results

    def _set_timers(self, run_id: str, timers: Sequence[Timer]) -> None:
        if timers:
            self._timers[run_id] = sorted(timers, key=lambda t: t.fire_at)
            self._timer_ids[run_id] = self._next_timer_id
            self._next_timer_id += len(timers)
        else:
            self._timers.pop(run_id, None)
            self._timer_ids.pop(run_id, None)

    def _create(self, record: RawRecord, timers: Sequence[Timer]) -> RawRecord:
        runs = self._workflows.setdefault(record.workflow_name, _WorkflowRuns())
        previous_id = runs.latest_by_foreign.get(record.foreign_id)
        if previous_id is not None:
            previous = self._runs[previous_id]
            if not previous.run_state.finished:
                raise in_progress(
                    record.workflow_name, record.foreign_id, previous_id, previous.run_state
                )
        if record.run_id in self._runs:
            raise InvalidArgument(f"run id {record.run_id} already exists")
        runs.seq[record.run_id] = len(runs.order)
        runs.order.append(record.run_id)
        runs.latest_by_foreign[record.foreign_id] = record.run_id
        self._runs[record.run_id] = record
        self._set_timers(record.run_id, timers)
        self._log(record)
        return record

    async def commit(
        self,
        record: RawRecord,
        *,
        timers: Sequence[Timer] | None = None,
        scrub_history: bool = False,
    ) -> RawRecord:
        await self._open()
        current = self._get(record.workflow_name, record.run_id)
        if current.version != record.version - 1:
            raise VersionConflict(
                f"run {record.run_id} is at version {current.version}, not {record.version - 1}"
            )
        self._runs[record.run_id] = record
        if timers is not None:
            self._set_timers(record.run_id, timers)
        if scrub_history:
            self._history[record.run_id] = [
                attrs.evolve(old, object=record.object, meta=scrub_meta(old.meta))
                for old in self._history[record.run_id]
            ]
        self._log(record)
        return record

    def _get(self, workflow_name: str, run_id: str) -> RawRecord:
        record = self._runs.get(run_id)
        if record is None or record.workflow_name != workflow_name:
            raise no_run(workflow_name, run_id)
        return record

    async def lookup(self, workflow_name: str, run_id: str) -> RawRecord:
        await self._open()
        return self._get(workflow_name, run_id)

    async def latest(self, workflow_name: str, foreign_id: str) -> RawRecord:
        await self._open()
        runs = self._workflows.get(workflow_name)
        run_id = runs.latest_by_foreign.get(foreign_id) if runs else None
        if run_id is None:
            raise no_foreign_run(workflow_name, foreign_id)
        return self._runs[run_id]

    async def list_runs(
        self,
        workflow_name: str,
        flt: RunFilter = ANY_RUN,
        *,
        limit: int = 25,
        after: str | None = None,
        descending: bool = False,
    ) -> list[RawRecord]:
        await self._open()
        limit = check_limit(limit)
        runs = self._workflows.get(workflow_name, _WorkflowRuns())
        if after is not None:
            if after not in runs.seq:
                raise no_run(workflow_name, after, "after=")
            position = runs.seq[after]
        else:
            position = len(runs.order) if descending else -1
        if descending:
            indexes = range(position - 1, -1, -1)
        else:
            indexes = range(position + 1, len(runs.order))
        found: list[RawRecord] = []
        for index in indexes:
            record = self._runs[runs.order[index]]
            if flt.matches(record):
                found.append(record)
                if len(found) >= limit:
                    break
        return found

    async def count_runs(
        self, workflow_name: str, flt: RunFilter = ANY_RUN
    ) -> dict[tuple[int, RunState], int]:
        await self._open()
        counts: dict[tuple[int, RunState], int] = {}
        for run_id in self._workflows.get(workflow_name, _WorkflowRuns()).order:
            record = self._runs[run_id]
            if flt.matches(record):
                key = count_key(record)
                counts[key] = counts.get(key, 0) + 1
        return counts

    async def history(self, workflow_name: str, run_id: str) -> list[RawRecord]:
        await self._open()
        self._get(workflow_name, run_id)
        return list(self._history[run_id])

    async def list_timers(self, workflow_name: str, run_id: str | None = None) -> list[Timer]:
        await self._open()
        if run_id is not None:
            return [t for t in self._timers.get(run_id, ()) if t.workflow_name == workflow_name]
        found = [t for ts in self._timers.values() for t in ts if t.workflow_name == workflow_name]
        found.sort(key=lambda t: t.fire_at)
        return found

    async def timers_after(
        self, workflow_name: str, after: tuple[datetime, int] | None, limit: int
    ) -> list[tuple[int, Timer]]:
        await self._open()
        keyed = (
            ((timer.fire_at, self._timer_ids[run_id] + index), timer)
            for run_id, timers in self._timers.items()
            for index, timer in enumerate(timers)
            if timer.workflow_name == workflow_name
        )
        if after is not None:
            keyed = ((key, timer) for key, timer in keyed if key > after)
        return [(key[1], timer) for key, timer in heapq.nsmallest(limit, keyed, key=_first)]

    async def prune_history(
        self,
        workflow_name: str,
        *,
        keep_last: int | None,
        before: datetime | None,
        finished_before: datetime,
        after_id: int,
        scan: int,
    ) -> tuple[int, int | None]:
        await self._open()
        runs = self._workflows.get(workflow_name, _WorkflowRuns())
        # Ids here: positions in the creation order (the memory store's history is per run).
        end = min(after_id + scan, len(runs.order))
        deleted = 0
        for run_id in runs.order[after_id:end]:
            latest = self._runs[run_id]
            if not latest.run_state.finished or latest.updated_at >= finished_before:
                continue
            kept = [
                old for old in self._history[run_id] if not prunable(old, latest, keep_last, before)
            ]
            deleted += len(self._history[run_id]) - len(kept)
            self._history[run_id] = kept
        return deleted, (end if end < len(runs.order) else None)

    async def read_events(
        self, after: int, limit: int = 100, workflow_name: str | None = None
    ) -> list[Event]:
        await self._open()
        start = bisect.bisect_right(self._events, after, key=lambda e: e.id)
        found: list[Event] = []
        for event in self._events[start:]:
            if workflow_name is None or event.workflow_name == workflow_name:
                found.append(event)
                if len(found) >= limit:
                    break
        return found

    async def last_event_id(self) -> int:
        await self._open()
        return len(self._events)

    async def get_cursor(self, name: str) -> str | None:
        await self._open()
        return self._cursors.get(name)

    async def set_cursor(self, name: str, value: str) -> None:
        await self._open()
        self._cursors[name] = value

    async def claim_schedule(self, key: str, fire_at: datetime) -> bool:
        await self._open()
        last = self._schedules.get(key)
        if last is not None and fire_at <= last:
            return False
        self._schedules[key] = fire_at
        return True

    async def last_schedule(self, key: str) -> datetime | None:
        await self._open()
        return self._schedules.get(key)

    async def register_definition(
        self, workflow_name: str, fingerprint: str, summary: str, now: datetime
    ) -> list[tuple[str, str, datetime]]:
        await self._open()
        known = self._definitions.setdefault(workflow_name, {})
        known.setdefault(fingerprint, (summary, now))
        return [(fp, text, at) for fp, (text, at) in known.items()]

    async def aclose(self) -> None:
        """Close the store: every call from now on raises StoreError, and so do the
        subscriptions and waits on its feed. Idempotent."""
        await trio.lowlevel.checkpoint()
        self._closed = True
        self._feed.close(CLOSED)
