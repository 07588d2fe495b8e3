"""The exceptions actorflow raises. Every one of them is an :class:`ActorflowError`."""

from __future__ import annotations


class ActorflowError(Exception):
    """Base class of every error actorflow raises on purpose."""


class BuildError(ActorflowError):
    """The workflow definition is invalid; the message says what to change."""


class WorkflowInProgress(ActorflowError):
    """``trigger`` was called while the latest run of that foreign id is unfinished."""


class RunNotFound(ActorflowError, LookupError):
    """No run matches the run id or foreign id asked for."""


class InvalidTransition(ActorflowError):
    """A run-state change that the run-state table does not allow."""


class InvalidArgument(ActorflowError, TypeError, ValueError):
    """An argument of the wrong type or value (a status outside the enum, a wrong object type)."""


class SerializationError(ActorflowError):
    """A workflow object could not be converted to or from JSON."""


class StepError(ActorflowError):
    """A step, callback or timeout function failed or returned something it may not."""


class CallbackError(StepError):
    """A callback function raised or returned an invalid result; the error was counted."""


class StoreError(ActorflowError):
    """The store failed (I/O, schema, connection); the run stays at its last committed version."""


class SchemaVersionError(StoreError):
    """The database was written by a newer actorflow than this one."""


class VersionConflict(StoreError):
    """Optimistic concurrency: the run changed since it was read. Internal; retried."""


class Lagged(ActorflowError):
    """A subscriber fell too far behind and missed changes."""


class GatewayError(ActorflowError):
    """The gateway refused a request or failed to serve it."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class StatusNotReached(ActorflowError):
    """``await_status``: the run finished without ever reaching the status."""


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C: a KeyboardInterrupt, bare or in (nested) exception groups
    next to nothing but other KeyboardInterrupts and cancellations (trio delivers SIGINT to
    the main task, whose nurseries may group it)."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    if not isinstance(exc, BaseExceptionGroup):
        return False
    interrupts, rest = exc.split(KeyboardInterrupt)
    if interrupts is None:
        return False
    return rest is None or all(type(leaf).__name__ == "Cancelled" for leaf in _leaves(rest))


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def lone_build_error(error: BaseException) -> BuildError | None:
    """The BuildError that ``error`` is, or that nested exception groups hold alone."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, BuildError) else None


ERROR_TEXT_LIMIT = 2000
"""How much of a user exception's text is kept in a record or a message."""


GROUP_SHOWN = 3
"""The exceptions of a group that ``describe_error`` names."""


def describe_error(exc: BaseException) -> str:
    """``"TypeName: text"`` of an exception raised by user code, never raising itself (an
    exception whose ``__str__`` raises would otherwise fail the code reporting it, over and
    over) and cut to ERROR_TEXT_LIMIT characters (a multi-megabyte message is not stored
    with every paused run)."""
    try:
        text = str(exc)
    except Exception:
        text = "<str() of the exception failed>"
    message = f"{type(exc).__name__}: {text}"
    if isinstance(exc, BaseExceptionGroup):
        # A nursery's group says only how many it holds: name what it holds (a step's
        # own nursery raising is common, and "1 sub-exception" tells nothing).
        shown = [describe_error(inner) for inner in exc.exceptions[:GROUP_SHOWN]]
        if len(exc.exceptions) > GROUP_SHOWN:
            shown.append(f"and {len(exc.exceptions) - GROUP_SHOWN} more")
        message += ": [" + "; ".join(shown) + "]"
    if len(message) > ERROR_TEXT_LIMIT:
        message = message[: ERROR_TEXT_LIMIT - 3] + "..."
    return message


def shown(obj: object) -> str:
    """How messages and logs show an object of the user's (an event source, say): its
    ``repr`` when its class defines one, else its class's qualified name (never a default
    repr holding a memory address, different in every process, nor a repr that raises)."""
    if type(obj).__repr__ is object.__repr__:
        return type(obj).__qualname__
    try:
        return repr(obj)[:200]
    except Exception:
        return f"{type(obj).__qualname__} (whose repr() failed)"
