"""The layers these tests run on: memory, and a real redis-server where the store matters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from idempotent_middleware import RedisPersistenceLayer
from tests.conftest import make_layer


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    layer = make_layer(request.param, request)
    yield layer
    if isinstance(layer, RedisPersistenceLayer):
        layer.close()


@pytest.fixture(autouse=True)
def _enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's shell may disable idempotency; these tests need it on."""
    monkeypatch.delenv("IDEMPOTENCY_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_IDEMPOTENCY_DISABLED", raising=False)
