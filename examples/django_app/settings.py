"""The one settings module of the Django example (no database, no apps, no CSRF middleware).

Secrets and hosts come from the environment in a real deployment; the defaults here are for
running the example on a laptop.
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]

# A JSON API without sessions or cookies: nothing needs CSRF protection or a database.
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}

ROOT_URLCONF = "examples.django_app.urls"
# ``runserver`` serves this too, so the dev server runs behind the idempotency middleware.
WSGI_APPLICATION = "examples.django_app.wsgi.application"

USE_TZ = True
