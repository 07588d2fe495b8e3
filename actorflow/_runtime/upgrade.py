"""Migrating one run that another definition wrote: the plan (status mappings, the object
upgrade, the timers kept) and storing it, or parking the run when it cannot be migrated.
The rules are in ``_model/evolution.py`` and docs/upgrading.md; ``evolution.py`` applies
them to every stored run at start and in bulk."""

from __future__ import annotations

import enum
import json
from typing import Any

import attrs

from actorflow._model import evolution as ev
from actorflow._model.definition import fn_name
from actorflow._model.errors import ActorflowError
from actorflow._model.record import RawRecord, Timer
from actorflow._model.run_state import RunState
from actorflow._runtime.engine import RESUME, Engine, log, upgraded_object


@attrs.frozen
class UpgradePlan:
    """What :func:`upgrade` stores for a run (nothing, when ``reasons`` is empty), or the
    problem that parks it."""

    problem: str | None = None
    kind: str = ""
    status: int | None = None
    run_state: RunState | None = None
    object: str | None = None
    timers: list[Timer] | None = None
    reasons: tuple[str, ...] = ()


async def upgrade(engine: Engine[Any, Any], raw: RawRecord) -> RawRecord:
    """The run as this definition can process it: status mappings and the object upgrade
    applied, obsolete timers dropped, stored as one new version with a reason; a run it
    cannot get there is parked (PAUSED, the reason naming the problem). Returns ``raw``
    itself when there is nothing to do."""
    if raw.meta.definition == engine.fingerprint or raw.run_state.finished:
        return raw
    if not await engine.lineage.accepts(raw):
        return raw
    timers = await engine.store.list_timers(engine.name, raw.run_id)
    plan = plan_upgrade(engine, raw, timers)
    if plan.problem is not None:
        if raw.run_state is RunState.PAUSED:
            return raw
        reason = f"parked by definition {engine.fingerprint}: {plan.kind}: {plan.problem}"
        log.warning("%s: %s", engine.where(raw), reason)
        paused, _ = await engine.pause(raw, reason[:2000], auto_resume=False)
        return paused
    if not plan.reasons:
        return raw
    if plan.run_state is RunState.COMPLETED and raw.run_state is RunState.PAUSED:
        # PAUSED -> COMPLETED is no run-state transition (luno's rules): a paused run
        # retired onto a terminal status stays paused as it is, and completes once it is
        # resumed (it is loaded then as a running run and migrated).
        return raw
    new = engine.next_version(
        raw,
        status=plan.status,
        run_state=plan.run_state,
        object=plan.object,
        reason="; ".join(plan.reasons)[:2000],
    )
    log.info("%s: %s", engine.where(raw), new.meta.run_state_reason)
    return await engine.commit(new, timers=plan.timers)


def plan_upgrade(engine: Engine[Any, Any], raw: RawRecord, timers: list[Timer]) -> UpgradePlan:
    """Decide what the current definition does with a run another definition wrote."""
    definition = engine.definition
    reasons: list[str] = []
    status = raw.status
    mapping = definition.evolution.mappings.get(status)
    if mapping is not None:
        status = int(mapping.new)
        reasons.append(mapping.reason)
    member = definition.status(status)
    if not isinstance(member, enum.Enum):
        return UpgradePlan(
            f"{status} (not a member of {definition.status_type.__name__}, not mapped by "
            "rename_status or retire)",
            ev.UNKNOWN_STATUS,
        )
    terminal = definition.is_terminal(status)
    if terminal and mapping is None:
        return UpgradePlan(f"{member.name}={status}", ev.NO_WAY_FORWARD)
    new_object = _upgraded_object(engine, raw, reasons)
    if isinstance(new_object, UpgradePlan):
        return new_object  # the object cannot be upgraded: the run is parked
    kept = _kept_timers(engine, timers, terminal, reasons)
    return UpgradePlan(
        None,
        "",
        status if status != raw.status else None,
        RunState.COMPLETED if terminal else None,
        new_object,
        [] if terminal else (None if kept == timers else kept),
        tuple(reasons),
    )


def _upgraded_object(
    engine: Engine[Any, Any], raw: RawRecord, reasons: list[str]
) -> str | UpgradePlan | None:
    """The run's object upgraded (None: it fits as it is; adds the reason), or the plan
    that parks the run when it neither fits nor can be upgraded."""
    upgrade_fn = engine.definition.evolution.upgrade
    if object_fits(engine, raw.object) and (
        upgrade_fn is None or not _object_schema_changed(engine, raw)
    ):
        return None
    if upgrade_fn is None:
        return UpgradePlan(
            f"{engine.codec.object_type.__name__} (add builder.upgrade_object)",
            ev.OBJECT_DOES_NOT_FIT,
        )
    try:
        new_object = upgraded_object(engine, raw)
    except ActorflowError as exc:
        return UpgradePlan(str(exc), ev.UPGRADE_FAILED)
    reasons.append(f"object upgraded by {fn_name(upgrade_fn)}")
    return new_object


def _kept_timers(
    engine: Engine[Any, Any], timers: list[Timer], terminal: bool, reasons: list[str]
) -> list[Timer]:
    """The run's timers this definition keeps (moved to their mapped status); a reason is
    added for each one dropped."""
    definition = engine.definition
    kept: list[Timer] = []
    for timer in timers:
        if timer.kind == RESUME:
            kept.append(timer)
            continue
        timer_status = timer.status
        moved = definition.evolution.mappings.get(timer_status)
        if moved is not None:
            timer_status = int(moved.new)
        specs = definition.timeouts.get(timer_status, ())
        if any(spec.kind == timer.kind for spec in specs) and not terminal:
            kept.append(attrs.evolve(timer, status=timer_status))
        else:
            reasons.append(
                f"timer {timer.kind} of status {timer.status} dropped ({ev.REMOVED_TIMEOUT})"
            )
    return kept


def _object_schema_changed(engine: Engine[Any, Any], raw: RawRecord) -> bool:
    """Whether the definition that wrote the run had another object schema (as far as
    the definitions registry knows; an unknown writer counts as the same)."""
    theirs = engine.lineage.summaries.get(raw.meta.definition)
    if theirs is None:
        return False
    try:
        return bool(json.loads(theirs)["object"] != json.loads(engine.definition.summary)["object"])
    except (ValueError, KeyError, TypeError):
        return False


def object_fits(engine: Engine[Any, Any], text: str) -> bool:
    """Whether a stored object structures into the object type without losing anything
    the type still has (the rules in docs/upgrading.md)."""
    try:
        obj = engine.codec.decode(text)
        again = json.loads(engine.codec.encode(obj))
        return ev.lossless(json.loads(text), again)
    except (ActorflowError, ValueError):
        return False
