"""R5: an async handler that blocks its event loop (a sync HTTP call or ``time.sleep`` inside
``async def``, a CPU-bound step) for longer than the lease loses its claim: asyncio leases are
renewed only by the loop's own timer, so nothing renews while the loop is blocked, and a
retry reaching another worker runs the handler a second time. A sync (WSGI) handler blocking
as long keeps its claim: the process's renewer thread renews it.

Two workers are simulated by two threads, each with its own loop, sharing one store.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from idempotent_middleware import IdempotencyConfig, IdempotencyMiddleware, InMemoryPersistenceLayer

Message = dict[str, Any]
LEASE = 0.4


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/charge",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"idempotency-key", b"r5")],
    }


async def call(app: Any) -> list[Message]:
    inbox: list[Message] = [{"type": "http.request", "body": b"{}", "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope(), receive, send)
    return sent


def test_r5_async_handler_blocking_its_loop_runs_twice() -> None:
    store = InMemoryPersistenceLayer()
    runs: list[str] = []
    started = threading.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(threading.current_thread().name)
        started.set()
        if len(runs) == 1:
            time.sleep(LEASE * 3)  # a blocking call inside async def (requests.post, say)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"charged"})

    def worker() -> IdempotencyMiddleware:
        return IdempotencyMiddleware(app, store, IdempotencyConfig(lease_seconds=LEASE))

    first: list[list[Message]] = []
    one = threading.Thread(
        target=lambda: first.append(asyncio.run(call(worker()))), name="worker-1"
    )
    one.start()
    assert started.wait(5)
    time.sleep(LEASE * 2)  # the client's retry, to another worker, while the first still runs
    second = asyncio.run(call(worker()))
    one.join()
    assert first[0][0]["status"] == 201
    assert len(runs) == 1, f"ran {len(runs)} times; the retry got {second[0]['status']}"


def test_r5_control_sync_handler_blocking_as_long_keeps_its_claim() -> None:
    """The contrast: the same block in a WSGI handler; the renewer thread keeps the claim."""
    import io

    from idempotent_middleware import WSGIIdempotencyMiddleware

    store = InMemoryPersistenceLayer()
    runs: list[str] = []
    started = threading.Event()

    def app(environ: Any, start_response: Any) -> list[bytes]:
        runs.append(threading.current_thread().name)
        started.set()
        if len(runs) == 1:
            time.sleep(LEASE * 3)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"charged"]

    middleware = WSGIIdempotencyMiddleware(app, store, IdempotencyConfig(lease_seconds=LEASE))
    statuses: list[str] = []

    def request() -> None:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/charge",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": "2",
            "HTTP_IDEMPOTENCY_KEY": "r5w",
            "wsgi.input": io.BytesIO(b"{}"),
        }
        body = middleware(environ, lambda status, headers, exc_info=None: statuses.append(status))
        list(body)
        getattr(body, "close", lambda: None)()

    one = threading.Thread(target=request, name="worker-1")
    one.start()
    assert started.wait(5)
    time.sleep(LEASE * 2)
    request()
    one.join()
    assert runs == ["worker-1"]
    assert statuses[0].startswith("409")  # the retry, while the first still ran
