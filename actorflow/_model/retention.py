"""History retention: which old versions of finished runs a workflow lets go."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, final

import attrs

from actorflow._model.errors import BuildError
from actorflow._model.options import MAX_DELAY


def _keep_last(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63
    ):
        # A store keeps version numbers as signed 64-bit integers: a larger count could not
        # be compared with them (SQLite refused it on every pass, deleting nothing).
        raise BuildError(
            f"Retention {attribute.name} must be an int from 1 to 2**63-1 or None, not {value!r}"
        )


def _duration(least: timedelta) -> Any:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and attribute.name == "keep_for":
            return
        if not isinstance(value, timedelta) or not least <= value <= MAX_DELAY:
            raise BuildError(
                f"Retention {attribute.name} must be a timedelta from {least} to "
                f"{MAX_DELAY.days} days, not {value!r}"
            )

    return check


@final
@attrs.frozen(kw_only=True)
class Retention:
    """History retention for finished runs (build option ``history_retention=``).

    A finished run (COMPLETED, CANCELLED, DATA_DELETED) keeps its latest version always;
    an older version is deleted when no rule given keeps it: ``keep_last`` keeps the run's
    last K versions, ``keep_for`` the versions stored within that long. Runs are left
    alone until they have been finished for ``after_finish``, so that event consumers
    (the relay, ``af.connect``, hooks) that read the history as the event log see their
    versions first. A pass over the history runs every ``every``, a slice at a time.

    Raises:
        BuildError: neither rule given, or a value out of range.
    """

    keep_last: int | None = attrs.field(default=None, validator=_keep_last)
    keep_for: timedelta | None = attrs.field(default=None, validator=_duration(timedelta(0)))
    after_finish: timedelta = attrs.field(
        default=timedelta(hours=1), validator=_duration(timedelta(0))
    )
    every: timedelta = attrs.field(
        default=timedelta(hours=1), validator=_duration(timedelta(seconds=1))
    )

    def __attrs_post_init__(self) -> None:
        if self.keep_last is None and self.keep_for is None:
            raise BuildError(
                "Retention needs keep_last (versions to keep) and/or keep_for (a timedelta: "
                "keep versions younger than that); without either it would keep everything"
            )
