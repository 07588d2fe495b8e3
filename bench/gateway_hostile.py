"""What clients that ask for pages of runs and never read their replies cost the gateway.

``--connections`` websockets each send ``--requests`` ``list_runs`` of 1,000 runs (1 KB
objects) and read nothing. The figure is the Python memory the gateway holds for them
once everything is blocked (tracemalloc, after a collection), against a baseline from the
same run: the size of the replies they asked for (``--requests`` times one page, per
connection). Before the gateway made at most 4 such replies per connection at a time,
it held them all.

    python -m bench.gateway_hostile
    python -m bench.gateway_hostile --connections 8 --requests 64
"""

from __future__ import annotations

import argparse
import enum
import functools
import gc
import json
import tracemalloc

import attrs
import trio
import trio.testing
import trio_websocket

import actorflow as af

RUNS = 1000


class Stage(enum.IntEnum):
    OPEN = 1
    DONE = 2


@attrs.define
class Note:
    text: str = ""


def build() -> af.Workflow[Note, Stage]:
    builder = af.Builder("notes", Note, Stage)

    @builder.step(Stage.OPEN, to=Stage.DONE)
    async def close(run: af.Run[Note, Stage]) -> Stage:
        return Stage.DONE

    return builder.build(af.MemoryStore())


async def measure(connections: int, requests: int) -> tuple[int, int]:
    """(bytes held by the gateway, bytes of the replies asked for)."""
    wf = build()
    async with trio.open_nursery() as nursery:
        await nursery.start(wf.run)
        serve = functools.partial(af.serve_gateway, [wf], rate=1e6, burst=10**6)
        port = await nursery.start(serve)
        for n in range(RUNS):
            await wf.trigger(f"n{n}", initial=Note("m" * 1000))
        url = f"ws://127.0.0.1:{port}/"
        page = {"op": "list_runs", "workflow": "notes", "limit": RUNS}
        async with trio_websocket.open_websocket_url(url, max_message_size=1 << 26) as ws:
            await ws.send_message(json.dumps({"id": 0, **page}))
            page_bytes = len((await ws.get_message()).encode())
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        sockets = []
        for _ in range(connections):
            ws = await trio_websocket.connect_websocket_url(nursery, url, message_queue_size=0)
            for n in range(requests):
                await ws.send_message(json.dumps({"id": n, **page}))
            sockets.append(ws)
        await trio.testing.wait_all_tasks_blocked(0.5)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        nursery.cancel_scope.cancel()
    return held, connections * requests * page_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--requests", type=int, default=64)
    args = parser.parse_args()
    held, asked = trio.run(measure, args.connections, args.requests)
    print(
        f"{args.connections} connections x {args.requests} unread list_runs of {RUNS} runs: "
        f"replies asked for {asked / 1e6:.0f} MB, gateway holds {held / 1e6:.0f} MB "
        f"({held / asked:.2f} x)"
    )


if __name__ == "__main__":
    main()
