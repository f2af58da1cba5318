"""Flask with the ``Idempotency`` extension (same endpoints as ``fastapi_app.py``).

Run:  flask --app examples.flask_app run --port 8000          (in-memory store, one process)
      REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -w 4 -k gthread --threads 8 \
           -b 127.0.0.1:8000 examples.flask_app:app
Try:  curl -i -X POST localhost:8000/orders -H 'Idempotency-Key: k1' \
           -H 'content-type: application/json' -d '{"sku": "abc", "qty": 1}'

The extension runs inside Flask: after the ``before_request`` handlers (a login extension has
loaded the user: with Flask-Login, keys are scoped by ``current_user``), around the view only;
options come from ``app.config`` (``IDEMPOTENCY_*``) and per view from its decorators.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Flask, request

from examples._store import count_execution, make_store
from idempotent_middleware.flask import Idempotency

store = make_store()
_runs: list[int] = []

flask_app = Flask(__name__)
flask_app.config["IDEMPOTENCY_LEASE_SECONDS"] = 10  # any IdempotencyConfig option, by name
# IDEMPOTENCY_STORE may name the store ("redis://..."); here the examples' shared one.
idempotency = Idempotency(flask_app, persistence_store=store)
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
@idempotency.idempotent(
    raise_on_no_idempotency_key=True, expires_after_seconds=7 * 86400
)  # a key is a must
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
