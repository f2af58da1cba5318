"""How the ASGI adapter reads a keyed request's body: one message, many, too many, or cut."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from idempotent_middleware import IdempotencyConfig, IdempotencyMiddleware

from .test_adapter import body, call, http_scope

Message = dict[str, Any]


def build(runs: list[bytes]) -> IdempotencyMiddleware:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    return IdempotencyMiddleware(app, config=IdempotencyConfig(max_request_body_bytes=8))


def status(sent: list[Message]) -> int | None:
    return sent[0]["status"] if sent else None


@pytest.mark.parametrize(
    ("messages", "answer", "seen"),
    [
        ([body(b"12345678")], 201, [b"12345678"]),  # at the cap, in one message
        ([body(b"1234", more=True), body(b"5678")], 201, [b"12345678"]),
        ([body(b"123456789")], 413, []),
        ([body(b"12345", more=True), body(b"6789")], 413, []),
        ([{"type": "http.disconnect"}], None, []),  # gone before the body: nobody to answer
        ([body(b"12", more=True), {"type": "http.disconnect"}], None, []),
    ],
)
def test_body_messages(messages: list[Message], answer: int | None, seen: list[bytes]) -> None:
    runs: list[bytes] = []
    sent = asyncio.run(call(build(runs), http_scope(), messages))
    assert status(sent) == answer
    assert runs == seen


def test_a_receive_that_raises_is_a_400() -> None:
    runs: list[bytes] = []
    middleware = build(runs)

    async def receive() -> Message:
        raise OSError("connection reset")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(middleware(http_scope(), receive, send))
    assert status(sent) == 400
    assert runs == []
