"""Command line plumbing: errors with exit codes, loading ``MODULE:ATTR``, reading arguments.

Everything here is synchronous and free of trio so that argument mistakes are reported
before any event loop starts.
"""

from __future__ import annotations

import enum
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, final

from actorflow._model.codec import structure_json
from actorflow._model.errors import ActorflowError, BuildError, InvalidArgument
from actorflow._model.run_state import RunState
from actorflow._model.statuses import parse_status as _parse_status
from actorflow.workflow import Workflow

USAGE: Final = 2
"""Exit code for a mistake in the command line (wrong argument, unknown name)."""
FAILURE: Final = 1
"""Exit code for a command that could not do what it was asked (unknown run, refused)."""

APP_ENV: Final = "ACTORFLOW_APP"
TOKEN_ENV: Final = "ACTORFLOW_TOKEN"
READ_ONLY_TOKEN_ENV: Final = "ACTORFLOW_READ_ONLY_TOKEN"


class CliError(Exception):
    """A user error: reported as one line on stderr, then the process exits with ``code``."""

    def __init__(self, message: str, code: int = FAILURE) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    """The command line is wrong (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, USAGE)


def exit_code_of(exc: BaseException) -> int | None:
    """The exit code for a user error, or None for anything that is a bug."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, InvalidArgument | BuildError):
        return USAGE
    # RunNotFound, InvalidTransition, WorkflowInProgress, CallbackError, StoreError,
    # GatewayError...: the command was well formed but could not be done.
    if isinstance(exc, ActorflowError | OSError | TimeoutError):
        return FAILURE
    return None


def user_error(exc: BaseException) -> BaseException | None:
    """The user error inside ``exc`` (unwrapping exception groups), or None.

    A group counts as a user error when every exception in it is one; the first is
    reported.
    """
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        if leaves and all(exit_code_of(leaf) is not None for leaf in leaves):
            return leaves[0]
        return None
    return exc if exit_code_of(exc) is not None else None


