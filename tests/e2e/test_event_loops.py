"""The ASGI middleware on Redis under each event loop uvicorn can run: asyncio and uvloop.

``uvicorn[standard]`` installs uvloop and uses it by default (``--loop auto``), so production
ASGI deployments run on uvloop: its transports are not ``asyncio.Transport`` subclasses, its
timers and connection callbacks differ. One worker each, the FastAPI example, REDIS_URL set.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.e2e.conftest import CLIENT_TIMEOUT_SECONDS, Server, executions, start_server
from tests.redis_servers import RedisProcess

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

ORDER = {"sku": "abc", "qty": 1}


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def fastapi_on_loop(
    request: pytest.FixtureRequest,
    redis_server: RedisProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    pytest.importorskip(request.param)
    server = start_server(
        f"fastapi-{request.param}",
        "uvicorn",
        "examples.fastapi_app:app",
        workers=1,
        log_dir=tmp_path_factory.mktemp(f"loop-{request.param}"),
        redis_url=redis_server.url,
        extra_args=["--loop", request.param],
    )
    try:
        yield server
    finally:
        server.stop()


def test_keyed_requests_on_redis_answer_under_the_loop(
    fastapi_on_loop: Server, redis_client: redis.Redis
) -> None:
    """First run 201, replay, 422: each answered well within the client timeout."""
    key = {"Idempotency-Key": f"loop-{uuid.uuid4()}"}
    with httpx.Client(base_url=fastapi_on_loop.base_url, timeout=CLIENT_TIMEOUT_SECONDS) as client:
        first = client.post("/orders", json=ORDER, headers=key)
        assert first.status_code == 201, first.text
        replay = client.post("/orders", json=ORDER, headers=key)
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.content == first.content
        reused = client.post("/orders", json={"sku": "abc", "qty": 2}, headers=key)
        assert reused.status_code == 422
    assert executions(redis_client) == 1
