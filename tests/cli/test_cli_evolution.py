"""``actorflow runs check`` / ``runs migrate`` / ``runs history`` after a workflow changed."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from actorflow import cli

V1 = """
import enum, os
from datetime import timedelta
import attrs
import actorflow as af

DB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shop.db")

class S(enum.IntEnum):
    NEW = 1
    WAITING = 2
    DONE = 3

@attrs.define
class Order:
    qty: int = 1

def workflows():
    b = af.Builder("orders", Order, S)

    @b.step(S.NEW, to=S.WAITING)
    async def reserve(run):
        return S.WAITING

    async def paid(run, payload):
        return S.DONE

    b.add_callback(S.WAITING, paid, to=S.DONE)
    b.add_timeout(S.WAITING, af.after(timedelta(hours=1)), paid, to=S.DONE)
    return [b.build(af.SQLiteStore(DB))]
"""

V2 = """
import enum, os
from datetime import timedelta
import attrs
import actorflow as af

DB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shop.db")

class S(enum.IntEnum):
    NEW = 1
    AWAITING_PAYMENT = 4
    DONE = 3

@attrs.define
class Order:
    quantity: int = 1

def workflows():
    b = af.Builder("orders", Order, S)
    b.rename_status(2, S.AWAITING_PAYMENT)

    @b.upgrade_object
    def qty_to_quantity(data):
        return {"quantity": data["qty"]}

    @b.step(S.NEW, to=S.AWAITING_PAYMENT)
    async def reserve(run):
        return S.AWAITING_PAYMENT

    async def paid(run, payload):
        return S.DONE

    b.add_callback(S.AWAITING_PAYMENT, paid, to=S.DONE)
    b.add_timeout(S.AWAITING_PAYMENT, af.after(timedelta(hours=1)), paid, to=S.DONE)
    return [b.build(af.SQLiteStore(DB))]
"""

V3_STRANDED = """
import enum, os
import attrs
import actorflow as af

DB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shop.db")

class S(enum.IntEnum):
    NEW = 1
    DONE = 3

@attrs.define
class Order:
    qty: int = 1

def workflows():
    b = af.Builder("orders", Order, S)

    @b.step(S.NEW, to=S.DONE)
    async def finish(run):
        return S.DONE

    return [b.build(af.SQLiteStore(DB))]
"""


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Three versions of one application on one SQLite file; two runs of version 1
    waiting at WAITING."""
    names = {}
    for key, text in (("v1", V1), ("v2", V2), ("v3", V3_STRANDED)):
        names[key] = f"shop_{key}_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{names[key]}.py").write_text(textwrap.dedent(text))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.delenv("ACTORFLOW_APP", raising=False)
    return names


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def waiting_runs(module: str, n: int) -> list[str]:
    import importlib

    import actorflow as af

    (wf,) = importlib.import_module(module).workflows()
    ids = []
    async with af.open_workflow(wf):
        for i in range(n):
            run_id = await wf.trigger(f"o-{i}")
            await wf.await_status(f"o-{i}", run_id, wf.status_type(2), timeout=30)
            ids.append(run_id)
    await wf.store.aclose()
    return ids


def test_check_migrate_and_history(
    modules: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    import trio

    ids = trio.run(waiting_runs, modules["v1"], 3)
    v2 = f"{modules['v2']}:workflows"
    code, out, _ = run(capsys, "runs", "check", "--app", v2)
    assert code == 0, out
    assert "3 run(s): to migrate when loaded: status 2 renamed: moved to AWAITING_PAYMENT=4" in out
    assert "3 run(s): to migrate when loaded: object upgraded by " in out
    assert ids[0] in out
    code, out, err = run(capsys, "runs", "migrate", "--app", v2, "--dry-run")
    assert code == 0 and out.startswith("dry run, nothing written")
    assert "orders: checking" in err
    code, out, err = run(capsys, "runs", "migrate", "--app", v2)
    assert code == 0 and "3/3" in err, err
    code, out, _ = run(capsys, "runs", "check", "--app", v2)
    assert code == 0 and "all fit this definition" in out
    code, out, _ = run(capsys, "runs", "history", ids[1], "--app", v2)
    assert code == 0 and "DEFINITION" in out
    lines = [line for line in out.splitlines() if "AWAITING_PAYMENT (4)" in line]
    assert len(lines) == 1 and "status 2 renamed" in lines[0]
    code, out, _ = run(capsys, "runs", "check", "--app", v2, "--json")
    assert code == 0 and '"stranded": 0' in out


def test_check_exits_1_when_runs_are_stranded(
    modules: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    import trio

    ids = trio.run(waiting_runs, modules["v1"], 2)
    v3 = f"{modules['v3']}:workflows"
    code, out, _ = run(capsys, "runs", "check", "--app", v3)
    assert code == 1
    assert "2 run(s): unknown status: 2" in out and ids[0] in out
    code, out, _ = run(capsys, "runs", "migrate", "--app", v3)
    assert code == 0 and "2 run(s) parked" in out
    code, out, _ = run(capsys, "runs", "show", ids[0], "--app", v3)
    assert "PAUSED" in out and "unknown status: 2" in out
