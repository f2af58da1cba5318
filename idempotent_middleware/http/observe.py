"""Decision events of the HTTP engine: which source, method and route label a request has.

Called by ``HttpIdempotency`` only when someone listens (or the log level asks for the line),
so finding the route (the integration's template, else the configured pattern) costs nothing
otherwise. The route is never the raw path: clients choose paths, and labels must stay bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from .._observe import Observation, Timing, store_kind
from ..events import Decision, IdempotencyEvent
from .request import HttpRequest
from .routes import RouteTable


class HttpIdempotency(Protocol):
    """What events need of the engine (``engine.HttpIdempotency``, which imports this)."""

    source: str
    route_of: Callable[[HttpRequest], str | None] | None
    routes: RouteTable

    @property
    def store(self) -> object: ...


logger = logging.getLogger("idempotent_middleware")


def route(engine: HttpIdempotency, request: HttpRequest) -> str | None:
    """The integration's route template, else the configured pattern that covers the path."""
    find = engine.route_of
    if find is not None:
        try:
            found = find(request)
        except Exception:  # a label is never worth a failed request
            logger.debug("route template lookup failed", exc_info=True)
            found = None
        if found is not None:
            return found
    path = request.path
    raw = request.raw
    if isinstance(raw, dict) and isinstance(raw.get("path"), str) and raw.get("type") == "http":
        path = raw["path"]  # ASGI: the path the rules matched (without root_path)
    return engine.routes.pattern(path)


def event(
    engine: HttpIdempotency,
    request: HttpRequest,
    decision: Decision,
    status: int | None,
    key: str | None = None,
    timing: Timing | None = None,
    error: BaseException | None = None,
) -> IdempotencyEvent:
    return IdempotencyEvent(
        decision,
        engine.source,
        request.method,
        route(engine, request),
        status,
        store_kind(engine.store),
        key,
        store_seconds=None if timing is None else timing.store,
        wait_seconds=None if timing is None else timing.wait_seconds,
        error=None if error is None else type(error).__name__,
    )


def late_observation(engine: HttpIdempotency, key: str) -> Observation:
    """For an execution claimed while nobody listened, finishing while someone does: what
    its storage key tells (the method); no route and no handler time (not measured)."""
    found = Observation(
        engine.source, key.partition(" ")[0] or None, None, store_kind(engine.store), key
    )
    found.started = None
    return found


def observation(engine: HttpIdempotency, request: HttpRequest, key: str) -> Observation:
    """The shared fields of one execution's later events (completion, lease)."""
    return Observation(
        engine.source, request.method, route(engine, request), store_kind(engine.store), key
    )


def scope_route(scope: Any) -> str | None:
    """Starlette / FastAPI: the matched route's template (``scope["route"].path_format``)."""
    found = getattr(scope.get("route"), "path_format", None)
    return found if isinstance(found, str) else None
