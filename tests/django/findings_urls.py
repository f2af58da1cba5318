"""URLs for tests/django/test_findings.py."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.http import JsonResponse
from django.urls import path
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.response import Response
from rest_framework.views import APIView

RUNS: Counter[str] = Counter()


def upload(request: Any) -> JsonResponse:
    RUNS["upload"] += 1
    return JsonResponse(
        {"files": sorted(request.FILES), "note": request.POST.get("note")}, status=201
    )


class ServiceAccount:
    """An API client from another table (not AUTH_USER_MODEL), pk 1 like the first User."""

    is_authenticated = True

    def __init__(self, pk: int, name: str) -> None:
        self.pk = pk
        self.username = name


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Any) -> Any:
        key = request.META.get("HTTP_X_API_KEY")
        if not key:
            return None
        RUNS["authenticate"] += 1  # e.g. a one-time nonce consumed, last_used updated
        return (ServiceAccount(int(key), f"service-{key}"), None)


class Transfers(APIView):
    authentication_classes = [SessionAuthentication, ApiKeyAuthentication]

    def post(self, request: Any) -> Response:
        RUNS["transfers"] += 1
        return Response(
            {"who": request.user.username, "secret": f"balance of {request.user.username}"},
            status=201,
        )


def _custom_auth(view: Any) -> Any:
    def wrapped(request: Any, *args: Any, **kwargs: Any) -> Any:
        return view(request, *args, **kwargs)

    return wrapped


urlpatterns = [
    path("upload", upload),
    path("transfers", Transfers.as_view()),
    path("wrapped-transfers", _custom_auth(Transfers.as_view())),
]


def echo(request: Any) -> JsonResponse:
    RUNS["echo"] += 1
    return JsonResponse({"length": len(request.body)}, status=201)


urlpatterns.append(path("echo", echo))


from rest_framework.authentication import TokenAuthentication  # noqa: E402


class TokenOrders(APIView):
    # DRF's own default order puts SessionAuthentication first
    authentication_classes = [SessionAuthentication, TokenAuthentication]

    def post(self, request: Any) -> Response:
        RUNS["token_orders"] += 1
        return Response({"who": request.user.username}, status=201)


urlpatterns.append(path("token-orders", TokenOrders.as_view()))


class KeyOnly(APIView):
    authentication_classes = [ApiKeyAuthentication]

    def post(self, request: Any) -> Response:
        RUNS["key_only"] += 1
        return Response({"who": request.user.username}, status=201)


urlpatterns.append(path("key-only", KeyOnly.as_view()))


class QueryKeyAuthentication(BaseAuthentication):
    """An API key in the query string: no credential header for the fallback scope."""

    def authenticate(self, request: Any) -> Any:
        key = request.query_params.get("api_key")
        return None if not key else (ServiceAccount(int(key), f"service-{key}"), None)


class QueryTransfers(Transfers):
    authentication_classes = [SessionAuthentication, QueryKeyAuthentication]


urlpatterns.append(path("query-transfers", QueryTransfers.as_view()))


class ReadsPost:
    """A middleware that parses the form before the idempotency middleware (misordered)."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        from asgiref.sync import markcoroutinefunction

        markcoroutinefunction(self)

    async def __call__(self, request: Any) -> Any:
        request.POST  # noqa: B018 - the parse is the point
        return await self.get_response(request)
