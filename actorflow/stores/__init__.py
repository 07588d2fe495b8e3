"""Store implementations behind one Protocol (see ``_protocol.py``)."""

from ._memory import MemoryStore as MemoryStore
from ._protocol import Store as Store

__all__ = ["MemoryStore", "Store"]
