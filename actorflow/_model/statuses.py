"""Reading a status from what a caller gave: one parser for every entry point.

Python callers (``Workflow`` methods, ``af.connect``, ``Builder``) give a member or its int
value; text entry points (the gateway, the CLI) may also give its name, in any case. Each
caller wraps the ``ValueError`` in its own error type (InvalidArgument, BuildError, ...).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from typing import TypeVar, cast

E = TypeVar("E", bound=enum.IntEnum)


@functools.cache
def _by_value(status_type: type[enum.IntEnum]) -> Mapping[int, enum.IntEnum]:
    return {int(member): member for member in status_type}


def member_of(status_type: type[E], value: int) -> E | None:
    """The member of ``status_type`` whose value is ``value``, or None. The enum's own
    lookup (``status_type(value)``) is not used: a ``_missing_`` of the user's enum could
    raise anything, or answer a member of another value (a catch-all ``UNKNOWN``), which
    would hand a callback, a wait or a count to a status that was not asked for."""
    return cast("E | None", _by_value(status_type).get(value))


def members_text(status_type: type[enum.IntEnum]) -> str:
    """``A=1, B=2``: the members, for error messages."""
    return ", ".join(f"{m.name}={m.value}" for m in status_type)


def parse_status(status_type: type[E], value: object, *, by_name: bool = False) -> E:
    """The member of ``status_type`` that ``value`` stands for.

    Args:
        status_type: the workflow's status enum.
        value: a member, its int value, or (``by_name``) its name in any case or its int
            value as text.
        by_name: accept names and numbers as text (the gateway and the CLI).

    Raises:
        ValueError: ``value`` stands for no member; the message says why, without a subject
            (callers prefix what it was: ``"workflow 'x': status " + message``).
    """
    name = status_type.__name__
    if isinstance(value, enum.Enum) and not isinstance(value, status_type):
        raise ValueError(
            f"{value!r} is not a {name}: it is a {type(value).__name__}, not a member of "
            f"{name} ({members_text(status_type)})"
        )
    if by_name and isinstance(value, str):
        text = value.strip()
        member = status_type.__members__.get(text) or status_type.__members__.get(text.upper())
        if member is not None:
            return member
        if not text.lstrip("-").isdigit():
            raise ValueError(f"{value!r} is not a member of {name} ({members_text(status_type)})")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a {name}, not {value!r} ({members_text(status_type)})")
    member = member_of(status_type, value)
    if member is None:
        raise ValueError(f"{value!r} is not a member of {name} ({members_text(status_type)})")
    return member
