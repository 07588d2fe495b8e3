"""The command line's store commands: runs, trigger, callback, pause/resume/cancel, graph.

They work on the workflows' stores directly, in this process, whether or not a worker
runs elsewhere: ``Workflow`` methods do the change inline when no worker runs here, and a
worker in another process picks it up from the store's event log.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TextIO

import attrs
import trio

from actorflow._model.errors import RunNotFound
from actorflow._model.record import Record
from actorflow._model.text import is_valid_text
from actorflow._runtime.evolution import UNFINISHED
from actorflow.cli.app import (
    App,
    CliError,
    UsageError,
    app_reference,
    load_app,
    loads_json,
    parse_initial,
    parse_run_states,
    parse_status,
    parse_statuses,
    read_payload,
    structure_initial,
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
    if args.from_file is not None:
        if args.foreign_id is not None:
            raise UsageError("give FOREIGN_ID or --from-file, not both")
        return trigger_from_file(args)
    if args.foreign_id is None:
        raise UsageError("give the FOREIGN_ID of the run to start (or --from-file PATH)")
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


FROM_FILE_CHUNK = 10_000
"""Lines per trigger_many call (and per progress-bar update)."""


def trigger_from_file(args: argparse.Namespace) -> int:
    """``actorflow trigger --from-file runs.jsonl``: start one run per line, in few
    transactions (``Workflow.trigger_many``), with a progress bar on stderr. Prints how
    many runs started; lines refused (bad JSON, a run in progress...) are listed on
    stderr with their line numbers, and make the exit status 1."""
    app = load_app(app_reference(args.app))
    workflow = app.pick(args.workflow)
    default_start = (
        None if args.start is None else parse_status(workflow.status_type, args.start, "--start")
    )
    lines = _LineParser(workflow, default_start, parse_initial(workflow, args.initial))
    path: str = args.from_file
    source = _open_lines(path)
    progress = _Progress(None if path == "-" else _count_lines(path))
    try:
        started, refused = trio.run(_trigger_lines, app, workflow, source, lines, progress)
    finally:
        progress.done()
        if source is not sys.stdin:
            source.close()
    for _, problem in sorted(refused):  # in file order: parse errors come out first
        print(problem, file=sys.stderr)
    _print(f"started {started:,} run(s)" + (f"; {len(refused):,} refused" if refused else ""))
    return 1 if refused else 0


def _open_lines(path: str) -> TextIO:
    """The file of ``--from-file`` ('-': stdin). Bytes that are not UTF-8 are read as
    lone surrogates, so that such a line is refused alone (see :class:`_LineParser`)."""
    try:
        if path == "-":
            if isinstance(sys.stdin, io.TextIOWrapper):
                sys.stdin.reconfigure(errors="surrogateescape")
            return sys.stdin
        # utf-8-sig: a byte order mark at the start (some Windows editors write one) is
        # no part of the first line.
        return open(path, encoding="utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise CliError(f"cannot read {path!r}: {exc.strerror or exc}") from None


def _count_lines(path: str) -> int:
    """How many runs the file asks for (its lines that are not blank): the bar's total."""
    with open(path, "rb") as counting:
        return sum(1 for line in counting if line.strip())


@attrs.frozen
class _LineParser:
    """One line of ``--from-file``: a foreign id as a JSON string, or an object with
    ``foreign_id`` and optionally ``start`` and ``initial`` (else the command's)."""

    workflow: Workflow[Any, Any]
    default_start: Any
    default_initial: Any

    def __call__(self, line: str) -> tuple[str, Any, Any]:
        if not is_valid_text(line):
            raise UsageError("not UTF-8 text")
        try:
            data = loads_json(line)
        except ValueError as exc:
            raise UsageError(f"not JSON: {exc}") from None
        if isinstance(data, str):
            return (data, self.default_start, self.default_initial)
        if not isinstance(data, dict) or "foreign_id" not in data:
            raise UsageError('expected a JSON string or an object with a "foreign_id"')
        start = data.get("start")
        if isinstance(start, str):
            start = parse_status(self.workflow.status_type, start, "start")
        initial = data.get("initial")
        if initial is not None:
            initial = structure_initial(self.workflow, initial, "initial")
        unknown = sorted(set(data) - {"foreign_id", "start", "initial"})
        if unknown:
            raise UsageError(f"unknown keys {', '.join(unknown)}")
        return (
            data["foreign_id"],
            self.default_start if start is None else start,
            self.default_initial if initial is None else initial,
        )


async def _trigger_lines(
    app: App,
    workflow: Workflow[Any, Any],
    source: Iterable[str],
    parse: Callable[[str], Any],
    progress: _Progress,
) -> tuple[int, list[tuple[int, str]]]:
    """Trigger the runs of ``source``'s lines, ``FROM_FILE_CHUNK`` at a time; returns how
    many started and the lines refused (line number, message)."""
    started, refused = 0, []
    async with _closing(app):
        chunk: list[tuple[int, Any]] = []
        for number, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                chunk.append((number, parse(line)))
            except CliError as exc:
                refused.append((number, f"line {number}: {exc}"))
                progress.advance(1)
            if len(chunk) >= FROM_FILE_CHUNK:
                started += await _trigger_chunk(workflow, chunk, refused)
                progress.advance(len(chunk))
                chunk = []
        if chunk:
            started += await _trigger_chunk(workflow, chunk, refused)
            progress.advance(len(chunk))
    return started, refused


async def _trigger_chunk(
    workflow: Workflow[Any, Any], chunk: list[tuple[int, Any]], refused: list[tuple[int, str]]
) -> int:
    results = await workflow.trigger_many([item for _, item in chunk])
    started = 0
    for (number, _), result in zip(chunk, results, strict=True):
        if isinstance(result, str):
            started += 1
        else:
            refused.append((number, f"line {number}: {result}"))
    return started


class _Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal)."""

    WIDTH = 30

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.count = 0
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def advance(self, count: int) -> None:
        self.count += count
        self._draw(end="\r" if self.tty else "\n")

    def done(self) -> None:
        if self.count and self.tty:
            print(file=sys.stderr, flush=True)  # keep the last drawing

    def _draw(self, end: str) -> None:
        rate = self.count / max(time.monotonic() - self.started, 1e-9)
        if self.total:
            share = min(self.count / self.total, 1.0)
            filled = int(share * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            text = f"[{bar}] {self.count:,}/{self.total:,} lines {share:4.0%}"
        else:
            text = f"{self.count:,} lines"
        print(f"{text}  {rate:,.0f}/s", end=end, file=sys.stderr, flush=True)


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
