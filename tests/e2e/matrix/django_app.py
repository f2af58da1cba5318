"""The matrix app in Django: one module with its settings, URLs and views.

``asgi_app`` (Django's ASGI handler under ``IdempotencyMiddleware``) and ``wsgi_app`` (its WSGI
handler under ``WSGIIdempotencyMiddleware``) serve the same views, so Django's own request
handling (it stops a view when the ASGI client disconnects) meets the middleware.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

from idempotent_middleware import IdempotencyMiddleware, WSGIIdempotencyMiddleware
from tests.e2e.matrix.common import (
    CONFIG,
    SLOW_SECONDS,
    count_run,
    make_store,
    order_body,
    slow_body,
    stream_chunk,
)

KEY = "Idempotency-Key"


@require_POST
def orders(request: HttpRequest) -> HttpResponse:
    status, body = order_body(request.headers.get(KEY), request.body)
    return HttpResponse(body, status=status, content_type="application/json")


@require_POST
def slow(request: HttpRequest) -> HttpResponse:
    key = request.headers.get(KEY)
    run = count_run(key)
    time.sleep(float(request.GET.get("seconds", SLOW_SECONDS)))
    body = slow_body(key, run)
    return HttpResponse(body, status=202, content_type="application/json")


@require_POST
def stream(request: HttpRequest) -> StreamingHttpResponse:
    count_run(request.headers.get(KEY))
    chunks = int(request.GET.get("chunks", "8"))
    delay = float(request.GET.get("delay", "0"))

    def body() -> Iterator[bytes]:
        for index in range(chunks):
            yield stream_chunk(index)
            if delay:
                time.sleep(delay)

    return StreamingHttpResponse(body(), content_type="application/octet-stream")


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b'{"ok": true}', content_type="application/json")


urlpatterns = [
    path("orders", orders),
    path("slow", slow),
    path("stream", stream),
    path("healthz", healthz),
]

if not settings.configured:
    settings.configure(
        SECRET_KEY="matrix-test-only",
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={},
        ROOT_URLCONF=__name__,
        USE_TZ=True,
    )
    django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402  (needs the settings above)
from django.core.wsgi import get_wsgi_application  # noqa: E402

_store = make_store()
asgi_app = IdempotencyMiddleware(get_asgi_application(), persistence_store=_store, config=CONFIG)
wsgi_app = WSGIIdempotencyMiddleware(
    get_wsgi_application(), persistence_store=_store, config=CONFIG
)
