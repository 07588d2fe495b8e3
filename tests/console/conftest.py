"""The console under test: a workflow on SQLite, run in this process, with the console
served on 127.0.0.1, and a helper that drives Debian's headless Chromium with Playwright.

Playwright's sync objects belong to the thread that made them, so a whole browser script
runs in one ``trio.to_thread.run_sync`` and reaches trio back with ``trio.from_thread.run``.
Nothing is downloaded: the browser is ``/usr/bin/chromium`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import enum
import functools
import os
import shutil
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio

import actorflow as af

R = TypeVar("R")

TOKEN = "console-s3cret"
READ_ONLY_TOKEN = "look-only"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "images"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Parcel(enum.IntEnum):
    REGISTERED = 1
    PACKED = 2
    SHIPPED = 3
    DELIVERED = 4
    LOST = 5


@attrs.define
class Shipment:
    item: str = "book"
    weight_grams: int = 0
    carrier: str = ""
    tracking: str = ""


def build_parcels(store: af.Store) -> af.Workflow[Shipment, Parcel]:
    builder = af.Builder("parcels", Shipment, Parcel)

    @builder.step(Parcel.REGISTERED, to=Parcel.PACKED)
    async def pack(run: af.Run[Shipment, Parcel]) -> Parcel:
        run.object.weight_grams = 350 + len(run.foreign_id)
        return Parcel.PACKED

    async def picked_up(run: af.Run[Shipment, Parcel], payload: bytes) -> Parcel:
        run.object.carrier, _, run.object.tracking = payload.decode().partition(":")
        return Parcel.SHIPPED

    async def delivered(run: af.Run[Shipment, Parcel], payload: bytes) -> Parcel:
        return Parcel.DELIVERED

    async def gave_up(run: af.Run[Shipment, Parcel], now: Any) -> Parcel:
        return Parcel.LOST

    builder.add_callback(Parcel.PACKED, picked_up, to=[Parcel.SHIPPED])
    builder.add_timeout(Parcel.PACKED, af.after(timedelta(hours=2)), gave_up, to=[Parcel.LOST])
    builder.add_callback(Parcel.SHIPPED, delivered, to=[Parcel.DELIVERED])
    return builder.build(store)


@attrs.frozen
class ConsoleUnderTest:
    url: str
    workflow: af.Workflow[Shipment, Parcel]
    store: af.Store


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[ConsoleUnderTest]:
    store = af.SQLiteStore(tmp_path / "console.db")
    workflow = build_parcels(store)
    try:
        async with af.open_workflow(workflow), trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(
                    af.serve_console,
                    [workflow],
                    "127.0.0.1",
                    0,
                    token=TOKEN,
                    read_only_token=READ_ONLY_TOKEN,
                )
            )
            yield ConsoleUnderTest(f"http://127.0.0.1:{port}/", workflow, store)
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return found


async def in_browser(script: Callable[[Any], R], *, width: int = 1280, height: int = 800) -> R:
    """Run ``script(page)`` in a fresh headless Chromium page, in a worker thread."""
    executable = chromium()

    def run() -> R:
        from playwright.sync_api import expect, sync_playwright

        # A shared CI machine can be slow to parse Mermaid's 5 MB: wait up to 20 s for
        # what a test expects to appear (an event wait, not a sleep).
        expect.set_options(timeout=20_000)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": width, "height": height})
                page.set_default_timeout(20_000)
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                result = script(page)
                assert not errors, f"the page raised: {errors}"
                return result
            finally:
                browser.close()

    return await trio.to_thread.run_sync(run)


def screenshot_path(tmp_path: Path, name: str) -> Path:
    """Where a screenshot goes: docs/images when ACTORFLOW_SCREENSHOTS=1 (to commit them),
    else the test's temporary directory."""
    if os.environ.get("ACTORFLOW_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        return DOCS / name
    return tmp_path / name
