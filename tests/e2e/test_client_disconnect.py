"""A client that hangs up in the middle of its request body, then retries with the same key.

This is the retry the middleware exists for (a flaky network), so the cut-off attempt must not
decide the key: the full retry must run (201). Both adapters take the partial body for the
whole request (ASGI on ``http.disconnect``, WSGI when ``wsgi.input`` ends before
``CONTENT_LENGTH``): they claim the key with its fingerprint, run the app on the partial body
and store its answer (a 422 from the app's validation), so the honest retry gets 422
"idempotency-key-reused" for the key's lifetime (24 h by default).
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import httpx
import pytest
import redis

from tests.e2e.conftest import CLIENT_TIMEOUT_SECONDS, ServerPool, executions

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

ORDER = {"sku": "abc", "qty": 1}


def send_partial_request(port: int, path: str, key: str, body: bytes, sent: int) -> None:
    """Declare the whole body, send ``sent`` bytes of it, and close the connection."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Idempotency-Key: {key}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(head + body[:sent])
        time.sleep(0.2)


@pytest.mark.parametrize("name", ["fastapi", "flask"])
def test_request_body_cut_short_does_not_decide_the_key(
    name: str, example_servers: ServerPool, redis_client: redis.Redis
) -> None:
    server = example_servers.get(name)
    key = f"cut-upload-{uuid.uuid4()}"
    body = json.dumps(ORDER).encode()

    send_partial_request(server.port, "/orders", key, body, sent=7)
    time.sleep(0.5)  # let the server see the disconnect and finish with that request

    retry = httpx.post(
        server.base_url + "/orders",
        content=body,
        headers={"Idempotency-Key": key, "content-type": "application/json"},
        timeout=CLIENT_TIMEOUT_SECONDS,
    )
    assert retry.status_code == 201, retry.text
    assert "idempotent-replayed" not in retry.headers
    assert retry.json()["run"] == 1
    assert executions(redis_client) == 1
