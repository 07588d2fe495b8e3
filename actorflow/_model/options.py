"""Per-step options (steps, timeouts, connectors)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs

from actorflow._model.errors import BuildError


def _non_negative_int(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BuildError(f"option {attribute.name} must be an int >= 0, not {value!r}")


MAX_DELAY = timedelta(days=365 * 1000)
"""The longest duration an option takes (1000 years): a wall time plus any of them stays
within datetime's range (a longer one raised OverflowError in the runtime, over and over)."""


def _non_negative_delta(_: Any, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if not isinstance(value, timedelta) or not timedelta(0) <= value <= MAX_DELAY:
        raise BuildError(
            f"option {attribute.name} must be a timedelta from 0 to {MAX_DELAY.days} days "
            f"(1000 years), not {value!r}"
        )


def _concurrency(_: Any, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise BuildError(f"option {attribute.name} must be None or an int >= 1, not {value!r}")


MIN_RETRY_SECONDS = 0.01
"""The shortest wait before any retry (see ``Options.retry_seconds``)."""


@attrs.frozen
class Options:
    """How a step (or timeout, or connector) is run.

    Attributes:
        pause_after_errors: pause the run after this many consecutive errors (0: never).
        error_backoff: delay before the first retry; doubles per consecutive error.
        max_error_backoff: cap of the retry delay.
        consume_lag: only act on a run that has been at the status at least this long.
        max_concurrency: at most this many runs execute this function at once (None: no cap);
            for a connector, the number of shards its events are split into (at most
            ``MAX_CONNECTOR_SHARDS``), each handled in order by a consumer of its own.
        lag_alert: alert (the ``workflow_process_lag_alert`` gauge and a warning log) when a
            step or connector takes up a run or event older than this (0: no alert).
    """

    pause_after_errors: int = attrs.field(default=0, validator=_non_negative_int)
    error_backoff: timedelta = attrs.field(
        default=timedelta(seconds=1), validator=_non_negative_delta
    )
    max_error_backoff: timedelta = attrs.field(
        default=timedelta(minutes=10), validator=_non_negative_delta
    )
    consume_lag: timedelta = attrs.field(default=timedelta(0), validator=_non_negative_delta)
    max_concurrency: int | None = attrs.field(default=None, validator=_concurrency)
    lag_alert: timedelta = attrs.field(default=timedelta(0), validator=_non_negative_delta)

    def merged(self, overrides: dict[str, Any], where: str) -> Options:
        """These options with ``overrides`` applied; BuildError names an unknown option."""
        known = {f.name for f in attrs.fields(Options)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise BuildError(
                f"{where}: unknown option(s) {', '.join(unknown)}; known options are "
                f"{', '.join(sorted(known))}"
            )
        try:
            return attrs.evolve(self, **overrides)
        except BuildError as exc:
            raise BuildError(f"{where}: {exc}") from None

    def retry_seconds(self, errors: int) -> float:
        """Seconds to wait before retrying after ``errors`` consecutive errors: the
        back-off, but at least ``MIN_RETRY_SECONDS`` so that a zero back-off never spins."""
        return max(self.backoff(errors).total_seconds(), MIN_RETRY_SECONDS)

    def backoff(self, errors: int) -> timedelta:
        """The delay before retrying after ``errors`` consecutive errors."""
        if errors <= 0:
            return timedelta(0)
        factor = 2 ** min(errors - 1, 30)
        cap = max(self.max_error_backoff, self.error_backoff)
        if self.error_backoff and cap / self.error_backoff < factor:
            return cap  # multiplying first overflowed for a back-off of a day or more
        delay: timedelta = self.error_backoff * factor
        return min(delay, cap)


MAX_CONNECTOR_SHARDS = 64
"""The most consumers a connector's ``max_concurrency`` may ask for: each reads the whole
source (and skips the other shards' events), so shards cost reads."""


WITHOUT_EFFECT: dict[str, dict[str, str]] = {
    "timeout": {
        "consume_lag": "a timeout fires when its timer says; delay it in the timer function",
        "lag_alert": "a timeout fires when its timer says, so it has no lag to alert on "
        "(lag alerts are for steps and connectors)",
    },
    "connector": {
        "pause_after_errors": "a connector has no run to pause; it retries with back-off",
    },
}
"""Options that do nothing for a kind of function, and why (a BuildError says so)."""


def check_options_for(kind: str, options: dict[str, Any], where: str) -> None:
    """BuildError for an option that would have no effect on a ``kind`` of function.

    ``kind``: ``"step"``, ``"timeout"``, ``"connector"`` or ``"callback"`` (which takes
    none). Unknown option names are left to :meth:`Options.merged`, which lists the known.
    """
    if kind == "callback":
        if options:
            raise BuildError(
                f"{where}: callbacks take no options ({', '.join(sorted(options))}); they run "
                "inside workflow.callback(), which gets their error (build(default_options=...) "
                "sets pause_after_errors for callbacks)"
            )
        return
    useless = WITHOUT_EFFECT.get(kind, {})
    for name in sorted(options):
        if name in useless:
            raise BuildError(f"{where}: option {name} has no effect on a {kind}: {useless[name]}")
