"""Litestar: options from the route handler's ``opt``, installed by a plugin.

Litestar runs app-level middleware per route handler, after routing, and puts the handler in
``scope["route_handler"]``; its ``opt`` merges the app's, routers', controllers' and the
handler's own (Litestar's convention, which its rate limiter follows too). So per-route options
live next to the route: ``@post("/payments", opt={"idempotency": RouteOptions(...)})``, and
``opt={"skip_idempotency": True}`` exempts a handler (``exclude_opt_key``). The decisions stay in
``HttpIdempotency``; this module only reads ``opt``.
"""

from __future__ import annotations

from typing import Any

try:
    from litestar.config.app import AppConfig
    from litestar.middleware import DefineMiddleware
    from litestar.plugins import InitPluginProtocol
except ImportError as exc:  # pragma: no cover - exercised without litestar installed
    raise ImportError(
        "idempotent_middleware.litestar needs Litestar: "
        "pip install 'idempotent-middleware[litestar]'"
    ) from exc

from ._openapi import (
    PROBLEM_SCHEMA,
    key_parameter,
    problem_responses,
    problem_schema,
    replay_header,
)
from ._routed import RoutedIdempotency, route_options, run_route
from .config import IdempotencyConfig, RouteOptions
from .http.engine import HttpIdempotency
from .http.request import HttpRequest
from .persistence.base import BasePersistenceLayer

__all__ = ["IdempotencyPlugin", "LitestarIdempotencyMiddleware"]


class IdempotencyPlugin(InitPluginProtocol):
    """``Litestar(plugins=[IdempotencyPlugin(persistence_store=..., config=...)])``.

    Or put ``plugin.middleware`` (a ``DefineMiddleware``) in a layer's ``middleware`` list to
    cover one router only. The configuration's ``methods`` and path globs apply to handlers
    whose ``opt`` says nothing; ``opt[opt_key]`` (``RouteOptions``, a dict of its fields,
    ``True`` or ``False``) replaces them for its handler and every handler below its layer.
    """

    def __init__(
        self,
        persistence_store: BasePersistenceLayer | None = None,
        config: IdempotencyConfig | None = None,
        *,
        opt_key: str = "idempotency",
        exclude_opt_key: str | None = "skip_idempotency",
    ) -> None:
        self.routed = RoutedIdempotency(persistence_store, config, "litestar", _route)
        self.config = self.routed.config
        self.store = self.routed.store
        self.opt_key = opt_key
        self.exclude_opt_key = exclude_opt_key

    def __deepcopy__(self, memo: dict[int, Any]) -> IdempotencyPlugin:
        # Litestar deep-copies a router's middleware arguments when it registers the router;
        # a copy would hold a copy of the store (an in-memory one would forget every key).
        return self

    @property
    def middleware(self) -> DefineMiddleware:
        return DefineMiddleware(LitestarIdempotencyMiddleware, plugin=self)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.middleware.append(self.middleware)
        app_config.on_startup.append(self.validate)
        app_config.on_startup.append(self.document)
        return app_config

    def declared(self, handler: Any) -> tuple[bool, RouteOptions | None]:
        """``(exempt, options)`` for a handler: the nearest layer (the handler, then its
        controller, routers, the app) that sets ``opt_key`` or ``exclude_opt_key`` decides,
        so a handler's own options beat a skip inherited from its router. Litestar merges
        ``opt`` into the handler's, so the handler's own keys are those whose value is not
        the one its owners gave."""
        keys = [k for k in (self.exclude_opt_key, self.opt_key) if k is not None]
        layers = list(getattr(handler, "ownership_layers", (handler,)))
        inherited: dict[str, Any] = {}
        for layer in layers[:-1]:
            inherited.update(getattr(layer, "opt", None) or {})
        own = {
            k: v
            for k, v in (handler.opt or {}).items()
            if k in keys and (k not in inherited or inherited[k] is not v)
        }
        for opt in [own, *(getattr(layer, "opt", None) or {} for layer in reversed(layers[:-1]))]:
            if not any(k in opt for k in keys):
                continue
            if self.exclude_opt_key is not None and opt.get(self.exclude_opt_key):
                return True, None
            return False, route_options(opt.get(self.opt_key))
        return False, None

    def validate(self, app: Any) -> None:
        """Read every handler's options at startup: a misspelt ``opt`` is a set-up error,
        raised before anything is served, never a 500 per request."""
        for route in app.routes:
            for handler in getattr(route, "route_handlers", ()):
                exempt, options = self.declared(handler)
                if not exempt:
                    self.routed.engine_for(options, getattr(handler, "http_methods", ()))

    # --- OpenAPI ------------------------------------------------------------------------------
    def document(self, app: Any) -> None:
        """Add the contract to every covered operation of the app's OpenAPI schema, at
        startup (before anything is served): the same fragments as the FastAPI integration.
        """
        if app.openapi_config is None:
            return
        openapi = app.openapi_schema
        covered = False
        for route in app.routes:
            path = getattr(route, "path_format", None) or "/"
            item = (openapi.paths or {}).get(path)
            if item is None:
                continue
            for handler in getattr(route, "route_handlers", ()):
                exempt, options = self.declared(handler)
                if exempt:
                    continue
                methods = getattr(handler, "http_methods", ())
                engine = self.routed.engine_for(options, methods)
                if engine is None:
                    continue
                for method in methods:
                    rule = engine.rule(method, path)
                    operation = getattr(item, method.lower(), None)
                    if rule is None or operation is None:
                        continue
                    covered = True
                    _document_operation(operation, engine, rule.key_required)
        if covered:
            schemas: dict[str, Any] = openapi.components.schemas
            schemas[PROBLEM_SCHEMA] = problem_schema()


