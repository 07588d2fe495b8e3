"""``Run``: what a step, callback or timeout function gets, and its special results."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Generic, TypeVar, cast, final

import attrs

from actorflow._model.errors import InvalidArgument
from actorflow._model.record import RawRecord, Record

if TYPE_CHECKING:
    from actorflow._model.codec import ObjectCodec

T = TypeVar("T")
S = TypeVar("S", bound=enum.IntEnum)


class Special(enum.Enum):
    SKIP = "skip"
    PAUSE = "pause"
    CANCEL = "cancel"
    SAVE_AND_REPEAT = "save_and_repeat"


@final
@attrs.frozen
class SpecialResult:
    """A result that is not a status: skip, pause, cancel, save and repeat."""

    kind: Special
    reason: str = ""


@final
class Run(Generic[T, S]):
    """One run as a step sees it. Change ``object``; return the next status.

    Attributes:
        run_id: the id of the run.
        foreign_id: the id the run was triggered for.
        workflow_name: the workflow's name.
        status: the status the run is at.
        object: the workflow object; changes are stored with the transition.
    """

    __slots__ = (
        "_codec",
        "_raw",
        "_record",
        "foreign_id",
        "object",
        "run_id",
        "status",
        "workflow_name",
    )

    def __init__(self, raw: RawRecord, status: S, object: T, codec: ObjectCodec[T]) -> None:
        self.run_id = raw.run_id
        self.foreign_id = raw.foreign_id
        self.workflow_name = raw.workflow_name
        self.status = status
        self.object = object
        self._raw = raw
        self._codec = codec
        self._record: Record[T, S] | None = None

    @property
    def record(self) -> Record[T, S]:
        """The stored version this run was built from (its object is a separate copy)."""
        if self._record is None:
            raw = self._raw
            self._record = Record(
                workflow_name=raw.workflow_name,
                foreign_id=raw.foreign_id,
                run_id=raw.run_id,
                status=self.status,
                run_state=raw.run_state,
                object=self._codec.decode(raw.object),
                version=raw.version,
                created_at=raw.created_at,
                updated_at=raw.updated_at,
                meta=raw.meta,
            )
        return self._record

    def skip(self) -> S:
        """Do nothing now: keep the status, store nothing (tried again after a restart)."""
        return cast(S, SpecialResult(Special.SKIP))

    def pause(self, reason: str = "") -> S:
        """Pause the run (object changes are not stored).

        Raises:
            InvalidArgument: ``reason`` is not a string.
        """
        return cast(S, SpecialResult(Special.PAUSE, _reason(reason, "pause")))

    def cancel(self, reason: str = "") -> S:
        """Cancel the run (object changes are not stored).

        Raises:
            InvalidArgument: ``reason`` is not a string.
        """
        return cast(S, SpecialResult(Special.CANCEL, _reason(reason, "cancel")))

    def save_and_repeat(self) -> S:
        """Store the object, keep the status, and run the same step again."""
        return cast(S, SpecialResult(Special.SAVE_AND_REPEAT))

    def __repr__(self) -> str:
        return (
            f"Run(workflow={self.workflow_name!r}, run_id={self.run_id!r}, "
            f"foreign_id={self.foreign_id!r}, status={self.status!r})"
        )


def _reason(reason: object, what: str) -> str:
    """``reason`` of ``run.pause``/``run.cancel``; InvalidArgument unless it is a string
    (raised in the step, so it is counted as the step's error with a message that says
    what was wrong, not a TypeError from deep inside when the version is stored)."""
    if not isinstance(reason, str):
        raise InvalidArgument(f"run.{what}(reason): reason must be a string, not {reason!r:.100}")
    return reason
