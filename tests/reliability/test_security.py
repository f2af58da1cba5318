"""Scenario 8: security properties, on a real Redis.

- Tenant isolation: with a ``scope`` hook, tenant B sending tenant A's key gets its own run.
- Replays never carry ``Set-Cookie`` unless configured (``replay_exclude_headers=frozenset()``).
- A corrupt or truncated record written straight into Redis under the right key answers the
  documented 503 ``idempotency-record-corrupt`` problem (and logs), never a 500 or a crash
  loop, and the handler does not run.
- No ``pickle``, ``eval(`` or ``exec(`` anywhere in the package.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tokenize
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask, make_response
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from werkzeug.test import Client

from idempotent_middleware import (
    IdempotencyConfig,
    IdempotencyMiddleware,
    RedisPersistenceLayer,
    WSGIIdempotencyMiddleware,
)
from tests.redis_servers import RedisProcess
from tests.reliability._procs import REPO_ROOT
from tests.reliability.conftest import Figures

pytestmark = pytest.mark.redis  # needs a real redis-server (the suite starts it)

PACKAGE = REPO_ROOT / "idempotent_middleware"


def _tenant(request: Any) -> str | None:
    """The tenant is the API key's owner; unknown keys are nobody's (no tenant)."""
    api_key = request.header(b"x-api-key")
    return {b"key-of-a": "tenant-a", b"key-of-b": "tenant-b"}.get(api_key or b"")


class Harness:
    """The same endpoints behind the ASGI and the WSGI adapter, on one Redis."""

    def __init__(self, url: str, **config: Any) -> None:
        self.stores = [RedisPersistenceLayer(url=url), RedisPersistenceLayer(url=url)]
        self.runs = 0
        cfg = IdempotencyConfig(scope=_tenant, **config)

        async def pay(request: Request) -> Response:
            self.runs += 1
            response = JSONResponse({"run": self.runs}, status_code=201)
            response.set_cookie("session", f"secret-{self.runs}")
            response.set_cookie("csrf", f"token-{self.runs}")
            response.headers["x-order"] = "first"
            return response

        self.asgi = IdempotencyMiddleware(
            Starlette(routes=[Route("/pay", pay, methods=["POST"])]),
            persistence_store=self.stores[0],
            config=cfg,
        )
        flask_app = Flask(__name__)

        @flask_app.post("/pay")
        def flask_pay() -> Any:
            flask_request.get_data()
            self.runs += 1
            response = make_response({"run": self.runs}, 201)
            response.set_cookie("session", f"secret-{self.runs}")
            response.set_cookie("csrf", f"token-{self.runs}")
            response.headers["X-Order"] = "first"
            return response

        flask_app.wsgi_app = WSGIIdempotencyMiddleware(  # type: ignore[method-assign]
            flask_app.wsgi_app, persistence_store=self.stores[1], config=cfg
        )
        self.wsgi = flask_app

    def post(self, adapter: str, key: str, api_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
        if api_key is not None:
            headers["X-Api-Key"] = api_key
        if adapter == "asgi":

            async def call() -> httpx.Response:
                transport = httpx.ASGITransport(app=self.asgi)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    return await client.post("/pay", content=b'{"amount": 5}', headers=headers)

            r = asyncio.run(call())
            pairs = [(k.decode().lower(), v.decode()) for k, v in r.headers.raw]
            return {"status": r.status_code, "headers": pairs, "body": r.content}
        w = Client(self.wsgi).post("/pay", data=b'{"amount": 5}', headers=headers)
        pairs = [(k.lower(), v) for k, v in w.headers.to_wsgi_list()]
        return {"status": w.status_code, "headers": pairs, "body": w.get_data()}

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def harness_factory(redis_url: str) -> Iterator[Callable[..., Harness]]:
    built: list[Harness] = []

    def make(**config: Any) -> Harness:
        harness = Harness(redis_url, **config)
        built.append(harness)
        return harness

    yield make
    for harness in built:
        harness.close()


def _values(response: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in response["headers"] if k == name]


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_tenant_b_with_tenant_a_key_gets_its_own_execution(
    adapter: str, harness_factory: Callable[..., Harness], figures: Figures
) -> None:
    harness = harness_factory()
    a1 = harness.post(adapter, "shared-key", "key-of-a")
    b1 = harness.post(adapter, "shared-key", "key-of-b")
    anonymous = harness.post(adapter, "shared-key")
    a2 = harness.post(adapter, "shared-key", "key-of-a")
    b2 = harness.post(adapter, "shared-key", "key-of-b")
    assert [r["status"] for r in (a1, b1, anonymous, a2, b2)] == [201] * 5
    assert json.loads(a1["body"]) == {"run": 1}
    assert json.loads(b1["body"]) == {"run": 2}  # not tenant A's response
    assert json.loads(anonymous["body"]) == {"run": 3}
    assert a2["body"] == a1["body"] and _values(a2, "idempotent-replayed") == ["true"]
    assert b2["body"] == b1["body"] and _values(b2, "idempotent-replayed") == ["true"]
    assert harness.runs == 3
    figures("security-tenants", adapter=adapter, tenants=3, requests=5, executions=harness.runs)


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_replays_carry_no_set_cookie_by_default(
    adapter: str, harness_factory: Callable[..., Harness], figures: Figures
) -> None:
    harness = harness_factory()
    first = harness.post(adapter, "cookie-key", "key-of-a")
    replay = harness.post(adapter, "cookie-key", "key-of-a")
    assert len(_values(first, "set-cookie")) == 2
    assert _values(replay, "idempotent-replayed") == ["true"]
    assert _values(replay, "set-cookie") == []
    assert replay["body"] == first["body"]
    assert _values(replay, "x-order") == ["first"]
    figures("security-cookies", adapter=adapter, replayed_set_cookie_lines=0)


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_replays_carry_set_cookie_only_when_configured(
    adapter: str, harness_factory: Callable[..., Harness]
) -> None:
    harness = harness_factory(replay_exclude_headers=frozenset())
    first = harness.post(adapter, "cookie-key-2", "key-of-a")
    replay = harness.post(adapter, "cookie-key-2", "key-of-a")
    assert _values(replay, "idempotent-replayed") == ["true"]
    # Two Set-Cookie lines stay two lines, in order.
    assert _values(replay, "set-cookie") == _values(first, "set-cookie")
    assert len(_values(replay, "set-cookie")) == 2


# --- Corrupt records ----------------------------------------------------------------------------
def _record_name(redis: RedisProcess) -> str:
    names = [n for n in redis.cli("--raw", "KEYS", "idempotency:*").splitlines() if n]
    assert len(names) == 1, names
    return names[0]


def _raw_record(store: RedisPersistenceLayer, name: str) -> bytes:
    value = store.sync_client().get(name)
    assert isinstance(value, bytes)
    return value


def _corruptions(record: bytes) -> dict[str, bytes]:
    """Ways a record can arrive damaged (bytes 0..2: version, status, then owner...)."""
    return {
        "garbage": b"definitely not a record",
        "empty": b"",
        "header-cut": record[:10],
        "unknown-version": b"\x09" + record[1:],
        "unknown-status": record[:1] + b"Z" + record[2:],
        "hash-cut": record[:40],
        # 18 owner + 8 + 8 + 2 = 36 header bytes, then the hash, then the stored response,
        # whose own header (status, complete, header count) is cut here:
        "response-header-cut": record[: len(record) - len(record.split(b"{", 1)[1]) - 30],
    }


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_corrupt_record_answers_503_problem_never_500(
    adapter: str,
    redis_server: RedisProcess,
    harness_factory: Callable[..., Harness],
    caplog: pytest.LogCaptureFixture,
    figures: Figures,
) -> None:
    caplog.set_level(logging.ERROR, logger="idempotent_middleware")
    harness = harness_factory()
    store = harness.stores[0 if adapter == "asgi" else 1]
    first = harness.post(adapter, "corrupt-key", "key-of-a")
    assert first["status"] == 201
    name = _record_name(redis_server)
    record = _raw_record(store, name)
    answered: dict[str, int] = {}
    for label, damaged in _corruptions(record).items():
        store.sync_client().set(name, damaged)
        caplog.clear()
        for _ in range(3):  # the same answer every time: no crash loop, no state change
            response = harness.post(adapter, "corrupt-key", "key-of-a")
            assert response["status"] == 503, (label, response["status"], response["body"])
            problem = json.loads(response["body"])
            assert problem["type"].endswith("idempotency-record-corrupt"), (label, problem)
            assert _values(response, "content-type") == ["application/problem+json"]
            assert _values(response, "retry-after") == ["1"]
        assert any("corrupt" in r.getMessage() for r in caplog.records), label
        answered[label] = 503
    assert harness.runs == 1  # the handler never ran on a corrupt record
    figures(
        "security-corrupt-record",
        adapter=adapter,
        corruptions=len(answered),
        answered_503=sum(v == 503 for v in answered.values()),
        executions=harness.runs,
    )


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
@pytest.mark.parametrize("cut", ["body-cut", "body-extended"])
def test_record_cut_inside_the_body_is_detected(
    adapter: str,
    cut: str,
    redis_server: RedisProcess,
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory()
    store = harness.stores[0 if adapter == "asgi" else 1]
    first = harness.post(adapter, "cut-key", "key-of-a")
    name = _record_name(redis_server)
    record = _raw_record(store, name)
    store.sync_client().set(name, record[:-4] if cut == "body-cut" else record + b"tail")
    response = harness.post(adapter, "cut-key", "key-of-a")
    assert response["body"] != first["body"] or response["status"] == 503
    assert response["status"] == 503, (response["status"], response["body"])


def _code_only(path: Path) -> list[tuple[int, str]]:
    """The file's lines with comments and string literals blanked (docstrings say "no pickle")."""
    lines = path.read_text().splitlines()
    blanked = [list(line) for line in lines]
    with path.open("rb") as source:
        for token in tokenize.tokenize(source.readline):
            if token.type not in (tokenize.COMMENT, tokenize.STRING):
                continue
            (start_row, start_col), (end_row, end_col) = token.start, token.end
            for row in range(start_row, end_row + 1):
                line = blanked[row - 1]
                first = start_col if row == start_row else 0
                last = end_col if row == end_row else len(line)
                line[first:last] = " " * (last - first)
    return [(n, "".join(chars)) for n, chars in enumerate(blanked, 1)]


def test_package_has_no_pickle_eval_or_exec(figures: Figures) -> None:
    pattern = re.compile(
        r"\b(c?pickle|marshal|shelve|dill)\b|(?<![\w.])(eval|exec)\s*\(|literal_eval"
    )
    offenders = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, "the package was not found"
    for path in files:
        for number, line in _code_only(path):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders
    figures("security-grep", files_checked=len(files), offenders=len(offenders))
