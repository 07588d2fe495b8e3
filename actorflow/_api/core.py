"""The state every part of ``Workflow`` shares: the definition, store, engine and
supervisor, what the workflow is, and the checks of the arguments callers pass."""

from __future__ import annotations

import enum
from typing import Generic, TypeVar, cast

from actorflow._model.clock import Clock
from actorflow._model.codec import ObjectCodec
from actorflow._model.definition import Definition
from actorflow._model.errors import ActorflowError, InvalidArgument, SerializationError
from actorflow._model.evolution import CheckReport
from actorflow._model.options import Options
from actorflow._model.settings import BuildSettings
from actorflow._model.statuses import parse_status
from actorflow._model.text import check_text
from actorflow._runtime.engine import Engine
from actorflow._runtime.observe import process_name
from actorflow._runtime.supervisor import Supervisor
from actorflow.stores import Store

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)

MAX_FOREIGN_ID = 512
# ... and at most this many bytes in UTF-8: PostgreSQL indexes (workflow name, foreign id)
# and refuses index rows over 2704 bytes; with the longest workflow name (200 characters,
# 800 bytes) this keeps every store able to take every foreign id the API accepts (512
# characters of 3-byte text such as CJK fit; 4-byte characters such as emoji: 384).
MAX_FOREIGN_ID_BYTES = 1536


