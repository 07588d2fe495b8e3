"""The gateway's ops as one table: each op's arguments and the handler that serves it.

A handler takes the workflow the request names and the checked arguments and returns the
JSON result. Ops without a handler are served by the connection itself: the inline ones
(answered at once by its reader) and ``subscribe`` (a stream of events). docs/gateway.md
describes the same ops for people writing clients in other languages.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, final

import attrs

from actorflow._model.record import Record
from actorflow.gateway.protocol import (
    Arg,
    ArgKind,
    Request,
    check_arguments,
    coerce_run_states,
    coerce_status,
    coerce_statuses,
    count_to_json,
    describe_definition,
    read_request,
    record_to_json,
    structure_object,
    timer_to_json,
)
from actorflow.workflow import Workflow

AnyWorkflow = Workflow[Any, Any]
Handler = Callable[[AnyWorkflow, dict[str, Any]], Awaitable[object]]


@final
@attrs.frozen
class Op:
    """One op: its arguments and how it is served."""

    args: tuple[Arg, ...]
    handler: Handler | None = None
    """Serves the op on the workflow the request names; None: the connection serves it."""
    inline: bool = False
    """Answered at once by the connection's reader; never counts as in flight."""
    steering: bool = False
    """Changes runs; a read-only connection gets ``forbidden`` for it."""
    large: bool = False
    """Its reply may be large (many records): a connection makes few such replies at once
    (``connection.LARGE_REPLIES``), so a client that never reads cannot pile them up."""


# -- handlers ----------------------------------------------------------------------------------


def _status(wf: AnyWorkflow, value: object, what: str = "status") -> enum.IntEnum:
    statuses: type[enum.IntEnum] = wf.status_type
    return statuses(coerce_status(statuses, value, what))


def _json(wf: AnyWorkflow, record: Record[Any, Any]) -> dict[str, Any]:
    return record_to_json(record, wf.object_type)


async def _trigger(wf: AnyWorkflow, args: dict[str, Any]) -> object:
    start, initial = args.get("start"), args.get("initial")
    return await wf.trigger(
        args["foreign_id"],
        None if start is None else _status(wf, start, "start"),
        initial=None if initial is None else structure_object(wf.object_type, initial),
    )


async def _await_status(wf: AnyWorkflow, args: dict[str, Any]) -> object:
    record = await wf.await_status(
        args["foreign_id"], args["run_id"], _status(wf, args["status"]), timeout=args.get("timeout")
    )
    return _json(wf, record)


async def _callback(wf: AnyWorkflow, args: dict[str, Any]) -> object:
    found = await wf.callback(args["foreign_id"], _status(wf, args["status"]), args["payload"])
    return None if found is None else _json(wf, found)


async def _lookup(wf: AnyWorkflow, args: dict[str, Any]) -> object:
    return _json(wf, await wf.lookup(args["run_id"]))


async def _latest(wf: AnyWorkflow, args: dict[str, Any]) -> object:
    return _json(wf, await wf.latest(args["foreign_id"]))


async def _history(wf: AnyWorkflow, args: dict[str, Any]) -> object:
    return [_json(wf, record) for record in await wf.history(args["run_id"])]


def _filters(wf: AnyWorkflow, args: dict[str, Any]) -> dict[str, Any]:
    """The list_runs/count_runs filters of the request, as ``Workflow`` takes them."""
    status, run_state = args.get("status"), args.get("run_state")
    return {
        "foreign_id": args.get("foreign_id"),
        "foreign_id_prefix": args.get("foreign_id_prefix"),
        "status": None if status is None else coerce_statuses(wf.status_type, status),
        "run_state": None if run_state is None else coerce_run_states(run_state),
        "created_after": args.get("created_after"),
        "created_before": args.get("created_before"),
    }


async def _list_runs(wf: AnyWorkflow, args: dict[str, Any]) -> object:
    found = await wf.list_runs(
        **_filters(wf, args),
        limit=args.get("limit", 25),
        after=args.get("after"),
        descending=args.get("descending", False),
    )
    return [_json(wf, record) for record in found]


async def _count_runs(wf: AnyWorkflow, args: dict[str, Any]) -> object:
    return count_to_json(await wf.count_runs(**_filters(wf, args)))


async def _timers(wf: AnyWorkflow, args: dict[str, Any]) -> object:
    await wf.lookup(args["run_id"])  # not_found for an unknown run
    pending = await wf.store.list_timers(wf.name, args["run_id"])
    return [timer_to_json(timer, wf.status_type) for timer in pending]


async def _describe(wf: AnyWorkflow, args: dict[str, Any]) -> object:
    return describe_definition(wf.definition, wf.graph(), wf.object_type)


async def _states(wf: AnyWorkflow, args: dict[str, Any]) -> object:
    return states_to_json(wf)


def states_to_json(wf: AnyWorkflow) -> dict[str, Any]:
    """``workflow.states()`` as JSON: ``{process: {"state": name}}``, the name in lower
    case (``running``, ``idle``, ``erroring``, ``stopped``)."""
    return {name: {"state": state.name.lower()} for name, state in wf.states().items()}


