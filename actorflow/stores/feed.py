"""The in-process change feed: every version a store commits is published here.

Await, subscribe, hooks and relays wait on it instead of polling. Subscribers get a
bounded buffer; one that falls behind is marked lagged rather than slowing commits.

Other processes' writes never reach this feed as records; a store that can tell when one
happened (SQLite's ``data_version`` watcher thread, PostgreSQL's LISTEN/NOTIFY) calls
:meth:`ChangeFeed.notice_external`, which wakes :meth:`ChangeFeed.wait_external` and
:meth:`ChangeFeed.wait_change`. Their safety-net poll is measured in real time
(:mod:`actorflow.stores.realtime`), so a quiet store costs nothing while a virtual clock
jumps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import trio

from actorflow._model.errors import Lagged, StoreError
from actorflow._model.record import RawRecord
from actorflow.stores import realtime

_Key = tuple[str, str]

RECENT = 65_536
"""How many published versions a feed remembers, to tell its own from other processes'."""


@attrs.define(eq=False)
class Subscription:
    """A live stream of committed versions that match a filter."""

    _send: trio.MemorySendChannel[RawRecord]
    _receive: trio.MemoryReceiveChannel[RawRecord]
    lagged: bool = False
    closed: str | None = None
    """Why the stream ended (its store was closed): raised as StoreError once the
    versions still buffered are read."""

    def _push(self, record: RawRecord) -> None:
        if self.lagged:
            return
        try:
            self._send.send_nowait(record)
        except trio.WouldBlock:
            self.lagged = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _close(self, reason: str) -> None:
        self.closed = reason
        self._send.close()  # the receiver reads what is buffered, then the end

    async def receive(self) -> RawRecord:
        """The next matching version; raises :class:`Lagged` once the buffer overflowed,
        :class:`StoreError` once the store was closed (and the buffer read)."""
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            if self.lagged:
                raise Lagged("subscriber fell behind and missed changes") from None
        except trio.EndOfChannel:
            self._ended()
            raise
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            self._ended()
            raise

    def _ended(self) -> None:
        """The stream ended: StoreError if its store was closed (else its subscription
        was left: EndOfChannel)."""
        if self.closed is not None:
            raise StoreError(self.closed) from None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> RawRecord:
        return await self.receive()


