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

from ._routed import RoutedIdempotency, route_options, run_route
from .config import IdempotencyConfig
from .http.engine import HttpIdempotency
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
        self.routed = RoutedIdempotency(persistence_store, config)
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
        return app_config


class LitestarIdempotencyMiddleware:
    """One per route handler (Litestar builds the stack per handler); no per-request state.

    The exclusion key is read per request (cheap), the engine once per handler.
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
        opt = handler.opt
        if plugin.exclude_opt_key is not None and opt.get(plugin.exclude_opt_key):
            await self.app(scope, receive, send)
            return
        cached = self._cached
        if cached is not None and cached[0] is handler:
            engine = cached[1]
        else:  # Litestar builds one stack per handler: this runs once
            engine = plugin.routed.engine_for(
                # ``@asgi`` handlers declare no methods: the configuration's then apply.
                route_options(opt.get(plugin.opt_key)),
                getattr(handler, "http_methods", ()),
            )
            self._cached = (handler, engine)
        await run_route(engine, self.app, scope, receive, send)
