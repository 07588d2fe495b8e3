"""Hot-path helpers that replace standard-library calls: they must behave like them."""

from __future__ import annotations

import json
import math
import os
import uuid
from typing import Any

import attrs
import pytest

from actorflow._model.codec import _ENCODE, ObjectCodec, _loads
from actorflow._model.errors import SerializationError
from actorflow._model.record import new_run_id


def test_run_ids_are_version_4_uuids_and_unique() -> None:
    ids = [new_run_id() for _ in range(5_000)]
    assert len(set(ids)) == len(ids)
    for run_id in ids[:600]:  # crosses a refill of the random pool
        parsed = uuid.UUID(run_id)
        assert parsed.hex == run_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_repeats_its_parents_next_run_ids() -> None:
    new_run_id()  # the pool now holds random bytes the child would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, " ".join(new_run_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    parent = {new_run_id() for _ in range(10)}
    assert len(child) == 10
    assert not child & parent


@pytest.mark.parametrize(
    "value",
    [{}, {"a": [1, 2.5, None, True, "é\n\u2028"]}, "text", 3, [], 1e100, {"k": math.inf}],
)
def test_object_json_is_what_the_standard_encoder_writes(value: object) -> None:
    standard = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode(value)
    assert _ENCODE(value) == standard
    assert _loads(standard) == json.loads(standard)


@pytest.mark.parametrize("text", ['{"a":1}', ' {"a": 1} ', "\n[1]"])
def test_stored_json_reads_like_json_loads(text: str) -> None:
    assert _loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", "{} x", "nul", "{"])
def test_broken_stored_json_raises_like_json_loads(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        _loads(text)


@attrs.define
class Holder:
    items: list[Any] = attrs.Factory(list)


def test_unserialisable_and_cyclic_objects_are_serialization_errors() -> None:
    codec = ObjectCodec(Holder, "wf")
    with pytest.raises(SerializationError, match="not JSON serializable"):
        codec.encode(Holder([object()]))
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises(SerializationError):
        codec.encode(Holder(cyclic))


def test_sqlite_time_text_is_isoformat_in_utc() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from actorflow.stores.sqlite.store import _created_text, _to_text

    moments = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 11, 26, 15, 0, 0, 0, tzinfo=UTC),
        datetime(2026, 11, 26, 15, 0, 0, 7, tzinfo=UTC),
    ]
    for moment in moments:
        assert _to_text(moment) == moment.isoformat(timespec="microseconds")
        assert _created_text(moment) == _to_text(moment)
    elsewhere = datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert _to_text(elsewhere) == "2025-12-31T23:00:00.000000+00:00"
    assert _created_text(elsewhere) == _to_text(elsewhere)


def test_run_ids_from_many_threads_are_unique() -> None:
    import threading

    found: list[list[str]] = []

    def make() -> None:
        found.append([new_run_id() for _ in range(20_000)])

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [run_id for ids in found for run_id in ids]
    assert len(every) == 160_000
    assert len(set(every)) == len(every)


def test_created_at_text_of_equal_but_different_local_times() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from actorflow.stores.sqlite.store import _created_text

    new_york = ZoneInfo("America/New_York")
    first = datetime(2024, 11, 3, 1, 30, tzinfo=new_york, fold=0)  # EDT
    second = datetime(2024, 11, 3, 1, 30, tzinfo=new_york, fold=1)  # EST, an hour later
    assert first == second  # Python compares these as equal: a cache must not merge them
    assert _created_text(first) == "2024-11-03T05:30:00.000000+00:00"
    assert _created_text(second) == "2024-11-03T06:30:00.000000+00:00"
