"""The ``actorflow`` command line: in-process on a SQLite file, and end to end in processes."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import actorflow as af
from actorflow import cli

ROOT = Path(__file__).resolve().parents[2]

APP = '''
"""A test application for the command line."""
import enum
import os
from datetime import timedelta

import attrs

import actorflow as af

DB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.db")


class Status(enum.IntEnum):
    STARTED = 1
    MIDDLE = 2
    END = 3


@attrs.define
class YinYang:
    yin: bool = False
    yang: bool = False
    note: str = ""


def yinyang(store):
    builder = af.Builder("yinyang", YinYang, Status)

    @builder.step(Status.STARTED, to=Status.MIDDLE)
    async def start(run):
        run.object.yin = True
        return Status.MIDDLE

    async def got_payment(run, payload):
        if payload == b"bad":
            raise ValueError("cannot parse payload")
        run.object.yang = True
        run.object.note = payload.decode()
        return Status.END

    builder.add_callback(Status.MIDDLE, got_payment, to=[Status.END])

    async def gave_up(run, now):
        return Status.END

    builder.add_timeout(Status.MIDDLE, af.after(timedelta(hours=1)), gave_up, to=[Status.END])
    return builder.build(store, poll_interval=timedelta(milliseconds=50))


class Three(enum.IntEnum):
    A = 1
    B = 2


@attrs.define
class Counter:
    n: int = 0


def three(store):
    builder = af.Builder("three", Counter, Three)

    @builder.step(Three.A, to=Three.B)
    async def count(run):
        run.object.n += 1
        return Three.B

    return builder.build(store)


def workflow():
    return yinyang(af.SQLiteStore(DB))


def both():
    store = af.SQLiteStore(DB)
    return [yinyang(store), three(store)]


not_a_workflow = 42


def broken():
    raise RuntimeError("boom")
'''


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The name of a fresh application module in tmp_path, the current directory."""
    name = f"cliapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(APP))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("ACTORFLOW_APP", raising=False)
    monkeypatch.delenv("ACTORFLOW_TOKEN", raising=False)
    yield name
    sys.modules.pop(name, None)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    return out


# -- in-process ---------------------------------------------------------------------------------


