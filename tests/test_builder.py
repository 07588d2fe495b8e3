"""Builder: graph validation, BuildError cases, Mermaid graph. No I/O."""

from __future__ import annotations

import enum
import functools
from datetime import timedelta
from typing import Any

import attrs
import pytest

import actorflow as af
import actorflow.testing
from tests.conftest import START
from tests.workflows import Status, YinYang, yinyang


class WithZero(enum.IntEnum):
    UNKNOWN = 0
    ONE = 1
    TWO = 2


class Other(enum.IntEnum):
    X = 1
    Y = 2


async def noop(run: object) -> int:
    return 2


async def cb(run: object, payload: bytes) -> int:
    return 2


def test_reserved_status_is_refused() -> None:
    builder = af.Builder("w", YinYang, WithZero)
    builder.add_step(WithZero.UNKNOWN, noop, to=WithZero.ONE)
    with pytest.raises(af.BuildError, match="reserved"):
        builder.build(af.MemoryStore())
    builder = af.Builder("w", YinYang, WithZero)
    builder.add_step(WithZero.ONE, noop, to=WithZero.UNKNOWN)
    with pytest.raises(af.BuildError, match="reserved"):
        builder.build(af.MemoryStore())


def test_duplicate_step_is_refused() -> None:
    builder = af.Builder("w", YinYang, Status)
    builder.add_step(Status.STARTED, noop, to=Status.MIDDLE)
    builder.add_step(Status.STARTED, noop, to=Status.END)
    with pytest.raises(af.BuildError, match="already has a step"):
        builder.build(af.MemoryStore())


def test_destination_outside_the_enum_is_refused() -> None:
    builder = af.Builder("w", YinYang, Status)
    builder.add_step(Status.STARTED, noop, to=Other.Y)  # type: ignore[arg-type]
    with pytest.raises(af.BuildError, match="not a member of Status"):
        builder.build(af.MemoryStore())
    builder = af.Builder("w", YinYang, Status)
    builder.add_step(Status.STARTED, noop, to=[Status.MIDDLE, 99])  # type: ignore[list-item]
    with pytest.raises(af.BuildError, match="99"):
        builder.build(af.MemoryStore())


def test_no_starting_status_is_refused() -> None:
    builder = af.Builder("w", YinYang, Status)
    builder.add_step(Status.STARTED, noop, to=Status.MIDDLE)
    builder.add_step(Status.MIDDLE, noop, to=Status.STARTED)
    with pytest.raises(af.BuildError, match="no starting status"):
        builder.build(af.MemoryStore())


def test_empty_workflow_is_refused() -> None:
    with pytest.raises(af.BuildError, match="no steps"):
        af.Builder("w", YinYang, Status).build(af.MemoryStore())


def test_duplicate_connector_names_are_refused() -> None:
    builder = af.Builder("w", YinYang, Status)
    builder.add_step(Status.STARTED, noop, to=Status.MIDDLE)

    async def on_event(workflow: object, event: object) -> None:
        return None

    builder.add_connector("feed", object(), on_event)
    builder.add_connector("feed", object(), on_event)
    with pytest.raises(af.BuildError, match="used twice"):
        builder.build(af.MemoryStore())


def test_bad_types_are_refused_early() -> None:
    with pytest.raises(af.BuildError, match="IntEnum"):
        af.Builder("w", YinYang, int)  # type: ignore[type-var]
    with pytest.raises(af.BuildError, match="attrs class or a dataclass"):
        af.Builder("w", dict, Status)
    with pytest.raises(af.BuildError, match="name"):
        af.Builder("", YinYang, Status)
    builder = af.Builder("w", YinYang, Status)
    with pytest.raises(af.BuildError, match="callable"):
        builder.add_step(Status.STARTED, "not a function", to=Status.END)  # type: ignore[arg-type]


