"""Exactly once end to end on PostgreSQL: FastAPI under ``uvicorn --workers 4`` and Flask
under ``gunicorn -w 4 -k gthread``.

300 keyed requests over 100 keys (three per key, sent concurrently, landing on whatever worker)
give 100 executions, counted as rows of the business table that each execution inserts in
the transaction that also records it (``current_claim().record_executed_async``).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.e2e.conftest import CLIENT_TIMEOUT_SECONDS, Server, start_server

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

KEYS = 100
REQUESTS_PER_KEY = 3


SERVERS = {
    "fastapi": ("uvicorn", "tests.e2e.postgres_app:app"),
    "flask": ("gunicorn", "tests.e2e.postgres_app:wsgi_app"),
}


@pytest.fixture(params=list(SERVERS))
def postgres_server_app(
    request: pytest.FixtureRequest,
    postgres_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Server]:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, note text)")
        conn.execute("TRUNCATE orders")
    monkeypatch.setenv("IDEMPOTENCY_PG_DSN", postgres_dsn)  # start_server copies os.environ
    kind, target = SERVERS[request.param]
    server = start_server(
        f"{request.param}-postgres",
        kind,
        target,
        workers=4,
        log_dir=tmp_path,
        redis_url=None,
    )
    try:
        yield server
    finally:
        server.stop()


async def _fire(base_url: str) -> list[tuple[str, httpx.Response]]:
    calls = [f"pg-{i}" for i in range(KEYS) for _ in range(REQUESTS_PER_KEY)]
    random.Random(10).shuffle(calls)
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=CLIENT_TIMEOUT_SECONDS, limits=limits
    ) as client:

        async def one(key: str) -> tuple[str, httpx.Response]:
            for _ in range(50):  # a 409 "in progress" means: retry later, as a client would
                reply = await client.post(
                    "/orders", json={"sku": key}, headers={"Idempotency-Key": key}
                )
                if reply.status_code != 409:
                    return key, reply
                await asyncio.sleep(0.05)
            return key, reply

        return list(await asyncio.gather(*(one(key) for key in calls)))


def test_300_requests_over_100_keys_execute_100_times(
    postgres_server_app: Server, postgres_dsn: str
) -> None:
    replies = asyncio.run(_fire(postgres_server_app.base_url))
    bodies: dict[str, set[bytes]] = {}
    for key, reply in replies:
        assert reply.status_code == 201, (reply.status_code, reply.text)
        bodies.setdefault(key, set()).add(reply.content)
    assert len(bodies) == KEYS
    assert all(len(seen) == 1 for seen in bodies.values()), "a key answered two bodies"
    replayed = Counter(r.headers.get("idempotent-replayed") == "true" for _, r in replies)
    assert replayed[False] == KEYS
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT note) FROM orders").fetchone()
    assert row == (KEYS, KEYS)
