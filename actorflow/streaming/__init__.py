"""Event streaming: the EventStreamer and EventSource seams and their implementations.

See docs/streaming.md (streamers, the outbox relay, Kafka) and
docs/connectors.md (connectors, ``af.connect``).
"""

from ._kafka import KafkaStats as KafkaStats
from ._kafka import KafkaStreamer as KafkaStreamer
from ._memory import MemorySource as MemorySource
from ._memory import MemoryStreamer as MemoryStreamer
from ._protocol import TRANSITION_HEADERS as TRANSITION_HEADERS
from ._protocol import ConnectorEvent as ConnectorEvent
from ._protocol import EventError as EventError
from ._protocol import EventReceiver as EventReceiver
from ._protocol import EventSender as EventSender
from ._protocol import EventSource as EventSource
from ._protocol import EventStreamer as EventStreamer
from ._protocol import Start as Start
from ._protocol import StreamError as StreamError
from ._redis import RedisStreamer as RedisStreamer
from ._source import StreamSource as StreamSource
from ._stats import ConnectorStats as ConnectorStats
from ._stats import RelayStats as RelayStats
from ._stats import connector_stats as connector_stats
from ._stats import relay_stats as relay_stats
from ._store_log import StoreLogStreamer as StoreLogStreamer
from ._store_log import transition_event as transition_event

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
