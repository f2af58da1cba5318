"""The FastAPI and Litestar integrations under ``uvicorn --workers 2`` on the suite's Redis.

The apps are ``tests/integrations/fastapi_apps.py`` and ``litestar_apps.py``: users
authenticate with a bearer token in a framework dependency (which runs after the claim) and
keys are scoped by ``credential_scope``. Two users sending the same key and body each run
and get only their own response; fifty concurrent duplicates run once across both workers;
per-route options (required key, TTL) and exempt handlers are honoured.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.e2e.conftest import CLIENT_TIMEOUT_SECONDS, Server, start_server
from tests.redis_servers import RedisProcess

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

APPS = {
    "fastapi": "tests.integrations.fastapi_apps:server_app",
    "litestar": "tests.integrations.litestar_apps:server_app",
}
ALICE = {"Authorization": "Bearer token-alice"}
BOB = {"Authorization": "Bearer token-bob"}
DUPLICATES = 50
WEEK = 7 * 86400


@pytest.fixture(scope="module", params=list(APPS))
def server(
    request: pytest.FixtureRequest,
    redis_server: RedisProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    name: str = request.param
    started = start_server(
        f"{name}-integration",
        "uvicorn",
        APPS[name],
        workers=2,
        log_dir=tmp_path_factory.mktemp(f"{name}-logs"),
        redis_url=redis_server.url,
    )
    try:
        yield started
    finally:
        started.stop()


def runs(client: redis.Redis, server: Server, route: str) -> int:
    prefix = "fastapi-it" if server.name.startswith("fastapi") else "litestar-it"
    return int(client.get(f"{prefix}:runs:{route}") or 0)


def stored_bytes(client: redis.Redis) -> bytes:
    """Every key name and every string value in Redis, joined."""
    parts = []
    for key in client.scan_iter(count=1000):
        parts.append(key)
        if client.type(key) == b"string":
            parts.append(client.get(key) or b"")
    return b"\n".join(parts)


def test_two_users_same_key_same_body(
    server: Server, redis_url: str, redis_client: redis.Redis
) -> None:
    key = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    body = {"amount": 7}
    with httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT_SECONDS) as client:
        alice = client.post("/transfers", json=body, headers={**ALICE, **key})
        bob = client.post("/transfers", json=body, headers={**BOB, **key})
        alice_again = client.post("/transfers", json=body, headers={**ALICE, **key})
        bob_again = client.post("/transfers", json=body, headers={**BOB, **key})
    assert (alice.status_code, bob.status_code) == (201, 201), (alice.text, bob.text)
    assert alice.json()["user"] == "alice" and bob.json()["user"] == "bob"
    assert alice.json()["run"] != bob.json()["run"]
    assert "idempotent-replayed" not in alice.headers
    assert "idempotent-replayed" not in bob.headers
    assert alice_again.headers["idempotent-replayed"] == "true"
    assert alice_again.content == alice.content
    assert bob_again.content == bob.content
    assert runs(redis_client, server, "transfers") == 2
    # The credential is reduced to an HMAC: no token in any key name or record.
    everything = stored_bytes(redis_client)
    assert b"token-alice" not in everything and b"token-bob" not in everything
    assert b"shared-" not in everything  # nor the raw client key


async def _storm(base_url: str, key: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=DUPLICATES)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=CLIENT_TIMEOUT_SECONDS, limits=limits
    ) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(
                        "/slow",
                        json={"amount": 1},
                        headers={**ALICE, "Idempotency-Key": key},
                    )
                    for _ in range(DUPLICATES)
                )
            )
        )


def test_exactly_once_under_concurrent_duplicates(
    server: Server, redis_url: str, redis_client: redis.Redis
) -> None:
    key = f"storm-{uuid.uuid4()}"
    responses = asyncio.run(_storm(server.base_url, key))
    executed = [
        r for r in responses if r.status_code == 202 and "idempotent-replayed" not in r.headers
    ]
    replayed = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    in_progress = [r for r in responses if r.status_code == 409]
    assert len(executed) == 1, [r.text for r in executed]
    assert len(executed) + len(replayed) + len(in_progress) == DUPLICATES, [
        (r.status_code, r.text) for r in responses
    ]
    assert all(r.content == executed[0].content for r in replayed)
    for response in in_progress:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("/idempotency-key-in-progress")
    assert runs(redis_client, server, "slow") == 1
    print(
        f"{server.name} ({server.workers} workers): {DUPLICATES} duplicates -> "
        f"executed={len(executed)} replayed={len(replayed)} in_progress_409={len(in_progress)}"
    )
    after = httpx.post(
        server.base_url + "/slow",
        json={"amount": 1},
        headers={**ALICE, "Idempotency-Key": key},
        timeout=CLIENT_TIMEOUT_SECONDS,
    )
    assert after.headers["idempotent-replayed"] == "true"
    assert after.content == executed[0].content
    assert runs(redis_client, server, "slow") == 1


def test_route_options_and_exempt(
    server: Server, redis_url: str, redis_client: redis.Redis
) -> None:
    body = {"amount": 3}
    with httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT_SECONDS) as client:
        missing = client.post("/payments", json=body, headers=ALICE)
        assert missing.status_code == 400
        assert missing.json()["type"].endswith("/idempotency-key-missing")
        assert client.post("/v1/refunds", json=body).status_code == 400
        paid = client.post("/payments", json=body, headers={**ALICE, "Idempotency-Key": "p1"})
        moved = client.post("/transfers", json=body, headers={**ALICE, "Idempotency-Key": "t1"})
        assert (paid.status_code, moved.status_code) == (201, 201)
        hooks = [
            client.post("/webhooks", json=body, headers={"Idempotency-Key": "h1"}) for _ in range(2)
        ]
        assert [h.json()["run"] for h in hooks] == [1, 2]
        assert all("idempotent-replayed" not in h.headers for h in hooks)
        put = [
            client.put("/accounts/a", json=body, headers={"Idempotency-Key": "a1"})
            for _ in range(2)
        ]
        assert put[1].headers["idempotent-replayed"] == "true"
    # The TTL comes from the route: a week for /payments, the default day for /transfers.
    (payment_key,) = redis_client.scan_iter(match="idempotency:POST /payments#*")
    (transfer_key,) = redis_client.scan_iter(match="idempotency:POST /transfers#*")
    assert WEEK - 60 < redis_client.ttl(payment_key) <= WEEK
    assert 86400 - 60 < redis_client.ttl(transfer_key) <= 86400
