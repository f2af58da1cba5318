"""R8: an ASGI response with trailers (``http.response.start`` with ``trailers: True``, then
``http.response.trailers``, the ASGI HTTP trailers extension Hypercorn serves) is recorded as
complete at its last body message, before the trailers go out; ``give_up`` on the trailers
message comes after the record. Retries get the response replayed as whole without its
trailers (a checksum, a gRPC status), and with a start message that announces none.
"""

from __future__ import annotations

import asyncio
from typing import Any

from idempotent_middleware import IdempotencyMiddleware, InMemoryPersistenceLayer

Message = dict[str, Any]


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/rpc",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"idempotency-key", b"r8")],
        "extensions": {"http.response.trailers": {}},
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


def test_r8_a_response_with_trailers_never_replays_without_them() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"trailer", b"grpc-status")],
                "trailers": True,
            }
        )
        await send({"type": "http.response.body", "body": b"payload", "more_body": False})
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"grpc-status", b"13")],  # the call failed after all
                "more_trailers": False,
            }
        )

    middleware = IdempotencyMiddleware(app, InMemoryPersistenceLayer())

    async def main() -> tuple[list[Message], list[Message]]:
        return await call(middleware), await call(middleware)

    first, replay = asyncio.run(main())
    assert [m["type"] for m in first][-1] == "http.response.trailers"
    kinds = [m["type"] for m in replay]
    if replay[0]["status"] == 200:  # replayed as the original: it must be the whole of it
        assert "http.response.trailers" in kinds, f"replay without the trailers: {replay}"
    else:  # executed, not replayable: never run again, never replayed in part
        body = b"".join(m.get("body", b"") for m in replay if m["type"] == "http.response.body")
        assert replay[0]["status"] == 409 and b"not-replayable" in body, replay
