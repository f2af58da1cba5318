"""Configuration: one frozen object shared by the decorator and both HTTP middlewares."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._http import HttpRequest

#: Statuses never stored by default: the client should be able to retry and really run again.
#: (Stripe stores 5xx too; we do not, on purpose: a 503 from a dependency is transient.)
TRANSIENT_STATUSES = frozenset({408, 425, 429})


def default_store_status(status: int) -> bool:
    """Store every final response except 5xx, 408, 425 and 429."""
    return status < 500 and status not in TRANSIENT_STATUSES


@dataclass(frozen=True)
class RouteOptions:
    """Per-route overrides; ``None`` keeps the middleware-wide value."""

    raise_on_no_idempotency_key: bool | None = None
    expires_after_seconds: int | None = None
    methods: Collection[str] | None = None
    enabled: bool = True


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

    # HTTP only.
    header_name: str = "Idempotency-Key"
    methods: Collection[str] = frozenset({"POST", "PATCH"})
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

    def __post_init__(self) -> None:
        if self.expires_after_seconds <= 0:
            raise ValueError("expires_after_seconds must be positive")
        if self.lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if self.on_in_progress not in ("reject", "wait"):
            raise ValueError("on_in_progress must be 'reject' or 'wait'")
        if self.local_cache_max_items <= 0:
            raise ValueError("local_cache_max_items must be positive")
        if self.local_cache_max_bytes <= 0:
            raise ValueError("local_cache_max_bytes must be positive")
        import hashlib

        if self.hash_function not in hashlib.algorithms_available:
            raise ValueError(f"unknown hash_function {self.hash_function!r}")
