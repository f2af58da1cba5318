"""Flask with the WSGI middleware (same endpoints as ``fastapi_app.py``).

Run:  flask --app examples.flask_app run --port 8000          (in-memory store, one process)
      REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -w 4 -k gthread --threads 8 \
           -b 127.0.0.1:8000 examples.flask_app:app
Try:  curl -i -X POST localhost:8000/orders -H 'Idempotency-Key: k1' \
           -H 'content-type: application/json' -d '{"sku": "abc", "qty": 1}'

The middleware wraps ``flask_app.wsgi_app`` (not the Flask object), so Flask's own error
handlers, ``before_request`` hooks and extensions all run inside it, once per key.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Flask, request

from examples._store import count_execution, make_store
from idempotent_middleware import IdempotencyConfig, RouteOptions, WSGIIdempotencyMiddleware

store = make_store()
_runs: list[int] = []

flask_app = Flask(__name__)
flask_app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
    flask_app.wsgi_app,
    persistence_store=store,
    config=IdempotencyConfig(
        lease_seconds=10,
        # Per route: payments must carry a key, and their records live a week.
        routes={
            "/payments": RouteOptions(
                raise_on_no_idempotency_key=True, expires_after_seconds=7 * 86400
            )
        },
    ),
)
#: What servers import (``gunicorn examples.flask_app:app``, ``flask --app ...``).
app = flask_app


def _order() -> tuple[dict[str, Any] | None, tuple[dict[str, str], int] | None]:
    """The validated ``{"sku": str, "qty": int}`` body, or a 422 like FastAPI's."""
    body = request.get_json(silent=True)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("sku"), str)
        or not isinstance(body.get("qty"), int)
        or isinstance(body.get("qty"), bool)
    ):
        return None, ({"detail": "body must be {'sku': str, 'qty': int}"}, 422)
    return body, None


@flask_app.post("/orders")
def create_order() -> Any:
    order, error = _order()
    if order is None:
        return error
    run = count_execution(store, _runs)
    return {"order_id": uuid.uuid4().hex, "sku": order["sku"], "qty": order["qty"], "run": run}, 201


@flask_app.post("/payments")
def pay() -> Any:
    order, error = _order()
    if order is None:
        return error
    return {"payment_id": uuid.uuid4().hex, "amount": order["qty"]}, 201


@flask_app.post("/slow")
def slow() -> Any:
    _, error = _order()
    if error is not None:
        return error
    time.sleep(1.0)
    return {"job_id": uuid.uuid4().hex, "run": count_execution(store, _runs)}, 202


@flask_app.get("/healthz")
def healthz() -> Any:
    return {"ok": True}
