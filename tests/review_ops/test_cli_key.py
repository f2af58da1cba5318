"""``idempotent-middleware key`` must give the key the middleware really stores.

Each test sends a real request through a middleware, reads the key back from the store and
compares it with what the CLI computes for the same request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from werkzeug.test import Client

from idempotent_middleware import IdempotencyConfig, WSGIIdempotencyMiddleware
from idempotent_middleware.asgi import IdempotencyMiddleware as ASGIIdempotencyMiddleware
from idempotent_middleware.cli import main
from idempotent_middleware.persistence.memory import InMemoryPersistenceLayer


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"ok"]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def stored_keys(store: InMemoryPersistenceLayer) -> list[str]:
    return [str(r["key"]) for r in store.list_records("", 100)]


def cli_key(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str | None, str]:
    code = main(["key", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out)["key"] if out.strip() else None), err


def asgi_post(
    store: InMemoryPersistenceLayer,
    raw_path: bytes,
    key: bytes,
    path: str | None = None,
    **config: Any,
) -> None:
    from urllib.parse import unquote

    middleware = ASGIIdempotencyMiddleware(asgi_app, store, IdempotencyConfig(**config))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1")) if path is None else path,
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"idempotency-key", key), (b"content-length", b"0")],
    }
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == 201


def test_key_matches_wsgi_for_a_non_ascii_path(capsys: pytest.CaptureFixture[str]) -> None:
    """WSGI hands PATH_INFO as latin-1-decoded bytes (PEP 3333), so the WSGI middleware keys
    ``/orders/café`` as ``/orders/cafÃ©``; the CLI (and the ASGI middleware) use the real
    text, so the operator's key names no record."""
    store = InMemoryPersistenceLayer()
    client = Client(WSGIIdempotencyMiddleware(wsgi_app, store))
    assert (
        client.post(
            "/orders/caf%C3%A9", headers={"Idempotency-Key": "k1"}, buffered=True
        ).status_code
        == 201
    )
    code, key, _ = cli_key(capsys, "--client-key", "k1", "--path", "/orders/café")
    assert code == 0
    assert stored_keys(store) == [key]


def test_asgi_and_wsgi_store_one_key_for_one_request() -> None:
    """The same request (``POST /orders/caf%C3%A9``) gets two different storage keys, so an
    operator cannot tell which the CLI should compute."""
    wsgi_store, asgi_store = InMemoryPersistenceLayer(), InMemoryPersistenceLayer()
    client = Client(WSGIIdempotencyMiddleware(wsgi_app, wsgi_store))
    assert (
        client.post(
            "/orders/caf%C3%A9", headers={"Idempotency-Key": "k1"}, buffered=True
        ).status_code
        == 201
    )
    asgi_post(asgi_store, b"/orders/caf%C3%A9", b"k1")
    assert stored_keys(wsgi_store) == stored_keys(asgi_store)


def test_key_honours_hash_function(capsys: pytest.CaptureFixture[str]) -> None:
    """``hash_function`` is a documented setting that changes every storage key; ``key``
    has no way to be told (the README claims it computes the key "exactly as the middleware
    does")."""
    store = InMemoryPersistenceLayer()
    asgi_post(store, b"/orders", b"k1", hash_function="sha512")
    code, key, err = cli_key(
        capsys, "--client-key", "k1", "--path", "/orders", "--hash-function", "sha512"
    )
    assert code == 0, err
    assert stored_keys(store) == [key]


