"""The one settings module of the Django example (no database, no apps, no CSRF middleware).

Secrets and hosts come from the environment in a real deployment; the defaults here are for
running the example on a laptop.
"""

from __future__ import annotations

import os

from examples.django_app.idempotency import store

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]

# A JSON API without sessions or cookies: nothing needs CSRF protection or a database.
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}

# In a project with users, the middleware goes after AuthenticationMiddleware: keys are then
# scoped by ``request.user`` (two users never share a record).
MIDDLEWARE = [
    # "django.contrib.sessions.middleware.SessionMiddleware",
    # "django.contrib.auth.middleware.AuthenticationMiddleware",
    "idempotent_middleware.django.IdempotencyMiddleware",
]

# The store (a store object, or a URL such as "redis://127.0.0.1:6379/0") and any
# IdempotencyConfig option by name. Per-view options are on the views (``@idempotent``).
IDEMPOTENCY = {"STORE": store, "LEASE_SECONDS": 10}

ROOT_URLCONF = "examples.django_app.urls"
WSGI_APPLICATION = "examples.django_app.wsgi.application"
ASGI_APPLICATION = "examples.django_app.asgi.application"

USE_TZ = True