class WorkflowCore(Generic[T, S]):
    """What the parts of ``af.Workflow`` (``actorflow.workflow``) share."""

    def __init__(
        self,
        definition: Definition,
        store: Store,
        *,
        codec: ObjectCodec[T],
        settings: BuildSettings,
    ) -> None:
        self._definition = definition
        self._store = store
        self._codec = codec
        self._settings = settings
        self._clock = settings.clock
        self._engine: Engine[T, S] = Engine(
            definition,
            store,
            codec,
            settings.clock,
            settings.resume_paused_after,
            settings.scrub,
            settings.default_options,
        )
        self._grace_period = settings.grace_period
        self._poll_interval = settings.poll_interval
        self._max_active_runs = settings.max_active_runs
        self._streamer = settings.streamer
        self._supervisor: Supervisor[T, S] | None = None
        self._last_check: CheckReport | None = None
        self._declare_services()
        from actorflow._observe import make_observer

        self._engine.observer = make_observer(self, settings.metrics, settings.tracing)

    def _declare_services(self) -> None:
        """Name the service processes ``states()`` reports before they first run."""
        engine = self._engine
        if self._definition.hooks:
            from actorflow._services.hooks import STATE_OF_HOOK, hook_process

            for kind in self._definition.hooks:
                if kind in STATE_OF_HOOK:
                    engine.service(hook_process(kind))
        for spec in self._definition.connectors:
            engine.service(
                process_name(spec.name, "connector-consumer"),
                spec.options.lag_alert.total_seconds(),
            )
        if self._streamer is not None:
            from actorflow._services.relay import PROCESS

            engine.service(PROCESS)

    # -- description -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The workflow's name."""
        return self._definition.name

    @property
    def store(self) -> Store:
        """The store this workflow keeps its runs in."""
        return self._store

    @property
    def clock(self) -> Clock:
        """The wall clock the workflow uses for timers and timestamps."""
        return self._clock

    @property
    def definition(self) -> Definition:
        """The validated graph."""
        return self._definition

    @property
    def object_type(self) -> type[T]:
        return cast(type[T], self._codec.object_type)

    @property
    def status_type(self) -> type[S]:
        return self._definition.status_type  # type: ignore[return-value]

    @property
    def default_options(self) -> Options:
        """The options every step, timeout and connector starts from."""
        return self._engine.default_options

    @property
    def fingerprint(self) -> str:
        """This definition's fingerprint: a short hash of its statuses, edges, object schema
        and status mappings, stored on every version it writes (``record.meta.definition``)."""
        return self._definition.fingerprint

    def graph(self) -> str:
        """The workflow as a Mermaid ``stateDiagram-v2`` text."""
        return self._definition.mermaid()

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} on {self._store!r}>"

    # -- argument checks -------------------------------------------------------------------------

    def _status_arg(self, status: object, what: str = "status") -> S:
        try:
            return parse_status(self._definition.status_type, status)  # type: ignore[return-value]
        except ValueError as exc:
            raise InvalidArgument(f"workflow {self.name!r}: {what} {exc}") from None

    def _foreign_id_arg(self, foreign_id: object) -> str:
        if (
            type(foreign_id) is str
            and 0 < len(foreign_id) <= MAX_FOREIGN_ID
            and foreign_id.isascii()
            and "\x00" not in foreign_id
        ):
            return foreign_id  # the common case, checked at once (trigger_many backfills)
        if not isinstance(foreign_id, str) or not foreign_id or len(foreign_id) > MAX_FOREIGN_ID:
            raise InvalidArgument(
                f"workflow {self.name!r}: foreign_id must be a non-empty string of at most "
                f"{MAX_FOREIGN_ID} characters, not {foreign_id!r}"
            )
        check_text(foreign_id, f"workflow {self.name!r}: foreign_id {foreign_id!r}")
        if not foreign_id.isascii() and len(foreign_id.encode()) > MAX_FOREIGN_ID_BYTES:
            raise InvalidArgument(
                f"workflow {self.name!r}: foreign_id must be at most {MAX_FOREIGN_ID_BYTES} "
                f"bytes in UTF-8 (this one has {len(foreign_id.encode())}): {foreign_id!r}"
            )
        return foreign_id

    def _run_id_arg(self, run_id: object, what: str = "run_id") -> str:
        if not isinstance(run_id, str) or not run_id:
            raise InvalidArgument(f"workflow {self.name!r}: {what} must be a non-empty string")
        return check_text(run_id, f"workflow {self.name!r}: {what} {run_id!r}")

    def _encode_initial(self, obj: T) -> str:
        try:
            return self._codec.encode(obj, " (initial object)")
        except SerializationError as exc:
            raise InvalidArgument(str(exc)) from None

    def check_trigger_args(self, foreign_id: object, start: object, initial: object) -> None:
        """Raise InvalidArgument now for arguments ``trigger`` would refuse later."""
        self._foreign_id_arg(foreign_id)
        if start is not None:
            status = self._status_arg(start, "start")
            if self._definition.is_terminal(status):
                raise InvalidArgument(
                    f"workflow {self.name!r}: cannot start at {status.name}: it has no step, "
                    "callback or timeout"
                )
        if initial is not None:
            self._encode_initial(self._codec.check(initial, "initial"))

    # -- where the workflow runs -----------------------------------------------------------------

    def _local_supervisor(self) -> Supervisor[T, S] | None:
        """The supervisor serving this workflow in this process: ours, or one running for
        another Workflow object of the same name on the same store instance."""
        supervisor = self._supervisor
        if supervisor is None:
            other: Supervisor[T, S] | None = self._store.feed.supervisors.get(self.name)
            supervisor = other
        elif supervisor.standby:
            # Ours stands by (another Workflow object of this workflow serves it on this
            # storage in this process): that one works on the runs.
            acting: Supervisor[T, S] | None = supervisor.acting()
            supervisor = acting
        if supervisor is None or supervisor.stopping:
            return None
        return supervisor

    def _runs_nowhere(self) -> bool:
        """True when nothing can move this workflow's runs: it is not running in this
        process and its store is one no other process can reach (MemoryStore)."""
        if self._supervisor is not None and self._supervisor.standby:
            return False  # ours takes over when the one serving stops
        return not self._store.shared and self._local_supervisor() is None

    def _not_running(self, what: str) -> ActorflowError:
        return ActorflowError(
            f"workflow {self.name!r} is not running in this process, and no other process "
            f"can reach its {self._store!r}: {what}. Run it around the call: "
            "`async with af.open_workflow(workflow):` (or `nursery.start(workflow.run)`)"
        )

    def _trace_origin(self) -> str:
        """The traceparent of the trace active in the caller (tracing on), else ""."""
        observer = self._engine.observer
        return "" if observer is None else observer.trace_origin()
