"""Redis Streams: a stream per topic, a consumer group per consumer name (client: coredis).

coredis 6 is built on anyio and runs under trio as it is (checked against a real server:
blocking XREADGROUP, cancellation, pipelines, reconnection after a restart). Two things
need care, and are handled here once, at the seam:

- ``async with client`` runs an anyio task group, so an exception leaving its body comes
  out wrapped in an ExceptionGroup; :func:`_open_client` hands the body's own exception
  back unwrapped, so callers see the StreamError they expect.
- coredis cannot parse an XREADGROUP reply that lists a pending entry deleted from the
  stream (``TypeError``), so a receiver recovers its pending entries with XPENDING and
  XRANGE instead of ``XREADGROUP ... 0``. For the same reason (Redis 6.2 answers a full
  XAUTOCLAIM with nil for such an entry), claims use ``XAUTOCLAIM ... JUSTID`` and the
  claimed entries are then recovered like the member's own pending ones.

Entries hold ``id``, ``foreign_id``, ``type``, ``created_at`` (ISO 8601), ``payload``
(when not empty) and one ``h:<name>`` field per header.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any, final
from urllib.parse import urlsplit, urlunsplit

import trio

from actorflow._model.errors import ActorflowError, InvalidArgument
from actorflow.stores import realtime
from actorflow.streaming._protocol import (
    CheckedSender,
    ConnectorEvent,
    EventError,
    EventReceiver,
    EventSender,
    HandedOut,
    Inflight,
    Start,
    StreamError,
    check_start,
    check_topic,
    closing_receiver,
    closing_sender,
)

if TYPE_CHECKING:
    from coredis import Redis

log = logging.getLogger(__name__)

PIPELINE_CHUNK = 500
HEADER_PREFIX = b"h:"
REQUIRED_FIELDS = (b"id", b"foreign_id", b"type", b"created_at")


def _coredis() -> ModuleType:
    try:
        import coredis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ActorflowError(
            "RedisStreamer needs the coredis client: pip install actorflow[redis]"
        ) from exc
    version = str(getattr(coredis, "__version__", "0"))
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) < 6:
        # coredis before 6 is asyncio-only: it cannot run under trio.
        raise ActorflowError(
            f"RedisStreamer needs coredis >= 6 (anyio-based, runs under trio); found "
            f"{version}: pip install -U 'actorflow[redis]'"
        )
    return coredis


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def encode_event(event: ConnectorEvent) -> dict[bytes, bytes]:
    """The stream entry fields of an event."""
    fields = {
        b"id": event.id.encode(),
        b"foreign_id": event.foreign_id.encode(),
        b"type": event.type.encode(),
        b"created_at": event.created_at.isoformat().encode(),
    }
    if event.payload:
        fields[b"payload"] = event.payload
    for name, value in event.headers.items():
        fields[HEADER_PREFIX + name.encode()] = value.encode()
    return fields


def decode_event(entry_id: bytes, fields: Any) -> ConnectorEvent:
    """The event of a stream entry. Raises EventError naming what is wrong with it."""
    where = f"stream entry {entry_id.decode(errors='replace')}"
    if not isinstance(fields, dict) or not fields:
        raise EventError(f"{where} has no fields")
    missing = [name.decode() for name in REQUIRED_FIELDS if name not in fields]
    if missing:
        raise EventError(f"{where} lacks the field(s) {', '.join(missing)}")
    try:
        text = {name: fields[name].decode() for name in REQUIRED_FIELDS}
        headers = {
            key[len(HEADER_PREFIX) :].decode(): value.decode()
            for key, value in fields.items()
            if key.startswith(HEADER_PREFIX)
        }
    except UnicodeDecodeError as exc:
        raise EventError(f"{where} has a field that is not UTF-8: {exc}") from None
    try:
        created_at = datetime.fromisoformat(text[b"created_at"])
        return ConnectorEvent(
            id=text[b"id"],
            foreign_id=text[b"foreign_id"],
            type=text[b"type"],
            headers=headers,
            created_at=created_at,
            payload=fields.get(b"payload", b""),
        )
    except (ValueError, ActorflowError) as exc:
        raise EventError(f"{where} is not a valid event: {exc}") from None


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]


@final
class RedisStreamer:
    """An :class:`EventStreamer` on Redis Streams (Redis >= 6.2; 7 recommended).

    A topic is the stream ``<prefix><topic>``; a consumer name is a consumer group (its
    durable cursor), and each receiver reads as one member of that group (``member``,
    by default the consumer name itself). A receiver first re-delivers the entries its
    member received and never acknowledged (its pending entries: a crashed consumer's
    events come back when it restarts), then entries other members left pending for
    longer than ``claim_after`` (XAUTOCLAIM: a dead member's events move to a live one),
    then new entries (XREADGROUP ``>``, blocking on the server, never a busy loop).
    Entries that cannot be read as events are copied to ``<stream>:dead`` with the
    reason, then acknowledged and logged, so one bad entry does not stop the stream.

    Args:
        url: ``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        prefix: prepended to topics to name the streams.
        claim_after: claim other members' entries pending this long (None: never).
        block: how long one XREADGROUP waits on the server before checking for claims.
        batch: entries read per call.
        maxlen: trim streams to about this many entries on XADD (None: never trim;
            trimming entries that a group has not read yet loses them for that group).
        timeout: how long a command (or a connection's set-up) may go unanswered,
            beyond ``block`` for a blocking read, before it fails with StreamError (a
            server that accepts connections and never answers, or freezes mid-command,
            must not hang a relay or a connector for ever; None: wait for ever).

    Raises:
        ActorflowError: coredis is not installed (``pip install actorflow[redis]``).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "actorflow:",
        claim_after: timedelta | None = timedelta(minutes=1),
        block: timedelta = timedelta(seconds=2),
        batch: int = 100,
        maxlen: int | None = None,
        timeout: timedelta | None = timedelta(seconds=10),
    ) -> None:
        self._coredis = _coredis()
        if not isinstance(url, str) or not url:
            raise InvalidArgument(f"RedisStreamer needs a redis:// URL, not {url!r}")
        if not isinstance(prefix, str):
            raise InvalidArgument(f"prefix must be a string, not {prefix!r}")
        if claim_after is not None and (
            not isinstance(claim_after, timedelta) or claim_after < timedelta(0)
        ):
            raise InvalidArgument(
                f"claim_after must be a timedelta >= 0 or None, not {claim_after!r}"
            )
        if not isinstance(block, timedelta) or block < timedelta(milliseconds=1):
            raise InvalidArgument(f"block must be a timedelta >= 1 ms, not {block!r}")
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise InvalidArgument(f"batch must be an int >= 1, not {batch!r}")
        if maxlen is not None and (not isinstance(maxlen, int) or maxlen < 1):
            raise InvalidArgument(f"maxlen must be None or an int >= 1, not {maxlen!r}")
        if timeout is not None and (
            not isinstance(timeout, timedelta) or timeout < timedelta(milliseconds=1)
        ):
            raise InvalidArgument(f"timeout must be a timedelta >= 1 ms or None, not {timeout!r}")
        self.url = url
        self.prefix = prefix
        self.claim_after = claim_after
        self.block = block
        self.batch = batch
        self.maxlen = maxlen
        self.timeout = timeout
        self._opened: set[tuple[bytes, str]] = set()
        """(stream, group) pairs this streamer has opened a receiver of: if such a group
        vanishes (the stream deleted, Redis flushed), it is created again at the first
        entry, whatever ``start`` says, so what was added since is not skipped."""

    def __repr__(self) -> str:
        return f"RedisStreamer({_redacted(self.url)!r}, prefix={self.prefix!r})"

    def key(self, topic: str) -> bytes:
        """The stream key of ``topic``."""
        return (self.prefix + check_topic(topic)).encode()

    @property
    def _client_errors(self) -> tuple[type[BaseException], ...]:
        return (self._coredis.exceptions.RedisError, OSError, TimeoutError)

    @contextmanager
    def _errors(self, what: str, *, wait: timedelta = timedelta(0)) -> Iterator[None]:
        """Map client failures to StreamError, once, here; a call unanswered for longer
        than ``timeout`` (plus ``wait``, a blocking read's own wait) is one too."""
        limit = math.inf if self.timeout is None else (self.timeout + wait).total_seconds()
        try:
            # Real time: the server lives in it (a test's autojump clock would otherwise
            # give up on a call the moment every task waits for the server's answer).
            with realtime.move_on_after(limit) as scope:
                yield
        except self._client_errors as exc:
            raise StreamError(
                f"Redis at {_redacted(self.url)}: {what} failed: {type(exc).__name__}: {exc}"
            ) from exc
        except TypeError as exc:  # a reply coredis could not parse
            raise StreamError(
                f"Redis at {_redacted(self.url)}: {what}: unexpected reply ({exc})"
            ) from exc
        if scope.cancelled_caught:
            raise StreamError(
                f"Redis at {_redacted(self.url)}: {what} got no answer within {limit:g} s "
                "(the server is frozen or unreachable; RedisStreamer(timeout=...))"
            )

    @asynccontextmanager
    async def _open_client(self) -> AsyncIterator[Redis[bytes]]:
        """A coredis client whose context hands back the body's own exception unwrapped."""
        client: Redis[bytes] = self._coredis.Redis.from_url(self.url, decode_responses=False)
        inner: BaseException | None = None
        try:
            async with client:
                try:
                    yield client
                except BaseException as exc:
                    inner = exc
                    raise
        except BaseExceptionGroup as group:
            leaves = _leaves(group)
            if inner is not None and leaves == [inner]:
                raise inner from None
            if inner is None and all(isinstance(e, self._client_errors) for e in leaves):
                raise StreamError(
                    f"Redis at {_redacted(self.url)}: the client failed: {leaves[0]}"
                ) from group
            raise

    @asynccontextmanager
    async def open_sender(self, topic: str) -> AsyncIterator[EventSender]:
        """A sender appending to the stream of ``topic`` (XADD, pipelined)."""
        key = self.key(topic)
        async with self._open_client() as client:
            with closing_sender(_RedisSender(self, client, key), topic) as sender:
                yield sender

    @asynccontextmanager
    async def open_receiver(
        self,
        topic: str,
        consumer: str,
        *,
        start: Start = "earliest",
        member: str | None = None,
    ) -> AsyncIterator[EventReceiver]:
        """A receiver of ``topic`` in the consumer group ``consumer``, as ``member``.

        The group is created (with the stream) on first use, at the first entry
        (``start="earliest"``) or after the last one (``"latest"``).

        Raises:
            StreamError: Redis cannot be reached.
        """
        key = self.key(topic)
        consumer = check_topic(consumer, "consumer")
        start = check_start(start)
        member = consumer if member is None else check_topic(member, "member")
        again = (key, consumer) in self._opened
        async with self._open_client() as client:
            exists = self._coredis.exceptions.StreamDuplicateConsumerGroupError
            with self._errors("XGROUP CREATE"), suppress(exists):
                await client.xgroup_create(
                    key,
                    consumer,
                    identifier="0" if start == "earliest" or again else "$",
                    mkstream=True,
                )
                if again:
                    log.warning(
                        "Redis stream %s: consumer group %s had vanished (the stream was "
                        "deleted or Redis lost its data); created it again at the first entry",
                        key.decode(errors="replace"),
                        consumer,
                    )
            self._opened.add((key, consumer))
            receiver = _RedisReceiver(self, client, key, consumer, member)
            with closing_receiver(receiver, topic, consumer) as closing:
                yield closing


@final
class _RedisSender(CheckedSender):
    def __init__(self, streamer: RedisStreamer, client: Redis[bytes], key: bytes) -> None:
        self._streamer = streamer
        self._client = client
        self._key = key
        tokens = streamer._coredis.tokens.PureToken
        self._trim: dict[str, Any] = (
            {}
            if streamer.maxlen is None
            else {
                "trim_strategy": tokens.MAXLEN,
                "trim_operator": tokens.APPROXIMATELY,
                "threshold": streamer.maxlen,
            }
        )

    async def _send(self, checked: list[ConnectorEvent]) -> None:
        for first in range(0, len(checked), PIPELINE_CHUNK):
            chunk = checked[first : first + PIPELINE_CHUNK]
            with self._streamer._errors("XADD"):
                if len(chunk) == 1:
                    await self._client.xadd(self._key, encode_event(chunk[0]), **self._trim)
                    continue
                async with self._client.pipeline(transaction=False) as pipe:
                    for event in chunk:
                        pipe.xadd(self._key, encode_event(event), **self._trim)


@final
class _RedisReceiver:
    """One member of a consumer group reading one stream."""

    def __init__(
        self,
        streamer: RedisStreamer,
        client: Redis[bytes],
        key: bytes,
        group: str,
        member: str,
    ) -> None:
        self._streamer = streamer
        self._client = client
        self._key = key
        self._group = group
        self._member = member
        self._buffer: deque[tuple[bytes, ConnectorEvent]] = deque()
        self._inflight: Inflight[bytes] = Inflight()
        self._pending_from: bytes | None = b"-"
        """Where to resume re-reading this member's pending entries (None: done)."""
        self._next_claim = trio.current_time()
        self.dead_letters = 0
        """How many unreadable entries this receiver moved to ``<stream>:dead``."""
        self._handed_out = HandedOut()
        self.duplicates = 0
        """Transition events it acknowledged without handing them out: their run was handed
        out at that version or a later one already (a relay re-published them)."""

    @property
    def _claim_every(self) -> float:
        claim_after = self._streamer.claim_after
        assert claim_after is not None
        return max(claim_after.total_seconds() / 2, self._streamer.block.total_seconds())

    async def receive(self) -> ConnectorEvent:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._buffer:
            await self._fill()
        entry_id, event = self._buffer.popleft()
        self._inflight.add(event, entry_id)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return event

    async def ack(self, event: ConnectorEvent) -> None:
        entry_id = self._inflight.take(event)
        try:
            with self._streamer._errors("XACK"):
                await self._client.xack(self._key, self._group, [entry_id])
        except BaseException:
            self._inflight.add(event, entry_id)
            raise

    def _known(self) -> set[bytes]:
        return self._inflight.positions() | {entry_id for entry_id, _ in self._buffer}

    async def _fill(self) -> None:
        # Each step moves its bookmark (``_pending_from``, ``_next_claim``) only once what it
        # read is in the buffer: if a step fails half-way (a dead letter that cannot be
        # written, a cancellation), its entries stay pending for this member and the next
        # call looks at the pending entries again, so none is stranded.
        if self._pending_from is not None:
            await self._recover_pending()
            return  # receive() calls again while the buffer is empty
        claim_after = self._streamer.claim_after
        if claim_after is not None and trio.current_time() >= self._next_claim:
            await self._claim(claim_after)
            self._next_claim = trio.current_time() + self._claim_every
            if self._buffer or self._pending_from is not None:
                return
        streamer = self._streamer
        # If this read is interrupted, Redis may have handed entries to this member that
        # never reached us: look at the pending entries again before reading new ones.
        self._pending_from = b"-"
        with streamer._errors("XREADGROUP", wait=streamer.block):
            reply = await self._client.xreadgroup(
                self._group,
                self._member,
                {self._key: ">"},
                count=streamer.batch,
                block=streamer.block,
            )
        for entries in (reply or {}).values():
            await self._take(entries)
        self._pending_from = None

    async def _recover_pending(self) -> None:
        """Re-deliver entries this member received before and did not acknowledge.

        Reads one page of them; :attr:`_pending_from` moves past the page only once every
        entry of it is buffered, dead-lettered or acknowledged as deleted.
        """
        assert self._pending_from is not None
        count = self._streamer.batch
        with self._streamer._errors("XPENDING"):
            pending = await self._client.xpending(
                self._key, self._group, self._pending_from, b"+", count, consumer=self._member
            )
        ids: list[bytes] = []
        for item in pending:
            identifier = getattr(item, "identifier", None)
            if isinstance(identifier, bytes):
                ids.append(identifier)
        after_page = b"(" + ids[-1] if len(pending) == count and ids else None
        known = self._known()
        ids = [entry_id for entry_id in ids if entry_id not in known]
        if ids:
            with self._streamer._errors("XRANGE"):
                async with self._client.pipeline(transaction=False) as pipe:
                    ranges = [pipe.xrange(self._key, entry_id, entry_id) for entry_id in ids]
            found = {}
            for result in ranges:
                for entry in await result:
                    found[entry.identifier] = entry
            gone = [entry_id for entry_id in ids if entry_id not in found]
            if gone:
                log.error(
                    "Redis stream %s group %s: %d pending entries were deleted (trimmed) "
                    "before they were acknowledged; acknowledging them: %s",
                    self._key.decode(),
                    self._group,
                    len(gone),
                    b", ".join(gone).decode(),
                )
                with self._streamer._errors("XACK"):
                    await self._client.xack(self._key, self._group, gone)
            await self._take([found[entry_id] for entry_id in ids if entry_id in found])
        self._pending_from = after_page

    async def _claim(self, claim_after: timedelta) -> None:
        """Take over entries other members left pending for longer than ``claim_after``.

        XAUTOCLAIM ... JUSTID only moves the entries to this member (Redis 6.2 answers a
        full XAUTOCLAIM with nil for an entry deleted from the stream, which coredis cannot
        parse); they are then read like this member's own pending entries, which also
        acknowledges, and skips, the deleted ones.
        """
        start: bytes = b"0-0"
        known = self._known()
        while True:
            # If the call is interrupted, entries may have moved to this member already.
            self._pending_from = b"-"
            with self._streamer._errors("XAUTOCLAIM"):
                reply = await self._client.xautoclaim(
                    self._key,
                    self._group,
                    self._member,
                    claim_after,
                    start,
                    count=self._streamer.batch,
                    justid=True,
                )
            start = reply[0]
            # Defensively: anything but an id (a nil entry) is left to the pending read.
            claimed = [entry_id for entry_id in reply[1] if isinstance(entry_id, bytes)]
            fresh = [entry_id for entry_id in claimed if entry_id not in known]
            if fresh:
                log.warning(
                    "Redis stream %s group %s: member %s claimed %d entries left pending by "
                    "another member for over %s",
                    self._key.decode(),
                    self._group,
                    self._member,
                    len(fresh),
                    claim_after,
                )
            if fresh or len(claimed) != len(reply[1]):
                return  # _pending_from stays set: the claimed entries are read from there
            if start in (b"0-0", b"0"):
                self._pending_from = None
                return

    async def _take(self, entries: Sequence[Any]) -> None:
        repeats: list[bytes] = []
        for entry in entries:
            entry_id: bytes = entry.identifier
            try:
                event = decode_event(entry_id, entry.field_values)
            except EventError as exc:
                await self._dead_letter(entry_id, entry.field_values, exc)
                continue
            if self._handed_out.is_repeat(event):
                repeats.append(entry_id)
                continue
            self._buffer.append((entry_id, event))
        if repeats:
            # If this fails, the entries stay pending for this member and are read (and
            # found to be repeats) again.
            with self._streamer._errors("XACK"):
                await self._client.xack(self._key, self._group, repeats)
            self.duplicates += len(repeats)
            log.info(
                "Redis stream %s group %s: acknowledged %d re-published transition(s) "
                "without handing them out again",
                self._key.decode(errors="replace"),
                self._group,
                len(repeats),
            )

    async def _dead_letter(self, entry_id: bytes, fields: Any, error: EventError) -> None:
        dead = self._key + b":dead"
        record = {
            b"error": str(error).encode(),
            b"source_id": entry_id,
            b"group": self._group.encode(),
        }
        for key, value in (fields or {}).items():
            record[b"f:" + key] = value
        with self._streamer._errors("dead-lettering"):
            await self._client.xadd(dead, record)
            await self._client.xack(self._key, self._group, [entry_id])
        self.dead_letters += 1
        log.error(
            "Redis stream %s group %s: %s; moved it to %s and acknowledged it",
            self._key.decode(),
            self._group,
            error,
            dead.decode(),
        )
