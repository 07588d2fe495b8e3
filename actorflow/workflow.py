"""``Workflow``: a built workflow bound to a store; what users trigger, await and control.

The class composes the parts in ``actorflow._api`` (one concept per module): starting
runs, reading them, awaiting a status, changing them, and serving the workflow.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Generic, NoReturn, TypeVar, final, overload

import trio

from actorflow._api.awaiting import Awaiting
from actorflow._api.control import Control
from actorflow._api.lifecycle import Lifecycle
from actorflow._api.triggers import TriggerItem as TriggerItem
from actorflow._model.errors import InvalidArgument, lone_build_error

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)


@final
class Workflow(Lifecycle[T, S], Awaiting[T, S], Control[T, S]):
    """A workflow definition bound to a store. Built by :meth:`Builder.build`.

    Starting runs (``trigger``, ``trigger_many``, ``schedule_trigger``), reading them
    (``lookup``, ``latest``, ``list_runs``, ``count_runs``, ``history``, ``subscribe``),
    waiting (``await_status``), changing them (``callback``, ``pause``, ``resume``,
    ``cancel``, ``delete_data``) and serving the workflow (``run``, ``stop``, ``check``,
    ``migrate``, ``states``).
    """


@overload
def open_workflow(workflow: Workflow[T, S], /) -> _OpenWorkflows[Workflow[T, S]]: ...
@overload
def open_workflow(
    *workflows: Workflow[Any, Any],
) -> _OpenWorkflows[tuple[Workflow[Any, Any], ...]]: ...


def open_workflow(*workflows: Workflow[Any, Any]) -> _OpenWorkflows[Any]:
    """``async with af.open_workflow(wf, ...) as wf:`` runs them, stops them on exit."""
    if not workflows:
        raise InvalidArgument("open_workflow needs at least one workflow")
    for workflow in workflows:
        if not isinstance(workflow, Workflow):
            raise InvalidArgument(
                f"open_workflow takes built workflows (builder.build(store)), not {workflow!r:.100}"
            )
    value: Any = workflows[0] if len(workflows) == 1 else workflows
    return _OpenWorkflows(workflows, value)


W = TypeVar("W")


@final
class _OpenWorkflows(Generic[W]):
    def __init__(self, workflows: tuple[Workflow[Any, Any], ...], value: W) -> None:
        self._workflows = workflows
        self._value = value
        self._cm: AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> W:
        self._cm = self._serve()
        await self._cm.__aenter__()
        return self._value

    async def __aexit__(self, *exc: object) -> bool | None:
        assert self._cm is not None
        result: bool | None = await self._cm.__aexit__(*exc)  # type: ignore[arg-type]
        return result

    @asynccontextmanager
    async def _serve(self) -> AsyncIterator[None]:
        body: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                for workflow in self._workflows:
                    await nursery.start(workflow.run)
                try:
                    yield
                except BaseException as exc:
                    body = exc
                    raise
                finally:
                    for workflow in self._workflows:
                        workflow.stop()
        except BaseExceptionGroup as group:
            refused = lone_build_error(group)
            if refused is not None:  # a workflow refused to start: reported as itself
                raise refused from None
            # The workflows stopped cleanly: the block's own exception is all there is.
            # Hand it back as itself, so ``except af.WorkflowInProgress:`` around the
            # block works; a group stays a group when several things really failed.
            if body is None or not _holds_only(group, body):
                raise
            _reraise_bare(body)


def _holds_only(group: BaseExceptionGroup[BaseException], error: BaseException) -> bool:
    """Whether ``group`` holds ``error`` and nothing else. Compared by leaves: trio may
    rebuild a group that passes through a nursery (``split``), never its leaves."""
    return [id(e) for e in _leaves(group)] == [id(e) for e in _leaves(error)]


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]


def _reraise_bare(exc: BaseException) -> NoReturn:
    """Raise ``exc`` as it was, without the group it came in as its context."""
    context, suppress = exc.__context__, exc.__suppress_context__
    try:
        raise exc
    finally:
        exc.__context__, exc.__suppress_context__ = context, suppress
        del exc, context
