"""Starting runs: ``trigger``, ``trigger_many`` and the first version of a new run."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import attrs
import trio

from actorflow._api.core import WorkflowCore
from actorflow._model.errors import ActorflowError, InvalidArgument
from actorflow._model.record import Meta, RawRecord, Timer, new_run_id
from actorflow._model.run import Run
from actorflow._model.run_state import RunState
from actorflow._runtime.engine import NO_TIMERS

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

TRIGGER_MANY_CHUNK = 2000
"""Items per store call of trigger_many: one transaction of SQLiteStore (``MAX_CREATE``),
written in a worker thread while the next chunk is built. A multiple of ``YIELD_EVERY``:
trigger_many looks at the chunk's size when it yields."""
YIELD_EVERY = 100
"""trigger_many lets other tasks run after building this many runs."""

TriggerItem = str | Mapping[str, Any] | tuple[Any, ...]
"""An item of :meth:`Workflow.trigger_many`: a foreign id, a mapping or a tuple."""

_Chunk = tuple[list[int], list[tuple[RawRecord, list[Timer]]], Any]
"""trigger_many's runs for one store call: where each is in the results, the runs, and
what the store is given (its rows made ahead by ``prepare_runs``, when it has that)."""


async def _hand_over(
    to_writer: trio.MemorySendChannel[_Chunk], chunk: _Chunk, failed: list[Exception]
) -> bool:
    """Give the writer a chunk once it stored the previous one; False: it failed (and
    stopped), so nothing more is stored."""
    if failed:
        return False
    try:
        await to_writer.send(chunk)
    except trio.BrokenResourceError:
        return False
    return True


@attrs.frozen
class _Start:
    """What all new runs at one start status have in common (per trigger_many call)."""

    status: enum.IntEnum
    meta: Meta
    encoded: str | None
    """The encoded default object, when the object class makes the same default every
    time (no factory of ids or times: checked by making it twice); else None."""
    timed: bool
    """The status has timeouts: each run's timers are made with its own object."""


