"""Flask integration: an extension that runs inside the request context.

``Idempotency(app)`` (or ``idempotency.init_app(app)`` for the application-factory pattern)
wraps the app's view dispatch: the key is claimed after every ``before_request`` handler ran
(so ``flask.g``, ``flask_login.current_user`` and the matched view are known) and the view's
response is recorded before ``after_request`` handlers see it; a replay goes through the same
``after_request`` handlers as the original did.

Configuration, from ``app.config``: ``IDEMPOTENCY_STORE`` (a URL or a store object; default the
in-memory store) and ``IDEMPOTENCY_<OPTION>`` for any ``IdempotencyConfig`` option
(``IDEMPOTENCY_EXPIRES_AFTER_SECONDS``, ``IDEMPOTENCY_HEADER_NAME``, ...). Per view:
``@idempotency.idempotent(raise_on_no_idempotency_key=True)`` and ``@idempotency.exempt``.

Keys are scoped by the logged-in user by default: ``flask_login.current_user``'s id when
Flask-Login is installed and the user is authenticated, else no scope. ``IDEMPOTENCY_SCOPE``
(a callable, or None) replaces it.

Records are namespaced by the app (``IDEMPOTENCY_NAMESPACE``, default ``app.import_name``):
one extension object ``init_app``'ed on several apps that share a store gives each app its
own key space. Apps that must share records (one service under two entry points) set the
same namespace; ``""`` turns it off.
"""

from __future__ import annotations

import dataclasses
import io
import weakref
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from ._disabled import idempotency_disabled
from ._steps import drive
from .config import IdempotencyConfig
from .http.engine import PASS, Execute, HttpIdempotency, Respond
from .http.execution import CapturingIterable, Execution
from .http.request import Headers, HttpRequest
from .http.response import StoredResponse
from .http.settings import Scope, config_from, store_from
from .http.views import exempt, idempotent, options_of
from .persistence.base import BasePersistenceLayer
from .wsgi import LENGTH_REQUIRED, EnvironRequest, read_body

try:
    from flask import Flask, Response, current_app
    from flask import request as flask_request
    from werkzeug.datastructures import Headers as WerkzeugHeaders
    from werkzeug.exceptions import HTTPException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "idempotent_middleware.flask needs Flask: pip install 'idempotent-middleware[flask]'"
    ) from exc

__all__ = ["Idempotency", "login_scope"]

F = TypeVar("F", bound=Callable[..., Any])

_PREFIX = "IDEMPOTENCY_"


def login_scope(request: HttpRequest) -> str | None:
    """The default scope: ``user:<id>`` of Flask-Login's authenticated user, else None."""
    try:
        from flask_login import current_user
    except ImportError:
        return None
    try:
        user = current_user._get_current_object()
    except (AttributeError, RuntimeError):  # no LoginManager on this app
        return None
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return f"user:{user.get_id()}"


def namespaced(namespace: str, scope: Scope | None) -> Scope:
    """``scope`` inside the app's namespace: the namespace is length-prefixed and an absent
    inner scope differs from an empty one, so no two (namespace, scope) pairs share a tenant."""
    prefix = f"app:{len(namespace)}:{namespace}"

    def app_scope(request: HttpRequest) -> str | None:
        inner = None if scope is None else scope(request)
        return prefix if inner is None else f"{prefix}:{inner}"

    return app_scope


class Idempotency:
    """The Flask extension: ``Idempotency(app)`` or ``Idempotency()`` then ``init_app``."""

    def __init__(
        self,
        app: Flask | None = None,
        persistence_store: BasePersistenceLayer | None = None,
        config: IdempotencyConfig | None = None,
    ) -> None:
        self.persistence_store = persistence_store
        self.config = config
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        options = {
            name[len(_PREFIX) :].lower(): value
            for name, value in app.config.items()
            if name.startswith(_PREFIX)
        }
        store = options.pop("store", None)
        namespace = options.pop("namespace", app.import_name)
        if self.persistence_store is not None:
            store = self.persistence_store
        if self.config is not None:
            options.setdefault("config", self.config)
        wrapped = "idempotency" in app.extensions
        config = config_from(options, login_scope)
        if namespace:
            config = dataclasses.replace(config, scope=namespaced(str(namespace), config.scope))
        engine = HttpIdempotency(config, store_from(store))
        engine.source, engine.route_of = "flask", _route
        app.extensions["idempotency"] = engine
        if wrapped:  # init_app again: new settings, never a second claim per request
            return
        dispatch = app.dispatch_request

        def idempotent_dispatch() -> Any:
            return _dispatch(app.extensions["idempotency"], dispatch)

        # Flask calls dispatch_request after the before_request handlers (full_dispatch_request)
        app.dispatch_request = idempotent_dispatch  # type: ignore[method-assign]

    @staticmethod
    def engine(app: Flask) -> HttpIdempotency:
        engine: HttpIdempotency = app.extensions["idempotency"]
        return engine

    def idempotent(
        self,
        view: F | None = None,
        /,
        *,
        raise_on_no_idempotency_key: bool | None = None,
        expires_after_seconds: int | None = None,
        methods: Collection[str] | None = None,
    ) -> Any:
        """Cover this view, with its own options (see ``http.views.idempotent``)."""
        if view is not None:
            return idempotent(view)
        return idempotent(
            raise_on_no_idempotency_key=raise_on_no_idempotency_key,
            expires_after_seconds=expires_after_seconds,
            methods=methods,
        )

    @staticmethod
    def exempt(view: F) -> F:
        """Never cover this view."""
        return exempt(view)


