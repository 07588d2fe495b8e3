"""Store implementations behind one Protocol (see ``_protocol.py``)."""

from typing import TYPE_CHECKING

from actorflow._model.lazy import lazy_exports
from actorflow.stores.memory import MemoryStore as MemoryStore
from actorflow.stores.protocol import Store as Store
from actorflow.stores.sqlite.store import SQLiteStore as SQLiteStore

if TYPE_CHECKING:
    from actorflow.stores.postgres.store import PostgresStore as PostgresStore

__all__ = ["MemoryStore", "PostgresStore", "SQLiteStore", "Store"]

# Imported on first use: a worker on SQLite does not load the PostgreSQL store.
__getattr__ = lazy_exports(
    globals(), {"PostgresStore": "actorflow.stores.postgres.store:PostgresStore"}
)
