"""FastAPI: options next to the route, the contract in ``/openapi.json``.

``Idempotency(app, persistence_store=..., config=...)`` makes ``IdempotentRoute`` the app's
route class (FastAPI's documented way to customise how a route handles requests). The route
runs the ASGI adapter around its own ASGI app once FastAPI has matched it, so each request gets
the options of the route it reached (``@idempotent(...)``, ``@idempotent_exempt``), not of a
path glob. The decisions stay in ``HttpIdempotency``; this module only finds the options and
documents them.

Dependencies (authentication included) run inside the route, after the claim: scope keys by
the credential with ``idempotent_middleware.scopes.credential_scope`` (see the README).
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from collections.abc import Callable, Collection
from contextvars import ContextVar
from typing import Any, TypeVar

try:
    from fastapi import APIRouter, FastAPI
    from fastapi.routing import APIRoute
except ImportError as exc:  # pragma: no cover - exercised without fastapi installed
    raise ImportError(
        "idempotent_middleware.fastapi needs FastAPI: pip install 'idempotent-middleware[fastapi]'"
    ) from exc

from ._openapi import (
    PROBLEM_SCHEMA,
    extension,
    key_parameter,
    problem_responses,
    problem_schema,
    replay_header,
)
from ._routed import RoutedIdempotency, run_route
from .asgi import RETURNED, Receive, Scope, Send
from .config import IdempotencyConfig, RouteOptions
from .http.engine import HttpIdempotency
from .http.observe import scope_route
from .http.request import HttpRequest
from .persistence.base import BasePersistenceLayer

__all__ = [
    "Idempotency",
    "IdempotentRoute",
    "UnprotectedRoutesWarning",
    "idempotent",
    "idempotent_exempt",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Where ``@idempotent`` leaves its options on the endpoint function.
_OPTIONS_ATTRIBUTE = "__idempotency_options__"
#: ``app.state`` attribute holding the installed ``Idempotency``.
_STATE_ATTRIBUTE = "idempotent_middleware"
#: The operation extension holding a covered route's resolved options.
_EXTENSION = "x-idempotency"


def idempotent(
    *,
    raise_on_no_idempotency_key: bool | None = None,
    expires_after_seconds: int | None = None,
    methods: Collection[str] | None = None,
) -> Callable[[F], F]:
    """Per-route options; put it below ``@app.post(...)``, so it runs before the route is made.

    ``methods`` defaults to the route's own methods but the safe ones (RFC 9110 section
    9.2.1): ``@idempotent()`` on a PUT route covers PUT. Unset values keep the config's.
    """
    options = RouteOptions(
        raise_on_no_idempotency_key=raise_on_no_idempotency_key,
        expires_after_seconds=expires_after_seconds,
        methods=methods if methods is None or isinstance(methods, str) else tuple(methods),
    )

    def mark(endpoint: F) -> F:
        setattr(endpoint, _OPTIONS_ATTRIBUTE, options)
        return endpoint

    return mark


def idempotent_exempt(endpoint: F) -> F:
    """Never handle this route's requests, whatever the configuration's methods and paths."""
    setattr(endpoint, _OPTIONS_ATTRIBUTE, RouteOptions(enabled=False))
    return endpoint


class UnprotectedRoutesWarning(UserWarning):
    """Routes included into a protected app that the middleware will not see."""


class IdempotentRoute(APIRoute):
    """An ``APIRoute`` that runs its requests under the app's ``Idempotency``.

    Use it for every router: ``APIRouter(route_class=IdempotentRoute)`` (the app's own router
    gets it from ``Idempotency(app)``). The endpoint's options are read once, here.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self._idempotency_engine: tuple[Idempotency, HttpIdempotency | None] | None = None
        call = self.dependant.call
        if call is not None:
            self.dependant.call = _marking_returned(call)

    @property
    def idempotency_options(self) -> RouteOptions | None:
        """Read from the endpoint when needed (first request, OpenAPI), not when the route is
        made: ``@idempotent`` above ``@app.post`` marks the same function, so it counts too."""
        options: RouteOptions | None = getattr(self.endpoint, _OPTIONS_ATTRIBUTE, None)
        return options

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.methods and scope["method"] not in self.methods):
            await super().handle(scope, receive, send)  # websockets, and FastAPI's own 405
            return
        installed = getattr(getattr(scope.get("app"), "state", None), _STATE_ATTRIBUTE, None)
        if not isinstance(installed, Idempotency):
            # Never run a route meant to be protected unprotected: this is a set-up error.
            raise RuntimeError(
                "IdempotentRoute served by an app without Idempotency(app) / init_app(app)"
            )
        cached = self._idempotency_engine
        if cached is not None and cached[0] is installed:
            engine = cached[1]
        else:  # once per route (and app): the options and methods never change
            engine = installed.routed.engine_for(self.idempotency_options, self.methods or ())
            self._idempotency_engine = (installed, engine)
        token = _scope.set(scope)
        try:
            await run_route(engine, super().handle, scope, receive, send)
        finally:
            _scope.reset(token)


