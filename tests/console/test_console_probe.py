"""An adversarial probe of the web console, written from docs/console.md, docs/gateway.md
and API.md: hostile strings from runs shown in a real browser (they must stay text),
hostile query arguments on the console's ``/ws``, steering with bad input or on finished
runs, two workflows on one store kept apart, keyset pages while runs are inserted, a huge
object, and websockets opened from another origin.
"""

from __future__ import annotations

import enum
import functools
import json
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_websocket

import actorflow as af
from actorflow.testing import wait_for

from .conftest import TOKEN, in_browser

LIMIT = 20.0
ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "<img src=x id=xss-{}><script id=xss-s{}>window.__xss=1</script>\"'&"


def hostile(tag: str) -> str:
    return HOSTILE.format(tag, tag)


class Doc(enum.IntEnum):
    DRAFT = 1
    REVIEW = 2
    DONE = 3


@attrs.define
class Paper:
    title: str = ""
    notes: list[str] = attrs.field(factory=list)
    blob: str = ""


def build_docs(store: af.Store, name: str = "docs") -> af.Workflow[Paper, Doc]:
    builder = af.Builder(name, Paper, Doc)

    @builder.step(Doc.DRAFT, to=Doc.REVIEW, pause_after_errors=1)
    async def submit(run: af.Run[Paper, Doc]) -> Doc:
        if run.object.title.startswith("fail"):
            raise RuntimeError(hostile("err"))
        run.object.notes.append(hostile("note"))
        return Doc.REVIEW

    async def approve(run: af.Run[Paper, Doc], payload: bytes) -> Doc:
        run.object.notes.append(payload.decode(errors="replace"))
        return Doc.DONE

    builder.add_callback(Doc.REVIEW, approve, to=[Doc.DONE])
    return builder.build(store)


@attrs.frozen
class Served:
    port: int
    docs: af.Workflow[Paper, Doc]
    other: af.Workflow[Paper, Doc]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


async def _store(kind: str, tmp_path: Path) -> af.Store:
    if kind == "memory":
        return af.MemoryStore()
    if kind == "sqlite":
        return af.SQLiteStore(tmp_path / "probe.db")
    from tests.streaming.conftest import PG_DSN, PG_SKIP_REASON

    if not PG_DSN:
        pytest.skip(PG_SKIP_REASON)
    return af.PostgresStore(
        PG_DSN, schema=f"af_cprobe_{uuid.uuid4().hex[:12]}", drop_schema_on_close=True
    )


