"""The HTTP middlewares under the Powertools changes: still fingerprinting by default, and
passing straight through when disabled by the environment."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from werkzeug.test import Client

from idempotent_middleware import (
    BasePersistenceLayer,
    IdempotencyMiddleware,
    WSGIIdempotencyMiddleware,
)


async def _asgi_post(app: Any, key: str, payload: bytes) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/orders",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"idempotency-key", key.encode())],
    }
    inbox = [{"type": "http.request", "body": payload, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def _asgi_app(calls: list[int]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        calls.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": str(len(calls)).encode()})

    return app


def _wsgi_app(calls: list[int]) -> Any:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        calls.append(1)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [str(len(calls)).encode()]

    return app


def test_asgi_still_fingerprints_the_body_by_default(store: BasePersistenceLayer) -> None:
    calls: list[int] = []
    app = IdempotencyMiddleware(_asgi_app(calls), persistence_store=store)
    key = uuid.uuid4().hex

    async def main() -> list[tuple[int, bytes]]:
        return [await _asgi_post(app, key, b'{"a": 1}'), await _asgi_post(app, key, b'{"a": 2}')]

    first, changed = asyncio.run(main())
    assert first == (201, b"1")
    assert changed[0] == 422
    assert len(calls) == 1


def test_wsgi_still_fingerprints_the_body_by_default(store: BasePersistenceLayer) -> None:
    calls: list[int] = []
    client = Client(WSGIIdempotencyMiddleware(_wsgi_app(calls), persistence_store=store))
    headers = {"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
    assert client.post("/orders", data=b'{"a": 1}', headers=headers).status_code == 201
    assert client.post("/orders", data=b'{"a": 2}', headers=headers).status_code == 422
    assert len(calls) == 1


@pytest.mark.parametrize("variable", ["IDEMPOTENCY_DISABLED", "POWERTOOLS_IDEMPOTENCY_DISABLED"])
def test_asgi_passes_through_when_disabled(
    store: BasePersistenceLayer, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    app = IdempotencyMiddleware(_asgi_app(calls), persistence_store=store)
    key = uuid.uuid4().hex
    monkeypatch.setenv(variable, "1")

    async def main() -> list[tuple[int, bytes]]:
        return [await _asgi_post(app, key, b"{}") for _ in range(2)]

    assert asyncio.run(main()) == [(201, b"1"), (201, b"2")]


@pytest.mark.parametrize("variable", ["IDEMPOTENCY_DISABLED", "POWERTOOLS_IDEMPOTENCY_DISABLED"])
def test_wsgi_passes_through_when_disabled(
    store: BasePersistenceLayer, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    client = Client(WSGIIdempotencyMiddleware(_wsgi_app(calls), persistence_store=store))
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    monkeypatch.setenv(variable, "yes")
    answers = [client.post("/orders", data=b"{}", headers=headers).get_data() for _ in range(2)]
    assert answers == [b"1", b"2"]
    monkeypatch.setenv(variable, "off")
    assert client.post("/orders", data=b"{}", headers=headers).get_data() == b"3"
    assert client.post("/orders", data=b"{}", headers=headers).get_data() == b"3"
