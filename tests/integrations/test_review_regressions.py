"""Regressions of the review of the FastAPI / Litestar integrations and the scope hooks:
mounts sharing records, unscoped users, nested layers, double execution after the endpoint
returned, options read wrongly, the internal OpenAPI marker, and scope hooks that raise."""

from __future__ import annotations

import asyncio
import json
import traceback
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from litestar import Litestar, Router, asgi, post
from litestar import Request as LRequest
from litestar.connection import ASGIConnection
from litestar.middleware import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
    DefineMiddleware,
)
from litestar.testing import TestClient
from pydantic import BaseModel
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    InMemoryPersistenceLayer,
    RouteOptions,
)
from idempotent_middleware.exceptions import IdempotencyScopeRefusedError
from idempotent_middleware.fastapi import Idempotency, idempotent, idempotent_exempt
from idempotent_middleware.litestar import IdempotencyPlugin
from idempotent_middleware.scopes import credential_scope, user_scope

pytestmark = pytest.mark.timeout(60)

KEY = {"Idempotency-Key": "same-key"}


def fa_post(app: Any, calls: list[tuple[str, dict[str, str]]]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [await c.post(path, json={}, headers=h) for path, h in calls]

    return asyncio.run(main())


# --- Mounts Litestar mounts: the storage key uses the path Litestar stripped --------------------
def test_litestar_two_mounts_never_share_a_record() -> None:
    runs = {"a": 0, "b": 0}

    def sub(name: str) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            while (await receive()).get("more_body"):
                pass
            runs[name] += 1
            body = json.dumps({"app": name}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

        return app

    app = Litestar(
        [asgi("/a", is_mount=True)(sub("a")), asgi("/b", is_mount=True)(sub("b"))],
        plugins=[IdempotencyPlugin(InMemoryPersistenceLayer())],
    )
    with TestClient(app) as c:
        a = c.post("/a/orders", json={}, headers=KEY)
        b = c.post("/b/orders", json={}, headers=KEY)
    assert a.json() == {"app": "a"}
    assert b.json() == {"app": "b"}, (b.json(), b.headers.get("idempotent-replayed"), runs)


# --- user_scope: an authenticated user is never unscoped ---------------------------------------
def _simple_user_app(scope: Any) -> tuple[FastAPI, list[str]]:
    class Backend(AuthenticationBackend):
        async def authenticate(self, conn: Any) -> Any:
            auth = conn.headers.get("authorization", "")
            return AuthCredentials(["authenticated"]), SimpleUser(auth.removeprefix("Bearer "))

    runs: list[str] = []
    app = FastAPI()
    Idempotency(
        app, persistence_store=InMemoryPersistenceLayer(), config=IdempotencyConfig(scope=scope)
    )
    app.add_middleware(AuthenticationMiddleware, backend=Backend())

    @app.post("/transfers")
    async def transfer(request: Request) -> dict[str, str]:
        runs.append(request.user.username)
        return {"statement_of": request.user.username}

    return app, runs


def test_user_scope_user_without_the_identifier_is_refused_not_shared() -> None:
    app, runs = _simple_user_app(user_scope())  # SimpleUser has no ``id``
    calls = [("/transfers", {**KEY, "Authorization": f"Bearer {who}"}) for who in ("alice", "bob")]
    alice, bob = fa_post(app, calls)
    assert (alice.status_code, bob.status_code) == (503, 503)
    assert bob.headers["content-type"] == "application/problem+json"
    assert runs == []


def test_user_scope_on_the_right_attribute_keeps_users_apart() -> None:
    app, runs = _simple_user_app(user_scope("username"))
    calls = [("/transfers", {**KEY, "Authorization": f"Bearer {who}"}) for who in ("alice", "bob")]
    alice, bob = fa_post(app, calls)
    assert alice.json() == {"statement_of": "alice"}
    assert bob.json() == {"statement_of": "bob"}
    assert runs == ["alice", "bob"]


@dataclass
class _User:
    id: int


class _Auth(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
        token = connection.headers.get("authorization", "")
        return AuthenticationResult(user=_User(int(token[-1])), auth=token)


def test_user_scope_before_authentication_ran_is_refused_not_shared() -> None:
    runs = []

    @post("/orders")
    async def orders(request: LRequest[_User, Any, Any]) -> dict[str, int]:
        runs.append(request.user.id)
        return {"user": request.user.id}

    # Router-level authentication runs after the app-level idempotency middleware.
    api = Router("/api", route_handlers=[orders], middleware=[DefineMiddleware(_Auth)])
    plugin = IdempotencyPlugin(InMemoryPersistenceLayer(), IdempotencyConfig(scope=user_scope()))
    with TestClient(Litestar([api], plugins=[plugin])) as c:
        one = c.post("/api/orders", json={}, headers={**KEY, "Authorization": "Bearer u1"})
        two = c.post("/api/orders", json={}, headers={**KEY, "Authorization": "Bearer u2"})
    assert (one.status_code, two.status_code) == (503, 503)
    assert two.headers["content-type"] == "application/problem+json"
    assert runs == []


def test_user_scope_anonymous_is_refused_unless_opted_in() -> None:
    from starlette.authentication import UnauthenticatedUser

    def request_with(user: Any) -> Any:
        from idempotent_middleware.http.request import HttpRequest

        return HttpRequest("POST", "/", b"", [], {"type": "http", "user": user})

    with pytest.raises(IdempotencyScopeRefusedError):
        user_scope()(request_with(UnauthenticatedUser()))
    assert user_scope(anonymous="unscoped")(request_with(UnauthenticatedUser())) is None
    assert user_scope()(request_with({"id": 7})) == "int:7"


# --- Nested layers: the inner layer passes through, never stores a 409 ----------------------
def test_litestar_plugin_plus_layer_middleware_runs_the_handler() -> None:
    runs = []

    @post("/orders")
    async def orders(data: dict[str, int]) -> dict[str, int]:
        runs.append(1)
        return {"run": len(runs)}

    plugin = IdempotencyPlugin(InMemoryPersistenceLayer())
    api = Router("/api", route_handlers=[orders], middleware=[plugin.middleware])
    with TestClient(Litestar([api], plugins=[plugin])) as c:
        first = c.post("/api/orders", json={"a": 1}, headers=KEY)
        retry = c.post("/api/orders", json={"a": 1}, headers=KEY)
    assert first.status_code == 201, (first.status_code, retry.status_code, retry.headers)
    assert runs == [1]


def test_fastapi_raw_middleware_plus_integration_runs_the_handler() -> None:
    store = InMemoryPersistenceLayer()
    app = FastAPI()
    Idempotency(app, persistence_store=store)

    @app.post("/orders")
    async def orders() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(IdempotencyMiddleware, persistence_store=store)
    first, retry = fa_post(app, [("/orders", KEY), ("/orders", KEY)])
    assert first.status_code == 200, (first.status_code, retry.status_code, retry.headers)


# --- Litestar Litestar: an inherited skip_idempotency beats the handler's own explicit options ----
def test_litestar_handler_opt_in_beats_inherited_skip() -> None:
    runs = []

    @post("/pay", opt={"idempotency": RouteOptions(raise_on_no_idempotency_key=True)})
    async def pay() -> dict[str, int]:
        runs.append(1)
        return {"run": len(runs)}

    internal = Router("/internal", route_handlers=[pay], opt={"skip_idempotency": True})
    with TestClient(Litestar([internal], plugins=[IdempotencyPlugin()])) as c:
        no_key = c.post("/internal/pay")
        c.post("/internal/pay", headers=KEY)
        c.post("/internal/pay", headers=KEY)
    assert no_key.status_code == 400
    assert runs == [1], runs


# --- FastAPI FastAPI: the endpoint returned, FastAPI raised afterwards: key released, runs twice -
class _Out(BaseModel):
    amount: int


def test_fastapi_response_model_error_after_endpoint_never_runs_it_again() -> None:
    runs = []
    app = FastAPI()
    Idempotency(app, persistence_store=InMemoryPersistenceLayer())

    @app.post("/charge", response_model=_Out)
    async def charge() -> Any:
        runs.append("charged the card")
        return {"amount": "not an int"}  # the side effect happened; FastAPI raises after

    fa_post(app, [("/charge", KEY), ("/charge", KEY)])
    assert len(runs) == 1, runs


def test_fastapi_function_scoped_teardown_error_never_runs_it_again() -> None:
    runs = []

    async def session() -> Any:
        yield None
        raise RuntimeError("commit failed in teardown")

    app = FastAPI()
    Idempotency(app, persistence_store=InMemoryPersistenceLayer())

    @app.post("/charge")
    async def charge(s: Any = Depends(session, scope="function")) -> dict[str, int]:  # noqa: B008
        runs.append("charged the card")
        return {"run": len(runs)}

    fa_post(app, [("/charge", KEY), ("/charge", KEY)])
    assert len(runs) == 1, runs


# --- OpenAPI FastAPI: the documented custom-openapi override leaks the internal marker ----------
def test_fastapi_custom_openapi_has_no_internal_marker_on_uncovered_ops() -> None:
    app = FastAPI()
    Idempotency(app, persistence_store=InMemoryPersistenceLayer())

    @app.get("/items")
    async def items() -> list[int]:
        return []

    @app.post("/hook")
    @idempotent_exempt
    async def hook() -> dict[str, str]:
        return {}

    def custom_openapi() -> dict[str, Any]:  # FastAPI's documented "extend OpenAPI" recipe
        if app.openapi_schema:
            return app.openapi_schema
        app.openapi_schema = get_openapi(title="api", version="1", routes=app.routes)
        return app.openapi_schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    schema = app.openapi()
    found = {
        "GET /items": schema["paths"]["/items"]["get"].get("x-idempotency"),
        "POST /hook": schema["paths"]["/hook"]["post"].get("x-idempotency"),
    }
    assert found == {"GET /items": None, "POST /hook": None}, found


# --- Options route options that are wrong: a 500 per request instead of a set-up error ---------
def test_litestar_bad_opt_is_refused_at_startup() -> None:
    @post("/typo", opt={"idempotency": {"expires": 5}})
    async def typo() -> dict[str, str]:
        return {}

    app = Litestar([typo], plugins=[IdempotencyPlugin()], openapi_config=None)
    served = []
    # Litestar wraps a startup error in an exception group: look for ours inside it.
    with pytest.raises(Exception) as info, TestClient(app) as c:
        served.append(c.post("/typo", headers=KEY))
    assert "unexpected keyword argument 'expires'" in "".join(
        traceback.format_exception(info.value)
    )
    assert served == []


def test_fastapi_negative_ttl_is_refused_at_declaration() -> None:
    app = FastAPI()
    Idempotency(app, persistence_store=InMemoryPersistenceLayer())
    with pytest.raises(ValueError):

        @app.post("/neg")
        @idempotent(expires_after_seconds=-1)
        async def neg() -> dict[str, str]:
            return {}


# --- credential_scope: required=True refuses requests without a credential ------------------
def test_credential_scope_required_refuses_requests_without_a_credential() -> None:
    runs = []
    app = FastAPI()
    scope = credential_scope(secret="s" * 32, required=True)
    Idempotency(
        app, persistence_store=InMemoryPersistenceLayer(), config=IdempotencyConfig(scope=scope)
    )

    @app.post("/charge")
    async def charge() -> dict[str, int]:
        runs.append(1)
        return {"run": len(runs)}

    anonymous, signed = fa_post(
        app, [("/charge", KEY), ("/charge", {**KEY, "Authorization": "Bearer alice"})]
    )
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    assert signed.json() == {"run": 1}


def test_fastapi_callback_operations_have_no_internal_marker() -> None:
    from fastapi import APIRouter

    from idempotent_middleware.fastapi import IdempotentRoute

    app = FastAPI()
    Idempotency(app, persistence_store=InMemoryPersistenceLayer())
    callbacks = APIRouter(route_class=IdempotentRoute)  # "every router", as the README says

    @callbacks.post("{$callback_url}/events")
    def event() -> dict[str, str]:
        return {}

    @app.post("/subscribe", callbacks=callbacks.routes)
    async def subscribe() -> dict[str, str]:
        return {}

    operation = app.openapi()["paths"]["/subscribe"]["post"]
    callback = operation["callbacks"]["event"]["{$callback_url}/events"]["post"]
    assert "x-idempotency" not in callback, callback["x-idempotency"]


# --- Mounts0 FastAPI: @idempotent above the route decorator is silently ignored ---------------
def test_fastapi_idempotent_above_the_route_decorator_still_protects() -> None:
    runs = []
    app = FastAPI()
    Idempotency(app, persistence_store=InMemoryPersistenceLayer())

    @idempotent()  # one line too high: the route already exists
    @app.put("/accounts/a")
    async def put_account() -> dict[str, int]:
        runs.append(1)
        return {"run": len(runs)}

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for _ in range(2):
                await c.put("/accounts/a", headers=KEY)

    asyncio.run(main())
    assert runs == [1], runs


def test_fastapi_methods_as_a_string_is_refused_at_declaration() -> None:
    with pytest.raises(TypeError):
        idempotent(methods="PUT")
    with pytest.raises(TypeError):
        RouteOptions(methods="PUT")


def test_route_ttl_zero_is_refused_not_replaced_by_the_default() -> None:
    with pytest.raises(ValueError):
        RouteOptions(expires_after_seconds=0)


# --- Mounts1 a scope hook that raises: a bare 500 from our code, not a problem -----------------
def test_user_scope_on_a_baseuser_without_is_authenticated_is_a_problem_not_a_500() -> None:
    from starlette.authentication import BaseUser

    class User(BaseUser):  # implements identity only; BaseUser.is_authenticated raises
        def __init__(self, user_id: int) -> None:
            self.id = user_id

        @property
        def identity(self) -> str:
            return str(self.id)

    class Backend(AuthenticationBackend):
        async def authenticate(self, conn: Any) -> Any:
            return AuthCredentials([]), User(1)

    app = FastAPI()
    Idempotency(
        app,
        persistence_store=InMemoryPersistenceLayer(),
        config=IdempotencyConfig(scope=user_scope()),
    )
    app.add_middleware(AuthenticationMiddleware, backend=Backend())

    @app.post("/x")
    async def x() -> dict[str, str]:
        return {}

    (response,) = fa_post(app, [("/x", KEY)])
    assert response.headers["content-type"] == "application/problem+json", response.text


def test_litestar_apps_mounted_under_starlette_never_share_a_record() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    store = InMemoryPersistenceLayer()  # one Redis behind several apps, in production

    def region(name: str) -> Litestar:
        @post("/orders")
        async def orders() -> dict[str, str]:
            return {"region": name}

        return Litestar([orders], plugins=[IdempotencyPlugin(store)])

    outer = Starlette(routes=[Mount("/eu", region("eu")), Mount("/us", region("us"))])
    eu, us = fa_post(outer, [("/eu/orders", KEY), ("/us/orders", KEY)])
    assert eu.json() == {"region": "eu"}
    assert us.json() == {"region": "us"}, us.headers.get("idempotent-replayed")


def test_plain_asgi_apps_under_root_paths_never_share_a_record() -> None:
    """A proxy that strips the prefix: ``path`` lacks ``root_path``, no ``raw_path``."""
    store = InMemoryPersistenceLayer()

    def app(name: str) -> Any:
        async def inner(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": name.encode()})

        return IdempotencyMiddleware(inner, persistence_store=store)

    async def call(name: str) -> bytes:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/orders",
            "root_path": f"/{name}",
            "query_string": b"",
            "headers": [(b"idempotency-key", b"same-key")],
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(name)(scope, receive, send)
        return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    assert asyncio.run(call("a")) == b"a"
    assert asyncio.run(call("b")) == b"b"


def test_fastapi_sync_endpoint_error_after_it_returned_never_runs_it_again() -> None:
    runs = []
    app = FastAPI()
    Idempotency(app, persistence_store=InMemoryPersistenceLayer())

    @app.post("/charge", response_model=_Out)
    def charge() -> Any:  # run in FastAPI's thread pool
        runs.append("charged the card")
        return {"amount": "not an int"}

    _, retry = fa_post(app, [("/charge", KEY), ("/charge", KEY)])
    assert len(runs) == 1, runs
    assert retry.status_code == 409


def test_nested_wsgi_layers_run_the_app_once_and_store_its_response() -> None:
    import io

    from idempotent_middleware.wsgi import IdempotencyMiddleware as WsgiMiddleware

    runs = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        runs.append(1)
        start_response("201 Created", [("Content-Length", "2")])
        return [b"ok"]

    store = InMemoryPersistenceLayer()
    nested = WsgiMiddleware(WsgiMiddleware(app, store), store)

    def call() -> str:
        status: list[str] = []
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/orders",
            "QUERY_STRING": "",
            "CONTENT_LENGTH": "2",
            "HTTP_IDEMPOTENCY_KEY": "same-key",
            "wsgi.input": io.BytesIO(b"{}"),
        }
        body = nested(environ, lambda s, h, e=None: status.append(s))
        b"".join(body)
        getattr(body, "close", lambda: None)()
        return status[0]

    assert (call(), call()) == ("201 Created", "201 Created")
    assert runs == [1]