#: The ASGI scope of the request being served, for the endpoint wrapper to mark.
_scope: ContextVar[Scope | None] = ContextVar("idempotent_middleware_fastapi_scope", default=None)


def _marking_returned(call: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the endpoint so the adapter learns it returned: FastAPI may still raise after
    that (response_model validation, a dependency's teardown), and the side effects have
    happened, so that must not release the key (started means may have side effects)."""

    def mark() -> None:
        scope = _scope.get()
        if scope is not None:
            scope[RETURNED] = True

    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
        getattr(call, "__call__", None)  # noqa: B004 - an async callable instance
    ):

        @functools.wraps(call)
        async def endpoint_async(*args: Any, **kwargs: Any) -> Any:
            result = await call(*args, **kwargs)
            mark()
            return result

        return endpoint_async
    if inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call):
        return call  # a streaming endpoint: its response starts as it runs

    @functools.wraps(call)
    def endpoint(*args: Any, **kwargs: Any) -> Any:
        result = call(*args, **kwargs)
        mark()
        return result

    return endpoint


class Idempotency:
    """The FastAPI extension: ``Idempotency(app, ...)`` or ``Idempotency(...).init_app(app)``.

    One store and one configuration per app; the configuration's ``methods`` (and path globs)
    apply to routes that declare nothing, and ``@idempotent`` / ``@idempotent_exempt`` override
    them for their route.
    """

    def __init__(
        self,
        app: FastAPI | None = None,
        *,
        persistence_store: BasePersistenceLayer | None = None,
        config: IdempotencyConfig | None = None,
    ) -> None:
        self.routed = RoutedIdempotency(persistence_store, config, "fastapi", _route)
        self.config = self.routed.config
        self.store = self.routed.store
        self._apps: list[FastAPI] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: FastAPI) -> None:
        """Install on ``app``: before its routes are declared, so they get ``IdempotentRoute``."""
        router = app.router
        if router.route_class is APIRoute:
            router.route_class = IdempotentRoute
        elif not issubclass(router.route_class, IdempotentRoute):
            raise TypeError(
                f"the app's route class {router.route_class.__name__} must derive from "
                "IdempotentRoute for its routes to be protected"
            )
        unprotected = [
            route.path
            for route in router.routes
            if isinstance(route, APIRoute) and not isinstance(route, IdempotentRoute)
        ]
        if unprotected:
            raise ValueError(
                "routes declared before Idempotency(app) are not protected: "
                f"{', '.join(unprotected)}; install it first, and use "
                "APIRouter(route_class=IdempotentRoute) for included routers"
            )
        setattr(app.state, _STATE_ATTRIBUTE, self)
        self._apps.append(app)
        include = app.include_router

        def include_router(router: APIRouter, *args: Any, **kwargs: Any) -> None:
            # A router made without route_class=IdempotentRoute would be served unprotected,
            # silently: say so where it is included.
            plain = [
                route.path
                for route in router.routes
                if isinstance(route, APIRoute) and not isinstance(route, IdempotentRoute)
            ]
            if plain:
                warnings.warn(
                    f"routes of an APIRouter without route_class=IdempotentRoute are not "
                    f"protected by idempotency: {', '.join(plain)}",
                    UnprotectedRoutesWarning,
                    stacklevel=2,
                )
            include(router, *args, **kwargs)

        app.include_router = include_router  # type: ignore[method-assign]
        generate = app.openapi
        documented: list[dict[str, Any]] = []

        def openapi() -> dict[str, Any]:
            schema = generate()
            if not any(schema is done for done in documented):
                self.document(schema)
                documented[:] = [schema]
            return schema

        app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override

    # --- OpenAPI ------------------------------------------------------------------------------
    def document(self, schema: dict[str, Any]) -> None:
        """Add the contract to every covered operation of a generated schema, in place.

        Operations are matched to the app's ``IdempotentRoute`` routes by path and method,
        so a custom generator (FastAPI's ``app.openapi = custom_openapi`` recipe) calls
        ``idempotency.document(schema)`` on its schema; nothing internal is left in it.

        Covered: the key header parameter (header mode), the replay header on the operation's
        own responses, and the problems the middleware may answer with (RFC 9457), each with
        the bodies this configuration really sends as examples.
        """
        covered = False
        paths = schema.get("paths", {})
        for app in self._apps:
            for route, route_path in _routes(app):
                if not isinstance(route, IdempotentRoute) or not route.include_in_schema:
                    continue
                item = paths.get(route_path)
                if not isinstance(item, dict):
                    continue
                engine = self.routed.engine_for(route.idempotency_options, route.methods or ())
                if engine is None:
                    continue
                for method in route.methods or ():
                    operation = item.get(method.lower())
                    rule = engine.rule(method, route_path)
                    if not isinstance(operation, dict) or rule is None:
                        continue
                    if _EXTENSION in operation:
                        continue  # documented already (a schema passed twice)
                    covered = True
                    self._document_operation(operation, engine, rule.key_required)
                    operation[_EXTENSION] = extension(engine, rule)
        if covered:
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas[PROBLEM_SCHEMA] = problem_schema()

    def _document_operation(
        self, operation: dict[str, Any], engine: HttpIdempotency, key_required: bool
    ) -> None:
        name = engine.config.header_name.lower()
        if engine.header_mode:
            parameters = operation.setdefault("parameters", [])
            if not any(
                p.get("in") == "header" and p.get("name", "").lower() == name for p in parameters
            ):
                parameters.append(key_parameter(engine, key_required))
        responses = operation.setdefault("responses", {})
        for response in responses.values():
            response.setdefault("headers", {})[engine.config.replay_header_name] = replay_header()
        for status, ours in problem_responses(engine, key_required).items():
            response = responses.get(status)
            if response is None:
                responses[status] = ours
                continue
            # FastAPI's own 422 (validation error): one status, two media types.
            response["description"] = f"{response.get('description', '')}; {ours['description']}"
            response.setdefault("content", {}).update(ours["content"])
            response.setdefault("headers", {}).update(ours.get("headers", {}))


def _route(request: HttpRequest) -> str | None:
    """The matched route's template, as Starlette leaves it in ``scope["route"]``."""
    return scope_route(request.raw)


def _routes(app: FastAPI) -> list[tuple[Any, str]]:
    """``(route, documented path)`` for every route, included routers' too: FastAPI 0.13x
    and later keep an included router nested, with its prefix, instead of copying routes."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: included routes are copied into app.routes
        return [(route, getattr(route, "path_format", "")) for route in app.routes]
    found = []
    for context in iter_route_contexts(app.routes):
        path = context.path or ""
        # Starlette's convertors ("{id:int}") are not part of the documented path.
        found.append((context.original_route, _CONVERTOR.sub(r"{\1}", path)))
    return found


_CONVERTOR = re.compile(r"{([^}:]+):[^}]*}")
