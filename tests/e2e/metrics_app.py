"""A Starlette app behind the ASGI middleware that exports Prometheus metrics at ``/metrics``.

Run by ``tests/test_prometheus.py`` as ``uvicorn tests.e2e.metrics_app:app`` (in-memory store,
one worker): ``POST /orders/{id}`` echoes its body with 201; ``GET /healthz`` answers 200.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    InMemoryPersistenceLayer,
)
from idempotent_middleware.prometheus import PrometheusMetrics

registry = CollectorRegistry()
metrics = PrometheusMetrics(registry=registry).install()


async def create_order(request: Request) -> JSONResponse:
    return JSONResponse({"body": (await request.body()).decode()}, status_code=201)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def export(request: Request) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


app = Starlette(
    routes=[
        Route("/orders/{order_id}", create_order, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", export, methods=["GET"]),
    ],
    middleware=[
        Middleware(
            IdempotencyMiddleware,
            persistence_store=InMemoryPersistenceLayer(),
            # The plain ASGI middleware runs before routing: the configured pattern is the label.
            config=IdempotencyConfig(include_paths=["/orders/*"]),
        )
    ],
)
