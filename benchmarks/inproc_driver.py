"""Drive one app in process for ``benchmarks/instructions.py`` (run under callgrind).

No sockets to the client: requests are ASGI calls (16 in flight, as wrk's ``-c16``) or WSGI
calls, so the instructions counted are the server-independent cost of the app and of what
wraps it. The orchestrator runs this twice per cell, with N1 and N2 requests, and divides the
difference by N2 - N1: interpreter start, imports and set-up cancel out.

Apps (``--app``):
  minimal-bare / minimal-ours   one small JSON body from a raw ASGI (or WSGI) callable, bare
                                or inside our middleware (``--store memory|redis|sqlite|postgres``)
  minimal-floor                 the same callable inside a middleware class that only calls it
  module:NAME                   ``app`` of ``benchmarks/apps/NAME.py`` (the FastAPI/Flask apps
                                the wrk benchmark serves, peers included; they read REDIS_URL
                                and BENCH_STORE)
Paths (``--path``): first (a fresh key each request), replay (one key, primed before the
measured requests), pass (POST without a key).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BODY = b'{"sku":"abc","qty":1}'
ANSWER = b'{"order_id":"1","qty":1}'
IN_FLIGHT = 16
PATH = "/orders"


def _store(kind: str) -> Any:
    sys.path.insert(0, str(HERE / "apps"))
    store = importlib.import_module("stores").build_store(kind)  # the apps' own choice
    if kind == "postgres":
        # instructions.py creates the table before counting (two drivers creating it at
        # once collide); this covers a driver run by hand, and is a no-op after that.
        store.create_schema()
    return store


# --- ASGI ----------------------------------------------------------------------------------
async def _minimal_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(ANSWER)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


class _PassingASGI:
    """The least a middleware class can do: call the app. Under the pass-through path it is
    the floor any class-based middleware pays (an instance call and one more coroutine)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def build_asgi(app: str, store: str) -> Any:
    if app == "minimal-bare":
        return _minimal_asgi
    if app == "minimal-floor":
        return _PassingASGI(_minimal_asgi)
    if app == "minimal-ours":
        from idempotent_middleware import IdempotencyConfig, IdempotencyMiddleware

        return IdempotencyMiddleware(
            _minimal_asgi, persistence_store=_store(store), config=IdempotencyConfig()
        )
    return _module_app(app)


def _module_app(app: str) -> Any:
    sys.path.insert(0, str(HERE / "apps"))
    return importlib.import_module(app.removeprefix("module:")).app


def _scope(key: bytes | None) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ]
    if key is not None:
        headers.append((b"idempotency-key", key))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _asgi_call(app: Any, key: bytes | None) -> int:
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # the client stays connected
        sent = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(key), receive, send)
    return status


async def _lifespan(app: Any) -> Callable[[], Awaitable[None]]:
    """Run the app's lifespan startup (FastAPI apps, peers' stores); return its shutdown."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    started = asyncio.ensure_future(outbox.get())
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    started.cancel()  # an app without lifespan support returned at once

    async def shutdown() -> None:
        if task.done():
            return
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait([task], timeout=5)

    return shutdown


async def run_asgi(app: Any, path: str, n: int) -> None:
    shutdown = await _lifespan(app)
    keys = _keys(path, n)
    if path == "replay":
        await _asgi_call(app, keys[0])
    statuses: list[int] = []
    for start in range(0, n, IN_FLIGHT):
        batch = keys[start : start + IN_FLIGHT]
        statuses += await asyncio.gather(*(_asgi_call(app, key) for key in batch))
    await shutdown()
    _check(statuses, n)


# --- WSGI ----------------------------------------------------------------------------------
def _minimal_wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response(
        "201 Created",
        [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))],
    )
    return [ANSWER]


class _PassingWSGI:
    """The WSGI counterpart of ``_PassingASGI``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return self.app(environ, start_response)  # type: ignore[no-any-return]


def build_wsgi(app: str, store: str) -> Any:
    if app == "minimal-bare":
        return _minimal_wsgi
    if app == "minimal-floor":
        return _PassingWSGI(_minimal_wsgi)
    if app == "minimal-ours":
        from idempotent_middleware import IdempotencyConfig, WSGIIdempotencyMiddleware

        return WSGIIdempotencyMiddleware(
            _minimal_wsgi, persistence_store=_store(store), config=IdempotencyConfig()
        )
    return _module_app(app)


def _wsgi_call(app: Any, key: bytes | None) -> int:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(BODY)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(BODY),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if key is not None:
        environ["HTTP_IDEMPOTENCY_KEY"] = key.decode()
    status = 0

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        nonlocal status
        status = int(line[:3])
        return lambda data: None

    iterable = app(environ, start_response)
    try:
        for _ in iterable:
            pass
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
    return status


def run_wsgi(app: Any, path: str, n: int) -> None:
    keys = _keys(path, n)
    if path == "replay":
        _wsgi_call(app, keys[0])
    _check([_wsgi_call(app, key) for key in keys], n)


# --- Shared --------------------------------------------------------------------------------
def _keys(path: str, n: int) -> list[bytes | None]:
    if path == "pass":
        return [None] * n
    if path == "replay":
        return [b"replay-" + os.environ.get("BENCH_RUN", "0").encode()] * n
    run = os.environ.get("BENCH_RUN", "0")
    return [f"first-{run}-{i}".encode() for i in range(n)]


def _check(statuses: list[int], n: int) -> None:
    """Every request answered as the app answers (a 4xx/5xx would measure the wrong path)."""
    wrong = [s for s in statuses if s not in (200, 201)]
    if len(statuses) != n or wrong:
        raise SystemExit(f"unexpected statuses: {sorted(set(wrong))} of {len(statuses)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["asgi", "wsgi"], required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument(
        "--store", choices=["memory", "redis", "sqlite", "postgres"], default="memory"
    )
    parser.add_argument("--path", choices=["first", "replay", "pass"], required=True)
    parser.add_argument("-n", type=int, required=True)
    args = parser.parse_args(argv)
    if args.kind == "asgi":
        asyncio.run(run_asgi(build_asgi(args.app, args.store), args.path, args.n))
    else:
        run_wsgi(build_wsgi(args.app, args.store), args.path, args.n)


if __name__ == "__main__":
    main()