@pytest.fixture(params=["sqlite"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    store = await _store(request.param, tmp_path)
    docs, other = build_docs(store), build_docs(store, "other")
    try:
        async with af.open_workflow(docs, other), trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(af.serve_console, [docs, other]))
            yield Served(port, docs, other)
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


class Raw:
    """The console's ``/ws`` spoken by hand: one JSON request, its one reply."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.ids = 0

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.ids += 1
        await self.ws.send_message(json.dumps({"id": self.ids, "op": op, **args}))
        with trio.fail_after(LIMIT):
            while True:
                reply: dict[str, Any] = json.loads(await self.ws.get_message())
                if reply.get("id") == self.ids:
                    return reply

    async def ok(self, op: str, **args: Any) -> Any:
        reply = await self.call(op, **args)
        assert reply["ok"] is True, reply
        return reply["result"]

    async def error(self, op: str, **args: Any) -> str:
        reply = await self.call(op, **args)
        assert reply["ok"] is False, (op, args, reply)
        code: str = reply["error"]["code"]
        assert code != "internal", (op, args, reply)
        return code


open_raw = functools.partial(trio_websocket.open_websocket_url)


# -- hostile arguments on /ws ---------------------------------------------------------------


async def test_hostile_list_and_count_arguments_get_clear_refusals(served: Served) -> None:
    await served.docs.trigger("a-1")
    async with open_raw(served.ws) as ws:
        client = Raw(ws)
        bad: list[dict[str, Any]] = [
            {"limit": 0},
            {"limit": -1},
            {"limit": 1001},
            {"limit": 10**30},
            {"limit": "5"},
            {"limit": True},
            {"limit": 2.5},
            {"created_after": "yesterday"},
            {"created_after": "2026-13-01T00:00:00+00:00"},
            {"created_after": "2026-01-01T00:00:00"},  # no offset
            {"created_before": "9" * 100_000},
            {"created_after": 1700000000},
            {"status": "NOPE"},
            {"status": 99},
            {"status": -1},
            {"status": [1, "NOPE"]},
            {"status": {"a": 1}},
            {"run_state": "NOPE"},
            {"run_state": 0},
            {"run_state": 99},
            {"foreign_id": 5},
            {"foreign_id": [None]},
            {"foreign_id_prefix": ["a"]},
            {"descending": "yes"},
            {"after": 5},
            {"nope": 1},
        ]
        for args in bad:
            code = await client.error("list_runs", workflow="docs", **args)
            assert code == "invalid_argument", (args, code)
            if not {"limit", "after", "descending"} & set(args):
                code = await client.error("count_runs", workflow="docs", **args)
                assert code == "invalid_argument", (args, code)
        assert await client.error("list_runs", workflow="docs", after="no-such-run") == "not_found"
        assert await client.error("list_runs", workflow="nope") == "unknown_workflow"
        assert await client.error("count_runs", workflow=["docs"]) in {
            "invalid_argument",
            "unknown_workflow",
        }
        # a huge prefix, a prefix full of wildcards: nothing matches, nothing breaks
        for prefix in ("x" * 200_000, "%", "_", "\\", "a%", "a_", "[a]*"):
            assert await client.ok("list_runs", workflow="docs", foreign_id_prefix=prefix) == []
            counts = await client.ok("count_runs", workflow="docs", foreign_id_prefix=prefix)
            assert counts["total"] == 0
        assert await client.ok("ping") == "pong"  # the connection stayed usable


@pytest.mark.parametrize("served", ["memory", "sqlite", "postgres"], indirect=True)
async def test_a_foreign_id_prefix_matches_literally(served: Served) -> None:
    ids = ["a%b", "a_b", "axb", "a\\b", "a\\xb", "A_b", "a%", "ab"]
    for foreign_id in ids:
        await served.docs.trigger(foreign_id)
    async with open_raw(served.ws) as ws:
        client = Raw(ws)
        for prefix, expected in [
            ("a%", {"a%b", "a%"}),
            ("a_", {"a_b"}),
            ("a\\", {"a\\b", "a\\xb"}),
            ("a\\x", {"a\\xb"}),
            ("A", {"A_b"}),
            ("a", set(ids) - {"A_b"}),
        ]:
            page = await client.ok(
                "list_runs", workflow="docs", foreign_id_prefix=prefix, limit=100
            )
            assert {r["foreign_id"] for r in page} == expected, prefix
            counts = await client.ok("count_runs", workflow="docs", foreign_id_prefix=prefix)
            assert counts["total"] == len(expected), prefix
    records = await served.docs.list_runs(foreign_id=["a_b", "a%"], limit=100)
    assert {r.foreign_id for r in records} == {"a_b", "a%"}


async def test_steering_bad_input_and_finished_runs_is_refused_clearly(served: Served) -> None:
    docs = served.docs
    running = await docs.trigger("live")
    await docs.await_status("live", running, Doc.REVIEW, timeout=LIMIT)
    finished = await docs.trigger("done")
    await docs.await_status("done", finished, Doc.REVIEW, timeout=LIMIT)
    await docs.callback("done", Doc.REVIEW, b"ok")
    elsewhere = await served.other.trigger("live")
    async with open_raw(served.ws) as ws:
        client = Raw(ws)
        for op in ("pause", "resume", "cancel", "delete_data", "lookup", "history", "timers"):
            assert await client.error(op, workflow="docs", run_id="no-such-run") == "not_found"
            # a run of another workflow on the same store is not this workflow's
            assert await client.error(op, workflow="docs", run_id=elsewhere) == "not_found", op
            assert await client.error(op, workflow="docs", run_id=5) == "invalid_argument"
        assert await client.error("pause", workflow="docs", run_id=finished) == (
            "invalid_transition"
        )
        assert await client.error("cancel", workflow="docs", run_id=finished) == (
            "invalid_transition"
        )
        assert await client.error("resume", workflow="docs", run_id=running) == (
            "invalid_transition"
        )
        assert await client.error("delete_data", workflow="docs", run_id=running) == (
            "invalid_transition"
        )
        for reason in (5, ["x"], "a\x00b", "\ud800"):
            code = await client.error("pause", workflow="docs", run_id=running, reason=reason)
            assert code == "invalid_argument", reason
        # callbacks: bad base64, a status without callbacks, unknown statuses
        for args in (
            {"status": "REVIEW", "payload": "not base64!"},
            {"status": "REVIEW", "payload": 5},
            {"status": "DRAFT", "payload": ""},
            {"status": "NOPE", "payload": ""},
            {"status": "REVIEW"},
        ):
            code = await client.error("callback", workflow="docs", foreign_id="live", **args)
            assert code == "invalid_argument", args
        # a finished run is not at the status any more: nothing happens, null comes back
        assert (
            await client.ok(
                "callback", workflow="docs", foreign_id="done", status="REVIEW", payload=""
            )
            is None
        )
        assert await client.error("trigger", workflow="docs", foreign_id="live") == "in_progress"
        code = await client.error("trigger", workflow="docs", foreign_id="n", initial={"title": 5})
        assert code == "invalid_argument"
        big_reason = "r" * 300_000
        record = await client.ok("pause", workflow="docs", run_id=running, reason=big_reason)
        assert record["run_state"] == "PAUSED"
        assert record["meta"]["run_state_reason"] == big_reason
    # nothing the refusals touched changed
    assert (await docs.lookup(finished)).version == 3
    assert (await served.other.lookup(elsewhere)).run_state in {
        af.RunState.INITIATED,
        af.RunState.RUNNING,
    }
    assert (await docs.lookup(running)).run_state is af.RunState.PAUSED


async def test_keyset_pages_stay_exact_while_runs_are_inserted(served: Served) -> None:
    docs = served.docs
    before = [await docs.trigger(f"p-{n:03}") for n in range(120)]
    seen: list[str] = []
    async with open_raw(served.ws) as ws, trio.open_nursery() as nursery:
        client = Raw(ws)

        async def insert() -> None:
            for n in range(60):
                await docs.trigger(f"q-{n:03}")
                await trio.lowlevel.checkpoint()

        nursery.start_soon(insert)
        after: str | None = None
        while True:
            page = await client.ok(
                "list_runs", workflow="docs", limit=7, descending=True, after=after
            )
            if not page:
                break
            seen += [r["run_id"] for r in page]
            after = page[-1]["run_id"]
    assert len(seen) == len(set(seen)), "a run was listed twice"
    # every run that existed before paging started is there, newest first
    old = [run_id for run_id in seen if run_id in set(before)]
    assert old == list(reversed(before))


async def test_a_huge_object_travels_to_the_console(served: Served) -> None:
    blob = "é" * (1 << 20)  # 2 MiB of UTF-8, over the console's 1 MiB request limit
    run_id = await served.docs.trigger("huge", initial=Paper(title="t", blob=blob))
    await served.docs.await_status("huge", run_id, Doc.REVIEW, timeout=LIMIT)
    async with open_raw(served.ws, message_queue_size=4, max_message_size=64 << 20) as ws:
        client = Raw(ws)
        record = await client.ok("lookup", workflow="docs", run_id=run_id)
        assert record["object"]["blob"] == blob
        history = await client.ok("history", workflow="docs", run_id=run_id)
        assert [r["version"] for r in history] == [1, 2]
        page = await client.ok("list_runs", workflow="docs")
        assert page[0]["object"]["blob"] == blob
        assert await client.ok("ping") == "pong"


# -- cross-site requests ----------------------------------------------------------------------


async def test_a_websocket_from_another_origin_is_refused(served: Served) -> None:
    """Without a token the console relies on being reachable from this machine only; a
    page from any other site open in a local browser must not steer runs through it."""
    run_id = await served.docs.trigger("x")
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{served.port}.evil"):
        with pytest.raises(trio_websocket.HandshakeError):
            async with open_raw(served.ws, extra_headers=[(b"origin", origin.encode())]) as ws:
                await Raw(ws).ok("cancel", workflow="docs", run_id=run_id, reason="csrf")
    assert (await served.docs.lookup(run_id)).run_state is not af.RunState.CANCELLED
    # the console's own page, and clients that send no Origin, are served
    own = f"http://127.0.0.1:{served.port}".encode()
    async with open_raw(served.ws, extra_headers=[(b"origin", own)]) as ws:
        assert await Raw(ws).ok("ping") == "pong"
    async with open_raw(served.ws) as ws:
        assert await Raw(ws).ok("ping") == "pong"


# -- what a browser shows --------------------------------------------------------------------


@pytest.mark.browser
async def test_hostile_strings_are_shown_as_text_on_every_screen(tmp_path: Path) -> None:
    store = af.SQLiteStore(tmp_path / "xss.db")
    docs = build_docs(store)
    try:
        async with af.open_workflow(docs), trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(af.serve_console, [docs], token=TOKEN))
            fid = hostile("fid")
            run_id = await docs.trigger(fid, initial=Paper(title=hostile("title")))
            await docs.await_status(fid, run_id, Doc.REVIEW, timeout=LIMIT)
            await docs.pause(run_id, hostile("reason"))
            failing = hostile("fail")
            await docs.trigger(failing, initial=Paper(title="fail " + hostile("t2")))
            with trio.fail_after(LIMIT):
                await wait_for(docs, failing, lambda r: r.run_state is af.RunState.PAUSED)
            url = f"http://127.0.0.1:{port}/"

            def script(page: Any) -> None:
                from playwright.sync_api import expect

                def clean() -> None:
                    assert page.evaluate("document.querySelectorAll('[id^=xss]').length") == 0
                    assert page.evaluate("window.__xss === undefined")

                page.goto(url)
                page.fill("#token", TOKEN)
                page.keyboard.press("Enter")
                expect(page.locator("#link")).to_have_text("● live")
                card = page.locator("section[data-workflow='docs']")
                expect(card).to_contain_text(hostile("reason"))
                clean()
                page.click("a[data-nav='runs']")
                expect(page.locator("#runs-body")).to_contain_text(fid)
                clean()
                page.locator(f"#runs-body tr[data-run-id='{run_id}'] a").first.click()
                expect(page.locator("#timeline")).to_contain_text(hostile("reason"))
                expect(page.locator("#version-detail")).to_contain_text("xss-note")
                clean()
                paused = docs_latest_run_id(failing)
                page.goto(f"{url}#/run/docs/{paused}")
                expect(page.locator("#timeline")).to_contain_text("xss-err")
                clean()
                # hostile ids in the address: the refusal is shown as text
                page.goto(f"{url}#/run/docs/{hostile('rid')}")
                expect(page.locator("#main")).to_contain_text("xss-rid")
                clean()
                page.goto(f"{url}#/runs?workflow=docs&foreign_id={hostile('q')}")
                expect(page.locator("#runs-body")).to_contain_text("No runs match")
                clean()

            def docs_latest_run_id(foreign_id: str) -> str:
                record = trio.from_thread.run(docs.latest, foreign_id)
                return record.run_id

            await in_browser(script)
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


async def test_steering_through_the_console_after_the_run_finished_changes_nothing(
    served: Served,
) -> None:
    docs = served.docs
    run_id = await docs.trigger("f")
    await docs.await_status("f", run_id, Doc.REVIEW, timeout=LIMIT)
    async with open_raw(served.ws) as ws:
        client = Raw(ws)
        await client.ok("cancel", workflow="docs", run_id=run_id, reason="stop")
        for op in ("pause", "resume", "cancel"):
            assert await client.error(op, workflow="docs", run_id=run_id) == "invalid_transition"
        record = await client.ok("delete_data", workflow="docs", run_id=run_id, reason="gdpr")
        assert record["run_state"] == "DATA_DELETED"
        assert record["object"]["title"] == ""
        # DATA_DELETED -> REQUESTED_DATA_DELETED is allowed: scrubbing again is legal
        record = await client.ok("delete_data", workflow="docs", run_id=run_id, reason="again")
        assert record["run_state"] == "DATA_DELETED"
        assert (
            await client.ok(
                "callback", workflow="docs", foreign_id="f", status="REVIEW", payload=""
            )
            is None
        )
    history = await docs.history(run_id)
    assert [r.run_state for r in history][-5:] == [
        af.RunState.CANCELLED,
        af.RunState.REQUESTED_DATA_DELETED,
        af.RunState.DATA_DELETED,
        af.RunState.REQUESTED_DATA_DELETED,
        af.RunState.DATA_DELETED,
    ]
    assert history[-1].status is Doc.REVIEW


@attrs.frozen
class FixedClock:
    at: datetime

    def now(self) -> datetime:
        return self.at


@pytest.mark.browser
async def test_a_live_run_created_at_the_filters_first_instant_appears(tmp_path: Path) -> None:
    """``created_after`` is inclusive: a run stored at that very instant belongs on the
    filtered page, live as well as on a reload (the page compares instants, not the text
    of two differently written ISO 8601 times)."""
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    store = af.SQLiteStore(tmp_path / "clock.db")
    builder = af.Builder("docs", Paper, Doc)

    async def approve(run: af.Run[Paper, Doc], payload: bytes) -> Doc:
        return Doc.DONE

    builder.add_callback(Doc.DRAFT, approve, to=[Doc.DONE])
    docs = builder.build(store, clock=FixedClock(t0))
    try:
        async with af.open_workflow(docs), trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(af.serve_console, [docs]))
            url = f"http://127.0.0.1:{port}/"
            after = t0.isoformat().replace("+00:00", ".000Z")
            before = (t0 + timedelta(seconds=1)).isoformat().replace("+00:00", ".000Z")

            def script(page: Any) -> None:
                from playwright.sync_api import expect

                page.goto(f"{url}#/runs?workflow=docs&created_after={after}")
                expect(page.locator("#runs-body")).to_contain_text("No runs match")
                trio.from_thread.run(docs.trigger, "at-t0")
                expect(page.locator("#runs-body")).to_contain_text("at-t0")
                page.goto(f"{url}#/runs?workflow=docs&created_before={before}&foreign_id=x")
                expect(page.locator("#runs-body")).to_contain_text("No runs match")
                trio.from_thread.run(docs.trigger, "x-1")
                expect(page.locator("#runs-body")).to_contain_text("x-1")

            await in_browser(script)
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


@attrs.define
class Tagged:
    tags: dict[str, str] = attrs.field(factory=dict)


@pytest.mark.browser
async def test_the_diff_names_keys_that_javascript_objects_inherit_as_added(
    tmp_path: Path,
) -> None:
    """A dict field whose keys are ``constructor``, ``toString`` or ``__proto__`` is data
    like any other: the diff says they were added, not that they changed."""
    store = af.SQLiteStore(tmp_path / "diff.db")
    builder = af.Builder("tagged", Tagged, Doc)

    @builder.step(Doc.DRAFT, to=Doc.REVIEW)
    async def tag(run: af.Run[Tagged, Doc]) -> Doc:
        run.object.tags.update({"constructor": "c", "toString": "t", "__proto__": "p", "a": "1"})
        return Doc.REVIEW

    async def approve(run: af.Run[Tagged, Doc], payload: bytes) -> Doc:
        return Doc.DONE

    builder.add_callback(Doc.REVIEW, approve, to=[Doc.DONE])
    tagged = builder.build(store)
    try:
        async with af.open_workflow(tagged), trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(af.serve_console, [tagged]))
            run_id = await tagged.trigger("t")
            await tagged.await_status("t", run_id, Doc.REVIEW, timeout=LIMIT)

            def script(page: Any) -> list[str]:
                from playwright.sync_api import expect

                page.goto(f"http://127.0.0.1:{port}/#/run/tagged/{run_id}")
                expect(page.locator("#diff")).to_be_visible()
                expect(page.locator("#diff tbody tr")).to_have_count(4)
                rows: list[str] = page.locator("#diff tbody tr").all_inner_texts()
                return rows

            rows = await in_browser(script)
            assert all(row.startswith("+ added") for row in rows), rows
            assert {row.split("\t")[1] for row in rows} == {
                f"tags.{key}" for key in ("constructor", "toString", "__proto__", "a")
            }
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


@pytest.mark.browser
async def test_the_overview_of_many_workflows_shows_every_card(tmp_path: Path) -> None:
    """The page asks several questions per workflow at once and subscribes to each: a
    console serving many workflows must not refuse its own page (busy, rate limited)."""
    store = af.MemoryStore()
    flows = [build_docs(store, f"wf-{n:03}") for n in range(80)]
    async with trio.open_nursery() as nursery:  # served, not run: the page reads the store
        port = await nursery.start(functools.partial(af.serve_console, flows))
        await flows[-1].trigger("last")

        def script(page: Any) -> None:
            from playwright.sync_api import expect

            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.locator("section[data-workflow] h2")).to_have_count(80)
            expect(page.locator("section[data-workflow='wf-079'] h2")).to_contain_text("1 runs")
            expect(page.locator("#main .error")).to_have_count(0)
            trio.from_thread.run(flows[0].trigger, "live")
            expect(page.locator("section[data-workflow='wf-000'] h2")).to_contain_text("1 runs")

        await in_browser(script)
        nursery.cancel_scope.cancel()


async def _status_of(port: int, request: bytes) -> bytes:
    """The status line the console answers a raw HTTP/1.1 request with."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        answer = b""
        with trio.fail_after(LIMIT):
            while b"\r\n" not in answer:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                answer += chunk
    return answer.split(b"\r\n", 1)[0]


def _upgrade(host: str) -> bytes:
    return (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _session(host: str) -> bytes:
    return f"GET /api/session HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


async def test_a_console_without_a_token_answers_only_by_its_address(served: Served) -> None:
    """DNS rebinding: a site re-pointed at 127.0.0.1 is "same origin" with a tokenless
    console; its requests carry the site's name as Host and are refused."""
    port = served.port
    for host in (f"evil.example:{port}", "evil.example", f"rebind.127.0.0.1.nip.io:{port}"):
        assert b" 403 " in await _status_of(port, _upgrade(host)) + b" ", host
        assert b" 403 " in await _status_of(port, _session(host)) + b" ", host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
        assert b" 101 " in await _status_of(port, _upgrade(host)) + b" ", host
        assert b" 200 " in await _status_of(port, _session(host)) + b" ", host


async def test_a_console_with_a_token_may_be_served_by_name(tmp_path: Path) -> None:
    docs = build_docs(af.MemoryStore())
    async with af.open_workflow(docs), trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(af.serve_console, [docs], token=TOKEN))
        request = (
            f"GET /api/session HTTP/1.1\r\nHost: console.example:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        ).encode()
        assert b" 200 " in await _status_of(port, request) + b" "
        nursery.cancel_scope.cancel()


async def test_serve_console_refuses_bad_options_and_addresses_clearly(
    nursery: trio.Nursery,
) -> None:
    docs = build_docs(af.MemoryStore())
    for timeout in (-1, float("nan"), float("inf"), "1", None, True):
        with pytest.raises(af.InvalidArgument, match="graceful_timeout"):
            await nursery.start(
                functools.partial(af.serve_console, [docs], graceful_timeout=timeout)
            )
    # an address that cannot be bound is the OSError itself (docstring: Raises OSError)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            await nursery.start(
                functools.partial(af.serve_console, [docs], port=taken.getsockname()[1])
            )
    with pytest.raises(OSError):
        await nursery.start(functools.partial(af.serve_console, [docs], host="256.1.1.1"))


async def test_a_worker_whose_console_port_is_taken_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PARCELS_DB": str(tmp_path / "p.db")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "actorflow.cli",
            "worker",
            "tests.console.worker_app:workflow",
            "--console",
            f"127.0.0.1:{port}",
        ]
        with trio.fail_after(60):
            done = await trio.run_process(command, env=env, capture_stderr=True, check=False)
    error = done.stderr.decode()
    assert done.returncode != 0
    assert "cannot serve the console" in error, error
    assert "Traceback" not in error, error


