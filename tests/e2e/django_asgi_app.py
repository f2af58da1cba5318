"""A one-file Django project served over ASGI, behind the idempotency middleware.

``POST /orders`` counts its execution, then works for a few seconds (long enough for a client
to give up); ``GET /count`` reports the executions. Run: ``uvicorn tests.e2e.django_asgi_app:app``.
"""

from __future__ import annotations

import asyncio
import itertools

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="test-only",
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from idempotent_middleware import IdempotencyMiddleware  # noqa: E402

_executions = itertools.count(1)
EXECUTED = [0]


@csrf_exempt
async def orders(request: HttpRequest) -> HttpResponse:
    EXECUTED[0] = next(_executions)  # the side effect happens here
    await asyncio.sleep(float(request.GET.get("s", "3")))
    return JsonResponse({"run": EXECUTED[0]}, status=201)


async def count(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"executions": EXECUTED[0]})


urlpatterns = [path("orders", orders), path("count", count)]

app = IdempotencyMiddleware(get_asgi_application())
