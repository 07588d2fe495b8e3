"""Store fixtures: every store in STORE_FACTORIES runs the whole contract suite.

A later store adds itself here. Stores that need a server read its address from the
environment (``ACTORFLOW_PG_DSN``); `.ci/run` starts the servers and sets it.
"""

from __future__ import annotations

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


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    factory = STORE_FACTORIES[request.param]
    made = await factory(tmp_path)
    try:
        yield made
    finally:
        await made.aclose()
