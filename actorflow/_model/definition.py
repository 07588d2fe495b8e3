"""A validated workflow definition: the graph as data, free of I/O."""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs

from actorflow._model.errors import shown as shown
from actorflow._model.evolution import Evolution, fingerprint
from actorflow._model.options import Options
from actorflow._model.timers import TimerFn

StepFn = Callable[[Any], Awaitable[Any]]
CallbackFn = Callable[[Any, bytes], Awaitable[Any]]
TimeoutFn = Callable[[Any, Any], Awaitable[Any]]
HookFn = Callable[[Any], Awaitable[None]]
ConnectorFn = Callable[[Any, Any], Awaitable[None]]


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` gives an awaitable: an ``async def`` function (also behind
    ``functools.partial`` or ``functools.wraps`` decorators) or an object whose
    ``__call__`` is one."""
    seen = 0
    while seen < 100:
        seen += 1
        if inspect.iscoroutinefunction(fn):
            return True
        if isinstance(fn, functools.partial):
            fn = fn.func
            continue
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is not None:
            fn = wrapped
            continue
        if not inspect.isroutine(fn) and not isinstance(fn, type):
            return inspect.iscoroutinefunction(type(fn).__call__)
        return False
    return False


def fn_name(fn: object) -> str:
    """How messages, logs and error counts name a user function: its qualified name; for
    a ``functools.partial`` its function's; for a callable object its class's (never a
    repr holding a memory address, different in every process)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return str(name) if name else type(fn).__qualname__


@attrs.frozen
class StepSpec:
    from_status: enum.IntEnum
    fn: StepFn
    to: frozenset[enum.IntEnum]
    options: Options
    key: str = attrs.field(init=False, eq=False)
    """How errors and logs name the step (``"step <function name>"``)."""

    @key.default
    def _key(self) -> str:
        return f"step {fn_name(self.fn)}"


@attrs.frozen
class CallbackSpec:
    from_status: enum.IntEnum
    fn: CallbackFn
    to: frozenset[enum.IntEnum]


@attrs.frozen
class TimeoutSpec:
    from_status: enum.IntEnum
    index: int
    timer: TimerFn
    fn: TimeoutFn
    to: frozenset[enum.IntEnum]
    options: Options
    kind: str = attrs.field(init=False)
    """The kind of this timeout's timers (``timeout:<index>``)."""

    @kind.default
    def _kind(self) -> str:
        return f"timeout:{self.index}"


@attrs.frozen
class ConnectorSpec:
    name: str
    source: Any
    fn: ConnectorFn
    options: Options


@attrs.frozen
class Definition:
    """Everything ``Builder.build`` checked, ready for the engine."""

    name: str
    object_type: type[Any]
    status_type: type[enum.IntEnum]
    steps: Mapping[int, StepSpec]
    callbacks: Mapping[int, Sequence[CallbackSpec]]
    timeouts: Mapping[int, Sequence[TimeoutSpec]]
    connectors: Sequence[ConnectorSpec]
    hooks: Mapping[str, HookFn]
    start: enum.IntEnum
    starts: frozenset[enum.IntEnum]
    declared: Sequence[enum.IntEnum]
    evolution: Evolution = attrs.Factory(Evolution)

    def destinations(self, status: int) -> frozenset[enum.IntEnum]:
        found: set[enum.IntEnum] = set()
        if status in self.steps:
            found |= self.steps[status].to
        for cb in self.callbacks.get(status, ()):
            found |= cb.to
        for to in self.timeouts.get(status, ()):
            found |= to.to
        return frozenset(found)

    def is_terminal(self, status: int) -> bool:
        return (
            status not in self.steps
            and status not in self.callbacks
            and (status not in self.timeouts)
        )

    _members: Mapping[int, enum.IntEnum] = attrs.field(init=False, repr=False, eq=False)
    fingerprint: str = attrs.field(init=False, eq=False)
    """A short hash of the statuses, edges, object schema and status mappings."""
    summary: str = attrs.field(init=False, repr=False, eq=False)
    """The JSON text the fingerprint hashes."""

    def __attrs_post_init__(self) -> None:
        # Enum calls are slow on the hot path; a dict lookup is not.
        object.__setattr__(self, "_members", {int(m): m for m in self.status_type})
        edges: list[tuple[int, str, Sequence[int]]] = []
        for status, step in self.steps.items():
            edges.append((status, "step", [int(t) for t in step.to]))
        for status, cbs in self.callbacks.items():
            edges.extend((status, "callback", [int(t) for t in cb.to]) for cb in cbs)
        for status, tms in self.timeouts.items():
            edges.extend((status, tm.kind, [int(t) for t in tm.to]) for tm in tms)
        fp, summary = fingerprint(self.status_type, edges, self.object_type, self.evolution)
        object.__setattr__(self, "fingerprint", fp)
        object.__setattr__(self, "summary", summary)

    def can_move(self, status: int) -> bool:
        """Whether a run at ``status`` has a step, callback or timeout here."""
        return status in self.steps or status in self.callbacks or status in self.timeouts

    def status(self, value: int) -> enum.IntEnum | int:
        return self._members.get(value, value)

    def mermaid(self) -> str:
        """The graph as a Mermaid ``stateDiagram-v2``."""
        lines = ["stateDiagram-v2", "    direction LR"]
        ids = _mermaid_ids(self.declared)
        for status in self.declared:
            if ids[status] != status.name:  # a name Mermaid cannot take as an id
                label = status.name.replace('"', "#quot;")
                lines.append(f'    state "{label}" as {ids[status]}')
        for start in sorted(self.starts, key=self.declared.index):
            lines.append(f"    [*] --> {ids[start]}")
        seen: set[tuple[str, str]] = set()
        terminals: list[enum.IntEnum] = []

        def edge(a: enum.IntEnum, b: enum.IntEnum, label: str) -> None:
            if (a.name, b.name + label) not in seen:
                seen.add((a.name, b.name + label))
                lines.append(f"    {ids[a]} --> {ids[b]}{label}")

        for status in self.declared:
            if status in self.steps:
                for to in sorted(self.steps[status].to):
                    edge(status, to, "")
            for cb in self.callbacks.get(status, ()):
                for to in sorted(cb.to):
                    edge(status, to, ": callback")
            for tm in self.timeouts.get(status, ()):
                for to in sorted(tm.to):
                    edge(status, to, ": timeout")
        for status in self.declared:
            if self.is_terminal(status) and status not in terminals:
                terminals.append(status)
        for status in terminals:
            lines.append(f"    {ids[status]} --> [*]")
        return "\n".join(lines) + "\n"


def _mermaid_ids(statuses: Sequence[enum.IntEnum]) -> dict[enum.IntEnum, str]:
    """The Mermaid state id of each status: its name when that is a plain identifier (the
    usual case: ``A --> B``), else ``status_<value>`` (made unique), shown with its name
    through a ``state "in progress" as status_2`` line. Names from the functional enum API
    may hold spaces, dashes or punctuation, which Mermaid cannot parse as ids."""
    ids: dict[enum.IntEnum, str] = {}
    taken = {s.name for s in statuses if s.name.isascii() and s.name.isidentifier()}
    for status in statuses:
        if status.name in taken:
            ids[status] = status.name
            continue
        made = f"status_{int(status)}"
        while made in taken:
            made += "_"
        taken.add(made)
        ids[status] = made
    return ids
