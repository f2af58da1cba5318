"""In-process harnesses: raw ASGI calls on one event loop, WSGI calls through werkzeug.

Fast enough for thousands of generated cases. Both return a ``Result`` and never let an
exception from the middleware escape unnoticed: it is captured in ``Result.error``.
"""

from __future__ import annotations

import asyncio
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from werkzeug.middleware.lint import LintMiddleware
from werkzeug.test import EnvironBuilder, run_wsgi_app

Headers = list[tuple[bytes, bytes]]


@dataclass
class Result:
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    error: BaseException | None = None
    body_bytes_pulled: int = 0

    def header(self, name: bytes) -> bytes | None:
        found = None
        for key, value in self.headers:
            if key.lower() == name:
                found = value
        return found

    @property
    def replayed(self) -> bool:
        return self.header(b"idempotent-replayed") == b"true"

    def problem_type(self) -> str:
        if self.header(b"content-type") != b"application/problem+json":
            return ""
        return str(json.loads(self.body)["type"]).rsplit("/", 1)[-1]


class CountingAsgiApp:
    """Reads the whole body and answers 201 with the run number and a body digest."""

    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.runs += 1
        body = json.dumps({"run": self.runs, "size": size}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class CountingWsgiApp:
    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        size = len(environ["wsgi.input"].read(length)) if length else 0
        self.runs += 1
        start_response("201 Created", [("Content-Type", "application/json")])
        return [json.dumps({"run": self.runs, "size": size}).encode()]


class AsgiCaller:
    """Calls an ASGI app on one private event loop (one per test module)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    def __call__(
        self,
        app: Any,
        method: str,
        path: str,
        headers: Headers,
        body: bytes = b"",
        *,
        chunk_size: int | None = None,
        query: bytes = b"",
    ) -> Result:
        return self.loop.run_until_complete(
            asyncio.wait_for(
                call_asgi(app, method, path, headers, body, chunk_size, query), timeout=10
            )
        )


async def call_asgi(
    app: Any,
    method: str,
    path: str,
    headers: Headers,
    body: bytes,
    chunk_size: int | None,
    query: bytes,
) -> Result:
    result = Result()
    size = chunk_size or max(len(body), 1)
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    position = 0

    async def receive() -> dict[str, Any]:
        nonlocal position
        if position < len(chunks):
            chunk = chunks[position]
            position += 1
            result.body_bytes_pulled += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": position < len(chunks)}
        await asyncio.sleep(3600)  # the client is still there; nothing more to send
        raise AssertionError("unreachable")

    parts: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert result.status == 0, "http.response.start sent twice"
            result.status = message["status"]
            result.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    try:
        await app(scope, receive, send)
    except Exception as exc:  # recorded, and every property asserts there is none
        result.error = exc
    result.body = b"".join(parts)
    return result


def wsgi_call(
    app: Any,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    body: bytes = b"",
    *,
    content_length: bool = True,
    query: str = "",
    lint: bool = True,
) -> Result:
    """One request through werkzeug's test machinery (``run_wsgi_app``, as ``Client`` does).

    Repeated header lines are joined with ", " the way WSGI servers (and werkzeug) do.
    ``content_length=False`` sends the body without a length, as a chunked request arrives
    (``wsgi.input_terminated``). ``lint`` wraps the app in werkzeug's ``LintMiddleware``.
    """
    builder = EnvironBuilder(path="/", method=method, query_string=query or None)
    environ = builder.get_environ()
    builder.close()
    environ["PATH_INFO"] = path
    for name, value in headers:
        if name.lower() == "content-type":
            environ["CONTENT_TYPE"] = value
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]}, {value}" if key in environ else value
    stream = io.BytesIO(body)
    environ["wsgi.input"] = stream
    if content_length:
        environ["CONTENT_LENGTH"] = str(len(body))
    else:
        environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input_terminated"] = True
    result = Result()
    target = LintMiddleware(app) if lint else app
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a WSGIWarning from the lint is a failure
            iterable, status, response_headers = run_wsgi_app(target, environ, buffered=True)
            try:
                result.body = b"".join(iterable)
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
    except Exception as exc:
        result.error = exc
        return result
    result.body_bytes_pulled = stream.tell()
    result.status = int(status.split(" ", 1)[0])
    result.headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response_headers.items()
    ]
    return result
