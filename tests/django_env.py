"""One Django configuration for every in-process Django test (settings are process-wide).

Auth, sessions and DRF's token app on an in-memory SQLite database, so that the integration
meets real users. Tests pick their URLs per request (``request.urlconf``, set by
``UrlconfMiddleware``) and build their handlers under ``override_settings``; nothing else is
changed globally, so the examples' own settings-free views work in the same process.
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

import pytest

_lock = threading.Lock()
_ready = False

APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "rest_framework",
    "rest_framework.authtoken",
]


def ensure_django() -> None:
    """Configure Django once (unless some other test did), create the tables once."""
    global _ready
    pytest.importorskip("django")
    with _lock:
        if _ready:
            return
        import django
        from django.conf import settings

        if not settings.configured:
            settings.configure(
                SECRET_KEY="tests-only",
                DEBUG=False,
                ALLOWED_HOSTS=["*"],
                INSTALLED_APPS=APPS,
                MIDDLEWARE=[],
                DATABASES={
                    "default": {
                        "ENGINE": "django.db.backends.sqlite3",
                        "NAME": os.path.join(tempfile.mkdtemp(prefix="idem-django-"), "db.sqlite3"),
                    }
                },
                ROOT_URLCONF="examples.django_app.urls",
                USE_TZ=True,
                REST_FRAMEWORK={"UNAUTHENTICATED_USER": None},
            )
            django.setup()
        from django.apps import apps

        if apps.is_installed("django.contrib.auth") and settings.DATABASES:
            from django.core.management import call_command

            call_command("migrate", run_syncdb=True, verbosity=0)
        _ready = True


def needs_auth() -> None:
    ensure_django()
    from django.apps import apps

    if not apps.is_installed("rest_framework.authtoken"):
        pytest.skip("Django was configured without auth by an earlier test in this process")


class UrlconfMiddleware:
    """Route this handler's requests with ``urlconf`` (a per-handler ROOT_URLCONF); sync and
    async like the integration, so that it adds no thread hop in front of it."""

    sync_capable = True
    async_capable = True
    urlconf = ""

    def __init__(self, get_response: Any) -> None:
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        request.urlconf = self.urlconf
        if self.async_mode:
            return self._acall(request)
        return self.get_response(request)

    async def _acall(self, request: Any) -> Any:
        return await self.get_response(request)


def urlconf_middleware(urlconf: str) -> str:
    """A dotted path to a middleware class that routes with ``urlconf``."""
    name = "Urlconf_" + urlconf.replace(".", "_")
    if name not in globals():
        globals()[name] = type(name, (UrlconfMiddleware,), {"urlconf": urlconf})
    return f"{__name__}.{name}"


def build_handler(kind: str, urlconf: str, middleware: list[str], idempotency: Any) -> Any:
    """A Django WSGI or ASGI handler with its own middleware chain and settings.IDEMPOTENCY
    (read while it is built: the integration keeps the engine it got)."""
    ensure_django()
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings

    with (
        _lock,
        override_settings(
            MIDDLEWARE=[urlconf_middleware(urlconf), *middleware], IDEMPOTENCY=idempotency
        ),
    ):
        return WSGIHandler() if kind == "wsgi" else ASGIHandler()
