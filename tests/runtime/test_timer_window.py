"""The timer window alone (no I/O): what memory holds, when pages are read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from actorflow._model.record import Timer
from actorflow._runtime.timers import TimerWindow

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def timer(run_id: str, when: datetime) -> Timer:
    return Timer("wf", run_id, 1, "timeout:0", when)


def everyone(run_id: str) -> bool:
    return True


class Disk:
    """Stored timers in (fire_at, id) order: what a store's timers_after answers."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, Timer]] = []

    def add(self, run_id: str, when: datetime) -> None:
        self.rows.append((len(self.rows) + 1, timer(run_id, when)))

    def page(self, after: tuple[datetime, int] | None, limit: int) -> list[tuple[int, Timer]]:
        ordered = sorted(self.rows, key=lambda r: (r[1].fire_at, r[0]))
        return [r for r in ordered if after is None or (r[1].fire_at, r[0]) > after][:limit]


def read_all(window: TimerWindow, disk: Disk, now: datetime) -> int:
    pages = 0
    while (request := window.page_request(now)) is not None:
        after, limit = request
        window.page_read(disk.page(after, limit), limit, now, everyone)
        pages += 1
    return pages


def fire(window: TimerWindow, disk: Disk, until: datetime) -> list[str]:
    """Drive the window like the supervisor's loop, jumping from wake-up to wake-up."""
    now, fired = T0, []
    while True:
        read_all(window, disk, now)
        when = window.next_wake(now)
        if when is None or when > until:
            return fired
        now = max(now, when)
        fired.extend(window.pop_due(now))


def test_far_timers_stay_on_disk_and_fire_in_order() -> None:
    window, disk = TimerWindow(HOUR, capacity=4, max_page=3), Disk()
    for i in range(20):
        disk.add(f"r{i}", T0 + timedelta(days=30, minutes=i % 5))
    read_all(window, disk, T0)
    assert len(window) == 0 and window.frontier is not None
    assert window.next_wake(T0) == T0 + timedelta(days=30) - HOUR
    fired = fire(window, disk, T0 + timedelta(days=31))
    assert sorted(fired) == sorted(f"r{i}" for i in range(20))
    assert fired == sorted(fired, key=lambda r: int(r[1:]) % 5)  # by fire_at


def test_memory_stays_bounded_while_a_backlog_fires() -> None:
    window, disk = TimerWindow(HOUR, capacity=10, max_page=4), Disk()
    for i in range(100):
        disk.add(f"r{i}", T0 + timedelta(seconds=i))  # all due within the horizon
    now, fired, most = T0 + timedelta(minutes=5), [], 0
    while len(fired) < 100:
        read_all(window, disk, now)
        most = max(most, window.stored_in_memory)
        fired.extend(window.pop_due(now))
    assert most <= 10
    assert sorted(fired) == sorted(f"r{i}" for i in range(100))


def test_armed_timers_join_memory_only_inside_the_window() -> None:
    window, disk = TimerWindow(HOUR, capacity=4), Disk()
    read_all(window, disk, T0)
    assert window.exhausted
    assert window.arm("soon", T0 + timedelta(minutes=5), T0)
    assert window.armed("soon") == T0 + timedelta(minutes=5)
    disk.add("far", T0 + timedelta(days=2))
    assert window.arm("far", T0 + timedelta(days=2), T0)  # the next read moved earlier
    assert window.armed("far") is None and not window.exhausted
    assert window.next_wake(T0) == T0 + timedelta(minutes=5)
    # Pinned wake-ups (backoff) are held whatever their time.
    window.arm("backoff", T0 + timedelta(days=5), T0, pinned=True)
    assert window.armed("backoff") == T0 + timedelta(days=5)
    assert fire(window, disk, T0 + timedelta(days=6)) == ["soon", "far", "backoff"]


def test_a_timer_armed_while_a_page_is_read_is_not_lost() -> None:
    window, disk = TimerWindow(HOUR, capacity=100), Disk()
    disk.add("a", T0 + timedelta(minutes=1))
    request = window.page_request(T0)
    assert request is not None
    page = disk.page(*request)  # the read's snapshot...
    disk.add("late", T0 + timedelta(minutes=2))  # ...misses a commit that arms meanwhile
    window.arm("late", T0 + timedelta(minutes=2), T0)
    window.page_read(page, request[1], T0, everyone)
    assert window.armed("late") == T0 + timedelta(minutes=2)
    assert fire(window, disk, T0 + HOUR) == ["a", "late"]


def test_too_many_armed_timers_are_evicted_and_read_again() -> None:
    window, disk = TimerWindow(HOUR, capacity=5), Disk()
    read_all(window, disk, T0)
    for i in range(30):
        when = T0 + timedelta(minutes=30 - i)
        disk.add(f"r{i}", when)
        window.arm(f"r{i}", when, T0)
        assert window.stored_in_memory <= 10
    assert sorted(fire(window, disk, T0 + HOUR)) == sorted(f"r{i}" for i in range(30))


def test_reset_reads_from_the_start_again() -> None:
    window, disk = TimerWindow(HOUR, capacity=10), Disk()
    disk.add("a", T0 + timedelta(minutes=1))
    read_all(window, disk, T0)
    window.disarm("a")  # say, the run belonged to a shard we lost
    window.reset()
    read_all(window, disk, T0)
    assert window.armed("a") == T0 + timedelta(minutes=1)
