"""A definition's lineage: the other definitions of its workflow the store has recorded,
which ones came before it (their runs it may process and migrate) and which after (their
runs it leaves alone during a rolling deploy). See docs/upgrading.md."""

from __future__ import annotations

from typing import final

from actorflow._model.clock import Clock
from actorflow._model.definition import Definition
from actorflow._model.record import RawRecord
from actorflow.stores import Store


@final
class Lineage:
    """This definition among the ones the store recorded for its workflow."""

    def __init__(self, store: Store, definition: Definition, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self.definition = definition
        self.fingerprint = definition.fingerprint
        self.older: set[str] = {"", definition.fingerprint}
        """Definitions whose runs this one may process: itself, the ones registered before
        it in the store, and versions written before fingerprints existed (``""``)."""
        self.newer: dict[str, str] = {}
        """Definitions registered after this one (or never registered), by fingerprint."""
        self.registered = False
        """Whether this definition was recorded in the store (before its first write)."""
        self.summaries: dict[str, str] = {definition.fingerprint: definition.summary}
        """The statuses, edges and object schema of every known definition, by fingerprint."""

    async def register(self) -> None:
        """Record this definition in the store (once) and learn which ones came before it."""
        register = getattr(self._store, "register_definition", None)
        self.registered = True  # concurrent first writes register once
        if register is None:
            return
        definition = self.definition
        try:
            known = await register(
                definition.name, self.fingerprint, definition.summary, self._clock.now()
            )
        except BaseException:
            self.registered = False
            raise
        older = True
        for fp, summary, _at in known:
            self.summaries[fp] = summary
            if older:
                self.older.add(fp)
                self.newer.pop(fp, None)
            elif fp not in self.older:
                self.newer[fp] = summary
            if fp == self.fingerprint:
                older = False

    def mapped_status(self, status: int) -> int:
        """The status a run stored at ``status`` is at for this definition."""
        mapping = self.definition.evolution.mappings.get(status)
        return status if mapping is None else int(mapping.new)

    def accepts_now(self, raw: RawRecord) -> bool:
        """Whether this definition may process the run, known without reading the store."""
        return raw.meta.definition in self.older

    async def accepts(self, raw: RawRecord) -> bool:
        """Whether this definition may process the run: not when a newer definition (one
        registered after this one, or not at all) last wrote it. A rolling deploy relies on
        this: old workers leave the runs new workers wrote alone."""
        if raw.meta.definition in self.older:
            return True
        if raw.meta.definition not in self.newer:
            await self.register()  # perhaps registered before us since we last looked
            if raw.meta.definition in self.older:
                return True
            self.newer.setdefault(raw.meta.definition, "")
        return False
