"""A workflow's build options (``Builder.build(store, **options)``), checked in one place.

Every option is a field with its default and a validator; a bad value is a BuildError that
names the option and says what it must be.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, final

import attrs

from actorflow._model.clock import Clock, SystemClock, checked
from actorflow._model.definition import is_async_callable
from actorflow._model.errors import BuildError
from actorflow._model.options import MAX_DELAY, Options
from actorflow._model.retention import Retention

MAX_SHARDS = 4096


def _fail(attribute: attrs.Attribute[Any], value: Any, must: str) -> None:
    raise BuildError(f"{attribute.name} must be {must}, not {value!r}")


def _timedelta_at_least(least: timedelta, what: str) -> Callable[[Any, Any, Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, timedelta) or not least <= value <= MAX_DELAY:
            _fail(attribute, value, f"a timedelta {what} and at most {MAX_DELAY.days} days")

    return check


def _optional_timedelta(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (
        not isinstance(value, timedelta) or not timedelta(0) <= value <= MAX_DELAY
    ):
        _fail(attribute, value, f"a timedelta from 0 to {MAX_DELAY.days} days, or None")


def _int_between(low: int, high: int | None) -> Callable[[Any, Any, Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        if not ok or (high is not None and value > high):
            _fail(attribute, value, f"an int from {low} to {high}" if high else f"an int >= {low}")

    return check


def _clock(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not callable(getattr(value, "now", None)):
        _fail(attribute, value, "an object with a now() method returning an aware datetime")


def _system_clock_if_none(value: Any) -> Clock:
    if value is None:
        return SystemClock()
    if not callable(getattr(value, "now", None)):
        return value  # type: ignore[no-any-return]  # the validator refuses it
    return checked(value)


def _options(value: Any) -> Options:
    if isinstance(value, dict):
        return Options().merged(value, "default_options")
    if value is None:
        return Options()
    if isinstance(value, Options):
        return value
    raise BuildError(f"default_options must be an af.Options or a dict, not {value!r}")


def _retention(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, Retention):
        _fail(attribute, value, "an af.Retention(keep_last=..., keep_for=...) or None")


def _scrub(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not callable(value) or is_async_callable(value)):
        _fail(attribute, value, "a plain (not async) function of the object, or None")


def _ownership(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not all(
        callable(getattr(value, method, None)) for method in ("owns", "serve")
    ):
        _fail(
            attribute, value, "an Ownership (with owns(run_id) and async serve(on_change)) or None"
        )


def _one_of(*allowed: str) -> Callable[[Any, Any, Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in allowed:
            _fail(attribute, value, " or ".join(repr(a) for a in allowed))

    return check


def _bool(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        _fail(attribute, value, "a bool")


@final
@attrs.frozen(kw_only=True)
class BuildSettings:
    """The build options of one workflow (see ``Builder.build`` for what each one does)."""

    clock: Clock = attrs.field(default=None, converter=_system_clock_if_none, validator=_clock)
    default_options: Options = attrs.field(default=None, converter=_options)
    resume_paused_after: timedelta | None = attrs.field(
        default=timedelta(hours=1), validator=_optional_timedelta
    )
    scrub: Callable[[Any], Any] | None = attrs.field(default=None, validator=_scrub)
    grace_period: timedelta = attrs.field(
        default=timedelta(seconds=10), validator=_timedelta_at_least(timedelta(0), ">= 0")
    )
    poll_interval: timedelta = attrs.field(
        default=timedelta(seconds=1),
        validator=_timedelta_at_least(timedelta(milliseconds=10), ">= 10 ms"),
    )
    max_active_runs: int = attrs.field(default=2_000, validator=_int_between(1, None))
    streamer: Any = None
    """An EventStreamer (checked against the store by the builder)."""
    shards: int = attrs.field(default=16, validator=_int_between(1, MAX_SHARDS))
    lease: timedelta = attrs.field(
        default=timedelta(seconds=10),
        validator=_timedelta_at_least(timedelta(seconds=1), "of at least 1 s"),
    )
    history_retention: Retention | None = attrs.field(default=None, validator=_retention)
    """Delete old versions of finished runs (None: keep every version)."""
    ownership: Any = attrs.field(default=None, validator=_ownership)
    """Which runs this process works on (an ``Ownership``); None: the store's shard leases
    when it has them (PostgreSQL), else every run."""
    metrics: Any = None
    """A ``prometheus_client.CollectorRegistry``, None (the global one when installed),
    True or False (checked by ``actorflow._observe``, which imports prometheus-client)."""
    tracing: Any = False
    """True, False or an OpenTelemetry TracerProvider (checked by ``actorflow._observe``)."""
    on_stranded: str = attrs.field(default="pause", validator=_one_of("pause", "refuse"))
    """What ``run`` does with stored runs the definition cannot move (docs/upgrading.md)."""
    check_at_start: bool = attrs.field(default=True, validator=_bool)
    """Whether ``run`` compares the stored unfinished runs with the definition first."""

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> BuildSettings:
        """Settings from ``build``'s keyword arguments; an unknown one is a BuildError."""
        known = {field.name for field in attrs.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise BuildError(
                f"unknown build option(s) {', '.join(unknown)}; known options are "
                f"{', '.join(sorted(known))}"
            )
        return cls(**options)
