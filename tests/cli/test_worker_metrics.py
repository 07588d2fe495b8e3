"""``actorflow worker --metrics``: /metrics scraped over real HTTP from a real worker process
while runs go through, parsed with prometheus_client's parser; /healthz and /readyz."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
METRICS = ("--metrics", "127.0.0.1:0")

APP = """
import enum
import os
from datetime import timedelta

import attrs

import actorflow as af

DB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.db")
FAILED = set()


class Status(enum.IntEnum):
    START = 1
    WORK = 2
    DONE = 3


@attrs.define
class Job:
    skip: bool = False


def build():
    builder = af.Builder("jobs", Job, Status)

    # Any run taken up later than 1 ms after it got here raises the lag alert.
    @builder.step(Status.START, to=Status.WORK, lag_alert=timedelta(milliseconds=1))
    async def start(run):
        if run.object.skip:
            return run.skip()
        return Status.WORK

    # Fails once per run (an error to count), then succeeds.
    @builder.step(Status.WORK, to=Status.DONE, error_backoff=timedelta(milliseconds=10))
    async def work(run):
        if run.run_id not in FAILED:
            FAILED.add(run.run_id)
            raise RuntimeError("flaky, once")
        return Status.DONE

    return builder.build(af.SQLiteStore(DB), poll_interval=timedelta(milliseconds=20))


workflow = build
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"metricsapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(APP))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    yield name
    sys.modules.pop(name, None)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(base: str) -> Samples:
    status, body = await trio.to_thread.run_sync(_get, f"{base}/metrics")
    assert status == 200
    found: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly these labels (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


class Lines:
    """A process's output, line by line (what is read past a match is kept)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.seen: list[str] = []

    async def until(self, needle: str) -> str:
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                text = raw.decode()
                self.seen.append(text)
                if needle in text:
                    return text
            data = await self._stream.receive_some()
            if not data:
                raise AssertionError(f"the worker never printed {needle!r}: {self.seen}")
            self._buffer += data


@pytest.mark.slow
async def test_worker_serves_luno_metrics_health_and_readiness(app: str, tmp_path: Path) -> None:
    module = __import__(app)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    worker = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actorflow.cli", "worker", f"{app}:workflow", *METRICS],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    workflow = module.build()
    try:
        assert worker.stderr is not None
        log = Lines(worker.stderr)
        with trio.fail_after(30):
            line = await log.until("metrics listening on http://")
            base = line.split("listening on ")[1].removesuffix("/metrics")
            await log.until("worker running jobs")

        status, body = await trio.to_thread.run_sync(_get, f"{base}/healthz")
        assert status == 200
        health = json.loads(body)
        assert health["ok"] is True
        assert health["workflows"]["jobs"]["states"]["start-consumer"] == "idle"
        status, body = await trio.to_thread.run_sync(_get, f"{base}/readyz")
        assert status == 200, body
        status, _ = await trio.to_thread.run_sync(_get, f"{base}/nothing")
        assert status == 404

        before = await scrape(base)
        assert value(before, "workflow_process_states", workflow_name="jobs",
                     process_name="start-consumer") == 3.0  # fmt: skip
        assert value(before, "actorflow_workflow_ready", workflow_name="jobs") == 1.0

        # Runs triggered from this process, straight into the store the worker uses.
        await workflow.trigger("job-skip", initial=module.Job(skip=True))
        run_ids = [await workflow.trigger(f"job-{i}") for i in range(5)]
        skip = {"workflow_name": "jobs", "process_name": "start-consumer", "reason": "run.skip()"}
        with trio.fail_after(30):
            for i, run_id in enumerate(run_ids):
                await workflow.await_status(f"job-{i}", run_id, module.Status.DONE)
            await log.until("over its lag_alert")
            after = await scrape(base)
            # The skipping run leaves no version behind to wait for: watch its metric.
            while not value(after, "workflow_process_skipped_events_count", **skip):
                await trio.sleep(0.05)
                after = await scrape(base)

        jobs = {"workflow_name": "jobs"}
        start = {**jobs, "process_name": "start-consumer"}
        work = {**jobs, "process_name": "work-consumer"}
        # Latency: one observation per step taken (work: a failure and a success per run).
        assert value(after, "workflow_process_latency_seconds_count", **start) >= 6
        assert value(after, "workflow_process_latency_seconds_count", **work) >= 10
        assert value(after, "workflow_process_latency_seconds_bucket", **start, le="+Inf") >= 6
        # Errors: under luno's name, without the _total prometheus-client would add.
        assert value(after, "workflow_process_error_count", **work) >= 5
        assert value(before, "workflow_process_error_count", **work) == 0
        assert value(after, "workflow_process_skipped_events_count", **skip) == 1
        # Lag: the age of the run a step took up; over the 1 ms lag_alert, so alerting.
        assert value(after, "workflow_process_lag_seconds", **start) > 0.001
        assert value(after, "workflow_process_lag_alert", **start) == 1.0
        assert (("workflow_process_lag_alert", frozenset(work.items()))) not in after
        # Run-state changes, with luno's labels and run-state names.
        assert value(after, "workflow_run_state_changes", **jobs,
                     previous_run_state="Initiated", current_run_state="Running") >= 5  # fmt: skip
        assert value(after, "workflow_run_state_changes", **jobs,
                     previous_run_state="Running", current_run_state="Completed") == 5  # fmt: skip
        # actorflow's own.
        assert value(after, "actorflow_run_duration_seconds_count", **jobs) == 5
        assert value(after, "actorflow_store_commit_seconds_count", **jobs) >= 10
        assert value(after, "actorflow_store_writes_total", store="SQLiteStore") > 0
        assert ("actorflow_active_actors", frozenset(jobs.items())) in after
        assert ("actorflow_armed_timers", frozenset(jobs.items())) in after
        assert value(before, "workflow_run_state_changes", **jobs,
                     previous_run_state="Running", current_run_state="Completed") == 0  # fmt: skip

        worker.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await log.until("worker stopped")
            assert await worker.wait() == 0
    finally:
        await workflow.store.aclose()
        if worker.returncode is None:
            worker.kill()
            with trio.CancelScope(shield=True):
                await worker.wait()
