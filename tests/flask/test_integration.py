"""The Flask extension in process (Flask's test client), with a real Flask-Login login."""

from __future__ import annotations

import io
import json
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response, g, request, stream_with_context

from idempotent_middleware import IdempotencyConfig, InMemoryPersistenceLayer
from idempotent_middleware.flask import Idempotency

flask_login = pytest.importorskip("flask_login")

pytestmark = pytest.mark.timeout(60)

ORDER = {"sku": "abc", "qty": 1}


class User(flask_login.UserMixin):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        self.id = name


def make_app(**config: Any) -> tuple[Flask, Counter[str]]:
    runs: Counter[str] = Counter()
    app = Flask("flask-integration")
    app.config.update(SECRET_KEY="tests-only", **config)
    login = flask_login.LoginManager(app)
    login.user_loader(User)
    idempotency = Idempotency()
    idempotency.init_app(app)

    @app.before_request
    def tenant() -> None:
        g.tenant = request.headers.get("X-Tenant")

    def answer(name: str) -> dict[str, Any]:
        runs[name] += 1
        user = flask_login.current_user
        return {
            "view": name,
            "run": runs[name],
            "user": user.id if user.is_authenticated else None,
            "body": request.get_data(as_text=True),
        }

    @app.post("/login/<name>")
    @idempotency.exempt
    def log_in(name: str) -> Any:
        flask_login.login_user(User(name))
        return {"ok": True}

    @app.post("/orders")
    def orders() -> Any:
        return answer("orders"), 201

    @app.post("/payments")
    @idempotency.idempotent(raise_on_no_idempotency_key=True, expires_after_seconds=60)
    def payments() -> Any:
        return answer("payments"), 201

    @idempotency.exempt
    @app.post("/exempt")
    def exempt() -> Any:
        return answer("exempt"), 201

    @app.route("/put-only", methods=["POST", "PUT"])
    @idempotency.idempotent(methods=["PUT"])
    def put_only() -> Any:
        return answer("put_only"), 201

    @app.post("/stream")
    def stream() -> Response:
        runs["stream"] += 1
        run = runs["stream"]

        def body() -> Iterator[bytes]:
            for index in range(5):
                yield f"chunk {index} of run {run}\n".encode()

        return Response(stream_with_context(body()), 201, mimetype="text/plain")

    @app.post("/conflict")
    def conflict() -> Any:
        runs["conflict"] += 1
        from flask import abort

        abort(409)

    @app.post("/form")
    def form() -> Any:
        runs["form"] += 1
        return {"name": request.form.get("name")}, 201

    return app, runs


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"k-{uuid.uuid4()}"}