@pytest.mark.browser
async def test_a_run_stored_while_the_first_page_loads_is_not_wiped_by_it() -> None:
    """The page subscribes, then reads its page: a run stored after the read whose event
    arrives before the page must still be shown once the page is drawn."""
    store = af.MemoryStore()
    builder = af.Builder("docs", Paper, Doc)

    async def approve(run: af.Run[Paper, Doc], payload: bytes) -> Doc:
        return Doc.DONE

    builder.add_callback(Doc.DRAFT, approve, to=[Doc.DONE])  # runs wait: one version each
    docs = builder.build(store)
    await docs.trigger("before")
    original = store.list_runs
    sneaked = trio.Event()

    async def list_runs(name: str, flt: Any, **options: Any) -> Any:
        found = await original(name, flt, **options)
        if options.get("limit") == 50 and not sneaked.is_set():
            sneaked.set()
            await docs.trigger("sneaky")  # stored after this page was read
            await trio.sleep(0.3)  # its event goes out before the page
        return found

    store.list_runs = list_runs  # type: ignore[method-assign]
    async with af.open_workflow(docs), trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(af.serve_console, [docs]))

        def script(page: Any) -> None:
            from playwright.sync_api import expect

            page.goto(f"http://127.0.0.1:{port}/#/runs?workflow=docs")
            expect(page.locator("#runs-body")).to_contain_text("before")
            assert trio.from_thread.run_sync(sneaked.is_set)
            expect(page.locator("#runs-body")).to_contain_text("sneaky")

        await in_browser(script)
        nursery.cancel_scope.cancel()


