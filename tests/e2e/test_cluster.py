"""The distributed path end to end: the FastAPI example on a real 3-master Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from tests.e2e.conftest import Server, start_server
from tests.e2e.test_multiworker import REQUESTS, classify, fire, retry
from tests.redis_topologies import ClusterTopology


@pytest.fixture(scope="module")
def cluster_server(
    redis_cluster: ClusterTopology, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    host, port = redis_cluster.startup_nodes[0]
    server = start_server(
        "fastapi-cluster",
        "uvicorn",
        "examples.fastapi_app:app",
        workers=2,
        log_dir=Path(tmp_path_factory.mktemp("cluster-logs")),
        redis_url=f"redis+cluster://{host}:{port}",
    )
    try:
        yield server
    finally:
        server.stop()


def test_burst_of_duplicates_runs_once_on_a_cluster(
    cluster_server: Server, redis_cluster: ClusterTopology
) -> None:
    host, port = redis_cluster.startup_nodes[0]
    counter = RedisCluster(host=host, port=port)
    counter.delete("examples:executions")
    key = f"cluster-{uuid.uuid4()}"

    responses = asyncio.run(fire(cluster_server.base_url, "/orders", key, [0.0] * REQUESTS))

    outcomes = classify(responses, executed_status=201)
    assert len(outcomes.replayed) + len(outcomes.in_progress) == REQUESTS - 1
    assert int(counter.get("examples:executions") or 0) == 1
    final = retry(cluster_server.base_url, "/orders", key)
    assert final.status_code == 201
    assert final.headers["idempotent-replayed"] == "true"
    assert final.content == outcomes.executed[0].content
    assert int(counter.get("examples:executions") or 0) == 1
    counter.close()