Control = Callable[..., Awaitable[Record[Any, Any]]]


def _control(method: Callable[[AnyWorkflow], Control]) -> Handler:
    """The handler of a run-state control: ``method(wf)(run_id[, reason])``."""

    async def control(wf: AnyWorkflow, args: dict[str, Any]) -> object:
        act, reason = method(wf), args.get("reason")
        changed = await (act(args["run_id"]) if reason is None else act(args["run_id"], reason))
        return _json(wf, changed)

    return control


# -- the table -----------------------------------------------------------------------------

_WORKFLOW = Arg("workflow", ArgKind.STR)
_FOREIGN_ID = Arg("foreign_id", ArgKind.STR)
_RUN_ID = Arg("run_id", ArgKind.STR)
_REASON = Arg("reason", ArgKind.TEXT, required=False)
_TRACEPARENT = Arg("traceparent", ArgKind.TEXT, required=False)
_FILTERS = (
    _WORKFLOW,
    Arg("foreign_id", ArgKind.FOREIGN_IDS, required=False),
    Arg("foreign_id_prefix", ArgKind.STR, required=False),
    Arg("status", ArgKind.STATUSES, required=False),
    Arg("run_state", ArgKind.RUN_STATES, required=False),
    Arg("created_after", ArgKind.DATETIME, required=False),
    Arg("created_before", ArgKind.DATETIME, required=False),
)

OPS: Final[Mapping[str, Op]] = {
    "ping": Op((), inline=True),
    "workflows": Op((), inline=True),
    "trigger": Op(
        (
            _WORKFLOW,
            _FOREIGN_ID,
            Arg("start", ArgKind.STATUS, required=False),
            Arg("initial", ArgKind.OBJECT, required=False),
            _TRACEPARENT,
        ),
        _trigger,
        steering=True,
    ),
    "await_status": Op(
        (
            _WORKFLOW,
            _FOREIGN_ID,
            _RUN_ID,
            Arg("status", ArgKind.STATUS),
            Arg("timeout", ArgKind.TIMEOUT, required=False),
        ),
        _await_status,
    ),
    "callback": Op(
        (
            _WORKFLOW,
            _FOREIGN_ID,
            Arg("status", ArgKind.STATUS),
            Arg("payload", ArgKind.BASE64),
            _TRACEPARENT,
        ),
        _callback,
        steering=True,
    ),
    "lookup": Op((_WORKFLOW, _RUN_ID), _lookup),
    "latest": Op((_WORKFLOW, _FOREIGN_ID), _latest),
    "history": Op((_WORKFLOW, _RUN_ID), _history, large=True),
    "list_runs": Op(
        (
            *_FILTERS,
            Arg("limit", ArgKind.LIMIT, required=False),
            Arg("after", ArgKind.STR, required=False),
            Arg("descending", ArgKind.BOOL, required=False),
        ),
        _list_runs,
        large=True,
    ),
    "count_runs": Op(_FILTERS, _count_runs),
    "timers": Op((_WORKFLOW, _RUN_ID), _timers),
    "describe": Op((_WORKFLOW,), _describe),
    "states": Op((_WORKFLOW,), _states),
    "pause": Op((_WORKFLOW, _RUN_ID, _REASON), _control(lambda wf: wf.pause), steering=True),
    "resume": Op((_WORKFLOW, _RUN_ID, _REASON), _control(lambda wf: wf.resume), steering=True),
    "cancel": Op((_WORKFLOW, _RUN_ID, _REASON), _control(lambda wf: wf.cancel), steering=True),
    "delete_data": Op(
        (_WORKFLOW, _RUN_ID, _REASON), _control(lambda wf: wf.delete_data), steering=True
    ),
    "subscribe": Op(
        (
            _WORKFLOW,
            Arg("foreign_id", ArgKind.STR, required=False),
            Arg("run_id", ArgKind.STR, required=False),
        )
    ),
    "unsubscribe": Op((Arg("subscription", ArgKind.REQUEST_ID),), inline=True),
    "abort": Op((Arg("request", ArgKind.REQUEST_ID),), inline=True),
}
"""Every op: its arguments (optional ones may be omitted or null) and its handler."""

INLINE_OPS: Final = frozenset(name for name, op in OPS.items() if op.inline)
"""Ops answered at once by the connection's reader; they never count as in flight."""

STEERING_OPS: Final = frozenset(name for name, op in OPS.items() if op.steering)
"""Ops that change runs; a read-only connection gets ``forbidden`` for them."""


def parse_request(data: str | bytes, max_bytes: int) -> Request:
    """Parse one incoming message into a :class:`Request` for one of :data:`OPS`.

    Raises:
        ProtocolError: see :func:`read_request` (``unknown_op`` for an op not in the table).
    """
    return read_request(data, max_bytes, OPS)


def check_args(request: Request) -> dict[str, Any]:
    """The request's arguments checked against its op's entry in :data:`OPS` and converted
    (see :func:`check_arguments`).

    Raises:
        ProtocolError: ``invalid_argument`` for a missing, unknown or ill-typed argument.
    """
    return check_arguments(request, OPS[request.op].args)
