"""JSON (de)serialisation of workflow objects with cattrs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast, final

import attrs
from cattrs.preconf.json import make_converter

from actorflow._model.errors import BuildError, InvalidArgument, SerializationError

T = TypeVar("T")

converter = make_converter()


_ENCODE: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""Compact JSON text of unstructured data (one encoder, reused)."""
_loads = json.loads


def _place(where: str, run_id: str) -> str:
    return f" run {run_id}" if run_id else where


@final
class ObjectCodec(Generic[T]):
    """Converts one workflow's object type to and from JSON text."""

    def __init__(self, object_type: type[T], workflow_name: str) -> None:
        if not isinstance(object_type, type) or not (
            attrs.has(object_type) or dataclasses.is_dataclass(object_type)
        ):
            raise BuildError(
                f"workflow {workflow_name!r}: the object type must be an attrs class or a "
                f"dataclass, not {object_type!r}"
            )
        self.object_type = object_type
        self._workflow = workflow_name
        try:
            self._unstructure = converter.get_unstructure_hook(object_type)
            self._structure = converter.get_structure_hook(object_type)
        except Exception as exc:
            raise BuildError(
                f"workflow {workflow_name!r}: cattrs cannot convert {object_type.__name__} to "
                f"and from JSON ({exc}); use field types cattrs supports or register hooks on "
                "actorflow._model.codec.converter"
            ) from exc

    def check(self, obj: object, what: str) -> T:
        """Return ``obj`` if it is an instance of the object type, else raise InvalidArgument."""
        if not isinstance(obj, self.object_type):
            raise InvalidArgument(
                f"workflow {self._workflow!r}: {what} must be a {self.object_type.__name__}, "
                f"not {type(obj).__name__}"
            )
        return cast(T, obj)

    def encode(self, obj: T, where: str = "", *, run_id: str = "") -> str:
        """JSON text of ``obj``; SerializationError if cattrs or json cannot convert it.

        ``where`` (or ``run_id``, worded only when needed) places the object in the error.
        """
        try:
            return _ENCODE(self._unstructure(obj))
        except Exception as exc:
            raise SerializationError(
                f"workflow {self._workflow!r}{_place(where, run_id)}: cannot serialise "
                f"{type(obj).__name__} to JSON: {exc!r}"
            ) from exc

    def decode(self, text: str, where: str = "", *, run_id: str = "") -> T:
        """The object stored as ``text``; SerializationError if it does not fit the type."""
        try:
            data = _loads(text)
            return self._structure(data, self.object_type)  # type: ignore[no-any-return]
        except Exception as exc:
            raise SerializationError(
                f"workflow {self._workflow!r}{_place(where, run_id)}: stored object does not "
                f"fit {self.object_type.__name__}: {exc!r}"
            ) from exc

    def default(self) -> T:
        """A new object from the type's defaults; InvalidArgument if it needs arguments."""
        try:
            return cast(T, self.object_type())
        except TypeError as exc:
            raise InvalidArgument(
                f"workflow {self._workflow!r}: {self.object_type.__name__}() needs arguments "
                f"({exc}); pass initial= to trigger"
            ) from exc
