"""One Idempotency extension on several apps sharing one store (the factory pattern)."""

from __future__ import annotations

import uuid

from flask import Flask, jsonify

from idempotent_middleware import InMemoryPersistenceLayer
from idempotent_middleware.flask import Idempotency


def _app(name: str, runs: list[str]) -> Flask:
    app = Flask(name)

    @app.post("/orders")
    def orders():  # type: ignore[no-untyped-def]
        runs.append(name)
        return jsonify(app=name, secret=f"{name}'s order"), 201

    return app


def test_two_apps_sharing_one_extension_store_do_not_share_records() -> None:
    """The factory pattern: one module-level Idempotency(persistence_store=...) and
    init_app on each app. The record key is METHOD path#hash: no app in it."""
    runs: list[str] = []
    idempotency = Idempotency(persistence_store=InMemoryPersistenceLayer())
    shop, billing = _app("shop", runs), _app("billing", runs)
    idempotency.init_app(shop)
    idempotency.init_app(billing)
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    a = shop.test_client().post("/orders", json={"x": 1}, headers=key)
    b = billing.test_client().post("/orders", json={"x": 1}, headers=key)
    assert a.status_code == b.status_code == 201
    assert b.get_json()["app"] == "billing"
    assert runs == ["shop", "billing"], "billing was served shop's response"


def test_apps_with_one_namespace_share_records() -> None:
    """IDEMPOTENCY_NAMESPACE: one service behind two entry points keeps one key space."""
    runs: list[str] = []
    idempotency = Idempotency(persistence_store=InMemoryPersistenceLayer())
    one, two = _app("one", runs), _app("two", runs)
    for app in (one, two):
        app.config["IDEMPOTENCY_NAMESPACE"] = "orders-service"
        idempotency.init_app(app)
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = one.test_client().post("/orders", json={"x": 1}, headers=key)
    retry = two.test_client().post("/orders", json={"x": 1}, headers=key)
    assert runs == ["one"]
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert retry.data == first.data
