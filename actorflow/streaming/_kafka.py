"""Kafka: a topic per workflow, a consumer group per consumer name (client: confluent-kafka).

confluent-kafka (librdkafka) is synchronous. Every call into it runs in a worker thread
(``trio.to_thread.run_sync``, one at a time per client through its own CapacityLimiter),
and no call waits longer than ``poll_interval``, so a cancelled ``receive`` returns within
that time and the trio loop never blocks. librdkafka's own threads do the network I/O;
its log lines go to the ``actorflow.kafka`` logger. The time limits on the broker
(``join_timeout``, ``connect_timeout`` at close) are real time (``stores.realtime``): the
broker lives in real time, so under a test's autojump clock, which jumps while a worker
thread waits, a group join is not given up after no real time at all.

Messages: key = the event's foreign id (Kafka orders per partition, so each run's events
stay in order), value = the payload, headers = the event's headers plus ``af.id``,
``af.type`` and ``af.created_at``. Messages that other producers wrote (without those
headers) are read too: their id is ``<topic>:<partition>:<offset>``, their time the
message timestamp.

Acknowledgements commit offsets, synchronously: acking an event commits the offset after
it in its partition, which also covers every event of that partition received before it
(cumulative, like the log-based streamers).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any, Literal, TypeVar, final

import attrs
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
    Start,
    StreamError,
    check_start,
    check_topic,
    closing_receiver,
    closing_sender,
)
from actorflow.streaming._source import StreamSource

log = logging.getLogger("actorflow")
client_log = logging.getLogger("actorflow.kafka")

ID_HEADER = "af.id"
TYPE_HEADER = "af.type"
CREATED_AT_HEADER = "af.created_at"
RESERVED_PREFIX = "af."

#: Settings the streamer owns: they decide where cursors live and when they move.
MANAGED_SETTINGS = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
    }
)

_ILLEGAL_TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_TOPIC = 249

R = TypeVar("R")


def _confluent() -> ModuleType:
    try:
        import confluent_kafka
        import confluent_kafka.admin
    except ImportError as exc:
        raise ActorflowError(
            "KafkaStreamer needs the confluent-kafka client: pip install actorflow[kafka]"
        ) from exc
    return confluent_kafka


def _millis(value: timedelta) -> int:
    return max(int(value.total_seconds() * 1000), 1)


def _duration(name: str, value: object, minimum: timedelta = timedelta(milliseconds=1)) -> None:
    if not isinstance(value, timedelta) or value < minimum:
        raise InvalidArgument(f"{name} must be a timedelta >= {minimum}, not {value!r}")


@final
@attrs.define
class KafkaStats:
    """What a KafkaStreamer has done since it was made (for tests, logs and metrics)."""

    sent: int = 0
    """Messages the broker confirmed (delivery reports without an error)."""
    delivery_errors: int = 0
    """Messages the broker did not take (each failed batch raised StreamError)."""
    received: int = 0
    """Events handed out by receivers (redeliveries count again)."""
    undecodable: int = 0
    """Messages skipped because they are not valid events (each logged as an error)."""
    duplicates: int = 0
    """Transition events skipped because their receiver already handed out that run's
    version or a later one (a relay re-published them)."""
    commits: int = 0
    """Offset commits (acknowledgements)."""
    commit_errors: int = 0
    """Asynchronous commits the broker refused (a later commit covers them)."""
    rebalances: int = 0
    """Partition assignments and revocations seen by receivers."""


def _bootstrap(bootstrap_servers: object) -> str:
    """The ``bootstrap.servers`` setting: a string, or a list of addresses joined."""
    if isinstance(bootstrap_servers, str):
        servers = bootstrap_servers
    elif isinstance(bootstrap_servers, Sequence) and all(
        isinstance(s, str) and s for s in bootstrap_servers
    ):
        servers = ",".join(bootstrap_servers)
    else:
        servers = ""
    if not servers:
        raise InvalidArgument(
            "KafkaStreamer needs bootstrap servers, e.g. 'localhost:9092' or "
            f"['broker-1:9092', 'broker-2:9092'], not {bootstrap_servers!r}"
        )
    return servers


def _check_topic_prefix(topic_prefix: object) -> None:
    if not isinstance(topic_prefix, str) or _ILLEGAL_TOPIC_CHARS.search(topic_prefix):
        raise InvalidArgument(
            "topic_prefix must be a string of letters, digits, '.', '_' and '-' (what "
            f"Kafka allows in topic names), not {topic_prefix!r}"
        )


def _librdkafka_settings(what: str, config: object) -> dict[str, Any]:
    """A copy of the user's extra settings ``what``, none of them the streamer's own."""
    if config is None:
        config = {}
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        raise InvalidArgument(f"{what} must be a dict of librdkafka settings, not {config!r}")
    managed = sorted(MANAGED_SETTINGS.intersection(config))
    if managed:
        raise InvalidArgument(
            f"{what} may not set {', '.join(managed)}: the streamer sets them "
            "(bootstrap servers are its first argument, consumer groups come from "
            "consumer names, offsets are committed on ack, start= picks the first "
            "offset)"
        )
    return dict(config)


def _check_sizes(partitions: object, batch: object, replication_factor: object) -> None:
    for name, number, least in (("partitions", partitions, 1), ("batch", batch, 1)):
        if not isinstance(number, int) or isinstance(number, bool) or number < least:
            raise InvalidArgument(f"{name} must be an int >= {least}, not {number!r}")
    if replication_factor is not None and (
        not isinstance(replication_factor, int)
        or isinstance(replication_factor, bool)
        or replication_factor < 1
    ):
        raise InvalidArgument(
            f"replication_factor must be None or an int >= 1, not {replication_factor!r}"
        )


def _heartbeat(session_timeout: timedelta, heartbeat_interval: timedelta | None) -> timedelta:
    """The heartbeat interval (default: a third of the session timeout, at most 3 s)."""
    if heartbeat_interval is None:
        heartbeat_interval = min(session_timeout / 3, timedelta(seconds=3))
    _duration("heartbeat_interval", heartbeat_interval)
    if heartbeat_interval >= session_timeout:
        raise InvalidArgument(
            f"heartbeat_interval ({heartbeat_interval}) must be shorter than "
            f"session_timeout ({session_timeout})"
        )
    return heartbeat_interval


@final
class KafkaStreamer:
    """An :class:`EventStreamer` on Kafka (confluent-kafka; ``pip install actorflow[kafka]``).

    A topic is the Kafka topic ``<topic_prefix><topic>`` (characters Kafka does not allow
    become ``_``, and a short hash of the original name is appended then, so different
    names stay different); the outbox relay publishes a workflow to the topic named after
    it. A consumer name is the consumer group ``<kafka topic>.<consumer>``; receivers with
    the same name in several processes share the partitions. Missing topics are created
    with ``partitions`` partitions (one keeps the whole topic in order; with more, order
    holds per foreign id).

    Sending uses an idempotent producer (``enable.idempotence``, ``acks=all``) and returns
    only after the broker's delivery report for every message, so the relay moves its
    cursor only for messages Kafka has. Receiving commits offsets only on ``ack``.

    Args:
        bootstrap_servers: ``"host:port,host:port"`` or a sequence of ``"host:port"``.
        topic_prefix: prepended to topics to name the Kafka topics.
        client_config: librdkafka settings for every client (producer, consumer, admin):
            SASL/TLS (``security.protocol``, ``sasl.mechanism``, ``sasl.username``, ...)
            and anything else; ``group.id``, ``enable.auto.commit``,
            ``enable.auto.offset.store``, ``auto.offset.reset`` and ``bootstrap.servers``
            are the streamer's and are refused.
        producer_config: extra settings for producers only (e.g. ``compression.type``).
        consumer_config: extra settings for consumers only.
        partitions: partitions of the topics this streamer creates.
        replication_factor: replication of the topics it creates (None: broker default).
        create_topics: create missing topics (turn off where the client may not).
        session_timeout: the consumer group session timeout (real Kafka accepts 6 s to
            5 min by default; a group join takes up to about this long).
        heartbeat_interval: consumer heartbeats (default: a third of the session timeout,
            at most 3 s).
        connect_timeout: how long opening waits for the cluster before StreamError.
        delivery_timeout: how long a message may wait for its delivery report (librdkafka
            ``message.timeout.ms``) before the send fails with StreamError.
        join_timeout: how long opening a receiver waits for its first partition
            assignment (the group join).
        poll_interval: the longest one call into the client blocks its worker thread
            (how soon a cancelled receive returns).
        batch: messages fetched per call.
        async_commits: ``ack`` sends the offset commit without waiting for the broker's
            answer (many times faster for a busy connector); offsets still only move
            after ``ack``, and closing the receiver or losing a partition waits for the
            last commit. A process killed meanwhile has its last few acknowledged events
            delivered again (still at-least-once). Default: ``ack`` waits for the commit.

    Raises:
        ActorflowError: confluent-kafka is not installed (``pip install actorflow[kafka]``).
        InvalidArgument: a bad option.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        topic_prefix: str = "",
        client_config: Mapping[str, Any] | None = None,
        producer_config: Mapping[str, Any] | None = None,
        consumer_config: Mapping[str, Any] | None = None,
        partitions: int = 1,
        replication_factor: int | None = None,
        create_topics: bool = True,
        session_timeout: timedelta = timedelta(seconds=10),
        heartbeat_interval: timedelta | None = None,
        connect_timeout: timedelta = timedelta(seconds=10),
        delivery_timeout: timedelta = timedelta(seconds=30),
        join_timeout: timedelta = timedelta(seconds=60),
        poll_interval: timedelta = timedelta(milliseconds=100),
        batch: int = 500,
        async_commits: bool = False,
    ) -> None:
        self._kafka = _confluent()
        servers = _bootstrap(bootstrap_servers)
        _check_topic_prefix(topic_prefix)
        client, producer, consumer = (
            _librdkafka_settings(what, config)
            for what, config in (
                ("client_config", client_config),
                ("producer_config", producer_config),
                ("consumer_config", consumer_config),
            )
        )
        _check_sizes(partitions, batch, replication_factor)
        _duration("session_timeout", session_timeout)
        _duration("connect_timeout", connect_timeout)
        _duration("delivery_timeout", delivery_timeout)
        _duration("join_timeout", join_timeout)
        _duration("poll_interval", poll_interval)
        heartbeat_interval = _heartbeat(session_timeout, heartbeat_interval)
        self.bootstrap_servers = servers
        self.topic_prefix = topic_prefix
        self.client_config, self.producer_config, self.consumer_config = client, producer, consumer
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.create_topics = bool(create_topics)
        self.session_timeout = session_timeout
        self.heartbeat_interval = heartbeat_interval
        self.connect_timeout = connect_timeout
        self.delivery_timeout = delivery_timeout
        self.join_timeout = join_timeout
        self.poll_interval = poll_interval
        self.batch = batch
        self.async_commits = bool(async_commits)
        self.stats = KafkaStats()
        self._admin: Any = None
        self._admin_limiter = trio.CapacityLimiter(1)
        self._topics_ready: set[str] = set()

    def __repr__(self) -> str:
        # client_config may hold passwords: never shown.
        return f"KafkaStreamer({self.bootstrap_servers!r}, topic_prefix={self.topic_prefix!r})"

    # -- names -------------------------------------------------------------------------------

    def topic_name(self, topic: str) -> str:
        """The Kafka topic of ``topic``."""
        name = self.topic_prefix + check_topic(topic)
        safe = _ILLEGAL_TOPIC_CHARS.sub("_", name)
        if safe != name or len(safe) > _MAX_TOPIC or safe in (".", ".."):
            digest = hashlib.sha1(name.encode()).hexdigest()[:10]
            safe = f"{safe[: _MAX_TOPIC - 11]}-{digest}"
        return safe

    def group_id(self, topic: str, consumer: str) -> str:
        """The consumer group of ``consumer`` on ``topic``."""
        return f"{self.topic_name(topic)}.{check_topic(consumer, 'consumer')}"

    def source(self, topic: str, *, start: Start = "earliest") -> StreamSource:
        """An :class:`EventSource` over ``topic`` for ``builder.add_connector``.

        The connector's name is the consumer name, so its consumer group is
        ``<kafka topic>.connector:<workflow>:<connector>``.
        """
        return StreamSource(self, topic, start=start)

    # -- clients -----------------------------------------------------------------------------

    def _config(self, role: Literal["producer", "consumer", "admin"]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "logger": client_log,
        }
        if role == "producer":
            config.update(
                {
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                    "message.timeout.ms": _millis(self.delivery_timeout),
                }
            )
        elif role == "consumer":
            config.update(
                {
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "session.timeout.ms": _millis(self.session_timeout),
                    "heartbeat.interval.ms": _millis(self.heartbeat_interval),
                    "enable.partition.eof": False,
                }
            )
        config.update(self.client_config)
        if role == "producer":
            config.update(self.producer_config)
        elif role == "consumer":
            config.update(self.consumer_config)
        return config

    def _error(self, what: str, exc: BaseException) -> StreamError:
        detail = exc.args[0] if exc.args else exc
        text = getattr(detail, "str", None)
        reason = text() if callable(text) else (str(detail) or f"{type(exc).__name__} (timed out)")
        return StreamError(f"Kafka at {self.bootstrap_servers}: {what} failed: {reason}")

    def _make(self, role: Literal["producer", "consumer", "admin"], **extra: Any) -> Any:
        kafka = self._kafka
        config = self._config(role)
        config.update(extra)
        factory = {
            "producer": kafka.Producer,
            "consumer": kafka.Consumer,
            "admin": kafka.admin.AdminClient,
        }[role]
        try:
            return factory(config)
        except (kafka.KafkaException, ValueError, TypeError) as exc:
            raise InvalidArgument(
                f"KafkaStreamer: librdkafka refused the {role} settings: {exc}"
            ) from None

    async def _admin_call(self, what: str, fn: Callable[[Any], R]) -> R:
        def call() -> R:
            if self._admin is None:
                self._admin = self._make("admin")
            try:
                return fn(self._admin)
            finally:
                self._admin.poll(0)  # serve its log lines

        try:
            # A cancelled caller does not wait for the metadata timeout: the thread is left
            # to finish (it keeps the limiter's token until then, so calls never overlap).
            return await trio.to_thread.run_sync(
                call, limiter=self._admin_limiter, abandon_on_cancel=True
            )
        except (self._kafka.KafkaException, TimeoutError) as exc:
            raise self._error(what, exc) from None

    async def check_reachable(self) -> None:
        """Wait (up to ``connect_timeout``) until the cluster answers a metadata request.

        ``Workflow.run`` calls this before it reports started, so a wrong address fails
        ``nursery.start`` instead of retrying in the background for ever.

        Raises:
            StreamError: the cluster did not answer in time.
        """
        timeout = self.connect_timeout.total_seconds()
        await self._admin_call(
            f"reaching the cluster within {self.connect_timeout}",
            lambda admin: admin.list_topics(timeout=timeout),
        )

    async def _ensure_topic(self, topic: str) -> str:
        """The Kafka topic of ``topic``, created first if missing (and allowed)."""
        name = self.topic_name(topic)
        if name in self._topics_ready:
            return name
        timeout = self.connect_timeout.total_seconds()
        metadata = await self._admin_call(
            f"reaching the cluster within {self.connect_timeout}",
            lambda admin: admin.list_topics(timeout=timeout),
        )
        if name not in metadata.topics and self.create_topics:
            await self._admin_call(f"creating topic {name!r}", self._create_topic(name))
        self._topics_ready.add(name)
        return name

    def _create_topic(self, name: str) -> Callable[[Any], None]:
        kafka = self._kafka

        def create(admin: Any) -> None:
            new = kafka.admin.NewTopic(
                name,
                num_partitions=self.partitions,
                replication_factor=self.replication_factor or -1,
            )
            futures = admin.create_topics(
                [new], operation_timeout=self.connect_timeout.total_seconds()
            )
            try:
                futures[name].result(timeout=self.connect_timeout.total_seconds())
            except kafka.KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if getattr(error, "code", lambda: None)() != kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise

        return create

    # -- the EventStreamer protocol ----------------------------------------------------------

    @asynccontextmanager
    async def open_sender(self, topic: str) -> AsyncIterator[EventSender]:
        """A sender producing to the Kafka topic of ``topic`` (an idempotent producer).

        Raises:
            StreamError: the cluster cannot be reached within ``connect_timeout``.
        """
        name = await self._ensure_topic(topic)
        limiter = trio.CapacityLimiter(1)
        producer = await trio.to_thread.run_sync(self._make, "producer", limiter=limiter)
        sender = _KafkaSender(self, producer, name, limiter)
        try:
            with closing_sender(sender, topic) as closing:
                yield closing
        finally:
            with trio.CancelScope(shield=True):
                await sender.close()

    @asynccontextmanager
    async def open_receiver(
        self, topic: str, consumer: str, *, start: Start = "earliest"
    ) -> AsyncIterator[EventReceiver]:
        """A receiver of ``topic`` in the consumer group of ``consumer``.

        Returns once the group gave this receiver its partitions; a partition that the
        group has no offset for yet gets one committed right then (its first offset for
        ``start="earliest"``, its end for ``"latest"``), so nothing sent after this first
        open is missed.

        Raises:
            StreamError: the cluster cannot be reached within ``connect_timeout``, or the
                group join takes longer than ``join_timeout``.
        """
        check_topic(topic)
        group = self.group_id(topic, consumer)
        start = check_start(start)
        name = await self._ensure_topic(topic)
        limiter = trio.CapacityLimiter(1)
        commit_errors: list[str] = []

        def on_commit(error: Any, partitions: Any) -> None:
            if error is not None:
                commit_errors.append(str(error))

        settings = {"group.id": group, "auto.offset.reset": start, "on_commit": on_commit}
        client = await trio.to_thread.run_sync(
            lambda: self._make("consumer", **settings), limiter=limiter
        )
        receiver = _KafkaReceiver(self, client, name, group, start, limiter, commit_errors)
        try:
            await receiver.join()
            with closing_receiver(receiver, topic, consumer) as closing:
                yield closing
        finally:
            with trio.CancelScope(shield=True):
                await receiver.close()


