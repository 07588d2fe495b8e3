"""A run actor's mailbox: what callers send the actor of a run, and how it takes them.

Two kinds of message: ``WAKE`` (look at the run again) and an ``Ask`` (perform an ``Op`` on
the run's latest record and answer through its ``Reply``). A caller whose message the actor
never handled gets ``Stopped`` and does the work itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, final

import attrs
import trio

from actorflow._model.errors import ActorflowError
from actorflow._model.record import RawRecord, Timer

MAILBOX_SIZE = 16

Op = Callable[[RawRecord], Awaitable[tuple[RawRecord | None, list[Timer] | None, Any]]]
"""An operation run by the actor on its latest record: returns (new record, timers, reply)."""


class Stopped(ActorflowError):
    """The actor stopped before it handled the message; the caller does it inline."""


@final
class Reply:
    """The answer to one ``Ask``: set once (a value or an error), awaited by the caller."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self.taken = False
        """Set by the actor as it starts to perform the op."""
        self.withdrawn = False
        """Set when the caller gave up (was cancelled) before the actor took the op: the
        actor skips it, so a cancelled call never takes effect later."""
        self.scope: trio.CancelScope | None = None
        """The scope the actor performs the op in (cancelled when its caller gives up)."""

    def withdraw(self) -> bool:
        """The caller was cancelled. True: the op was not taken, and now never will be.
        False: the actor is performing it (see :meth:`interrupt`)."""
        if not self.taken:
            self.withdrawn = True
        return self.withdrawn

    def interrupt(self) -> None:
        """Stop the op under way at its next checkpoint (a write in flight still ends)."""
        if self.scope is not None:
            self.scope.cancel()

    async def outcome(self) -> tuple[bool, Any]:
        """(True, value) once answered with a value, (False, None) with an error."""
        await self._done.wait()
        return self._error is None, self._value

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        """Answer (the first answer wins; later ones are ignored)."""
        if not self._done.is_set():
            self._value, self._error = value, error
            self._done.set()

    async def wait(self) -> Any:
        """The value, once answered; raises the error when the answer is one."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


@attrs.frozen
class Ask:
    """Perform ``op`` on the run and answer through ``reply``."""

    op: Op
    reply: Reply


WAKE = object()
"""The message that has the actor look at its run again."""


@final
class Mailbox:
    """The messages waiting for one actor.

    The memory channel behind it is made on first use: most actors never get a message, and
    a channel is about eight objects for the garbage collector to walk.
    """

    __slots__ = ("_channel", "_closed", "_wait_scope")

    def __init__(self) -> None:
        self._channel: (
            tuple[trio.MemorySendChannel[object], trio.MemoryReceiveChannel[object]] | None
        ) = None
        self._closed = False
        self._wait_scope: trio.CancelScope | None = None

    def _open(self) -> tuple[trio.MemorySendChannel[object], trio.MemoryReceiveChannel[object]]:
        if self._channel is None:
            self._channel = trio.open_memory_channel[object](MAILBOX_SIZE)
            if self._closed:
                self._channel[1].close()
        return self._channel

    @property
    def send(self) -> trio.MemorySendChannel[object]:
        """Where messages go (sending raises BrokenResourceError once the mailbox closed)."""
        return self._open()[0]

    def post_wake(self) -> None:
        """Leave a ``WAKE`` unless one cannot be left (full: the actor will look anyway;
        closed: the next actor will)."""
        with contextlib.suppress(
            trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            self.send.send_nowait(WAKE)

    def has_waiting(self) -> bool:
        """Whether a message waits."""
        channel = self._channel
        return channel is not None and channel[1].statistics().current_buffer_used > 0

    def take(self) -> object | None:
        """The next waiting message, or None when none waits (never blocks)."""
        if not self.has_waiting():
            return None
        assert self._channel is not None
        try:
            return self._channel[1].receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return None

    async def receive_until(self, deadline: float) -> object | None:
        """The next message, waiting for one until trio time ``deadline``; None when the
        deadline passed or :meth:`interrupt` was called first."""
        with trio.CancelScope(deadline=deadline) as scope:
            self._wait_scope = scope
            try:
                return await self._open()[1].receive()
            finally:
                self._wait_scope = None
        return None

    def interrupt(self) -> None:
        """End a :meth:`receive_until` under way (a graceful stop, a lost shard)."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    def close(self) -> None:
        """Take no more messages; every ``Ask`` still waiting is answered with ``Stopped``."""
        while (message := self.take()) is not None:
            if isinstance(message, Ask):
                message.reply.set(error=Stopped("run actor stopped"))
        self._closed = True
        if self._channel is not None:
            self._channel[1].close()
