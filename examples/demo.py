"""The README's demo: the FastAPI example, in process, on the in-memory store.

Shows a first run, a replay, a reused key with another body (422), an in-flight duplicate
(409) and a malformed key (400), then the decorator demo. No server to install.
Run: python examples/demo.py
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples import decorator_demo
from examples.fastapi_app import app


def show(label: str, response: httpx.Response) -> None:
    replayed = response.headers.get("idempotent-replayed", "-")
    extra = (
        f" retry-after={response.headers['retry-after']}"
        if "retry-after" in response.headers
        else ""
    )
    print(f"{label:<34} {response.status_code}  replayed={replayed}{extra}")
    print(f"{'':<34} {json.dumps(response.json())[:110]}")


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        order = {"sku": "abc", "qty": 1}
        key = {"Idempotency-Key": "order-1"}
        show("POST /orders (first)", await client.post("/orders", json=order, headers=key))
        show(
            "POST /orders (retry, same key)", await client.post("/orders", json=order, headers=key)
        )
        show(
            "POST /orders (same key, other body)",
            await client.post("/orders", json={"sku": "abc", "qty": 2}, headers=key),
        )
        slow_key = {"Idempotency-Key": "job-1"}
        first = asyncio.ensure_future(client.post("/slow", json=order, headers=slow_key))
        await asyncio.sleep(0.2)
        show(
            "POST /slow (while the first runs)",
            await client.post("/slow", json=order, headers=slow_key),
        )
        show("POST /slow (first, finished)", await first)
        show("POST /slow (retry after)", await client.post("/slow", json=order, headers=slow_key))
        show(
            "POST /orders (malformed key)",
            await client.post("/orders", json=order, headers={"Idempotency-Key": "a,b"}),
        )
        show("POST /payments (no key)", await client.post("/payments", json=order))


if __name__ == "__main__":
    asyncio.run(main())
    print()
    decorator_demo.main()