def encode_headers(event: ConnectorEvent) -> list[tuple[str, bytes]]:
    """The Kafka headers of an event. Raises EventError for a header named ``af.*``."""
    headers = [
        (ID_HEADER, event.id.encode()),
        (TYPE_HEADER, event.type.encode()),
        (CREATED_AT_HEADER, event.created_at.isoformat().encode()),
    ]
    for name, value in event.headers.items():
        if name.startswith(RESERVED_PREFIX):
            raise EventError(
                f"event {event.id!r} has the header {name!r}: names starting with "
                f"{RESERVED_PREFIX!r} are reserved by the Kafka streamer"
            )
        headers.append((name, value.encode()))
    return headers


def decode_message(message: Any) -> ConnectorEvent:
    """The event of a Kafka message. Raises EventError naming what is wrong with it."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    where = f"Kafka message {topic}:{partition}:{offset}"
    try:
        key = message.key()
        foreign_id = key.decode() if key is not None else ""
        headers: dict[str, str] = {}
        for name, value in message.headers() or ():
            headers[name] = value.decode() if value is not None else ""
    except UnicodeDecodeError as exc:
        raise EventError(f"{where} has a key or header that is not UTF-8: {exc}") from None
    event_id = headers.pop(ID_HEADER, None)
    if event_id is None:  # another producer's message: its place is its id
        event_id = f"{topic}:{partition}:{offset}"
    elif not event_id:  # ours, or claims to be, with no id (an empty or null af.id)
        raise EventError(f"{where} has an empty {ID_HEADER!r} header")
    event_type = headers.pop(TYPE_HEADER, "")
    created_text = headers.pop(CREATED_AT_HEADER, None)
    try:
        if created_text is not None:
            created_at = datetime.fromisoformat(created_text)
        else:
            kind, millis = message.timestamp()
            created_at = (
                datetime.fromtimestamp(millis / 1000, UTC) if kind and millis >= 0 else None
            ) or datetime.now(UTC)
        return ConnectorEvent(
            id=event_id,
            foreign_id=foreign_id,
            type=event_type,
            headers={k: v for k, v in headers.items() if not k.startswith(RESERVED_PREFIX)},
            created_at=created_at,
            payload=message.value() or b"",
        )
    except (ValueError, ActorflowError) as exc:
        raise EventError(f"{where} is not a valid event: {exc}") from None


@final
class _Delivery:
    """Delivery reports of one batch (filled by librdkafka's callbacks in a worker thread)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.reported = 0
        self.errors: list[str] = []

    def __call__(self, error: Any, message: Any) -> None:
        self.reported += 1
        if error is not None:
            self.errors.append(str(error.str() if hasattr(error, "str") else error))

    @property
    def done(self) -> bool:
        return self.reported >= self.expected


@final
class _KafkaSender(CheckedSender):
    def __init__(
        self, streamer: KafkaStreamer, producer: Any, topic: str, limiter: trio.CapacityLimiter
    ) -> None:
        self._streamer = streamer
        self._producer = producer
        self._topic = topic
        self._limiter = limiter

    async def _call(self, what: str, fn: Callable[[], R]) -> R:
        try:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter)
        except self._streamer._kafka.KafkaException as exc:
            raise self._streamer._error(what, exc) from None

    async def _send(self, checked: list[ConnectorEvent]) -> None:
        messages = [(e.foreign_id.encode() or None, e.payload, encode_headers(e)) for e in checked]
        delivery = _Delivery(len(messages))
        producer, topic = self._producer, self._topic
        wait = self._streamer.poll_interval.total_seconds()

        def produce_all() -> None:
            for key, value, headers in messages:
                while True:
                    try:
                        producer.produce(
                            topic, value=value, key=key, headers=headers, on_delivery=delivery
                        )
                        break
                    except BufferError:  # the local queue is full: let it drain
                        producer.poll(wait)
            producer.flush(wait)

        await self._call(f"producing to {topic!r}", produce_all)
        while not delivery.done:
            # Each call waits at most poll_interval, so cancellation is seen between them;
            # message.timeout.ms (delivery_timeout) bounds the whole wait.
            await self._call(f"producing to {topic!r}", lambda: producer.flush(wait))
        stats = self._streamer.stats
        stats.sent += delivery.reported - len(delivery.errors)
        if delivery.errors:
            stats.delivery_errors += len(delivery.errors)
            # The broker may have lost the topic (a restart on memory storage): look again.
            self._streamer._topics_ready.discard(topic)
            raise StreamError(
                f"Kafka at {self._streamer.bootstrap_servers}: {len(delivery.errors)} of "
                f"{len(messages)} messages to {topic!r} were not delivered: {delivery.errors[0]}"
            )

    async def close(self) -> None:
        """Deliver what is still queued (up to ``connect_timeout``), then drop the rest."""
        producer = self._producer
        seconds = self._streamer.connect_timeout.total_seconds()

        def finish() -> None:
            if producer.flush(seconds) > 0:
                producer.purge()
                producer.flush(0)

        with realtime.move_on_after(seconds + 1):
            try:
                await trio.to_thread.run_sync(finish, abandon_on_cancel=True)
            except self._streamer._kafka.KafkaException as exc:
                log.warning("Kafka producer for %r did not close cleanly: %s", self._topic, exc)


