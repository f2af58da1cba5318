"""Fixtures for the reliability suite: servers, dedicated Redis servers, and the figures file.

Tests report their measurements through ``figures(...)``. When ``RELIABILITY_FIGURES`` names a
file, each call appends one JSON line to it (``scripts/reliability_report.py`` reads them);
otherwise the figures only go to the test's captured output.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.redis_servers import RedisProcess, redis_binary, start_redis
from tests.reliability._procs import ServerProcess, free_port, spawn_server

FIGURES_ENV = "RELIABILITY_FIGURES"

Figures = Callable[..., None]
Spawn = Callable[..., ServerProcess]


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """``figures(scenario, **numbers)``: record what this test measured."""

    def record(scenario: str, **values: Any) -> None:
        line = {"test": request.node.nodeid, "scenario": scenario, "time": time.time(), **values}
        print("FIGURES", json.dumps(line, sort_keys=True))
        path = os.environ.get(FIGURES_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(line, sort_keys=True) + "\n")

    return record


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test's own (outage tests stop and restart it)."""
    if redis_binary() is None:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail("REQUIRE_REDIS=1 but redis-server is not installed")
        pytest.skip("redis-server is not installed")
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(name, command_builder, env)`` starts a server on a free port; all are killed."""
    started: list[ServerProcess] = []

    def start(
        name: str, command: Callable[[int], list[str]], env: dict[str, str], **kwargs: Any
    ) -> ServerProcess:
        port = free_port()
        server = spawn_server(name, command(port), port, env, tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
