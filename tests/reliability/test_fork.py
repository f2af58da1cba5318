"""Item 5: leases are renewed in a process forked after the renewer's thread ran.

Threads do not survive ``fork``: a child of a parent that already renewed a lease must start
its own renewer thread. Checked under ``os.fork`` (the key's PTTL on a real redis grows in the
child) and under ``gunicorn --preload`` (a duplicate during a long handler gets 409).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import warnings

import pytest
import redis

from idempotent_middleware import InMemoryPersistenceLayer, RedisPersistenceLayer
from idempotent_middleware._lease import sync_renewer
from tests.reliability._procs import gunicorn_command
from tests.reliability.conftest import Spawn
from tests.reliability.http_client import request

pytestmark = [pytest.mark.redis, pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")]

LEASE = 1.0


def _child(redis_url: str, out: int) -> None:
    """Claim a key with a 1 s lease, renew it, and report its PTTL every 50 ms for 2.5 s."""
    layer = RedisPersistenceLayer(url=redis_url)
    claim = layer.new_inprogress_record("fork#child", "fp", LEASE, 60)
    layer._put_record(claim)
    renewal = sync_renewer.start(layer, claim, LEASE)
    watcher = redis.Redis.from_url(redis_url)
    samples = []
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        samples.append(int(watcher.pttl(layer._name("fork#child"))))
        time.sleep(0.05)
    renewal.stop()
    os.write(out, json.dumps(samples).encode())


@pytest.mark.timeout(30)
def test_item5_forked_child_renews_its_leases(redis_url: str) -> None:
    # The parent uses the renewer first: its thread runs here and is not copied by fork.
    warm = InMemoryPersistenceLayer()
    claim = warm.new_inprogress_record("fork#parent", "fp", 30, 60)
    warm._put_record(claim)
    sync_renewer.start(warm, claim, 30).stop()
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, fork()"
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            _child(redis_url, write_end)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    samples = json.loads(b"".join(chunks))
    # PTTL -2 means the key is gone: the lease ran out unrenewed.
    assert min(samples) > 0, samples
    assert any(later > earlier for earlier, later in itertools.pairwise(samples)), samples


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_item5_gunicorn_preload_duplicate_gets_409(redis_url: str, spawn: Spawn) -> None:
    server = spawn(
        "gunicorn-preload",
        lambda port: gunicorn_command(
            "tests.reliability.apps.preload_wsgi_app:app",
            port,
            1,
            "--preload",
            "-k",
            "gthread",
            "--threads",
            "4",
        ),
        {"REDIS_URL": redis_url, "REL_LEASE_SECONDS": str(LEASE), "REL_SLOW_SECONDS": "3"},
    )
    counters = redis.Redis.from_url(redis_url)
    key = f"preload-{os.getpid()}-{time.monotonic_ns()}"
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    first: list[int] = []
    worker = threading.Thread(
        target=lambda: first.append(
            request(server.port, "POST", "/slow", headers=headers, body=b"{}", timeout=30).status
        )
    )
    worker.start()
    deadline = time.monotonic() + 10
    while counters.get(f"rel:runs:{key}") is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counters.get(f"rel:runs:{key}") == b"1", server.log()
    time.sleep(LEASE * 1.6)  # past the first lease: only a renewal keeps the key
    duplicate = request(server.port, "POST", "/slow", headers=headers, body=b"{}", timeout=30)
    worker.join(30)
    assert duplicate.status == 409, (duplicate.status, duplicate.body)
    assert first == [201]
    assert counters.get(f"rel:runs:{key}") == b"1"


def _background_child(layer: InMemoryPersistenceLayer, out: int) -> None:
    from idempotent_middleware import _steps

    mine = layer.new_inprogress_record("fork#bg-child", "fp", 30, 60)
    layer._put_record(mine)
    _steps._in_background(layer, _steps.Step(_steps.DELETE, mine))
    time.sleep(_steps.BACKGROUND_DELAY + 1.0)
    left = sorted(key for key in ("fork#bg-parent", "fork#bg-child") if _exists(layer, key))
    os.write(out, json.dumps(left).encode())


def _exists(layer: InMemoryPersistenceLayer, key: str) -> bool:
    try:
        layer._get_record(key)
    except Exception:
        return False
    return True


@pytest.mark.timeout(30)
def test_item5_background_steps_run_in_a_forked_child_and_only_its_own() -> None:
    from idempotent_middleware import _steps

    layer = InMemoryPersistenceLayer()
    parents = layer.new_inprogress_record("fork#bg-parent", "fp", 30, 60)
    layer._put_record(parents)
    # Queued by the parent (its worker thread is running), still waiting when it forks.
    _steps._in_background(layer, _steps.Step(_steps.DELETE, parents))
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            _background_child(layer, write_end)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The child did its own step, and not the one the parent had queued before the fork.
    assert json.loads(b"".join(chunks)) == ["fork#bg-parent"]