async def test_a_console_with_a_token_serves_its_page_behind_a_proxy_that_rewrites_host(
    tmp_path: Path,
) -> None:
    """A reverse proxy (TLS in front, as docs/console.md asks) may send its own Host; the
    browser's Origin is the public name. With a token the token is the protection."""
    docs = build_docs(af.MemoryStore())
    async with af.open_workflow(docs), trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(af.serve_console, [docs], token=TOKEN))
        url = f"ws://127.0.0.1:{port}/ws?token={TOKEN}"
        origin = [(b"origin", b"https://console.example.com")]
        async with open_raw(url, extra_headers=origin) as ws:
            assert await Raw(ws).ok("ping") == "pong"
        with pytest.raises(trio_websocket.HandshakeError):
            async with open_raw(f"ws://127.0.0.1:{port}/ws", extra_headers=origin):
                pass  # no token: refused (401), whatever the origin
        nursery.cancel_scope.cancel()


@pytest.mark.browser
async def test_status_names_that_are_mermaid_words_still_show_the_run(tmp_path: Path) -> None:
    """Status names are the user's enum: Mermaid keywords, names with spaces or markup.
    The graph is drawn or, if Mermaid cannot, its text is shown; the rest of the page
    works and nothing else is put into the page."""
    Odd = enum.IntEnum(  # type: ignore[misc]
        "Odd", {"state": 1, "end": 2, "classDef": 3, "<b id=xss-s>x</b>": 4, "a b": 5}
    )
    builder = af.Builder("odd", Paper, Odd)

    async def move(run: af.Run[Paper, Any]) -> Any:
        return Odd(2)

    async def later(run: af.Run[Paper, Any], payload: bytes) -> Any:
        return Odd(int(payload.decode()))

    builder.add_step(Odd(1), move, to=Odd(2))
    builder.add_callback(Odd(2), later, to=[Odd(3), Odd(4), Odd(5)])
    store = af.MemoryStore()
    odd = builder.build(store)
    async with af.open_workflow(odd), trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(af.serve_console, [odd]))
        run_id = await odd.trigger("o")
        await odd.await_status("o", run_id, Odd(2), timeout=LIMIT)
        await odd.callback("o", Odd(2), b"4")

        def script(page: Any) -> None:
            from playwright.sync_api import expect

            page.goto(f"http://127.0.0.1:{port}/#/run/odd/{run_id}")
            expect(page.locator("#run-status")).to_have_text("<b id=xss-s>x</b>")
            expect(page.locator("#graph-legend")).to_contain_text("<b id=xss-s>x</b>")
            expect(page.locator("#timeline button")).to_have_count(3)
            assert page.evaluate("document.querySelectorAll('[id^=xss]').length") == 0
            # nothing of Mermaid's left outside the graph box (an error diagram, say)
            stray = (
                "[...document.body.children].filter(e => !['HEADER', 'MAIN', 'DIALOG', "
                "'NOSCRIPT', 'A', 'SCRIPT'].includes(e.tagName) && e.id !== 'toast')"
            )
            assert page.evaluate(f"{stray}.length") == 0, page.evaluate(
                f"{stray}.map(e => e.outerHTML.slice(0, 200))"
            )

        await in_browser(script)
        nursery.cancel_scope.cancel()


