"""The ``actorflow`` command line (see docs/cli.md).

Exit codes: 0 done, 1 the command failed (unknown run, refused change, store error),
2 the command line is wrong (bad MODULE:ATTR, unknown status name, missing argument),
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from actorflow._model.errors import is_interrupt
from actorflow.cli import commands as _cli_commands
from actorflow.cli import worker as _cli_worker
from actorflow.cli.app import (
    APP_ENV,
    FAILURE,
    READ_ONLY_TOKEN_ENV,
    TOKEN_ENV,
    USAGE,
    UsageError,
    describe_error,
    exit_code_of,
    user_error,
)
from actorflow.cli.demo import demo

__all__ = ["main", "parser"]

INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """Reports mistakes as a :class:`UsageError` (one line) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


def _app_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help=f"the workflows: a Workflow, a list of them or a function returning them "
        f"(default: ${APP_ENV})",
    )
    parser.add_argument("--workflow", metavar="NAME", help="which workflow, when there are several")


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (the gateway's records)")


def parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    top = _Parser(
        prog="actorflow",
        description="Durable, typed workflows on trio: run workers, inspect and change runs.",
        epilog="Statuses and run states are accepted by name or number. Docs: docs/cli.md",
    )
    top.add_argument(
        "--traceback", action="store_true", help="show the full traceback of errors (debugging)"
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    worker = commands.add_parser(
        "worker",
        help="run workflows until Ctrl-C/SIGTERM (and serve the gateway, the console)",
        description="Run the workflows of MODULE:ATTR on their stores until SIGINT or SIGTERM, "
        "then stop gracefully: steps in flight finish, nothing is lost.",
    )
    worker.add_argument("app", metavar="MODULE:ATTR")
    worker.add_argument(
        "--gateway",
        metavar="HOST:PORT",
        help="also serve the websocket gateway there (port 0: any)",
    )
    worker.add_argument(
        "--console",
        metavar="HOST:PORT",
        help="also serve the web console there (port 0: any; needs actorflow[console])",
    )
    worker.add_argument(
        "--token", help=f"the gateway's and the console's token (default: ${TOKEN_ENV})"
    )
    worker.add_argument(
        "--read-only-token",
        help=f"a second token that may look but not steer (default: ${READ_ONLY_TOKEN_ENV})",
    )
    worker.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics, /healthz and /readyz there (port 0: any); "
        "needs actorflow[metrics]",
    )
    worker.set_defaults(handler=_cli_worker.worker)

    runs = commands.add_parser(
        "runs", help="list runs, show one, its history; check and migrate them after a change"
    )
    runs_commands = runs.add_subparsers(dest="runs_command", metavar="ACTION", parser_class=_Parser)
    runs_commands.required = True
    listing = runs_commands.add_parser("list", help="the latest version of each run")
    _app_option(listing)
    listing.add_argument("--foreign-id", help="only runs of this foreign id")
    listing.add_argument(
        "--status", action="append", help="only runs at this status (repeat or comma-separate)"
    )
    listing.add_argument(
        "--run-state",
        action="append",
        help="only runs in this run state, e.g. RUNNING,PAUSED (repeat or comma-separate)",
    )
    listing.add_argument("--limit", type=int, default=25, help="at most this many (default 25)")
    listing.add_argument("--after", metavar="RUN_ID", help="the page after this run id")
    listing.add_argument("--descending", action="store_true", help="newest first")
    _json_option(listing)
    listing.set_defaults(handler=_cli_commands.runs_list)
    show = runs_commands.add_parser("show", help="the latest version of a run")
    show.add_argument("run_id", metavar="RUN_ID")
    _app_option(show)
    _json_option(show)
    show.set_defaults(handler=_cli_commands.runs_show)
    history = runs_commands.add_parser("history", help="every stored version of a run")
    history.add_argument("run_id", metavar="RUN_ID")
    _app_option(history)
    _json_option(history)
    history.set_defaults(handler=_cli_commands.runs_history)
    check = runs_commands.add_parser(
        "check",
        help="compare stored runs with the definition (exit 1 if some are stranded)",
        description="Report unfinished runs the workflow's current definition cannot move: "
        "unknown statuses, statuses without step/callback/timeout, objects that no longer "
        "fit, timers of removed timeouts, runs to migrate, runs of a newer definition.",
    )
    _app_option(check)
    _json_option(check)
    check.set_defaults(handler=_cli_commands.runs_check)
    migrate = runs_commands.add_parser(
        "migrate",
        help="apply rename_status/retire/upgrade_object to every unfinished run now",
        description="Migrate every unfinished run to the current definition, each run in its "
        "own transaction, with a progress bar; runs that cannot be migrated are parked "
        "(PAUSED with the reason). Resumable: run it again after an interruption.",
    )
    _app_option(migrate)
    migrate.add_argument("--dry-run", action="store_true", help="report only, write nothing")
    _json_option(migrate)
    migrate.set_defaults(handler=_cli_commands.runs_migrate)

    trigger = commands.add_parser(
        "trigger", help="start a run (prints its run id), or many from a JSON-lines file"
    )
    trigger.add_argument("foreign_id", metavar="FOREIGN_ID", nargs="?")
    _app_option(trigger)
    trigger.add_argument("--start", metavar="STATUS", help="start at this status")
    trigger.add_argument("--initial", metavar="JSON", help="the initial object as JSON")
    trigger.add_argument(
        "--from-file",
        metavar="PATH",
        help="start one run per line of a JSON-lines file ('-': stdin): a foreign id as a "
        'JSON string, or {"foreign_id": ..., "start": ..., "initial": {...}}',
    )
    trigger.set_defaults(handler=_cli_commands.trigger)

    callback = commands.add_parser(
        "callback", help="hand a payload to the callback of a run waiting at STATUS"
    )
    callback.add_argument("foreign_id", metavar="FOREIGN_ID")
    callback.add_argument("status", metavar="STATUS")
    _app_option(callback)
    payload = callback.add_mutually_exclusive_group(required=True)
    payload.add_argument("--data", metavar="TEXT", help="the payload (UTF-8)")
    payload.add_argument(
        "--file", metavar="PATH", help="read the payload from a file (- for stdin)"
    )
    callback.set_defaults(handler=_cli_commands.callback)

    for name, what in (
        ("pause", "pause a run"),
        ("resume", "resume a paused run"),
        ("cancel", "cancel an unfinished run"),
    ):
        control = commands.add_parser(name, help=what)
        control.add_argument("run_id", metavar="RUN_ID")
        _app_option(control)
        control.add_argument("--reason", help="why (stored with the run)")
        control.set_defaults(handler=_cli_commands.control)

    graph = commands.add_parser("graph", help="print the Mermaid state diagram")
    graph.add_argument("app", metavar="MODULE:ATTR")
    graph.add_argument("--workflow", metavar="NAME", help="only this workflow")
    graph.set_defaults(handler=_cli_commands.graph)

    watch = commands.add_parser("watch", help="print runs changing, live, through a gateway")
    watch.add_argument("--url", required=True, help="the gateway, e.g. ws://127.0.0.1:8765/")
    watch.add_argument("--token", help=f"the gateway's token (default: ${TOKEN_ENV})")
    watch.add_argument("--workflow", metavar="NAME", help="only this workflow (default: all)")
    watch.add_argument("--foreign-id", help="only runs of this foreign id")
    watch.add_argument("--count", type=int, metavar="N", help="exit after N changes")
    _json_option(watch)
    watch.set_defaults(handler=_cli_worker.watch)

    commands.add_parser(
        "demo",
        help="the order-processing demo (options: actorflow demo --help)",
        add_help=False,
        prefix_chars="\0",  # every argument goes to the demo's own command line
    ).set_defaults(handler=None)
    return top


class _LogLines(logging.Formatter):
    """``actorflow: warning: <message>``, one line: the traceback of a logged error only
    with ``--traceback`` (the message already names the exception)."""

    def __init__(self, tracebacks: bool) -> None:
        super().__init__("actorflow: %(levelname)s: %(message)s")
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        if not self.tracebacks:
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return super().format(record)


@contextlib.contextmanager
def _logging(command: str | None, tracebacks: bool) -> Iterator[None]:
    """Log lines on stderr while the command runs, unless the application set up logging.

    A worker logs warnings (step errors, retries); a one-shot command only errors, as it
    reports its own failure in one line (a failing callback is logged as a warning too).
    """
    root = logging.getLogger()
    library = logging.getLogger("actorflow")
    if root.handlers or library.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogLines(tracebacks))
    handler.setLevel(logging.WARNING if command == "worker" or tracebacks else logging.ERROR)
    level = root.level
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it).

    Errors are one line on stderr; tracebacks (of the error, and of errors logged on the
    way) only with ``--traceback``.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    show_traceback = False
    try:
        top = parser()
        args, extra = top.parse_known_args(args_list)
        show_traceback = args.traceback
        if args.command == "demo":
            return demo(extra)
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see: actorflow --help)")
        handler: Handler = args.handler
        with _logging(args.command, show_traceback):
            return handler(args)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        if is_interrupt(exc):  # Ctrl-C: one line, no traceback, exit 130
            print("actorflow: interrupted", file=sys.stderr, flush=True)
            return INTERRUPTED
        error = user_error(exc)
        if show_traceback:
            traceback.print_exception(exc)
        if error is None:
            # A bug (ours or the application's): still one line, the rest on request.
            print(
                f"actorflow: error: unexpected {type(exc).__name__}: {describe_error(exc)}"
                + ("" if show_traceback else " (run again with --traceback to see where)"),
                file=sys.stderr,
                flush=True,
            )
            return FAILURE
        code = exit_code_of(error)
        print(f"actorflow: error: {describe_error(error)}", file=sys.stderr, flush=True)
        return USAGE if code is None else code


if __name__ == "__main__":
    sys.exit(main())
