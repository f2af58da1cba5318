"""Regressions from the review of the Django integration (issue 9): Django's startproject
middleware order (CsrfViewMiddleware before ours), DRF authenticators, uploads.

Each test asserts the behaviour the promises require; a failing test is a confirmed finding.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.django_env import needs_auth

needs_auth()

from django.contrib.auth.models import User  # noqa: E402
from django.core.files.uploadedfile import SimpleUploadedFile  # noqa: E402
from django.test import Client, override_settings  # noqa: E402

from idempotent_middleware import InMemoryPersistenceLayer  # noqa: E402
from tests.django.findings_urls import RUNS  # noqa: E402

pytestmark = pytest.mark.timeout(60)

DEFAULT_ORDER = [  # Django's startproject order, ours after AuthenticationMiddleware
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "idempotent_middleware.django.IdempotencyMiddleware",
]


@pytest.fixture(autouse=True)
def django_settings() -> Iterator[None]:
    with override_settings(
        ROOT_URLCONF="tests.django.findings_urls",
        MIDDLEWARE=DEFAULT_ORDER,
        IDEMPOTENCY={"STORE": InMemoryPersistenceLayer()},
    ):
        RUNS.clear()
        yield


def _key() -> dict[str, str]:
    return {"HTTP_IDEMPOTENCY_KEY": f"k-{uuid.uuid4()}"}


def test_multipart_form_behind_csrf_middleware_is_accepted() -> None:
    """CsrfViewMiddleware.process_view reads request.POST before ours: for multipart that
    consumes the stream without setting request._body, and our process_view then re-reads
    wsgi.input."""
    client = Client(enforce_csrf_checks=True)
    secret = "a" * 32
    client.cookies["csrftoken"] = secret
    data = {
        "csrfmiddlewaretoken": secret,
        "note": "hello",
        "doc": SimpleUploadedFile("a.txt", b"file body"),
    }
    response = client.post("/upload", data, **_key())
    assert response.status_code == 201, response.content
    assert RUNS["upload"] == 1


def test_same_pk_from_two_user_tables_do_not_share_a_record() -> None:
    """The default scope is user:<pk> whatever the user's model: a DRF authenticator that
    returns a principal from another table (API clients, service accounts) collides with
    the Django User of the same pk."""
    user = User.objects.create_user(username=f"alice-{uuid.uuid4().hex[:6]}", password="pw")
    key = _key()
    alice = Client()
    alice.force_login(user)
    first = alice.post("/transfers", b"{}", content_type="application/json", **key)
    service = Client()
    second = service.post(
        "/transfers", b"{}", content_type="application/json", HTTP_X_API_KEY=str(user.pk), **key
    )
    assert first.status_code == second.status_code == 201
    assert RUNS["transfers"] == 2, "the service account was served alice's response"
    assert b"alice" not in second.content


def test_drf_view_behind_a_plain_wrapper_is_scoped() -> None:
    """A DRF view wrapped by a decorator that does not copy attributes (no functools.wraps):
    covered by the default rule, but _drf_user finds no .cls, so token/API-key users are
    unscoped and share one record."""
    key = _key()
    one = Client().post(
        "/wrapped-transfers", b"{}", content_type="application/json", HTTP_X_API_KEY="101", **key
    )
    two = Client().post(
        "/wrapped-transfers", b"{}", content_type="application/json", HTTP_X_API_KEY="202", **key
    )
    assert one.status_code == two.status_code == 201
    assert b"service-202" in two.content
    assert RUNS["transfers"] == 2, "service-202 was served service-101's response"


def test_asgi_multipart_behind_csrf_is_fingerprinted() -> None:
    asyncio.run(_asgi_multipart())


async def _asgi_multipart() -> None:
    """Under ASGI the already-parsed multipart body reads as b"": the claim is fingerprinted
    on an empty body, so another upload under the same key is replayed the first one's
    response instead of a 422."""
    from django.test import AsyncClient

    client = AsyncClient(enforce_csrf_checks=True)
    secret = "a" * 32
    client.cookies["csrftoken"] = secret
    key = {"headers": {"Idempotency-Key": f"k-{uuid.uuid4()}"}}
    first = await client.post(
        "/upload",
        {"csrfmiddlewaretoken": secret, "note": "one", "doc": SimpleUploadedFile("a.txt", b"A")},
        **key,
    )
    second = await client.post(
        "/upload",
        {"csrfmiddlewaretoken": secret, "note": "two", "doc": SimpleUploadedFile("b.txt", b"B")},
        **key,
    )
    assert first.status_code == 201
    assert second.status_code == 422, "a different upload under the same key was replayed"


class _InterruptedOnce(InMemoryPersistenceLayer):
    """The completion write is interrupted once (Ctrl-C, or a signal handler's exception)
    before it reaches the store; the process goes on."""

    interrupted = False

    def _update_record(self, data_record: Any) -> None:
        if not self.interrupted and data_record.response_data:
            type(self).interrupted = True
            raise KeyboardInterrupt
        super()._update_record(data_record)


def test_interrupted_completion_write_never_frees_the_key() -> None:
    import time

    from django.test import override_settings as again

    store = _InterruptedOnce()
    idem = {"STORE": store, "LEASE_SECONDS": 0.2, "MAX_LEASE_HOLD_SECONDS": 0.6}
    with again(IDEMPOTENCY=idem, MIDDLEWARE=DEFAULT_ORDER[-1:]):
        key = _key()
        client = Client()
        with pytest.raises(KeyboardInterrupt):
            client.post("/upload", b"{}", content_type="application/json", **key)
        assert RUNS["upload"] == 1
        held = client.post("/upload", b"{}", content_type="application/json", **key)
        time.sleep(1.5)  # past max_lease_hold_seconds and one lease
        retry = client.post("/upload", b"{}", content_type="application/json", **key)
        assert held.status_code in (201, 409)  # replayed, or in progress until the lease writes
        assert RUNS["upload"] == 1, "the handler ran a second time under the same key"
        assert retry.status_code == 201
        assert retry.get("Idempotent-Replayed") == "true"


def test_data_upload_max_memory_size_still_applies() -> None:
    """Django refuses request.body past DATA_UPLOAD_MAX_MEMORY_SIZE (RequestDataTooBig, a
    400); we set request._body ourselves, so Django no longer checks it: we apply it (413)."""
    from django.test import override_settings as again

    body = b'{"pad": "' + b"x" * 5000 + b'"}'
    with again(DATA_UPLOAD_MAX_MEMORY_SIZE=1000, MIDDLEWARE=DEFAULT_ORDER[-1:]):
        plain = Client().post("/echo", body, content_type="application/json")
        keyed = Client().post("/echo", body, content_type="application/json", **_key())
    assert plain.status_code == 400  # Django's RequestDataTooBig
    assert keyed.status_code == 413  # ours, before anything is claimed
    assert keyed["Content-Type"] == "application/problem+json"
    assert RUNS["echo"] == 1  # the unkeyed request only


def test_drf_authenticators_run_once_per_request() -> None:
    """To scope a DRF view, process_view instantiates the view and runs its authenticators;
    the view then runs them again. Authenticators with side effects (one-time nonces, HMAC
    replay caches, last-used stamps, auth rate limits) see every keyed request twice."""
    Client().post(
        "/key-only", b"{}", content_type="application/json", HTTP_X_API_KEY="55", **_key()
    )
    assert RUNS["authenticate"] == 1


def test_token_client_is_not_turned_into_a_session_user() -> None:
    """_drf_user authenticates through a DRF Request, whose user setter also sets Django's
    request.user; the view's SessionAuthentication then finds that active user on the Django
    request, treats the token client as session-authenticated and enforces CSRF: 403.
    A real API client sends no CSRF token (enforce_csrf_checks=True as a real client)."""
    from rest_framework.authtoken.models import Token

    user = User.objects.create_user(username=f"tok-{uuid.uuid4().hex[:6]}", password="pw")
    token = Token.objects.create(user=user).key
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Token {token}")
    plain = client.post("/token-orders", b"{}", content_type="application/json")
    key = _key()
    keyed = client.post("/token-orders", b"{}", content_type="application/json", **key)
    retry = client.post("/token-orders", b"{}", content_type="application/json", **key)
    assert keyed.status_code == plain.status_code == 201
    assert retry.get("Idempotent-Replayed") == "true"


def test_non_django_principal_with_session_authentication_first_is_not_a_500() -> None:
    """The same leak with a principal that is not a Django user (an API-key object): the
    view's SessionAuthentication reads request._request.user.is_active from it: 500."""
    response = Client(raise_request_exception=False).post(
        "/transfers", b"{}", content_type="application/json", HTTP_X_API_KEY="77", **_key()
    )
    plain = Client(raise_request_exception=False).post(
        "/transfers", b"{}", content_type="application/json", HTTP_X_API_KEY="77"
    )
    assert response.status_code == plain.status_code == 201


def test_principal_from_another_table_via_drf_is_scoped_by_its_model() -> None:
    """As above with no credential header (the API key in the query string): the DRF
    authenticators are asked, and the ServiceAccount of pk N is not the User of pk N."""
    user = User.objects.create_user(username=f"bob-{uuid.uuid4().hex[:6]}", password="pw")
    key = _key()
    bob = Client()
    bob.force_login(user)
    first = bob.post("/query-transfers", b"{}", content_type="application/json", **key)
    second = Client().post(
        f"/query-transfers?api_key={user.pk}", b"{}", content_type="application/json", **key
    )
    assert first.status_code == second.status_code == 201
    assert RUNS["transfers"] == 2
    assert b"bob" not in second.content


def test_drf_principal_does_not_leak_onto_the_django_request() -> None:
    """The DRF authenticators asked for the scope leave Django's request.user as it was: the
    view's SessionAuthentication (first) does not read Django-user fields off a service
    account (a 500 before)."""
    response = Client(raise_request_exception=False).post(
        "/query-transfers?api_key=77", b"{}", content_type="application/json", **_key()
    )
    assert response.status_code == 201, response.content
    assert b"service-77" in response.content


def test_body_read_before_our_middleware_is_refused_not_fingerprinted() -> None:
    asyncio.run(_read_before_us())


async def _read_before_us() -> None:
    """A middleware outside ours parses the multipart body (request.POST) and keeps no bytes:
    an empty fingerprint would let another upload share the key; a 400 problem instead."""
    from django.test import AsyncClient

    with override_settings(
        MIDDLEWARE=["tests.django.findings_urls.ReadsPost", *DEFAULT_ORDER[-1:]]
    ):
        response = await AsyncClient().post(
            "/upload", {"doc": SimpleUploadedFile("a.txt", b"A")}, **_asgi_key()
        )
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert RUNS["upload"] == 0


def _asgi_key() -> dict[str, Any]:
    return {"headers": {"Idempotency-Key": f"k-{uuid.uuid4()}"}}


def test_user_scope_names_the_model() -> None:
    from idempotent_middleware.django import USER_ATTRIBUTE, user_scope
    from idempotent_middleware.http.request import HttpRequest
    from tests.django.findings_urls import ServiceAccount

    class Raw:
        pass

    user_request, service_request = Raw(), Raw()
    setattr(user_request, USER_ATTRIBUTE, User(pk=1))
    setattr(service_request, USER_ATTRIBUTE, ServiceAccount(1, "s"))
    scopes = [
        user_scope(HttpRequest("POST", "/", b"", [], raw))
        for raw in (user_request, service_request)
    ]
    assert scopes == ["user:auth.user:1", "user:tests.django.findings_urls.ServiceAccount:1"]