@pytest.mark.browser
async def test_the_runs_page_under_numbers_live_inserts_bad_addresses_and_a_lost_link(
    served: Served,
) -> None:
    """One page, in turn: filters given as numbers (the protocol takes names or numbers)
    match live rows too; "Older" after live inserts goes on from the last row shown (the
    rows pushed off the first page are on the next); mangled addresses are refused as
    text and the page goes on; a call made while the link is down is refused at once
    (connection_closed), not sent into a closed socket and waited on for ever."""
    docs = served.docs
    await docs.trigger("old")
    await wait_for(docs, "old", lambda r: r.status is Doc.REVIEW)

    def script(page: Any) -> str:
        from playwright.sync_api import expect

        # numbers in the address
        page.goto(f"{served.url}#/runs?workflow=docs&status={int(Doc.REVIEW)}&run_state=2")
        expect(page.locator("#runs-body")).to_contain_text("old")
        expect(page.locator("#filter-status")).to_have_value("REVIEW")
        expect(page.locator("#filter-run-state")).to_have_value("RUNNING")
        trio.from_thread.run(docs.trigger, "live-one")
        expect(page.locator("#runs-body")).to_contain_text("live-one")

        # "Older" after live inserts
        ids = [trio.from_thread.run(docs.trigger, f"r-{n:03}") for n in range(55)]
        page.goto(f"{served.url}#/runs?workflow=docs")
        rows = page.locator("#runs-body tr[data-run-id]")
        expect(page.locator("#runs-body")).to_contain_text("r-054")
        expect(rows).to_have_count(50)
        for n in range(3):
            trio.from_thread.run(docs.trigger, f"new-{n}")
        expect(page.locator("#runs-body")).to_contain_text("new-2")
        expect(rows).to_have_count(50)
        first: list[str] = rows.evaluate_all("rows => rows.map(r => r.dataset.runId)")
        page.click("#older")
        # the rest: old, live-one and the 8 oldest r- runs (read once drawn, not while
        # the page between is empty)
        expect(page.locator("#runs-body")).not_to_contain_text("new-2")
        expect(rows).to_have_count(60 - 50)
        expect(page.locator("#runs-body")).to_contain_text("live-one")
        second: list[str] = rows.evaluate_all("rows => rows.map(r => r.dataset.runId)")
        shown = first + second
        assert len(shown) == len(set(shown))
        assert set(ids) <= set(shown), "runs pushed off the first page are on neither page"

        # mangled addresses
        for hash_ in (
            "#/run/docs/%E0%A4%A",
            "#/run/%ZZ/x",
            "#/runs?workflow=docs&foreign_id=%E0%A4%A",
            "#/runs?workflow=docs&status=NOPE",
            "#/runs?workflow=docs&run_state=NOPE",
            "#/runs?workflow=docs&created_after=garbage",
            "#/runs?workflow=docs&after=no-such-run",
            "#/runs?workflow=nope",
            "#/run/nope/x",
            "#/nowhere",
        ):
            page.goto(served.url + hash_)
            expect(page.locator("#main")).not_to_have_text("Loading…")
        page.goto("about:blank")
        page.goto(served.url + "#token=%E0%A4%A")  # a fresh load reads the fragment
        expect(page.locator("#link")).to_have_text("● live")
        page.goto(f"{served.url}#/run/docs/{ids[0]}")
        expect(page.locator("#run-status")).to_have_text("REVIEW")

        # a lost link
        page.evaluate(
            """() => { const g = window.actorflowConsole.gateway;
                       g.retryDelay = 60000; g.socket.close(); }"""
        )
        expect(page.locator("#link")).to_contain_text("reconnecting")
        code: str = page.evaluate(
            """() => Promise.race([
                 window.actorflowConsole.gateway.call("ping").then(() => "answered", (e) => e.code),
                 new Promise((resolve) => setTimeout(() => resolve("hung"), 3000))])"""
        )
        return code

    assert await in_browser(script) == "connection_closed"


