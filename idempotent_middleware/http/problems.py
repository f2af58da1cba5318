"""Every error response, encoded once as an RFC 9457 problem (``application/problem+json``)."""

from __future__ import annotations

import json
import math
from typing import Any

from ..config import IdempotencyConfig
from .keys import MAX_KEY_LENGTH
from .request import Headers
from .response import StoredResponse


class Problems:
    """The problems of one configuration (its type base, header name and limits)."""

    def __init__(self, config: IdempotencyConfig) -> None:
        self.base = config.problem_type_base
        self.retry_after = config.retry_after_seconds
        header = config.header_name
        self.missing = self._make(
            400,
            "idempotency-key-missing",
            "Idempotency key missing",
            f"This endpoint requires an {header} header.",
        )
        self.invalid = self._make(
            400,
            "idempotency-key-invalid",
            "Idempotency key invalid",
            f"{header} must be one printable ASCII string of 1 to {MAX_KEY_LENGTH} characters.",
        )
        self.reused = self._make(
            422,
            "idempotency-key-reused",
            "Idempotency key reused",
            "This key was already used with a different request payload.",
        )
        self.too_large = self._make(
            413,
            "request-too-large",
            "Request body too large",
            f"Keyed request bodies are limited to {config.max_request_body_bytes} bytes.",
        )
        self.incomplete = self._make(
            400,
            "request-body-incomplete",
            "Request body incomplete",
            "The request body ended early or could not be read; nothing was processed.",
        )
        self.length_required = self._make(
            411,
            "request-length-required",
            "Length required",
            "The server cannot deliver this request body without a Content-Length; "
            "send one. Nothing was processed.",
        )
        self.interrupted = self._make(
            409,
            "idempotency-request-interrupted",
            "Request interrupted",
            "The request with this key started but was interrupted before it answered; it "
            "may have taken effect, so it is not run again. Check its outcome before "
            "retrying with a new key.",
        )
        self.unavailable = self._make(
            503,
            "idempotency-store-unavailable",
            "Idempotency store unavailable",
            "The request was not processed; retry with the same key.",
            retry_after=self.retry_after,
        )
        self.corrupt = self._make(
            503,
            "idempotency-record-corrupt",
            "Idempotency record unreadable",
            "The stored record for this key cannot be read; it was logged.",
            retry_after=self.retry_after,
        )
        self.unauthenticated = self._make(
            401,
            "idempotency-scope-unauthenticated",
            "Authentication required",
            "Keyed requests to this endpoint must be authenticated; nothing was processed.",
        )
        self.scope_unavailable = self._make(
            503,
            "idempotency-scope-unavailable",
            "Idempotency scope unavailable",
            "The server could not tell whose request this is; nothing was processed. "
            "It was logged.",
        )
        self._in_progress = {
            seconds: self._in_progress_response(seconds) for seconds in range(1, 31)
        }

    def _make(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        retry_after: int | None = None,
        **extra: Any,
    ) -> StoredResponse:
        body = json.dumps(
            {"type": self.base + slug, "title": title, "status": status, "detail": detail, **extra}
        ).encode()
        headers: Headers = [
            (b"content-type", b"application/problem+json"),
            (b"cache-control", b"no-store"),
            (b"content-length", str(len(body)).encode()),
        ]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        return StoredResponse(status, headers, body)

    def _in_progress_response(self, seconds: int) -> StoredResponse:
        return self._make(
            409,
            "idempotency-key-in-progress",
            "Request in progress",
            "A request with this key is still being processed; retry later.",
            retry_after=seconds,
        )

    def in_progress(self, retry_after: float) -> StoredResponse:
        seconds = max(1, math.ceil(retry_after))
        cached = self._in_progress.get(seconds)
        return cached if cached is not None else self._in_progress_response(seconds)

    def not_replayable(self, status: int) -> StoredResponse:
        return self._make(
            409,
            "idempotency-response-not-replayable",
            "Response not replayable",
            "The request with this key was processed, but its response could not be stored "
            "(too large, cut short, or sent by a route that cannot be copied).",
            original_status=status,
        )
