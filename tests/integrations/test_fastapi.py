"""The FastAPI integration in process (httpx's ASGI transport): per-route options, exempt,
included routers, the bearer user's scope, set-up errors, and the OpenAPI contract."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from openapi_spec_validator import validate

from idempotent_middleware import IdempotencyConfig, InMemoryPersistenceLayer
from idempotent_middleware.fastapi import (
    Idempotency,
    IdempotentRoute,
    UnprotectedRoutesWarning,
    idempotent,
)
from tests.integrations.fastapi_apps import WEEK, build

pytestmark = [pytest.mark.timeout(60), pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ALICE = {"Authorization": "Bearer token-alice"}
BOB = {"Authorization": "Bearer token-bob"}
PROBLEM_STATUSES = ("400", "409", "413", "422", "503")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = build(InMemoryPersistenceLayer())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def runs(client: httpx.AsyncClient) -> int:
    app: Any = client._transport.app  # type: ignore[attr-defined]
    return int(app.state.runs.value)


def problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/" + slug)


async def test_two_users_same_key_same_body_each_get_their_own(
    client: httpx.AsyncClient,
) -> None:
    key = {"Idempotency-Key": "shared-key"}
    alice = await client.post("/transfers", json={"amount": 5}, headers={**ALICE, **key})
    bob = await client.post("/transfers", json={"amount": 5}, headers={**BOB, **key})
    assert (alice.status_code, bob.status_code) == (201, 201)
    assert alice.json() == {"user": "alice", "amount": 5, "run": 1}
    assert bob.json() == {"user": "bob", "amount": 5, "run": 2}
    assert "idempotent-replayed" not in bob.headers
    again = await client.post("/transfers", json={"amount": 5}, headers={**ALICE, **key})
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == alice.content
    assert runs(client) == 2


async def test_route_options_required_key_and_defaults(client: httpx.AsyncClient) -> None:
    body = {"amount": 1}
    problem(
        await client.post("/payments", json=body, headers=ALICE), 400, "idempotency-key-missing"
    )
    problem(await client.post("/v1/refunds", json=body), 400, "idempotency-key-missing")
    # A route that declares nothing follows the configuration: no key, no protection.
    plain = [await client.post("/transfers", json=body, headers=ALICE) for _ in range(2)]
    assert [r.json()["run"] for r in plain] == [1, 2]
    key = {"Idempotency-Key": "refund-1"}
    first = await client.post("/v1/refunds", json=body, headers=key)
    retry = await client.post("/v1/refunds", json=body, headers=key)
    assert first.status_code == 201 and retry.headers["idempotent-replayed"] == "true"
    problem(
        await client.post("/v1/refunds", json={"amount": 2}, headers=key),
        422,
        "idempotency-key-reused",
    )
    # @idempotent() on a PUT route covers PUT, which the configuration's methods do not.
    put = [
        await client.put("/accounts/a", json=body, headers={"Idempotency-Key": "put-1"})
        for _ in range(2)
    ]
    assert put[1].headers["idempotent-replayed"] == "true"
    assert put[0].json() == put[1].json()
    assert runs(client) == 4


async def test_exempt_route_and_get_run_every_time(client: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "hook-1"}
    hooks = [await client.post("/webhooks", json={"amount": 1}, headers=key) for _ in range(2)]
    assert [r.json()["run"] for r in hooks] == [1, 2]
    assert all("idempotent-replayed" not in r.headers for r in hooks)
    gets = [await client.get("/healthz", headers=key) for _ in range(2)]
    assert all("idempotent-replayed" not in r.headers for r in gets)


async def test_handler_error_releases_and_validation_error_is_stored(
    client: httpx.AsyncClient,
) -> None:
    key = {"Idempotency-Key": "boom-1"}
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await client.post("/boom", headers=key)
    assert runs(client) == 2  # released: the retry ran again
    # FastAPI's own 422 (a body it rejects) is the route's answer, stored like any other.
    bad = {**ALICE, "Idempotency-Key": "bad-body"}
    first = await client.post("/transfers", json={"amount": "x"}, headers=bad)
    retry = await client.post("/transfers", json={"amount": "x"}, headers=bad)
    assert first.status_code == 422 and first.headers["content-type"] == "application/json"
    assert retry.headers["idempotent-replayed"] == "true"


async def test_in_flight_duplicate_gets_409(client: httpx.AsyncClient) -> None:
    key = {**ALICE, "Idempotency-Key": "slow-1"}
    first, second = await asyncio.gather(
        client.post("/slow", json={"amount": 1}, headers=key),
        client.post("/slow", json={"amount": 1}, headers=key),
    )
    statuses = sorted([first.status_code, second.status_code])
    assert statuses == [202, 409]


def test_routes_declared_before_install_are_refused() -> None:
    app = FastAPI()

    @app.post("/early")
    async def early() -> dict[str, bool]:
        return {}

    with pytest.raises(ValueError, match="/early"):
        Idempotency(app)


def test_including_a_plain_router_warns() -> None:
    app = FastAPI()
    Idempotency(app)
    plain = APIRouter()

    @plain.post("/plain")
    async def handler() -> dict[str, bool]:
        return {}

    with pytest.warns(UnprotectedRoutesWarning, match="/plain"):
        app.include_router(plain)
    protected = APIRouter(route_class=IdempotentRoute)

    @protected.post("/protected")
    async def other() -> dict[str, bool]:
        return {}

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.include_router(protected)


async def test_route_class_without_install_fails_loudly() -> None:
    app = FastAPI()
    router = APIRouter(route_class=IdempotentRoute)

    @router.post("/x")
    async def x() -> dict[str, bool]:
        return {}

    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        with pytest.raises(RuntimeError, match="without Idempotency"):
            await c.post("/x", headers={"Idempotency-Key": "k"})


# --- OpenAPI --------------------------------------------------------------------------------
async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    validate(document)  # openapi-spec-validator: raises on any schema error
    return document


def key_parameter(operation: dict[str, Any]) -> dict[str, Any] | None:
    found = [p for p in operation.get("parameters", []) if p["name"] == "Idempotency-Key"]
    assert len(found) <= 1
    return found[0] if found else None


async def test_openapi_documents_covered_operations_only(client: httpx.AsyncClient) -> None:
    document = await openapi(client)
    paths = document["paths"]
    covered = {
        ("/transfers", "post"): False,
        ("/slow", "post"): False,
        ("/payments", "post"): True,
        ("/v1/refunds", "post"): True,
        ("/accounts/{name}", "put"): False,
        ("/boom", "post"): False,
    }
    for (path, method), required in covered.items():
        operation = paths[path][method]
        parameter = key_parameter(operation)
        assert parameter is not None, (path, method)
        assert parameter["in"] == "header"
        assert parameter["required"] is required
        assert parameter["schema"]["maxLength"] == 255
        assert parameter["schema"]["minLength"] == 1
        assert parameter["schema"]["pattern"] == "^[\\x20-\\x7E]+$"
        responses = operation["responses"]
        success = next(code for code in responses if code.startswith("2"))
        assert "Idempotent-Replayed" in responses[success]["headers"]
        for status in PROBLEM_STATUSES:
            media = responses[status]["content"]["application/problem+json"]
            assert media["schema"] == {"$ref": "#/components/schemas/IdempotencyProblem"}
            assert all(ex["value"]["status"] == int(status) for ex in media["examples"].values())
        assert "Retry-After" in responses["503"]["headers"]
        missing = responses["400"]["content"]["application/problem+json"]["examples"]
        assert ("missing" in missing) is required
    assert paths["/payments"]["post"]["x-idempotency"]["expiresAfterSeconds"] == WEEK
    # FastAPI's own 422 keeps its validation schema next to the problem.
    assert "application/json" in paths["/transfers"]["post"]["responses"]["422"]["content"]
    for path, method in [("/webhooks", "post"), ("/healthz", "get")]:
        operation = paths[path][method]
        assert key_parameter(operation) is None
        assert "x-idempotency" not in operation
        for status, response in operation["responses"].items():
            assert "application/problem+json" not in response.get("content", {}), status
            assert "Idempotent-Replayed" not in response.get("headers", {})
    schema = document["components"]["schemas"]["IdempotencyProblem"]
    assert set(schema["required"]) == {"type", "title", "status", "detail"}


async def test_openapi_lists_every_problem_a_covered_operation_can_answer(
    client: httpx.AsyncClient,
) -> None:
    """411 (a body without a length), and with a scope hook its 401 and 503 problems."""
    responses = (await openapi(client))["paths"]["/payments"]["post"]["responses"]
    examples = {
        status: set(responses[status]["content"]["application/problem+json"]["examples"])
        for status in ("401", "411", "503")
    }
    assert examples["411"] == {"length-required"}
    assert examples["401"] == {"scope-unauthenticated"}
    assert examples["503"] == {"unavailable", "corrupt", "scope-unavailable"}

    app = FastAPI()
    Idempotency(app, config=IdempotencyConfig(methods=["POST"]))

    @app.post("/plain")
    async def plain() -> dict[str, bool]:
        return {}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        unscoped = (await openapi(c))["paths"]["/plain"]["post"]["responses"]
    assert "401" not in unscoped
    assert (
        "scope-unavailable"
        not in unscoped["503"]["content"]["application/problem+json"]["examples"]
    )


async def test_openapi_without_a_covered_operation_adds_nothing() -> None:
    app = FastAPI()
    Idempotency(app, config=IdempotencyConfig(methods=["POST"]))

    @app.get("/items")
    async def items() -> list[int]:
        return []

    @app.post("/plain")
    @idempotent(methods=["DELETE"])
    async def plain() -> dict[str, bool]:
        return {}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        document = await openapi(c)
        assert "IdempotencyProblem" not in document.get("components", {}).get("schemas", {})
        assert key_parameter(document["paths"]["/plain"]["post"]) is None
        # The schema is documented once, however often it is served.
        assert await openapi(c) == document


async def test_openapi_with_a_body_key_has_no_header_parameter() -> None:
    app = FastAPI()
    Idempotency(app, config=IdempotencyConfig(event_key_jmespath="body.order_id"))

    @app.post("/orders")
    async def orders(body: dict[str, str]) -> dict[str, str]:
        return body

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        operation = (await openapi(c))["paths"]["/orders"]["post"]
        first = await c.post("/orders", json={"order_id": "o1"})
        retry = await c.post("/orders", json={"order_id": "o1"})
    assert key_parameter(operation) is None
    assert "application/problem+json" in operation["responses"]["409"]["content"]
    assert operation["x-idempotency"]["header"] is None
    assert retry.headers["idempotent-replayed"] == "true" and retry.content == first.content
