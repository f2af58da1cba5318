"""ASGI adapter rules (ASGI HTTP spec; Starlette's GZipMiddleware as the model)."""

from __future__ import annotations

import asyncio
from typing import Any

from idempotent_middleware import IdempotencyMiddleware, InMemoryPersistenceLayer
from idempotent_middleware.persistence.base import STATUS_COMPLETED

Message = dict[str, Any]


def http_scope(key: bytes | None = b"k1", method: str = "POST") -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"idempotency-key", key))
    return {"type": "http", "method": method, "path": "/x", "query_string": b"", "headers": headers}


async def call(app: Any, scope: dict[str, Any], messages: list[Message]) -> list[Message]:
    inbox = list(messages)
    sent: list[Message] = []

    async def receive() -> Message:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def body(payload: bytes = b"{}", more: bool = False) -> Message:
    return {"type": "http.request", "body": payload, "more_body": more}


def test_non_http_scopes_pass_through_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        await send({"type": f"{scope['type']}.marker"})

    middleware = IdempotencyMiddleware(app)

    async def main() -> None:
        for kind in ("websocket", "lifespan"):
            sent = await call(middleware, {"type": kind}, [])
            assert sent == [{"type": f"{kind}.marker"}]

    asyncio.run(main())
    assert seen == ["websocket", "lifespan"]


def test_after_the_buffered_body_the_real_receive_is_used() -> None:
    """Never invent http.disconnect: the app's second receive() reaches the server."""
    received: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = IdempotencyMiddleware(app)
    server_messages = [body(b'{"a":', more=True), body(b"1}"), {"type": "server.marker"}]
    asyncio.run(call(middleware, http_scope(), server_messages))
    assert received[0] == body(b'{"a":1}')
    assert received[1] == {"type": "server.marker"}


def test_streams_chunk_by_chunk_and_records_before_the_last_chunk() -> None:
    store = InMemoryPersistenceLayer()
    observed: list[tuple[bytes, str | None]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        for part in (b"a", b"b", b"c"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    middleware = IdempotencyMiddleware(app, persistence_store=store)

    async def main() -> None:
        async def send(message: Message) -> None:
            if message["type"] == "http.response.body":
                records = list(store._records.values())
                observed.append((message["body"], records[0].status if records else None))

        inbox = [body()]

        async def receive() -> Message:
            return inbox.pop()

        await middleware(http_scope(), receive, send)

    asyncio.run(main())
    assert [chunk for chunk, _ in observed] == [b"a", b"b", b"c", b""]
    assert [status for _, status in observed[:3]] == ["INPROGRESS"] * 3
    assert observed[3][1] == STATUS_COMPLETED


def test_pathsend_passes_through_and_is_not_replayed() -> None:
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": "/etc/hostname"})

    middleware = IdempotencyMiddleware(app)

    async def main() -> tuple[list[Message], list[Message]]:
        first = await call(middleware, http_scope(), [body()])
        second = await call(middleware, http_scope(), [body()])
        return first, second

    first, second = asyncio.run(main())
    assert first[1] == {"type": "http.response.pathsend", "path": "/etc/hostname"}
    assert second[0]["status"] == 409
    assert b"not-replayable" in second[1]["body"]
    assert runs == [1]


def test_unkeyed_and_unconfigured_requests_are_not_buffered() -> None:
    """Pass-through requests see the server's own receive, message by message."""
    received: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = IdempotencyMiddleware(app)
    asyncio.run(call(middleware, http_scope(key=None), [body(b"part", more=True)]))
    asyncio.run(call(middleware, http_scope(method="GET"), [body(b"get", more=True)]))
    assert received == [body(b"part", more=True), body(b"get", more=True)]
