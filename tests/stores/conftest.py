"""Store fixtures: every store in STORE_FACTORIES runs the whole contract suite.

A later store adds itself here. Stores that need a server read its address from the
environment (``ACTORFLOW_PG_DSN``); `.ci/run` starts the servers and sets it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from actorflow.stores import MemoryStore, SQLiteStore, Store

StoreFactory = Callable[[Path], Awaitable[Store]]


async def _memory(tmp_path: Path) -> Store:
    return MemoryStore()


async def _sqlite(tmp_path: Path) -> Store:
    return SQLiteStore(tmp_path / "store.db")


STORE_FACTORIES: dict[str, StoreFactory] = {"memory": _memory, "sqlite": _sqlite}

# PostgreSQL: each store gets a schema of its own, dropped when the store is closed.
PG_DSN = os.environ.get("ACTORFLOW_PG_DSN")
PG_SKIP_REASON = "ACTORFLOW_PG_DSN not set: PostgreSQL store contract tests skipped"


async def _postgres(tmp_path: Path) -> Store:
    if not PG_DSN:
        pytest.skip(PG_SKIP_REASON)
    from actorflow.stores import PostgresStore

    return PostgresStore(
        PG_DSN, schema=f"af_test_{uuid.uuid4().hex[:16]}", pool_size=4, drop_schema_on_close=True
    )


STORE_FACTORIES["postgres"] = _postgres


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the PostgreSQL store's tests ``postgres``; skip them, loudly, without a server."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("store") == "postgres":
            item.add_marker(pytest.mark.postgres)
            if not PG_DSN:
                item.add_marker(pytest.mark.skip(reason=PG_SKIP_REASON))


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    factory = STORE_FACTORIES[request.param]
    made = await factory(tmp_path)
    try:
        yield made
    finally:
        await made.aclose()
