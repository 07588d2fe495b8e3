"""``import actorflow`` loads what a worker on SQLite needs, and the rest on first use
(every restart pays for the imports: docs/scale.md)."""

from __future__ import annotations

import actorflow as af
from tests.fresh_python import printed_lines


def test_optional_parts_are_imported_on_first_use() -> None:
    script = """
        import sys
        import actorflow as af
        heavy = ("pytest", "trio.testing", "trio_websocket", "actorflow.gateway",
                 "actorflow.testing", "actorflow.stores.postgres",
                 "actorflow.streaming._kafka", "actorflow.streaming._redis", "psycopg")
        print(sorted(name for name in heavy if name in sys.modules))
        store = af.PostgresStore
        print(store.__module__, "actorflow.stores.postgres" in sys.modules)
        from actorflow.streaming import KafkaStats
        print(af.testing.__name__, KafkaStats.__module__)
        """
    assert printed_lines(script) == [
        "[]",
        "actorflow True",
        "actorflow.testing actorflow.streaming._kafka",
    ]


def test_every_public_name_resolves() -> None:
    for name in af.__all__:
        value = getattr(af, name)
        if isinstance(value, type) or callable(value):
            assert value.__module__ == "actorflow", name
    assert af.PostgresStore is af.stores.PostgresStore
    assert af.KafkaStreamer is af.streaming.KafkaStreamer
    try:
        af.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("af.NoSuchName resolved")