class Triggers(WorkflowCore[T, S]):
    """Starting runs (part of ``af.Workflow``)."""

    async def trigger(
        self, foreign_id: str, start: S | None = None, *, initial: T | None = None
    ) -> str:
        """Start a new run for ``foreign_id``; returns its run id.

        Raises:
            WorkflowInProgress: the latest run of ``foreign_id`` is not finished.
            InvalidArgument: a status outside the enum, or ``initial`` of the wrong type.
        """
        raw, timers = self._new_run(foreign_id, start, initial, self._clock.now())
        if not self._engine.lineage.registered:
            await self._engine.lineage.register()  # the first write of this definition
        stored = await self._store.create_run(raw, timers)
        supervisor = self._local_supervisor()
        if supervisor is not None:
            if timers:
                supervisor.wake_for_timers(raw.run_id, timers)
            if stored.status in self._definition.steps:
                supervisor.wake_now(raw.run_id, stored, timers)
        return raw.run_id

    async def trigger_many(self, items: Iterable[TriggerItem]) -> list[str | ActorflowError]:
        """Start many runs in few store transactions (backfills, imports).

        Each item is a foreign id, or a mapping with ``foreign_id`` and optionally
        ``start`` and ``initial``, or a tuple ``(foreign_id, start, initial)`` (the last
        two optional). Returns one result per item, in order: the new run id, or the error
        that refused that item (``WorkflowInProgress`` when the latest run of its foreign
        id is unfinished, also when an earlier item of this call started it;
        ``InvalidArgument`` for a malformed item). One refused item does not stop the others.

        Raises:
            InvalidArgument: ``items`` is not an iterable of items (a single string, say).
            StoreError: the store failed; items of earlier transactions may be stored.
        """
        # A string or a mapping is iterable, but of its characters or keys: one item given
        # where a sequence of them was meant, not runs to start.
        if isinstance(items, str | bytes | bytearray | Mapping) or not isinstance(items, Iterable):
            raise InvalidArgument(
                f"workflow {self.name!r}: trigger_many takes an iterable of items (foreign "
                f"ids, mappings or tuples), not {type(items).__name__}"
            )
        results: list[str | ActorflowError] = []
        # The store writes one chunk while the next is built (SQLiteStore writes in a
        # worker thread: the two cores work at once); the chunks are stored in order.
        to_writer, chunks = trio.open_memory_channel[_Chunk](0)
        failed: list[Exception] = []
        stopped: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_chunks, chunks, results, failed)
                async with to_writer:
                    try:
                        await self._build_chunks(items, results, to_writer, failed)
                    except Exception as exc:
                        # The caller's iterable failed (say): what was handed over is
                        # stored all the same (the writer finishes it), then this raises.
                        stopped = exc
        except BaseExceptionGroup as group:
            # Neither task raises an Exception here: a lone exception is a
            # KeyboardInterrupt or the like, raised as it came.
            if len(group.exceptions) != 1:
                raise
            raise group.exceptions[0] from None
        if stopped is not None:
            raise stopped
        if failed:
            raise failed[0]
        return results

    async def _build_chunks(
        self,
        items: Iterable[TriggerItem],
        results: list[str | ActorflowError],
        to_writer: trio.MemorySendChannel[_Chunk],
        failed: list[Exception],
    ) -> None:
        """trigger_many's new runs, handed to the writer a chunk at a time."""
        indices: list[int] = []  # where each run of the chunk is in results
        chunk: list[tuple[RawRecord, list[Timer]]] = []
        now = self._clock.now()
        shared: dict[S | None, _Start] = {}
        for item in items:
            try:
                if type(item) is str:  # the common case, without a call to parse it
                    made = self._new_run(item, None, None, now, shared)
                else:
                    foreign_id, start, initial = self._trigger_item(item)
                    made = self._new_run(foreign_id, start, initial, now, shared)
            except ActorflowError as exc:
                results.append(exc)
                continue
            indices.append(len(results))
            results.append(made[0].run_id)
            chunk.append(made)
            if len(chunk) % YIELD_EVERY == 0:
                # Building runs is Python on the trio thread: let other tasks in between.
                await trio.lowlevel.checkpoint()
                if failed:
                    return  # the store failed: no more of the caller's items are used
                if len(chunk) >= TRIGGER_MANY_CHUNK:
                    if not await _hand_over(to_writer, self._prepared(indices, chunk), failed):
                        return
                    indices, chunk = [], []
                    now = self._clock.now()
        if chunk:
            await _hand_over(to_writer, self._prepared(indices, chunk), failed)

    def _prepared(self, indices: list[int], chunk: list[tuple[RawRecord, list[Timer]]]) -> _Chunk:
        """A chunk for the writer, with the store's rows made here when the store can (so
        they are made while the writer waits for the chunk before, not after)."""
        # Looked up on the class: a wrapper that delegates any name (a test double, say)
        # has no prepared form of its own and gets the runs as they are.
        prepare = getattr(type(self._store), "prepare_runs", None)
        return indices, chunk, chunk if prepare is None else prepare(self._store, chunk)

    async def _write_chunks(
        self,
        chunks: trio.MemoryReceiveChannel[_Chunk],
        results: list[str | ActorflowError],
        failed: list[Exception],
    ) -> None:
        """Store trigger_many's chunks in order; the first error ends it (handed over in
        ``failed``: later chunks are not stored)."""
        async with chunks:
            async for indices, chunk, given in chunks:
                try:
                    await self._create_many(indices, chunk, given, results)
                except Exception as exc:
                    failed.append(exc)
                    return

    def _trigger_item(self, item: object) -> tuple[object, Any, Any]:
        if isinstance(item, str):
            return item, None, None
        if isinstance(item, Mapping):
            unknown = set(item) - {"foreign_id", "start", "initial"}
            if "foreign_id" not in item or unknown:
                raise InvalidArgument(
                    f"workflow {self.name!r}: a trigger_many item needs a 'foreign_id' and "
                    f"may have 'start' and 'initial', not {sorted(map(str, item))}"
                )
            return item["foreign_id"], item.get("start"), item.get("initial")
        if isinstance(item, tuple) and 1 <= len(item) <= 3:
            foreign_id, start, initial = (*item, None, None)[:3]
            return foreign_id, start, initial
        raise InvalidArgument(
            f"workflow {self.name!r}: a trigger_many item is a foreign id, a mapping or a "
            f"tuple (foreign_id, start, initial), not {item!r:.100}"
        )

    async def _create_many(
        self,
        indices: list[int],
        chunk: list[tuple[RawRecord, list[Timer]]],
        given: Any,
        results: list[str | ActorflowError],
    ) -> None:
        """Store a chunk (``given``: what the store takes, see ``_prepared``)."""
        if not self._engine.lineage.registered:
            await self._engine.lineage.register()  # the first write of this definition
        outcomes = await self._store.create_runs(given)
        if self._local_supervisor() is None:  # nobody here to start them
            for index, outcome in zip(indices, outcomes, strict=True):
                if isinstance(outcome, ActorflowError):
                    results[index] = outcome
            return
        started: list[tuple[RawRecord, list[Timer]]] = []
        for index, (_, timers), outcome in zip(indices, chunk, outcomes, strict=True):
            if isinstance(outcome, ActorflowError):
                results[index] = outcome
            else:
                started.append((outcome, timers))
        self._started(started)

    def _new_run(
        self,
        foreign_id: object,
        start: object,
        initial: object,
        now: datetime,
        shared: dict[S | None, _Start] | None = None,
    ) -> tuple[RawRecord, list[Timer]]:
        """A new run's first version and timers (nothing stored yet).

        ``shared`` (trigger_many) keeps, per start status, what all runs of one call
        starting there have in common (see :class:`_Start`).
        """
        foreign_id = self._foreign_id_arg(foreign_id)
        status = None if start is None else self._status_arg(start, "start")
        common = None if shared is None else shared.get(status)
        if common is None:
            common = self._start_at(status, shared is not None)
            if shared is not None:
                shared[status] = common
        obj: Any = None
        encoded = common.encoded
        if initial is not None:
            obj = self._codec.check(initial, "initial")
            encoded = self._encode_initial(obj)
        elif encoded is None:
            obj = self._codec.default()
            encoded = self._encode_initial(obj)
        elif common.timed:
            obj = self._codec.default()  # the timer functions get an object of their own
        raw = RawRecord(
            self.name,
            foreign_id,
            new_run_id(),
            int(common.status),
            RunState.INITIATED,
            encoded,
            1,
            now,
            now,
            common.meta,
        )
        if not common.timed:
            return raw, NO_TIMERS
        try:
            run: Run[T, S] = Run(raw, common.status, obj, self._codec)  # type: ignore[arg-type]
            return raw, self._engine.timers_for(run, common.status, now)
        except ActorflowError as exc:
            raise InvalidArgument(str(exc)) from None

    def _start_at(self, start: S | None, many: bool) -> _Start:
        """What every new run at ``start`` (None: the workflow's start) has in common."""
        definition = self._definition
        status = definition.start if start is None else start
        if definition.is_terminal(status):
            raise InvalidArgument(
                f"workflow {self.name!r}: cannot start at {status.name}: it has no step, "
                "callback or timeout (a run there would be complete at once)"
            )
        return _Start(
            status,
            self._engine.first_meta(status, self._trace_origin()),
            self._same_default() if many else None,
            status in definition.timeouts,
        )

    def _same_default(self) -> str | None:
        """The encoded default object if two made in a row encode the same, else None."""
        first = self._encode_initial(self._codec.default())
        return first if self._encode_initial(self._codec.default()) == first else None

    def _started(self, runs: list[tuple[RawRecord, list[Timer]]]) -> None:
        """Runs were just stored by trigger_many: arm their timers and start those with
        a step, when a supervisor serves this workflow here."""
        supervisor = self._local_supervisor()
        if supervisor is None:
            return
        supervisor.wake_for_new_timers(runs)
        steps = self._definition.steps
        for stored, timers in runs:
            if stored.status in steps:
                supervisor.wake_created(stored, timers)
