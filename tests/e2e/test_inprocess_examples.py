"""The Litestar and Django examples in process, on their default in-memory store.

Litestar through its own ``TestClient`` (and httpx's ASGI transport for concurrency), Django
through Werkzeug's test ``Client`` over the wrapped WSGI ``application``: first run, replay,
422 for the key reused with another body, 400s, 409 for an in-flight duplicate.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import threading
import time
import uuid
from types import ModuleType
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient
from werkzeug.test import Client

from idempotent_middleware import InMemoryPersistenceLayer

pytestmark = pytest.mark.timeout(60)

ORDER = {"sku": "abc", "qty": 1}
OTHER = {"sku": "abc", "qty": 2}


def import_in_memory(name: str, store_module: str | None = None) -> ModuleType:
    """Import an example with REDIS_URL unset, so that it picks the in-memory store."""
    saved = os.environ.pop("REDIS_URL", None)
    try:
        module = importlib.import_module(name)
    finally:
        if saved is not None:
            os.environ["REDIS_URL"] = saved
    store = importlib.import_module(store_module or name).store
    assert isinstance(store, InMemoryPersistenceLayer), "imported earlier with REDIS_URL set"
    return module


def problem_type(document: Any) -> str:
    return str(document["type"]).rsplit("/", 1)[-1]


# --- Litestar -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def litestar_example() -> ModuleType:
    return import_in_memory("examples.litestar_app")


def test_litestar_first_replay_reused_invalid(litestar_example: ModuleType) -> None:
    runs: list[int] = litestar_example._runs
    key = {"Idempotency-Key": f"ls-{uuid.uuid4()}"}
    with TestClient(app=litestar_example.app) as client:
        assert client.get("/healthz").json() == {"ok": True}
        before = len(runs)

        first = client.post("/orders", json=ORDER, headers=key)
        assert first.status_code == 201
        assert "idempotent-replayed" not in first.headers
        assert len(runs) == before + 1

        replay = client.post("/orders", json=ORDER, headers=key)
        assert replay.status_code == 201
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.content == first.content
        assert len(runs) == before + 1

        reused = client.post("/orders", json=OTHER, headers=key)
        assert reused.status_code == 422
        assert reused.headers["content-type"] == "application/problem+json"
        assert problem_type(reused.json()) == "idempotency-key-reused"

        invalid = client.post("/orders", json=ORDER, headers={"Idempotency-Key": "x" * 256})
        assert invalid.status_code == 400
        assert problem_type(invalid.json()) == "idempotency-key-invalid"

        missing = client.post("/payments", json=ORDER)
        assert missing.status_code == 400
        assert problem_type(missing.json()) == "idempotency-key-missing"

        # The structured-field form of the same key is the same key.
        quoted = {"Idempotency-Key": '"' + key["Idempotency-Key"] + '"'}
        assert client.post("/orders", json=ORDER, headers=quoted).content == first.content
        assert len(runs) == before + 1


def test_litestar_in_flight_duplicate_gets_409(litestar_example: ModuleType) -> None:
    key = {"Idempotency-Key": f"ls-slow-{uuid.uuid4()}"}

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=litestar_example.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
            first = asyncio.ensure_future(client.post("/slow", json=ORDER, headers=key))
            await asyncio.sleep(0.3)
            duplicate = await client.post("/slow", json=ORDER, headers=key)
            original = await first
            replay = await client.post("/slow", json=ORDER, headers=key)
            return original, duplicate, replay

    original, duplicate, replay = asyncio.run(scenario())

    assert original.status_code == 202
    assert duplicate.status_code == 409
    assert duplicate.headers["retry-after"] == "1"
    assert problem_type(duplicate.json()) == "idempotency-key-in-progress"
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == original.content


# --- Django -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def django_example() -> ModuleType:
    """The example's WSGI application, built with the example's settings. Django's settings
    are process-wide: when another test configured them first, the example's middleware and
    IDEMPOTENCY are put in place while its handler is built (it keeps them)."""
    from django.conf import settings

    example = import_in_memory("examples.django_app.settings", "examples.django_app.idempotency")
    if not settings.configured or example.__name__ == settings.SETTINGS_MODULE:
        return import_in_memory("examples.django_app.wsgi", "examples.django_app.idempotency")
    from django.test import override_settings

    with override_settings(
        MIDDLEWARE=example.MIDDLEWARE,
        IDEMPOTENCY=example.IDEMPOTENCY,
        ROOT_URLCONF=example.ROOT_URLCONF,
    ):
        return import_in_memory("examples.django_app.wsgi", "examples.django_app.idempotency")


def django_client(example: ModuleType) -> Client:
    """Werkzeug's test client, reading each response to its end before returning it (the
    middleware records an outcome when the WSGI body is exhausted, as a server would)."""

    class Buffered(Client):
        def open(self, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("buffered", True)
            return super().open(*args, **kwargs)

    return Buffered(example.application)


@pytest.fixture(scope="module")
def django_runs(django_example: ModuleType) -> list[int]:
    runs: list[int] = importlib.import_module("examples.django_app.views")._runs
    return runs


def test_django_first_replay_reused_invalid(
    django_example: ModuleType, django_runs: list[int]
) -> None:
    client = django_client(django_example)
    key = {"Idempotency-Key": f"dj-{uuid.uuid4()}"}
    assert client.get("/healthz").json == {"ok": True}
    before = len(django_runs)

    first = client.post("/orders", json=ORDER, headers=key)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert len(django_runs) == before + 1

    replay = client.post("/orders", json=ORDER, headers=key)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_data() == first.get_data()
    assert replay.headers["Content-Type"] == first.headers["Content-Type"]
    assert len(django_runs) == before + 1

    reused = client.post("/orders", json=OTHER, headers=key)
    assert reused.status_code == 422
    assert reused.headers["Content-Type"] == "application/problem+json"
    assert problem_type(reused.json) == "idempotency-key-reused"

    invalid = client.post("/orders", json=ORDER, headers={"Idempotency-Key": "caf\u00e9"})
    assert invalid.status_code == 400
    assert problem_type(invalid.json) == "idempotency-key-invalid"

    missing = client.post("/payments", json=ORDER)
    assert missing.status_code == 400
    assert problem_type(missing.json) == "idempotency-key-missing"

    # Django's own 405 for GET on a POST view passes through (GET is not a keyed method).
    assert client.get("/orders", headers=key).status_code == 405
    assert len(django_runs) == before + 1


def test_django_in_flight_duplicate_gets_409(django_example: ModuleType) -> None:
    key = {"Idempotency-Key": f"dj-slow-{uuid.uuid4()}"}
    results: dict[str, Any] = {}

    def original() -> None:
        response = django_client(django_example).post("/slow", json=ORDER, headers=key)
        results["first"] = (response.status_code, response.get_data())

    thread = threading.Thread(target=original)
    thread.start()
    try:
        time.sleep(0.3)
        duplicate = django_client(django_example).post("/slow", json=ORDER, headers=key)
    finally:
        thread.join(timeout=30.0)

    assert duplicate.status_code == 409
    assert problem_type(duplicate.json) == "idempotency-key-in-progress"
    status, body = results["first"]
    assert status == 202
    replay = django_client(django_example).post("/slow", json=ORDER, headers=key)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_data() == body
