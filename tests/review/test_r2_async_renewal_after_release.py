"""R2: on an event loop, stopping a lease does not wait for a renewal already on its way to
the store. With a pooled client (redis-py asyncio, ``async_client_factory=`` / ``client=``),
that renewal can reach Redis on another connection after the release; renew.lua then finds
the key absent and takes it back, so a key the handler gave back (a 503, not stored) stays
claimed by nobody for one more lease, and the client's retry is told 409.

The sync renewer waits for exactly this (``_SyncRenewer.settle``); ``AsyncLease.stop`` only
cancels the renewal task, which cannot unsend a command queued in another task.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio

from idempotent_middleware import IdempotencyConfig, IdempotencyMiddleware, RedisPersistenceLayer
from idempotent_middleware.persistence.redis import _RELEASE, _RENEW

Message = dict[str, Any]


class SlowRenewalConnection(redis.asyncio.Redis):
    """A real client whose renewal waits on its pooled connection (a retransmit, a reconnect)
    until the release has gone out on another one."""

    renew_issued: asyncio.Event
    release_done: asyncio.Event
    renew_done: asyncio.Event

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        renewal = _is(args, _RENEW)
        if renewal:
            self.renew_issued.set()
            await self.release_done.wait()
        result = await super().execute_command(*args, **options)
        if _is(args, _RELEASE):
            self.release_done.set()
        if renewal:
            self.renew_done.set()
        return result


def _is(command: tuple[Any, ...], script: tuple[bytes, str]) -> bool:
    """Whether ``command`` runs ``script`` (EVALSHA, or EVAL after NOSCRIPT)."""
    return (command[0] == "EVALSHA" and command[1] == script[1]) or (
        command[0] == "EVAL" and command[1] == script[0]
    )


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/pay",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"idempotency-key", b"r2")],
    }


async def call(app: Any) -> list[Message]:
    inbox: list[Message] = [{"type": "http.request", "body": b"{}", "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope(), receive, send)
    return sent


def test_r2_renewal_landing_after_release_blocks_the_key(redis_url: str) -> None:
    clients: list[SlowRenewalConnection] = []

    def factory() -> SlowRenewalConnection:
        client = SlowRenewalConnection.from_url(redis_url)
        client.renew_issued, client.release_done = asyncio.Event(), asyncio.Event()
        client.renew_done = asyncio.Event()
        clients.append(client)
        return client

    import redis as sync_redis

    with sync_redis.Redis.from_url(redis_url) as warm:  # a server that served before
        for script in (_RENEW, _RELEASE):
            warm.script_load(script[0])
    layer = RedisPersistenceLayer(async_client_factory=factory)
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        if len(runs) == 1:
            await clients[0].renew_issued.wait()  # a handler that outlives half its lease
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"try again"})

    middleware = IdempotencyMiddleware(
        app, layer, IdempotencyConfig(lease_seconds=0.4, retry_after_seconds=1)
    )

    async def main() -> tuple[int, int]:
        first = await call(middleware)
        await asyncio.wait_for(clients[0].renew_done.wait(), 5)
        second = await call(middleware)  # the client retries the 503 at once
        await layer.aclose()
        return first[0]["status"], second[0]["status"]

    first, second = asyncio.run(main())
    assert first == 503  # not stored: the key was given back for a retry
    assert second == 503, f"the retry got {second}: a late renewal re-claimed the freed key"
    assert runs == [1, 1]


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
