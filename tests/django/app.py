"""Views for the Django integration's tests: every kind of view the decorators must reach.

Each view counts its runs in ``RUNS`` (by name) and answers who ran it, so a test can tell
whose response a client received.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import FileResponse, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from rest_framework import viewsets
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.decorators import action, api_view, authentication_classes
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from idempotent_middleware.django import idempotent, idempotent_exempt

RUNS: Counter[str] = Counter()


def _answer(name: str, request: Any) -> dict[str, Any]:
    RUNS[name] += 1
    user = getattr(request, "user", None)
    return {
        "view": name,
        "run": RUNS[name],
        "user": user.username if user is not None and user.is_authenticated else None,
        "echo": request.body.decode() if hasattr(request, "body") else "",
    }


def plain(request: Any) -> JsonResponse:
    return JsonResponse(_answer("plain", request), status=201)


def cookie_outside_latin1(request: Any) -> HttpResponse:
    RUNS["cookie_outside_latin1"] += 1
    response = HttpResponse(b"made", status=201)
    response.set_cookie("name", "\u20ac")  # a value the header copy cannot encode
    return response


@idempotent(raise_on_no_idempotency_key=True, expires_after_seconds=60)
def required(request: Any) -> JsonResponse:
    return JsonResponse(_answer("required", request), status=201)


@idempotent_exempt
def exempt(request: Any) -> JsonResponse:
    return JsonResponse(_answer("exempt", request), status=201)


@idempotent(methods=["PUT"])
def put_only(request: Any) -> JsonResponse:
    return JsonResponse(_answer("put_only", request), status=201)


def streamed(request: Any) -> StreamingHttpResponse:
    RUNS["streamed"] += 1
    run = RUNS["streamed"]

    def body() -> Iterator[bytes]:
        for index in range(5):
            yield f"chunk {index} of run {run}\n".encode()

    return StreamingHttpResponse(body(), content_type="text/plain", status=201)


async def streamed_async(request: Any) -> StreamingHttpResponse:
    RUNS["streamed_async"] += 1
    run = RUNS["streamed_async"]

    async def body() -> AsyncIterator[bytes]:
        for index in range(5):
            yield f"chunk {index} of run {run}\n".encode()

    return StreamingHttpResponse(body(), content_type="text/plain", status=201)


def file(request: Any) -> FileResponse:
    RUNS["file"] += 1
    data = f"file of run {RUNS['file']}\n".encode() * 100
    return FileResponse(io.BytesIO(data), content_type="text/plain", status=201)


async def async_view(request: Any) -> JsonResponse:
    return JsonResponse(_answer("async_view", request), status=201)


class Orders(View):
    def post(self, request: Any) -> JsonResponse:
        return JsonResponse(_answer("cbv", request), status=201)


@method_decorator(idempotent(raise_on_no_idempotency_key=True), name="post")
class RequiredOrders(View):
    def post(self, request: Any) -> JsonResponse:
        return JsonResponse(_answer("cbv_required", request), status=201)


@method_decorator(idempotent_exempt, name="dispatch")
class ExemptOrders(View):
    def post(self, request: Any) -> JsonResponse:
        return JsonResponse(_answer("cbv_exempt", request), status=201)


class TokenOnly(TokenAuthentication):
    pass


class ApiOrders(APIView):
    authentication_classes = [SessionAuthentication, TokenOnly]
    permission_classes = [IsAuthenticated]

    @idempotent(raise_on_no_idempotency_key=True)
    def post(self, request: Any) -> Response:
        return Response(_answer("api", request), status=201)


class ApiExempt(APIView):
    authentication_classes = [TokenOnly]

    @idempotent_exempt
    def post(self, request: Any) -> Response:
        return Response(_answer("api_exempt", request), status=201)


class OrderViewSet(viewsets.ViewSet):
    authentication_classes = [TokenOnly]
    permission_classes = [IsAuthenticated]

    @idempotent(raise_on_no_idempotency_key=True)
    def create(self, request: Any) -> Response:
        return Response(_answer("viewset_create", request), status=201)

    @idempotent_exempt
    @action(detail=False, methods=["post"])
    def preview(self, request: Any) -> Response:
        return Response(_answer("viewset_preview", request), status=200)


@idempotent(raise_on_no_idempotency_key=True)
@api_view(["POST"])
@authentication_classes([TokenOnly])
def api_function(request: Any) -> Response:
    return Response(_answer("api_function", request), status=201)


urlpatterns = [
    path("plain", csrf_exempt(plain)),
    path("cookie-outside-latin1", csrf_exempt(cookie_outside_latin1)),
    path("required", required),
    path("exempt", exempt),
    path("put-only", put_only),
    path("streamed", streamed),
    path("streamed-async", streamed_async),
    path("file", file),
    path("async", async_view),
    path("cbv", Orders.as_view()),
    path("cbv-required", RequiredOrders.as_view()),
    path("cbv-exempt", ExemptOrders.as_view()),
    path("api/orders", ApiOrders.as_view()),
    path("api/exempt", ApiExempt.as_view()),
    path("api/function", api_function),
    path("api/viewset", OrderViewSet.as_view({"post": "create"})),
    path("api/viewset/preview", OrderViewSet.as_view({"post": "preview"})),
]


def body(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        b"".join(response.streaming_content) if response.streaming else response.content
    )
    return data
