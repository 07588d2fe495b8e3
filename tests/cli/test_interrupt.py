"""Ctrl-C: every command ends with exit code 130 and one line, never a traceback, tested
with a real SIGINT sent to a subprocess (mid-demo, mid-import, a watcher, a worker)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

import actorflow as af
from tests.cli.test_cli import Lines
from tests.workflows import yinyang

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
# The console script's own entry point (pyproject's [project.scripts]).
LAUNCH = [
    sys.executable,
    "-c",
    "import sys; from _actorflow_launch import main; sys.argv[0] = 'actorflow'; sys.exit(main())",
]

pytestmark = pytest.mark.slow


async def _interrupt(
    argv: list[str], ready: str, stream: str = "stdout", cwd: Path | None = None
) -> tuple[int, list[str], list[str]]:
    """Start ``argv``, wait for a line matching ``ready``, send SIGINT; return the exit
    code, stdout and stderr lines."""
    process = await trio.lowlevel.open_process(
        argv, env=ENV, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    out, err = Lines(process.stdout), Lines(process.stderr)
    try:
        with trio.fail_after(60):
            await (out if stream == "stdout" else err).until(ready)
            process.send_signal(signal.SIGINT)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(out.rest)
                nursery.start_soon(err.rest)
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    return code, out.seen, err.seen


async def test_ctrl_c_mid_demo_exits_130_with_one_line() -> None:
    code, out, err = await _interrupt([*LAUNCH, "demo"], r"order-\d+\s+v2")
    assert code == 130
    assert err == ["actorflow demo: interrupted"], err
    assert not any("Traceback" in line for line in out + err)


async def test_ctrl_c_while_actorflow_is_still_being_imported(tmp_path: Path) -> None:
    # A deterministic "Ctrl-C during the import": SIGINT arrives while trio is imported.
    script = textwrap.dedent(
        """
        import builtins, os, signal, sys
        # A terminal's Ctrl-C: SIGINT neither blocked nor ignored, whatever this process
        # inherited (trio starts processes from a worker thread, whose signal mask the
        # child inherits; once in a full run SIGINT never arrived and the command ran on)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.default_int_handler)
        real_import = builtins.__import__
        def slow_import(name, *args, **kwargs):
            if name == "trio" and "trio" not in sys.modules:
                print("importing", flush=True)
                os.kill(os.getpid(), signal.SIGINT)
            return real_import(name, *args, **kwargs)
        builtins.__import__ = slow_import
        from _actorflow_launch import main
        sys.argv[0] = "actorflow"
        sys.exit(main())
        """
    )
    done = await trio.run_process(
        [sys.executable, "-c", script, "runs", "list"],
        env=ENV,
        cwd=tmp_path,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 130, done.stderr.decode()
    assert done.stderr.decode().splitlines() == ["actorflow: interrupted"]


async def test_ctrl_c_ends_watch_and_worker_with_130(tmp_path: Path) -> None:
    app = tmp_path / "ctrlc_app.py"
    app.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(ROOT)!r})
            import actorflow as af
            from actorflow.testing import trio_clock
            from datetime import datetime, UTC
            from tests.workflows import yinyang
            workflow = yinyang(af.SQLiteStore({str(tmp_path / "w.db")!r}),
                               trio_clock(datetime(2026, 1, 1, tzinfo=UTC)))
            """
        )
    )
    env_cwd = tmp_path
    # watch, against a gateway served here
    workflow = yinyang(af.MemoryStore(), af.SystemClock())
    async with af.open_workflow(workflow), trio.open_nursery() as nursery:
        port = await nursery.start(
            functools.partial(af.serve_gateway, [workflow], "127.0.0.1", 0, token="t")
        )
        code, out, err = await _interrupt(
            [*LAUNCH, "watch", "--url", f"ws://127.0.0.1:{port}/", "--token", "t"],
            r"^watching yinyang",
            stream="stderr",
        )
        nursery.cancel_scope.cancel()
    assert code == 130
    assert err[-1] == "actorflow: interrupted"
    assert not any("Traceback" in line for line in out + err)
    # worker: a graceful stop, then 130
    code, out, err = await _interrupt(
        [*LAUNCH, "worker", "ctrlc_app:workflow"], r"^worker running", "stderr", env_cwd
    )
    assert code == 130
    assert err[-1] == "worker stopped"
    assert any(line.startswith("got SIGINT: stopping gracefully") for line in err)
    assert not any("Traceback" in line for line in out + err)


async def test_ctrl_c_mid_demo_through_scripts_demo(tmp_path: Path) -> None:
    """``bash scripts/demo`` execs the installed ``actorflow demo``: the SIGINT reaches it
    and its exit code is the script's. (The environment is prepared here, as if
    scripts/demo had made and installed it, so the test needs no network.)"""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "demo").write_text((ROOT / "scripts" / "demo").read_text())
    (tmp_path / "pyproject.toml").write_text("")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    launcher = bin_dir / "actorflow"
    launcher.write_text(f'#!/bin/sh\nexec {" ".join(map(repr, LAUNCH))} "$@"\n')
    launcher.chmod(0o755)
    (tmp_path / ".venv" / ".actorflow-installed").touch()
    code, out, err = await _interrupt(
        ["bash", str(tmp_path / "scripts" / "demo")], r"order-\d+\s+v2", cwd=tmp_path
    )
    assert code == 130
    assert err == ["actorflow demo: interrupted"], err
    assert not any("Traceback" in line for line in out + err)
