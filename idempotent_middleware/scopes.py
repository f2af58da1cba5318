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
from typing import Literal

from .exceptions import IdempotencyScopeError, IdempotencyScopeRefusedError
from .http.request import HttpRequest

#: The environment variable ``credential_scope`` reads its secret from by default.
SECRET_ENVIRONMENT_VARIABLE = "IDEMPOTENCY_SCOPE_SECRET"
#: The shortest secret accepted: an HMAC key shorter than this is guessable.
MIN_SECRET_BYTES = 16


def credential_scope(
    header: str | Sequence[str] = "authorization",
    *,
    secret: str | bytes | None = None,
    required: bool = False,
) -> Callable[[HttpRequest], str | None]:
    """A ``scope`` hook: the tenant is HMAC-SHA256(secret, the credential header's value).

    ``header``: one header name (``"authorization"``, ``"x-api-key"``) or several (every
    one present is covered, in the order given). A request without any of them is unscoped
    (None), as with no hook: anonymous keyed requests share one key space; ``required=True``
    refuses them instead with a 401 problem (``IdempotencyScopeRefusedError``), nothing
    claimed. The value is taken as sent, surrounding blanks aside: a client
    that spells its scheme differently on a retry (``bearer`` for ``Bearer``) gets a fresh
    execution, never somebody else's response. The scope is the credential, not the user:
    a client whose access token is refreshed (rotated) between two tries of one key gets a
    fresh execution under the new token. Keep a token for the whole retry loop of a key,
    or scope by the user (``user_scope``) where authentication runs before our middleware.

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
        if found:
            return mac.hexdigest()
        if required:
            raise IdempotencyScopeRefusedError("credential_scope: no credential header")
        return None

    return scope


def user_scope(
    attribute: str = "id", *, anonymous: Literal["refuse", "unscoped"] = "refuse"
) -> Callable[[HttpRequest], str | None]:
    """A ``scope`` hook: the tenant is the authenticated user an authentication middleware
    that ran before ours left in the ASGI scope (``scope["user"]``: Litestar's
    ``AbstractAuthenticationMiddleware``, Starlette's ``AuthenticationMiddleware``).

    Fails closed, because an unscoped key lets one user receive another's response:

    * an authenticated user without ``attribute`` (Starlette's ``SimpleUser`` has only
      ``username``: pass ``user_scope("username")``) raises ``IdempotencyScopeError``
      (a 503 problem, logged: a set-up error);
    * no ``scope["user"]`` at all means authentication has not run yet (it is added after
      our middleware: a Litestar router-level or a FastAPI dependency): the same error;
    * an anonymous caller (``is_authenticated`` false) is refused with a 401 problem
      (``IdempotencyScopeRefusedError``).

    ``anonymous="unscoped"`` opts in to anonymous callers: they (and requests with no
    ``scope["user"]``, e.g. paths the authentication middleware excludes) are unscoped and
    share one key space, as with no hook. Authentication inside the app (FastAPI
    dependencies, Litestar guards) runs after the claim: use ``credential_scope`` there.
    """
    if anonymous not in ("refuse", "unscoped"):
        raise ValueError(f'user_scope anonymous must be "refuse" or "unscoped", not {anonymous!r}')

    def scope(request: HttpRequest) -> str | None:
        raw = request.raw
        if not isinstance(raw, dict) or "user" not in raw:
            if anonymous == "unscoped":
                return None
            raise IdempotencyScopeError(
                'user_scope: no scope["user"]: the authentication middleware must run before '
                "the idempotency middleware (app-level, added after it), or use "
                "credential_scope"
            )
        user = raw["user"]
        if user is None or getattr(user, "is_authenticated", True) is False:
            if anonymous == "unscoped":
                return None
            raise IdempotencyScopeRefusedError("user_scope: anonymous caller refused")
        found = user.get(attribute) if isinstance(user, dict) else getattr(user, attribute, None)
        if found is None:
            raise IdempotencyScopeError(
                f"user_scope: the authenticated {type(user).__name__} has no {attribute!r}"
            )
        # A type prefix keeps the user 7 apart from the user "7" of another kind of id.
        return f"{type(found).__name__}:{found}"

    return scope
