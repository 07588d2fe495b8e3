"""The metrics server of ``actorflow worker --metrics HOST:PORT``: ``/metrics`` (Prometheus
text format), ``/healthz`` and ``/readyz``; plain HTTP/1.1 on trio (h11), GET only.

- ``/healthz``: 200 while every workflow of the worker runs here (its supervisor and
  services are up), else 503.
- ``/readyz``: 200 once every workflow has recovered its runs and takes work (with
  PostgreSQL: holds its share of shard leases), else 503.
Both answer with a JSON body: each workflow's ``states()``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import h11
import trio

from actorflow._runtime.engine import log

MAX_REQUEST = 16 * 1024
READ_TIMEOUT = 10.0


def _registries(workflows: Sequence[Any], registry: Any) -> list[Any]:
    if registry is not None:
        return [registry]
    found: list[Any] = []
    observer_lists = []
    for workflow in workflows:
        observer = workflow.observer
        observer_lists.append(getattr(observer, "observers", (observer,)))
    for observers in observer_lists:
        for observer in observers:
            reg = getattr(observer, "registry", None)
            if reg is not None and all(reg is not r for r in found):
                found.append(reg)
    if not found:
        import prometheus_client

        found.append(prometheus_client.REGISTRY)
    return found


def metrics_text(workflows: Sequence[Any], registry: Any = None) -> bytes:
    """The Prometheus text exposition of the workflows' registries (or of ``registry``)."""
    from prometheus_client import generate_latest

    return b"".join(generate_latest(r) for r in _registries(workflows, registry))


def health(workflows: Sequence[Any], *, ready: bool) -> tuple[bool, bytes]:
    """(ok, JSON body) for /healthz (``ready=False``) or /readyz."""
    report: dict[str, Any] = {}
    ok = True
    for workflow in workflows:
        up = workflow.running and (workflow.ready if ready else True)
        ok = ok and up
        report[workflow.name] = {
            "ok": up,
            "states": {name: state.name.lower() for name, state in workflow.states().items()},
        }
    return ok, (json.dumps({"ok": ok, "workflows": report}, indent=1) + "\n").encode()


async def serve_metrics(
    workflows: Sequence[Any],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    registry: Any = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` until cancelled; reports the bound
    port as started (port 0 picks a free one).

    Raises:
        OSError: the address cannot be bound.
    """
    from actorflow._observe import metrics_registry

    metrics_registry(True)  # BuildError now when prometheus-client is missing
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await _serve_connection(stream, workflows, registry)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        except trio.TooSlowError:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)


async def _serve_connection(
    stream: trio.SocketStream, workflows: Sequence[Any], registry: Any
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    while True:
        request: h11.Request | None = None
        with trio.fail_after(READ_TIMEOUT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(4096)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request = event
                    continue
                if isinstance(event, h11.EndOfMessage):
                    break
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
        assert request is not None
        status, content_type, body = _respond(request, workflows, registry)
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
        ]
        if request.method == b"HEAD":
            body = b""
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        if body:
            await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


def _respond(
    request: h11.Request, workflows: Sequence[Any], registry: Any
) -> tuple[int, bytes, bytes]:
    path = request.target.split(b"?", 1)[0]
    if request.method not in (b"GET", b"HEAD"):
        return 405, b"text/plain", b"only GET\n"
    if path == b"/metrics":
        try:
            from prometheus_client import CONTENT_TYPE_LATEST

            return 200, CONTENT_TYPE_LATEST.encode(), metrics_text(workflows, registry)
        except Exception as exc:  # a scrape must never take the worker down
            log.exception("metrics: /metrics failed", exc_info=exc)
            return 500, b"text/plain", f"metrics failed: {exc!r}\n".encode()
    if path in (b"/healthz", b"/readyz"):
        ok, body = health(workflows, ready=path == b"/readyz")
        return (200 if ok else 503), b"application/json", body
    return 404, b"text/plain", b"not found: try /metrics, /healthz or /readyz\n"
