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
from actorflow.stores.protocol import Ownership as Ownership

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

    def retry_later(self, run_id: str) -> None:
        """Look at the run again after the retry delay (its store read failed)."""
        ...

    def wake_later(self, run_id: str, deadline: float, retry_at: float) -> None:
        """The actor passivates: wake a new one for the run at trio time ``deadline``."""
        ...

    def schedule_run(self, run_id: str, timers: list[Timer]) -> None:
        """The run's pending timers changed to ``timers``: arm them."""
        ...

    def arm(self, run_id: str, when: datetime, *, pinned: bool = False) -> None:
        """Wake the run at wall time ``when`` (a stored timer's time; ``pinned``: a time
        that exists in memory only, which the supervisor must hold however far away)."""
        ...