@attrs.define
class Big:
    items: list[int] = attrs.field(factory=list)


@pytest.mark.browser
async def test_a_huge_change_is_listed_in_part_and_the_page_stays_quick() -> None:
    """A step that adds 50,000 items: the run page lists the first changes, counts the
    rest, and still shows the whole object (drawing 50,000 rows took tens of seconds,
    and again at every live change)."""
    builder = af.Builder("big", Big, Doc)

    @builder.step(Doc.DRAFT, to=Doc.REVIEW)
    async def grow(run: af.Run[Big, Doc]) -> Doc:
        run.object.items = list(range(50_000))
        return Doc.REVIEW

    async def done(run: af.Run[Big, Doc], payload: bytes) -> Doc:
        return Doc.DONE

    builder.add_callback(Doc.REVIEW, done, to=[Doc.DONE])
    big = builder.build(af.MemoryStore())
    async with af.open_workflow(big), trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(af.serve_console, [big]))
        run_id = await big.trigger("x")
        await big.await_status("x", run_id, Doc.REVIEW, timeout=LIMIT)

        def script(page: Any) -> None:
            from playwright.sync_api import expect

            page.goto(f"http://127.0.0.1:{port}/#/run/big/{run_id}")
            expect(page.locator("#diff-more")).to_contain_text("49500 more changes")
            assert page.locator("#diff tbody tr").count() == 500
            expect(page.locator("#object-json")).to_contain_text("49999")

        with trio.fail_after(LIMIT):
            await in_browser(script)
        nursery.cancel_scope.cancel()


