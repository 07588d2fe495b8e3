"""The probes' stores: the store under test by kind, opened again on the same storage
(a restart), and dropped afterwards (PostgreSQL schemas). The ``stores`` fixture of
tests/conftest.py makes one per kind."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import trio

import actorflow as af

PG_DSN = os.environ.get("ACTORFLOW_PG_DSN")


class Stores:
    """Opens the store under test; opening again reopens the same storage (a restart)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "probe.db"
        self.schema = f"af_probe_{uuid.uuid4().hex[:16]}"
        self.opened: list[af.Store] = []

    def open(self) -> af.Store:
        store: af.Store
        if self.kind == "memory":
            if self.opened:
                return self.opened[0]
            store = af.MemoryStore()
        elif self.kind == "sqlite":
            store = af.SQLiteStore(self.path)
        else:
            assert PG_DSN is not None
            store = af.PostgresStore(PG_DSN, schema=self.schema, pool_size=4)
        self.opened.append(store)
        return store

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    async def close_all(self) -> None:
        for store in self.opened:
            await store.aclose()
        self.opened.clear()
        if self.kind == "postgres":
            assert PG_DSN is not None
            await trio.to_thread.run_sync(_drop_schema, PG_DSN, self.schema)


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