def broken_pipe(exc: BaseException) -> bool:
    """Whether ``exc`` is (or holds only) the reader of standard output going away, as
    ``actorflow runs list | head`` does: not an error of the command."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = _leaves(exc)
        return bool(leaves) and all(isinstance(leaf, BrokenPipeError) for leaf in leaves)
    return isinstance(exc, BrokenPipeError)


def _leaves(group: BaseExceptionGroup[BaseException]) -> Sequence[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def describe_error(exc: BaseException) -> str:
    """The one line printed for a user error."""
    text = str(exc).strip()
    if not text:
        text = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
    return " ".join(text.split())


# -- loading the application ------------------------------------------------------------------


@final
class App:
    """The workflows named by a ``MODULE:ATTR`` reference."""

    def __init__(self, reference: str, workflows: list[Workflow[Any, Any]]) -> None:
        self.reference = reference
        self.workflows = workflows

    @property
    def names(self) -> list[str]:
        return [w.name for w in self.workflows]

    def pick(self, name: str | None) -> Workflow[Any, Any]:
        """The workflow called ``name``; without a name, the only one."""
        if name is None:
            if len(self.workflows) == 1:
                return self.workflows[0]
            raise UsageError(
                f"{self.reference} has {len(self.workflows)} workflows "
                f"({', '.join(self.names)}); choose one with --workflow NAME"
            )
        for workflow in self.workflows:
            if workflow.name == name:
                return workflow
        raise UsageError(
            f"{self.reference} has no workflow named {name!r}; it has {', '.join(self.names)}"
        )

    def stores(self) -> list[Any]:
        """Each distinct store of the workflows, once."""
        seen: list[Any] = []
        for workflow in self.workflows:
            if not any(store is workflow.store for store in seen):
                seen.append(workflow.store)
        return seen


def app_reference(value: str | None) -> str:
    """The ``--app`` value, or the ``ACTORFLOW_APP`` environment variable."""
    reference = value or os.environ.get(APP_ENV)
    if not reference:
        raise UsageError(
            f"which workflows? give --app MODULE:ATTR (or set {APP_ENV}), "
            "e.g. --app myproject.orders:workflow"
        )
    return reference


def load_app(reference: str) -> App:
    """Import ``MODULE:ATTR`` and return its workflows.

    ATTR may be a Workflow, a list or tuple of Workflows, or a callable taking no
    arguments that returns either. The current directory is importable, as it is for
    ``python -m``.

    Raises:
        UsageError: the reference is malformed, or names no module or attribute.
        CliError: importing the module failed, or ATTR holds no workflows.
    """
    module_name, sep, attr_path = reference.partition(":")
    if not sep or not module_name or not attr_path:
        raise UsageError(
            f"{reference!r} is not MODULE:ATTR; write it like myproject.orders:workflow"
        )
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise UsageError(
                f"cannot import {module_name!r}: no module named {missing!r} "
                f"(looked in the current directory {cwd} and the Python path)"
            ) from None
        raise CliError(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    value: Any = module
    for part in attr_path.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if callable(value) and not isinstance(value, Workflow):
        try:
            value = value()
        except Exception as exc:
            raise CliError(f"calling {reference} failed: {type(exc).__name__}: {exc}") from None
    workflows: list[Workflow[Any, Any]]
    if isinstance(value, Workflow):
        workflows = [value]
    elif isinstance(value, list | tuple) and value and all(isinstance(w, Workflow) for w in value):
        workflows = list(value)
    else:
        raise CliError(
            f"{reference} is {_kind(value)}, not a Workflow, a list of Workflows or a "
            "function returning them"
        )
    names = [w.name for w in workflows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CliError(f"{reference} has two workflows named {duplicates[0]!r}")
    return App(reference, workflows)


def _kind(value: object) -> str:
    if isinstance(value, list | tuple) and not value:
        return f"an empty {type(value).__name__}"
    return f"a {type(value).__name__}"


# -- arguments --------------------------------------------------------------------------------


def parse_status(status_type: type[enum.IntEnum], text: str, what: str = "status") -> enum.IntEnum:
    """A status given by name (any case) or integer value."""
    try:
        return _parse_status(status_type, text, by_name=True)
    except ValueError as exc:
        raise UsageError(f"{what} {exc}") from None


def parse_statuses(
    status_type: type[enum.IntEnum], values: Sequence[str] | None, what: str = "status"
) -> list[enum.IntEnum] | None:
    """Statuses from repeated and/or comma-separated options; None when none were given."""
    if not values:
        return None
    found: list[enum.IntEnum] = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                found.append(parse_status(status_type, part, what))
    if not found:  # an empty option names nothing; it must not mean "any"
        raise UsageError(f"--{what.replace(' ', '-')} {values[0]!r} names no {what}")
    return found


def parse_run_states(values: Sequence[str] | None) -> list[RunState] | None:
    states = parse_statuses(RunState, values, "run state")
    return None if states is None else [RunState(s) for s in states]


def parse_host_port(text: str, option: str = "--gateway") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6, ``:PORT`` for 127.0.0.1)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise UsageError(f"{option} {text!r} is not HOST:PORT, e.g. 127.0.0.1:8765")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise UsageError(f"{option} {text!r}: the port must be a number from 0 to 65535")
    return host, port


def parse_initial(workflow: Workflow[Any, Any], text: str | None) -> Any:
    """The initial object from its JSON text (None: the type's defaults), structured
    strictly: wrong types and unknown members are refused, naming the field path."""
    if text is None:
        return None
    try:
        data = loads_json(text)
    except ValueError as exc:
        raise UsageError(f"--initial is not valid JSON: {exc}") from None
    return structure_initial(workflow, data, "--initial")


def loads_json(text: str) -> Any:
    """JSON text given to a command (``--initial``, a line of ``--from-file``).

    Raises:
        ValueError: it is not JSON: malformed, a NaN or an infinity, or nested too deeply
            to read (``[[[...]]]``: a RecursionError inside ``json``).
    """
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("it is nested too deeply to read") from None


def structure_initial(workflow: Workflow[Any, Any], data: Any, what: str) -> Any:
    """The initial object from decoded JSON ``data`` (a JSON object)."""
    if not isinstance(data, dict):
        raise UsageError(f"{what} must be a JSON object, not {type(data).__name__}")
    try:
        return structure_json(data, workflow.object_type, "initial")
    except InvalidArgument as exc:
        raise UsageError(f"{what}: {exc}") from None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def read_payload(data: str | None, file: str | None) -> bytes:
    """The callback payload: ``--data TEXT``, ``--file PATH``, or ``--file -`` for stdin."""
    if (data is None) == (file is None):
        raise UsageError(
            "give the payload with exactly one of --data TEXT or --file PATH (- for stdin)"
        )
    if data is not None:
        # The bytes given on the command line, also when they are not UTF-8 (Python reads
        # those as lone surrogates, which str.encode refuses).
        return os.fsencode(data)
    assert file is not None
    if file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(file).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --file {file}: {exc.strerror or exc}") from None


def token_from(value: str | None, env: str = TOKEN_ENV, option: str = "--token") -> str | None:
    """``--token``, or the ``ACTORFLOW_TOKEN`` environment variable (``env``).

    An empty ``--token ''`` (say, ``--token "$SECRET"`` with SECRET unset) is a UsageError,
    never a gateway without a token."""
    if value is not None and not value:
        raise UsageError(f"{option} is empty; give the token, or leave {option} out")
    return value or os.environ.get(env) or None