def _view_options(method: str) -> Any:
    rule = flask_request.url_rule
    if rule is None:
        return None
    view = current_app.view_functions.get(rule.endpoint)
    found = options_of(view)
    if found is not None:
        return found
    cls = getattr(view, "view_class", None)  # flask.views.View / MethodView
    if cls is None:
        return None
    for owner in (getattr(cls, method.lower(), None), getattr(cls, "dispatch_request", None), cls):
        found = options_of(owner)
        if found is not None:
            return found
    return None


def _route(request: HttpRequest) -> str | None:
    """The matched URL rule's template (``/orders/<int:id>``), for events."""
    rule = getattr(request.raw, "url_rule", None)
    found = getattr(rule, "rule", None)
    return found if isinstance(found, str) else None


def _dispatch(engine: HttpIdempotency, dispatch: Callable[[], Any]) -> Any:
    req = flask_request
    if req.routing_exception is not None or idempotency_disabled():  # 404/405; test switch
        return dispatch()
    environ = req.environ
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    rule = engine.view_rule(req.method, path, _view_options(req.method))
    if rule is None:
        return dispatch()
    request = EnvironRequest(req.method, path, environ, req)
    early = engine.precheck(request, rule)
    if early is PASS:
        return dispatch()
    if isinstance(early, Respond):
        return to_flask(early.response)
    problem = _body(engine, request)
    if problem is not None:
        return to_flask(problem)
    action = drive(engine.store, engine.begin(request, rule))
    if isinstance(action, Respond):
        return to_flask(action.response)
    if not isinstance(action, Execute):
        return dispatch()
    execution = Execution(engine, action)
    returned: Any = _NOTHING
    try:
        try:
            returned = dispatch()
        except HTTPException as exc:  # abort(409): a response, made by the app's handlers
            returned = current_app.handle_http_exception(exc)
        response = current_app.make_response(returned)
        # Inside the try: the view ran, so a copy that fails still records it (R4).
        headers = _encoded(response)
        capture = execution.capture
        if not response.is_streamed:
            if headers is None:  # passed on as the app made it, never replayed
                capture.start(response.status_code, [])
                capture.give_up()
                execution.record(None, True)
            else:
                execution.record_response(from_flask(response, headers))
            return response
        capture.start(response.status_code, headers or [], _reason(response))
        if headers is None:
            capture.give_up()
        body = CapturingIterable(response.iter_encoded(), capture, execution.record)
        response.response = body
        weakref.finalize(body, execution.abandoned, "response body dropped without close()")
    except BaseException as exc:
        # Before the view returned: the outcome decides; after: it ran, executed.
        execution.record(exc if returned is _NOTHING else None, False)
        raise
    return response


def _body(engine: HttpIdempotency, request: EnvironRequest) -> StoredResponse | None:
    """The body with the adapters' limits; Werkzeug keeps it for the view (``get_data``)."""
    req = flask_request
    if engine.content_length_too_large(request):
        return engine.too_large(request)
    cached = getattr(req, "_cached_data", None)
    if cached is None:
        body = read_body(req.environ, engine.config.max_request_body_bytes)
        if body is LENGTH_REQUIRED:
            return engine.length_required(request)
        if body is None:
            return engine.too_large(request)
        if not isinstance(body, bytes):
            return engine.incomplete(request)
        # As get_data(cache=True) leaves it: form parsing and get_data read this copy, and
        # a view that reads request.stream gets it from the start (as in the WSGI adapter).
        req._cached_data = body
        req.environ["wsgi.input"] = io.BytesIO(body)
        request.set_content_length(body)
        cached = body
    request.body = cached
    return None


#: No value returned by the view yet.
_NOTHING = object()


def _encoded(response: Response) -> Headers | None:
    """The headers in Latin-1, None when a value is outside it (Werkzeug accepts any str)."""
    try:
        return [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.to_wsgi_list()
        ]
    except UnicodeEncodeError:
        return None


def _reason(response: Response) -> str | None:
    status: str = response.status
    return status[4:] if len(status) > 4 else None


def from_flask(response: Response, headers: Headers) -> StoredResponse:
    return StoredResponse(
        response.status_code, headers, response.get_data(), reason=_reason(response)
    )


def to_flask(stored: StoredResponse) -> Response:
    """A replay or problem as a Flask response, headers exactly as stored."""
    status = stored.status if stored.reason is None else f"{stored.status} {stored.reason}"
    response = Response(stored.body, status=status)
    response.headers = WerkzeugHeaders(
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in stored.headers]
    )
    return response
