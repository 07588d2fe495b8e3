"""The supervisor's timers: when to wake which run, paged from the store by time.

A workflow may have millions of runs waiting on timers due in days or weeks. Memory holds
only the wake-ups due within ``horizon`` (and at most about ``capacity`` of them); the
rest stay in the store, and the supervisor reads the next page from the store's
``fire_at`` index as time advances (:meth:`TimerWindow.page_request`). This module is the
bookkeeping alone, free of I/O: the supervisor's timer loop does the reading and waking.

The invariant: every stored timer whose key ``(fire_at, id)`` is at or before the
*frontier* is in memory (or was, and fired); stored timers after it are read later.
A timer armed from a commit joins memory only if it falls inside the window (before the
frontier and within the horizon); otherwise it moves the frontier back to it, so the
next page finds it on disk. Wake-ups that exist only in memory (error backoff, consume
lag) are *pinned*: never evicted, whatever their time.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Final, final

from actorflow._model.record import Timer

Key = tuple[datetime, int]
"""A stored timer's place in the store's order: ``(fire_at, id)``."""

FIRST_PAGE: Final = 64
"""Rows of the first page read after the frontier moved: often one row (far away) is all
that is needed; full pages double up to ``max_page``."""


@final
class TimerWindow:
    """Run wake-ups due soon, earliest first; the rest are paged in from the store.

    Args:
        horizon: how far ahead stored timers are held in memory.
        capacity: about how many stored timers memory holds (at most twice as many
            between evictions); pinned wake-ups come on top.
        max_page: the most rows one read asks for (one read is one step of the trio
            loop: it must stay short).
    """

    def __init__(self, horizon: timedelta, capacity: int, max_page: int = 2000) -> None:
        if capacity < 2 or max_page < 1:
            raise ValueError("capacity must be >= 2 and max_page >= 1")
        self.horizon = horizon
        self.capacity = capacity
        self.max_page = max_page
        self._heap: list[tuple[datetime, int, str]] = []
        self._counter = itertools.count()
        self._armed: dict[str, datetime] = {}
        """The earliest wake-up of each run with one pending; heap entries that disagree
        with it are stale and skipped."""
        self._pinned: set[str] = set()
        """Runs whose armed wake-up exists only in memory."""
        self._frontier: Key | None = None
        """Stored timers after this key are not in memory. None: none are (read from the
        start); see ``_exhausted``."""
        self._exhausted = False
        """True: no stored timer lies after the frontier (all of them are in memory)."""
        self._reading = False
        self._arrived: list[tuple[str, datetime]] = []
        """Timers armed outside the window while a page was being read: placed once the
        read tells where the new frontier is."""
        self._generation = 0
        self._read_generation = 0
        self._page = FIRST_PAGE
        self.pages_read = 0
        """Pages read so far (for tests and stats)."""

    # -- state --------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Wake-ups held in memory (pinned ones included)."""
        return len(self._armed)

    @property
    def stored_in_memory(self) -> int:
        """Stored timers held in memory (what ``capacity`` bounds)."""
        return len(self._armed) - len(self._pinned)

    def armed(self, run_id: str) -> datetime | None:
        """When the run will be woken, if memory holds a wake-up for it."""
        return self._armed.get(run_id)

    @property
    def frontier(self) -> Key | None:
        """The key after which stored timers are still to be read (None: from the start,
        or nothing left when :attr:`exhausted`)."""
        return self._frontier

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    # -- arming -------------------------------------------------------------------------------

    def arm(self, run_id: str, when: datetime, now: datetime, *, pinned: bool = False) -> bool:
        """Wake ``run_id`` at ``when`` unless it is already due to be woken earlier.

        ``pinned``: the wake-up exists only in memory (it is kept whatever its time).
        Otherwise it is a stored timer, held in memory only inside the window.
        Returns True when the next wake-up (or the next read) may have moved earlier.
        """
        current = self._armed.get(run_id)
        if current is not None and current <= when:
            return False
        if not pinned and not self._inside(when, now):
            return self._outside(run_id, when)
        self._put(run_id, when, pinned)
        heap = self._heap
        # Evicted at once (frontier moved back), or the new earliest: look again.
        return run_id not in self._armed or not heap or heap[0][2] == run_id

    def disarm(self, run_id: str) -> None:
        """Forget the run's wake-up (its timers changed; the caller arms the new ones)."""
        if self._armed.pop(run_id, None) is not None:
            self._pinned.discard(run_id)

    def _inside(self, when: datetime, now: datetime) -> bool:
        if when > now + self.horizon:
            return False
        if self._exhausted:
            return True
        return self._frontier is not None and when < self._frontier[0]

    def _outside(self, run_id: str, when: datetime) -> bool:
        """A stored timer beyond the window: the next pages must reach it."""
        if self._reading:
            self._arrived.append((run_id, when))
            return False
        return self._lower((when, -1))

    def _lower(self, key: Key) -> bool:
        if self._exhausted:
            self._exhausted = False
            self._frontier = key
            self._page = FIRST_PAGE
            return True
        if self._frontier is not None and key < self._frontier:
            self._frontier = key
            self._page = FIRST_PAGE
            return True
        return False

    def _put(self, run_id: str, when: datetime, pinned: bool) -> None:
        self._armed[run_id] = when
        if pinned:
            self._pinned.add(run_id)
        else:
            self._pinned.discard(run_id)
        heapq.heappush(self._heap, (when, next(self._counter), run_id))
        if len(self._heap) > 2 * len(self._armed) + 1024:
            self._rebuild()
        if not self._reading and self.stored_in_memory > 2 * self.capacity:
            self._evict()

    def _rebuild(self) -> None:
        self._heap = [(w, next(self._counter), r) for r, w in self._armed.items()]
        heapq.heapify(self._heap)

    def _evict(self) -> None:
        """Too many stored timers in memory: keep the earliest ``capacity``, leave the
        others to be read again from the store (the frontier moves back to them)."""
        stored = sorted(w for r, w in self._armed.items() if r not in self._pinned)
        cut = stored[self.capacity]
        for run_id, when in list(self._armed.items()):
            if when >= cut and run_id not in self._pinned:
                del self._armed[run_id]
        self._rebuild()
        self._lower((cut, -1))

    # -- reading pages ------------------------------------------------------------------------

    def page_request(self, now: datetime) -> tuple[Key | None, int] | None:
        """``(after, limit)`` of the page to read from the store now, or None.

        A page is due when stored timers after the frontier may be due within the
        horizon and memory has room. The caller reads ``store.timers_after(name, after,
        limit)`` and hands the rows to :meth:`page_read` (or calls :meth:`page_failed`).
        """
        if self._reading or self._exhausted:
            return None
        if self._frontier is not None and self._frontier[0] > now + self.horizon:
            return None
        if not self._has_room():
            return None  # fire what is in memory first
        self._reading = True
        self._read_generation = self._generation
        return self._frontier, min(self.capacity - self.stored_in_memory, self._page)

    def _has_room(self) -> bool:
        return self.stored_in_memory <= self.capacity // 2

    def page_read(
        self,
        rows: list[tuple[int, Timer]],
        limit: int,
        now: datetime,
        owns: Callable[[str], bool],
    ) -> bool:
        """Take a page read for :meth:`page_request`: the rows due within the horizon
        join memory (those of runs ``owns`` accepts), the frontier moves past them.
        Returns True when the next wake-up may have moved earlier."""
        self._reading = False
        reach = now + self.horizon
        frontier: Key | None = None
        exhausted = False
        taken = 0
        for timer_id, timer in rows:
            if timer.fire_at > reach:
                frontier = (timer.fire_at, timer_id - 1)
                break
            if owns(timer.run_id):
                current = self._armed.get(timer.run_id)
                if current is None or timer.fire_at < current:
                    self._put(timer.run_id, timer.fire_at, False)
            frontier = (timer.fire_at, timer_id)
            taken += 1
        else:
            exhausted = len(rows) < limit
        self.pages_read += 1
        self._page = min(self._page * 2, self.max_page) if taken == len(rows) else FIRST_PAGE
        if self._read_generation != self._generation:
            pass  # reset meanwhile: read from the start again
        elif exhausted:
            self._exhausted, self._frontier = True, None
        elif frontier is not None:
            self._frontier = frontier
        self._after_read(now)
        if self.stored_in_memory > 2 * self.capacity:
            self._evict()
        return True

    def page_failed(self, now: datetime) -> None:
        """The read failed: it is asked for again by the next :meth:`page_request`."""
        self._reading = False
        self._after_read(now)

    def _after_read(self, now: datetime) -> None:
        arrived, self._arrived = self._arrived, []
        for run_id, when in arrived:
            self.arm(run_id, when, now)

    def reset(self) -> None:
        """Read every stored timer again from the start (the runs this process owns
        changed): what memory holds stays; duplicates are harmless."""
        self._frontier = None
        self._exhausted = False
        self._page = FIRST_PAGE
        self._generation += 1

    # -- firing -------------------------------------------------------------------------------

    def next_wake(self, now: datetime) -> datetime | None:
        """When the timer loop must look again: the earliest wake-up in memory, or when
        the next page comes within the horizon, whichever is first (None: never)."""
        heap, armed = self._heap, self._armed
        while heap and armed.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # stale
        earliest = heap[0][0] if heap else None
        if not self._exhausted and self._has_room():
            read_at = now if self._frontier is None else self._frontier[0] - self.horizon
            if earliest is None or read_at < earliest:
                earliest = read_at
        return earliest

    def pop_due(self, now: datetime) -> Iterable[str]:
        """The runs whose wake-up is due (at or before ``now``), earliest first."""
        heap, armed = self._heap, self._armed
        due: list[str] = []
        while heap and heap[0][0] <= now:
            when, _, run_id = heapq.heappop(heap)
            if armed.get(run_id) != when:
                continue  # stale: the run's timers changed since
            del armed[run_id]
            self._pinned.discard(run_id)
            due.append(run_id)
        return due
