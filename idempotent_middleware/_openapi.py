"""The OpenAPI 3.1 fragments of the contract, as plain dicts any integration can place.

What a covered operation gains: the key header parameter, the replay header on its own
responses, and the problems the middleware answers with (RFC 9457 ``application/problem+json``)
with this configuration's real bodies as examples. No framework is imported here.
"""

from __future__ import annotations

import json
from typing import Any

from .http.engine import HttpIdempotency
from .http.keys import MAX_KEY_LENGTH
from .http.response import StoredResponse
from .http.routes import Rule

PROBLEM_SCHEMA = "IdempotencyProblem"
PROBLEM_MEDIA_TYPE = "application/problem+json"
#: Printable ASCII, as ``http.keys.parse_key`` accepts it (RFC 8941 quoted form included).
KEY_PATTERN = "^[\\x20-\\x7E]+$"
EXTENSION = "x-idempotency"


def key_parameter(engine: HttpIdempotency, required: bool) -> dict[str, Any]:
    return {
        "name": engine.config.header_name,
        "in": "header",
        "required": required,
        "description": (
            "Makes the request safe to retry: the first request with a key runs, every retry "
            "with the same key and body gets its stored response "
            "(draft-ietf-httpapi-idempotency-key-header)."
        ),
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_KEY_LENGTH,
            "pattern": KEY_PATTERN,
        },
    }


def replay_header() -> dict[str, Any]:
    return {
        "description": "`true` when this is the stored response of an earlier request with "
        "the same key, replayed.",
        "schema": {"type": "string", "enum": ["true"]},
    }


def problem_responses(engine: HttpIdempotency, key_required: bool) -> dict[str, dict[str, Any]]:
    """Status -> ``{"description", "content": {problem media type}, "headers"?}``."""
    cfg = engine.config
    problems = engine.problems
    by_status: dict[int, list[tuple[str, StoredResponse]]] = {
        400: [("invalid", problems.invalid), ("incomplete", problems.incomplete)],
        409: [
            ("in-progress", problems.in_progress(cfg.retry_after_seconds)),
            ("interrupted", problems.interrupted),
            ("not-replayable", problems.not_replayable(200)),
        ],
        411: [("length-required", problems.length_required)],
        413: [("too-large", problems.too_large)],
        422: [("reused", problems.reused)],
        503: [("unavailable", problems.unavailable), ("corrupt", problems.corrupt)],
    }
    if key_required:
        by_status[400].insert(0, ("missing", problems.missing))
    if cfg.scope is not None:  # only a scope hook refuses or fails (``scopes.py``)
        by_status[401] = [("scope-unauthenticated", problems.unauthenticated)]
        by_status[503].append(("scope-unavailable", problems.scope_unavailable))
    by_status = dict(sorted(by_status.items()))
    out: dict[str, dict[str, Any]] = {}
    for status, found in by_status.items():
        bodies = [(name, json.loads(problem.body)) for name, problem in found]
        response: dict[str, Any] = {
            "description": "; ".join(body["title"] for _, body in bodies),
            "content": {
                PROBLEM_MEDIA_TYPE: {
                    "schema": {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA}"},
                    "examples": {name: {"value": body} for name, body in bodies},
                }
            },
        }
        if status in (409, 503):
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying with the same key.",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        out[str(status)] = response
    return out


def extension(engine: HttpIdempotency, rule: Rule) -> dict[str, Any]:
    """The ``x-idempotency`` operation extension: the route's resolved options."""
    return {
        "header": engine.config.header_name if engine.header_mode else None,
        "keyRequired": rule.key_required,
        "expiresAfterSeconds": rule.expires_after_seconds,
    }


def problem_schema() -> dict[str, Any]:
    """RFC 9457 section 3.1 members, plus our ``original_status`` extension."""
    return {
        "type": "object",
        "title": "Problem details (RFC 9457)",
        "properties": {
            "type": {"type": "string", "format": "uri-reference"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 100, "maximum": 599},
            "detail": {"type": "string"},
            "original_status": {
                "type": "integer",
                "description": "The status of the response that could not be stored.",
            },
        },
        "required": ["type", "title", "status", "detail"],
    }