@attrs.define(eq=False)
class _Entry:
    offset: int
    event_id: str | None  # None: skipped (undecodable or a duplicate), never handed out
    done: bool  # may be committed past without an acknowledgement


@attrs.define(eq=False)
class _Partition:
    """The messages of one assigned partition that are fetched and not yet committed."""

    number: int
    entries: deque[_Entry] = attrs.Factory(deque)
    revoked: bool = False

    def commit_point(self, offset: int) -> int:
        """The offset to commit when the message at ``offset`` is acknowledged: after it,
        and after the skipped messages that follow it."""
        commit = offset + 1
        for entry in self.entries:
            if entry.offset <= offset:
                continue
            if not entry.done:
                break
            commit = entry.offset + 1
        return commit


def _ours(message: Any) -> bool:
    """Whether a message was sent by a KafkaStreamer (it carries the ``af.id`` header)."""
    return any(name == ID_HEADER for name, _ in message.headers() or ())


@final
class _KafkaReceiver:
    """One member of a consumer group reading one topic."""

    def __init__(
        self,
        streamer: KafkaStreamer,
        consumer: Any,
        topic: str,
        group: str,
        start: Start,
        limiter: trio.CapacityLimiter,
        commit_errors: list[str],
    ) -> None:
        self._streamer = streamer
        self._consumer = consumer
        self._commit_errors = commit_errors
        self._uncommitted: dict[int, int] = {}
        self._not_owned: set[int] = set()
        """Partitions revoked and not assigned again (kept by the rebalance callbacks)."""
        """Asynchronous mode: the last offset sent per partition, until one is confirmed."""
        self._topic = topic
        self._group = group
        self._start = start
        self._limiter = limiter
        self._buffer: deque[tuple[_Partition, int, ConnectorEvent]] = deque()
        self._partitions: dict[int, _Partition] = {}
        self._inflight: dict[str, deque[tuple[_Partition, int]]] = {}
        self._handed_out = HandedOut()
        # Filled by librdkafka's rebalance callbacks, which run inside consume() in the
        # worker thread; read on the trio side once that call returned.
        self._rebalances: list[tuple[str, list[int]]] = []
        self._callback_errors: list[BaseException] = []
        self._joined = False
        self._ack_lock = trio.Lock()
        self.undecodable = 0
        """Messages this receiver skipped because they are not valid events."""
        self.duplicates = 0
        """Transition events it skipped as already handed out (same run, same or older version)."""

    # -- worker-thread side --------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[[], R], *, abandon: bool = False) -> R:
        """Run ``fn`` in a worker thread. ``abandon``: a cancelled caller does not wait for
        it (only for calls whose result may be lost, like a commit: an abandoned thread
        keeps the limiter's token, so the next call still waits for it)."""
        try:
            return await trio.to_thread.run_sync(
                fn, limiter=self._limiter, abandon_on_cancel=abandon
            )
        except self._streamer._kafka.KafkaException as exc:
            raise self._streamer._error(f"{what} (group {self._group!r})", exc) from None

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        try:
            mine = [p for p in partitions if p.topic == self._topic]
            self._not_owned.difference_update(p.partition for p in mine)
            if mine:
                self._commit_start_offsets(consumer, mine)
            self._rebalances.append(("assign", [p.partition for p in mine]))
        except BaseException as exc:  # raised on the trio side, not into librdkafka
            self._callback_errors.append(exc)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        numbers = [p.partition for p in partitions]
        self._not_owned.update(numbers)
        try:
            self._commit_now(consumer, numbers)  # before the next owner reads them
        except BaseException as exc:
            log.warning(
                "Kafka %s group %s: committing before a rebalance failed (the next owner "
                "may deliver a few acknowledged events again): %s",
                self._topic,
                self._group,
                exc,
            )
        self._rebalances.append(("revoke", numbers))

    def _commit_now(self, consumer: Any, numbers: list[int] | None = None) -> None:
        """Asynchronous mode: commit the last offsets sent for ``numbers`` (all: None) and
        wait for the broker (worker thread)."""
        kafka = self._streamer._kafka
        pending = {
            number: offset
            for number, offset in list(self._uncommitted.items())
            if numbers is None or number in numbers
        }
        if not pending:
            return
        offsets = [kafka.TopicPartition(self._topic, n, o) for n, o in pending.items()]
        consumer.commit(offsets=offsets, asynchronous=False)
        for number, offset in pending.items():
            if self._uncommitted.get(number) == offset:
                del self._uncommitted[number]

    def _commit_start_offsets(self, consumer: Any, partitions: list[Any]) -> None:
        """Give partitions the group has no offset for one now: the cursor exists from the
        first open on, whatever ``start`` the next open asks for."""
        kafka = self._streamer._kafka
        timeout = self._streamer.connect_timeout.total_seconds()
        committed = consumer.committed(partitions, timeout=timeout)
        missing = [tp for tp in committed if tp.offset < 0]
        if not missing:
            return
        starts = []
        for tp in missing:
            low, high = consumer.get_watermark_offsets(
                kafka.TopicPartition(tp.topic, tp.partition), timeout=timeout
            )
            starts.append(
                kafka.TopicPartition(
                    tp.topic, tp.partition, low if self._start == "earliest" else high
                )
            )
        if self._start == "latest":
            starts = self._confirm_ends(starts)
        consumer.commit(offsets=starts, asynchronous=False)

    def _confirm_ends(self, ends: list[Any]) -> list[Any]:
        """The partitions' real ends, read from the reported high watermarks onwards.

        Some Kafka-protocol brokers (Tansu 0.6 among them) report a high watermark inside
        the last record batch; reading on to the end-of-partition marker makes ``latest``
        skip every message that was there, on any broker (on Kafka nothing is read).
        """
        kafka = self._streamer._kafka
        timeout = self._streamer.connect_timeout.total_seconds()
        probe = self._streamer._make(
            "consumer",
            **{
                "group.id": self._group + ".probe",
                "auto.offset.reset": "latest",
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 10,
            },
        )
        try:
            found = {tp.partition: tp.offset for tp in ends}
            probe.assign(ends)
            open_partitions = set(found)
            give_up = time.monotonic() + timeout
            while open_partitions and time.monotonic() < give_up:
                for message in probe.consume(self._streamer.batch, 0.1):
                    error = message.error()
                    number = message.partition()
                    if error is None:
                        found[number] = max(found[number], message.offset() + 1)
                    elif error.code() == kafka.KafkaError._PARTITION_EOF:
                        found[number] = max(found[number], message.offset())
                        open_partitions.discard(number)
            if open_partitions:
                raise kafka.KafkaException(
                    kafka.KafkaError(
                        kafka.KafkaError._TIMED_OUT,
                        f"the end of partitions {sorted(open_partitions)} was not reached",
                    )
                )
            return [
                kafka.TopicPartition(tp.topic, tp.partition, found[tp.partition]) for tp in ends
            ]
        finally:
            probe.close()

    # -- trio side -------------------------------------------------------------------------------

    async def join(self) -> None:
        """Subscribe and wait for the first assignment (bounded by ``join_timeout``)."""
        await self._call(
            f"subscribing to {self._topic!r}",
            lambda: self._consumer.subscribe(
                [self._topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            ),
        )
        timeout = self._streamer.join_timeout
        with realtime.move_on_after(timeout.total_seconds()):
            while not self._joined:
                await self._fill()
            return
        raise StreamError(
            f"Kafka at {self._streamer.bootstrap_servers}: consumer group {self._group!r} "
            f"gave no partitions of {self._topic!r} within {timeout} (join_timeout)"
        )

    async def receive(self) -> ConnectorEvent:
        while True:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._buffer:
                partition, offset, event = self._buffer.popleft()
                self._inflight.setdefault(event.id, deque()).append((partition, offset))
                self._streamer.stats.received += 1
                # Taken: no cancellation may lose it between here and the caller.
                await trio.lowlevel.cancel_shielded_checkpoint()
                return event
            await self._fill()

    async def ack(self, event: ConnectorEvent) -> None:
        async with self._ack_lock:
            deliveries = self._inflight.get(event.id) if isinstance(event, ConnectorEvent) else None
            if not deliveries:
                raise EventError(
                    f"cannot acknowledge {event!r}: it was not received through this receiver, "
                    "or it was acknowledged already (an acknowledgement also covers every "
                    "event received before it from the same partition)"
                )
            partition, offset = deliveries[0]
            commit = partition.commit_point(offset)
            if not partition.revoked:
                await self._commit(partition.number, commit)
            else:
                await trio.lowlevel.checkpoint()
                log.info(
                    "Kafka %s group %s: partition %d was revoked before event %s was "
                    "acknowledged; its new owner delivers it again",
                    self._topic,
                    self._group,
                    partition.number,
                    event.id,
                )
            self._forget(partition, commit)

    async def _commit(self, partition: int, offset: int) -> None:
        kafka = self._streamer._kafka
        tp = kafka.TopicPartition(self._topic, partition, offset)
        if self._streamer.async_commits:
            # Only queued in librdkafka (no network wait, no thread): safe beside a
            # consume() running in the worker thread, librdkafka is thread-safe.
            try:
                self._consumer.commit(offsets=[tp], asynchronous=True)
            except kafka.KafkaException as exc:
                raise self._streamer._error(
                    f"committing offset {offset} of {self._topic}:{partition}", exc
                ) from None
            self._uncommitted[partition] = offset
            self._streamer.stats.commits += 1
            await trio.lowlevel.checkpoint()
            return

        def commit() -> None:
            # Checked in the worker thread, where the rebalance callbacks run too: an ack
            # that raced a rebalance must not move the offset of a partition gone elsewhere.
            if partition not in self._not_owned:
                self._consumer.commit(offsets=[tp], asynchronous=False)

        # A commit waits for the group coordinator, which may be unreachable: a cancelled
        # ack leaves it behind (the event stays unacknowledged: ack again or reopen).
        await self._call(
            f"committing offset {offset} of {self._topic}:{partition}", commit, abandon=True
        )
        self._streamer.stats.commits += 1

    def _forget(self, partition: _Partition, commit: int) -> None:
        """Drop every entry of ``partition`` below ``commit`` and its pending delivery."""
        entries = partition.entries
        while entries and entries[0].offset < commit:
            entry = entries.popleft()
            if entry.event_id is None:
                continue
            deliveries = self._inflight.get(entry.event_id)
            if deliveries:
                with suppress(ValueError):
                    deliveries.remove((partition, entry.offset))
                if not deliveries:
                    del self._inflight[entry.event_id]

    async def _fill(self) -> None:
        consumer = self._consumer
        batch = self._streamer.batch
        wait = self._streamer.poll_interval.total_seconds()
        messages = await self._call(
            f"consuming {self._topic!r}", lambda: consumer.consume(batch, wait)
        )
        self._apply_rebalances()
        if self._commit_errors:
            self._streamer.stats.commit_errors += len(self._commit_errors)
            log.warning(
                "Kafka %s group %s: %d asynchronous commits failed (a later one covers them): %s",
                self._topic,
                self._group,
                len(self._commit_errors),
                self._commit_errors[0],
            )
            self._commit_errors.clear()
        if self._callback_errors:
            error = self._callback_errors.pop(0)
            self._callback_errors.clear()
            if isinstance(error, self._streamer._kafka.KafkaException):
                raise self._streamer._error(
                    f"setting the first offsets of group {self._group!r}", error
                )
            raise error
        for message in messages:
            await self._take(message)
        await self._commit_skipped_heads()

    def _apply_rebalances(self) -> None:
        rebalances, self._rebalances = self._rebalances, []
        for kind, numbers in rebalances:
            self._streamer.stats.rebalances += 1
            if kind == "assign":
                self._joined = True
                for number in numbers:
                    old = self._partitions.get(number)
                    if old is None or old.revoked:
                        self._partitions[number] = _Partition(number)
                continue
            gone = set(numbers)
            for number in gone:
                partition = self._partitions.pop(number, None)
                if partition is not None:
                    partition.revoked = True
            if gone:
                self._buffer = deque(item for item in self._buffer if item[0].number not in gone)
                # Redeliveries from the partitions' new owner (or from this one, if they
                # come back) are not duplicates of what this receiver handed out.
                self._handed_out.forget()
                log.info(
                    "Kafka %s group %s: partitions %s were revoked (rebalance)",
                    self._topic,
                    self._group,
                    sorted(gone),
                )

    async def _take(self, message: Any) -> None:
        error = message.error()
        if error is not None:
            kafka = self._streamer._kafka
            if error.fatal() or error.code() == kafka.KafkaError._ALL_BROKERS_DOWN:
                raise StreamError(
                    f"Kafka at {self._streamer.bootstrap_servers}: consuming "
                    f"{self._topic!r} (group {self._group!r}) failed: {error.str()}"
                )
            log.warning(
                "Kafka %s group %s: %s (the client retries)", self._topic, self._group, error.str()
            )
            return
        number, offset = message.partition(), message.offset()
        partition = self._partitions.get(number)
        if partition is None or message.topic() != self._topic:
            return  # not (or no longer) assigned here: its owner reads it
        try:
            event: ConnectorEvent | None = decode_message(message)
        except EventError as exc:
            event = None
            self.undecodable += 1
            self._streamer.stats.undecodable += 1
            log.error(
                "Kafka %s group %s: skipping partition %d offset %d: %s",
                self._topic,
                self._group,
                number,
                offset,
                exc,
            )
        if event is not None and _ours(message) and self._handed_out.is_repeat(event):
            event = None
            self.duplicates += 1
            self._streamer.stats.duplicates += 1
        if event is None:
            partition.entries.append(_Entry(offset, None, done=True))
            return
        partition.entries.append(_Entry(offset, event.id, done=False))
        self._buffer.append((partition, offset, event))

    async def _commit_skipped_heads(self) -> None:
        """Commit past skipped messages that nothing unacknowledged precedes."""
        for partition in list(self._partitions.values()):
            entries = partition.entries
            if not entries or not entries[0].done:
                continue
            commit = entries[0].offset
            while entries and entries[0].done:
                commit = entries.popleft().offset + 1
            await self._commit(partition.number, commit)

    async def close(self) -> None:
        """Commit what was acknowledged, then leave the group (bounded by
        ``connect_timeout``)."""
        consumer = self._consumer

        def finish() -> None:
            try:
                self._commit_now(consumer)
            finally:
                consumer.close()

        with realtime.move_on_after(self._streamer.connect_timeout.total_seconds() + 1):
            try:
                await trio.to_thread.run_sync(finish, limiter=self._limiter, abandon_on_cancel=True)
            except self._streamer._kafka.KafkaException as exc:
                log.warning(
                    "Kafka consumer of group %r did not close cleanly: %s", self._group, exc
                )
