"""Ready ``scope`` hooks: keys scoped by the client's credential, for any adapter.

In FastAPI (and any ASGI or WSGI app that authenticates inside the app) the middleware runs
before authentication, so it cannot ask who the user is. It can see the credential the user
sent: two clients with different credentials never share a key, and a client's retry (same
credential) replays its own response. The credential is reduced to a keyed hash (HMAC-SHA256,
RFC 2104) at once: it is never stored, logged or handed to a hook, and someone who reads the
store cannot test guessed passwords or tokens against it without the server's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Sequence

from .http.request import HttpRequest

#: The environment variable ``credential_scope`` reads its secret from by default.
SECRET_ENVIRONMENT_VARIABLE = "IDEMPOTENCY_SCOPE_SECRET"
#: The shortest secret accepted: an HMAC key shorter than this is guessable.
MIN_SECRET_BYTES = 16


def credential_scope(
    header: str | Sequence[str] = "authorization",
    *,
    secret: str | bytes | None = None,
) -> Callable[[HttpRequest], str | None]:
    """A ``scope`` hook: the tenant is HMAC-SHA256(secret, the credential header's value).

    ``header``: one header name (``"authorization"``, ``"x-api-key"``) or several (every
    one present is covered, in the order given). A request without any of them is unscoped
    (None), as with no hook. The value is taken as sent, surrounding blanks aside: a client
    that spells its scheme differently on a retry (``bearer`` for ``Bearer``) gets a fresh
    execution, never somebody else's response.

    ``secret``: the HMAC key, at least 16 bytes; default: the ``IDEMPOTENCY_SCOPE_SECRET``
    environment variable. Every worker serving the same store needs the same secret (a
    retry reaching another worker must find its record), so there is no random default.
    Changing it starts every key afresh for one TTL. Raises ``ValueError`` when it is missing
    or short, at set-up rather than on the first request.
    """
    names = (header,) if isinstance(header, str) else tuple(header)
    if not names:
        raise ValueError("credential_scope needs at least one header name")
    wanted = tuple(name.lower().encode("latin-1") for name in names)
    if secret is None:
        secret = os.environ.get(SECRET_ENVIRONMENT_VARIABLE)
        if not secret:
            raise ValueError(
                f"credential_scope needs a secret: pass secret=... or set "
                f"{SECRET_ENVIRONMENT_VARIABLE} (the same value in every worker)"
            )
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"credential_scope's secret must be at least {MIN_SECRET_BYTES} bytes")

    def scope(request: HttpRequest) -> str | None:
        mac = hmac.new(key, digestmod=hashlib.sha256)
        found = False
        for name in wanted:
            for value in request.header_values(name):
                found = True
                # Name and length prefix each value: no two header sets share an input.
                value = value.strip(b" \t")
                mac.update(b"%s:%d:" % (name, len(value)))
                mac.update(value)
        return mac.hexdigest() if found else None

    return scope


def user_scope(attribute: str = "id") -> Callable[[HttpRequest], str | None]:
    """A ``scope`` hook: the tenant is the authenticated user an authentication middleware
    that ran before ours left in the ASGI scope (``scope["user"]``: Litestar's
    ``AbstractAuthenticationMiddleware``, Starlette's ``AuthenticationMiddleware``).

    ``attribute`` names the user's stable identifier (``"id"``; a mapping user is read by
    key). No user, a user whose ``is_authenticated`` is false (Starlette's
    ``UnauthenticatedUser``) or no such identifier: unscoped (None). Only for middleware
    that runs before ours; authentication inside the app (FastAPI dependencies, Litestar
    guards) has not happened yet: use ``credential_scope`` there.
    """

    def scope(request: HttpRequest) -> str | None:
        raw = request.raw
        user = raw.get("user") if isinstance(raw, dict) else None
        if user is None or getattr(user, "is_authenticated", True) is False:
            return None
        found = user.get(attribute) if isinstance(user, dict) else getattr(user, attribute, None)
        # A type prefix keeps the user 7 apart from the user "7" of another kind of id.
        return None if found is None else f"{type(found).__name__}:{found}"

    return scope
