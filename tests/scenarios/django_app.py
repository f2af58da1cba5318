"""The scenario API (``apps.py``) a third time, as Django views behind the Django integration.

Django keeps one value per response header name, so the repeated ``X-Multi`` is one line
``one, two`` (the same field, RFC 9110 section 5.3); the two cookies are Django cookies.
"""

from __future__ import annotations

import time
from typing import Any

from django.http import HttpResponse
from django.urls import path
from django.views.decorators.http import require_POST

from .apps import Counter, order_body

#: The counter of the driver whose handler is serving (one driver per test at a time).
COUNTERS: dict[str, Counter] = {}


def _count(request: Any) -> int:
    return COUNTERS[request.META.get("HTTP_X_DRIVER", "default")].next()


def orders(request: Any) -> HttpResponse:
    response = HttpResponse(
        order_body(_count(request), request.method, request.body),
        status=201,
        content_type="application/json",
    )
    response["X-Multi"] = "one, two"
    response.set_cookie("session", "abc", path="/")
    response.set_cookie("theme", "dark", path="/")
    return response


@require_POST
def status(request: Any, code: int) -> HttpResponse:
    _count(request)
    return HttpResponse(b"status", status=code)


@require_POST
def boom(request: Any) -> HttpResponse:
    _count(request)
    raise RuntimeError("handler failed")


@require_POST
def slow(request: Any) -> HttpResponse:
    run = _count(request)
    time.sleep(float(request.GET.get("s", "0.5")))
    return HttpResponse(f"slow {run}".encode(), status=202)


@require_POST
def big(request: Any) -> HttpResponse:
    _count(request)
    return HttpResponse(b"b" * 1000, status=200)


@require_POST
def empty(request: Any) -> HttpResponse:
    _count(request)
    return HttpResponse(status=204)


urlpatterns = [
    path("orders", orders),
    path("internal/orders", orders),
    path("status/<int:code>", status),
    path("boom", boom),
    path("slow", slow),
    path("big", big),
    path("empty", empty),
]
