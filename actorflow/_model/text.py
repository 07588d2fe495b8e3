"""Text and numbers that enter actorflow: checked once, where they come in.

Python strings may hold lone surrogates (``"\\ud800"``, e.g. from a JSON ``\\ud800``
escape or from ``os.fsdecode`` of bytes that are not UTF-8); they cannot be written as
UTF-8, so no store, no websocket and no JSON reader elsewhere can take them. Floats may
be NaN or infinite, which JSON cannot represent. Both are refused at the boundary (the
Workflow methods, the object codec, the gateway's request parser, the CLI) rather than
stored and failing every later read.
"""

from __future__ import annotations

import math
from typing import Final

from actorflow._model.errors import InvalidArgument

INVALID_TEXT: Final = "is not valid Unicode text (it holds a lone surrogate such as \\ud800)"
NOT_FINITE: Final = "is not a finite number (NaN and infinities are not JSON)"
HOLDS_NUL: Final = "holds a NUL character (U+0000), which PostgreSQL cannot store"


def key_part(name: str) -> str:
    """``name`` as one part of a durable key whose parts are joined with ``:`` (a
    connector's cursor, a schedule's last cron time): ``%`` and ``:`` are escaped as
    ``%25`` and ``%3A``, so ``("a:b", "c")`` and ``("a", "b:c")`` make different keys.
    A name without either is unchanged, as are the keys stored before this escaping."""
    return name.replace("%", "%25").replace(":", "%3A")


def is_valid_text(text: str) -> bool:
    """True if ``text`` can be encoded as UTF-8 (holds no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: str, what: str) -> str:
    """Return ``value`` (a str: an id, a filter, a reason) unchanged, or raise
    InvalidArgument if it is invalid text or holds a NUL character (no store may take
    what PostgreSQL's text columns and jsonb refuse)."""
    if not is_valid_text(value):
        raise InvalidArgument(f"{what} {INVALID_TEXT}")
    if "\x00" in value:
        raise InvalidArgument(f"{what} {HOLDS_NUL}")
    return value


def printable(text: str) -> str:
    """``text`` with lone surrogates and NUL characters replaced by ``?``, for messages
    made of foreign text (stored as they are by every store)."""
    if "\x00" in text:
        text = text.replace("\x00", "?")
    if is_valid_text(text):
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def find_unrepresentable(value: object, path: str) -> str | None:
    """Where JSON-like data holds invalid text or a non-finite float, as a message; or None.

    ``path`` names ``value`` (``initial``); members follow as ``initial.note`` or
    ``initial.items[2]``. Dict keys are checked as well as values.
    """
    stack: list[tuple[object, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if not is_valid_text(item):
                return f"{where} {INVALID_TEXT}"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{where} {NOT_FINITE}"
        elif isinstance(item, dict):
            for key, member in reversed(item.items()):
                if isinstance(key, str) and not is_valid_text(key):
                    return f"a member name in {where} {INVALID_TEXT}"
                stack.append((member, f"{where}.{key}"))
        elif isinstance(item, list | tuple):
            stack.extend((member, f"{where}[{i}]") for i, member in reversed(list(enumerate(item))))
    return None
