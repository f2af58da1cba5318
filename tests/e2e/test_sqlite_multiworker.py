"""Exactly once across worker processes that share nothing but one SQLite file.

A plain WSGI app under ``gunicorn -w 4 -k gthread`` (also with ``--preload``, the store's
connection opened in the master before the fork) and a plain ASGI app under
``uvicorn --workers 4``, both on one database file in the test's temporary directory and no
server of any kind: 300 requests over 100 keys (each key three times, shuffled, all sent at
the same moment) run the handler exactly 100 times, once per key; every duplicate is the
stored response byte for byte or a 409 problem, nothing is a 5xx; a second pass replays all.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import _gunicorn_has_control_socket, gunicorn_command, uvicorn_command
from tests.reliability._procs import ServerProcess, free_port, spawn_server
from tests.reliability.http_client import Response, fire_together, raw_request

KEYS = 100
COPIES = 3
WORKERS = 4


def _gunicorn_sync(port: int, *extra: str) -> list[str]:
    """Sync workers take one request at a time, so the storm is spread over all four."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        str(WORKERS),
        "--worker-class",
        "sync",
        "--bind",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "2",
        "--timeout",
        "30",
        *extra,
    ]
    if _gunicorn_has_control_socket():
        command.append("--no-control-socket")
    return [*command, "tests.e2e.sqlite_apps:wsgi_app"]


SERVERS: dict[str, Callable[[int], list[str]]] = {
    "wsgi-gunicorn-4": _gunicorn_sync,
    # The app (and its store's connection) made in the master, then forked into the workers.
    "wsgi-gunicorn-4-preload": lambda port: _gunicorn_sync(port, "--preload"),
    "wsgi-gunicorn-4-gthread": lambda port: gunicorn_command(
        "tests.e2e.sqlite_apps:wsgi_app", port, WORKERS
    ),
    "asgi-uvicorn-4": lambda port: uvicorn_command("tests.e2e.sqlite_apps:asgi_app", port, WORKERS),
}


def _executions(log: Path) -> Counter[str]:
    """Executions per key, from the lines ``key pid`` the handler appends."""
    if not log.exists():
        return Counter()
    return Counter(line.split()[0] for line in log.read_text().splitlines() if line)


def _executing_pids(log: Path) -> set[str]:
    return {line.split()[1] for line in log.read_text().splitlines() if line}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("server_name", list(SERVERS))
def test_300_requests_over_100_keys_run_100_times(server_name: str, tmp_path: Path) -> None:
    log = tmp_path / "executions.log"
    env = {
        "IDEM_SQLITE_PATH": str(tmp_path / "idempotency.sqlite3"),
        "IDEM_EXEC_LOG": str(log),
        "IDEM_TOUCH_AT_IMPORT": "1" if server_name.endswith("-preload") else "0",
    }
    port = free_port()
    server: ServerProcess = spawn_server(
        server_name, SERVERS[server_name](port), port, env, tmp_path, timeout=60
    )
    try:
        payloads = {f"sqlite-{i:03d}": {"sku": f"sku-{i}", "qty": i} for i in range(KEYS)}
        batch = [(key, payload) for key, payload in payloads.items() for _ in range(COPIES)]
        random.Random(10).shuffle(batch)
        raws = [raw_request("/orders", key, json.dumps(p).encode()) for key, p in batch]
        results = fire_together(port, raws, timeout=90)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, f"{len(failures)} requests failed: {failures[:3]}"
        by_key: dict[str, list[Response]] = defaultdict(list)
        for (key, _), response in zip(batch, results, strict=True):
            assert isinstance(response, Response)
            assert response.status < 500, (response.status, response.body[:300])
            by_key[key].append(response)

        originals: dict[str, Response] = {}
        for key, group in by_key.items():
            executed = [r for r in group if r.status == 201 and not r.replayed]
            assert len(executed) == 1, (key, [(r.status, r.body[:100]) for r in group])
            originals[key] = executed[0]
            assert executed[0].json()["key"] == key
            for response in group:
                if response is executed[0]:
                    continue
                if response.status == 409:
                    assert response.header("content-type") == "application/problem+json"
                    continue
                assert response.replayed and response.status == 201
                assert response.body == executed[0].body
        runs = _executions(log)
        assert sum(runs.values()) == KEYS, runs.most_common(3)
        assert set(runs) == set(payloads) and max(runs.values()) == 1

        # Every key again: replays only (from whichever worker), byte for byte, no new run.
        again = fire_together(
            port,
            [raw_request("/orders", key, json.dumps(p).encode()) for key, p in payloads.items()],
            timeout=90,
        )
        for key, response in zip(payloads, again, strict=True):
            assert isinstance(response, Response), response
            assert response.replayed and response.body == originals[key].body
        assert sum(_executions(log).values()) == KEYS
        pids = _executing_pids(log)
        print(f"{server_name}: {KEYS} executions over {len(pids)} worker processes")
        if "-gthread" not in server_name and "uvicorn" not in server_name:
            # Sync workers: several processes really raced (threaded and async workers may
            # accept the whole burst in one process; the kernel decides).
            assert len(pids) >= 2, pids
    finally:
        server.stop()
        print(server.log()[-3000:])
