"""Configuration: one frozen object shared by the decorator and both HTTP middlewares."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from .http.request import HttpRequest

#: Statuses never stored by default: the client should be able to retry and really run again.
#: (Stripe stores 5xx too; we do not, on purpose: a 503 from a dependency is transient.)
TRANSIENT_STATUSES = frozenset({408, 425, 429})

#: Statuses never stored by default because they say "no such route or method" (RFC 9110,
#: sections 15.5.5, 15.5.6 and 15.6.2): stored, they let any client fill the store with keys
#: sent to routes that do not exist. The handler did nothing, so a retry may run again.
UNROUTED_STATUSES = frozenset({404, 405, 501})

_NOT_STORED = TRANSIENT_STATUSES | UNROUTED_STATUSES


class LambdaContext(Protocol):
    """What the lease needs from an invocation context (AWS Lambda's, or any look-alike)."""

    def get_remaining_time_in_millis(self) -> int: ...


#: The invocation contexts registered in the current thread / task, by ``id`` of their config
#: (a ContextVar: concurrent async invocations sharing one config never see each other's).
_LAMBDA_CONTEXTS: ContextVar[dict[int, tuple[object, LambdaContext]]] = ContextVar(
    "idempotency_lambda_contexts"
)


def default_store_status(status: int) -> bool:
    """Store every final response except 5xx, 408, 425, 429, 404 and 405.

    What is not stored releases the claim: a retry runs the handler again.
    """
    return status < 500 and status not in _NOT_STORED


@dataclass(frozen=True)
class RouteOptions:
    """Per-route overrides; ``None`` keeps the middleware-wide value."""

    raise_on_no_idempotency_key: bool | None = None
    expires_after_seconds: int | None = None
    methods: Collection[str] | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        # Refused here, at declaration: a wrong value would otherwise be a 500 per request
        # or, worse, a route silently unprotected.
        ttl = self.expires_after_seconds
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
            raise ValueError(f"expires_after_seconds must be a positive int, not {ttl!r}")
        if isinstance(self.methods, (str, bytes)):
            # "PUT" is a Collection[str] of "P", "U", "T": the route would not be covered.
            raise TypeError(f"methods must be a collection of method names, not {self.methods!r}")
        if self.methods is not None and not all(isinstance(m, str) for m in self.methods):
            raise TypeError(f"methods must be strings, not {self.methods!r}")
        if self.raise_on_no_idempotency_key not in (None, True, False):
            raise TypeError("raise_on_no_idempotency_key must be a bool or None")
        if self.enabled not in (True, False):
            raise TypeError("enabled must be a bool")


@dataclass(frozen=True)
class IdempotencyConfig:
    """Settings, named after the Powertools ``IdempotencyConfig`` where it has the setting.

    The first block serves every caller; the second only the HTTP middlewares.
    """

    event_key_jmespath: str = ""
    payload_validation_jmespath: str | None = None
    jmespath_options: Mapping[str, Any] | None = None
    raise_on_no_idempotency_key: bool = False
    expires_after_seconds: int = 60 * 60 * 24
    lease_seconds: float = 30.0
    use_local_cache: bool = False
    local_cache_max_items: int = 256
    hash_function: str = "sha256"
    local_cache_max_bytes: int = 16 * 1024 * 1024
    #: Renewal of one execution's lease stops after this long (a response nobody closes, a
    #: stuck handler): the key then frees one lease later instead of never.
    max_lease_hold_seconds: float = 3600.0
    #: ``idempotent_function`` / ``idempotent`` only: called as ``response_hook(result,
    #: data_record)`` on every replay of a stored result; what it returns is what the caller
    #: gets (Powertools' hook, e.g. to mark replays).
    response_hook: Callable[[Any, Any], Any] | None = None

    # HTTP only.
    header_name: str = "Idempotency-Key"
    methods: Collection[str] = frozenset({"POST", "PATCH"})
    #: Which final responses are stored (a set of statuses, or a predicate); any other
    #: releases the claim. Default: all but 5xx, 408, 425, 429, 404 and 405.
    store_status: Callable[[int], bool] | Collection[int] = default_store_status
    scope: Callable[[HttpRequest], str | None] | None = None
    include_paths: Collection[str] | None = None
    exclude_paths: Collection[str] = ()
    routes: Mapping[str, RouteOptions] = field(default_factory=dict)
    max_request_body_bytes: int = 1024 * 1024
    max_response_body_bytes: int = 1024 * 1024
    fail_open: bool = False
    on_in_progress: Literal["reject", "wait"] = "reject"
    wait_timeout_seconds: float = 10.0
    retry_after_seconds: int = 1
    replay_header_name: str = "Idempotent-Replayed"
    replay_exclude_headers: Collection[str] = frozenset({"set-cookie"})
    problem_type_base: str = "https://idempotent-middleware.dev/problems/"
    on_replay: Callable[[str], None] | None = None
    on_conflict: Callable[[str, int], None] | None = None
    on_store_error: Callable[[Exception], None] | None = None

    def register_lambda_context(self, lambda_context: LambdaContext) -> None:
        """Bound the leases of this config's functions by the invocation's remaining time (the
        seed's ``remaining_time_in_millis``; still renewed while the function runs), in the
        current thread or task and what it starts.

        The config stays immutable and shareable: the context lives in a ContextVar.
        """
        registered = dict(_LAMBDA_CONTEXTS.get({}))
        registered[id(self)] = (self, lambda_context)
        _LAMBDA_CONTEXTS.set(registered)

    @property
    def lambda_context(self) -> LambdaContext | None:
        """The context registered for this config in the current thread / task, if any."""
        entry = _LAMBDA_CONTEXTS.get({}).get(id(self))
        return entry[1] if entry is not None and entry[0] is self else None

    def __post_init__(self) -> None:
        if self.expires_after_seconds <= 0:
            raise ValueError("expires_after_seconds must be positive")
        if self.lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if self.max_lease_hold_seconds <= 0:
            raise ValueError("max_lease_hold_seconds must be positive")
        if self.on_in_progress not in ("reject", "wait"):
            raise ValueError("on_in_progress must be 'reject' or 'wait'")
        if self.local_cache_max_items <= 0:
            raise ValueError("local_cache_max_items must be positive")
        if self.local_cache_max_bytes <= 0:
            raise ValueError("local_cache_max_bytes must be positive")
        import hashlib

        if self.hash_function not in hashlib.algorithms_available:
            raise ValueError(f"unknown hash_function {self.hash_function!r}")
