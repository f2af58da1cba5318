"""idempotent_function on the in-memory store: a task handler that must not charge twice.

Run: python examples/decorator_demo.py
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from idempotent_middleware import (
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyValidationError,
    InMemoryPersistenceLayer,
    idempotent_function,
)

store = InMemoryPersistenceLayer()
config = IdempotencyConfig(event_key_jmespath="payment_id", payload_validation_jmespath="amount")
charges: list[str] = []


@dataclass
class Receipt:
    payment_id: str
    charged: int


@idempotent_function(
    data_keyword_argument="payment",
    persistence_store=store,
    config=config,
    output_serializer=Receipt,
)
def charge(payment: dict[str, object]) -> Receipt:
    charges.append(str(payment["payment_id"]))
    return Receipt(str(payment["payment_id"]), int(str(payment["amount"])))


@idempotent_function(data_keyword_argument="job", persistence_store=store, config=config)
async def slow_job(job: dict[str, object]) -> int:
    await asyncio.sleep(0.2)
    return 0  # a falsy result replays as 0, not as "nothing stored"


async def in_flight_duplicate() -> None:
    job = {"payment_id": "job-1", "amount": 1}
    first = asyncio.ensure_future(slow_job(job=job))
    await asyncio.sleep(0.05)
    try:
        await slow_job(job=job)
    except IdempotencyAlreadyInProgressError as exc:
        print(f"in-flight duplicate -> {type(exc).__name__} (retry after {exc.retry_after:.1f}s)")
    print(f"first run returned {await first!r}; retry returns {await slow_job(job=job)!r}")


def main() -> None:
    payment = {"payment_id": "pay-42", "amount": 1000}
    print("first call  ->", charge(payment=payment))
    print("retry       ->", charge(payment=payment))
    try:
        charge(payment={"payment_id": "pay-42", "amount": 999})
    except IdempotencyValidationError:
        print("same key, other amount -> IdempotencyValidationError")
    asyncio.run(in_flight_duplicate())
    print(f"charges actually made: {charges}")


if __name__ == "__main__":
    main()
