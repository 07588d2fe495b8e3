"""Store implementations behind one Protocol (see ``_protocol.py``)."""

from ._memory import MemoryStore as MemoryStore
from ._postgres import PostgresStore as PostgresStore
from ._protocol import Store as Store
from ._sqlite import SQLiteStore as SQLiteStore

__all__ = ["MemoryStore", "PostgresStore", "SQLiteStore", "Store"]
