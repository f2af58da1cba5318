"""Bare Flask app with no idempotency layer: the WSGI baseline for every ratio."""

from common_wsgi import build_app

app = build_app()
