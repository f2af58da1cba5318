"""Differential fault injection: the lean connections and redis-py through the same faults.

Every fault script runs against each client through ``TcpProxy``. Each caller claims its own
fresh key and reads it back, so any reply that is not the caller's own shows up as a foreign
owner, a missing own record or a conflict on a key nobody else used. The lean clients
(``BlockingConnection`` and ``PipelinedConnection`` behind ``RedisPersistenceLayer(url=)``)
must never show one, and must fail with ``IdempotencyPersistenceLayerError`` within a bound
wherever they fail; redis-py's outcomes are recorded alongside for comparison, and wherever
redis-py recovers after the fault, the lean clients must recover too.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff

from idempotent_middleware import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyPersistenceLayerError,
    RedisPersistenceLayer,
)
from tests.redis_servers import RedisProcess
from tests.reliability.tcp_proxy import (
    DROP,
    DUPLICATE,
    HALF_CLOSE,
    RESET,
    SPLIT,
    Delay,
    Fault,
    TcpProxy,
)

TIMEOUT = 0.5
#: Longest any single operation may take under a fault (timeout plus reconnect, loaded host).
BOUND = 4 * TIMEOUT + 2.0
ROUNDS = 4
SCRIPTS: dict[str, tuple[str, tuple[Fault, ...]]] = {
    "delay-reply": ("down", (Delay(3 * TIMEOUT),)),
    "drop-reply": ("down", (DROP,)),
    "duplicate-reply": ("down", (DUPLICATE,)),
    "split-both": ("down", (SPLIT, SPLIT)),
    "split-command": ("up", (SPLIT, SPLIT)),
    "reset": ("down", (RESET,)),
    "half-close": ("down", (HALF_CLOSE,)),
    "drop-command": ("up", (DROP,)),
}
_keys = itertools.count()


@pytest.fixture
def proxy(redis_server: RedisProcess, redis_url: str) -> Iterator[TcpProxy]:
    running = TcpProxy(redis_server.port)
    yield running
    running.close()


def outcome(layer: RedisPersistenceLayer, run: Callable[[Any], Any]) -> tuple[str, float]:
    """Claim a fresh key and read it back; classify what the caller observed."""
    record = layer.new_inprogress_record(f"diff#{next(_keys)}", "fp", 30, 60)
    started = time.monotonic()
    try:
        run(record)
        stored = run(("get", record.idempotency_key))
    except IdempotencyItemAlreadyExistsError as exc:
        found = exc.old_data_record
        kind = "wrong" if found is None or found.owner != record.owner else "wrong-conflict"
        return kind, time.monotonic() - started
    except IdempotencyItemNotFoundError:
        return "wrong-missing", time.monotonic() - started
    except IdempotencyPersistenceLayerError:
        return "typed", time.monotonic() - started
    except Exception as exc:
        return f"untyped:{type(exc).__name__}", time.monotonic() - started
    kind = "ok" if stored.owner == record.owner else "wrong"
    return kind, time.monotonic() - started


def sync_runner(layer: RedisPersistenceLayer) -> Callable[[Any], Any]:
    def run(step: Any) -> Any:
        if isinstance(step, tuple):
            return layer._get_record(step[1])
        return layer._put_record(step)

    return run


def run_script(layer: RedisPersistenceLayer, proxy: TcpProxy, script: str, mode: str) -> list[str]:
    direction, faults = SCRIPTS[script]
    seen: list[str] = []

    def record(kind: str, elapsed: float) -> None:
        seen.append(kind)
        assert elapsed < BOUND, f"{script}: an operation took {elapsed:.1f}s"

    if mode == "sync":
        run = sync_runner(layer)
        record(*outcome(layer, run))  # connected before the fault
        proxy.inject(direction, *faults)
        for _ in range(ROUNDS):
            record(*outcome(layer, run))
        return seen

    async def main() -> None:
        async def one() -> tuple[str, float]:
            item = layer.new_inprogress_record(f"diff#{next(_keys)}", "fp", 30, 60)
            started = time.monotonic()
            try:
                await layer._put_record_async(item)
                stored = await layer._get_record_async(item.idempotency_key)
            except IdempotencyItemAlreadyExistsError:
                return "wrong-conflict", time.monotonic() - started
            except IdempotencyItemNotFoundError:
                return "wrong-missing", time.monotonic() - started
            except IdempotencyPersistenceLayerError:
                return "typed", time.monotonic() - started
            except Exception as exc:
                return f"untyped:{type(exc).__name__}", time.monotonic() - started
            ok = stored.owner == item.owner
            return ("ok" if ok else "wrong"), time.monotonic() - started

        record(*await one())
        proxy.inject(direction, *faults)
        for _ in range(ROUNDS):
            # Three concurrent callers per round: replies must reach their own caller.
            for kind, elapsed in await asyncio.gather(one(), one(), one()):
                record(kind, elapsed)

    asyncio.run(main())
    return seen


def redis_py_layer(port: int, mode: str) -> RedisPersistenceLayer:
    options: dict[str, Any] = {"port": port, "socket_timeout": TIMEOUT}
    if mode == "sync":
        return RedisPersistenceLayer(client=redis.Redis(**options))
    retry = redis.asyncio.retry.Retry(NoBackoff(), 1)
    return RedisPersistenceLayer(
        async_client_factory=lambda: redis.asyncio.Redis(retry=retry, **options)
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_lean_clients_never_hand_a_caller_a_foreign_reply(
    proxy: TcpProxy, script: str, mode: str
) -> None:
    lean = RedisPersistenceLayer(url=f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=TIMEOUT)
    lean_seen = run_script(lean, proxy, script, mode)
    proxy.heal()
    reference_seen = run_script(redis_py_layer(proxy.port, mode), proxy, script, mode)
    summary = f"{script}/{mode}: lean {lean_seen}, redis-py {reference_seen}"
    assert all(kind in ("ok", "typed") for kind in lean_seen), summary
    if reference_seen[-1] == "ok":
        assert lean_seen[-1] == "ok", summary


@pytest.mark.parametrize("fault", [DUPLICATE, DROP], ids=["duplicate", "drop"])
def test_review_pipelined_reply_shifted_into_the_next_batch_is_caught(
    proxy: TcpProxy, fault: Fault
) -> None:
    """A reply duplicated (or lost) while a later batch is already in flight shifts every
    reply after it: before each batch ended with its ECHO token, B's claim got A's nil reply
    and was WON while B was running elsewhere (a double execution)."""
    from idempotent_middleware.persistence.base import BasePersistenceLayer

    new = BasePersistenceLayer.new_inprogress_record

    async def main() -> tuple[object, object]:
        layer = RedisPersistenceLayer(
            url=f"redis://127.0.0.1:{proxy.port}", socket_timeout=1.0, socket_connect_timeout=1.0
        )
        await layer._put_record_async(new("review:B", "h", 30, 60))  # B runs elsewhere
        proxy.configure(latency=0.2, directions=("down",))
        proxy.inject("down", fault)
        first = asyncio.ensure_future(layer._put_record_async(new("review:A", "h", 30, 60)))
        await asyncio.sleep(0.05)  # a second batch while the first is still in flight
        second = asyncio.ensure_future(layer._put_record_async(new("review:B", "h", 30, 60)))
        results = await asyncio.gather(first, second, return_exceptions=True)
        return results[0], results[1]

    claim_a, claim_b = asyncio.run(main())
    # B is held by another execution: its claim must never be won.
    assert isinstance(
        claim_b, (IdempotencyItemAlreadyExistsError, IdempotencyPersistenceLayerError)
    )
    assert claim_a is None or isinstance(claim_a, IdempotencyPersistenceLayerError)