@attrs.define
class Counter:
    n: int = 0


@pytest.mark.browser
async def test_a_run_changing_fast_is_followed_without_redrawing_its_graph_each_time() -> None:
    """A run saving and repeating at one status hundreds of times while its page is open:
    the page follows it to the end and draws the graph again only when the status moves
    (each Mermaid drawing takes a while; one per version froze the page)."""
    builder = af.Builder("fast", Counter, Doc)
    go = trio.Event()

    @builder.step(Doc.DRAFT, to=Doc.REVIEW)
    async def count(run: af.Run[Counter, Doc]) -> Any:
        await go.wait()
        run.object.n += 1
        return run.save_and_repeat() if run.object.n < 300 else Doc.REVIEW

    async def done(run: af.Run[Counter, Doc], payload: bytes) -> Doc:
        return Doc.DONE

    builder.add_callback(Doc.REVIEW, done, to=[Doc.DONE])
    fast = builder.build(af.MemoryStore())
    async with af.open_workflow(fast), trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(af.serve_console, [fast]))
        run_id = await fast.trigger("x")

        def script(page: Any) -> int:
            from playwright.sync_api import expect

            page.goto(f"http://127.0.0.1:{port}/#/run/fast/{run_id}")
            expect(page.locator("#graph-legend")).to_contain_text("Current status: DRAFT")
            trio.from_thread.run_sync(go.set)
            expect(page.locator("#run-status")).to_have_text("REVIEW")
            expect(page.locator("#run-version")).to_have_text("301")
            expect(page.locator("#graph-legend")).to_contain_text("Current status: REVIEW")
            drawn: int = page.evaluate("graphCounter")
            return drawn

        assert await in_browser(script) <= 10
        nursery.cancel_scope.cancel()


