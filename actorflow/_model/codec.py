"""JSON (de)serialisation of workflow objects with cattrs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast, final

import attrs
import cattrs
import cattrs.cols
from cattrs.preconf.json import make_converter

from actorflow._model.errors import BuildError, InvalidArgument, SerializationError
from actorflow._model.text import find_unrepresentable, is_valid_text

T = TypeVar("T")

converter = make_converter()


_ENCODE: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
"""Compact JSON text of unstructured data (one encoder, reused). NaN and infinities are
refused (docs/gateway.md, "Text and numbers")."""
_loads = json.loads


def ends_process(exc: BaseException) -> bool:
    """Whether ``exc`` asks to end the process (KeyboardInterrupt, SystemExit, or a group
    holding one): passed on by every catch of user code's errors."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split((KeyboardInterrupt, SystemExit))[0] is not None
    return isinstance(exc, KeyboardInterrupt | SystemExit)


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

        A float that is NaN or infinite, or a string holding a lone surrogate, cannot be
        stored: every store refuses it alike (docs/gateway.md, "Text and numbers").
        ``where`` (or ``run_id``, worded only when needed) places the object in the error.
        """
        data: Any = None
        try:
            data = self._unstructure(obj)
            text = _ENCODE(data)
        except BaseException as exc:  # user code (hooks, properties) may raise any
            if ends_process(exc):
                raise
            found = find_unrepresentable(data, "object") if data is not None else None
            detail = found if found is not None else repr(exc)
            raise SerializationError(
                f"workflow {self._workflow!r}{_place(where, run_id)}: cannot serialise "
                f"{type(obj).__name__} to JSON: {detail}"
            ) from exc
        if not is_valid_text(text):
            found = find_unrepresentable(data, "object")
            raise SerializationError(
                f"workflow {self._workflow!r}{_place(where, run_id)}: cannot serialise "
                f"{type(obj).__name__} to JSON: {found or 'it holds invalid text'}"
            )
        return text

    def structure_json(self, data: object, what: str) -> T:
        """An object from JSON data that came from outside; see :func:`structure_json`."""
        return cast(T, structure_json(data, self.object_type, what))

    def decode(self, text: str, where: str = "", *, run_id: str = "") -> T:
        """The object stored as ``text``; SerializationError if it does not fit the type."""
        try:
            data = _loads(text)
            return self._structure(data, self.object_type)  # type: ignore[no-any-return]
        except BaseException as exc:  # a validator or converter may raise any
            if ends_process(exc):
                raise
            raise SerializationError(
                f"workflow {self._workflow!r}{_place(where, run_id)}: stored object does not "
                f"fit {self.object_type.__name__}: {exc!r}"
            ) from exc

    def default(self) -> T:
        """A new object from the type's defaults; InvalidArgument if it needs arguments or
        its own code fails (a default factory, validator or ``__attrs_post_init__`` that
        raises, even a BaseException such as GeneratorExit: user code, named as such)."""
        name = self.object_type.__name__
        try:
            return cast(T, self.object_type())
        except TypeError as exc:
            raise InvalidArgument(
                f"workflow {self._workflow!r}: {name}() needs arguments ({exc}); pass "
                "initial= to trigger"
            ) from exc
        except BaseException as exc:
            if ends_process(exc):
                raise
            raise InvalidArgument(
                f"workflow {self._workflow!r}: {name}() (the object type's defaults) raised "
                f"{type(exc).__name__}: {exc}; pass initial= to trigger (or build with "
                "scrub= for delete_data)"
            ) from exc


def structure_json(data: object, object_type: type[T], what: str) -> T:
    """A workflow object built from JSON data that came from outside (gateway, CLI).

    Strict, unlike the decoding of the stored form: every value must have its field's type
    (no ``"maybe"`` for a bool, no ``5`` for a str, no string for a list), unknown members
    are refused, and so are invalid text and non-finite numbers. Hooks registered on
    :data:`converter` before the first call apply.

    Raises:
        InvalidArgument: the data does not fit; the message names the field path
            (``initial.customer``).
    """
    name = object_type.__name__
    if not isinstance(data, dict):
        raise InvalidArgument(f"{what} must be a JSON object for {name}, not {_json_kind(data)}")
    found = find_unrepresentable(data, what)
    if found is not None:
        raise InvalidArgument(f"{what} does not fit {name}: {found}")
    global _strict
    if _strict is None:
        _strict = strict_converter()
    try:
        return _strict.structure(data, object_type)
    except Exception as exc:
        if isinstance(exc, cattrs.BaseValidationError):
            detail = "; ".join(cattrs.transform_error(exc, path=what))
        else:
            detail = f"{type(exc).__name__}: {exc}"
        raise InvalidArgument(f"{what} does not fit {name}: {detail}") from None


_strict: cattrs.Converter | None = None


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _exactly(kinds: tuple[type, ...], name: str) -> Callable[[Any, Any], Any]:
    def structure(value: Any, type_: Any) -> Any:
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise TypeError(f"expected {name}, got {_json_kind(value)}")
        return float(cast(Any, value)) if type_ is float else value

    return structure


def _shaped(kind: type, name: str, hook: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def structure(value: Any, type_: Any) -> Any:
        if not isinstance(value, kind):
            raise TypeError(f"expected {name}, got {_json_kind(value)}")
        return hook(value, type_)

    return structure


def strict_converter() -> cattrs.Converter:
    """A copy of :data:`converter` (with the hooks registered on it so far) that structures
    JSON from outside strictly: see :meth:`ObjectCodec.structure_json`."""
    strict = converter.copy(forbid_extra_keys=True)
    strict.register_structure_hook(str, _exactly((str,), "a string"))
    strict.register_structure_hook(bool, _exactly((bool,), "a boolean"))
    strict.register_structure_hook(int, _exactly((int,), "an integer"))
    strict.register_structure_hook(float, _exactly((int, float), "a number"))

    def sequences(type_: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
        origin = getattr(type_, "__origin__", type_)
        args: tuple[Any, ...] = getattr(type_, "__args__", ())
        hook: Callable[[Any, Any], Any]
        if cattrs.cols.is_frozenset(type_):
            hook = conv._structure_frozenset
        elif cattrs.cols.is_any_set(type_):
            hook = conv._structure_set
        elif origin is tuple and not (len(args) == 2 and args[1] is ...) and args:
            hook = conv._structure_tuple
        elif origin is tuple:
            hook = cattrs.cols.homogenous_tuple_structure_factory(type_, conv)
        else:
            hook = cattrs.cols.list_structure_factory(type_, conv)
        return _shaped(list, "an array", hook)

    def mappings(type_: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
        return _shaped(dict, "an object", cattrs.cols.mapping_structure_factory(type_, conv))

    strict.register_structure_hook_factory(
        lambda t: cattrs.cols.is_sequence(t) or cattrs.cols.is_any_set(t), sequences
    )
    strict.register_structure_hook_factory(cattrs.cols.is_mapping, mappings)
    return strict
