"""A Flask app with the ``Idempotency`` extension and Flask-Login, for real-server tests.

Logins live in Flask's signed session cookie (every worker reads them); the extension's store
is the suite's Redis (``IDEMPOTENCY_STORE`` from ``REDIS_URL``); runs are counted in Redis
per view, key and user.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import flask_login
import redis
from flask import Flask, Response, request, stream_with_context

from idempotent_middleware.flask import Idempotency

_counter = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))

app = Flask(__name__)
app.config.update(
    SECRET_KEY="e2e-only-not-a-secret",
    IDEMPOTENCY_STORE=os.environ.get("REDIS_URL", "memory://"),
    IDEMPOTENCY_LEASE_SECONDS=10,
)
login_manager = flask_login.LoginManager(app)
idempotency = Idempotency(app)


class User(flask_login.UserMixin):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        self.id = name


@login_manager.user_loader
def load_user(name: str) -> User | None:
    return User(name) if name in ("alice", "bob") else None


def runs_key(view: str, key: str | None, user: str | None) -> str:
    return f"native:runs:{view}:{key}:{user}"


def _run(view: str) -> dict[str, Any]:
    user = flask_login.current_user.id if flask_login.current_user.is_authenticated else None
    key = request.headers.get("Idempotency-Key")
    run = int(_counter.incr(runs_key(view, key, user)))
    time.sleep(float(request.args.get("sleep", "0")))
    return {"view": view, "user": user, "run": run, "id": uuid.uuid4().hex}


@app.post("/login")
@idempotency.exempt
def log_in() -> Any:
    user = load_user(request.form["username"])
    if user is None or request.form.get("password") != "pw":
        return {"ok": False}, 403
    flask_login.login_user(user)
    return {"ok": True}


@app.post("/orders")
def orders() -> Any:
    return _run("orders"), 201


@app.post("/required")
@idempotency.idempotent(raise_on_no_idempotency_key=True)
def required() -> Any:
    return _run("required"), 201


@app.post("/exempt")
@idempotency.exempt
def exempt() -> Any:
    return _run("exempt"), 201


@app.post("/file")
def file() -> Any:
    """A streamed body (a generator in the request context), 64 KiB."""
    body = json.dumps(_run("file")).encode().ljust(64 * 1024, b" ")

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    return Response(stream_with_context(chunks()), 201, mimetype="application/octet-stream")


@app.get("/healthz")
def healthz() -> Any:
    return {"ok": True}
