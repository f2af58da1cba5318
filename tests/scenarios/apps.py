"""The same small API written twice: once for ASGI (Starlette), once for WSGI (Flask).

Endpoints: ``/orders`` (any method; 201 JSON with the execution number, two ``Set-Cookie``
lines and a repeated ``X-Multi`` header), ``/status/{code}``, ``/boom`` (raises),
``/slow`` (sleeps 0.5 s), ``/big`` (1000 bytes), ``/empty`` (204).

Both apps route the method case-insensitively, as Werkzeug (Flask) and Django (WSGI and ASGI)
do: ``post`` reaches the POST handlers. Starlette alone would answer 405, so the ASGI app
upper-cases the method first, as Django's ``ASGIHandler`` does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from typing import Any

from flask import Flask, Response, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response as StarletteResponse
from starlette.routing import Route


class Counter:
    def __init__(self) -> None:
        self._count = itertools.count(1)
        self._lock = threading.Lock()
        self.value = 0

    def next(self) -> int:
        with self._lock:
            self.value = next(self._count)
            return self.value


ORDER_HEADERS = [
    ("x-multi", "one"),
    ("set-cookie", "session=abc; Path=/"),
    ("x-multi", "two"),
    ("set-cookie", "theme=dark; Path=/"),
]


def order_body(run: int, method: str, body: bytes) -> bytes:
    return json.dumps({"run": run, "method": method, "echo": body.decode("latin-1")}).encode()


def asgi_app(counter: Counter) -> Any:
    async def orders(req: Request) -> StarletteResponse:
        body = await req.body()
        response = StarletteResponse(
            order_body(counter.next(), req.method, body), 201, media_type="application/json"
        )
        for name, value in ORDER_HEADERS:
            response.headers.append(name, value)
        return response

    async def status(req: Request) -> StarletteResponse:
        counter.next()
        return StarletteResponse(b"status", int(req.path_params["code"]))

    async def boom(req: Request) -> StarletteResponse:
        counter.next()
        raise RuntimeError("handler failed")

    async def slow(req: Request) -> StarletteResponse:
        run = counter.next()
        await asyncio.sleep(float(req.query_params.get("s", "0.5")))
        return StarletteResponse(f"slow {run}".encode(), 202)

    async def big(req: Request) -> StarletteResponse:
        counter.next()
        return StarletteResponse(b"b" * 1000, 200)

    async def empty(req: Request) -> StarletteResponse:
        counter.next()
        return StarletteResponse(status_code=204)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app = Starlette(
        routes=[
            Route("/orders", orders, methods=methods),
            Route("/internal/orders", orders, methods=methods),
            Route("/status/{code:int}", status, methods=["POST"]),
            Route("/boom", boom, methods=["POST"]),
            Route("/slow", slow, methods=["POST"]),
            Route("/big", big, methods=["POST"]),
            Route("/empty", empty, methods=["POST"]),
        ]
    )

    async def method_upper_cased(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "method": scope["method"].upper()}
        await app(scope, receive, send)

    return method_upper_cased


def wsgi_app(counter: Counter) -> Flask:
    app = Flask("scenarios")
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

    @app.route("/orders", methods=methods)
    @app.route("/internal/orders", methods=methods)
    def orders() -> Response:
        response = Response(
            order_body(counter.next(), request.method, request.get_data()),
            201,
            content_type="application/json",
        )
        for name, value in ORDER_HEADERS:
            response.headers.add(name, value)
        return response

    @app.post("/status/<int:code>")
    def status(code: int) -> Response:
        counter.next()
        return Response(b"status", code)

    @app.post("/boom")
    def boom() -> Response:
        counter.next()
        raise RuntimeError("handler failed")

    @app.post("/slow")
    def slow() -> Response:
        run = counter.next()
        time.sleep(float(request.args.get("s", "0.5")))
        return Response(f"slow {run}".encode(), 202)

    @app.post("/big")
    def big() -> Response:
        counter.next()
        return Response(b"b" * 1000, 200)

    @app.post("/empty")
    def empty() -> Response:
        counter.next()
        return Response(status=204)

    return app
