"""``Builder``: declare a workflow's steps, callbacks, timeouts, connectors and hooks."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

import attrs

from actorflow._model.codec import ObjectCodec
from actorflow._model.definition import (
    CallbackSpec,
    ConnectorSpec,
    Definition,
    HookFn,
    StepSpec,
    TimeoutSpec,
    fn_name,
    is_async_callable,
    shown,
)
from actorflow._model.errors import BuildError
from actorflow._model.evolution import Evolution, StatusMapping, UpgradeFn
from actorflow._model.options import MAX_CONNECTOR_SHARDS, Options, check_options_for
from actorflow._model.settings import BuildSettings
from actorflow._model.statuses import parse_status
from actorflow._model.text import is_valid_text
from actorflow._model.timers import TimerFn

if TYPE_CHECKING:
    from actorflow.stores import Store
    from actorflow.workflow import Workflow

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)
F = TypeVar("F", bound=Callable[..., Any])

_UNSET: Any = object()
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


@attrs.define
class _Pending:
    kind: str  # "step" | "callback" | "timeout"
    from_status: Any
    fn: Any
    to: Any
    options: dict[str, Any]
    timer: Any = None


@attrs.define
class _Graph:
    """The graph as ``definition`` reads the declarations into it."""

    steps: dict[int, StepSpec] = attrs.Factory(dict)
    callbacks: dict[int, list[CallbackSpec]] = attrs.Factory(dict)
    timeouts: dict[int, list[TimeoutSpec]] = attrs.Factory(dict)
    declared: list[enum.IntEnum] = attrs.Factory(list)
    """Every status named, in the order first declared."""
    sources: list[enum.IntEnum] = attrs.Factory(list)
    """Statuses with outgoing transitions, in declaration order."""
    targets: set[enum.IntEnum] = attrs.Factory(set)

    def note(self, src: enum.IntEnum, to: frozenset[Any]) -> None:
        """Record the statuses of one transition ``src -> to``."""
        for status in [src, *sorted(to)]:
            if status not in self.declared:
                self.declared.append(status)
        if src not in self.sources:
            self.sources.append(src)
        self.targets |= to


@final
class Builder(Generic[T, S]):
    """Declares a workflow: a state machine over ``status_type`` acting on ``object_type``.

    Example::

        builder = af.Builder("orders", Order, Status)

        @builder.step(Status.CREATED, to=Status.PAID)
        async def pay(run: af.Run[Order, Status]) -> Status:
            return Status.PAID

        workflow = builder.build(af.SQLiteStore("actorflow.db"))
    """

    def __init__(self, name: str, object_type: type[T], status_type: type[S]) -> None:
        if (
            not isinstance(name, str)
            or not name
            or len(name) > 200
            or not is_valid_text(name)
            or "\x00" in name
        ):
            raise BuildError(
                f"workflow name must be a non-empty string of valid text (no NUL) of at most 200 "
                f"characters, not {name!r}"
            )
        if not (isinstance(status_type, type) and issubclass(status_type, enum.IntEnum)):
            raise BuildError(
                f"workflow {name!r}: status_type must be an IntEnum, not {status_type!r}"
            )
        for member_name in status_type.__members__:
            if not is_valid_text(member_name) or "\x00" in member_name:
                # Names are stored with each version (its status description) and shown
                # by graph(), the gateway and the console: PostgreSQL's jsonb, SQLite and
                # every JSON reader refuse these.
                raise BuildError(
                    f"workflow {name!r}: status name {member_name!r} of "
                    f"{status_type.__name__} must be valid text without NUL characters"
                )
        for member in status_type:
            if not INT64_MIN <= member.value <= INT64_MAX:
                raise BuildError(
                    f"workflow {name!r}: status {status_type.__name__}.{member.name}="
                    f"{member.value} does not fit a signed 64-bit integer (the stores keep "
                    f"statuses as such); use values from 1 to {INT64_MAX}"
                )
        self.name = name
        self._codec = ObjectCodec(object_type, name)
        self.object_type = object_type
        self.status_type = status_type
        self._pending: list[_Pending] = []
        self._connectors: list[ConnectorSpec] = []
        self._connector_options: list[dict[str, Any]] = []
        self._hooks: dict[str, list[HookFn]] = {}
        self._mappings: list[tuple[Any, Any, str]] = []
        self._upgrade: UpgradeFn | None = None

    # -- declaring -------------------------------------------------------------------------

    def step(self, from_status: S, *, to: S | Sequence[S], **options: Any) -> Callable[[F], F]:
        """Decorator form of :meth:`add_step`."""

        def register(fn: F) -> F:
            self.add_step(from_status, fn, to, **options)
            return fn

        return register

    def add_step(
        self, from_status: S, fn: Callable[..., Any], to: S | Sequence[S], **options: Any
    ) -> None:
        """``async def fn(run) -> Status`` runs whenever a run is at ``from_status``."""
        self._check_fn(fn, "step")
        check_options_for("step", options, f"workflow {self.name!r}: step {fn_name(fn)}")
        self._pending.append(_Pending("step", from_status, fn, to, options))

    def add_callback(
        self, from_status: S, fn: Callable[..., Any], to: S | Sequence[S], **options: Any
    ) -> None:
        """``async def fn(run, payload: bytes) -> Status`` handles ``workflow.callback``.

        Callbacks take no options: they run in the ``callback`` call, which gets their
        error (the build's ``default_options`` decide when repeated errors pause the run).
        """
        self._check_fn(fn, "callback")
        check_options_for("callback", options, f"workflow {self.name!r}: callback {fn_name(fn)}")
        self._pending.append(_Pending("callback", from_status, fn, to, {}))

    def add_timeout(
        self,
        from_status: S,
        timer: TimerFn,
        fn: Callable[..., Any],
        to: S | Sequence[S],
        **options: Any,
    ) -> None:
        """``async def fn(run, now) -> Status`` runs when ``timer(run, now)`` expires."""
        if not callable(timer):
            raise BuildError(
                f"workflow {self.name!r}: timeout timer must be callable (use af.after or af.at), "
                f"not {timer!r}"
            )
        if is_async_callable(timer):
            raise BuildError(
                f"workflow {self.name!r}: timeout timer {fn_name(timer)} is async; a timer is a "
                "plain function timer(run, now) -> datetime | None (use af.after or af.at)"
            )
        self._check_fn(fn, "timeout")
        check_options_for("timeout", options, f"workflow {self.name!r}: timeout {fn_name(fn)}")
        self._pending.append(_Pending("timeout", from_status, fn, to, options, timer))

    def add_connector(self, name: str, source: Any, fn: Callable[..., Any], **options: Any) -> None:
        """``async def fn(workflow, event)`` for every event of ``source`` (at least once)."""
        if (
            not isinstance(name, str)
            or not name
            or len(name) > 200
            or not is_valid_text(name)
            or "\x00" in name
        ):
            # At most 200 characters, as workflow names: its durable cursor is keyed by
            # both, and PostgreSQL indexes keys of at most 2704 bytes.
            raise BuildError(
                f"workflow {self.name!r}: connector name must be a non-empty string of valid "
                f"text (no NUL) of at most 200 characters, not {name!r}"
            )
        self._check_fn(fn, "connector")
        check_options_for("connector", options, f"workflow {self.name!r}: connector {name!r}")
        self._connectors.append(ConnectorSpec(name, source, fn, Options()))
        self._connector_options.append(options)

    def on_complete(self, fn: HookFn) -> HookFn:
        """``async def fn(record)`` once per run that completes (at least once)."""
        return self._hook("complete", fn)

    def on_pause(self, fn: HookFn) -> HookFn:
        """``async def fn(record)`` once per pause of a run (at least once)."""
        return self._hook("pause", fn)

    def on_cancel(self, fn: HookFn) -> HookFn:
        """``async def fn(record)`` once per run that is cancelled (at least once)."""
        return self._hook("cancel", fn)

    # -- evolving a workflow whose runs are in flight (docs/upgrading.md) --------------------

    def rename_status(self, old_value: int, new_status: S) -> None:
        """Runs stored at ``old_value`` (a status value the enum no longer has) are at
        ``new_status`` now: moved there, as a new version with a reason, when next loaded.

        ``new_status`` must be new too: a status that already has runs of its own is
        refused when the workflow starts (use :meth:`retire` to merge into it).
        """
        self._mappings.append((old_value, new_status, "rename"))

    def retire(self, old_value: int, *, to: S) -> None:
        """Runs stored at the retired status value ``old_value`` move to ``to`` (an existing
        status) when next loaded; to a terminal status, they complete."""
        self._mappings.append((old_value, to, "retire"))

    def upgrade_object(self, fn: UpgradeFn) -> UpgradeFn:
        """``fn(dict) -> dict`` converts a stored object that no longer fits the object
        type (as JSON data) into one that does. Applied when a run is next loaded and
        stored as a new version; a run whose upgrade fails is parked with the reason."""
        if not callable(fn):
            raise BuildError(f"workflow {self.name!r}: upgrade_object needs a function, not {fn!r}")
        if is_async_callable(fn):
            raise BuildError(
                f"workflow {self.name!r}: upgrade_object function {fn_name(fn)} is async; it is "
                "a plain function fn(dict) -> dict (it runs while a run is loaded)"
            )
        if self._upgrade is not None:
            raise BuildError(
                f"workflow {self.name!r}: upgrade_object is already set "
                f"({fn_name(self._upgrade)}); make one function do every upgrade"
            )
        self._upgrade = fn
        return fn

    def _evolution(self) -> Evolution:
        members = {int(m) for m in self.status_type}
        targets: dict[int, int] = {}
        mappings: dict[int, StatusMapping] = {}
        for old, new, kind in self._mappings:
            where = f"{'rename_status' if kind == 'rename' else 'retire'}({old!r}, ...)"
            if isinstance(old, enum.Enum | bool) or not isinstance(old, int):
                raise BuildError(
                    f"workflow {self.name!r}: {where}: the old status must be given as its "
                    f"stored int value (the enum no longer has it), not {old!r}"
                )
            if not 0 < old < 2**63:
                raise BuildError(
                    f"workflow {self.name!r}: {where}: {old} is not a status value (1 to 2**63-1)"
                )
            target = self._status(new, f"{where} new status")
            if old in mappings:
                raise BuildError(
                    f"workflow {self.name!r}: status {old} is mapped twice "
                    f"(to {mappings[old].new.name} and to {target.name}); map it once"
                )
            mappings[old] = StatusMapping(old, target, kind)
            targets[int(target)] = old
        for old, mapping in mappings.items():
            if old in members:
                if old in targets:
                    raise BuildError(
                        f"workflow {self.name!r}: mapping cycle: status {old} is mapped to "
                        f"{mapping.new.name}={int(mapping.new)} and status {targets[old]} is "
                        f"mapped to {old}; map only values the enum no longer has"
                    )
                raise BuildError(
                    f"workflow {self.name!r}: status {old} "
                    f"({self.status_type(old).name}) is still a member of "
                    f"{self.status_type.__name__}; rename_status/retire map only values the "
                    "enum no longer has"
                )
        return Evolution(mappings, self._upgrade)

    def _hook(self, kind: str, fn: HookFn) -> HookFn:
        self._check_fn(fn, f"on_{kind} hook")
        self._hooks.setdefault(kind, []).append(fn)
        return fn

    def _check_fn(self, fn: object, what: str) -> None:
        if not callable(fn):
            raise BuildError(
                f"workflow {self.name!r}: {what} function must be callable, not {fn!r}"
            )
        if inspect.isasyncgenfunction(fn):
            raise BuildError(
                f"workflow {self.name!r}: {what} function {fn_name(fn)} is an async "
                "generator (it has `yield`); actorflow awaits it for one result: `return` it"
            )
        if not is_async_callable(fn):
            raise BuildError(
                f"workflow {self.name!r}: {what} function {fn_name(fn)} is not async; "
                f"declare it with `async def` (actorflow awaits it)"
            )

    # -- building --------------------------------------------------------------------------

    def _status(self, value: Any, where: str) -> S:
        try:
            status = parse_status(self.status_type, value)
        except ValueError as exc:
            raise BuildError(f"workflow {self.name!r}: {where}: {exc}") from None
        if status <= 0:
            raise BuildError(
                f"workflow {self.name!r}: {where}: status {status.name}={int(status)} is reserved "
                "(0 and negative values); number your statuses from 1"
            )
        return status

    def _destinations(self, to: Any, where: str) -> frozenset[S]:
        values = (
            [to]
            if isinstance(to, int)
            else list(to)
            if isinstance(to, Sequence | set | frozenset)
            else None
        )
        if not values:
            raise BuildError(
                f"workflow {self.name!r}: {where}: to= must be a status or a non-empty sequence "
                f"of statuses, not {to!r}"
            )
        return frozenset(self._status(v, f"{where} destination") for v in values)

    def definition(self, default_options: Options | None = None) -> Definition:
        """Validate the graph and return it as data. Raises BuildError."""
        defaults = default_options or Options()
        graph = _Graph()
        for item in self._pending:
            self._add_to_graph(graph, item, defaults)
        starts = self._starts(graph)
        return Definition(
            name=self.name,
            object_type=self.object_type,
            status_type=self.status_type,
            steps=graph.steps,
            callbacks=graph.callbacks,
            timeouts=graph.timeouts,
            connectors=self._connector_specs(defaults),
            hooks={kind: _chain(fns) for kind, fns in self._hooks.items()},
            start=starts[0],
            starts=frozenset(starts),
            declared=graph.declared,
            evolution=self._evolution(),
        )

    def _add_to_graph(self, graph: _Graph, item: _Pending, defaults: Options) -> None:
        """One declared step, callback or timeout, checked, into ``graph``."""
        where = f"{item.kind} {fn_name(item.fn)}"
        src = self._status(item.from_status, f"{where} from_status")
        to = self._destinations(item.to, where)
        graph.note(src, to)
        if item.kind == "step":
            if src in graph.steps:
                raise BuildError(
                    f"workflow {self.name!r}: status {src.name} already has a step "
                    f"({fn_name(graph.steps[src].fn)}); at most one step per status — add "
                    f"{fn_name(item.fn)}'s work to it or give it its own status"
                )
            graph.steps[src] = StepSpec(src, item.fn, to, defaults.merged(item.options, where))
        elif item.kind == "callback":
            graph.callbacks.setdefault(src, []).append(CallbackSpec(src, item.fn, to))
        else:
            existing = graph.timeouts.setdefault(src, [])
            options = defaults.merged(item.options, where)
            existing.append(TimeoutSpec(src, len(existing), item.timer, item.fn, to, options))

    def _starts(self, graph: _Graph) -> list[enum.IntEnum]:
        """The starting statuses (never a destination), in declaration order."""
        if not graph.sources:
            raise BuildError(
                f"workflow {self.name!r} has no steps, callbacks or timeouts; add at least one"
            )
        starts = [s for s in graph.sources if s not in graph.targets]
        if not starts:
            raise BuildError(
                f"workflow {self.name!r} has no starting status: every status with outgoing "
                "transitions is also a destination; a run needs a status to start at"
            )
        return starts

    def _connector_specs(self, defaults: Options) -> list[ConnectorSpec]:
        """The connectors with their options, checked: unique names, real event sources."""
        from actorflow.streaming._protocol import EventSource

        names: set[str] = set()
        connectors: list[ConnectorSpec] = []
        for spec, options in zip(self._connectors, self._connector_options, strict=True):
            if spec.name in names:
                raise BuildError(
                    f"workflow {self.name!r}: connector name {spec.name!r} is used twice; "
                    "connector names must be unique (they name the durable cursor)"
                )
            names.add(spec.name)
            merged = defaults.merged(options, f"connector {spec.name!r}")
            if "max_concurrency" not in options:
                # Only the connector's own parallel count shards it: one from
                # default_options (meant for steps) would move its durable cursors.
                merged = attrs.evolve(merged, max_concurrency=None)
            if (merged.max_concurrency or 1) > MAX_CONNECTOR_SHARDS:
                raise BuildError(
                    f"workflow {self.name!r}: connector {spec.name!r}: max_concurrency "
                    f"{merged.max_concurrency} is more than {MAX_CONNECTOR_SHARDS} shards (each "
                    "shard's consumer reads the whole source)"
                )
            connectors.append(attrs.evolve(spec, options=merged))
        for spec in connectors:
            if not isinstance(spec.source, EventSource):
                raise BuildError(
                    f"workflow {self.name!r} connector {spec.name!r}: the source "
                    f"{shown(spec.source)} is not an af.EventSource (use af.connect(...), "
                    "af.MemorySource(...), actorflow.streaming.StreamSource(...) or an object "
                    "with an open(consumer, after) method)"
                )
            if is_async_callable(getattr(spec.source, "open", None)):
                raise BuildError(
                    f"workflow {self.name!r} connector {spec.name!r}: the source's open() is "
                    f"an async def ({fn_name(spec.source.open)}); it must return an async "
                    "context manager at once: decorate an async generator that yields the "
                    "receiver with @contextlib.asynccontextmanager"
                )
        return connectors

    def build(self, store: Store, **options: Any) -> Workflow[T, S]:
        """Validate the graph and bind it to a store. Raises BuildError.

        Args:
            store: where runs live (MemoryStore, SQLiteStore, PostgresStore).
            **options: build options (each checked by ``BuildSettings``):

                - ``clock``: wall clock (``actorflow.testing.trio_clock`` in tests).
                - ``default_options``: options for every step, timeout and connector (an
                  ``af.Options`` or a dict of option names and values).
                - ``resume_paused_after``: paused runs resume after this long (None: never;
                  default 1 hour).
                - ``scrub``: ``delete_data`` replaces the object with ``scrub(object)``
                  (default: a new object from the type's defaults).
                - ``grace_period``: how long ``stop()`` lets steps in flight finish (10 s).
                - ``poll_interval``: how often to look for work written by other processes.
                - ``max_active_runs``: at most this many runs are worked on at once in this
                  process (2,000); more wait their turn as ids (first in, first out) and
                  reuse the tasks of runs that finish. Raise it for steps that mostly wait
                  on slow I/O.
                - ``streamer``: an EventStreamer to publish every transition to (a
                  StoreLogStreamer must be over ``store`` itself).
                - ``shards``: with a store that supports scale-out (PostgreSQL), runs are
                  split into this many shards (16), leased by the worker processes.
                - ``lease``: how long a shard lease lasts without renewal (10 s); a dead
                  worker's shards are taken over after at most this long.
                - ``ownership``: which runs this process works on (an ``Ownership``;
                  default: the store's shard leases, or every run).
                - ``history_retention``: an ``af.Retention``: delete old versions of
                  finished runs (keep the last K, or those younger than T); None (the
                  default) keeps every version.
                - ``metrics``: a ``prometheus_client.CollectorRegistry`` to report the
                  workflow's metrics to (docs/metrics.md); None (the default): the global
                  registry when ``actorflow[metrics]`` is installed, else none; False: none.
                - ``tracing``: True: an OpenTelemetry span per step, callback, timeout, hook
                  and connector call, from the global tracer provider (or pass a
                  TracerProvider); needs ``actorflow[otel]``. Default False.
                - ``on_stranded``: what ``run`` does with stored runs this definition cannot
                  move (docs/upgrading.md): ``"pause"`` (default) parks them PAUSED with a
                  reason naming the problem and starts; ``"refuse"`` raises BuildError.
                - ``check_at_start``: compare the stored unfinished runs with the definition
                  when ``run`` starts (True); False skips it (``actorflow runs check``).
        """
        from actorflow.workflow import Workflow

        settings = BuildSettings.from_options(options)
        self._check_build(store, settings)
        return Workflow(
            self.definition(settings.default_options), store, codec=self._codec, settings=settings
        )

    def _check_build(self, store: object, settings: BuildSettings) -> None:
        """BuildError now for what would fail later: the observability options (a wrong
        value, a missing extra), a store that is not one, a relay streamer over another
        store."""
        from actorflow._observe import metrics_registry, tracer_provider
        from actorflow.stores import Store as StoreProtocol

        metrics_registry(settings.metrics)
        tracer_provider(settings.tracing)
        if not isinstance(store, StoreProtocol):
            raise BuildError(f"workflow {self.name!r}: {store!r} is not a store")
        if settings.streamer is not None:
            from actorflow.streaming._store_log import check_relay_streamer

            problem = check_relay_streamer(settings.streamer, store)
            if problem is not None:
                raise BuildError(f"workflow {self.name!r}: {problem}")


def _chain(fns: list[HookFn]) -> HookFn:
    if len(fns) == 1:
        return fns[0]

    async def all_of(record: Any) -> None:
        for fn in fns:
            await fn(record)

    return all_of
