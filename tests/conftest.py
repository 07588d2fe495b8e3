"""Shared fixtures: the autojump clock, a wall clock over it, and the embedded stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

import actorflow as af
from actorflow.testing import trio_clock
from tests.probe_stores import PG_DSN, Stores

START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)

StoreMaker = Callable[[], af.Store]


@pytest.fixture
def clock() -> af.Clock:
    """Wall time for workflows: START + trio time. Tests that use it also take
    ``autojump_clock`` (pytest-trio only runs a test under a clock among its own arguments)."""
    return trio_clock(START)


def _embedded_stores() -> list[str]:
    names = ["memory"]
    if hasattr(af, "SQLiteStore"):
        names.append("sqlite")
    return names


@pytest.fixture(params=_embedded_stores())
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreMaker]:
    """A factory for the store under test; calling it again reopens the same storage
    (a 'restart'). Stores are closed at the end."""
    opened: list[af.Store] = []
    memory: list[af.Store] = []

    def make() -> af.Store:
        if request.param == "memory":
            if not memory:
                memory.append(af.MemoryStore())
            return memory[0]
        store: af.Store = af.SQLiteStore(tmp_path / "actorflow.db")  # type: ignore[attr-defined]
        opened.append(store)
        return store

    yield make
    for store in opened + memory:
        await store.aclose()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    """The store under test (the probes'), reopened on the same storage by ``open()``."""
    if request.param == "postgres" and not PG_DSN:
        pytest.skip("ACTORFLOW_PG_DSN not set")
    made = Stores(request.param, tmp_path)
    try:
        yield made
    finally:
        await made.close_all()
