"""The ``actorflow`` command line (see docs/cli.md).

Exit codes: 0 done, 1 the command failed (unknown run, refused change, store error),
2 the command line is wrong (bad MODULE:ATTR, unknown status name, missing argument),
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

import attrs

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
    broken_pipe,
    describe_error,
    exit_code_of,
    user_error,
)
from actorflow.cli.demo import demo

__all__ = ["main", "parser"]

INTERRUPTED = 130
BROKEN_PIPE = 141
"""The exit code of a command whose output was cut off by its reader (128 + SIGPIPE)."""

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """Reports mistakes as a :class:`UsageError` (one line) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


@attrs.frozen
class _Arg:
    """One argument: ``parser.add_argument(*names, **options)``."""

    names: tuple[str, ...]
    options: Mapping[str, Any]


def _arg(*names: str, **options: Any) -> _Arg:
    return _Arg(names, options)


@attrs.frozen
class _OneOf:
    """Arguments of which exactly one (``required``) or at most one may be given."""

    arguments: tuple[_Arg, ...]
    required: bool = True


@attrs.frozen
class _Command:
    """A command (or, under ``actions``, a command's actions) and its arguments."""

    name: str
    help: str
    handler: Handler | None = None
    arguments: tuple[_Arg | _OneOf, ...] = ()
    description: str | None = None
    actions: tuple[_Command, ...] = ()
    parser_options: Mapping[str, Any] = attrs.field(factory=dict)


_APP = (
    _arg(
        "--app",
        metavar="MODULE:ATTR",
        help=f"the workflows: a Workflow, a list of them or a function returning them "
        f"(default: ${APP_ENV})",
    ),
    _arg("--workflow", metavar="NAME", help="which workflow, when there are several"),
)
_JSON = _arg("--json", action="store_true", help="print JSON (the gateway's records)")
_RUN_ID = _arg("run_id", metavar="RUN_ID")

_WORKER = _Command(
    "worker",
    help="run workflows until Ctrl-C/SIGTERM (and serve the gateway, the console)",
    description="Run the workflows of MODULE:ATTR on their stores until SIGINT or SIGTERM, "
    "then stop gracefully: steps in flight finish, nothing is lost.",
    handler=_cli_worker.worker,
    arguments=(
        _arg("app", metavar="MODULE:ATTR"),
        _arg(
            "--gateway",
            metavar="HOST:PORT",
            help="also serve the websocket gateway there (port 0: any)",
        ),
        _arg(
            "--console",
            metavar="HOST:PORT",
            help="also serve the web console there (port 0: any; needs actorflow[console])",
        ),
        _arg("--token", help=f"the gateway's and the console's token (default: ${TOKEN_ENV})"),
        _arg(
            "--read-only-token",
            help=f"a second token that may look but not steer (default: ${READ_ONLY_TOKEN_ENV})",
        ),
        _arg(
            "--metrics",
            metavar="HOST:PORT",
            help="serve Prometheus /metrics, /healthz and /readyz there (port 0: any); "
            "needs actorflow[metrics]",
        ),
    ),
)

_RUNS = _Command(
    "runs",
    help="list runs, show one, its history; check and migrate them after a change",
    actions=(
        _Command(
            "list",
            help="the latest version of each run",
            handler=_cli_commands.runs_list,
            arguments=(
                *_APP,
                _arg("--foreign-id", help="only runs of this foreign id"),
                _arg(
                    "--status",
                    action="append",
                    help="only runs at this status (repeat or comma-separate)",
                ),
                _arg(
                    "--run-state",
                    action="append",
                    help="only runs in this run state, e.g. RUNNING,PAUSED "
                    "(repeat or comma-separate)",
                ),
                _arg("--limit", type=int, default=25, help="at most this many (default 25)"),
                _arg("--after", metavar="RUN_ID", help="the page after this run id"),
                _arg("--descending", action="store_true", help="newest first"),
                _JSON,
            ),
        ),
        _Command(
            "show",
            help="the latest version of a run",
            handler=_cli_commands.runs_show,
            arguments=(_RUN_ID, *_APP, _JSON),
        ),
        _Command(
            "history",
            help="every stored version of a run",
            handler=_cli_commands.runs_history,
            arguments=(_RUN_ID, *_APP, _JSON),
        ),
        _Command(
            "check",
            help="compare stored runs with the definition (exit 1 if some are stranded)",
            description="Report unfinished runs the workflow's current definition cannot "
            "move: unknown statuses, statuses without step/callback/timeout, objects that no "
            "longer fit, timers of removed timeouts, runs to migrate, runs of a newer "
            "definition.",
            handler=_cli_commands.runs_check,
            arguments=(*_APP, _JSON),
        ),
        _Command(
            "migrate",
            help="apply rename_status/retire/upgrade_object to every unfinished run now",
            description="Migrate every unfinished run to the current definition, each run in "
            "its own transaction, with a progress bar; runs that cannot be migrated are parked "
            "(PAUSED with the reason). Resumable: run it again after an interruption.",
            handler=_cli_commands.runs_migrate,
            arguments=(
                *_APP,
                _arg("--dry-run", action="store_true", help="report only, write nothing"),
                _JSON,
            ),
        ),
    ),
)

