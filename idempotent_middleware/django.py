"""Django integration: a middleware inside Django that knows the view and the user.

Add ``"idempotent_middleware.django.IdempotencyMiddleware"`` to ``settings.MIDDLEWARE`` after
``AuthenticationMiddleware``. It claims the key in ``process_view`` (the URL is resolved, the
view and its ``@idempotent`` / ``@idempotent_exempt`` options are known, ``request.user`` is
set) and records the response in ``__call__`` once the view returned. One class serves both
of Django's modes (``sync_capable`` and ``async_capable``): under ASGI with async middleware
around it, the claim, the lease and the record run on the event loop; under WSGI, in the
request's thread; neither path hops threads (Django's "Asynchronous support" rules), except
to ask a DRF view's sync-only authenticators under ASGI (see ``_auser``).

Settings: ``IDEMPOTENCY = {"STORE": "redis://...", "EXPIRES_AFTER_SECONDS": 3600, ...}``: the
store (a URL or a store object) and any ``IdempotencyConfig`` option by name. Without it: the
defaults and the in-memory store (one process only).

Keys are scoped by the authenticated user by default (``user_scope``): two users who send the
same key never share a record. Django REST Framework authenticates inside the view, so for a
DRF view whose ``request.user`` is anonymous here the view's own authenticators are asked.
A ``SCOPE`` setting replaces this (``None`` turns scoping off).
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from ._disabled import idempotency_disabled
from ._steps import drive, drive_async
from .http.engine import PASS, Execute, HttpIdempotency, Respond
from .http.execution import AsyncCapturingIterable, AsyncExecution, CapturingIterable, Execution
from .http.request import Headers, HttpRequest
from .http.response import StoredResponse
from .http.routes import Rule
from .http.settings import engine_from
from .http.views import exempt as idempotent_exempt
from .http.views import idempotent, options_of
from .wsgi import LENGTH_REQUIRED, environ_headers
from .wsgi import read_body as read_wsgi_body

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
    from django.conf import settings
    from django.http import HttpResponse
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "idempotent_middleware.django needs Django: pip install 'idempotent-middleware[django]'"
    ) from exc

__all__ = ["IdempotencyMiddleware", "idempotent", "idempotent_exempt", "user_scope"]

#: Where process_view leaves the execution for __call__ (one per request).
_EXECUTION = "_idempotency_execution"
#: The user the integration resolved (Django's, or the DRF view's authenticators').
USER_ATTRIBUTE = "idempotency_user"


def user_scope(request: HttpRequest) -> str | None:
    """The default scope: ``user:<pk>`` for an authenticated user, else None (no scope)."""
    user = getattr(request.raw, USER_ATTRIBUTE, None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return f"user:{user.pk}"


_cache: tuple[object, HttpIdempotency] | None = None
_ABSENT = object()


def engine() -> HttpIdempotency:
    """The engine for the current ``settings.IDEMPOTENCY`` (shared by every handler that
    Django builds, so that the test client's handlers share one in-memory store)."""
    global _cache
    value = getattr(settings, "IDEMPOTENCY", _ABSENT)
    cached = _cache
    if cached is not None and cached[0] is value:
        return cached[1]
    given = {} if value is _ABSENT else dict(value)  # type: ignore[call-overload]
    store = given.pop("STORE", given.pop("store", None))
    built = engine_from(store, given, user_scope)
    _cache = (value, built)
    return built


class IdempotencyMiddleware:
    """Run each keyed request to a covered view once; replay its response to retries."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.engine = engine()
        self.async_mode = iscoroutinefunction(get_response)
        # Django adapts process_view to the handler's mode; an async one keeps the claim
        # on the loop instead of a thread.
        self.process_view: Callable[..., Any]
        if self.async_mode:
            markcoroutinefunction(self)
            self.process_view = self._process_view_async
        else:
            self.process_view = self._process_view_sync

    # --- the claim, once the view is known ----------------------------------------------------
    def _prepare(self, request: Any, view_func: Any) -> HttpRequest | Respond | None:
        """Options, key, body: an HttpRequest ready for ``begin``, a problem, or None (pass)."""
        if idempotency_disabled():  # the test-time switch, read per request
            return None
        engine = self.engine
        rule = engine.view_rule(request.method, request.path, _view_options(view_func, request))
        if rule is None:
            return None
        http_request = HttpRequest(
            request.method,
            request.path,
            request.META.get("QUERY_STRING", "").encode("latin-1"),
            environ_headers(request.META),
            request,
        )
        early = engine.precheck(http_request, rule)
        if early is PASS:
            return None
        if isinstance(early, Respond):
            return early
        problem = _read_body(engine, request, http_request)
        if problem is not None:
            return Respond(problem)
        request._idempotency_rule = rule
        return http_request

    def _process_view_sync(
        self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> Any:
        prepared = self._prepare(request, view_func)
        if not isinstance(prepared, HttpRequest):
            return None if prepared is None else to_django(prepared.response)
        setattr(request, USER_ATTRIBUTE, _user(request, view_func))
        engine = self.engine
        action = drive(engine.store, engine.begin(prepared, _rule(request)))
        if isinstance(action, Respond):
            return to_django(action.response)
        if isinstance(action, Execute):
            setattr(request, _EXECUTION, Execution(engine, action))
        return None

    async def _process_view_async(
        self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> Any:
        prepared = self._prepare(request, view_func)
        if not isinstance(prepared, HttpRequest):
            return None if prepared is None else to_django(prepared.response)
        setattr(request, USER_ATTRIBUTE, await _auser(request, view_func))
        engine = self.engine
        action = await drive_async(engine.store, engine.begin(prepared, _rule(request)))
        if isinstance(action, Respond):
            return to_django(action.response)
        if isinstance(action, Execute):
            setattr(request, _EXECUTION, await AsyncExecution.start(engine, action))
        return None

    # --- the record, once the view answered -------------------------------------------------
    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self._call_async(request)
        try:
            response = self.get_response(request)
        except BaseException as exc:
            execution = request.__dict__.pop(_EXECUTION, None)
            if execution is not None:
                execution.record(exc, False)
            raise
        execution = request.__dict__.pop(_EXECUTION, None)
        if execution is None:
            return response
        if not response.streaming:
            execution.record_response(from_django(response))
            return response
        _start(execution, response)
        if response.is_async:

            async def record(error: BaseException | None, finished: bool) -> None:
                execution.record(error, finished)

            response.streaming_content = AsyncCapturingIterable(
                response.streaming_content, execution.capture, record
            )
            body: CapturingIterable | None = None
        else:
            body = CapturingIterable(
                response.streaming_content, execution.capture, execution.record
            )
            response.streaming_content = body
        closes = response.close

        def close() -> None:
            # The server closes the response when it is done or the client left: copy the
            # rest first (before Django closes the content's resources), then record.
            try:
                if body is not None:
                    body.close()
            finally:
                try:
                    closes()
                finally:
                    execution.record(None, False, True)

        response.close = close
        return response

    async def _call_async(self, request: Any) -> Any:
        try:
            response = await self.get_response(request)
        except BaseException as exc:
            execution = request.__dict__.pop(_EXECUTION, None)
            if execution is not None:
                await execution.record(exc, False)
            raise
        execution = request.__dict__.pop(_EXECUTION, None)
        if execution is None:
            return response
        if not response.streaming:
            await execution.record_response(from_django(response))
            return response
        _start(execution, response)
        content = response.streaming_content
        if not response.is_async:
            content = _listed_in_a_thread(content)
        response.streaming_content = AsyncCapturingIterable(
            content, execution.capture, execution.record
        )
        closes = response.close

        def close() -> None:
            # Django closes the response after sending it, or after the client left (from a
            # thread): an execution not recorded by then is executed, unfinished.
            try:
                closes()
            finally:
                execution.record_soon(None, True)

        response.close = close
        return response


def _rule(request: Any) -> Rule:
    rule: Rule = request.__dict__.pop("_idempotency_rule")
    return rule


def _view_options(view_func: Any, request: Any) -> Any:
    """The view's options: on the function, else on the class-based view's handler for this
    method (DRF ViewSets map methods to actions), its ``dispatch``, or the class."""
    found = options_of(view_func)
    if found is not None:
        return found
    cls = getattr(view_func, "view_class", None) or getattr(view_func, "cls", None)
    if cls is None:
        return None
    method = request.method.lower()
    actions = getattr(view_func, "actions", None)
    name = actions.get(method) if actions else method
    candidates = [getattr(cls, name, None)] if name else []
    for owner in [*candidates, getattr(cls, "dispatch", None), cls]:
        found = options_of(owner)
        if found is not None:
            return found
    return None


def _user(request: Any, view_func: Any) -> Any:
    """Django's authenticated user, else the DRF view's authenticators' (token auth)."""
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return user
    return _drf_user(request, view_func, user)


async def _auser(request: Any, view_func: Any) -> Any:
    """The same on the event loop: ``request.auser()`` (Django 5) loads the session's user
    without blocking; DRF's authenticators are sync-only, so they run in a thread."""
    auser = getattr(request, "auser", None)
    if auser is not None:
        user = await auser()
    else:
        user = await sync_to_async(lambda: getattr(request, "user", None))()
    if user is not None and getattr(user, "is_authenticated", False):
        return user
    if getattr(view_func, "cls", None) is None:
        return user
    return await sync_to_async(_drf_user)(request, view_func, user)


def _drf_user(request: Any, view_func: Any, user: Any) -> Any:
    cls = getattr(view_func, "cls", None)
    if cls is None or not hasattr(cls, "get_authenticators"):
        return user
    try:
        from rest_framework.request import Request as DrfRequest

        view = cls(**getattr(view_func, "initkwargs", {}))
        drf_user = DrfRequest(request, authenticators=view.get_authenticators()).user
    except Exception:  # bad credentials: the view itself will refuse them
        return user
    return drf_user


def _read_body(engine: HttpIdempotency, request: Any, http_request: HttpRequest) -> Any:
    """Read the body as the adapters do: 413 past the cap, 400 when cut short or unreadable,
    411 when it has no length and the server does not end it. Under WSGI the adapter's own
    reader runs on the environ (a chunked upload that gunicorn ends is read, where Django's
    request alone would see no body); under ASGI Django has received the whole body."""
    if engine.content_length_too_large(http_request):
        return engine.too_large(http_request)
    cap = engine.config.max_request_body_bytes
    if "_body" in request.__dict__:  # read by earlier code (request.body)
        body: Any = request._body
    elif "wsgi.input" in request.META:
        body = read_wsgi_body(request.META, cap)
        if body is LENGTH_REQUIRED:
            return engine.length_required(http_request)
    else:
        try:
            body = request.read(cap + 1)
        except Exception:  # the server's body file failed
            return engine.incomplete(http_request)
        if len(body) > cap:
            body = None
    if body is None:
        return engine.too_large(http_request)
    if not isinstance(body, bytes):
        return engine.incomplete(http_request)
    # As Django's own ``body`` property leaves it, so the view reads these same bytes.
    request._body = body
    request._stream = io.BytesIO(body)
    request.META["CONTENT_LENGTH"] = str(len(body))  # form parsers read it
    http_request.body = body
    return None


def _start(execution: Execution | AsyncExecution, response: Any) -> None:
    execution.capture.start(
        response.status_code, _response_headers(response), response.reason_phrase
    )


def _response_headers(response: Any) -> Headers:
    headers = [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in response.items()]
    for cookie in response.cookies.values():
        headers.append((b"set-cookie", cookie.output(header="").strip().encode("latin-1")))
    return headers


def from_django(response: Any) -> StoredResponse:
    return StoredResponse(
        response.status_code,
        _response_headers(response),
        response.content,
        reason=response.reason_phrase,
    )


def to_django(stored: StoredResponse) -> HttpResponse:
    """A replay or problem as a Django response. Django keeps one value per header name:
    repeated fields are joined with ", " (RFC 9110 section 5.3); Set-Cookie goes to cookies."""
    response = HttpResponse(stored.body, status=stored.status, reason=stored.reason)
    del response["Content-Type"]
    for raw_name, raw_value in stored.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name.lower() == "set-cookie":
            response.cookies.load(value)
        elif name in response:
            response[name] = f"{response[name]}, {value}"
        else:
            response[name] = value
    return response


async def _listed_in_a_thread(content: Iterable[bytes]) -> AsyncIterator[bytes]:
    """A sync body under ASGI, read in a thread as Django itself does (``__aiter__``)."""
    for chunk in await sync_to_async(_all, thread_sensitive=True)(content):
        yield chunk


def _all(content: Iterable[bytes]) -> list[bytes]:
    return list(content)
