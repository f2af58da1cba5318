"""``credential_scope``: one hook for the plain ASGI and WSGI middlewares and the integrations.

Two credentials never share a key, a credential's retry replays its own response, and the
raw credential appears nowhere in the store (its keys or its records)."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
from werkzeug.test import Client

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    InMemoryPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from idempotent_middleware.http.request import HttpRequest
from idempotent_middleware.scopes import SECRET_ENVIRONMENT_VARIABLE, credential_scope

SECRET = "sixteen-or-more-bytes-of-secret"
TOKEN_A = b"Bearer secret-token-of-alice"
TOKEN_B = b"Bearer secret-token-of-bob"


def request(*headers: tuple[bytes, bytes]) -> HttpRequest:
    return HttpRequest("POST", "/x", b"", list(headers), None)


def test_keyed_hash_of_the_header() -> None:
    scope = credential_scope(secret=SECRET)
    a = scope(request((b"authorization", TOKEN_A)))
    assert a is not None and len(a) == 64 and "alice" not in a
    assert a == scope(request((b"authorization", b"  " + TOKEN_A)))
    assert a != scope(request((b"authorization", TOKEN_B)))
    assert scope(request((b"x-other", TOKEN_A))) is None
    # Another secret, another tenant: the store cannot be searched for guessed credentials.
    assert a != credential_scope(secret=SECRET + "!")(request((b"authorization", TOKEN_A)))
    both = credential_scope(["x-api-key", "authorization"], secret=SECRET)
    assert both(request((b"x-api-key", b"k1"))) != both(request((b"authorization", b"k1")))


def test_secret_is_required_and_long_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENVIRONMENT_VARIABLE, raising=False)
    with pytest.raises(ValueError, match=SECRET_ENVIRONMENT_VARIABLE):
        credential_scope()
    with pytest.raises(ValueError, match="16 bytes"):
        credential_scope(secret="short")
    monkeypatch.setenv(SECRET_ENVIRONMENT_VARIABLE, SECRET)
    assert credential_scope()(request((b"authorization", TOKEN_A))) == credential_scope(
        secret=SECRET
    )(request((b"authorization", TOKEN_A)))


def _stored_bytes(store: InMemoryPersistenceLayer) -> bytes:
    """Every key and record the in-memory store holds, as one byte string."""
    data: Any = store._records  # the test looks inside on purpose
    return repr(list(data.items())).encode()


def asgi_app(counter: itertools.count[int]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        body = json.dumps({"who": auth[-5:], "run": next(counter)}).encode()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def test_plain_asgi_middleware() -> None:
    store = InMemoryPersistenceLayer()
    app = IdempotencyMiddleware(
        asgi_app(itertools.count(1)),
        persistence_store=store,
        config=IdempotencyConfig(scope=credential_scope(secret=SECRET)),
    )

    async def call(token: bytes) -> tuple[bytes, list[Any]]:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/orders",
            "query_string": b"",
            "headers": [(b"authorization", token), (b"idempotency-key", b"same")],
        }
        sent: list[Any] = []
        messages = [{"type": "http.request", "body": b"{}"}]

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent[1]["body"], sent[0]["headers"]

    async def main() -> None:
        a, _ = await call(TOKEN_A)
        b, _ = await call(TOKEN_B)
        again, headers = await call(TOKEN_A)
        assert json.loads(a) == {"who": "alice", "run": 1}
        assert json.loads(b) == {"who": "f-bob", "run": 2}
        assert again == a and (b"idempotent-replayed", b"true") in headers

    asyncio.run(main())
    assert b"secret-token" not in _stored_bytes(store)


def test_plain_wsgi_middleware() -> None:
    store = InMemoryPersistenceLayer()
    counter = itertools.count(1)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        who = environ.get("HTTP_AUTHORIZATION", "")[-5:]
        start_response("201 Created", [("Content-Type", "application/json")])
        return [json.dumps({"who": who, "run": next(counter)}).encode()]

    client = Client(
        WSGIIdempotencyMiddleware(
            app,
            persistence_store=store,
            config=IdempotencyConfig(scope=credential_scope(secret=SECRET)),
        )
    )

    def call(token: bytes) -> Any:
        return client.post(
            "/orders",
            data=b"{}",
            headers={"Authorization": token.decode(), "Idempotency-Key": "same"},
            buffered=True,  # the whole body read and the iterable closed, as a server does
        )

    a, b, again = call(TOKEN_A), call(TOKEN_B), call(TOKEN_A)
    assert a.get_json() == {"who": "alice", "run": 1}
    assert b.get_json() == {"who": "f-bob", "run": 2}
    assert again.get_data() == a.get_data() and again.headers["Idempotent-Replayed"] == "true"
    assert b"secret-token" not in _stored_bytes(store)


def test_user_scope_reads_the_scope_user() -> None:
    from idempotent_middleware.exceptions import (
        IdempotencyScopeError,
        IdempotencyScopeRefusedError,
    )
    from idempotent_middleware.scopes import user_scope

    class Anonymous:
        is_authenticated = False

    def raw(user: Any) -> HttpRequest:
        return HttpRequest("POST", "/x", b"", [], {"type": "http", "user": user})

    scope = user_scope("id")
    assert scope(raw({"id": 7})) == "int:7"
    assert scope(raw({"id": "7"})) == "str:7"
    # Fails closed: anonymous callers are refused, a missing user is a set-up error.
    with pytest.raises(IdempotencyScopeRefusedError):
        scope(raw(Anonymous()))
    with pytest.raises(IdempotencyScopeRefusedError):
        scope(raw(None))
    with pytest.raises(IdempotencyScopeError):
        scope(HttpRequest("POST", "/x", b"", [], {"type": "http"}))
    with pytest.raises(IdempotencyScopeError):
        scope(raw({"name": "no id"}))
    opted_in = user_scope("id", anonymous="unscoped")
    assert opted_in(raw(Anonymous())) is None
    assert opted_in(raw(None)) is None
    assert opted_in(HttpRequest("POST", "/x", b"", [], {"type": "http"})) is None
    assert opted_in(HttpRequest("POST", "/x", b"", [], None)) is None  # WSGI-like raw
