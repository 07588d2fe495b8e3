"""Names a package exports but imports on first use (PEP 562 module ``__getattr__``).

A worker on SQLite does not need the PostgreSQL store, the Kafka and Redis streamers, the
gateway's websocket stack or the testing helpers: importing them all made ``import
actorflow`` (and so every restart) a fifth of a second slower. The names stay where they
were (``af.PostgresStore``, ``from actorflow.stores import PostgresStore``); the module
behind one is imported the first time the name is looked up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

PUBLIC: frozenset[str] = frozenset(
    {"PostgresStore", "KafkaStreamer", "RedisStreamer", "open_gateway_client", "serve_gateway"}
)
"""The lazy names that are also ``af.<name>``: their ``__module__`` says ``actorflow``
(tracebacks and docs say ``actorflow.PostgresStore``), as for every other ``af.`` name."""


def lazy_exports(namespace: dict[str, Any], exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``namespace`` (the package's ``globals()``).

    ``exports`` maps a name to ``"module:attribute"``, or to ``"module"`` for a module.
    The value found is stored in ``namespace``, so each name is looked up once.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, _, attribute = target.partition(":")
        value: Any = importlib.import_module(module_name)
        if attribute:
            value = getattr(value, attribute)
            if name in PUBLIC:
                value.__module__ = "actorflow"
        namespace[name] = value
        return value

    return __getattr__
