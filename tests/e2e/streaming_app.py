"""A Starlette app of streaming responses behind the ASGI middleware, served by real uvicorn.

Run by the e2e tests as ``uvicorn tests.e2e.streaming_app:app``; in-memory store, or Redis
when REDIS_URL is set (``examples/_store.py``).

- ``POST /stream?mib=N``: N MiB (default 20) in 64 KiB chunks of a deterministic pattern,
  as a ``StreamingResponse`` (chunked, no Content-Length).
- ``POST /events?n=N``: an SSE stream (``text/event-stream``) of N events, a few ms apart.
- ``GET /executions``: how many times the two handlers above ran (in this process, or in
  Redis under ``examples:executions``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from examples._store import count_execution, make_store
from idempotent_middleware import IdempotencyMiddleware, RedisPersistenceLayer

CHUNK = 64 * 1024
SSE_DELAY_SECONDS = 0.005

store = make_store()
_runs: list[int] = []


def pattern_chunk(index: int) -> bytes:
    """Chunk ``index`` of the stream: 64 KiB, different for every index, same in every run."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()  # 32 bytes
    return seed * (CHUNK // len(seed))


def pattern_chunks(mib: int) -> Iterator[bytes]:
    for index in range(mib * 1024 * 1024 // CHUNK):
        yield pattern_chunk(index)


def expected_stream(mib: int) -> tuple[int, str]:
    """Length and sha256 hex digest of ``POST /stream?mib=...``."""
    digest = hashlib.sha256()
    size = 0
    for chunk in pattern_chunks(mib):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def sse_event(index: int) -> bytes:
    data = json.dumps({"seq": index, "payload": "x" * (index % 17)})
    return f"id: {index}\nevent: tick\ndata: {data}\n\n".encode()


def expected_events(n: int) -> bytes:
    return b"".join(sse_event(i) for i in range(n))


async def stream(request: Request) -> StreamingResponse:
    count_execution(store, _runs)
    mib = int(request.query_params.get("mib", "20"))

    async def body() -> AsyncIterator[bytes]:
        for chunk in pattern_chunks(mib):
            yield chunk

    return StreamingResponse(body(), media_type="application/octet-stream")


async def events(request: Request) -> StreamingResponse:
    count_execution(store, _runs)
    n = int(request.query_params.get("n", "200"))

    async def body() -> AsyncIterator[bytes]:
        for index in range(n):
            yield sse_event(index)
            await asyncio.sleep(SSE_DELAY_SECONDS)

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


async def executions(request: Request) -> JSONResponse:
    if isinstance(store, RedisPersistenceLayer):
        count = int(store.sync_client().get("examples:executions") or 0)
    else:
        count = len(_runs)
    return JSONResponse({"executions": count})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/stream", stream, methods=["POST"]),
        Route("/events", events, methods=["POST"]),
        Route("/executions", executions, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ],
    middleware=[Middleware(IdempotencyMiddleware, persistence_store=store)],
)
