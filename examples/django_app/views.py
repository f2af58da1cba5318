"""Views: the same endpoints as ``examples/fastapi_app.py``."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from examples._store import count_execution
from idempotent_middleware.django import idempotent

from .idempotency import store

_runs: list[int] = []


def _order(request: HttpRequest) -> dict[str, Any] | None:
    """The validated ``{"sku": str, "qty": int}`` body, or None."""
    try:
        body = json.loads(request.body)
    except ValueError:
        return None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("sku"), str)
        or not isinstance(body.get("qty"), int)
        or isinstance(body.get("qty"), bool)
    ):
        return None
    return body


def _invalid() -> JsonResponse:
    return JsonResponse({"detail": "body must be {'sku': str, 'qty': int}"}, status=422)


@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    order = _order(request)
    if order is None:
        return _invalid()
    run = count_execution(store, _runs)
    return JsonResponse(
        {"order_id": uuid.uuid4().hex, "sku": order["sku"], "qty": order["qty"], "run": run},
        status=201,
    )


@require_POST
@idempotent(
    raise_on_no_idempotency_key=True, expires_after_seconds=7 * 86400
)  # a key is a must; kept a week
def pay(request: HttpRequest) -> JsonResponse:
    order = _order(request)
    if order is None:
        return _invalid()
    return JsonResponse({"payment_id": uuid.uuid4().hex, "amount": order["qty"]}, status=201)


@require_POST
def slow(request: HttpRequest) -> JsonResponse:
    if _order(request) is None:
        return _invalid()
    time.sleep(1.0)
    run = count_execution(store, _runs)
    return JsonResponse({"job_id": uuid.uuid4().hex, "run": run}, status=202)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})
