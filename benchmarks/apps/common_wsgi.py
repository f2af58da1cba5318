"""Endpoints shared by every WSGI (Flask) benchmark app, mirroring common_asgi."""

import itertools
import time
import uuid
from typing import Any

from flask import Flask, jsonify, request


def build_app() -> Flask:
    """Build the Flask app with the same endpoints and status codes as the ASGI apps."""
    app = Flask(__name__)
    executions = itertools.count(1)
    stats = {"executions": 0}

    def _order() -> tuple[str, int] | None:
        data: Any = request.get_json(silent=True)
        if not isinstance(data, dict):
            return None
        sku, qty = data.get("sku"), data.get("qty")
        if not isinstance(sku, str) or not isinstance(qty, int):
            return None
        return sku, qty

    @app.post("/orders")
    def create_order() -> Any:
        order = _order()
        if order is None:
            return jsonify({"detail": "invalid order"}), 422
        stats["executions"] = next(executions)
        return jsonify({"order_id": uuid.uuid4().hex, "sku": order[0], "qty": order[1]}), 201

    @app.post("/slow")
    def slow() -> Any:
        order = _order()
        if order is None:
            return jsonify({"detail": "invalid order"}), 422
        ms = request.args.get("ms", default=2000, type=int)
        time.sleep(ms / 1000)
        return jsonify({"sku": order[0], "slept_ms": ms}), 201

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"ok": True})

    @app.get("/stats")
    def get_stats() -> Any:
        return jsonify(stats)

    return app
