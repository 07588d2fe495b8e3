"""What ``delete_data`` erases besides the objects: the error texts of earlier versions.

A run paused after errors keeps the last error in ``meta.error_message`` and in its
``run_state_reason`` (``paused after 3 consecutive errors in step x: ValueError: ...``);
exception messages are made from the object often enough (``cannot mail alice@...``) that
they are erased with it. Every store does the same: the message becomes
:data:`DELETED_TEXT`, and so does the reason from where the message starts in it (found by
its first :data:`FIND_CHARS` characters, since the reason may be cut short); a reason
without the message is kept. The same rule in Python (MemoryStore) and in SQL (SQLite,
PostgreSQL), below.
"""

from __future__ import annotations

from typing import Final

import attrs

from actorflow._model.record import Meta

DELETED_TEXT: Final = "[deleted with the run's data]"
"""What replaces an error text of a run whose data was deleted."""

FIND_CHARS: Final = 40
"""How much of the error message is looked for in the reason."""


def scrub_meta(meta: Meta) -> Meta:
    """``meta`` without its error text (unchanged when it has none)."""
    message = meta.error_message
    if not message:
        return meta
    reason = meta.run_state_reason
    at = reason.find(message[:FIND_CHARS])
    if at >= 0:
        reason = reason[:at] + DELETED_TEXT
    return attrs.evolve(meta, error_message=DELETED_TEXT, run_state_reason=reason)


def scrub_meta_sqlite(meta: str) -> str:
    """SQLite: the expression of :func:`scrub_meta` on the JSON text column ``meta``
    (members at their defaults may be absent); takes :data:`DELETED_TEXT` as ``:deleted``."""
    message = f"json_extract({meta}, '$.error_message')"
    reason = f"coalesce(json_extract({meta}, '$.run_state_reason'), '')"
    at = f"instr({reason}, substr({message}, 1, {FIND_CHARS}))"
    return (
        f"CASE WHEN coalesce({message}, '') = '' THEN {meta} "
        f"ELSE json_set({meta}, '$.error_message', :deleted, '$.run_state_reason', "
        f"CASE WHEN {at} > 0 THEN substr({reason}, 1, {at} - 1) || :deleted "
        f"ELSE {reason} END) END"
    )


def scrub_meta_postgres(meta: str) -> str:
    """PostgreSQL: the expression of :func:`scrub_meta` on the jsonb column ``meta``, with
    :data:`DELETED_TEXT` as a literal (its apostrophe doubled; it holds no ``%``, so the
    statement's placeholders are not disturbed)."""
    deleted = "'" + DELETED_TEXT.replace("'", "''") + "'"
    message = f"({meta} ->> 'error_message')"
    reason = f"coalesce({meta} ->> 'run_state_reason', '')"
    at = f"strpos({reason}, left({message}, {FIND_CHARS}))"
    return (
        f"CASE WHEN coalesce({message}, '') = '' THEN {meta} "
        f"ELSE {meta} || jsonb_build_object('error_message', {deleted}::text, "
        f"'run_state_reason', CASE WHEN {at} > 0 THEN left({reason}, {at} - 1) || "
        f"{deleted}::text ELSE {reason} END) END"
    )