_TRIGGER = _Command(
    "trigger",
    help="start a run (prints its run id), or many from a JSON-lines file",
    handler=_cli_commands.trigger,
    arguments=(
        _arg("foreign_id", metavar="FOREIGN_ID", nargs="?"),
        *_APP,
        _arg("--start", metavar="STATUS", help="start at this status"),
        _arg("--initial", metavar="JSON", help="the initial object as JSON"),
        _arg(
            "--from-file",
            metavar="PATH",
            help="start one run per line of a JSON-lines file ('-': stdin): a foreign id as "
            'a JSON string, or {"foreign_id": ..., "start": ..., "initial": {...}}',
        ),
    ),
)

_CALLBACK = _Command(
    "callback",
    help="hand a payload to the callback of a run waiting at STATUS",
    handler=_cli_commands.callback,
    arguments=(
        _arg("foreign_id", metavar="FOREIGN_ID"),
        _arg("status", metavar="STATUS"),
        *_APP,
        _OneOf(
            (
                _arg("--data", metavar="TEXT", help="the payload (UTF-8)"),
                _arg("--file", metavar="PATH", help="read the payload from a file (- for stdin)"),
            )
        ),
    ),
)

_CONTROLS = tuple(
    _Command(
        name,
        help=what,
        handler=_cli_commands.control,
        arguments=(_RUN_ID, *_APP, _arg("--reason", help="why (stored with the run)")),
    )
    for name, what in (
        ("pause", "pause a run"),
        ("resume", "resume a paused run"),
        ("cancel", "cancel an unfinished run"),
    )
)

_GRAPH = _Command(
    "graph",
    help="print the Mermaid state diagram",
    handler=_cli_commands.graph,
    arguments=(
        _arg("app", metavar="MODULE:ATTR"),
        _arg("--workflow", metavar="NAME", help="only this workflow"),
    ),
)

_WATCH = _Command(
    "watch",
    help="print runs changing, live, through a gateway",
    handler=_cli_worker.watch,
    arguments=(
        _arg("--url", required=True, help="the gateway, e.g. ws://127.0.0.1:8765/"),
        _arg("--token", help=f"the gateway's token (default: ${TOKEN_ENV})"),
        _arg("--workflow", metavar="NAME", help="only this workflow (default: all)"),
        _arg("--foreign-id", help="only runs of this foreign id"),
        _arg("--count", type=int, metavar="N", help="exit after N changes"),
        _JSON,
    ),
)

_DEMO = _Command(
    "demo",
    help="the order-processing demo (options: actorflow demo --help)",
    # every argument goes to the demo's own command line (main() hands them over)
    parser_options={"add_help": False, "prefix_chars": "\0"},
)

_COMMANDS = (_WORKER, _RUNS, _TRIGGER, _CALLBACK, *_CONTROLS, _GRAPH, _WATCH, _DEMO)


def _add_arguments(parser: argparse.ArgumentParser, arguments: Sequence[_Arg | _OneOf]) -> None:
    for argument in arguments:
        if isinstance(argument, _OneOf):
            group = parser.add_mutually_exclusive_group(required=argument.required)
            for choice in argument.arguments:
                group.add_argument(*choice.names, **choice.options)
        else:
            parser.add_argument(*argument.names, **argument.options)


def _add_commands(
    parser: argparse.ArgumentParser, commands: Sequence[_Command], *, dest: str, metavar: str
) -> None:
    """The sub-commands of ``parser``, recursively; each sets ``handler`` (None: demo)."""
    subparsers = parser.add_subparsers(dest=dest, metavar=metavar, parser_class=_Parser)
    subparsers.required = True
    for command in commands:
        options = dict(command.parser_options)
        if command.description is not None:
            options["description"] = command.description
        sub = subparsers.add_parser(command.name, help=command.help, **options)
        _add_arguments(sub, command.arguments)
        if command.actions:
            _add_commands(sub, command.actions, dest=f"{command.name}_command", metavar="ACTION")
        else:
            sub.set_defaults(handler=command.handler)


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
    _add_commands(top, _COMMANDS, dest="command", metavar="COMMAND")
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
        if broken_pipe(exc):  # `... | head` stopped reading: quietly, as SIGPIPE would
            with contextlib.suppress(OSError):  # nothing more may reach the closed pipe
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return BROKEN_PIPE
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
