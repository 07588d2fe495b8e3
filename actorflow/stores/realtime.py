"""Real time for cross-process concerns, whatever trio's clock says.

Timers, schedules and back-offs follow trio's clock, so a test under
``trio.testing.MockClock`` (the autojump clock) passes an hour in no time. Looking for
other processes' writes and renewing leases are different: other processes live in real
time, and a poll driven by a virtual clock would run millions of times while a test jumps
a year (and a lease measured on it would expire at every jump). Those use this module:

- :func:`now`: ``time.monotonic()``.
- :func:`move_on_after` / :func:`move_on_at` / :func:`sleep` / :func:`sleep_until`: like
  trio's, in real seconds. Under trio's own clock they *are* trio's (real time already).
  Under a ``MockClock`` an alarm thread (one per process, started on first use, asleep
  while there is nothing to time) cancels the scope at the real deadline through the
  run's trio token. A task waiting on a real-time alarm counts as blocked for the
  autojump clock, which jumps to the next virtual deadline meanwhile.
- :func:`holding_virtual_time` (and :func:`wait_for_others`, a real-time back-off under
  it): the other way round, for a store whose I/O runs in worker
  threads (PostgreSQL): trio's autojump clock jumps while a task waits for a thread (trio
  issue #456), so a commit would land a year late. While the block runs, a system task
  waits in ``wait_all_tasks_blocked(cushion=inf)``; the run loop never autojumps while
  such a waiter exists, and that one never wakes by itself, so virtual time stands still
  until the thread answered. Nothing happens under trio's own clock.
"""

from __future__ import annotations

import heapq
import itertools
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar, final

import trio

if TYPE_CHECKING:
    import trio.testing

R = TypeVar("R")

__all__ = [
    "holding_virtual_time",
    "is_virtual",
    "move_on_after",
    "move_on_at",
    "now",
    "sleep",
    "sleep_until",
    "to_thread",
    "wait_for_others",
]


def now() -> float:
    """Real monotonic seconds (``time.monotonic()``)."""
    return time.monotonic()


def _mock_clock(clock: trio.abc.Clock) -> trio.testing.MockClock | None:
    """``clock`` if it is a ``MockClock``. ``trio.testing`` is not imported for this: it
    imports pytest when installed (a tenth of a second at every start), and a MockClock
    exists only once somebody imported it."""
    testing = sys.modules.get("trio.testing")
    mock: type[trio.testing.MockClock] | None = None if testing is None else testing.MockClock
    return clock if mock is not None and isinstance(clock, mock) else None


def is_virtual() -> bool:
    """Whether the current trio run's clock is a ``MockClock`` (virtual time)."""
    return _mock_clock(trio.lowlevel.current_clock()) is not None


@final
class _Alarms:
    """One daemon thread calling functions at real monotonic deadlines."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._pending: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, fn: Callable[[], None]) -> int:
        with self._cond:
            alarm = next(self._ids)
            self._pending[alarm] = fn
            heapq.heappush(self._heap, (deadline, alarm))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="actorflow-realtime", daemon=True
                )
                self._thread.start()
            elif self._heap[0][1] == alarm:
                self._cond.notify()
            return alarm

    def cancel(self, alarm: int) -> None:
        with self._cond:
            self._pending.pop(alarm, None)
            if not self._pending:
                self._heap.clear()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][1] not in self._pending:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        _, alarm = heapq.heappop(self._heap)
                        fn = self._pending.pop(alarm)
                        break
                    self._cond.wait(delay)
            fn()


_alarms = _Alarms()


@contextmanager
def move_on_at(deadline: float) -> Iterator[trio.CancelScope]:
    """``trio.move_on_at`` for a real monotonic ``deadline`` (see :func:`now`)."""
    if deadline == math.inf:
        with trio.CancelScope() as scope:
            yield scope
        return
    if not is_virtual():
        with trio.move_on_at(trio.current_time() + (deadline - time.monotonic())) as scope:
            yield scope
        return
    token = trio.lowlevel.current_trio_token()
    with trio.CancelScope() as scope:

        def fire() -> None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)

        alarm = _alarms.add(deadline, fire)
        try:
            yield scope
        finally:
            _alarms.cancel(alarm)


@contextmanager
def move_on_after(seconds: float) -> Iterator[trio.CancelScope]:
    """``trio.move_on_after`` in real seconds."""
    with move_on_at(time.monotonic() + seconds) as scope:
        yield scope


async def sleep_until(deadline: float) -> None:
    """Sleep until the real monotonic ``deadline``."""
    with move_on_at(deadline):
        await trio.sleep_forever()


async def sleep(seconds: float) -> None:
    """Sleep ``seconds`` of real time."""
    await sleep_until(time.monotonic() + seconds)


@contextmanager
def holding_virtual_time() -> Iterator[None]:
    """Keep an autojump clock from jumping while the block runs (see the module doc)."""
    clock = _mock_clock(trio.lowlevel.current_clock())
    if clock is None or clock.autojump_threshold == math.inf:
        yield
        return
    scope = trio.CancelScope()

    async def hold() -> None:
        with scope:
            await sys.modules["trio.testing"].wait_all_tasks_blocked(cushion=math.inf)

    trio.lowlevel.spawn_system_task(hold, name="actorflow-hold-virtual-time")
    try:
        yield
    finally:
        scope.cancel()


async def wait_for_others(seconds: float) -> None:
    """Sleep ``seconds`` of real time with an autojump clock held still: the back-off of a
    store waiting for another connection (a lock, a checkpoint), which lives in real time.
    Virtual time does not jump to the program's next deadline meanwhile (a timer an hour
    away fired while SQLite waited a few milliseconds for its checkpointer)."""
    with holding_virtual_time():
        await sleep(seconds)


async def to_thread(
    fn: Callable[..., R], *args: Any, limiter: trio.CapacityLimiter | None = None
) -> R:
    """``trio.to_thread.run_sync`` that keeps an autojump clock from jumping meanwhile:
    for a store's short database calls, so virtual time stays honest."""
    with holding_virtual_time():
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)