def test_graph_prints_mermaid(app: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = ok(capsys, "graph", f"{app}:workflow")
    assert out.startswith("stateDiagram-v2\n")
    assert "    [*] --> STARTED\n" in out
    assert "    MIDDLE --> END: callback\n" in out
    assert "    MIDDLE --> END: timeout\n" in out
    both = ok(capsys, "graph", f"{app}:both")
    assert "%% workflow yinyang\nstateDiagram-v2" in both
    assert "%% workflow three\nstateDiagram-v2" in both
    only = ok(capsys, "graph", f"{app}:both", "--workflow", "three")
    assert "A --> B" in only and "MIDDLE" not in only


def test_trigger_list_show_history_and_callback(
    app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = f"{app}:workflow"
    first = ok(capsys, "trigger", "f1", "--app", ref).strip()
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    second = ok(
        capsys, "trigger", "f2", "--app", ref, "--start", "middle", "--initial", '{"note": "hi"}'
    ).strip()

    table = ok(capsys, "runs", "list", "--app", ref)
    assert table.splitlines()[0].split()[:4] == ["RUN", "ID", "FOREIGN", "ID"]
    assert [line.split()[:4] for line in table.splitlines()[1:]] == [
        [first, "f1", "STARTED", "INITIATED"],
        [second, "f2", "MIDDLE", "INITIATED"],
    ]
    records = json.loads(ok(capsys, "runs", "list", "--app", ref, "--json", "--status", "2"))
    assert [(r["run_id"], r["object"]["note"]) for r in records] == [(second, "hi")]
    assert json.loads(ok(capsys, "runs", "list", "--app", ref, "--json", "--run-state", "5")) == []
    by_foreign_id = json.loads(
        ok(capsys, "runs", "list", "--app", ref, "--json", "--foreign-id", "f1")
    )
    assert [r["run_id"] for r in by_foreign_id] == [first]
    newest = ok(capsys, "runs", "list", "--app", ref, "--descending", "--limit", "1")
    assert second in newest and first not in newest
    code, page, err = run_cli(capsys, "runs", "list", "--app", ref, "--limit", "1")
    assert code == 0 and first in page and second not in page
    assert f"--after {first}" in err
    page = ok(capsys, "runs", "list", "--app", ref, "--after", first)
    assert second in page and first not in page

    done = ok(capsys, "callback", "f2", "MIDDLE", "--data", "paid", "--app", ref)
    assert done.strip() == f"run {second} (yinyang f2): END, COMPLETED, version 2"
    assert second in ok(capsys, "runs", "list", "--app", ref, "--run-state", "completed")

    shown = ok(capsys, "runs", "show", second, "--app", ref)
    assert "status      END (3)" in shown
    assert "run state   COMPLETED" in shown
    assert '"note": "paid"' in shown
    assert json.loads(ok(capsys, "runs", "show", second, "--app", ref, "--json"))["version"] == 2
    history = ok(capsys, "runs", "history", second, "--app", ref)
    assert [line.split()[0] for line in history.splitlines()[1:]] == ["1", "2"]
    assert "MIDDLE (2)" in history and "END (3)" in history
    versions = json.loads(ok(capsys, "runs", "history", second, "--app", ref, "--json"))
    assert [(r["version"], r["status_name"]) for r in versions] == [(1, "MIDDLE"), (2, "END")]


def test_trigger_from_a_json_lines_file(
    app: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ref = f"{app}:workflow"
    lines = [json.dumps(f"bulk-{i}") for i in range(25)]
    lines += [
        json.dumps({"foreign_id": "rich", "start": "middle", "initial": {"note": "hi"}}),
        "",
        json.dumps("bulk-3"),  # started by line 4 of this file: refused
        "{not json",
        json.dumps({"foreign_id": "odd", "initial": [1]}),
    ]
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, "trigger", "--from-file", "runs.jsonl", "--app", ref)
    assert code == 1
    assert out.strip() == "started 26 run(s); 3 refused"
    assert "[" in err and "29/29 lines" in err and "100%" in err  # the progress bar
    assert "line 28: " in err and "'bulk-3' is INITIATED" in err
    assert "line 29: not JSON" in err
    assert "line 30: initial must be a JSON object" in err
    records = json.loads(ok(capsys, "runs", "list", "--app", ref, "--json", "--limit", "100"))
    assert len(records) == 26
    rich = [r for r in records if r["foreign_id"] == "rich"]
    assert rich[0]["status_name"] == "MIDDLE" and rich[0]["object"]["note"] == "hi"
    code, out, err = run_cli(capsys, "trigger", "--app", ref)
    assert code == 2 and "FOREIGN_ID" in err
    code, out, err = run_cli(capsys, "trigger", "x", "--from-file", "runs.jsonl", "--app", ref)
    assert code == 2 and "not both" in err


def test_callback_payload_from_a_file_and_from_stdin(
    app: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ref = f"{app}:workflow"
    ok(capsys, "trigger", "f1", "--start", "MIDDLE", "--app", ref)
    (tmp_path / "payload.txt").write_bytes("from a file ✓".encode())
    ok(capsys, "callback", "f1", "2", "--file", str(tmp_path / "payload.txt"), "--app", ref)
    ok(capsys, "trigger", "f2", "--start", "MIDDLE", "--app", ref)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin")))
    ok(capsys, "callback", "f2", "MIDDLE", "--file", "-", "--app", ref)
    notes = {
        r["foreign_id"]: r["object"]["note"]
        for r in json.loads(ok(capsys, "runs", "list", "--json", "--app", ref))
    }
    assert notes == {"f1": "from a file ✓", "f2": "from stdin"}


def test_callback_that_finds_nothing_or_fails(app: str, capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"{app}:workflow"
    run_id = ok(capsys, "trigger", "f1", "--app", ref).strip()
    code, out, err = run_cli(capsys, "callback", "f1", "MIDDLE", "--data", "x", "--app", ref)
    assert (code, out) == (1, "")
    assert err == (
        f"actorflow: error: nothing happened: the latest run of 'f1' ({run_id}) is at "
        "STARTED, INITIATED, not waiting at MIDDLE\n"
    )
    ok(capsys, "trigger", "f2", "--start", "MIDDLE", "--app", ref)
    code, _, err = run_cli(capsys, "callback", "f2", "MIDDLE", "--data", "bad", "--app", ref)
    assert code == 1
    assert err.startswith("actorflow: error: ") and "cannot parse payload" in err
    assert len(err.splitlines()) == 1


def test_pause_resume_cancel(app: str, capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"{app}:both"
    run_id = ok(capsys, "trigger", "f1", "--app", ref, "--workflow", "yinyang").strip()
    # The run id is found in whichever workflow holds it.
    paused = ok(capsys, "pause", run_id, "--app", ref, "--reason", "waiting for stock")
    assert "STARTED, PAUSED, version 2 (waiting for stock)" in paused
    assert "RUNNING" in ok(capsys, "resume", run_id, "--app", ref)
    assert "CANCELLED" in ok(capsys, "cancel", run_id, "--app", ref, "--reason", "duplicate")
    code, _, err = run_cli(capsys, "cancel", run_id, "--app", ref)
    assert code == 1 and "cannot go from CANCELLED to CANCELLED" in err
    history = json.loads(ok(capsys, "runs", "history", run_id, "--app", ref, "--json"))
    assert [r["run_state"] for r in history] == [
        "INITIATED",
        "PAUSED",
        "RUNNING",
        "CANCELLED",
    ]
    assert history[-1]["meta"]["run_state_reason"] == "duplicate"


def test_app_from_the_environment(
    app: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTORFLOW_APP", f"{app}:both")
    run_id = ok(capsys, "trigger", "c1", "--workflow", "three").strip()
    assert run_id in ok(capsys, "runs", "list", "--workflow", "three")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["graph", "no_colon"], 2, "is not MODULE:ATTR"),
        (["graph", "no_such_module_here:x"], 2, "no module named 'no_such_module_here'"),
        (["graph", "{app}:nope"], 2, "has no attribute 'nope'"),
        (["graph", "{app}:not_a_workflow"], 1, "is a int, not a Workflow"),
        (["graph", "{app}:broken"], 1, "RuntimeError: boom"),
        (["graph", "{app}:both", "--workflow", "other"], 2, "no workflow named 'other'"),
        (["runs", "list"], 2, "give --app MODULE:ATTR"),
        (["runs", "list", "--app", "{app}:both"], 2, "choose one with --workflow NAME"),
        (["runs", "list", "--app", "{app}:workflow", "--status", "NOPE"], 2, "'NOPE' is not"),
        (["runs", "list", "--app", "{app}:workflow", "--status", "9"], 2, "STARTED=1"),
        (["runs", "list", "--app", "{app}:workflow", "--run-state", "asleep"], 2, "RUNNING=2"),
        (["runs", "list", "--app", "{app}:workflow", "--limit", "0"], 2, "--limit"),
        (["runs", "list", "--app", "{app}:workflow", "--bogus"], 2, "--bogus"),
        (["runs", "show", "feedface", "--app", "{app}:workflow"], 1, "feedface"),
        (["runs", "history", "feedface", "--app", "{app}:both"], 1, "no run 'feedface'"),
        (["pause", "feedface", "--app", "{app}:workflow"], 1, "feedface"),
        (["trigger", "f", "--app", "{app}:workflow", "--initial", "{bad"], 2, "not valid JSON"),
        (["trigger", "f", "--app", "{app}:workflow", "--initial", "[]"], 2, "JSON object"),
        # #13: initial is structured strictly, naming the field; text and numbers are checked
        (
            ["trigger", "f", "--app", "{app}:workflow", "--initial", '{"yin": "maybe"}'],
            2,
            "initial.yin",
        ),
        (
            ["trigger", "f", "--app", "{app}:workflow", "--initial", '{"note": 5}'],
            2,
            "initial.note",
        ),
        (
            ["trigger", "f", "--app", "{app}:workflow", "--initial", '{"colour": 1}'],
            2,
            "(colour) @ initial",
        ),
        (
            ["trigger", "f", "--app", "{app}:workflow", "--initial", '{"count": NaN}'],
            2,
            "NaN is not JSON",
        ),
        (["trigger", "f\udcff", "--app", "{app}:workflow"], 2, "not valid Unicode"),
        (["trigger", "f", "--app", "{app}:workflow", "--start", "END"], 2, "cannot start at END"),
        (["callback", "f", "MIDDLE", "--app", "{app}:workflow"], 2, "--data"),
        (["callback", "nobody", "MIDDLE", "--data", "x", "--app", "{app}:workflow"], 1, "nobody"),
        (["callback", "f", "START", "--data", "x", "--app", "{app}:workflow"], 2, "'START'"),
        (["callback", "f", "MIDDLE", "--file", "/nonexistent", "--app", "{app}:workflow"], 2, ""),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "required"),
        (["worker", "{app}:workflow", "--gateway", "localhost"], 2, "HOST:PORT"),
        (["worker", "{app}:workflow", "--gateway", "127.0.0.1:99999"], 2, "65535"),
        (["worker", "{app}:workflow", "--token", "t"], 2, "--gateway"),
        (["watch", "--url", "http://127.0.0.1:1/"], 2, "ws://"),
        (["watch", "--url", "ws://127.0.0.1:1/"], 1, "127.0.0.1:1"),
    ],
)
def test_user_errors_are_one_line_and_exit_1_or_2(
    app: str, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    got, out, err = run_cli(capsys, *(arg.replace("{app}", app) for arg in argv))
    assert (got, out) == (code, "")
    assert len(err.splitlines()) == 1, err
    assert err.startswith("actorflow: error: ")
    assert message in err
    assert "Traceback" not in err


def test_traceback_on_request(app: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--traceback", "graph", f"{app}:broken")
    assert code == 1
    assert "Traceback" in err and err.rstrip().endswith("RuntimeError: boom")


def test_demo_help_is_the_demo_s(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["demo", "--help"])
    assert exited.value.code == 0
    assert "--payment-timeout" in capsys.readouterr().out


# -- in processes -------------------------------------------------------------------------------


class Lines:
    """Reads a process's output line by line."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.seen: list[str] = []

    async def until(self, pattern: str) -> re.Match[str]:
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                text = line.decode()
                self.seen.append(text)
                match = re.search(pattern, text)
                if match:
                    return match
            data = await self._stream.receive_some()
            if not data:
                raise AssertionError(f"no line matched {pattern!r}; got {self.seen}")
            self._buffer += data

    async def rest(self) -> list[str]:
        while data := await self._stream.receive_some():
            self._buffer += data
        self.seen.extend(self._buffer.decode().splitlines())
        return self.seen


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "actorflow.cli", *args]


@pytest.mark.slow
async def test_worker_with_gateway_and_watch_end_to_end(app: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = await trio.lowlevel.open_process(
        command("worker", f"{app}:workflow", "--gateway", "127.0.0.1:0", "--token", "s3cret"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    watcher: trio.Process | None = None
    orphan: trio.Process | None = None
    try:
        assert worker.stderr is not None
        worker_log = Lines(worker.stderr)
        with trio.fail_after(20):
            port = int((await worker_log.until(r"ws://127\.0\.0\.1:(\d+)/")).group(1))
            await worker_log.until(r"worker running yinyang")
        url = f"ws://127.0.0.1:{port}/"

        with trio.fail_after(20):
            refused = await trio.run_process(
                command("watch", "--url", url, "--token", "wrong"),
                env=env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert refused.returncode == 1
        assert b"check the token" in refused.stderr
        assert len(refused.stderr.splitlines()) == 1

        watcher = await trio.lowlevel.open_process(
            command("watch", "--url", url, "--json", "--count", "5"),
            env={**env, "ACTORFLOW_TOKEN": "s3cret"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert watcher.stdout is not None and watcher.stderr is not None
        with trio.fail_after(20):
            await Lines(watcher.stderr).until(r"^watching yinyang at ")

        # Through the gateway: the worker stores and publishes v1, v2 (step), v3.
        async with af.open_gateway_client(url, token="s3cret") as client:
            with trio.fail_after(20):
                run_id = await client.trigger("yinyang", "w1")
                await client.await_status("yinyang", "w1", run_id, "MIDDLE")
                await client.callback("yinyang", "w1", "MIDDLE", b"paid")
                # From another process, straight into the store: the worker notices it
                # in its event log, relays v1 to its subscribers and runs the step (v2).
                other = await trio.to_thread.run_sync(
                    cli.main, ["trigger", "w2", "--app", f"{app}:workflow"]
                )
                assert other == 0
                changes = await Lines(watcher.stdout).rest()
                assert await watcher.wait() == 0
        seen = [json.loads(line) for line in changes]
        assert [(r["foreign_id"], r["version"], r["status_name"]) for r in seen] == [
            ("w1", 1, "STARTED"),
            ("w1", 2, "MIDDLE"),
            ("w1", 3, "END"),
            ("w2", 1, "STARTED"),
            ("w2", 2, "MIDDLE"),
        ]
        assert seen[2]["object"] == {"yin": True, "yang": True, "note": "paid"}

        # A watcher whose gateway goes away fails with one line.
        orphan = await trio.lowlevel.open_process(
            command("watch", "--url", url, "--token", "s3cret"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert orphan.stderr is not None
        orphan_log = Lines(orphan.stderr)
        with trio.fail_after(20):
            await orphan_log.until(r"^watching yinyang at ")

        worker.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            log = await worker_log.rest()
            assert await worker.wait() == 0
            assert await orphan.wait() == 1
            lost = await orphan_log.rest()
        assert lost[-1].startswith("actorflow: error: watching yinyang ended: connection")
        assert "got SIGTERM: stopping gracefully" in "\n".join(log)
        assert log[-1] == "worker stopped"
    finally:
        for process in (worker, watcher, orphan):
            if process is not None and process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()


@pytest.mark.slow
async def test_worker_serves_the_console(app: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACTORFLOW_READ_ONLY_TOKEN": "peek"}
    worker = await trio.lowlevel.open_process(
        command("worker", f"{app}:workflow", "--console", "127.0.0.1:0", "--token", "s3cret"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert worker.stderr is not None
        worker_log = Lines(worker.stderr)
        with trio.fail_after(20):
            port = int(
                (await worker_log.until(r"console listening on http://127\.0\.0\.1:(\d+)/")).group(
                    1
                )
            )
            await worker_log.until(r"worker running yinyang")

        def session(token: str) -> bytes:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/session")
            request.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(request, timeout=10) as response:
                body: bytes = response.read()
                return body

        with trio.fail_after(20):
            assert b'"access":"read_only"' in await trio.to_thread.run_sync(session, "peek")
            url = f"ws://127.0.0.1:{port}/ws"
            async with af.open_gateway_client(url, token="s3cret") as client:
                run_id = await client.trigger("yinyang", "c1")
                await client.await_status("yinyang", "c1", run_id, "MIDDLE")
                await client.pause("yinyang", run_id, "from the console")
            async with af.open_gateway_client(url, token="peek") as looker:
                with pytest.raises(af.GatewayError, match="read-only"):
                    await looker.resume("yinyang", run_id)
        store = af.SQLiteStore(tmp_path / "app.db")
        try:
            stored = await store.lookup("yinyang", run_id)
        finally:
            await store.aclose()
        assert stored.run_state is af.RunState.PAUSED
        assert stored.meta.run_state_reason == "from the console"

        worker.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            log = await worker_log.rest()
            assert await worker.wait() == 0
        assert log[-1] == "worker stopped"
    finally:
        if worker.returncode is None:
            worker.kill()
            with trio.CancelScope(shield=True):
                await worker.wait()


async def test_worker_console_options_are_checked(
    app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "worker", f"{app}:workflow", "--console", "nowhere")
    assert code == 2 and "--console 'nowhere' is not HOST:PORT" in err
    code, _, err = run_cli(
        capsys, "worker", f"{app}:workflow", "--console", ":0", "--read-only-token", "x"
    )
    assert code == 2 and "--read-only-token needs --token" in err


@pytest.mark.slow
async def test_demo_runs_green() -> None:
    script = Path(sys.executable).with_name("actorflow")
    argv = [str(script), "demo"] if script.exists() else command("demo")
    with trio.fail_after(60):
        result = await trio.run_process(
            argv, cwd="/", capture_stdout=True, capture_stderr=True, check=False
        )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert result.stderr == b""
    assert "Summary (6 orders and a report" in out
    assert re.search(r"order-1001\s+SHIPPED\s+COMPLETED\s+4", out)
    assert re.search(r"order-1003\s+PAYMENT_EXPIRED\s+COMPLETED\s+3", out)
    assert re.search(r"order-1006\s+AWAITING_PAYMENT\s+CANCELLED\s+3", out)
    assert re.search(r"sales-report\s+PUBLISHED\s+COMPLETED\s+2", out)


def test_a_failing_callback_prints_one_line_in_a_real_process(app: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ref = f"{app}:workflow"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    assert run("trigger", "f", "--start", "MIDDLE", "--app", ref).returncode == 0
    failed = run("callback", "f", "MIDDLE", "--data", "bad", "--app", ref)
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert len(failed.stderr.splitlines()) == 1, failed.stderr
    assert failed.stderr.startswith("actorflow: error: ")
    assert "ValueError: cannot parse payload" in failed.stderr
    # On request: the traceback of the error, and of what was logged on the way.
    shown = run("--traceback", "callback", "f", "MIDDLE", "--data", "bad", "--app", ref)
    assert shown.returncode == 1
    assert "Traceback" in shown.stderr and "cannot parse payload" in shown.stderr
    assert shown.stderr.splitlines()[-1].startswith("actorflow: error: ")


def test_an_unexpected_error_is_one_line_too(
    app: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(args: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli._cli_commands, "load_app", broken)  # graph's first call
    code, out, err = run_cli(capsys, "graph", f"{app}:workflow")
    assert (code, out) == (1, "")
    assert err == (
        "actorflow: error: unexpected ZeroDivisionError: division by zero (run again with "
        "--traceback to see where)\n"
    )
    code, _, err = run_cli(capsys, "--traceback", "graph", f"{app}:workflow")
    assert code == 1 and "Traceback" in err


@pytest.mark.slow
async def test_a_second_worker_on_one_sqlite_file_is_refused_while_others_may_use_it(
    app: str, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ref = f"{app}:workflow"

    async def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(60):
            return await trio.run_process(
                command(*args),
                cwd=tmp_path,
                env=env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    async def start_worker() -> tuple[trio.Process, Lines]:
        process = await trio.lowlevel.open_process(
            command("worker", ref),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        lines = Lines(process.stderr)
        with trio.fail_after(30):
            await lines.until(r"worker running yinyang")
        return process, lines

    first, _ = await start_worker()
    workers = [first]
    try:
        second = await run("worker", ref)
        assert second.returncode == 1
        err = second.stderr.decode()
        assert len(err.splitlines()) == 1, err
        assert err.startswith("actorflow: error: ")
        assert f"another process (pid {first.pid}) already runs workflows on this file" in err
        # Other processes still trigger, call back and read beside the worker.
        triggered = await run("trigger", "f", "--start", "MIDDLE", "--app", ref)
        assert triggered.returncode == 0, triggered.stderr
        called = await run("callback", "f", "MIDDLE", "--data", "paid", "--app", ref)
        assert called.returncode == 0, called.stderr
        shown = await run("runs", "show", triggered.stdout.decode().strip(), "--app", ref, "--json")
        assert json.loads(shown.stdout)["status_name"] == "END"
        # The lock dies with its process, also with kill -9.
        first.kill()
        await first.wait()
        third, _ = await start_worker()
        workers.append(third)
        third.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await third.wait() == 0
    finally:
        for process in workers:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