class ChangeFeed:
    """Fan-out of committed versions to in-process subscribers, indexed by filter."""

    def __init__(self) -> None:
        self._by_run: dict[str, set[Subscription]] = {}
        self._by_foreign: dict[_Key, set[Subscription]] = {}
        self._by_workflow: dict[str, set[Subscription]] = {}
        self._everything: set[Subscription] = set()
        self._lot = trio.lowlevel.ParkingLot()
        self._subscribers = 0
        self.published = 0
        # An OrderedDict drops its oldest entry in O(1); a dict would scan its deleted
        # slots from the front on every drop.
        self._recent: OrderedDict[str, None] = OrderedDict()
        """Keys ``"<version> <run id>"``: strings, which the garbage collector never walks
        (tuples it would, for as long as RECENT versions stay here)."""
        self.supervisors: dict[str, Any] = {}
        """Workflow name -> the supervisor running it on this store instance, if any."""
        self.external = 0
        """How many times another process was noticed writing (see :meth:`notice_external`)."""
        self._external_lot = trio.lowlevel.ParkingLot()
        self._change_lot = trio.lowlevel.ParkingLot()
        self._external_scopes: set[trio.CancelScope] = set()
        self.watch: Callable[[], None] | None = None
        """Set by a store that notices other processes' writes by itself: called (on the
        trio thread) by every waiter, to make sure it is watching."""
        self.closed: str | None = None
        """Why the feed ended (its store was closed; see :meth:`close`)."""

    def close(self, reason: str) -> None:
        """The store was closed: end every subscription (each raises StoreError with
        ``reason`` once its buffer is read; so do those made from now on) and wake every
        waiter, so that nothing waits for changes that can no longer come (an
        ``await_status`` in flight then reads the closed store, and gets its error)."""
        if self.closed is not None:
            return
        self.closed = reason
        for bucket in (
            *self._by_run.values(),
            *self._by_foreign.values(),
            *self._by_workflow.values(),
            self._everything,
        ):
            for sub in bucket:
                sub._close(reason)
        self._wake()
        self._external_lot.unpark_all()
        for scope in self._external_scopes:
            scope.cancel()

    # -- other processes' writes -------------------------------------------------------

    def notice_external(self) -> None:
        """Another process (or connection) may have written: wake who waits for that."""
        self.external += 1
        self._external_lot.unpark_all()
        self._change_lot.unpark_all()
        for scope in self._external_scopes:
            scope.cancel()

    @contextmanager
    def until_external(self, poll: float) -> Iterator[trio.CancelScope]:
        """A cancel scope that is cancelled when another process is noticed writing, or
        after ``poll`` seconds of real time (``math.inf``: never, for unshared stores)."""
        if poll == float("inf"):
            with trio.CancelScope() as scope:
                yield scope
            return
        if self.watch is not None:
            self.watch()
        with realtime.move_on_after(poll) as scope:
            self._external_scopes.add(scope)
            try:
                yield scope
            finally:
                self._external_scopes.discard(scope)

    def mark(self) -> tuple[int, int]:
        """The feed's position, for :meth:`wait_change` (take it *before* reading)."""
        return (self.published, self.external)

    async def wait_external(self, mark: int, poll: float) -> None:
        """Wait until another process was noticed writing after ``mark`` (a value of
        :attr:`external`), or ``poll`` seconds of real time passed."""
        if self.watch is not None:
            self.watch()
        if self.external != mark:
            await trio.lowlevel.checkpoint()
            return
        with realtime.move_on_after(poll):
            await self._external_lot.park()

    async def wait_change(self, mark: tuple[int, int], poll: float) -> None:
        """Wait until something was published or another process was noticed writing
        after ``mark`` (from :meth:`mark`), or ``poll`` seconds of real time passed (the
        safety net of shared stores; ``math.inf`` for a store nobody else can write)."""
        if self.watch is not None and poll != float("inf"):
            self.watch()
        if self.mark() != mark:
            await trio.lowlevel.checkpoint()
            return
        with realtime.move_on_after(poll):
            await self._change_lot.park()

    @property
    def has_subscribers(self) -> bool:
        """True while anybody in this process subscribes."""
        return self._subscribers > 0

    def was_published(self, run_id: str, version: int) -> bool:
        """Whether this feed published that version recently (the last RECENT versions)."""
        return f"{version} {run_id}" in self._recent

    def publish(self, record: RawRecord) -> None:
        """Hand a committed version to every matching subscriber (never blocks)."""
        self._deliver(record)
        self._wake()

    def publish_many(self, records: Iterable[RawRecord]) -> None:
        """Hand committed versions, in commit order, to every matching subscriber (never
        blocks); waiters wake once, after the last."""
        for record in records:
            self._deliver(record)
        self._wake()

    def _deliver(self, record: RawRecord) -> None:
        self.published += 1
        recent = self._recent
        recent[f"{record.version} {record.run_id}"] = None
        if len(recent) > RECENT:
            recent.popitem(last=False)
        if self._subscribers:
            for bucket in (
                self._by_run.get(record.run_id),
                self._by_foreign.get((record.workflow_name, record.foreign_id)),
                self._by_workflow.get(record.workflow_name),
                self._everything,
            ):
                if bucket:
                    for sub in bucket:
                        sub._push(record)

    def _wake(self) -> None:
        if self._lot:
            self._lot.unpark_all()
        if self._change_lot:
            self._change_lot.unpark_all()

    async def wait_published(self) -> None:
        """Wait until the next publish."""
        await self._lot.park()

    @contextmanager
    def subscribe(
        self,
        *,
        workflow_name: str | None = None,
        foreign_id: str | None = None,
        run_id: str | None = None,
        buffer: int = 1024,
    ) -> Iterator[Subscription]:
        """Subscribe to versions of one run, one foreign id, one workflow, or everything."""
        send, receive = trio.open_memory_channel[RawRecord](buffer)
        sub = Subscription(send, receive)
        bucket: set[Subscription]
        index: dict[str, set[Subscription]] | dict[_Key, set[Subscription]] | None
        key: str | _Key
        if run_id is not None:
            index, key = self._by_run, run_id
        elif foreign_id is not None:
            if workflow_name is None:
                raise ValueError("a foreign_id filter needs a workflow_name")
            index, key = self._by_foreign, (workflow_name, foreign_id)
        elif workflow_name is not None:
            index, key = self._by_workflow, workflow_name
        else:
            index, key = None, ""
        bucket = self._everything if index is None else index.setdefault(key, set())  # type: ignore[arg-type]
        if self.closed is not None:
            sub._close(self.closed)
        bucket.add(sub)
        self._subscribers += 1
        try:
            yield sub
        finally:
            self._subscribers -= 1
            bucket.discard(sub)
            if index is not None and not bucket:
                index.pop(key, None)  # type: ignore[arg-type]
            send.close()
            receive.close()
