"""The Redis layer on the event loops ASGI servers really use: asyncio and uvloop.

uvicorn picks uvloop by default when it is installed (``uvicorn[standard]``), so the async
Redis path must work there too, and must answer (or fail with 503) rather than hang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from idempotent_middleware import IdempotencyConfig, IdempotencyMiddleware, RedisPersistenceLayer
from tests.reliability._inprocess import CountingAsgiApp, Result, call_asgi
from tests.reliability.conftest import Figures

pytestmark = pytest.mark.redis  # needs a real redis-server (the suite starts it)

uvloop = pytest.importorskip("uvloop")

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


@pytest.mark.timeout(30)
# Regression guard: while this suite was written, persistence/_resp.py asserted
# isinstance(transport, asyncio.Transport) in connection_made; uvloop's transports are not
# asyncio.Transport subclasses, so every connection was dropped and re-opened in a busy loop
# and keyed requests hung (no reply, no 503) under uvicorn's default loop.
@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_keyed_request_answers_on_this_loop(
    loop_name: str, redis_url: str, figures: Figures
) -> None:
    store = RedisPersistenceLayer(url=redis_url)
    inner = CountingAsgiApp()
    app = IdempotencyMiddleware(inner, persistence_store=store, config=IdempotencyConfig())
    headers = [(b"idempotency-key", b"loop-key")]

    async def scenario() -> tuple[Result | None, Result | None, float]:
        start = time.monotonic()
        try:
            first = await asyncio.wait_for(call_asgi(app, "POST", "/o", headers, b"", None, b""), 3)
            second = await asyncio.wait_for(
                call_asgi(app, "POST", "/o", headers, b"", None, b""), 3
            )
        except asyncio.TimeoutError:
            return None, None, time.monotonic() - start
        return first, second, time.monotonic() - start

    try:
        first, second, took = LOOPS[loop_name](scenario())
    finally:
        store.close()
    figures("event-loops", loop=loop_name, answered=first is not None, seconds=round(took, 3))
    assert first is not None and second is not None, f"no answer within 3 s on {loop_name}"
    assert first.error is None and first.status == 201
    assert second.replayed and second.body == first.body and inner.runs == 1
