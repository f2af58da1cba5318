"""What the matrix apps share: the execution counter and the bodies they answer with.

Every app counts its runs per idempotency key as they start, in the suite's Redis
(``matrix:runs:<key>``, an ``INCR`` shared by every worker of every server), and keeps the body
each run produced under ``matrix:body:<key>``, so a test can tell which execution a client's
answer came from.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import redis

from idempotent_middleware import IdempotencyConfig, RedisPersistenceLayer

#: Short enough that a test waiting for an abandoned claim to settle stays bounded.
LEASE_SECONDS = 5.0
SLOW_SECONDS = 1.0
STREAM_CHUNK_BYTES = 8 * 1024

CONFIG = IdempotencyConfig(lease_seconds=LEASE_SECONDS)


def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        raise RuntimeError("the matrix apps need REDIS_URL (the suite's redis-server)")
    return url


def make_store() -> RedisPersistenceLayer:
    return RedisPersistenceLayer(url=redis_url())


_counter: redis.Redis | None = None


def _client() -> redis.Redis:
    # Built lazily, so a server that forks after importing the app gives every worker its own.
    global _counter
    if _counter is None or _counter.connection_pool.pid != os.getpid():
        _counter = redis.Redis.from_url(redis_url())
    return _counter


def count_run(key: str | None) -> int:
    return int(_client().incr(f"matrix:runs:{key or '-'}"))


def remember(key: str | None, body: bytes) -> bytes:
    if key:
        _client().set(f"matrix:body:{key}", body, ex=600)
    return body


def order_body(key: str | None, raw: bytes) -> tuple[int, bytes]:
    """``POST /orders``: 201 and a body unique to this execution, or 422 on a bad body."""
    try:
        order = json.loads(raw)
    except ValueError:
        order = None
    if not isinstance(order, dict) or "op" not in order:
        return 422, b'{"detail": "body must be a JSON object with an op"}'
    run = count_run(key)
    body = json.dumps(
        {"op": order["op"], "execution": uuid.uuid4().hex, "run": run}, sort_keys=True
    ).encode()
    return 201, remember(key, body)


def slow_body(key: str | None, run: int) -> bytes:
    """``POST /slow[?seconds=S]`` (counted when it starts, answered after its sleep): 202."""
    return remember(key, json.dumps({"job": uuid.uuid4().hex, "run": run}).encode())


def stream_chunk(index: int) -> bytes:
    head = f"chunk {index} ".encode()
    return head + b"x" * (STREAM_CHUNK_BYTES - len(head) - 1) + b"\n"


def stream_chunks(count: int) -> Iterator[bytes]:
    for index in range(count):
        yield stream_chunk(index)


def expected_stream(count: int) -> bytes:
    return b"".join(stream_chunks(count))