def test_runs_once_replays_and_rejects_another_body() -> None:
    app, runs = make_app()
    client, key = app.test_client(), _key()
    first = client.post("/orders", json=ORDER, headers=key)
    again = client.post("/orders", json=ORDER, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data and runs["orders"] == 1
    other = client.post("/orders", json={"sku": "abc", "qty": 2}, headers=key)
    assert other.status_code == 422 and other.mimetype == "application/problem+json"
    assert runs["orders"] == 1


def test_per_view_required_and_exempt() -> None:
    app, runs = make_app()
    client = app.test_client()
    assert client.post("/payments", json=ORDER).status_code == 400
    assert runs["payments"] == 0
    key = _key()
    client.post("/payments", json=ORDER, headers=key)
    client.post("/payments", json=ORDER, headers=key)
    assert runs["payments"] == 1
    for _ in range(3):
        client.post("/exempt", json=ORDER, headers=key)
    assert runs["exempt"] == 3
    for _ in range(2):
        client.post("/put-only", json=ORDER, headers=key)
    assert runs["put_only"] == 2
    for _ in range(2):
        client.put("/put-only", json=ORDER, headers=key)
    assert runs["put_only"] == 3


def test_logged_in_users_never_share_a_key() -> None:
    app, runs = make_app()
    alice, bob = app.test_client(), app.test_client()
    alice.post("/login/alice")
    bob.post("/login/bob")
    key = _key()
    a1 = alice.post("/orders", json=ORDER, headers=key)
    b1 = bob.post("/orders", json=ORDER, headers=key)
    a2 = alice.post("/orders", json=ORDER, headers=key)
    assert (a1.json or {})["user"] == "alice" and (b1.json or {})["user"] == "bob"
    assert runs["orders"] == 2
    assert a2.headers["Idempotent-Replayed"] == "true" and a2.data == a1.data


def test_scope_hook_runs_after_before_request() -> None:
    def tenant_scope(_: Any) -> str | None:
        return str(g.tenant)  # set by a before_request handler

    app, runs = make_app(IDEMPOTENCY_SCOPE=tenant_scope)
    client, key = app.test_client(), _key()
    client.post("/orders", json=ORDER, headers={**key, "X-Tenant": "t1"})
    client.post("/orders", json=ORDER, headers={**key, "X-Tenant": "t2"})
    client.post("/orders", json=ORDER, headers={**key, "X-Tenant": "t1"})
    assert runs["orders"] == 2


def test_streamed_response_is_captured_and_replayed() -> None:
    app, runs = make_app()
    client, key = app.test_client(), _key()
    first = client.post("/stream", json=ORDER, headers=key)
    original = first.data  # the client reads the whole stream (recorded at its end)
    again = client.post("/stream", json=ORDER, headers=key)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == original and original.count(b"chunk") == 5
    assert runs["stream"] == 1


def test_http_exception_is_a_response_and_stored() -> None:
    app, runs = make_app()
    client, key = app.test_client(), _key()
    assert client.post("/conflict", json=ORDER, headers=key).status_code == 409
    again = client.post("/conflict", json=ORDER, headers=key)
    assert again.status_code == 409 and again.headers["Idempotent-Replayed"] == "true"
    assert runs["conflict"] == 1


def test_form_body_reaches_the_view() -> None:
    app, runs = make_app()
    client, key = app.test_client(), _key()
    reply = client.post("/form", data={"name": "x"}, headers=key)
    assert reply.status_code == 201 and (reply.json or {})["name"] == "x"
    assert client.post("/form", data={"name": "x"}, headers=key).headers["Idempotent-Replayed"]
    assert runs["form"] == 1


def test_body_limits() -> None:
    app, runs = make_app(IDEMPOTENCY_MAX_REQUEST_BODY_BYTES=8)
    client = app.test_client()
    assert client.post("/orders", json=ORDER, headers=_key()).status_code == 413
    # A chunked body (Werkzeug's test server marks it terminated): read up to the cap, 413.
    chunked = client.post(
        "/orders",
        input_stream=io.BytesIO(json.dumps(ORDER).encode()),
        headers={**_key(), "Transfer-Encoding": "chunked", "Content-Type": "application/json"},
    )
    assert chunked.status_code == 413
    assert runs["orders"] == 0


def test_config_keys_and_objects() -> None:
    store = InMemoryPersistenceLayer()
    app = Flask("cfg")
    app.config["IDEMPOTENCY_HEADER_NAME"] = "X-Request-Key"
    Idempotency(app, persistence_store=store)
    assert Idempotency.engine(app).config.header_name == "X-Request-Key"
    assert Idempotency.engine(app).store is store
    other = Flask("cfg2")
    Idempotency(other, config=IdempotencyConfig(expires_after_seconds=5))
    assert Idempotency.engine(other).config.expires_after_seconds == 5
    bad = Flask("bad")
    bad.config["IDEMPOTENCY_NO_SUCH_OPTION"] = 1
    with pytest.raises(ValueError, match="no_such_option"):
        Idempotency(bad)


def test_concurrent_duplicates_run_once() -> None:
    app, runs = make_app()
    key = _key()
    statuses: list[int] = []

    def send() -> None:
        statuses.append(app.test_client().post("/orders", json=ORDER, headers=key).status_code)

    threads = [threading.Thread(target=send) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert runs["orders"] == 1 and set(statuses) <= {201, 409}


@pytest.mark.parametrize(("module", "extra"), [("flask", "flask"), ("django", "django")])
def test_missing_framework_names_the_extra(
    module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delitem(sys.modules, f"idempotent_middleware.{module}", raising=False)
    with pytest.raises(ImportError, match=rf"idempotent-middleware\[{extra}\]"):
        importlib.import_module(f"idempotent_middleware.{module}")


def test_form_consumed_before_us_is_400_not_an_empty_fingerprint() -> None:
    app, runs = make_app()

    @app.before_request
    def read_form() -> None:
        request.form  # noqa: B018 - consumes the stream, as some extensions do

    client, key = app.test_client(), _key()
    reply = client.post("/form", data={"name": "x"}, headers=key)
    assert reply.status_code == 400
    assert runs["form"] == 0


def test_init_app_twice_claims_once() -> None:
    store = InMemoryPersistenceLayer()
    app = Flask("twice")
    runs: list[int] = []

    @app.post("/orders")
    def orders() -> Any:
        runs.append(1)
        return {"run": len(runs)}, 201

    Idempotency(app, persistence_store=store)
    Idempotency(app, persistence_store=store)  # again: one claim per request, not two (409)
    client, key = app.test_client(), _key()
    assert client.post("/orders", json=ORDER, headers=key).status_code == 201
    assert client.post("/orders", json=ORDER, headers=key).headers["Idempotent-Replayed"]
    assert runs == [1]


def test_disable_switch_runs_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    app, runs = make_app()
    monkeypatch.setenv("IDEMPOTENCY_DISABLED", "true")
    client, key = app.test_client(), _key()
    for _ in range(2):
        client.post("/orders", json=ORDER, headers=key)
    assert runs["orders"] == 2


def test_method_view_methods_carry_their_options() -> None:
    from flask.views import MethodView

    app = Flask("method-view")
    idempotency = Idempotency(app)
    runs: list[str] = []

    class Orders(MethodView):
        @idempotency.idempotent(raise_on_no_idempotency_key=True)
        def post(self) -> Any:
            runs.append("post")
            return {"n": len(runs)}, 201

        @idempotency.exempt
        def patch(self) -> Any:  # PATCH is covered by default: exempt makes it run each time
            runs.append("patch")
            return {"n": len(runs)}, 201

    app.add_url_rule("/orders", view_func=Orders.as_view("orders"))
    client, key = app.test_client(), _key()
    assert client.post("/orders", json=ORDER).status_code == 400
    client.post("/orders", json=ORDER, headers=key)
    client.post("/orders", json=ORDER, headers=key)
    client.patch("/orders", json=ORDER, headers=key)
    client.patch("/orders", json=ORDER, headers=key)
    assert runs == ["post", "patch", "patch"]
