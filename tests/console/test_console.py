"""The console's server without a browser: its HTTP endpoints, and the gateway protocol
on its ``/ws`` with the same tokens and read-only rule."""

from __future__ import annotations

import functools
import urllib.error
import urllib.request
from typing import Any

import pytest
import trio

import actorflow as af
from actorflow.gateway import open_gateway_client

from .conftest import READ_ONLY_TOKEN, TOKEN, ConsoleUnderTest, Parcel, build_parcels

LIMIT = 10.0


def get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=LIMIT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def fetch(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    return await trio.to_thread.run_sync(get, url, token)


async def test_page_assets_and_session(console: ConsoleUnderTest) -> None:
    with trio.fail_after(LIMIT):
        status, headers, body = await fetch(console.url)
        assert status == 200
        assert b'<script src="/static/console.js"' in body
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        status, headers, body = await fetch(console.url + "static/vendor/mermaid-12.3.0.min.js")
        assert status == 200 and len(body) > 1_000_000
        assert headers["content-type"].startswith("text/javascript")
        for path in ("static/../_app.py", "static/%2e%2e/_app.py", "static/nope.js"):
            assert (await fetch(console.url + path))[0] == 404
        assert (await fetch(console.url + "api/session"))[0] == 401
        assert (await fetch(console.url + "api/session", "wrong"))[0] == 403
        status, _, body = await fetch(console.url + "api/session", TOKEN)
        assert status == 200 and b'"access":"full"' in body
        status, _, body = await fetch(console.url + "api/session", READ_ONLY_TOKEN)
        assert status == 200 and b'"access":"read_only"' in body
        assert (await fetch(console.url + "healthz"))[0] == 200


async def test_ws_speaks_the_gateway_protocol_with_its_tokens(console: ConsoleUnderTest) -> None:
    ws = console.url.replace("http://", "ws://") + "ws"
    with trio.fail_after(LIMIT):
        async with open_gateway_client(ws, token=TOKEN) as client:
            run_id = await client.trigger("parcels", "p-1")
            await client.await_status("parcels", "p-1", run_id, "PACKED")
            assert (await client.count_runs("parcels"))["by_status"] == {"PACKED": 1}
        async with open_gateway_client(ws, token=READ_ONLY_TOKEN) as looker:
            assert (await looker.lookup("parcels", run_id))["status_name"] == "PACKED"
            with pytest.raises(af.GatewayError) as info:
                await looker.cancel("parcels", run_id)
            assert info.value.code == "forbidden"
        for token in (None, "wrong"):
            with pytest.raises(af.GatewayError) as info:
                async with open_gateway_client(ws, token=token):
                    pass
            assert info.value.code == "unauthorized"
    assert (await console.workflow.lookup(run_id)).run_state is af.RunState.RUNNING


async def test_serve_console_checks_its_arguments(nursery: trio.Nursery) -> None:
    workflow = build_parcels(af.MemoryStore())
    bad: list[tuple[Any, dict[str, Any], str]] = [
        ([], {}, "at least one workflow"),
        ([workflow, workflow], {}, "two workflows"),
        (["parcels"], {}, "Workflow objects"),
        ([workflow], {"read_only_token": "x"}, "needs token"),
        ([workflow], {"token": ""}, "token"),
        ([workflow], {"token": "a", "read_only_token": "a"}, "differ"),
        ([workflow], {"port": 70000}, "port"),
    ]
    for workflows, options, message in bad:
        with pytest.raises(af.InvalidArgument, match=message):
            await nursery.start(
                functools.partial(af.serve_console, workflows, "127.0.0.1", **options)
            )


async def test_serving_without_a_token_needs_no_sign_in(nursery: trio.Nursery) -> None:
    workflow = build_parcels(af.MemoryStore())
    await nursery.start(workflow.run)
    port = await nursery.start(functools.partial(af.serve_console, [workflow]))
    with trio.fail_after(LIMIT):
        status, _, body = await fetch(f"http://127.0.0.1:{port}/api/session")
        assert status == 200 and b'"auth":false' in body
        async with open_gateway_client(f"ws://127.0.0.1:{port}/ws") as client:
            run_id = await client.trigger("parcels", "p-1")
            record = await client.await_status("parcels", "p-1", run_id, Parcel.PACKED)
            assert record["version"] == 2


async def test_several_credentials_are_refused_even_with_the_right_one(
    console: ConsoleUnderTest,
) -> None:
    """#13: one credential per request; the gateway's rule holds on the console too."""
    with trio.fail_after(LIMIT):
        for token in (TOKEN, READ_ONLY_TOKEN):
            status, _, _ = await fetch(console.url + f"api/session?token={token}", token)
            assert status == 400
            status, _, _ = await fetch(console.url + f"api/session?token=x&token={token}")
            assert status == 400


async def test_wrong_tokens_are_limited_per_address(console: ConsoleUnderTest) -> None:
    """#13: the console counts wrong credentials per address like the gateway does."""
    limit = 10  # the default max_refused_handshakes
    with trio.fail_after(LIMIT):
        for _ in range(3):
            assert (await fetch(console.url + "api/session"))[0] == 401  # not a guess
        for _ in range(limit):
            assert (await fetch(console.url + "api/session", "guess"))[0] == 403
        # the right token waits too: the address is slowed down
        assert (await fetch(console.url + "api/session", TOKEN))[0] == 429
