"""Store implementations behind one Protocol (see ``_protocol.py``)."""

from actorflow.stores.memory import MemoryStore as MemoryStore
from actorflow.stores.postgres.store import PostgresStore as PostgresStore
from actorflow.stores.protocol import Store as Store
from actorflow.stores.sqlite.store import SQLiteStore as SQLiteStore

__all__ = ["MemoryStore", "PostgresStore", "SQLiteStore", "Store"]
