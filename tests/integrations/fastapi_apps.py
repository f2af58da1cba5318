"""FastAPI apps for the in-process and real-server tests: native options and a bearer user.

``build(store)`` returns an app whose routes cover each way to declare options: nothing
(the configuration's methods), ``@idempotent(...)`` (required key, a TTL, a PUT route),
``@idempotent_exempt``, an included ``APIRouter(route_class=IdempotentRoute)``, and a GET.
Users authenticate with ``Authorization: Bearer <token>`` through a FastAPI dependency that
runs after the claim; keys are scoped by ``credential_scope`` over that header.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from idempotent_middleware import (
    BasePersistenceLayer,
    IdempotencyConfig,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
)
from idempotent_middleware.fastapi import (
    Idempotency,
    IdempotentRoute,
    idempotent,
    idempotent_exempt,
)
from idempotent_middleware.scopes import credential_scope

TOKENS = {"token-alice": "alice", "token-bob": "bob"}
SECRET = "integration-tests-scope-secret"
WEEK = 7 * 86400

bearer = HTTPBearer()


def current_user(
    credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)],
) -> str:
    user = TOKENS.get(credentials.credentials)
    if user is None:
        raise HTTPException(status_code=401, detail="unknown token")
    return user


class Transfer(BaseModel):
    amount: int


class Runs:
    """Handler runs: in Redis when the store is Redis (shared by every worker), else here."""

    def __init__(self, store: BasePersistenceLayer) -> None:
        self.store = store
        self._local = itertools.count(1)
        self.value = 0

    def next(self, name: str) -> int:
        if isinstance(self.store, RedisPersistenceLayer):
            return int(self.store.sync_client().incr(f"fastapi-it:runs:{name}"))
        self.value = next(self._local)
        return self.value


def build(store: BasePersistenceLayer) -> FastAPI:
    app = FastAPI(title="fastapi integration")
    Idempotency(
        app,
        persistence_store=store,
        config=IdempotencyConfig(scope=credential_scope("authorization", secret=SECRET)),
    )
    runs = Runs(store)
    app.state.runs = runs

    @app.post("/transfers", status_code=201)
    async def transfer(body: Transfer, user: Annotated[str, Depends(current_user)]) -> dict:
        return {"user": user, "amount": body.amount, "run": runs.next("transfers")}

    @app.post("/slow", status_code=202)
    async def slow(body: Transfer, user: Annotated[str, Depends(current_user)]) -> dict:
        run = runs.next("slow")
        await asyncio.sleep(0.5)
        return {"user": user, "run": run, "pid": os.getpid()}

    @app.post("/payments", status_code=201)
    @idempotent(raise_on_no_idempotency_key=True, expires_after_seconds=WEEK)
    async def pay(body: Transfer, user: Annotated[str, Depends(current_user)]) -> dict:
        return {"user": user, "amount": body.amount, "run": runs.next("payments")}

    @app.put("/accounts/{name}")
    @idempotent()
    async def put_account(name: str, body: Transfer) -> dict:
        return {"name": name, "run": runs.next("accounts")}

    @app.post("/webhooks")
    @idempotent_exempt
    async def webhook(body: Transfer) -> dict:
        return {"run": runs.next("webhooks")}

    @app.post("/boom")
    async def boom() -> dict:
        runs.next("boom")
        raise RuntimeError("handler failed")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True, "pid": os.getpid()}

    router = APIRouter(prefix="/v1", route_class=IdempotentRoute)

    @router.post("/refunds", status_code=201)
    @idempotent(raise_on_no_idempotency_key=True)
    async def refund(body: Transfer) -> dict:
        return {"refund": body.amount, "run": runs.next("refunds")}

    app.include_router(router)
    return app


def _server_app() -> FastAPI:
    """The app uvicorn imports (``tests.integrations.fastapi_apps:server_app``)."""
    url = os.environ.get("REDIS_URL")
    store = RedisPersistenceLayer(url=url) if url else InMemoryPersistenceLayer()
    return build(store)


def __getattr__(name: str) -> FastAPI:
    # Built on first access, so that importing this module for in-process tests costs nothing.
    if name == "server_app":
        app = _server_app()
        globals()["server_app"] = app
        return app
    raise AttributeError(name)
