"""actorflow: durable, typed, event-driven workflows for trio."""

from typing import TYPE_CHECKING

from actorflow._model.clock import Clock as Clock
from actorflow._model.clock import SystemClock as SystemClock
from actorflow._model.errors import ActorflowError as ActorflowError
from actorflow._model.errors import BuildError as BuildError
from actorflow._model.errors import CallbackError as CallbackError
from actorflow._model.errors import GatewayError as GatewayError
from actorflow._model.errors import InvalidArgument as InvalidArgument
from actorflow._model.errors import InvalidTransition as InvalidTransition
from actorflow._model.errors import Lagged as Lagged
from actorflow._model.errors import RunNotFound as RunNotFound
from actorflow._model.errors import SchemaVersionError as SchemaVersionError
from actorflow._model.errors import SerializationError as SerializationError
from actorflow._model.errors import StatusNotReached as StatusNotReached
from actorflow._model.errors import StepError as StepError
from actorflow._model.errors import StoreError as StoreError
from actorflow._model.errors import VersionConflict as VersionConflict
from actorflow._model.errors import WorkflowInProgress as WorkflowInProgress
from actorflow._model.lazy import lazy_exports
from actorflow._model.options import Options as Options
from actorflow._model.process import ProcessState as ProcessState
from actorflow._model.record import Meta as Meta
from actorflow._model.record import Record as Record
from actorflow._model.retention import Retention as Retention
from actorflow._model.run import Run as Run
from actorflow._model.run_state import RunState as RunState
from actorflow._model.timers import after as after
from actorflow._model.timers import at as at
from actorflow.builder import Builder as Builder
from actorflow.connect import connect as connect
from actorflow.console import serve_console as serve_console
from actorflow.stores import MemoryStore as MemoryStore
from actorflow.stores import SQLiteStore as SQLiteStore
from actorflow.stores import Store as Store
from actorflow.streaming import ConnectorEvent as ConnectorEvent
from actorflow.streaming import EventSource as EventSource
from actorflow.streaming import EventStreamer as EventStreamer
from actorflow.streaming import MemorySource as MemorySource
from actorflow.streaming import MemoryStreamer as MemoryStreamer
from actorflow.streaming import StoreLogStreamer as StoreLogStreamer
from actorflow.workflow import Workflow as Workflow
from actorflow.workflow import open_workflow as open_workflow

if TYPE_CHECKING:
    from actorflow import testing as testing
    from actorflow.gateway import open_gateway_client as open_gateway_client
    from actorflow.gateway import serve_gateway as serve_gateway
    from actorflow.stores import PostgresStore as PostgresStore
    from actorflow.streaming import KafkaStreamer as KafkaStreamer
    from actorflow.streaming import RedisStreamer as RedisStreamer

__all__ = [
    "testing",
    "Clock",
    "SystemClock",
    "ActorflowError",
    "BuildError",
    "CallbackError",
    "GatewayError",
    "InvalidArgument",
    "InvalidTransition",
    "Lagged",
    "RunNotFound",
    "SchemaVersionError",
    "SerializationError",
    "StatusNotReached",
    "StepError",
    "StoreError",
    "VersionConflict",
    "WorkflowInProgress",
    "Options",
    "ProcessState",
    "Meta",
    "Record",
    "Retention",
    "Run",
    "RunState",
    "after",
    "at",
    "Builder",
    "connect",
    "open_gateway_client",
    "serve_gateway",
    "serve_console",
    "MemoryStore",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "ConnectorEvent",
    "EventSource",
    "EventStreamer",
    "KafkaStreamer",
    "MemorySource",
    "MemoryStreamer",
    "RedisStreamer",
    "StoreLogStreamer",
    "Workflow",
    "open_workflow",
]


def _public_module_names() -> None:
    """Tracebacks and docs say ``actorflow.RunNotFound``, not where it is defined."""
    import inspect

    for name in __all__:
        obj = globals().get(name)
        defined_inside = getattr(obj, "__module__", "").startswith("actorflow.")
        if defined_inside and (inspect.isclass(obj) or inspect.isfunction(obj)):
            obj.__module__ = __name__


_public_module_names()
del _public_module_names

# Imported on first use (docs/scale.md, "Restarting"): what a worker on SQLite does not
# need stays out of every restart.
__getattr__ = lazy_exports(
    globals(),
    {
        "testing": "actorflow.testing",
        "open_gateway_client": "actorflow.gateway:open_gateway_client",
        "serve_gateway": "actorflow.gateway:serve_gateway",
        "PostgresStore": "actorflow.stores.postgres.store:PostgresStore",
        "KafkaStreamer": "actorflow.streaming._kafka:KafkaStreamer",
        "RedisStreamer": "actorflow.streaming._redis:RedisStreamer",
    },
)