@pytest.mark.browser
async def test_an_old_run_changing_stays_in_its_place_in_creation_order(served: Served) -> None:
    """The first page lists the newest runs first: an old run that changes is not a new
    run; it goes where it belongs (a later page), not on top, and a run that comes to
    match a filter goes where its creation puts it."""
    docs = served.docs
    ids = [await docs.trigger(f"r-{n:03}") for n in range(53)]
    for n, run_id in enumerate(ids):
        await docs.await_status(f"r-{n:03}", run_id, Doc.REVIEW, timeout=LIMIT)

    def script(page: Any) -> None:
        from playwright.sync_api import expect

        page.goto(f"{served.url}#/runs?workflow=docs")
        rows = page.locator("#runs-body tr[data-run-id]")
        expect(rows).to_have_count(50)
        trio.from_thread.run(docs.callback, "r-000", Doc.REVIEW, b"ok")  # on page 2
        trio.from_thread.run(docs.callback, "r-010", Doc.REVIEW, b"ok")  # on this page
        expect(rows.nth(42)).to_have_attribute("data-version", "3")
        expect(rows.first).to_contain_text("r-052")
        expect(page.locator("#runs-body")).not_to_contain_text("r-000")
        # a page of DONE runs: r-005 comes to match, between r-010 and r-000
        page.goto(f"{served.url}#/runs?workflow=docs&status=DONE")
        expect(rows).to_have_count(2)
        trio.from_thread.run(docs.callback, "r-005", Doc.REVIEW, b"ok")
        expect(rows).to_have_count(3)
        order: list[str] = rows.evaluate_all("rows => rows.map(r => r.cells[0].textContent)")
        assert order == ["r-010", "r-005", "r-000"], order

    await in_browser(script)
