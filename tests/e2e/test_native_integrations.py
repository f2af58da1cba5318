"""The Django and Flask integrations under real servers, with real logins, on real Redis.

Django under gunicorn (WSGI, sync mode) and uvicorn (ASGI, async mode), Flask under gunicorn;
two workers each. User A and user B send the same key with the same body: both handlers run,
each gets only its own response, and A's retry replays A's (Django sessions, DRF tokens, a
Flask-Login session). Fifty concurrent duplicates run the view once. Per-view ``required`` and
``exempt`` decorators are honoured.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from tests.e2e.conftest import CLIENT_TIMEOUT_SECONDS, REPO_ROOT, Server, start_server
from tests.redis_servers import RedisProcess

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

ORDER = {"sku": "abc", "qty": 1}
DUPLICATES = 50


@dataclass
class Site:
    name: str
    server: Server
    counter: redis.Redis
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.server.base_url

    def runs(self, view: str, key: str, user: str | None) -> int:
        return int(self.counter.get(f"native:runs:{view}:{key}:{user}") or 0)


DEPLOYMENTS = {
    "django-gunicorn": ("gunicorn", "tests.e2e.native.django_site:wsgi_app", "django"),
    "django-uvicorn": ("uvicorn", "tests.e2e.native.django_site:asgi_app", "django"),
    "flask-gunicorn": ("gunicorn", "tests.e2e.native.flask_site:app", "flask"),
}


@pytest.fixture(scope="module", params=list(DEPLOYMENTS))
def site(
    request: pytest.FixtureRequest,
    redis_server: RedisProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    kind, target, framework = DEPLOYMENTS[request.param]
    pytest.importorskip(framework)
    pytest.importorskip("rest_framework" if framework == "django" else "flask_login")
    logs = tmp_path_factory.mktemp(f"native-{request.param}")
    saved = os.environ.get("NATIVE_DJANGO_DB")
    os.environ["NATIVE_DJANGO_DB"] = str(logs / "db.sqlite3")
    tokens: dict[str, str] = {}
    try:
        if framework == "django":
            done = subprocess.run(
                [sys.executable, "-m", "tests.e2e.native.django_site", "setup"],
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "REDIS_URL": redis_server.url},
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            tokens = json.loads(done.stdout.strip().splitlines()[-1])
        server = start_server(
            request.param, kind, target, workers=2, log_dir=logs, redis_url=redis_server.url
        )
    finally:
        if saved is None:
            os.environ.pop("NATIVE_DJANGO_DB", None)
        else:
            os.environ["NATIVE_DJANGO_DB"] = saved
    counter = redis.Redis.from_url(redis_server.url)
    try:
        yield Site(request.param, server, counter, tokens)
    finally:
        counter.close()
        server.stop()


@contextlib.contextmanager
def _logged_in(site: Site, name: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.base, timeout=CLIENT_TIMEOUT_SECONDS) as client:
        reply = client.post("/login", data={"username": name, "password": "pw"})
        assert reply.status_code == 200, reply.text
        assert client.cookies, "the login set no session cookie"
        yield client


def _key() -> str:
    return f"native-{uuid.uuid4()}"


def _cross_user(site: Site, a: httpx.Client, b: httpx.Client, path: str, view: str) -> None:
    key = _key()
    headers = {"Idempotency-Key": key}
    a1 = a.post(path, json=ORDER, headers=headers)
    b1 = b.post(path, json=ORDER, headers=headers)
    a2 = a.post(path, json=ORDER, headers=headers)
    b2 = b.post(path, json=ORDER, headers=headers)
    assert [r.status_code for r in (a1, b1, a2, b2)] == [201] * 4, [r.text for r in (a1, b1)]
    assert a1.json()["user"] == "alice" and b1.json()["user"] == "bob"
    assert a1.json()["id"] != b1.json()["id"]
    # Both handlers ran, once each; each retry replays its own user's response.
    assert site.runs(view, key, "alice") == 1 and site.runs(view, key, "bob") == 1
    assert a2.headers.get("idempotent-replayed") == "true" and a2.content == a1.content
    assert b2.headers.get("idempotent-replayed") == "true" and b2.content == b1.content
    print(
        f"{site.name} {path}: alice run={a1.json()['run']} id={a1.json()['id'][:8]}, "
        f"bob run={b1.json()['run']} id={b1.json()['id'][:8]}, alice retry replayed="
        f"{a2.headers.get('idempotent-replayed')} same bytes={a2.content == a1.content}"
    )


def test_two_logged_in_users_same_key_same_body(site: Site) -> None:
    with _logged_in(site, "alice") as a, _logged_in(site, "bob") as b:
        _cross_user(site, a, b, "/orders", "orders")


def test_two_drf_token_users_same_key_same_body(site: Site) -> None:
    if not site.tokens:
        pytest.skip("DRF token auth is a Django deployment's")
    clients = [
        httpx.Client(
            base_url=site.base,
            timeout=CLIENT_TIMEOUT_SECONDS,
            headers={"Authorization": f"Token {site.tokens[name]}"},
        )
        for name in ("alice", "bob")
    ]
    with clients[0] as a, clients[1] as b:
        _cross_user(site, a, b, "/api/orders", "api")


def test_fifty_concurrent_duplicates_run_once(site: Site) -> None:
    key = _key()
    with _logged_in(site, "alice") as login:
        cookies = dict(login.cookies)

    def send(_: int) -> httpx.Response:
        with httpx.Client(
            base_url=site.base, timeout=CLIENT_TIMEOUT_SECONDS, cookies=cookies
        ) as client:
            return client.post("/orders?sleep=0.3", json=ORDER, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(max_workers=DUPLICATES) as pool:
        replies = list(pool.map(send, range(DUPLICATES)))
    statuses = [r.status_code for r in replies]
    assert all(s in (201, 409) for s in statuses), statuses
    assert site.runs("orders", key, "alice") == 1
    executed = [
        r for r in replies if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    replayed = [r for r in replies if r.headers.get("idempotent-replayed") == "true"]
    assert len(executed) <= 1
    assert all(r.content == replayed[0].content for r in replayed)
    with httpx.Client(base_url=site.base, timeout=CLIENT_TIMEOUT_SECONDS, cookies=cookies) as c:
        final = c.post("/orders?sleep=0.3", json=ORDER, headers={"Idempotency-Key": key})
    assert final.headers.get("idempotent-replayed") == "true", (
        final.status_code,
        final.text,
        statuses,
    )
    assert final.json()["user"] == "alice" and final.json()["run"] == 1
    print(
        f"{site.name}: {DUPLICATES} duplicates -> executed {len(executed)}, replayed "
        f"{len(replayed)}, 409 {statuses.count(409)}; handler runs 1"
    )


def test_per_view_required_and_exempt(site: Site) -> None:
    with httpx.Client(base_url=site.base, timeout=CLIENT_TIMEOUT_SECONDS) as client:
        missing = client.post("/required", json=ORDER)
        assert missing.status_code == 400
        assert missing.headers["content-type"] == "application/problem+json"
        key = _key()
        for _ in range(2):
            assert (
                client.post("/required", json=ORDER, headers={"Idempotency-Key": key}).status_code
                == 201
            )
        assert site.runs("required", key, None) == 1
        for _ in range(3):
            assert (
                client.post("/exempt", json=ORDER, headers={"Idempotency-Key": key}).status_code
                == 201
            )
        assert site.runs("exempt", key, None) == 3


def test_streamed_and_file_bodies_replay_whole(site: Site) -> None:
    # Django: a FileResponse; Flask: a streamed generator. Captured while they stream.
    with _logged_in(site, "alice") as client:
        key = _key()
        first = client.post("/file", json=ORDER, headers={"Idempotency-Key": key})
        again = client.post("/file", json=ORDER, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert len(first.content) == 64 * 1024
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.content == first.content
    assert site.runs("file", key, "alice") == 1
