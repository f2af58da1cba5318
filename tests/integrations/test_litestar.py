"""The Litestar integration in process (Litestar's ``TestClient``): options from ``opt``,
inherited from a router, exempt by ``skip_idempotency``, and the bearer user's scope."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar, post
from litestar.testing import TestClient

from idempotent_middleware import InMemoryPersistenceLayer
from idempotent_middleware.litestar import IdempotencyPlugin
from tests.integrations.litestar_apps import build

pytestmark = pytest.mark.timeout(60)

ALICE = {"Authorization": "Bearer token-alice"}
BOB = {"Authorization": "Bearer token-bob"}


@pytest.fixture
def client() -> Iterator[TestClient[Litestar]]:
    with TestClient(app=build(InMemoryPersistenceLayer())) as c:
        yield c


def runs(client: TestClient[Litestar]) -> int:
    return int(client.app.state.runs.value)


def problem(response: Any, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/" + slug)


def test_two_users_same_key_same_body_each_get_their_own(client: TestClient[Litestar]) -> None:
    key = {"Idempotency-Key": "shared-key"}
    alice = client.post("/transfers", json={"amount": 5}, headers={**ALICE, **key})
    bob = client.post("/transfers", json={"amount": 5}, headers={**BOB, **key})
    assert alice.json() == {"user": "alice", "amount": 5, "run": 1}
    assert bob.json() == {"user": "bob", "amount": 5, "run": 2}
    again = client.post("/transfers", json={"amount": 5}, headers={**ALICE, **key})
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == alice.content
    assert runs(client) == 2


def test_options_from_opt(client: TestClient[Litestar]) -> None:
    body = {"amount": 1}
    problem(client.post("/payments", json=body, headers=ALICE), 400, "idempotency-key-missing")
    # Inherited from the router's opt.
    problem(client.post("/v1/refunds", json=body), 400, "idempotency-key-missing")
    key = {"Idempotency-Key": "refund-1"}
    first = client.post("/v1/refunds", json=body, headers=key)
    retry = client.post("/v1/refunds", json=body, headers=key)
    assert first.status_code == 201 and retry.headers["idempotent-replayed"] == "true"
    problem(
        client.post("/v1/refunds", json={"amount": 2}, headers=key), 422, "idempotency-key-reused"
    )
    # Nothing declared: the configuration's methods, key optional.
    plain = [client.post("/transfers", json=body, headers=ALICE) for _ in range(2)]
    assert [r.json()["run"] for r in plain] == [2, 3]
    # opt={"idempotency": {}} on a PUT handler covers PUT.
    put = [client.put("/accounts/a", json=body, headers={"Idempotency-Key": "p"}) for _ in range(2)]
    assert put[1].headers["idempotent-replayed"] == "true"
    assert runs(client) == 4


def test_exempt_and_get(client: TestClient[Litestar]) -> None:
    key = {"Idempotency-Key": "hook-1"}
    hooks = [client.post("/webhooks", json={"amount": 1}, headers=key) for _ in range(2)]
    assert [r.json()["run"] for r in hooks] == [1, 2]
    gets = [client.get("/healthz", headers=key) for _ in range(2)]
    assert all("idempotent-replayed" not in r.headers for r in [*hooks, *gets])


def test_handler_error_releases_the_key() -> None:
    calls: list[int] = []

    @post("/boom")
    async def boom() -> None:
        calls.append(1)
        raise RuntimeError("handler failed")

    app = Litestar(route_handlers=[boom], plugins=[IdempotencyPlugin()])
    with TestClient(app=app, raise_server_exceptions=False) as c:
        answers = [c.post("/boom", headers={"Idempotency-Key": "b"}) for _ in range(2)]
    assert [a.status_code for a in answers] == [500, 500]
    assert len(calls) == 2  # a 500 is never stored: the retry ran again


def test_middleware_on_one_router_only() -> None:
    from litestar import Router

    calls: list[int] = []

    @post("/a", status_code=201)
    async def a() -> int:
        calls.append(1)
        return len(calls)

    @post("/b", status_code=201)
    async def b() -> int:
        calls.append(1)
        return len(calls)

    plugin = IdempotencyPlugin()
    app = Litestar(
        route_handlers=[Router("/in", route_handlers=[a], middleware=[plugin.middleware]), b]
    )
    key = {"Idempotency-Key": "k"}
    with TestClient(app=app) as c:
        inside = [c.post("/in/a", headers=key).text for _ in range(2)]
        outside = [c.post("/b", headers=key).text for _ in range(2)]
    assert inside == ["1", "1"] and outside == ["2", "3"]


def test_asgi_route_handler_is_covered_like_any_route() -> None:
    """``@asgi`` handlers have no ``http_methods``: the configuration's methods apply."""
    from litestar import asgi

    calls: list[int] = []

    @asgi("/raw")
    async def raw(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": str(len(calls)).encode()})

    app = Litestar(route_handlers=[raw], plugins=[IdempotencyPlugin()])
    with TestClient(app=app) as c:
        answers = [c.post("/raw", headers={"Idempotency-Key": "r"}) for _ in range(2)]
    assert [a.text for a in answers] == ["1", "1"]
    assert answers[1].headers["idempotent-replayed"] == "true"


def test_user_scope_with_an_authentication_middleware_before_ours() -> None:
    """Litestar's authentication middleware sets ``scope["user"]`` before the plugin's runs,
    so keys are scoped by the authenticated user itself."""
    from dataclasses import dataclass

    from litestar.connection import ASGIConnection
    from litestar.exceptions import NotAuthorizedException
    from litestar.middleware import (
        AbstractAuthenticationMiddleware,
        AuthenticationResult,
        DefineMiddleware,
    )

    from idempotent_middleware import IdempotencyConfig
    from idempotent_middleware.scopes import user_scope

    @dataclass
    class User:
        id: int
        name: str

    users = {"token-alice": User(1, "alice"), "token-bob": User(2, "bob")}

    class BearerAuth(AbstractAuthenticationMiddleware):
        async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:  # type: ignore[type-arg]
            token = connection.headers.get("authorization", "").removeprefix("Bearer ")
            if token not in users:
                raise NotAuthorizedException()
            return AuthenticationResult(user=users[token], auth=token)

    calls: list[str] = []

    @post("/transfers", status_code=201)
    async def transfer(request: Any) -> dict[str, object]:
        calls.append(request.user.name)
        return {"user": request.user.name, "run": len(calls)}

    app = Litestar(
        route_handlers=[transfer],
        middleware=[DefineMiddleware(BearerAuth)],
        plugins=[IdempotencyPlugin(config=IdempotencyConfig(scope=user_scope("id")))],
    )
    key = {"Idempotency-Key": "same"}
    with TestClient(app=app) as c:
        alice = c.post("/transfers", headers={**ALICE, **key})
        bob = c.post("/transfers", headers={**BOB, **key})
        again = c.post("/transfers", headers={**ALICE, **key})
    assert alice.json() == {"user": "alice", "run": 1}
    assert bob.json() == {"user": "bob", "run": 2}
    assert again.content == alice.content and again.headers["idempotent-replayed"] == "true"


# --- OpenAPI --------------------------------------------------------------------------------
def key_parameter(operation: dict[str, Any]) -> dict[str, Any] | None:
    found = [p for p in operation.get("parameters", []) if p["name"] == "Idempotency-Key"]
    assert len(found) <= 1
    return found[0] if found else None


def test_openapi_documents_covered_operations_only(client: TestClient[Litestar]) -> None:
    from openapi_spec_validator import validate

    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)
    paths = document["paths"]
    covered = {
        ("/transfers", "post"): False,
        ("/payments", "post"): True,
        ("/v1/refunds", "post"): True,
        ("/accounts/{name}", "put"): False,
    }
    for (path, method), required in covered.items():
        operation = paths[path][method]
        parameter = key_parameter(operation)
        assert parameter is not None, (path, method)
        assert parameter["required"] is required
        assert parameter["schema"]["maxLength"] == 255
        assert parameter["schema"]["pattern"] == "^[\\x20-\\x7E]+$"
        responses = operation["responses"]
        success = next(code for code in responses if code.startswith("2"))
        assert "Idempotent-Replayed" in responses[success]["headers"]
        for status in ("400", "409", "413", "422", "503"):
            media = responses[status]["content"]["application/problem+json"]
            assert media["schema"] == {"$ref": "#/components/schemas/IdempotencyProblem"}
        missing = responses["400"]["content"]["application/problem+json"]["examples"]
        assert ("missing" in missing) is required
    for path, method in [("/webhooks", "post"), ("/healthz", "get")]:
        operation = paths[path][method]
        assert key_parameter(operation) is None
        for status, answer in operation["responses"].items():
            assert "application/problem+json" not in answer.get("content", {}), status
            assert "Idempotent-Replayed" not in answer.get("headers", {})
    assert "IdempotencyProblem" in document["components"]["schemas"]
