"""Stored runs compared with the definition: the check at start, bulk migration.

The rules are in ``_model/evolution.py`` and ``Engine.upgrade``; this module pages through
the store and applies them (see docs/upgrading.md).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from typing import Any

import attrs

from actorflow._model import evolution as ev
from actorflow._model.errors import BuildError, VersionConflict
from actorflow._model.evolution import CheckReport
from actorflow._model.record import RawRecord
from actorflow._model.run_state import RunState
from actorflow._runtime.engine import Engine, log
from actorflow._runtime.upgrade import plan_upgrade, upgrade
from actorflow.stores.filters import RunFilter

PAGE = 500
UNFINISHED = [RunState.INITIATED, RunState.RUNNING, RunState.PAUSED]
_UNFINISHED = RunFilter(run_states=frozenset(UNFINISHED))

Progress = Callable[[int], None]
"""Called with the number of runs handled since the last call."""


@attrs.define
class CheckResult:
    report: CheckReport
    to_wake: list[str]
    """Runs to migrate or park when loaded, owned or not (a status they are at may have no
    step: recovery would not find them)."""


def _status_name(engine: Engine[Any, Any], value: int) -> str:
    member = engine.status(value)
    return f"{member.name}={value}" if isinstance(member, enum.Enum) else str(value)


async def _rename_conflicts(engine: Engine[Any, Any], report: CheckReport) -> None:
    """A rename onto a status that already has runs written by a definition that had
    that status value itself: those runs would change their meaning."""
    statuses: dict[str, dict[str, str]] = {}
    for fp, summary in engine.lineage.summaries.items():
        try:
            statuses[fp] = json.loads(summary)["statuses"]
        except (ValueError, KeyError, TypeError):
            continue
    for old, mapping in engine.definition.evolution.mappings.items():
        if mapping.kind != "rename":
            continue
        target = int(mapping.new)
        after: str | None = None
        while True:
            page = await engine.store.list_runs(
                engine.name, RunFilter(statuses=frozenset([target])), limit=PAGE, after=after
            )
            for raw in page:
                fp = raw.meta.definition
                if fp == engine.fingerprint or fp in engine.lineage.newer:
                    continue
                if fp in statuses and str(target) not in statuses[fp]:
                    continue  # written after the rename (by a definition without the old one)
                report.note(
                    ev.RENAME_CONFLICT,
                    f"rename_status({old}, {mapping.new.name}): {mapping.new.name}={target} "
                    "already has runs of its own",
                    raw.run_id,
                    fp,
                )
            if len(page) < PAGE:
                break
            after = page[-1].run_id


async def check(
    engine: Engine[Any, Any],
    *,
    on_stranded: str | None = None,
    owns: Callable[[str], bool] = lambda run_id: True,
) -> CheckResult:
    """Compare every unfinished stored run with the definition. Nothing is ever skipped
    silently: every run that does not fit is in the report.

    ``on_stranded``: None only reports; ``"pause"`` parks the stranded runs this process
    owns; ``"refuse"`` raises BuildError (nothing changed) if any run is stranded. A rename
    onto a status with runs of its own raises BuildError unless None.
    """
    await engine.lineage.register()
    report = CheckReport(engine.name, engine.fingerprint)
    park = on_stranded == "pause"
    await _rename_conflicts(engine, report)
    if on_stranded is not None:
        refuse_if_needed(report, on_stranded)
    if set(engine.lineage.summaries) <= {engine.fingerprint}:
        # No other definition of this workflow ever wrote to the store: every stored run
        # is this definition's. Nothing to read (a million parked runs start in ms).
        report.only_definition = True
        log.info("%s", report)
        return CheckResult(report, [])
    to_wake: list[str] = []
    after: str | None = None
    while True:
        page = await engine.store.list_runs(engine.name, _UNFINISHED, limit=PAGE, after=after)
        for raw in page:
            report.checked += 1
            if raw.meta.definition != engine.fingerprint:
                await _check_run(engine, raw, report, park=park, owns=owns, to_wake=to_wake)
        if len(page) < PAGE:
            break
        after = page[-1].run_id
    if report.ok:
        log.info("%s", report)
    else:
        log.warning("%s", report)
    if on_stranded is not None:
        refuse_if_needed(report, on_stranded)
    return CheckResult(report, to_wake)


async def _check_run(
    engine: Engine[Any, Any],
    raw: RawRecord,
    report: CheckReport,
    *,
    park: bool,
    owns: Callable[[str], bool],
    to_wake: list[str],
) -> None:
    """Check one run another definition wrote: note what it needs in ``report``, park it
    now (``park``, when this process owns it) or add it to ``to_wake`` (migrated or parked
    as it loads)."""
    fp = raw.meta.definition
    if not await engine.lineage.accepts(raw):
        report.note(ev.NEWER_DEFINITION, f"definition {fp}", raw.run_id, fp)
        return
    # Only the timers of a run written by another definition (not every timer of the
    # workflow at once: millions of them at scale).
    timers = await engine.store.list_timers(engine.name, raw.run_id)
    plan = plan_upgrade(engine, raw, timers)
    if plan.problem is not None:
        report.note(plan.kind, plan.problem, raw.run_id, fp)
        if park and raw.run_state is not RunState.PAUSED:
            if not owns(raw.run_id):
                to_wake.append(raw.run_id)  # parked by its owner, when loaded
                return
            try:
                await upgrade(engine, raw)
            except VersionConflict:
                to_wake.append(raw.run_id)  # changed meanwhile: parked when loaded
                return
            report.parked += 1
        return
    for reason in plan.reasons:
        kind = ev.REMOVED_TIMEOUT if ev.REMOVED_TIMEOUT in reason else ev.TO_MIGRATE
        report.note(kind, reason, raw.run_id, fp)
    if plan.reasons:
        to_wake.append(raw.run_id)


def refuse_if_needed(report: CheckReport, on_stranded: str) -> None:
    """Raise BuildError for a rename conflict, and for stranded runs under ``"refuse"``."""
    conflicts = [f for f in report.findings if f.problem == ev.RENAME_CONFLICT]
    stranded = [f for f in report.findings if f.stranded]
    if conflicts or (stranded and on_stranded == "refuse"):
        problems = "\n  ".join(f.describe() for f in conflicts + stranded)
        advice = (
            "map the status with retire() instead, or rename onto a new status value"
            if conflicts
            else "add rename_status/retire/upgrade_object to the builder (docs/upgrading.md), "
            "or build with on_stranded='pause' to park these runs"
        )
        raise BuildError(
            f"workflow {report.workflow_name!r}: definition {report.definition} cannot take "
            f"over its stored runs:\n  {problems}\n{advice}"
        )


async def migrate(
    engine: Engine[Any, Any],
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    owns: Callable[[str], bool] = lambda run_id: True,
) -> CheckReport:
    """Apply the definition's migrations to every unfinished run now (each in its own
    transaction), parking runs that cannot be migrated. Resumable: migrated runs carry
    this definition's fingerprint and are passed over by a second pass; a pass stopped
    half-way is simply started again. ``dry_run`` only reports."""
    await engine.lineage.register()
    report = CheckReport(engine.name, engine.fingerprint)
    after: str | None = None
    while True:
        page = await engine.store.list_runs(engine.name, _UNFINISHED, limit=PAGE, after=after)
        for raw in page:
            report.checked += 1
            await _migrate_one(engine, raw, report, dry_run, owns)
            if progress is not None:
                progress(1)
        if len(page) < PAGE:
            break
        after = page[-1].run_id
    return report


async def _migrate_one(
    engine: Engine[Any, Any],
    raw: RawRecord,
    report: CheckReport,
    dry_run: bool,
    owns: Callable[[str], bool],
) -> None:
    fp = raw.meta.definition
    if fp == engine.fingerprint:
        return
    if not await engine.lineage.accepts(raw):
        report.note(ev.NEWER_DEFINITION, f"definition {fp}", raw.run_id, fp)
        return
    timers = await engine.store.list_timers(engine.name, raw.run_id)
    plan = plan_upgrade(engine, raw, timers)
    if plan.problem is not None:
        report.note(plan.kind, plan.problem, raw.run_id, fp)
        if not dry_run and raw.run_state is not RunState.PAUSED and owns(raw.run_id):
            await _retrying_upgrade(engine, raw)
            report.parked += 1
        return
    for reason in plan.reasons:
        kind = ev.REMOVED_TIMEOUT if ev.REMOVED_TIMEOUT in reason else ev.TO_MIGRATE
        report.note(kind, reason, raw.run_id, fp)
    if plan.reasons and not dry_run:
        await _retrying_upgrade(engine, raw)


async def _retrying_upgrade(engine: Engine[Any, Any], raw: RawRecord) -> None:
    for _ in range(5):
        try:
            await upgrade(engine, raw)
            return
        except VersionConflict:
            raw = await engine.store.lookup(engine.name, raw.run_id)
    log.warning("%s: kept changing; left for its next load", engine.where(raw))
