"""Django under ASGI (uvicorn): a client that gives up mid-handler, then retries.

Django's ASGI handler cancels the view when the server reports ``http.disconnect`` and returns
without any response. The view had started (and done its side effect), so the retry must get
the 409 "request interrupted" problem, never a second execution (issue item 11, contract C3).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.redis_servers import free_port

pytestmark = pytest.mark.timeout(90)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def django_server() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.e2e.django_asgi_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "1",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/count", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start: {process.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.1)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _executions(base: str) -> int:
    return int(httpx.get(base + "/count", timeout=5).json()["executions"])


def test_item11_django_asgi_client_gone_mid_handler_is_never_run_again(django_server: str) -> None:
    port = int(django_server.rsplit(":", 1)[1])
    key = f"django-gone-{uuid.uuid4()}"
    body = b'{"sku": "abc"}'
    head = (
        f"POST /orders?s=3 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Idempotency-Key: {key}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + body)
        deadline = time.monotonic() + 10
        while _executions(django_server) < 1:  # the view has started its work
            assert time.monotonic() < deadline, "the view never started"
            time.sleep(0.05)
    # The client gave up: uvicorn says http.disconnect, Django cancels the view and returns.
    deadline = time.monotonic() + 15
    while True:
        retry = httpx.post(
            django_server + "/orders?s=3",
            content=body,
            headers={"Idempotency-Key": key, "Content-Type": "application/json"},
            timeout=10,
        )
        if retry.status_code != 409 or not retry.json()["type"].endswith("-in-progress"):
            break
        assert time.monotonic() < deadline, "the interrupted request was never recorded"
        time.sleep(0.1)
    assert retry.status_code == 409, retry.text
    assert retry.json()["type"].endswith("/idempotency-request-interrupted")
    assert retry.headers["cache-control"] == "no-store"
    assert _executions(django_server) == 1
