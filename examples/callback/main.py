"""Callbacks: an expense claim waits for an approver's decision.

SUBMITTED --ask_approver--> AWAITING_DECISION --decision (callback)--> APPROVED --pay--> PAID
                                              --decision (callback)--> REJECTED

The decision arrives from outside (a web form, a chat button, a webhook) as bytes: here a
JSON document that cattrs turns into a ``Decision``. ``workflow.callback`` hands it to the
run's callback only while the run waits at AWAITING_DECISION, and returns the stored
record; at any other time it returns None and nothing happens, so a double click or a
repeated webhook is harmless. A payload the callback cannot read raises
``af.CallbackError`` to the caller and counts as an error of the run.

Run it from the repository root::

    python -m examples.callback
"""

from __future__ import annotations

import argparse
import enum
import json
import sys

import attrs
import trio
from cattrs.preconf.json import make_converter

import actorflow as af

converter = make_converter()


class Expense(enum.IntEnum):
    SUBMITTED = 1
    AWAITING_DECISION = 2
    APPROVED = 3
    REJECTED = 4
    PAID = 5


@attrs.define
class Claim:
    employee: str = ""
    amount_cents: int = 0
    approver: str = ""
    decided_by: str = ""
    comment: str = ""


@attrs.frozen
class Decision:
    """The callback's payload (JSON)."""

    approve: bool
    by: str
    comment: str = ""


def build(store: af.Store) -> af.Workflow[Claim, Expense]:
    builder = af.Builder("expenses", Claim, Expense)

    @builder.step(Expense.SUBMITTED, to=Expense.AWAITING_DECISION)
    async def ask_approver(run: af.Run[Claim, Expense]) -> Expense:
        # A real system sends the approver a message with a link here.
        run.object.approver = "manager" if run.object.amount_cents < 100_000 else "director"
        return Expense.AWAITING_DECISION

    async def decision(run: af.Run[Claim, Expense], payload: bytes) -> Expense:
        # An exception here (a payload that is not a Decision) reaches the caller of
        # workflow.callback as af.CallbackError; the run stays where it is.
        answer = converter.loads(payload, Decision)
        run.object.decided_by = answer.by
        run.object.comment = answer.comment
        return Expense.APPROVED if answer.approve else Expense.REJECTED

    builder.add_callback(
        Expense.AWAITING_DECISION, decision, to=[Expense.APPROVED, Expense.REJECTED]
    )

    @builder.step(Expense.APPROVED, to=Expense.PAID)
    async def pay(run: af.Run[Claim, Expense]) -> Expense:
        return Expense.PAID

    return builder.build(store)


def payload(decision: Decision) -> bytes:
    return json.dumps(converter.unstructure(decision)).encode()


async def run_example(store: af.Store) -> dict[str, af.Record[Claim, Expense]]:
    """Two claims: one approved (then paid), one rejected. Returns their final records."""
    workflow = build(store)
    final = {}
    async with af.open_workflow(workflow):
        taxi = await workflow.trigger("claim-1", initial=Claim("ada", 4_500))
        laptop = await workflow.trigger("claim-2", initial=Claim("alan", 250_000))
        for foreign_id, run_id in (("claim-1", taxi), ("claim-2", laptop)):
            await workflow.await_status(foreign_id, run_id, Expense.AWAITING_DECISION)

        yes = Decision(approve=True, by="manager", comment="ok")
        record = await workflow.callback("claim-1", Expense.AWAITING_DECISION, payload(yes))
        assert record is not None
        print(f"claim-1: decision stored, now {record.status.name}")
        again = await workflow.callback("claim-1", Expense.AWAITING_DECISION, payload(yes))
        print(f"claim-1: the same decision again does nothing: {again}")

        no = Decision(approve=False, by="director", comment="use the pool laptop")
        await workflow.callback("claim-2", Expense.AWAITING_DECISION, payload(no))

        final["claim-1"] = await workflow.await_status("claim-1", taxi, Expense.PAID)
        final["claim-2"] = await workflow.lookup(laptop)
    return final


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m examples.callback").parse_args(argv)
    final = trio.run(run_example, af.MemoryStore())
    for foreign_id, record in final.items():
        claim = record.object
        print(
            f"{foreign_id}: {claim.employee} {claim.amount_cents / 100:.2f} -> "
            f"{record.status.name} by {claim.decided_by} ({claim.comment})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
