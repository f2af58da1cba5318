"""Send one request through either adapter and get back exactly what a server would write.

The ASGI driver calls the app with raw scope/receive/send on one event loop thread (so
repeated header lines and odd bytes reach the middleware untouched) and checks the ASGI rules
on the way out; the WSGI driver goes through Werkzeug's test client with ``LintMiddleware`` on
both sides of our middleware.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from werkzeug.middleware.lint import LintMiddleware
from werkzeug.test import Client

from idempotent_middleware import (
    BasePersistenceLayer,
    IdempotencyConfig,
    IdempotencyMiddleware,
    WSGIIdempotencyMiddleware,
)

from .apps import Counter, asgi_app, wsgi_app


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raised: bool = False

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    def header(self, name: str) -> str | None:
        found = self.values(name)
        return found[-1] if found else None


@dataclass
class Request:
    method: str
    path: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class Driver:
    name = ""
    counter: Counter
    extra_headers: tuple[tuple[str, str], ...] = ()

    def send(self, request: Request) -> Reply:
        raise NotImplementedError

    def close(self) -> None:
        pass


class AsgiDriver(Driver):
    name = "asgi"

    def __init__(self, store: BasePersistenceLayer, config: IdempotencyConfig) -> None:
        self.counter = Counter()
        self.app = self.build(store, config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def build(self, store: BasePersistenceLayer, config: IdempotencyConfig) -> Any:
        return IdempotencyMiddleware(asgi_app(self.counter), persistence_store=store, config=config)

    def send(self, request: Request) -> Reply:
        future = asyncio.run_coroutine_threadsafe(self._call(request), self.loop)
        return future.result(timeout=30)

    async def _call(self, request: Request) -> Reply:
        path, _, query = request.path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in [*request.headers, *self.extra_headers]
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
        }
        pending = [{"type": "http.request", "body": request.body, "more_body": False}]
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            await never.wait()  # a real server only says disconnect when the client goes
            return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        raised = False
        try:
            await self.app(scope, receive, send)
        except Exception:
            raised = True
        starts = [m for m in sent if m["type"] == "http.response.start"]
        assert len(starts) <= 1, "http.response.start sent more than once"
        if not starts:
            return Reply(500, [], b"", raised=True)
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in starts[0]["headers"]]
        return Reply(starts[0]["status"], headers, body, raised)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class WsgiDriver(Driver):
    name = "wsgi"

    def __init__(self, store: BasePersistenceLayer, config: IdempotencyConfig) -> None:
        self.counter = Counter()
        flask_app = wsgi_app(self.counter)
        flask_app.wsgi_app = LintMiddleware(  # type: ignore[method-assign]
            WSGIIdempotencyMiddleware(
                LintMiddleware(flask_app.wsgi_app), persistence_store=store, config=config
            )
        )
        self.app = flask_app

    def send(self, request: Request) -> Reply:
        client = Client(self.app)
        headers = [
            (k, v)
            for k, v in [*request.headers, *self.extra_headers]
            if k.lower() != "content-type"
        ]
        content_type = next((v for k, v in request.headers if k.lower() == "content-type"), None)
        response = client.open(
            request.path,
            method=request.method,
            headers=headers,
            data=request.body,
            content_type=content_type,
            buffered=True,
        )
        return Reply(response.status_code, response.headers.to_wsgi_list(), response.get_data())


class FlaskDriver(WsgiDriver):
    """The Flask extension (``idempotent_middleware.flask.Idempotency``) on the Flask app."""

    name = "flask"

    def __init__(self, store: BasePersistenceLayer, config: IdempotencyConfig) -> None:
        from idempotent_middleware.flask import Idempotency

        self.counter = Counter()
        flask_app = wsgi_app(self.counter)
        Idempotency(flask_app, persistence_store=store, config=config)
        flask_app.wsgi_app = LintMiddleware(flask_app.wsgi_app)  # type: ignore[method-assign]
        self.app = flask_app


class DjangoWsgiDriver(WsgiDriver):
    """Django's WSGI handler with ``idempotent_middleware.django.IdempotencyMiddleware``."""

    name = "django-wsgi"
    kind = "wsgi"

    def __init__(self, store: BasePersistenceLayer, config: IdempotencyConfig) -> None:
        self.counter = Counter()
        self.app = LintMiddleware(_django_handler(self, store, config))


class DjangoAsgiDriver(AsgiDriver):
    """Django's ASGI handler with the same middleware (async mode: no thread hop)."""

    name = "django-asgi"

    def build(self, store: BasePersistenceLayer, config: IdempotencyConfig) -> Any:
        return _django_handler(self, store, config, "asgi")


def _django_handler(
    driver: Driver, store: BasePersistenceLayer, config: IdempotencyConfig, kind: str = "wsgi"
) -> Any:
    from tests.django_env import build_handler

    from .django_app import COUNTERS

    name = f"{driver.name}-{id(driver)}"
    COUNTERS[name] = driver.counter
    driver.extra_headers = (("X-Driver", name),)
    return build_handler(
        kind,
        "tests.scenarios.django_app",
        ["idempotent_middleware.django.IdempotencyMiddleware"],
        {"STORE": store, "CONFIG": config},
    )


DRIVERS: dict[str, Callable[[BasePersistenceLayer, IdempotencyConfig], Driver]] = {
    "asgi": AsgiDriver,
    "wsgi": WsgiDriver,
    "flask": FlaskDriver,
    "django-wsgi": DjangoWsgiDriver,
    "django-asgi": DjangoAsgiDriver,
}


def iter_drivers() -> Iterator[str]:
    yield from DRIVERS