def _route(request: HttpRequest) -> str | None:
    """The route handler's path template (``scope["path_template"]``, Litestar's own)."""
    found = request.raw.get("path_template")
    return found if isinstance(found, str) and found else None


class LitestarIdempotencyMiddleware:
    """One per route handler (Litestar builds the stack per handler); no per-request state.

    The handler's declared options and its engine are resolved once per handler.
    """

    def __init__(self, app: Any, plugin: IdempotencyPlugin) -> None:
        self.app = app
        self.plugin = plugin
        #: The handler this stack serves and its engine, resolved on its first request.
        self._cached: tuple[Any, HttpIdempotency | None] | None = None

    # Litestar's own scope types are TypedDicts; the adapter takes any ASGI mapping.
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        handler = scope.get("route_handler")
        if scope["type"] != "http" or handler is None:
            await self.app(scope, receive, send)
            return
        plugin = self.plugin
        cached = self._cached
        if cached is not None and cached[0] is handler:
            engine = cached[1]
        else:  # Litestar builds one stack per handler: this runs once
            exempt, options = plugin.declared(handler)
            # ``@asgi`` handlers declare no methods: the configuration's then apply.
            engine = (
                None
                if exempt
                else plugin.routed.engine_for(options, getattr(handler, "http_methods", ()))
            )
            self._cached = (handler, engine)
        await run_route(engine, self.app, scope, receive, send)


def _document_operation(operation: Any, engine: HttpIdempotency, key_required: bool) -> None:
    """Litestar's spec objects take plain dicts anywhere (``to_schema`` passes them through)."""
    if engine.header_mode:
        name = engine.config.header_name.lower()
        parameters = list(operation.parameters or ())
        if not any(str(getattr(p, "name", "")).lower() == name for p in parameters):
            parameters.append(key_parameter(engine, key_required))
        operation.parameters = parameters
    responses = dict(operation.responses or {})
    for response in responses.values():
        if not hasattr(response, "headers"):  # a Reference: described elsewhere
            continue
        response.headers = {
            **(response.headers or {}),
            engine.config.replay_header_name: replay_header(),
        }
    for status, ours in problem_responses(engine, key_required).items():
        response = responses.get(status)
        if response is None:
            responses[status] = ours
            continue
        if not hasattr(response, "content"):  # a Reference: keep the app's own
            continue
        # Litestar's own 400 (validation error): one status, two media types.
        response.description = f"{response.description}; {ours['description']}"
        response.content = {**(response.content or {}), **ours["content"]}
        response.headers = {**(response.headers or {}), **ours.get("headers", {})}
    operation.responses = responses