def test_unknown_and_invalid_options_are_refused() -> None:
    builder = af.Builder("w", YinYang, Status)
    builder.add_step(Status.STARTED, noop, to=Status.MIDDLE, retries=3)
    with pytest.raises(af.BuildError, match="unknown option"):
        builder.build(af.MemoryStore())
    builder = af.Builder("w", YinYang, Status)
    builder.add_step(Status.STARTED, noop, to=Status.MIDDLE, pause_after_errors=-1)
    with pytest.raises(af.BuildError, match="pause_after_errors"):
        builder.build(af.MemoryStore())
    with pytest.raises(af.BuildError):
        af.after(-timedelta(seconds=1))


def test_start_is_first_declared_status_never_a_destination() -> None:
    builder = af.Builder("w", YinYang, Status)
    builder.add_callback(Status.MIDDLE, cb, to=Status.END)
    builder.add_step(Status.STARTED, noop, to=Status.END)
    definition = builder.definition()
    assert definition.start is Status.MIDDLE
    assert definition.starts == {Status.MIDDLE, Status.STARTED}
    assert definition.is_terminal(Status.END)


def test_graph_is_mermaid() -> None:
    workflow = yinyang(af.MemoryStore(), af.SystemClock())
    assert workflow.graph() == (
        "stateDiagram-v2\n"
        "    direction LR\n"
        "    [*] --> STARTED\n"
        "    STARTED --> MIDDLE\n"
        "    MIDDLE --> END: callback\n"
        "    MIDDLE --> END: timeout\n"
        "    END --> [*]\n"
    )


def test_dataclass_objects_are_accepted() -> None:
    import dataclasses

    @dataclasses.dataclass
    class Plain:
        n: int = 0

    builder = af.Builder("plain", Plain, Status)
    builder.add_step(Status.STARTED, noop, to=Status.END)
    assert builder.build(af.MemoryStore()).name == "plain"


def test_public_exports() -> None:
    for name in [
        "Builder",
        "Workflow",
        "Run",
        "Record",
        "RunState",
        "MemoryStore",
        "open_workflow",
        "after",
        "at",
        "ActorflowError",
        "BuildError",
        "WorkflowInProgress",
        "RunNotFound",
        "InvalidTransition",
        "GatewayError",
        "Options",
        "Meta",
    ]:
        assert hasattr(af, name), name
    assert callable(af.testing.trio_clock)
    assert attrs.has(af.Record)


class Huge(enum.IntEnum):
    ONE = 1
    TWO = 2
    HUGE = 2**63


class HugeNegative(enum.IntEnum):
    ONE = 1
    TWO = 2
    LOW = -(2**63) - 1


@pytest.mark.parametrize("status_type", [Huge, HugeNegative])
def test_status_values_beyond_64_bits_are_refused(status_type: type[enum.IntEnum]) -> None:
    with pytest.raises(af.BuildError, match="signed 64-bit"):
        builder = af.Builder("w", YinYang, status_type)
        builder.add_step(status_type(1), noop, to=status_type(2))
        builder.build(af.MemoryStore())


class Edge(enum.IntEnum):
    ONE = 1
    TOP = 2**63 - 1


def test_the_largest_64_bit_status_is_accepted() -> None:
    builder = af.Builder("w", YinYang, Edge)
    builder.add_step(Edge.ONE, noop, to=Edge.TOP)
    builder.build(af.MemoryStore())


