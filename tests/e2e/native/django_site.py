"""A Django project in one module for the real-server tests of the Django integration.

Sessions (signed cookies: every worker reads them without a shared session table), auth on a
SQLite file (``NATIVE_DJANGO_DB``), DRF token auth, and ``IdempotencyMiddleware`` after
``AuthenticationMiddleware`` on the suite's Redis (``REDIS_URL``). Runs are counted in Redis
per view, key and user, so the test sees every worker's executions.

``python -m tests.e2e.native.django_site setup`` creates the tables, two users and their
tokens (printed as JSON) before the servers start.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import uuid
from typing import Any

import django
import redis
from django.conf import settings

if not settings.configured:
    settings.configure(
        SECRET_KEY="e2e-only-not-a-secret",
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "rest_framework",
            "rest_framework.authtoken",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "idempotent_middleware.django.IdempotencyMiddleware",
        ],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.environ.get("NATIVE_DJANGO_DB", "native.sqlite3"),
            }
        },
        ROOT_URLCONF=__name__,
        USE_TZ=True,
        IDEMPOTENCY={"STORE": os.environ.get("REDIS_URL", "memory://"), "LEASE_SECONDS": 10},
        REST_FRAMEWORK={"UNAUTHENTICATED_USER": None},
        # Errors to the server log (the test attaches it to a failure).
        LOGGING={
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"console": {"class": "logging.StreamHandler"}},
            "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
        },
    )
    django.setup()

from django.contrib.auth import authenticate, login
from django.http import FileResponse, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.http import require_GET, require_POST
from rest_framework.authentication import TokenAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from idempotent_middleware.django import idempotent, idempotent_exempt

_counter = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


def runs_key(view: str, key: str | None, user: str | None) -> str:
    return f"native:runs:{view}:{key}:{user}"


def _run(view: str, request: Any) -> dict[str, Any]:
    user = request.user.username if request.user and request.user.is_authenticated else None
    key = request.headers.get("Idempotency-Key")
    run = int(_counter.incr(runs_key(view, key, user)))
    time.sleep(float(request.GET.get("sleep", "0")))
    return {"view": view, "user": user, "run": run, "id": uuid.uuid4().hex}


@require_POST
@idempotent_exempt
def log_in(request: Any) -> JsonResponse:
    user = authenticate(request, username=request.POST["username"], password="pw")
    if user is None:
        return JsonResponse({"ok": False}, status=403)
    login(request, user)
    return JsonResponse({"ok": True})


@require_POST
def orders(request: Any) -> JsonResponse:
    return JsonResponse(_run("orders", request), status=201)


@require_POST
@idempotent(raise_on_no_idempotency_key=True)
def required(request: Any) -> JsonResponse:
    return JsonResponse(_run("required", request), status=201)


@require_POST
@idempotent_exempt
def exempt(request: Any) -> JsonResponse:
    return JsonResponse(_run("exempt", request), status=201)


class ApiOrders(APIView):
    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]

    @idempotent(raise_on_no_idempotency_key=True)
    def post(self, request: Any) -> Response:
        return Response(_run("api", request), status=201)


@require_POST
def file(request: Any) -> FileResponse:
    """A FileResponse (sendfile under gunicorn when not covered): 64 KiB, streamed."""
    body = json.dumps(_run("file", request)).encode().ljust(64 * 1024, b" ")
    return FileResponse(io.BytesIO(body), content_type="application/octet-stream", status=201)


@require_GET
def healthz(request: Any) -> HttpResponse:
    return HttpResponse(b'{"ok": true}', content_type="application/json")


urlpatterns = [
    path("login", log_in),
    path("orders", orders),
    path("required", required),
    path("exempt", exempt),
    path("api/orders", ApiOrders.as_view()),
    path("file", file),
    path("healthz", healthz),
]

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

wsgi_app = get_wsgi_application()
asgi_app = get_asgi_application()


def setup() -> dict[str, str]:
    """Tables, users ``alice`` and ``bob`` (password ``pw``) and their DRF tokens."""
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    call_command("migrate", run_syncdb=True, verbosity=0)
    tokens = {}
    for name in ("alice", "bob"):
        user, _ = User.objects.get_or_create(username=name)
        user.set_password("pw")
        user.save()
        tokens[name] = Token.objects.get_or_create(user=user)[0].key
    return tokens


if __name__ == "__main__" and sys.argv[1:] == ["setup"]:
    print(json.dumps(setup()))