def test_key_refuses_a_client_key_the_middleware_refuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A non-latin-1 key (an emoji) is sent as UTF-8 bytes and answered 400 by the
    middleware; the CLI encodes it with ``errors="replace"`` and prints the key of ``"?"``."""
    store = InMemoryPersistenceLayer()
    client = Client(WSGIIdempotencyMiddleware(wsgi_app, store))
    sent = "\U0001f600".encode().decode("latin-1")  # the header bytes as WSGI sees them
    assert (
        client.post("/orders", headers={"Idempotency-Key": sent}, buffered=True).status_code == 400
    )
    code, key, _ = cli_key(capsys, "--client-key", "\U0001f600", "--path", "/orders")
    assert (code, key) == (2, None)


def test_key_for_a_flask_app_without_a_scope_hook(capsys: pytest.CaptureFixture[str]) -> None:
    """The Flask extension always hashes a namespace tenant (``app:<len>:<import_name>``)
    into the key, even with no ``scope`` configured; the README tells operators to add
    ``--tenant`` only "when a scope hook is configured" and never says what it is, so the
    documented command names no record of a plain Flask app."""
    from pathlib import Path

    from flask import Flask

    from idempotent_middleware.flask import Idempotency

    store = InMemoryPersistenceLayer()
    app = Flask("shop")
    Idempotency(app, persistence_store=store)
    app.add_url_rule("/orders", "orders", lambda: ("ok", 201), methods=["POST"])
    assert app.test_client().post("/orders", headers={"Idempotency-Key": "k1"}).status_code == 201
    code, key, _ = cli_key(capsys, "--client-key", "k1", "--path", "/orders")
    assert code == 0
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    cli_section = readme[readme.index("### Command line") :][:3000]
    assert stored_keys(store) == [key] or "app:" in cli_section, (stored_keys(store), key)


def test_key_matches_asgi_for_a_raw_utf8_path(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's recipe says the path is "as the server gives it: ASGI scope["path"]";
    a server that passes the request target's UTF-8 bytes unescaped in ``raw_path`` (h11
    does) has ``scope["path"] == "/orders/café"``, but ``full_path`` decodes ``raw_path`` as
    latin-1 and keys ``/orders/cafÃ©``: neither the recipe nor the CLI finds the record."""
    store = InMemoryPersistenceLayer()
    asgi_post(store, "/orders/café".encode(), b"k1", path="/orders/café")
    code, key, _ = cli_key(capsys, "--client-key", "k1", "--path", "/orders/café")
    assert code == 0
    assert stored_keys(store) == [key]


def test_asgi_without_raw_path_keys_as_wsgi(capsys: pytest.CaptureFixture[str]) -> None:
    """A server that sends no ``raw_path`` gives ``scope["path"]`` as UTF-8 text; the key is
    the one WSGI and the CLI compute for the same request."""
    store = InMemoryPersistenceLayer()
    asgi_post(store, b"", b"k1", path="/orders/café")
    code, key, _ = cli_key(capsys, "--client-key", "k1", "--path", "/orders/caf%C3%A9")
    assert code == 0
    assert stored_keys(store) == [key]


def test_asgi_paths_with_invalid_utf8_keep_distinct_keys() -> None:
    """Two paths differing only in invalid UTF-8 bytes are two requests: decoded as UTF-8
    both read ``/a\ufffd`` and shared one key."""
    store = InMemoryPersistenceLayer()
    asgi_post(store, b"/a%FF", b"k1")
    asgi_post(store, b"/a%FE", b"k1")
    assert len(stored_keys(store)) == 2


@pytest.mark.parametrize("user", [None, "42"])
def test_key_flask_app_option(capsys: pytest.CaptureFixture[str], user: str | None) -> None:
    """``--flask-app IMPORT_NAME`` (with ``--tenant`` for a scope) names a Flask app's record."""
    from flask import Flask

    from idempotent_middleware.flask import Idempotency

    store = InMemoryPersistenceLayer()
    app = Flask("shop")
    scope = None if user is None else (lambda request: f"user:{user}")
    app.config["IDEMPOTENCY_SCOPE"] = scope
    Idempotency(app, persistence_store=store)
    app.add_url_rule("/orders", "orders", lambda: ("ok", 201), methods=["POST"])
    assert app.test_client().post("/orders", headers={"Idempotency-Key": "k1"}).status_code == 201
    tenant = [] if user is None else ["--tenant", f"user:{user}"]
    code, key, _ = cli_key(
        capsys, "--client-key", "k1", "--path", "/orders", "--flask-app", "shop", *tenant
    )
    assert code == 0
    assert stored_keys(store) == [key]