def test_options_without_effect_are_refused() -> None:
    builder = af.Builder("w", YinYang, Status)
    with pytest.raises(af.BuildError, match="consume_lag has no effect on a timeout"):
        builder.add_timeout(
            Status.MIDDLE,
            af.after(timedelta(hours=1)),
            cb,
            to=Status.END,
            consume_lag=timedelta(seconds=5),
        )
    with pytest.raises(af.BuildError, match="pause_after_errors has no effect on a connector"):
        builder.add_connector("c", af.MemorySource([]), cb, pause_after_errors=3)
    with pytest.raises(af.BuildError, match="more than 64 shards"):
        wide = af.Builder("wide", YinYang, Status)
        wide.add_step(Status.STARTED, noop, to=Status.MIDDLE)
        wide.add_connector("c", af.MemorySource([]), cb, max_concurrency=65)
        wide.build(af.MemoryStore())
    with pytest.raises(af.BuildError, match="callbacks take no options"):
        builder.add_callback(Status.MIDDLE, cb, to=Status.END, error_backoff=timedelta(1))
    # What does have an effect is accepted.
    builder.add_step(
        Status.STARTED,
        noop,
        to=Status.MIDDLE,
        pause_after_errors=1,
        error_backoff=timedelta(seconds=1),
        max_error_backoff=timedelta(seconds=9),
        consume_lag=timedelta(seconds=1),
        max_concurrency=2,
    )
    builder.add_timeout(
        Status.MIDDLE,
        af.after(timedelta(hours=1)),
        cb,
        to=Status.END,
        pause_after_errors=1,
        error_backoff=timedelta(seconds=1),
        max_error_backoff=timedelta(seconds=9),
        max_concurrency=2,
    )
    builder.add_connector(
        "c",
        af.MemorySource([]),
        cb,
        error_backoff=timedelta(seconds=1),
        max_error_backoff=timedelta(seconds=9),
        consume_lag=timedelta(seconds=1),
    )
    builder.build(af.MemoryStore())


def sync_step(run: object) -> int:
    return 2


class AsyncCallable:
    async def __call__(self, run: object) -> int:
        return 2


class SyncCallable:
    def __call__(self, run: object) -> int:
        return 2


def test_functions_that_are_not_async_are_refused() -> None:
    builder = af.Builder("w", YinYang, Status)
    with pytest.raises(af.BuildError, match="step function sync_step is not async"):
        builder.add_step(Status.STARTED, sync_step, to=Status.MIDDLE)
    with pytest.raises(af.BuildError, match="not async"):
        builder.add_step(Status.STARTED, SyncCallable(), to=Status.MIDDLE)
    with pytest.raises(af.BuildError, match=r"callback function .*lambda.* is not async"):
        builder.add_callback(Status.MIDDLE, lambda run, payload: Status.END, to=Status.END)
    with pytest.raises(af.BuildError, match="timeout function sync_step is not async"):
        builder.add_timeout(Status.MIDDLE, af.after(timedelta(1)), sync_step, to=Status.END)
    with pytest.raises(af.BuildError, match="connector function sync_step is not async"):
        builder.add_connector("c", af.MemorySource([]), sync_step)
    with pytest.raises(af.BuildError, match="on_complete hook function sync_step is not async"):
        builder.on_complete(sync_step)
    with pytest.raises(af.BuildError, match="on_pause hook"):
        builder.on_pause(sync_step)
    with pytest.raises(af.BuildError, match="on_cancel hook"):
        builder.on_cancel(sync_step)

    async def timer(run: object, now: object) -> None:
        return None

    with pytest.raises(af.BuildError, match=r"timer .*timer is async"):
        builder.add_timeout(Status.MIDDLE, timer, cb, to=Status.END)
    # Awaitable callables of every shape are accepted.
    builder.add_step(Status.STARTED, AsyncCallable(), to=Status.MIDDLE)
    builder.add_callback(Status.MIDDLE, functools.partial(cb), to=Status.END)

    @functools.wraps(noop)
    def decorated(run: object) -> Any:
        return noop(run)

    builder.add_timeout(Status.MIDDLE, af.after(timedelta(1)), decorated, to=Status.END)
    builder.build(af.MemoryStore())


def test_an_async_scrub_function_is_refused() -> None:
    async def scrub(obj: YinYang) -> YinYang:
        return YinYang()

    with pytest.raises(af.BuildError, match="scrub must be a plain"):
        yinyang(af.MemoryStore(), af.testing.trio_clock(START), scrub=scrub)  # type: ignore[arg-type]
