"""Small workflows shared by the tests."""

from __future__ import annotations

import enum
from datetime import timedelta

import attrs

import actorflow as af


class Status(enum.IntEnum):
    STARTED = 1
    MIDDLE = 2
    END = 3


@attrs.define
class YinYang:
    yin: bool = False
    yang: bool = False
    count: int = 0
    note: str = ""


def yinyang(store: af.Store, clock: af.Clock, **build: object) -> af.Workflow[YinYang, Status]:
    """STARTED -step-> MIDDLE -callback|1h timeout-> END."""
    builder = af.Builder("yinyang", YinYang, Status)

    @builder.step(Status.STARTED, to=Status.MIDDLE)
    async def start(run: af.Run[YinYang, Status]) -> Status:
        run.object.yin = True
        return Status.MIDDLE

    async def got_payment(run: af.Run[YinYang, Status], payload: bytes) -> Status:
        if payload == b"bad":
            raise ValueError("cannot parse payload")
        run.object.yang = True
        run.object.note = payload.decode()
        return Status.END

    builder.add_callback(Status.MIDDLE, got_payment, to=[Status.END])

    async def gave_up(run: af.Run[YinYang, Status], now: object) -> Status:
        run.object.note = "timed out"
        return Status.END

    builder.add_timeout(Status.MIDDLE, af.after(timedelta(hours=1)), gave_up, to=[Status.END])
    return builder.build(store, clock=clock, **build)  # type: ignore[arg-type]


class Three(enum.IntEnum):
    A = 1
    B = 2
    C = 3
    D = 4


@attrs.define
class Counter:
    steps: list[str] = attrs.Factory(list)


def three_steps(store: af.Store, clock: af.Clock, **build: object) -> af.Workflow[Counter, Three]:
    """A -> B -> C -> D, each step appends its name."""
    builder = af.Builder("three", Counter, Three)

    @builder.step(Three.A, to=Three.B)
    async def a(run: af.Run[Counter, Three]) -> Three:
        run.object.steps.append("a")
        return Three.B

    @builder.step(Three.B, to=Three.C)
    async def b(run: af.Run[Counter, Three]) -> Three:
        run.object.steps.append("b")
        return Three.C

    @builder.step(Three.C, to=Three.D)
    async def c(run: af.Run[Counter, Three]) -> Three:
        run.object.steps.append("c")
        return Three.D

    return builder.build(store, clock=clock, **build)  # type: ignore[arg-type]
