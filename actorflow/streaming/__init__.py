"""Event streaming: the EventStreamer and EventSource seams and their implementations.

See docs/streaming.md (streamers, the outbox relay, Kafka) and
docs/connectors.md (connectors, ``af.connect``).
"""

from typing import TYPE_CHECKING

from actorflow._model.lazy import lazy_exports
from actorflow.streaming._memory import MemorySource as MemorySource
from actorflow.streaming._memory import MemoryStreamer as MemoryStreamer
from actorflow.streaming._protocol import TRANSITION_HEADERS as TRANSITION_HEADERS
from actorflow.streaming._protocol import ConnectorEvent as ConnectorEvent
from actorflow.streaming._protocol import EventError as EventError
from actorflow.streaming._protocol import EventReceiver as EventReceiver
from actorflow.streaming._protocol import EventSender as EventSender
from actorflow.streaming._protocol import EventSource as EventSource
from actorflow.streaming._protocol import EventStreamer as EventStreamer
from actorflow.streaming._protocol import Start as Start
from actorflow.streaming._protocol import StreamError as StreamError
from actorflow.streaming._source import StreamSource as StreamSource
from actorflow.streaming._stats import ConnectorStats as ConnectorStats
from actorflow.streaming._stats import RelayStats as RelayStats
from actorflow.streaming._stats import connector_stats as connector_stats
from actorflow.streaming._stats import relay_stats as relay_stats
from actorflow.streaming._store_log import StoreLogStreamer as StoreLogStreamer
from actorflow.streaming._store_log import transition_event as transition_event

if TYPE_CHECKING:
    from actorflow.streaming._kafka import KafkaStats as KafkaStats
    from actorflow.streaming._kafka import KafkaStreamer as KafkaStreamer
    from actorflow.streaming._redis import RedisStreamer as RedisStreamer

__all__ = [
    "TRANSITION_HEADERS",
    "ConnectorEvent",
    "ConnectorStats",
    "EventError",
    "EventReceiver",
    "EventSender",
    "EventSource",
    "EventStreamer",
    "KafkaStats",
    "KafkaStreamer",
    "MemorySource",
    "MemoryStreamer",
    "RedisStreamer",
    "RelayStats",
    "Start",
    "StoreLogStreamer",
    "StreamError",
    "StreamSource",
    "connector_stats",
    "relay_stats",
    "transition_event",
]

# Imported on first use: a worker that streams to neither does not load them.
__getattr__ = lazy_exports(
    globals(),
    {
        "KafkaStats": "actorflow.streaming._kafka:KafkaStats",
        "KafkaStreamer": "actorflow.streaming._kafka:KafkaStreamer",
        "RedisStreamer": "actorflow.streaming._redis:RedisStreamer",
    },
)
