"""Per-route engines for integrations that run after the framework matched the route.

FastAPI and Litestar know which route a request reached and what options it declares; the
decisions stay in ``HttpIdempotency`` and the byte handling in the ASGI adapter. This module only
turns a route's options into an engine (one per distinct set of options, built once) and runs the
ASGI adapter around the route's own ASGI app with it.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
from typing import Any

from ._forksafe import renew_after_fork
from .asgi import IdempotencyMiddleware, Receive, Scope, Send
from .config import IdempotencyConfig, RouteOptions
from .http.engine import HttpIdempotency
from .http.request import HttpRequest, normalise_method
from .persistence.base import BasePersistenceLayer

#: RFC 9110 section 9.2.1: safe methods change nothing, so a route's options never cover them
#: unless its ``methods`` names them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

_OptionsKey = tuple[bool | None, int | None, frozenset[str]]


class RoutedIdempotency:
    """The engines of one integration: the configuration's own, and one per route options."""

    def __init__(
        self,
        persistence_store: BasePersistenceLayer | None,
        config: IdempotencyConfig | None,
        source: str = "asgi",
        route_of: Callable[[HttpRequest], str | None] | None = None,
    ) -> None:
        #: Events' ``source`` and route template of every engine built here.
        self.source, self.route_of = source, route_of
        self.base = self._labelled(HttpIdempotency.for_middleware(persistence_store, config))
        self.config = self.base.config
        self.store = self.base.store
        self._engines: dict[_OptionsKey, HttpIdempotency] = {}
        self._lock = threading.Lock()
        renew_after_fork(self, "_lock")

    def engine_for(
        self, options: RouteOptions | None, route_methods: Collection[str]
    ) -> HttpIdempotency | None:
        """The engine for a route: None when it is exempt, the configuration's own when it
        declares nothing (path globs then apply as in the plain middleware), else one built
        from its options. A route's options replace the globs: they sit next to the route."""
        if options is None:
            return self.base
        if not options.enabled:
            return None
        if options.methods is not None:
            methods = frozenset(normalise_method(m) for m in options.methods)
        elif route_methods:
            methods = frozenset(normalise_method(m) for m in route_methods) - SAFE_METHODS
        else:  # a route that takes any method (Litestar's @asgi): the configuration's
            methods = self.base.routes.methods
        key = (options.raise_on_no_idempotency_key, options.expires_after_seconds, methods)
        engine = self._engines.get(key)
        if engine is None:
            with self._lock:
                engine = self._engines.get(key)
                if engine is None:
                    engine = self._labelled(
                        HttpIdempotency(self.route_config(options, methods), self.store)
                    )
                    self._engines[key] = engine
        return engine

    def _labelled(self, engine: HttpIdempotency) -> HttpIdempotency:
        engine.source, engine.route_of = self.source, self.route_of
        return engine

    def route_config(self, options: RouteOptions, methods: frozenset[str]) -> IdempotencyConfig:
        cfg = self.config
        return replace(
            cfg,
            methods=methods,
            raise_on_no_idempotency_key=cfg.raise_on_no_idempotency_key
            if options.raise_on_no_idempotency_key is None
            else options.raise_on_no_idempotency_key,
            expires_after_seconds=cfg.expires_after_seconds
            if options.expires_after_seconds is None
            else options.expires_after_seconds,
            routes={},
            include_paths=None,
            exclude_paths=(),
        )


class RouteMiddleware(IdempotencyMiddleware):
    """The ASGI adapter around one route's app, sharing an engine built once elsewhere."""

    def __init__(self, app: Callable[..., Awaitable[None]], engine: HttpIdempotency) -> None:
        # Deliberately not super().__init__: that builds an engine, and this one is shared.
        self.app = app
        self.engine = engine


async def run_route(
    engine: HttpIdempotency | None,
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Run ``app`` (the matched route) under ``engine``; straight through when exempt."""
    if engine is None:
        await app(scope, receive, send)
        return
    await RouteMiddleware(app, engine)(scope, receive, send)


def route_options(value: Any) -> RouteOptions | None:
    """Options as a user may spell them: RouteOptions, a dict of its fields, True (defaults
    of the route) or False (exempt); None means "nothing declared"."""
    if value is None or isinstance(value, RouteOptions):
        return value
    if value is True:
        return RouteOptions()
    if value is False:
        return RouteOptions(enabled=False)
    if isinstance(value, dict):
        return RouteOptions(**value)
    raise TypeError(f"idempotency options must be RouteOptions, a dict or a bool, not {value!r}")
