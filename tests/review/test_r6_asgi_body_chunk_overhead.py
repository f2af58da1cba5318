"""R6: the ASGI adapter buffers the request body as a list of the server's chunks
(``asgi._read_body``), so ``max_request_body_bytes`` bounds the body's bytes but not its
memory: a client that sends its body a few bytes per TCP segment (each becomes one
``http.request`` message) makes every 2 bytes cost a ``bytes`` object and a list slot, tens
of times the cap per request, before the cap is ever reached.
"""

from __future__ import annotations

import asyncio
import os
import tracemalloc
from typing import Any

from idempotent_middleware import IdempotencyMiddleware, InMemoryPersistenceLayer

BODY = 256 * 1024
PIECE = 2


def test_r6_body_buffer_memory_is_bounded_by_bytes() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = IdempotencyMiddleware(app, InMemoryPersistenceLayer())
    data = os.urandom(BODY)

    async def main() -> int:
        offset = 0

        async def receive() -> dict[str, Any]:
            nonlocal offset
            if offset >= BODY:
                await asyncio.sleep(3600)
            chunk = data[offset : offset + PIECE]
            offset += PIECE
            return {"type": "http.request", "body": chunk, "more_body": offset < BODY}

        async def send(message: dict[str, Any]) -> None:
            pass

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/upload",
            "query_string": b"",
            "headers": [(b"idempotency-key", b"r6")],
        }
        tracemalloc.start()
        try:
            await middleware(scope, receive, send)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak = asyncio.run(main())
    # The body itself, its joined copy and the stored response: a few times BODY at most.
    assert peak < 8 * BODY, f"peak {peak} bytes for a {BODY}-byte body ({peak / BODY:.0f}x)"
