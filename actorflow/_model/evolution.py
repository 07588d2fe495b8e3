"""Workflow evolution as data: fingerprints, status mappings, what a stored run needs.

Pure rules, no I/O: the runtime (``_runtime/evolution.py``) reads the store and applies them.

A definition's *fingerprint* is a short hash of what decides whether a stored run can be
processed: the statuses (value and name), the edges (step/callback/timeout and their
destinations), the object type's schema, and the status mappings. It is stored on every
version (``Meta.definition``), so a run tells which definition wrote it.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

FINGERPRINT_LENGTH = 12
EXAMPLES = 5

UpgradeFn = Callable[[dict[str, Any]], dict[str, Any]]


@attrs.frozen
class StatusMapping:
    """Runs stored at ``old_value`` move to ``new`` when next loaded."""

    old_value: int
    new: enum.IntEnum
    kind: str  # "rename" | "retire"

    @property
    def reason(self) -> str:
        verb = "renamed" if self.kind == "rename" else "retired"
        return f"status {self.old_value} {verb}: moved to {self.new.name}={int(self.new)}"


@attrs.frozen
class Evolution:
    """The explicit migrations of a definition (``rename_status``, ``retire``,
    ``upgrade_object``)."""

    mappings: Mapping[int, StatusMapping] = attrs.Factory(dict)
    upgrade: UpgradeFn | None = None


def type_schema(tp: Any, seen: frozenset[Any] = frozenset()) -> Any:
    """A JSON-able description of an object type: fields, their types, whether they have
    a default; nested attrs classes and dataclasses are described too."""
    if isinstance(tp, type) and tp not in seen and (attrs.has(tp) or dataclasses.is_dataclass(tp)):
        seen = seen | {tp}
        fields: list[Any] = []
        if attrs.has(tp):
            for field in attrs.fields(tp):
                fields.append(
                    [field.name, type_schema(field.type, seen), field.default is not attrs.NOTHING]
                )
        else:
            for dc_field in dataclasses.fields(tp):  # type: ignore[arg-type]
                has_default = (
                    dc_field.default is not dataclasses.MISSING
                    or dc_field.default_factory is not dataclasses.MISSING
                )
                fields.append([dc_field.name, type_schema(dc_field.type, seen), has_default])
        return {"type": tp.__qualname__, "fields": fields}
    if isinstance(tp, type):
        return tp.__qualname__
    return str(tp).replace("typing.", "")


def fingerprint(
    statuses: type[enum.IntEnum],
    edges: Sequence[tuple[int, str, Sequence[int]]],
    object_type: type[Any],
    evolution: Evolution,
) -> tuple[str, str]:
    """(fingerprint, summary): the hash of a definition and the JSON text it hashes."""
    summary = {
        "statuses": {str(int(m)): m.name for m in statuses},
        "edges": sorted([int(src), kind, sorted(int(t) for t in to)] for src, kind, to in edges),
        "object": type_schema(object_type),
        "mappings": {str(k): int(m.new) for k, m in sorted(evolution.mappings.items())},
    }
    text = json.dumps(summary, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_LENGTH], text


def lossless(stored: Any, again: Any) -> bool:
    """Whether ``again`` (a stored object structured and unstructured by the current type)
    keeps everything of ``stored`` that the type still has.

    The rules of schema evolution without a hook: a field the type no longer has is
    dropped (removing a field), a field missing from ``stored`` takes its default (adding
    a field with a default), and a value must come back equal (widening ``int`` to
    ``float`` or to a union keeps it; narrowing ``float`` to ``int`` or changing ``str`` to
    ``int`` does not, and needs ``upgrade_object``).
    """
    if isinstance(stored, dict) and isinstance(again, dict):
        return all(lossless(stored[key], again[key]) for key in stored.keys() & again.keys())
    if isinstance(stored, list) and isinstance(again, list):
        return len(stored) == len(again) and all(
            lossless(a, b) for a, b in zip(stored, again, strict=True)
        )
    if isinstance(stored, bool) or isinstance(again, bool):
        return type(stored) is type(again) and stored == again
    if isinstance(stored, int | float) and isinstance(again, int | float):
        return stored == again
    return type(stored) is type(again) and bool(stored == again)


# -- findings of the check ---------------------------------------------------------------

UNKNOWN_STATUS = "unknown status"
NO_WAY_FORWARD = "status lost its step, callback and timeout"
OBJECT_DOES_NOT_FIT = "object no longer fits the object type"
UPGRADE_FAILED = "upgrade_object failed"
REMOVED_TIMEOUT = "pending timer of a removed timeout"
TO_MIGRATE = "to migrate when loaded"
NEWER_DEFINITION = "written by a newer definition (left to it)"
RENAME_CONFLICT = "rename onto a status that already has runs of its own"

STRANDED = frozenset({UNKNOWN_STATUS, NO_WAY_FORWARD, OBJECT_DOES_NOT_FIT, UPGRADE_FAILED})
"""Problems no worker of this definition can get the run past: parked (or refused)."""


@attrs.define
class Finding:
    """Runs that share one problem (or one migration) at one status."""

    problem: str
    detail: str
    count: int = 0
    examples: list[str] = attrs.Factory(list)
    """Up to five run ids."""
    definitions: dict[str, int] = attrs.Factory(dict)
    """How many of the runs were last written by each definition (fingerprint)."""

    def add(self, run_id: str, definition: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(run_id)
        key = definition or "(unknown)"
        self.definitions[key] = self.definitions.get(key, 0) + 1

    @property
    def stranded(self) -> bool:
        return self.problem in STRANDED

    def describe(self) -> str:
        writers = ", ".join(f"{n} by definition {fp}" for fp, n in sorted(self.definitions.items()))
        return (
            f"{self.count} run(s): {self.problem}: {self.detail} (written {writers}; "
            f"e.g. {', '.join(self.examples)})"
        )


@attrs.define
class CheckReport:
    """What ``Workflow.check`` found: the stored unfinished runs compared with the definition."""

    workflow_name: str
    definition: str
    """The fingerprint of the definition that checked."""
    checked: int = 0
    """Unfinished runs looked at."""
    findings: list[Finding] = attrs.Factory(list)
    parked: int = 0
    """Runs paused by the check (``on_stranded="pause"``)."""
    only_definition: bool = False
    """True when no other definition of the workflow ever wrote to the store: every stored
    run is this definition's, so none was read (``checked`` stays 0)."""
    _index: dict[tuple[str, str], Finding] = attrs.field(factory=dict, repr=False, eq=False)

    def note(self, problem: str, detail: str, run_id: str, definition: str) -> Finding:
        finding = self._index.get((problem, detail))
        if finding is None:
            finding = self._index[(problem, detail)] = Finding(problem, detail)
            self.findings.append(finding)
        finding.add(run_id, definition)
        return finding

    @property
    def stranded(self) -> int:
        """Runs no worker of this definition can move."""
        return sum(f.count for f in self.findings if f.stranded)

    @property
    def ok(self) -> bool:
        """True when no finding was made."""
        return not self.findings

    def lines(self) -> list[str]:
        head = f"workflow {self.workflow_name!r} (definition {self.definition}): " + (
            "the only definition that wrote to the store"
            if self.only_definition
            else f"{self.checked} unfinished run(s) checked"
        )
        if self.ok:
            return [head + ": all fit this definition"]
        return [head, *("  " + f.describe() for f in self.findings)] + (
            [f"  {self.parked} run(s) parked (PAUSED with the reason)"] if self.parked else []
        )

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow_name": self.workflow_name,
            "definition": self.definition,
            "checked": self.checked,
            "stranded": self.stranded,
            "parked": self.parked,
            "findings": [
                {
                    "problem": f.problem,
                    "detail": f.detail,
                    "count": f.count,
                    "examples": list(f.examples),
                    "definitions": dict(f.definitions),
                }
                for f in self.findings
            ],
        }
