"""Litestar apps for the in-process and real-server tests: options in ``opt``, a bearer user.

Handlers cover each way to declare options: nothing (the configuration's methods), an
``opt`` with ``RouteOptions`` (required key, a TTL), a dict on a PUT handler, a router's
``opt`` inherited by its handlers, ``skip_idempotency``, and a GET. The user comes from a
Litestar dependency over ``Authorization: Bearer <token>`` (it runs after the claim); keys
are scoped by ``credential_scope`` over that header.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass
from typing import Annotated

from litestar import Litestar, Request, Router, get, post, put
from litestar.di import Provide
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException
from litestar.params import Body

from idempotent_middleware import (
    BasePersistenceLayer,
    IdempotencyConfig,
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
    RouteOptions,
)
from idempotent_middleware.litestar import IdempotencyPlugin
from idempotent_middleware.scopes import credential_scope

TOKENS = {"token-alice": "alice", "token-bob": "bob"}
SECRET = "integration-tests-scope-secret"
WEEK = 7 * 86400


@dataclass
class Transfer:
    amount: int


TransferBody = Annotated[Transfer, Body(media_type=RequestEncodingType.JSON)]


async def current_user(request: Request) -> str:  # type: ignore[type-arg]
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    user = TOKENS.get(token) if scheme.lower() == "bearer" else None
    if user is None:
        raise NotAuthorizedException("unknown token")
    return user


class Runs:
    def __init__(self, store: BasePersistenceLayer) -> None:
        self.store = store
        self._local = itertools.count(1)
        self.value = 0

    def next(self, name: str) -> int:
        if isinstance(self.store, RedisPersistenceLayer):
            return int(self.store.sync_client().incr(f"litestar-it:runs:{name}"))
        self.value = next(self._local)
        return self.value


def build(store: BasePersistenceLayer) -> Litestar:
    runs = Runs(store)

    @post("/transfers", status_code=201)
    async def transfer(data: TransferBody, user: str) -> dict[str, object]:
        return {"user": user, "amount": data.amount, "run": runs.next("transfers")}

    @post("/slow", status_code=202)
    async def slow(data: TransferBody, user: str) -> dict[str, object]:
        run = runs.next("slow")
        await asyncio.sleep(0.5)
        return {"user": user, "run": run, "pid": os.getpid()}

    @post(
        "/payments",
        status_code=201,
        opt={
            "idempotency": RouteOptions(
                raise_on_no_idempotency_key=True, expires_after_seconds=WEEK
            )
        },
    )
    async def pay(data: TransferBody, user: str) -> dict[str, object]:
        return {"user": user, "amount": data.amount, "run": runs.next("payments")}

    @put("/accounts/{name:str}", opt={"idempotency": {}})
    async def put_account(name: str, data: TransferBody) -> dict[str, object]:
        return {"name": name, "run": runs.next("accounts")}

    @post("/webhooks", status_code=200, opt={"skip_idempotency": True})
    async def webhook(data: TransferBody) -> dict[str, object]:
        return {"run": runs.next("webhooks")}

    @get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"ok": True, "pid": os.getpid()}

    @post("/refunds", status_code=201)
    async def refund(data: TransferBody) -> dict[str, object]:
        return {"refund": data.amount, "run": runs.next("refunds")}

    v1 = Router(
        "/v1",
        route_handlers=[refund],
        opt={"idempotency": RouteOptions(raise_on_no_idempotency_key=True)},
    )
    plugin = IdempotencyPlugin(
        persistence_store=store,
        config=IdempotencyConfig(scope=credential_scope("authorization", secret=SECRET)),
    )
    app = Litestar(
        route_handlers=[transfer, slow, pay, put_account, webhook, healthz, v1],
        dependencies={"user": Provide(current_user)},
        plugins=[plugin],
    )
    app.state.runs = runs
    return app


def __getattr__(name: str) -> Litestar:
    # Built on first access (``tests.integrations.litestar_apps:server_app`` under uvicorn).
    if name == "server_app":
        url = os.environ.get("REDIS_URL")
        app = build(RedisPersistenceLayer(url=url) if url else InMemoryPersistenceLayer())
        globals()["server_app"] = app
        return app
    raise AttributeError(name)
