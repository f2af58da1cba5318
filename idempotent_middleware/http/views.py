"""Per-view options as the framework integrations attach them: one attribute on the view.

``@idempotent(...)`` and ``@idempotent_exempt`` (Django) and ``@idempotency.idempotent(...)`` /
``@idempotency.exempt`` (Flask) only mark the function; the integration reads the mark when it
resolves the view, so the decorator order against the framework's own decorators does not
matter as long as the framework keeps the function's attributes (``functools.wraps`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar, overload

from ..config import RouteOptions

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute that carries a view's ``RouteOptions``.
ATTRIBUTE = "idempotency_options"

EXEMPT = RouteOptions(enabled=False)


def mark(view: F, options: RouteOptions) -> F:
    setattr(view, ATTRIBUTE, options)
    return view


def options_of(target: object) -> RouteOptions | None:
    found = getattr(target, ATTRIBUTE, None)
    return found if isinstance(found, RouteOptions) else None


def options(
    raise_on_no_idempotency_key: bool | None,
    expires_after_seconds: int | None,
    methods: Collection[str] | None,
) -> RouteOptions:
    if expires_after_seconds is not None and expires_after_seconds <= 0:
        raise ValueError("expires_after_seconds must be positive")
    return RouteOptions(
        raise_on_no_idempotency_key=raise_on_no_idempotency_key,
        expires_after_seconds=expires_after_seconds,
        methods=None if methods is None else frozenset(m.upper() for m in methods),
    )


@overload
def idempotent(view: F, /) -> F: ...
@overload
def idempotent(
    view: None = None,
    /,
    *,
    raise_on_no_idempotency_key: bool | None = None,
    expires_after_seconds: int | None = None,
    methods: Collection[str] | None = None,
) -> Callable[[F], F]: ...
def idempotent(
    view: F | None = None,
    /,
    *,
    raise_on_no_idempotency_key: bool | None = None,
    expires_after_seconds: int | None = None,
    methods: Collection[str] | None = None,
) -> F | Callable[[F], F]:
    """Cover this view (``@idempotent`` or ``@idempotent(raise_on_no_idempotency_key=True)``).

    The arguments are ``RouteOptions``' (as in the FastAPI integration):
    ``raise_on_no_idempotency_key``: answer 400 without a key; ``expires_after_seconds``: how
    long its records live; ``methods``: which methods are covered (default: the configured
    ones). ``None`` keeps the configured value. The view's options win over path rules.
    """
    chosen = options(raise_on_no_idempotency_key, expires_after_seconds, methods)
    if view is not None:
        return mark(view, chosen)

    def decorate(target: F) -> F:
        return mark(target, chosen)

    return decorate


def exempt(view: F) -> F:
    """Never cover this view, whatever the path rules say."""
    return mark(view, EXEMPT)
