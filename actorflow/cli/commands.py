"""The command line's store commands: runs, trigger, callback, pause/resume/cancel, graph.

They work on the workflows' stores directly, in this process, whether or not a worker
runs elsewhere: ``Workflow`` methods do the change inline when no worker runs here, and a
worker in another process picks it up from the store's event log.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from actorflow._model.errors import RunNotFound
from actorflow._model.record import Record
from actorflow._runtime.evolution import UNFINISHED
from actorflow.cli.app import (
    App,
    CliError,
    UsageError,
    app_reference,
    load_app,
    parse_initial,
    parse_run_states,
    parse_status,
    parse_statuses,
    read_payload,
)
from actorflow.cli.format import (
    dumps,
    history_table,
    progress_bar,
    runs_table,
    short,
    show_record,
    to_json,
)
from actorflow.workflow import Workflow


def _print(text: str) -> None:
    print(text, flush=True)


@asynccontextmanager
async def _closing(app: App) -> AsyncIterator[None]:
    """Close the app's stores at the end (the SQLite store checkpoints its log)."""
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            for store in app.stores():
                await store.aclose()


async def _find_run(
    app: App, name: str | None, run_id: str
) -> tuple[Workflow[Any, Any], Record[Any, Any]]:
    """The workflow holding ``run_id`` and the run's latest version."""
    if name is not None or len(app.workflows) == 1:
        workflow = app.pick(name)
        return workflow, await workflow.lookup(run_id)
    found = []
    for workflow in app.workflows:
        try:
            found.append((workflow, await workflow.lookup(run_id)))
        except RunNotFound:
            continue
    if not found:
        raise CliError(f"no run {run_id!r} in {', '.join(app.names)}")
    if len(found) > 1:
        raise UsageError(
            f"run {run_id!r} exists in {', '.join(w.name for w, _ in found)}; "
            "choose one with --workflow NAME"
        )
    return found[0]


# -- graph ------------------------------------------------------------------------------------


def graph(args: argparse.Namespace) -> int:
    """``actorflow graph MODULE:ATTR``: print each workflow's Mermaid state diagram."""
    app = load_app(args.app)
    workflows = [app.pick(args.workflow)] if args.workflow else app.workflows
    texts = []
    for workflow in workflows:
        text = workflow.graph()
        if len(workflows) > 1:
            text = f"%% workflow {workflow.name}\n{text}"
        texts.append(text.rstrip("\n"))
    _print("\n\n".join(texts))
    return 0


# -- runs ---------------------------------------------------------------------------------------


def runs_list(args: argparse.Namespace) -> int:
    app = load_app(app_reference(args.app))
    workflow = app.pick(args.workflow)
    statuses = parse_statuses(workflow.status_type, args.status)
    run_states = parse_run_states(args.run_state)
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, not {args.limit}")

    async def main() -> list[dict[str, Any]]:
        async with _closing(app):
            records = await workflow.list_runs(
                foreign_id=args.foreign_id,
                status=statuses,
                run_state=run_states,
                limit=args.limit,
                after=args.after,
                descending=args.descending,
            )
            return [to_json(workflow, r) for r in records]

    records = trio.run(main)
    if args.json:
        _print(dumps(records, indent=2))
    elif records:
        _print(runs_table(records))
    else:
        print(f"no runs of {workflow.name} match", file=sys.stderr)
    if len(records) == args.limit and not args.json:
        print(f"(more may follow: --after {records[-1]['run_id']})", file=sys.stderr)
    return 0


def runs_show(args: argparse.Namespace) -> int:
    app = load_app(app_reference(args.app))

    async def main() -> dict[str, Any]:
        async with _closing(app):
            workflow, record = await _find_run(app, args.workflow, args.run_id)
            return to_json(workflow, record)

    record = trio.run(main)
    _print(dumps(record, indent=2) if args.json else show_record(record))
    return 0


