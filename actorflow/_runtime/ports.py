"""The runtime's ports: the small Protocols its parts talk through.

``RunActor`` reaches its supervisor only through ``ActorHost``; the supervisor reaches
shard leases (PostgreSQL scale-out) through ``Ownership``/``Leadership``; services are
plain coroutine factories. Lower modules depend on these, never on the classes behind them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from actorflow._model.record import Timer
from actorflow.stores.protocol import Leadership as Leadership
from actorflow.stores.protocol import OwnedEvents as OwnedEvents
from actorflow.stores.protocol import Ownership as Ownership
from actorflow.stores.protocol import RunWithTimers as RunWithTimers

if TYPE_CHECKING:
    from actorflow._runtime.engine import Engine

Service = Callable[[], Awaitable[None]]
"""A long-running workflow service (hooks, connectors, relay): runs until cancelled."""


class ActorHost(Protocol):
    """What a ``RunActor`` needs from the supervisor that spawned it."""

    engine: Engine[Any, Any]
    stopping: bool
    """True once the workflow stops: actors finish their step and take no new work."""
    retry_at: dict[str, float]
    """Trio times before which a run's failed step must not be retried, by run id."""
    snoozed: dict[str, dict[Timer, datetime]]
    """Timers whose timeout skipped, with the wall time each may fire again, by run id."""

    def owns(self, run_id: str) -> bool:
        """Whether this process may work on the run now."""
        ...

    def forget(self, actor: Any) -> None:
        """The actor has ended: drop it (and start the next waiting run in its place)."""
        ...

    def wake_at(self, run_id: str, when: datetime, *, pinned: bool = False) -> None:
        """Have an actor look at the run at wall time ``when`` (``pinned``: a time that
        exists in memory only, a back-off or a snoozed timeout, which the supervisor must
        hold however far away)."""
        ...

    def wake_for_timers(self, run_id: str, timers: list[Timer]) -> None:
        """The run's stored timers are now exactly ``timers``: wake it when one is due."""
        ...
