"""The list_runs/count_runs filter (:class:`RunFilter`), checked once by the caller that
builds it and handed to every store as it is."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import attrs

from actorflow._model.errors import InvalidArgument
from actorflow._model.record import RawRecord
from actorflow._model.run_state import RunState

MAX_PAGE = 10_000

ForeignIds = str | Sequence[str]
"""One foreign id, or a sequence of them (a run matches any)."""


def check_limit(limit: int) -> int:
    """A page size: an int from 1 to ``MAX_PAGE``; InvalidArgument otherwise."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"limit must be an int from 1 to {MAX_PAGE}, not {limit!r}")
    return limit


@attrs.frozen
class RunFilter:
    """A checked list_runs/count_runs filter; a None field means 'any' (``RunFilter()``
    matches every run). Build one from caller arguments with :meth:`make`, which checks
    them.

    ``foreign_ids`` is a tuple (empty: nothing matches); ``created_after`` is inclusive,
    ``created_before`` exclusive; ``foreign_id_prefix`` matches ids that start with it.
    """

    foreign_ids: tuple[str, ...] | None = None
    statuses: frozenset[int] | None = None
    run_states: frozenset[RunState] | None = None
    foreign_id_prefix: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    @classmethod
    def make(
        cls,
        *,
        foreign_id: ForeignIds | None = None,
        status: int | Sequence[int] | None = None,
        run_state: RunState | Sequence[RunState] | None = None,
        foreign_id_prefix: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> RunFilter:
        """The filter of these arguments (None: any). Raises InvalidArgument."""
        foreign_ids: tuple[str, ...] | None = None
        if isinstance(foreign_id, str):
            foreign_ids = (foreign_id,)
        elif foreign_id is not None:
            if not isinstance(foreign_id, Sequence) or not all(
                isinstance(f, str) for f in foreign_id
            ):
                raise InvalidArgument(
                    f"foreign_id must be a string or a sequence of strings, not {foreign_id!r}"
                )
            foreign_ids = tuple(dict.fromkeys(foreign_id))
        if foreign_id_prefix is not None and (
            not isinstance(foreign_id_prefix, str) or not foreign_id_prefix
        ):
            raise InvalidArgument(
                f"foreign_id_prefix must be a non-empty string, not {foreign_id_prefix!r}"
            )
        for name, moment in (("created_after", created_after), ("created_before", created_before)):
            if moment is not None and (
                not isinstance(moment, datetime)
                or moment.utcoffset() is None
                or not _in_utc_range(moment)
            ):
                raise InvalidArgument(
                    f"{name} must be a timezone-aware datetime within the years 1-9999 in "
                    f"UTC, not {moment!r}"
                )
        statuses = None
        if status is not None:
            statuses = frozenset([int(status)] if isinstance(status, int) else map(int, status))
        run_states = None
        if run_state is not None:
            try:
                if isinstance(run_state, int):
                    run_states = frozenset([_run_state(run_state)])
                else:
                    run_states = frozenset(_run_state(s) for s in run_state)
            except (ValueError, TypeError):
                raise InvalidArgument(
                    f"run_state must be an af.RunState or a sequence of them, not {run_state!r}"
                ) from None
        return cls(
            foreign_ids, statuses, run_states, foreign_id_prefix, created_after, created_before
        )

    @property
    def foreign_id(self) -> str | None:
        """The one foreign id asked for, when exactly one was."""
        if self.foreign_ids is not None and len(self.foreign_ids) == 1:
            return self.foreign_ids[0]
        return None

    def matches(self, record: RawRecord) -> bool:
        return (
            (self.foreign_ids is None or record.foreign_id in self.foreign_ids)
            and (self.statuses is None or record.status in self.statuses)
            and (self.run_states is None or record.run_state in self.run_states)
            and (
                self.foreign_id_prefix is None
                or record.foreign_id.startswith(self.foreign_id_prefix)
            )
            and (self.created_after is None or record.created_at >= self.created_after)
            and (self.created_before is None or record.created_at < self.created_before)
        )


def _run_state(value: int) -> RunState:
    """The RunState ``value`` stands for (a member or its int value); True and False are
    not run states (``RunState(True)`` would be INITIATED)."""
    if isinstance(value, bool):
        raise TypeError(value)
    return RunState(value)


def _in_utc_range(moment: datetime) -> bool:
    """Whether ``moment`` (aware) can be written in UTC (9999-12-31T23:00-05:00 cannot)."""
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return False
    return True


ANY_RUN: Final = RunFilter()
"""The filter that matches every run."""


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix``, in code-point
    (and so UTF-8 byte) order; None when there is none to write (a last character that
    cannot be incremented)."""
    last = ord(prefix[-1])
    following = last + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000
    if following > 0x10FFFF:
        return None
    return prefix[:-1] + chr(following)


def count_key(record: RawRecord) -> tuple[int, RunState]:
    """The key a record is counted under by count_runs."""
    return (record.status, record.run_state)
