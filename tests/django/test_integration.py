"""The Django integration in process: Django's test client, AsyncClient and RequestFactory.

Real sessions and real DRF tokens on SQLite; the handler's middleware chain is Django's own
(SessionMiddleware, AuthenticationMiddleware, then ours), built from settings as in a project.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.django_env import needs_auth

needs_auth()

from asgiref.sync import iscoroutinefunction  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.test import AsyncClient, Client, RequestFactory, override_settings  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

from idempotent_middleware import IdempotencyConfig, InMemoryPersistenceLayer  # noqa: E402
from idempotent_middleware.django import IdempotencyMiddleware, user_scope  # noqa: E402
from tests.django.app import RUNS, body  # noqa: E402

pytestmark = pytest.mark.timeout(60)

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "idempotent_middleware.django.IdempotencyMiddleware",
]
JSON = "application/json"
ORDER = b'{"sku": "abc", "qty": 1}'


@pytest.fixture
def store() -> InMemoryPersistenceLayer:
    return InMemoryPersistenceLayer()


@pytest.fixture(autouse=True)
def django_settings(store: InMemoryPersistenceLayer) -> Iterator[dict[str, Any]]:
    idempotency: dict[str, Any] = {"STORE": store}
    with override_settings(
        ROOT_URLCONF="tests.django.app", MIDDLEWARE=MIDDLEWARE, IDEMPOTENCY=idempotency
    ):
        RUNS.clear()
        yield idempotency


def _user(name: str) -> User:
    user, _ = User.objects.get_or_create(username=name)
    user.set_password("pw")
    user.save()
    return user


def _key() -> dict[str, str]:
    return {"HTTP_IDEMPOTENCY_KEY": f"k-{uuid.uuid4()}"}


def _post(client: Client, path: str, key: dict[str, str], data: bytes = ORDER, **extra: Any) -> Any:
    return client.post(path, data, content_type=JSON, **key, **extra)


# --- coverage, replay, per-view options ------------------------------------------------------
def test_function_view_runs_once_and_replays() -> None:
    client, key = Client(), _key()
    first = _post(client, "/plain", key)
    again = _post(client, "/plain", key)
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert RUNS["plain"] == 1
    other = _post(client, "/plain", key, b'{"sku": "abc", "qty": 2}')
    assert other.status_code == 422
    assert other["Content-Type"] == "application/problem+json"
    assert RUNS["plain"] == 1


def test_required_decorator_answers_400_without_a_key() -> None:
    client = Client()
    missing = client.post("/required", ORDER, content_type=JSON)
    assert missing.status_code == 400
    assert RUNS["required"] == 0
    plain = client.post("/plain", ORDER, content_type=JSON)  # not required: runs, not stored
    assert plain.status_code == 201


def test_exempt_view_runs_every_time() -> None:
    client, key = Client(), _key()
    for _ in range(3):
        assert _post(client, "/exempt", key).status_code == 201
    assert RUNS["exempt"] == 3


def test_methods_option_covers_only_its_methods() -> None:
    client, key = Client(), _key()
    for _ in range(2):
        client.post("/put-only", ORDER, content_type=JSON, **key)
    assert RUNS["put_only"] == 2  # POST is not covered on this view
    for _ in range(2):
        client.put("/put-only", ORDER, content_type=JSON, **key)
    assert RUNS["put_only"] == 3


@pytest.mark.parametrize(
    ("path", "name", "covered", "required"),
    [
        ("/cbv", "cbv", True, False),
        ("/cbv-required", "cbv_required", True, True),
        ("/cbv-exempt", "cbv_exempt", False, False),
    ],
)
def test_class_based_views(path: str, name: str, covered: bool, required: bool) -> None:
    client, key = Client(), _key()
    if required:
        assert client.post(path, ORDER, content_type=JSON).status_code == 400
    _post(client, path, key)
    _post(client, path, key)
    assert RUNS[name] == (1 if covered else 2)


def test_drf_apiview_viewset_and_action() -> None:
    token = Token.objects.get_or_create(user=_user("drf"))[0].key
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.post("/api/orders", ORDER, content_type=JSON).status_code == 400
    assert client.post("/api/viewset", ORDER, content_type=JSON).status_code == 400
    assert client.post("/api/function", ORDER, content_type=JSON).status_code == 400
    for path, name, expected in [
        ("/api/orders", "api", 1),
        ("/api/viewset", "viewset_create", 1),
        ("/api/viewset/preview", "viewset_preview", 2),
        ("/api/exempt", "api_exempt", 2),
        ("/api/function", "api_function", 1),
    ]:
        key = _key()
        replies = [_post(client, path, key) for _ in range(2)]
        assert RUNS[name] == expected, path
        assert replies[0].status_code in (200, 201)
        if expected == 1:
            assert replies[1]["Idempotent-Replayed"] == "true"


# --- the scope: the authenticated user ------------------------------------------------------
def test_session_users_never_share_a_key() -> None:
    alice, bob = Client(), Client()
    alice.force_login(_user("alice"))
    bob.force_login(_user("bob"))
    key = _key()
    a1 = _post(alice, "/plain", key)
    b1 = _post(bob, "/plain", key)
    a2 = _post(alice, "/plain", key)
    assert body(a1)["user"] == "alice" and body(b1)["user"] == "bob"
    assert RUNS["plain"] == 2
    assert a2["Idempotent-Replayed"] == "true" and a2.content == a1.content
    anonymous = _post(Client(), "/plain", key)  # no user: a third scope
    assert body(anonymous)["user"] is None
    assert RUNS["plain"] == 3


def test_drf_token_users_never_share_a_key() -> None:
    # DRF authenticates inside the view: request.user is anonymous in process_view, so the
    # integration asks the view's authenticators (else both users would share one record).
    tokens = [Token.objects.get_or_create(user=_user(n))[0].key for n in ("tok-a", "tok-b")]
    a, b = (Client(HTTP_AUTHORIZATION=f"Token {t}") for t in tokens)
    key = _key()
    a1, b1, a2 = (
        _post(a, "/api/orders", key),
        _post(b, "/api/orders", key),
        _post(a, "/api/orders", key),
    )
    assert (a1.status_code, b1.status_code, a2.status_code) == (201, 201, 201)
    assert body(a1)["user"] == "tok-a" and body(b1)["user"] == "tok-b"
    assert a2.content == a1.content and a2["Idempotent-Replayed"] == "true"
    assert RUNS["api"] == 2


def test_scope_setting_replaces_the_user_scope(django_settings: dict[str, Any]) -> None:
    django_settings["SCOPE"] = None  # scoping off: users share keys (the settings' choice)
    alice, bob = Client(), Client()
    alice.force_login(_user("alice"))
    bob.force_login(_user("bob"))
    key = _key()
    first = _post(alice, "/plain", key)
    shared = _post(bob, "/plain", key)
    assert RUNS["plain"] == 1 and shared.content == first.content


def test_user_scope_of_anonymous_request_is_none() -> None:
    from idempotent_middleware.http.request import HttpRequest

    assert user_scope(HttpRequest("POST", "/", b"", [], object())) is None


# --- streaming and files -------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/streamed", "/file"])
def test_streaming_and_file_responses_are_captured_and_replayed(path: str) -> None:
    client, key = Client(), _key()
    first = _post(client, path, key)
    original = b"".join(first.streaming_content)
    first.close()
    again = _post(client, path, key)
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == original
    assert RUNS[path.strip("/")] == 1


def test_r4_header_copy_error_records_the_view_instead_of_holding_the_key() -> None:
    """A cookie value outside Latin-1 made the header copy raise outside the recording try:
    the claim stayed renewed for nobody (409 in progress until the hold cap)."""
    client, key = Client(), _key()
    first = _post(client, "/cookie-outside-latin1", key)
    assert first.status_code == 201  # the view's response, passed through
    # A fresh client: Django's test client cannot send such a cookie back.
    again = _post(Client(), "/cookie-outside-latin1", key)
    assert RUNS["cookie_outside_latin1"] == 1
    assert again.status_code == 409
    assert json.loads(again.content)["type"].endswith("/idempotency-response-not-replayable")


def test_stream_closed_early_is_recorded_not_replayable() -> None:
    """A generator body closed early is closed, not drained (its next chunk may never come):
    executed, not replayable."""
    client, key = Client(), _key()
    first = _post(client, "/streamed", key)
    iterator = iter(first.streaming_content)
    next(iterator)  # the client reads one chunk and leaves
    first.close()
    again = _post(client, "/streamed", key)
    assert RUNS["streamed"] == 1  # never a second run
    assert again.status_code == 409
    assert json.loads(again.content)["type"].endswith("/idempotency-response-not-replayable")


# --- body limits as in the adapters --------------------------------------------------------
def test_body_over_the_cap_is_413_and_not_claimed(django_settings: dict[str, Any]) -> None:
    django_settings["MAX_REQUEST_BODY_BYTES"] = 16
    client, key = Client(), _key()
    assert _post(client, "/plain", key).status_code == 413
    assert RUNS["plain"] == 0


def _middleware() -> IdempotencyMiddleware:
    def view_response(request: Any) -> Any:
        raise AssertionError("not reached")

    return IdempotencyMiddleware(view_response)


def test_chunked_body_without_length_is_411() -> None:
    from tests.django.app import plain

    request = RequestFactory().post(
        "/plain", b"", content_type=JSON, HTTP_TRANSFER_ENCODING="chunked", **_key()
    )
    request.META.pop("CONTENT_LENGTH", None)
    response = _middleware().process_view(request, plain, (), {})
    assert response.status_code == 411
    assert response["Content-Type"] == "application/problem+json"


def test_cut_body_is_400() -> None:
    from tests.django.app import plain

    request = RequestFactory().post("/plain", ORDER, content_type=JSON, **_key())
    request.META["CONTENT_LENGTH"] = str(len(ORDER) + 10)  # announced more than was sent
    response = _middleware().process_view(request, plain, (), {})
    assert response.status_code == 400


# --- async mode -----------------------------------------------------------------------------
def test_async_mode_is_one_class_with_coroutine_hooks() -> None:
    async def get_response(request: Any) -> Any:
        return None

    middleware = IdempotencyMiddleware(get_response)
    assert iscoroutinefunction(middleware)
    assert iscoroutinefunction(middleware.process_view)
    sync = _middleware()
    assert not iscoroutinefunction(sync) and not iscoroutinefunction(sync.process_view)


def test_async_client_runs_async_views_once_on_the_loop_thread() -> None:
    seen: list[int] = []
    original = IdempotencyMiddleware._process_view_async

    async def spy(self: Any, *args: Any) -> Any:
        seen.append(threading.get_ident())
        return await original(self, *args)

    async def main() -> None:
        loop_thread = threading.get_ident()
        client = AsyncClient()
        key = {"headers": {"Idempotency-Key": f"k-{uuid.uuid4()}"}}  # AsyncClient's way
        first = await client.post("/async", ORDER, content_type=JSON, **key)
        again = await client.post("/async", ORDER, content_type=JSON, **key)
        assert first.status_code == 201 and again["Idempotent-Replayed"] == "true"
        stream = await client.post("/streamed-async", ORDER, content_type=JSON, **key)
        chunks = b"".join([c async for c in stream.streaming_content])
        replay = await client.post("/streamed-async", ORDER, content_type=JSON, **key)
        assert replay.content == chunks and replay["Idempotent-Replayed"] == "true"
        assert seen and set(seen) == {loop_thread}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(IdempotencyMiddleware, "_process_view_async", spy)
        asyncio.run(main())
    assert RUNS["async_view"] == 1 and RUNS["streamed_async"] == 1


def test_concurrent_duplicates_run_once() -> None:
    key = _key()
    statuses: list[int] = []

    def send() -> None:
        statuses.append(_post(Client(), "/plain", key).status_code)

    threads = [threading.Thread(target=send) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert RUNS["plain"] == 1
    assert set(statuses) <= {201, 409} and statuses.count(201) >= 1


def test_settings_from_a_config_object(django_settings: dict[str, Any]) -> None:
    django_settings["CONFIG"] = IdempotencyConfig(header_name="X-Request-Key")
    client = Client()
    key = {"HTTP_X_REQUEST_KEY": "abc"}
    _post(client, "/plain", key)
    _post(client, "/plain", key)
    assert RUNS["plain"] == 1


def test_async_stream_left_early_is_recorded_executed_never_run_again() -> None:
    # Under ASGI the client leaves after one chunk: the handler ran, so the key is recorded
    # (executed, not replayable) when Django closes the response; a retry never runs it again.
    async def main() -> tuple[int, int]:
        client = AsyncClient()
        key = {"headers": {"Idempotency-Key": f"k-{uuid.uuid4()}"}}
        stream = await client.post("/streamed-async", ORDER, content_type=JSON, **key)
        content = stream.streaming_content
        await content.__anext__()  # one chunk, then the client is gone
        await content.aclose()
        stream.close()
        await asyncio.sleep(0.05)  # the record scheduled from close() runs on this loop
        retry = await client.post("/streamed-async", ORDER, content_type=JSON, **key)
        return retry.status_code, RUNS["streamed_async"]

    status, runs = asyncio.run(main())
    assert runs == 1
    assert status != 201  # not replayable (a problem), and not a second execution


def test_disable_switch_runs_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEMPOTENCY_DISABLED", "true")
    client, key = Client(), _key()
    for _ in range(2):
        _post(client, "/plain", key)
    assert RUNS["plain"] == 2


def test_rev10b_scope_hook_writing_meta_leaves_the_headers_as_they_came(
    django_settings: dict[str, Any],
) -> None:
    """Review rev10b: read lazily, the headers were built after a scope hook (or a DRF
    authenticator) wrote META, so the key and fingerprint depended on what it left there."""
    seen: list[dict[bytes, bytes]] = []

    def scope(request: Any) -> str | None:
        request.raw.META.pop("HTTP_AUTHORIZATION", None)  # kept from the view
        seen.append(dict(request.headers))
        return None

    django_settings["SCOPE"] = scope
    _post(Client(), "/plain", _key(), HTTP_AUTHORIZATION="Bearer t-1")
    assert len(seen) == 1 and seen[0].get(b"authorization") == b"Bearer t-1"
