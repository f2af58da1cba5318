"""The moment the client has its whole response, the outcome must already be recorded.

Once the final body chunk went out, the handler's work is done and the client holds the
answer, so a retry must replay it, whatever happens next:

- a retry sent the instant the last byte arrives is a replay, not a 409 (ASGI; WSGI when the
  response declares its Content-Length);
- ASGI: a ``BackgroundTask`` that raises after the response was sent does not release the key;
- WSGI: an app iterable whose ``close()`` raises after the body was complete: recorded;
- WSGI: a server that stops iterating (client gone, as gunicorn does on EPIPE) and calls
  ``close()``: recorded, with or without Content-Length (the process-level twin is in
  ``test_disconnect.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from idempotent_middleware import (
    IdempotencyMiddleware,
    InMemoryPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from tests.reliability._inprocess import AsgiCaller, Result, call_asgi, wsgi_call
from tests.reliability.conftest import Figures

KEY = [(b"idempotency-key", b"instant")]


@pytest.fixture
def asgi() -> Iterator[AsgiCaller]:
    caller = AsgiCaller()
    yield caller
    caller.close()


def test_asgi_retry_the_instant_the_response_ends_is_a_replay(
    asgi: AsgiCaller, figures: Figures
) -> None:
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b"part one, ", "more_body": True})
        await send({"type": "http.response.body", "body": b"part two"})

    middleware = IdempotencyMiddleware(app, InMemoryPersistenceLayer())
    retries: list[Result] = []

    async def client_send_hook(message: dict[str, Any]) -> None:
        """The client retries as soon as it sees the end of the body (a flaky proxy)."""
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            retries.append(await call_asgi(middleware, "POST", "/pay", KEY, b"", None, b""))

    async def first_request() -> None:
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        scope = {"type": "http", "method": "POST", "path": "/pay", "headers": KEY}
        await middleware(scope, receive, client_send_hook)

    asgi.loop.run_until_complete(asyncio.wait_for(first_request(), 10))
    figures("failure-after-response", adapter="asgi", case="instant-retry", executions=len(runs))
    assert len(retries) == 1
    assert retries[0].replayed and retries[0].body == b"part one, part two"
    assert len(runs) == 1


@pytest.mark.parametrize("declared_length", [True, False])
def test_wsgi_retry_the_instant_the_last_chunk_is_written(
    declared_length: bool, figures: Figures
) -> None:
    runs: list[int] = []
    body = [b"part one, ", b"part two"]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        headers = [("Content-Type", "text/plain")]
        if declared_length:
            headers.append(("Content-Length", str(sum(map(len, body)))))
        start_response("201 Created", headers)
        return list(body)

    wsgi = WSGIIdempotencyMiddleware(app, InMemoryPersistenceLayer())
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/pay",
        "HTTP_IDEMPOTENCY_KEY": "instant",
        "CONTENT_LENGTH": "0",
        "wsgi.input": io.BytesIO(),
    }
    iterable = wsgi(environ, lambda status, headers, exc_info=None: lambda data: None)
    written = b""
    retry: Result | None = None
    try:
        for chunk in iterable:
            written += chunk  # the server wrote it; the client may now hold the whole body
            if written == b"".join(body):
                retry = wsgi_call(wsgi, "POST", "/pay", [("Idempotency-Key", "instant")], b"")
    finally:
        getattr(iterable, "close", lambda: None)()
    assert retry is not None and retry.error is None
    figures(
        "failure-after-response",
        adapter="wsgi",
        case=f"instant-retry-{'content-length' if declared_length else 'no-length'}",
        retry_status=retry.status,
        executions=len(runs),
    )
    assert len(runs) == 1
    if declared_length:
        assert retry.replayed and retry.body == b"part one, part two"
    else:
        # Without a length the last chunk is known only after it went out: a retry in that
        # window gets 409 (retry later), never a second run.
        assert retry.status == 409 or retry.replayed


def test_background_task_failure_after_response_is_not_a_second_run(
    asgi: AsgiCaller, figures: Figures
) -> None:
    runs: list[int] = []

    async def notify() -> None:
        raise RuntimeError("e-mail server down")

    async def pay(request: Request) -> JSONResponse:
        runs.append(1)
        return JSONResponse({"run": len(runs)}, status_code=201, background=BackgroundTask(notify))

    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/pay", pay, methods=["POST"])]), InMemoryPersistenceLayer()
    )
    first = asgi(app, "POST", "/pay", [(b"idempotency-key", b"bg")], b"{}")
    retry = asgi(app, "POST", "/pay", [(b"idempotency-key", b"bg")], b"{}")
    figures("failure-after-response", adapter="asgi", case="background-task", executions=len(runs))
    assert first.status == 201 and isinstance(first.error, RuntimeError)
    assert retry.replayed and retry.body == first.body, f"ran {len(runs)} times"


class _ClosingFails:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        raise RuntimeError("cleanup failed")


def test_wsgi_close_failure_after_complete_body_is_recorded(figures: Figures) -> None:
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> _ClosingFails:
        runs.append(1)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return _ClosingFails([b"run ", str(len(runs)).encode()])

    wsgi = WSGIIdempotencyMiddleware(app, InMemoryPersistenceLayer())
    first = wsgi_call(wsgi, "POST", "/pay", [("Idempotency-Key", "k")], b"", lint=False)
    retry = wsgi_call(wsgi, "POST", "/pay", [("Idempotency-Key", "k")], b"", lint=False)
    figures("failure-after-response", adapter="wsgi", case="close-raises", executions=len(runs))
    assert isinstance(first.error, RuntimeError)  # the server sees the close() failure
    assert retry.replayed and retry.body == b"run 1" and len(runs) == 1


@pytest.mark.parametrize(
    ("declared_length", "fails_at"),
    [
        pytest.param(True, "last", id="content-length-write-of-last-chunk-fails"),
        pytest.param(
            True,
            "first",
            id="content-length-write-of-first-chunk-fails",
        ),
        pytest.param(
            False,
            "first",
            id="no-length-write-of-first-chunk-fails",
        ),
    ],
)
def test_wsgi_server_that_stops_iterating_still_records(
    declared_length: bool, fails_at: str, figures: Figures
) -> None:
    runs: list[int] = []
    body = [b"part one, ", b"part two"]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        headers = [("Content-Type", "text/plain")]
        if declared_length:
            headers.append(("Content-Length", str(sum(map(len, body)))))
        start_response("201 Created", headers)
        return list(body)

    wsgi = WSGIIdempotencyMiddleware(app, InMemoryPersistenceLayer())

    def serve_until_the_client_is_gone() -> None:
        """What gunicorn's sync worker does when a write raises EPIPE."""
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/pay",
            "HTTP_IDEMPOTENCY_KEY": "gone",
            "CONTENT_LENGTH": "0",
            "wsgi.input": io.BytesIO(),
        }
        iterable = wsgi(environ, lambda status, headers, exc_info=None: lambda data: None)
        try:
            for index, _chunk in enumerate(iterable):
                if fails_at == "first" or index == len(body) - 1:
                    raise BrokenPipeError("client gone")  # this write fails
        except BrokenPipeError:
            pass
        finally:
            getattr(iterable, "close", lambda: None)()

    serve_until_the_client_is_gone()
    retry = wsgi_call(wsgi, "POST", "/pay", [("Idempotency-Key", "gone")], b"", lint=False)
    figures(
        "failure-after-response",
        adapter="wsgi",
        case=f"server-stops-iterating-{'content-length' if declared_length else 'no-length'}"
        f"-at-{fails_at}-chunk",
        executions=len(runs),
    )
    assert retry.replayed and retry.body == b"part one, part two", f"ran {len(runs)} times"


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_asgi_stream_cut_short_is_neither_truncated_nor_rerun(
    spec_version: str, asgi: AsgiCaller, figures: Figures
) -> None:
    runs: list[int] = []

    async def stream(request: Request) -> StreamingResponse:
        runs.append(1)

        async def chunks() -> Any:
            for i in range(5):
                yield f"chunk {i}\n".encode()
                await asyncio.sleep(0.01)

        return StreamingResponse(chunks(), media_type="text/plain")

    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/feed", stream, methods=["POST"])]), InMemoryPersistenceLayer()
    )
    headers = [(b"idempotency-key", b"feed")]

    async def cut_short() -> None:
        delivered: list[bytes] = []
        gone = asyncio.Event()
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] != "http.response.body":
                return
            if gone.is_set():
                if spec_version == "2.4":
                    raise OSError("client gone")  # ASGI 2.4: send raises once disconnected
                return
            delivered.append(message.get("body", b""))
            if len(delivered) == 2:
                gone.set()  # the client hangs up after two chunks

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": spec_version},
            "method": "POST",
            "path": "/feed",
            "headers": headers,
        }
        with contextlib.suppress(Exception):
            await app(scope, receive, send)

    asgi.loop.run_until_complete(asyncio.wait_for(cut_short(), 10))
    retry = asgi(app, "POST", "/feed", headers, b"")
    figures(
        "failure-after-response",
        adapter="asgi",
        case=f"stream-cut-short-spec-{spec_version}",
        retry_status=retry.status,
        retry_replayed=retry.replayed,
        executions=len(runs),
    )
    assert len(runs) == 1, f"the handler ran {len(runs)} times"
    if retry.status == 200:
        assert retry.body.count(b"chunk") == 5, retry.body  # a replay must be whole
    else:
        assert retry.status == 409 and retry.problem_type() == "idempotency-response-not-replayable"
