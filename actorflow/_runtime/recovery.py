"""Recovery: finding the unfinished runs in the store that have a step to run (or a data
deletion to finish), and having an actor look at each (at start, after a shard change,
after a backfill too large to queue), page by page and no faster than runs finish."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any, Protocol, final

import trio

from actorflow._model.record import RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow._runtime.engine import Engine
from actorflow._runtime.retry import retrying
from actorflow.stores.filters import RunFilter

log = logging.getLogger(__name__)

RECOVERY_PAGE = 500
REQUESTED_DELETIONS = RunFilter(run_states=frozenset([RunState.REQUESTED_DATA_DELETED]))


class RecoveryHost(Protocol):
    """What recovery needs from the supervisor."""

    @property
    def stopping(self) -> bool: ...

    @property
    def actors(self) -> Mapping[str, Any]: ...

    def owns(self, run_id: str) -> bool: ...

    def has_free_slot(self) -> bool:
        """Whether a run found now could get an actor without queueing behind others."""
        ...

    def wake_now(
        self, run_id: str, known: RawRecord | None = None, timers: list[Timer] | None = None
    ) -> None: ...


@final
class Recovery:
    """Recovery passes, one at a time; a pass asked for while one runs runs after it."""

    def __init__(self, engine: Engine[Any, Any], host: RecoveryHost) -> None:
        self.engine = engine
        self.host = host
        self.nursery: trio.Nursery | None = None
        """Where passes run (the supervisor's services nursery while it serves)."""
        self.recovered = False
        """True once every unfinished run found at start (or at a shard change) was woken."""
        self._running = False
        self._again = False
        self._room = trio.lowlevel.ParkingLot()

    def request(self) -> None:
        """Have a recovery pass run (again, after the one under way)."""
        if self._running:
            self._again = True
        elif self.nursery is not None and not self.host.stopping:
            self._running = True
            self.nursery.start_soon(self._passes)

    def slot_freed(self) -> None:
        """An actor ended: a pass waiting for room may go on."""
        if self._room:
            self._room.unpark_all()

    async def _passes(self) -> None:
        try:
            while True:
                self._again = False
                await self._recover()
                if not self._again or self.host.stopping:
                    return
        finally:
            self._running = False

    async def _recover(self) -> None:
        """Wake an actor for every unfinished run that has a step to run, and for every
        run whose data deletion was asked for and not finished.

        One status at a time: each page is then a range of the store's (workflow, status,
        creation) index, however many runs wait at other statuses (a query for several
        statuses at once may walk every run of the workflow in creation order instead)."""
        for status in self.engine.definition.steps:
            active = RunFilter(
                statuses=frozenset([int(status)]),
                run_states=frozenset([RunState.INITIATED, RunState.RUNNING]),
            )
            if not await self._recover_runs(active):
                return
        # A data deletion asked for by a process that stopped before it was done.
        if not await self._recover_runs(REQUESTED_DELETIONS):
            return
        self.recovered = True

    async def _recover_runs(self, runs: RunFilter) -> bool:
        """Wake the runs that ``runs`` selects; False when stopping."""
        engine, host = self.engine, self.host
        after: str | None = None
        while not host.stopping:
            page = await retrying(
                functools.partial(
                    engine.store.list_runs,
                    engine.name,
                    runs,
                    limit=RECOVERY_PAGE,
                    after=after,
                ),
                options=engine.default_options,
                what=f"workflow {engine.name!r}: recovering runs",
                log=log,
            )
            for raw in page:
                if host.stopping:
                    return False
                if raw.run_id in host.actors or not host.owns(raw.run_id):
                    continue
                while not host.has_free_slot():
                    await self._room.park()  # recovery goes no faster than runs finish
                    if host.stopping:
                        return False
                host.wake_now(raw.run_id)
            if len(page) < RECOVERY_PAGE:
                return True
            after = page[-1].run_id
        return False
