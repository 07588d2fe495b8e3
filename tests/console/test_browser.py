"""The console in a real browser: headless Chromium (Debian's package) driven by Playwright.

A workflow runs on SQLite in this process with the console served beside it; the
browser signs in, filters, watches runs change live, reads a run's history and diff, and
steers it, and the tests check the store saw it. The screenshots in docs/console.md come
from here (``ACTORFLOW_SCREENSHOTS=1`` writes them into docs/images).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from playwright.sync_api import Page, expect

import actorflow as af

from .conftest import (
    READ_ONLY_TOKEN,
    TOKEN,
    ConsoleUnderTest,
    Parcel,
    build_parcels,
    in_browser,
    screenshot_path,
)

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]


async def packed_runs(console: ConsoleUnderTest, *foreign_ids: str) -> dict[str, str]:
    """Trigger a run per foreign id and wait until each is PACKED (waiting for pick-up)."""
    workflow = console.workflow
    ids = {foreign_id: await workflow.trigger(foreign_id) for foreign_id in foreign_ids}
    for foreign_id, run_id in ids.items():
        await workflow.await_status(foreign_id, run_id, Parcel.PACKED, timeout=10)
    return ids


def sign_in(page: Page, url: str, token: str) -> None:
    page.goto(url)
    page.fill("#token", token)
    page.keyboard.press("Enter")
    expect(page.locator("#link")).to_have_text("● live")


def row(page: Page, run_id: str) -> Any:
    return page.locator(f"#runs-body tr[data-run-id='{run_id}']")


async def test_filter_watch_live_read_history_and_steer(
    console: ConsoleUnderTest, tmp_path: Path
) -> None:
    workflow = console.workflow
    ids = await packed_runs(
        console, "parcel-001", "parcel-002", "parcel-003", "return-001", "return-002"
    )
    await workflow.callback("parcel-002", Parcel.PACKED, b"dhl:JD0001")
    await workflow.pause(ids["parcel-003"], "address unclear")
    returned = ids["return-001"]

    def script(page: Page) -> None:
        sign_in(page, console.url, TOKEN)
        card = page.locator("section[data-workflow='parcels']")
        expect(card.locator("h2")).to_contain_text("5 runs")
        expect(card.locator(".banner")).to_contain_text("1 paused")
        expect(card).to_contain_text("address unclear")
        expect(card.locator("tr[data-process='timers']")).to_be_visible()
        expect(card.locator("tr[data-process='registered-consumer']")).to_contain_text("idle")
        page.screenshot(path=str(screenshot_path(tmp_path, "console-overview.png")))

        # Filter with the keyboard: type a prefix and press Enter.
        page.click("a[data-nav='runs']")
        expect(page.locator("#runs-body tr[data-run-id]")).to_have_count(5)
        page.fill("#filter-foreign-id", "return-")
        page.press("#filter-foreign-id", "Enter")
        expect(page.locator("#runs-body tr[data-run-id]")).to_have_count(2)
        expect(page.locator("#runs-summary")).to_contain_text("2 match in all")
        page.select_option("#filter-run-state", "PAUSED")
        page.click("#apply-filters")
        expect(page.locator("#runs-body")).to_contain_text("No runs match.")
        page.select_option("#filter-run-state", "")
        page.click("#apply-filters")
        expect(page.locator("#runs-body tr[data-run-id]")).to_have_count(2)

        # Live, without reloading: a marker in the page's globals survives the changes.
        page.evaluate("window.notReloaded = true")
        trio.from_thread.run(workflow.callback, "return-001", Parcel.PACKED, b"ups:1Z999")
        expect(row(page, returned).locator("td").nth(2)).to_have_text("SHIPPED")
        expect(row(page, returned)).to_have_attribute("data-version", "3")
        expect(row(page, returned)).to_have_class("changed")
        newcomer = trio.from_thread.run(workflow.trigger, "return-003")
        expect(row(page, newcomer)).to_be_visible()
        expect(page.locator("#runs-body tr[data-run-id]").first).to_have_attribute(
            "data-run-id", newcomer
        )
        trio.from_thread.run(workflow.trigger, "parcel-004")  # does not match: not shown
        expect(row(page, newcomer).locator("td").nth(2)).to_have_text("PACKED")
        expect(page.locator("#runs-body tr[data-run-id]")).to_have_count(3)
        assert page.evaluate("window.notReloaded") is True
        page.screenshot(path=str(screenshot_path(tmp_path, "console-runs.png")))

        # The run: its history, the diff of a version, its graph.
        row(page, returned).locator("a").first.click()
        timeline = page.locator("#timeline button")
        expect(timeline).to_have_count(3)
        expect(page.locator("#run-status")).to_have_text("SHIPPED")
        timeline.nth(1).click()
        diff = page.locator("#diff")
        expect(diff).to_contain_text("weight_grams")
        expect(diff).to_contain_text("~ changed")
        timeline.nth(2).click()
        expect(diff).to_contain_text("carrier")
        expect(diff).to_contain_text('"ups"')
        expect(diff).not_to_contain_text("weight_grams")
        expect(page.locator("#object-json")).to_contain_text('"tracking": "1Z999"')
        expect(page.locator("#graph svg")).to_be_visible()
        expect(page.locator("#graph-legend")).to_contain_text("Current status: SHIPPED")
        page.screenshot(path=str(screenshot_path(tmp_path, "console-run.png")), full_page=True)

        # Steer: pause with a reason and a confirmation; the store sees it.
        page.click("#steer-pause")
        page.fill("#steer-reason", "customer called")
        page.click("#dialog-ok")
        expect(page.locator("#run-state-now")).to_have_text("PAUSED")
        expect(page.locator("#dialog")).not_to_be_visible()
        stored = trio.from_thread.run(console.store.lookup, "parcels", returned)
        assert stored.run_state is af.RunState.PAUSED
        assert stored.meta.run_state_reason == "customer called"
        expect(timeline).to_have_count(4)

        page.click("#steer-resume")
        page.click("#dialog-ok")
        expect(page.locator("#run-state-now")).to_have_text("RUNNING")
        stored = trio.from_thread.run(console.store.lookup, "parcels", returned)
        assert stored.run_state is af.RunState.RUNNING

        # An illegal transition is refused, and the refusal is shown.
        page.click("#steer-resume")
        page.click("#dialog-ok")
        expect(page.locator("#dialog-error")).to_contain_text("Refused")
        page.click("#dialog-cancel")
        expect(page.locator("#dialog")).not_to_be_visible()

        # A callback from the page moves the run on, live.
        page.click("#deliver-callback")
        page.select_option("#callback-status", "SHIPPED")
        page.fill("#callback-payload", "signed by J. Doe")
        page.click("#dialog-ok")
        expect(page.locator("#run-status")).to_have_text("DELIVERED")
        expect(page.locator("#run-state-now")).to_have_text("COMPLETED")

    await in_browser(script)
    final = await workflow.lookup(returned)
    assert (final.status, final.run_state) == (Parcel.DELIVERED, af.RunState.COMPLETED)
    history = await workflow.history(returned)
    assert [(r.status, r.run_state) for r in history[2:]] == [
        (Parcel.SHIPPED, af.RunState.RUNNING),
        (Parcel.SHIPPED, af.RunState.PAUSED),
        (Parcel.SHIPPED, af.RunState.RUNNING),
        (Parcel.DELIVERED, af.RunState.COMPLETED),
    ]
    assert history[3].meta.run_state_reason == "customer called"


async def test_trigger_from_the_page_checks_the_object(
    console: ConsoleUnderTest, tmp_path: Path
) -> None:
    def script(page: Page) -> None:
        sign_in(page, console.url, TOKEN)
        page.click("a[data-nav='runs']")
        page.click("#trigger-run")
        page.fill("#trigger-foreign-id", "gift-1")
        page.fill("#trigger-initial", '{"item": "lamp", "weight_grams": "heavy"}')
        page.click("#dialog-ok")
        expect(page.locator("#dialog-error")).to_contain_text("weight_grams")
        page.fill("#trigger-initial", "{not json")
        page.click("#dialog-ok")
        expect(page.locator("#dialog-error")).to_contain_text("not valid JSON")
        page.fill("#trigger-initial", '{"item": "lamp"}')
        page.click("#dialog-ok")
        expect(page.locator("#run-status")).to_have_text("PACKED")
        expect(page.locator("#timers")).to_contain_text("PACKED: due")

    await in_browser(script)
    record = await console.workflow.latest("gift-1")
    assert record.object.item == "lamp"
    assert record.status is Parcel.PACKED


async def test_a_token_is_required_and_a_read_only_token_cannot_steer(
    console: ConsoleUnderTest,
) -> None:
    ids = await packed_runs(console, "parcel-001")
    run_id = ids["parcel-001"]

    def script(page: Page) -> str:
        page.goto(console.url)
        expect(page.locator("h1")).to_have_text("Sign in")
        assert page.evaluate("fetch('/api/session').then(r => r.status)") == 401
        page.fill("#token", "not-the-token")
        page.click("button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("refused")

        page.fill("#token", READ_ONLY_TOKEN)
        page.click("button[type=submit]")
        expect(page.locator("#access")).to_have_text("read-only")
        expect(page.locator("#link")).to_have_text("● live")
        page.click("a[data-nav='runs']")
        expect(row(page, run_id)).to_be_visible()
        expect(page.locator("#trigger-run")).to_have_count(0)
        row(page, run_id).locator("a").first.click()
        expect(page.locator("#steer")).to_contain_text("Read-only access")
        expect(page.locator("#steer button")).to_have_count(0)
        expect(page.locator("#timeline button")).to_have_count(2)
        # Hidden buttons are not the protection: the connection itself is read-only.
        code: str = page.evaluate(
            """([workflow, runId]) => window.actorflowConsole.gateway
                .call("pause", {workflow, run_id: runId, reason: "sneaky"})
                .then(() => "done", (error) => error.code)""",
            ["parcels", run_id],
        )
        page.click("#signout")
        expect(page.locator("h1")).to_have_text("Sign in")
        return code

    assert await in_browser(script) == "forbidden"
    assert (await console.workflow.lookup(run_id)).run_state is af.RunState.RUNNING


async def test_phone_width_is_usable(console: ConsoleUnderTest, tmp_path: Path) -> None:
    ids = await packed_runs(console, "parcel-001")

    def script(page: Page) -> None:
        sign_in(page, console.url, TOKEN)
        page.goto(console.url + f"#/run/parcels/{ids['parcel-001']}")
        expect(page.locator("#timeline button")).to_have_count(2)
        expect(page.locator("#steer-pause")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide on a 390px screen"
        page.goto(console.url + "#/runs")
        expect(row(page, ids["parcel-001"])).to_be_visible()

    await in_browser(script, width=390, height=844)


async def test_the_demo_leaves_the_console_open_on_its_runs(tmp_path: Path) -> None:
    from actorflow.demo.main import DEMO_ORDERS, run_demo

    lines: list[str] = []

    async def look(url: str, token: str) -> None:
        def script(page: Page) -> None:
            page.goto(f"{url}#token={token}")  # the link the demo prints
            expect(page.locator("#link")).to_have_text("● live")
            assert "token" not in page.url
            card = page.locator("section[data-workflow='orders']")
            expect(card.locator("h2")).to_contain_text(f"{len(DEMO_ORDERS)} runs")
            page.click("a[data-nav='runs']")
            expect(page.locator("#runs-body tr[data-run-id]")).to_have_count(len(DEMO_ORDERS))
            expect(page.locator("#runs-body")).to_contain_text("SHIPPED")
            expect(page.locator("#runs-body")).to_contain_text("CANCELLED")

        await in_browser(script)

    outcome = await run_demo(
        tmp_path / "demo.db",
        payment_timeout=0.5,
        out=lines.append,
        console=("127.0.0.1", 0),
        keep_open=look,
    )
    assert len(outcome.orders) == len(DEMO_ORDERS)
    assert any(line.startswith("Console on http://127.0.0.1:") for line in lines)


async def test_a_worker_process_serves_the_console(tmp_path: Path) -> None:
    """`actorflow worker --console` on SQLite: the page pauses and resumes a run that the
    worker process runs, and the store (read here, from another process) saw it."""
    db = tmp_path / "parcels.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PARCELS_DB": str(db)}
    command = [
        sys.executable,
        "-m",
        "actorflow.cli",
        "worker",
        "tests.console.worker_app:workflow",
        "--console",
        "127.0.0.1:0",
        "--token",
        TOKEN,
    ]
    worker = await trio.lowlevel.open_process(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    store = af.SQLiteStore(db)
    try:
        assert worker.stderr is not None
        log = b""
        with trio.fail_after(30):
            while b"worker running parcels" not in log:
                chunk = await worker.stderr.receive_some()
                assert chunk, log.decode()
                log += chunk
        found = re.search(rb"console listening on (http://127\.0\.0\.1:\d+/)", log)
        assert found, log.decode()
        url = found.group(1).decode()
        workflow = build_parcels(store)  # the same store file, without running it here
        run_id = await workflow.trigger("parcel-cli")

        def script(page: Page) -> None:
            sign_in(page, url, TOKEN)
            page.goto(f"{url}#/run/parcels/{run_id}")
            expect(page.locator("#run-status")).to_have_text("PACKED")  # the worker's step
            page.click("#steer-pause")
            page.fill("#steer-reason", "held at the depot")
            page.click("#dialog-ok")
            expect(page.locator("#run-state-now")).to_have_text("PAUSED")
            paused = trio.from_thread.run(store.lookup, "parcels", run_id)
            assert paused.run_state is af.RunState.PAUSED
            assert paused.meta.run_state_reason == "held at the depot"
            page.click("#steer-resume")
            page.click("#dialog-ok")
            expect(page.locator("#run-state-now")).to_have_text("RUNNING")

        await in_browser(script)
        resumed = await store.lookup("parcels", run_id)
        assert (resumed.status, resumed.run_state) == (Parcel.PACKED, af.RunState.RUNNING)
        worker.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await worker.wait() == 0
    finally:
        await store.aclose()
        if worker.returncode is None:
            worker.kill()
            with trio.CancelScope(shield=True):
                await worker.wait()
