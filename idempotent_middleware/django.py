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

Keys are scoped by the authenticated user by default (``user_scope``: its model and pk): two
users who send the same key never share a record. Django REST Framework authenticates inside
the view: with no Django user, a request carrying a credential header (``CREDENTIAL_HEADERS``:
Authorization, X-API-Key) is scoped by an HMAC of it (key derived from ``SECRET_KEY``), and
otherwise a DRF view's own authenticators are asked (they then run twice: here and in the
view). A ``SCOPE`` setting replaces all this (``None`` turns scoping off).

A keyed request to a covered view has its body read (and capped) in ``__call__``, before any
inner middleware: ``CsrfViewMiddleware`` parses ``request.POST`` before ``process_view``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from ._disabled import idempotency_disabled
from ._labels import printable
from ._steps import drive, drive_async
from .http.engine import PASS, Execute, HttpIdempotency, Respond
from .http.execution import AsyncCapturingIterable, AsyncExecution, CapturingIterable, Execution
from .http.request import Headers, HttpRequest, normalise_method
from .http.response import StoredResponse
from .http.routes import Rule
from .http.settings import engine_from
from .http.views import exempt as idempotent_exempt
from .http.views import idempotent, options_of
from .scopes import credential_scope
from .wsgi import LENGTH_REQUIRED, EnvironRequest
from .wsgi import read_body as read_wsgi_body

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
    from django.conf import settings
    from django.http import HttpResponse
    from django.urls import Resolver404, resolve
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "idempotent_middleware.django needs Django: pip install 'idempotent-middleware[django]'"
    ) from exc

__all__ = [
    "IdempotencyMiddleware",
    "default_scope",
    "idempotent",
    "idempotent_exempt",
    "user_scope",
]

logger = logging.getLogger(__name__)

#: Where process_view leaves the execution for __call__ (one per request).
_EXECUTION = "_idempotency_execution"
#: The user the integration resolved (Django's, or the DRF view's authenticators').
USER_ATTRIBUTE = "idempotency_user"


#: Headers that carry a credential: a request with one and no user known here is scoped by
#: its keyed hash (``credential_scope``). ``CREDENTIAL_HEADERS`` in ``IDEMPOTENCY`` replaces it.
CREDENTIAL_HEADERS = ("authorization", "x-api-key")
#: Label of the HMAC key derived from ``SECRET_KEY`` for credential scopes: the project's own
#: secret, never used as is (each use of a secret gets its own derived key).
_SECRET_LABEL = b"idempotent_middleware.django.credential_scope"


