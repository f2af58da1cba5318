"""Item 22: the ASGI middleware under trio (in-process and Hypercorn ``-k trio``).

Under trio there is no asyncio loop: store steps run with the layer's blocking methods in a
worker thread and leases are held by the renewer thread. First request executes, a replay
replays, a duplicate in flight gets 409 (also after several leases, so renewal works), never
a 500; a failing lease setup gives the key back.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

import idempotent_middleware.http.execution
import tests.e2e.trio_app as trio_app
from idempotent_middleware import (
    InMemoryPersistenceLayer,
    RedisPersistenceLayer,
    SQLitePersistenceLayer,
)
from idempotent_middleware.persistence.base import BasePersistenceLayer
from tests.redis_servers import free_port
from tests.reliability._procs import spawn_server
from tests.reliability.http_client import request as http_request

LEASE = 0.4


async def _post(app: Any, key: str, seconds: float = 0.0) -> tuple[int, dict[bytes, bytes], bytes]:
    body = b"{}"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/slow",
        "raw_path": b"/slow",
        "root_path": "",
        "query_string": f"s={seconds}".encode(),
        "headers": [
            (b"idempotency-key", key.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), content


@pytest.fixture(params=["memory", "redis", "sqlite"])
def store(request: pytest.FixtureRequest) -> Iterator[BasePersistenceLayer]:
    if request.param == "memory":
        yield InMemoryPersistenceLayer()
        return
    layer: RedisPersistenceLayer | SQLitePersistenceLayer
    if request.param == "sqlite":
        layer = SQLitePersistenceLayer(request.getfixturevalue("tmp_path") / "trio.sqlite3")
    else:
        layer = RedisPersistenceLayer(url=request.getfixturevalue("redis_url"))
    yield layer
    layer.close()


@pytest.mark.timeout(60)
def test_item22_trio_first_replay_and_in_flight_duplicate(store: BasePersistenceLayer) -> None:
    app = trio_app.make_app(store, LEASE)
    before = trio_app.runs
    key = f"trio-{time.monotonic_ns()}"
    results: dict[str, tuple[int, dict[bytes, bytes], bytes]] = {}

    async def first() -> None:
        results["first"] = await _post(app, key, seconds=LEASE * 4)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            while trio_app.runs == before:
                await trio.sleep(0.005)
            await trio.sleep(LEASE * 2)  # past the first lease: only renewal keeps the key
            results["duplicate"] = await _post(app, key, seconds=LEASE * 4)
        results["replay"] = await _post(app, key, seconds=LEASE * 4)

    trio.run(main)
    status, _, body = results["first"]
    assert status == 201, results
    assert results["duplicate"][0] == 409, results
    replay_status, replay_headers, replay_body = results["replay"]
    assert (replay_status, replay_body) == (201, body)
    assert replay_headers.get(b"idempotent-replayed") == b"true"
    assert trio_app.runs == before + 1
    assert json.loads(body)["run"] == before + 1


@pytest.mark.timeout(30)
def test_item22_failing_lease_setup_gives_the_key_back(monkeypatch: pytest.MonkeyPatch) -> None:
    store = InMemoryPersistenceLayer()
    app = trio_app.make_app(store, 30.0)

    def broken(*args: Any) -> None:
        raise RuntimeError("no lease today")

    key = f"trio-broken-{time.monotonic_ns()}"
    monkeypatch.setattr(idempotent_middleware.http.execution, "AsyncLease", broken)
    with pytest.raises(RuntimeError, match="no lease today"):
        trio.run(_post, app, key)
    monkeypatch.undo()
    before = trio_app.runs
    status, _, _ = trio.run(_post, app, key)
    assert status == 201  # the claim was released, not left in progress for a lease
    assert trio_app.runs == before + 1


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_item22_hypercorn_trio_end_to_end(
    kind: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    pytest.importorskip("hypercorn")
    env = {"REL_LEASE_SECONDS": str(LEASE)}
    if kind == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "hypercorn",
        "-k",
        "trio",
        "-b",
        f"127.0.0.1:{port}",
        "tests.e2e.trio_app:app",
    ]
    server = spawn_server("hypercorn-trio", command, port, env, tmp_path)
    try:
        key = f"hyper-{kind}-{time.monotonic_ns()}"
        headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
        first: list[Any] = []
        worker = threading.Thread(
            target=lambda: first.append(request_post(port, headers, LEASE * 4))
        )
        worker.start()
        deadline = time.monotonic() + 10
        while http_request(port, "GET", "/runs").body == b"0" and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(LEASE * 2)
        duplicate = request_post(port, headers, LEASE * 4)
        worker.join(30)
        replay = request_post(port, headers, LEASE * 4)
        runs = http_request(port, "GET", "/runs").body
    finally:
        server.stop()
    assert first and first[0].status == 201, (first, server.log()[-3000:])
    assert duplicate.status == 409, (duplicate.status, duplicate.body, server.log()[-3000:])
    assert (replay.status, replay.body) == (201, first[0].body)
    assert replay.header("idempotent-replayed") == "true"
    assert runs == b"1"


def request_post(port: int, headers: dict[str, str], seconds: float) -> Any:
    return http_request(port, "POST", f"/slow?s={seconds}", headers=headers, body=b"{}", timeout=30)


@pytest.mark.timeout(30)
def test_item22_idempotent_function_under_trio() -> None:
    from idempotent_middleware import IdempotencyConfig, idempotent_function

    store = InMemoryPersistenceLayer()
    calls: list[int] = []

    @idempotent_function(
        data_keyword_argument="order",
        persistence_store=store,
        config=IdempotencyConfig(lease_seconds=LEASE),
    )
    async def place(order: dict[str, int]) -> dict[str, int]:
        calls.append(1)
        await trio.sleep(LEASE * 2)  # longer than a lease: renewed by the thread renewer
        return {"placed": order["id"]}

    async def main() -> list[dict[str, int]]:
        return [await place(order={"id": 7}), await place(order={"id": 7})]

    assert trio.run(main) == [{"placed": 7}, {"placed": 7}]
    assert len(calls) == 1
