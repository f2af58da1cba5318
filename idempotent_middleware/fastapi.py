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

import copy
import warnings
from collections.abc import Callable, Collection
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
from .asgi import Receive, Scope, Send
from .config import IdempotencyConfig, RouteOptions
from .http.engine import HttpIdempotency
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
#: Operation extension carrying a route's declared options to the OpenAPI step.
_MARKER = "x-idempotency"


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
        methods=None if methods is None else tuple(methods),
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
        options: RouteOptions | None = getattr(endpoint, _OPTIONS_ATTRIBUTE, None)
        extra = copy.deepcopy(kwargs.get("openapi_extra") or {})
        kwargs["openapi_extra"] = extra
        super().__init__(path, endpoint, **kwargs)
        self.idempotency_options = options
        self._idempotency_engine: tuple[Idempotency, HttpIdempotency | None] | None = None
        # Read back by Idempotency.document, which knows the configuration.
        extra[_MARKER] = {
            "options": None if options is None else _options_document(options),
            "route_methods": sorted(self.methods or ()),
        }

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
        await run_route(engine, super().handle, scope, receive, send)


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
        self.routed = RoutedIdempotency(persistence_store, config)
        self.config = self.routed.config
        self.store = self.routed.store
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

        Covered: the key header parameter (header mode), the replay header on the operation's
        own responses, and the problems the middleware may answer with (RFC 9457), each with
        the bodies this configuration really sends as examples.
        """
        covered = False
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                if not isinstance(operation, dict):
                    continue
                marker = operation.pop(_MARKER, None)
                if marker is None:
                    continue
                options = marker.get("options")
                engine = self.routed.engine_for(
                    None if options is None else RouteOptions(**options),
                    marker.get("route_methods", ()),
                )
                rule = None if engine is None else engine.rule(method, path)
                if engine is None or rule is None:
                    continue
                covered = True
                self._document_operation(operation, engine, rule.key_required)
                operation[_MARKER] = extension(engine, rule)
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


def _options_document(options: RouteOptions) -> dict[str, Any]:
    return {
        "raise_on_no_idempotency_key": options.raise_on_no_idempotency_key,
        "expires_after_seconds": options.expires_after_seconds,
        "methods": None if options.methods is None else sorted(options.methods),
        "enabled": options.enabled,
    }