def user_scope(request: HttpRequest) -> str | None:
    """The user part of the default scope: ``user:<app_label.model>:<pk>`` for an
    authenticated user, else None. The model is part of it: a DRF authenticator may return a
    principal from another table (API clients, service accounts) whose pk a User also has;
    an object without ``_meta`` is named by its class (``module.QualName``)."""
    user = getattr(request.raw, USER_ATTRIBUTE, None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    meta = getattr(user, "_meta", None)
    label = getattr(meta, "label_lower", None)
    if not isinstance(label, str):
        kind = type(user)
        label = f"{kind.__module__}.{kind.__qualname__}"
    return f"user:{label}:{user.pk}"


def default_scope(headers: Sequence[str]) -> Callable[[HttpRequest], str | None]:
    """The default scope: the user (``user_scope``), else the credential the request carries
    (HMAC of ``headers`` under a key derived from ``settings.SECRET_KEY``), else None. The
    credential covers views that authenticate inside themselves where we cannot see it (a
    DRF view behind a wrapper that hides its class): two credentials never share a record."""
    if not headers:
        return user_scope
    secret = hmac.new(settings.SECRET_KEY.encode("utf-8"), _SECRET_LABEL, hashlib.sha256)
    credentials = credential_scope(tuple(headers), secret=secret.digest())

    def scope(request: HttpRequest) -> str | None:
        user = user_scope(request)
        if user is not None:
            return user
        credential = credentials(request)
        return None if credential is None else f"credential:{credential}"

    return scope


_cache: tuple[object, HttpIdempotency, tuple[str, ...]] | None = None
_ABSENT = object()


def engine() -> HttpIdempotency:
    """The engine for the current ``settings.IDEMPOTENCY`` (shared by every handler that
    Django builds, so that the test client's handlers share one in-memory store)."""
    return _configured()[0]


def _configured() -> tuple[HttpIdempotency, tuple[str, ...]]:
    """The engine and the credential headers as ``META`` names."""
    global _cache
    value = getattr(settings, "IDEMPOTENCY", _ABSENT)
    cached = _cache
    if cached is not None and cached[0] is value:
        return cached[1], cached[2]
    given = {} if value is _ABSENT else dict(value)  # type: ignore[call-overload]
    store = given.pop("STORE", given.pop("store", None))
    headers = given.pop("CREDENTIAL_HEADERS", given.pop("credential_headers", CREDENTIAL_HEADERS))
    built = engine_from(store, given, default_scope(tuple(headers)))
    built.source, built.route_of = "django", _route
    names = tuple(_meta_name(name) for name in headers)
    _cache = (value, built, names)
    return built, names


def _route(request: HttpRequest) -> str | None:
    """The resolved URL pattern (``request.resolver_match.route``, e.g. ``orders/<int:id>``),
    for events; resolved here when the decision came before Django resolved it."""
    raw = request.raw
    match = getattr(raw, "resolver_match", None)
    if match is None:
        try:
            match = resolve(raw.path_info, getattr(raw, "urlconf", None))
        except Resolver404:
            return None
    found = getattr(match, "route", None)
    return found if isinstance(found, str) and found else None


def _meta_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class IdempotencyMiddleware:
    """Run each keyed request to a covered view once; replay its response to retries."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.engine, self.credential_headers = _configured()
        self.key_header = _meta_name(self.engine.config.header_name)
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
        http_request = _http_request(request)
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
        setattr(request, USER_ATTRIBUTE, _user(request, view_func, self.credential_headers))
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
        setattr(request, USER_ATTRIBUTE, await _auser(request, view_func, self.credential_headers))
        engine = self.engine
        action = await drive_async(engine.store, engine.begin(prepared, _rule(request)))
        if isinstance(action, Respond):
            return to_django(action.response)
        if isinstance(action, Execute):
            setattr(request, _EXECUTION, await AsyncExecution.start(engine, action))
        return None

    # --- the record, once the view answered -------------------------------------------------
    def _buffer(self, request: Any) -> Any:
        """Read a keyed request's body for a covered view before any inner middleware or the
        view runs: ``CsrfViewMiddleware.process_view`` parses ``request.POST`` before our
        ``process_view``, and a multipart parse consumes the stream without keeping the bytes
        we must fingerprint. Buffered here, every parser reads ``request._body``. A problem
        (413, 411, 400) as a response, or None."""
        engine = self.engine
        if not engine.routes.routable(normalise_method(request.method)):
            return None
        if engine.header_mode and not request.META.get(self.key_header):
            return None
        if "_body" in request.__dict__ or idempotency_disabled():
            return None
        try:
            view = resolve(request.path_info, getattr(request, "urlconf", None)).func
        except Resolver404:
            return None  # Django answers 404; nothing of ours to claim
        if engine.view_rule(request.method, request.path, _view_options(view, request)) is None:
            return None
        problem = _read_body(engine, request, _http_request(request))
        return None if problem is None else to_django(problem)

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self._call_async(request)
        early = self._buffer(request)
        if early is not None:
            return early
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
        try:  # the view ran: a copy that fails records it executed, never leaves it (R4)
            _start(execution, response)
            if not response.streaming:
                execution.capture.add(response.content)
                execution.record(None, True)
                return response
        except BaseException:
            execution.record(None, False)
            raise
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
        early = self._buffer(request)
        if early is not None:
            return early
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
        try:  # the view ran: a copy that fails records it executed, never leaves it (R4)
            _start(execution, response)
            if not response.streaming:
                execution.capture.add(response.content)
                await execution.record(None, True)
                return response
        except BaseException:
            await execution.record(None, False)
            raise
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


def _http_request(request: Any) -> EnvironRequest:
    built = EnvironRequest(request.method, request.path, request.META, request)
    # Taken now: DRF authenticators and the scope hook run before ``begin`` and may write
    # META; the key and fingerprint must see the headers as they came.
    built.headers  # noqa: B018
    return built


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


def _user(request: Any, view_func: Any, credential_headers: Sequence[str]) -> Any:
    """Django's authenticated user, else the DRF view's authenticators' (token auth). A
    request that carries a credential header is scoped by that credential instead: the
    view's authenticators then run once (in the view), not twice."""
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return user
    if _has_credential(request, credential_headers):
        return user
    return _drf_user(request, view_func, user)


def _has_credential(request: Any, credential_headers: Sequence[str]) -> bool:
    meta = request.META
    return any(meta.get(name) for name in credential_headers)


async def _auser(request: Any, view_func: Any, credential_headers: Sequence[str]) -> Any:
    """The same on the event loop: ``request.auser()`` (Django 5) loads the session's user
    without blocking; DRF's authenticators are sync-only, so they run in a thread."""
    auser = getattr(request, "auser", None)
    if auser is not None:
        user = await auser()
    else:
        user = await sync_to_async(lambda: getattr(request, "user", None))()
    if user is not None and getattr(user, "is_authenticated", False):
        return user
    if getattr(view_func, "cls", None) is None or _has_credential(request, credential_headers):
        return user
    return await sync_to_async(_drf_user)(request, view_func, user)


def _drf_user(request: Any, view_func: Any, user: Any) -> Any:
    cls = getattr(view_func, "cls", None)
    if cls is None or not hasattr(cls, "get_authenticators"):
        return user
    # DRF's Request sets the user it found on the Django request too: left there, the view's
    # own SessionAuthentication would take a token client for a session user (CSRF: 403) or
    # read Django-user attributes off another kind of principal (500). Put it back.
    saved = {name: request.__dict__[name] for name in _USER_SLOTS if name in request.__dict__}
    try:
        from rest_framework.request import Request as DrfRequest

        view = cls(**getattr(view_func, "initkwargs", {}))
        drf_user = DrfRequest(request, authenticators=view.get_authenticators()).user
    except Exception:  # bad credentials: the view itself will refuse them
        return user
    finally:
        for name in _USER_SLOTS:
            request.__dict__.pop(name, None)
        request.__dict__.update(saved)
    return drf_user


#: Where Django keeps the request's user (``AuthenticationMiddleware``'s lazy object, its
#: cache); DRF's Request assigns ``user`` on the Django request.
_USER_SLOTS = ("user", "_cached_user")


def _read_body(engine: HttpIdempotency, request: Any, http_request: EnvironRequest) -> Any:
    """Read the body as the adapters do: 413 past the cap, 400 when cut short or unreadable,
    411 when it has no length and the server does not end it. Under WSGI the adapter's own
    reader runs on the environ (a chunked upload that gunicorn ends is read, where Django's
    request alone would see no body); under ASGI Django has received the whole body.

    Django's own ``DATA_UPLOAD_MAX_MEMORY_SIZE`` applies as ``request.body`` applies it (to
    any body but multipart): the view reads our buffer, so Django can no longer check it."""
    cap = engine.config.max_request_body_bytes
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is not None and getattr(request, "content_type", "") != "multipart/form-data":
        cap = min(cap, limit)
    if engine.content_length_too_large(http_request) or _declared_length(request) > cap:
        return engine.too_large(http_request)
    if "_body" in request.__dict__:  # read by earlier code (request.body)
        body: Any = request._body
        if len(body) > cap:
            body = None
    elif request.__dict__.get("_read_started"):
        # Code outside ours parsed the stream (request.POST in a middleware before ours) and
        # kept no bytes: an empty fingerprint would let another body share the key.
        logger.warning(
            "%s %s: the body was read before the idempotency middleware; put it before any "
            "middleware that reads request.POST",
            request.method,
            printable(request.path),  # escaped: a client's "%0A" must not start a line
            extra={"idempotency_source": "django", "idempotency_method": request.method},
        )
        return engine.incomplete(http_request)
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
    http_request.set_content_length(body)  # META["CONTENT_LENGTH"]: form parsers read it
    http_request.body = body
    return None


def _declared_length(request: Any) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _start(execution: Execution | AsyncExecution, response: Any) -> None:
    headers = _response_headers(response)
    execution.capture.start(response.status_code, headers or [], response.reason_phrase)
    if headers is None:  # sent as the app made it, never replayed
        execution.capture.give_up()


def _response_headers(response: Any) -> Headers | None:
    """The headers in Latin-1, None when one is outside it (a cookie value, say)."""
    try:
        headers = [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in response.items()]
        for cookie in response.cookies.values():
            headers.append((b"set-cookie", cookie.output(header="").strip().encode("latin-1")))
    except UnicodeEncodeError:
        return None
    return headers


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
