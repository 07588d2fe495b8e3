"""Hot-path helpers that replace standard-library calls: they must behave like them."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import attrs
import pytest

from actorflow._model.codec import ObjectCodec
from actorflow._model.errors import SerializationError
from actorflow._model.record import new_run_id


def test_run_ids_are_time_ordered_version_7_uuids_and_unique() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_run_id() for _ in range(5_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for run_id in ids:
        parsed = uuid.UUID(run_id)
        assert parsed.hex == run_id
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # the creation time, in milliseconds
    millis = [uuid.UUID(run_id).int >> 80 for run_id in ids]
    assert millis == sorted(millis)  # later runs sort after earlier ones


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_repeats_its_parents_next_run_ids() -> None:
    new_run_id()
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

    from actorflow.stores.sqlite.codec import to_text as _to_text

    moments = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 11, 26, 15, 0, 0, 0, tzinfo=UTC),
        datetime(2026, 11, 26, 15, 0, 0, 7, tzinfo=UTC),
    ]
    for moment in moments:
        assert _to_text(moment) == moment.isoformat(timespec="microseconds")
    elsewhere = datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert _to_text(elsewhere) == "2025-12-31T23:00:00.000000+00:00"


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


def test_stored_time_text_of_equal_but_different_local_times() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from actorflow.stores.sqlite.codec import to_text as _to_text

    new_york = ZoneInfo("America/New_York")
    first = datetime(2024, 11, 3, 1, 30, tzinfo=new_york, fold=0)  # EDT
    second = datetime(2024, 11, 3, 1, 30, tzinfo=new_york, fold=1)  # EST, an hour later
    assert first == second  # Python compares these as equal; they are different instants
    assert _to_text(first) == "2024-11-03T05:30:00.000000+00:00"
    assert _to_text(second) == "2024-11-03T06:30:00.000000+00:00"