def runs_history(args: argparse.Namespace) -> int:
    app = load_app(app_reference(args.app))

    async def main() -> list[dict[str, Any]]:
        async with _closing(app):
            workflow, _ = await _find_run(app, args.workflow, args.run_id)
            return [to_json(workflow, r) for r in await workflow.history(args.run_id)]

    records = trio.run(main)
    _print(dumps(records, indent=2) if args.json else history_table(records))
    return 0


# -- evolution: check and migrate (docs/upgrading.md) --------------------------------------------


def _chosen(app: App, name: str | None) -> list[Workflow[Any, Any]]:
    return [app.pick(name)] if name is not None else list(app.workflows)


def runs_check(args: argparse.Namespace) -> int:
    """Compare the stored unfinished runs with each workflow's definition; exit 1 when some
    runs are stranded (a deploy gate), 0 otherwise."""
    app = load_app(app_reference(args.app))

    async def main() -> list[Any]:
        async with _closing(app):
            return [await w.check() for w in _chosen(app, args.workflow)]

    reports = trio.run(main)
    if args.json:
        _print(dumps([r.to_dict() for r in reports], indent=2))
    else:
        for report in reports:
            _print(str(report))
    return 1 if any(r.stranded for r in reports) else 0


def runs_migrate(args: argparse.Namespace) -> int:
    """Apply rename_status/retire/upgrade_object to every unfinished run now, with a
    progress bar; resumable (run it again after an interruption)."""
    app = load_app(app_reference(args.app))
    workflows = _chosen(app, args.workflow)

    async def main() -> list[Any]:
        reports = []
        async with _closing(app):
            for workflow in workflows:
                verb = "checking" if args.dry_run else "migrating"
                counts = await workflow.count_runs(run_state=UNFINISHED)
                total = sum(counts.values())
                label = f"{workflow.name}: {verb}"
                with progress_bar(label, total, quiet=args.json) as advance:
                    reports.append(await workflow.migrate(dry_run=args.dry_run, progress=advance))
        return reports

    reports = trio.run(main)
    if args.json:
        _print(dumps([r.to_dict() for r in reports], indent=2))
    else:
        for report in reports:
            _print(("dry run, nothing written: " if args.dry_run else "") + str(report))
    return 0


# -- changing runs ------------------------------------------------------------------------------


def trigger(args: argparse.Namespace) -> int:
    """Start a run; print its run id (and nothing else, for scripts)."""
    app = load_app(app_reference(args.app))
    workflow = app.pick(args.workflow)
    start = (
        None if args.start is None else parse_status(workflow.status_type, args.start, "--start")
    )
    initial = parse_initial(workflow, args.initial)

    async def main() -> str:
        async with _closing(app):
            run_id: str = await workflow.trigger(args.foreign_id, start, initial=initial)
            return run_id

    _print(trio.run(main))
    return 0


def callback(args: argparse.Namespace) -> int:
    """Hand a payload to the callback at STATUS of the latest run of FOREIGN_ID."""
    app = load_app(app_reference(args.app))
    workflow = app.pick(args.workflow)
    status = parse_status(workflow.status_type, args.status)
    payload = read_payload(args.data, args.file)

    async def main() -> dict[str, Any]:
        async with _closing(app):
            record = await workflow.callback(args.foreign_id, status, payload)
            if record is not None:
                return to_json(workflow, record)
            latest = await workflow.latest(args.foreign_id)
            raise CliError(
                f"nothing happened: the latest run of {args.foreign_id!r} ({latest.run_id}) is "
                f"at {latest.status.name}, {latest.run_state.name}, not waiting at {status.name}"
            )

    _print(short(trio.run(main)))
    return 0


def control(args: argparse.Namespace) -> int:
    """``pause``, ``resume`` or ``cancel`` a run."""
    app = load_app(app_reference(args.app))
    action: str = args.command

    async def main() -> dict[str, Any]:
        async with _closing(app):
            workflow, _ = await _find_run(app, args.workflow, args.run_id)
            method = {"pause": workflow.pause, "resume": workflow.resume, "cancel": workflow.cancel}
            reason = (
                args.reason
                or {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
            )
            return to_json(workflow, await method[action](args.run_id, reason))

    _print(short(trio.run(main)))
    return 0
