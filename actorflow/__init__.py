"""actorflow: durable, typed, event-driven workflows for trio."""

from ._errors import ActorflowError as ActorflowError
from ._errors import BuildError as BuildError
from ._errors import CallbackError as CallbackError
from ._errors import GatewayError as GatewayError
from ._errors import InvalidArgument as InvalidArgument
from ._errors import InvalidTransition as InvalidTransition
from ._errors import Lagged as Lagged
from ._errors import RunNotFound as RunNotFound
from ._errors import SchemaVersionError as SchemaVersionError
from ._errors import SerializationError as SerializationError
from ._errors import StepError as StepError
from ._errors import StoreError as StoreError
from ._errors import VersionConflict as VersionConflict
from ._errors import WorkflowInProgress as WorkflowInProgress
from ._record import Meta as Meta
from ._record import Record as Record
from ._runstate import RunState as RunState
from .stores import MemoryStore as MemoryStore
from .stores import SQLiteStore as SQLiteStore
from .stores import Store as Store
