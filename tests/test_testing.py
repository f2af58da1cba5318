"""The conformance suite: our layers pass it, deliberately broken layers fail it by name."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from idempotent_middleware.exceptions import IdempotencyItemAlreadyExistsError
from idempotent_middleware.persistence.base import BasePersistenceLayer, DataRecord
from idempotent_middleware.persistence.memory import InMemoryPersistenceLayer
from idempotent_middleware.persistence.sqlite import SQLitePersistenceLayer
from idempotent_middleware.testing import PersistenceLayerConformance, run_conformance


class TestMemoryConformance(PersistenceLayerConformance):
    def make_layer(self) -> BasePersistenceLayer:
        return InMemoryPersistenceLayer()


def test_sqlite_passes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    assert run_conformance(lambda: SQLitePersistenceLayer(path)) == 0


class TestRedisConformance(PersistenceLayerConformance):
    """The real redis-server, with the corrupt-record hook (so no check is skipped)."""

    @pytest.fixture(autouse=True)
    def _server(self, redis_url: str) -> None:
        self.url = redis_url

    def make_layer(self) -> BasePersistenceLayer:
        from idempotent_middleware.persistence.redis import RedisPersistenceLayer

        return RedisPersistenceLayer(url=self.url)

    def corrupt_record(self, layer: BasePersistenceLayer, key: str) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        client.set(f"idempotency:{key}", b"not a record")
        client.close()


def test_postgres_passes(postgres_dsn: str) -> None:
    from idempotent_middleware.persistence.postgres import PostgresPersistenceLayer

    assert run_conformance(lambda: PostgresPersistenceLayer(dsn=postgres_dsn)) == 0


class CheckThenSet(InMemoryPersistenceLayer):
    """Broken: reads, then writes, with a round trip in between (not atomic)."""

    def _put_record(self, data_record: DataRecord) -> None:
        existing = self._live(data_record.idempotency_key)
        if existing is not None:
            raise IdempotencyItemAlreadyExistsError(existing)
        time.sleep(0.005)
        self._records[data_record.idempotency_key] = data_record


class Unfenced(InMemoryPersistenceLayer):
    """Broken: completes and releases whoever owns the key."""

    def _update_record(self, data_record: DataRecord) -> None:
        with self._lock:
            self._records[data_record.idempotency_key] = data_record

    def _delete_record(self, data_record: DataRecord) -> None:
        with self._lock:
            self._records.pop(data_record.idempotency_key)


class LosesFalsy(InMemoryPersistenceLayer):
    """Broken: stores ``response_data or None``, so b"" comes back as no response."""

    def _update_record(self, data_record: DataRecord) -> None:
        from dataclasses import replace

        super()._update_record(
            replace(data_record, response_data=data_record.response_data or None)
        )


@pytest.mark.parametrize(
    ("broken", "test", "message"),
    [
        (CheckThenSet, "test_atomic_claim_threads", "atomic claim broken"),
        (Unfenced, "test_fencing_complete", "fencing broken"),
        (Unfenced, "test_fencing_release", "fencing broken"),
        (LosesFalsy, "test_payload_round_trip", "payload altered"),
    ],
)
def test_broken_layer_fails(
    broken: Any, test: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_conformance(broken, pytest_args=["-k", test, "-p", "no:randomly"])
    out = capsys.readouterr().out
    assert code != 0, out
    assert message in out, out
    assert test in out, out


def test_verbose_lists_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_conformance(InMemoryPersistenceLayer, verbose=True, pytest_args=["-k", "hash"]) == 0
    assert "test_different_payload_hash_refused PASSED" in capsys.readouterr().out
