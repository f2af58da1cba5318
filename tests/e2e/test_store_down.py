"""The store is down: keyed requests get a fast 503 problem, the handler never runs.

The FastAPI (uvicorn) and Flask (gunicorn) examples with REDIS_URL pointing at a fake endpoint
on loopback that misbehaves the ways a dead Redis does: nothing listening (connection
refused), a proxy with no backend (accepts, then closes), a reset, and a black hole (accepts,
never answers; bounded by the layer's 2 s socket timeout). Fail closed is the default.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import CLIENT_TIMEOUT_SECONDS, EXAMPLES, Server, start_server
from tests.redis_servers import free_port

pytestmark = pytest.mark.timeout(60)

ORDER = {"sku": "abc", "qty": 1}
MODES = ["refuse", "close", "reset", "silent"]


class DeadRedis:
    """A TCP endpoint that never speaks RESP; ``mode`` says how it fails."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "close"
        self._listener: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def set_mode(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
        if mode == "refuse":
            self._close_listener()
        elif self._listener is None:
            self._open_listener()

    def _open_listener(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._serve, args=(listener,), daemon=True).start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self.mode
            if mode == "silent":
                self._held.append(conn)  # never read, never answered
            elif mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            else:
                conn.close()

    def stop(self) -> None:
        self._close_listener()
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture(scope="module")
def dead_redis() -> Iterator[DeadRedis]:
    endpoint = DeadRedis()
    endpoint.set_mode("close")
    try:
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture(scope="module", params=["fastapi", "flask"])
def server_on_dead_redis(
    request: pytest.FixtureRequest,
    dead_redis: DeadRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    kind, target = EXAMPLES[request.param]
    server = start_server(
        f"{request.param}-dead-redis",
        kind,
        target,
        workers=1,
        log_dir=tmp_path_factory.mktemp("dead-redis"),
        redis_url=dead_redis.url,
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("mode", MODES)
def test_keyed_request_gets_503_when_the_store_is_down(
    mode: str, server_on_dead_redis: Server, dead_redis: DeadRedis
) -> None:
    dead_redis.set_mode(mode)
    with httpx.Client(
        base_url=server_on_dead_redis.base_url, timeout=CLIENT_TIMEOUT_SECONDS
    ) as client:
        began = time.monotonic()
        response = client.post(
            "/orders", json=ORDER, headers={"Idempotency-Key": f"down-{uuid.uuid4()}"}
        )
        took = time.monotonic() - began

        # 503, not 500: the handler (which would also fail on Redis) never ran.
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["cache-control"] == "no-store"
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["type"].endswith("/idempotency-store-unavailable")
        assert took < 6.0, f"{mode}: answered after {took:.1f}s"
        # Key-less traffic that does not touch the store is unaffected.
        assert client.get("/healthz").status_code == 200
