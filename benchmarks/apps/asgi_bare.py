"""Bare FastAPI app with no idempotency layer: the ASGI baseline for every ratio."""

from common_asgi import build_app

app = build_app()
