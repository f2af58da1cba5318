"""The HTTP half of the core, shared by ``asgi.py`` and ``wsgi.py``. No I/O.

Everything an adapter would otherwise decide lives here: which requests we handle, the key and
its validation, the fingerprint, the claim, what a replay looks like, which responses are
stored, and every error as a pre-encoded RFC 9457 problem. The adapters only move bytes.

Rules come from the IETF draft "The Idempotency-Key HTTP Header Field"
(draft-ietf-httpapi-idempotency-key-header; we are modelled on it, it is still a draft),
RFC 9457 (problem details), RFC 8941/9651 (structured fields) and Stripe's documented limits.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import re
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from ._core import Claimed, Replay, plan_claim, plan_complete, plan_release
from ._steps import Plan
from .config import IdempotencyConfig, RouteOptions
from .exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyCorruptRecordError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from .persistence.base import BasePersistenceLayer, DataRecord, KeyScheme, canonical_json

logger = logging.getLogger("idempotent_middleware")

Headers = list[tuple[bytes, bytes]]

#: Stripe's documented maximum key length; the draft sets none.
MAX_KEY_LENGTH = 255

#: Paths up to this many UTF-8 bytes appear whole in the storage key. A longer path is folded
#: into the key's hash and only its first ``KEY_PATH_PREFIX_BYTES`` stay readable: the request
#: path is client-controlled, and a key sized by it let any client fill the store.
KEY_PATH_MAX_BYTES = 128
KEY_PATH_PREFIX_BYTES = 64


def normalise_method(method: str) -> str:
    """The method as Werkzeug and Django route it (``post`` is POST); the ASGI spec asks
    servers to upper-case it, but not every server does (h11-based ones pass it as sent)."""
    return method.upper()


class _NumberLiteral(str):
    """A JSON number (or NaN/Infinity) kept as written, for fingerprints only.

    ``canonical_json`` writes it as a string behind a NUL, so it never equals the number's
    float rounding; a JSON string equal to it would have to start with U+0000.
    """

    __slots__ = ()

    def __new__(cls, text: str) -> _NumberLiteral:
        return super().__new__(cls, "\x00" + text)


class HttpRequest:
    """What the core sees of a request; ``raw`` is the ASGI scope or the WSGI environ."""

    __slots__ = ("_document", "body", "headers", "key", "method", "path", "query", "raw")

    def __init__(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: Headers,
        raw: Any,
        body: bytes = b"",
    ) -> None:
        #: Upper-cased: the key, the fingerprint and the JMESPath document see one spelling.
        self.method = normalise_method(method)
        self.path = path
        self.query = query
        self.headers = headers
        self.raw = raw
        self.body = body
        #: The parsed header key (header mode), set by ``HttpIdempotency.precheck``.
        self.key: bytes | None = None
        self._document: dict[str, Any] | None = None

    def header(self, name: bytes) -> bytes | None:
        """The last value of a (lower-case) header, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    def header_values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    def json_body(self, *, literal_numbers: bool = False) -> Any:
        """The parsed body for JSON content types, else None (invalid JSON is None too).

        ``literal_numbers`` keeps every non-integer number as the text it was written in
        (``_NumberLiteral``): parsed as floats, ``12345678901234567890.5`` and ``...0.6`` (or
        ``1e400`` and ``2e999``) are one value, and an API that parses Decimals would see two
        payloads share one fingerprint.
        """
        content_type = (self.header(b"content-type") or b"").split(b";", 1)[0].strip().lower()
        if not (content_type == b"application/json" or content_type.endswith(b"+json")):
            return None
        try:
            if literal_numbers:
                return json.loads(
                    self.body, parse_float=_NumberLiteral, parse_constant=_NumberLiteral
                )
            return json.loads(self.body)
        except (ValueError, RecursionError):
            return None

    def document(self) -> dict[str, Any]:
        """The JMESPath document: method, path, query, headers and JSON body."""
        if self._document is None:
            self._document = {
                "method": self.method,
                "path": self.path,
                "query": dict(parse_qsl(self.query.decode("latin-1"), keep_blank_values=True)),
                "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers},
                "body": self.json_body(),
            }
        return self._document


@dataclass(slots=True)
class StoredResponse:
    """A response as stored and replayed: status, headers in order, body bytes.

    ``complete`` is False for a response that was not kept whole (too large, cut short, sent
    by a route we cannot copy): the record then says "executed, status N" so that a retry
    never runs the handler a second time. ``interrupted`` marks an execution that started but
    gave no response at all (cancelled, client gone, returned without answering): executed,
    outcome unknown. ``reason`` is a WSGI reason phrase as sent, when not the standard one.
    """

    status: int
    headers: Headers
    body: bytes
    complete: bool = True
    reason: str | None = None
    interrupted: bool = False
    #: Not stored. False when the app stopped before its response ended (cut mid-body,
    #: interrupted): it ran, so the status policy may not release the key (contract C3).
    finished: bool = True

    #: status, flags, header count, body length (a cut or padded record is caught).
    _HEAD = struct.Struct(">HBHI")
    _PAIR = struct.Struct(">HI")
    _REASON = struct.Struct(">H")
    _NO_REASON = 0xFFFF
    #: Flags. Format 1 knows only 0 (not replayable) and 1 (complete). Format 2 sets
    #: ``_FORMAT2`` and appends a trailer (reason length and bytes) after the body, so that a
    #: format-1 reader (a rolling deploy) finds bytes past the body and reports the record
    #: corrupt (503) instead of replaying a record it does not understand.
    _COMPLETE = 0x01
    _INTERRUPTED = 0x02
    _FORMAT2 = 0x80

    def encode(self) -> bytes:
        flags = self._COMPLETE if self.complete else 0
        trailer = None
        if self.interrupted or self.reason is not None:
            flags |= self._FORMAT2 | (self._INTERRUPTED if self.interrupted else 0)
            if self.reason is None:
                trailer = self._REASON.pack(self._NO_REASON)
            else:
                reason = self.reason.encode("latin-1")
                trailer = self._REASON.pack(len(reason)) + reason
        parts = [self._HEAD.pack(self.status, flags, len(self.headers), len(self.body))]
        for name, value in self.headers:
            parts.append(self._PAIR.pack(len(name), len(value)))
            parts.append(name)
            parts.append(value)
        parts.append(self.body)
        if trailer is not None:
            parts.append(trailer)
        return b"".join(parts)

    @classmethod
    def decode(cls, raw: bytes) -> StoredResponse:
        try:
            status, flags, count, body_length = cls._HEAD.unpack_from(raw)
            offset = cls._HEAD.size
            headers: Headers = []
            for _ in range(count):
                name_len, value_len = cls._PAIR.unpack_from(raw, offset)
                offset += cls._PAIR.size
                name = raw[offset : offset + name_len]
                offset += name_len
                value = raw[offset : offset + value_len]
                offset += value_len
                if len(value) != value_len:
                    raise ValueError("truncated header")
                headers.append((name, value))
            body = raw[offset : offset + body_length]
            end = offset + body_length
            reason = None
            if flags & cls._FORMAT2:
                if flags & ~(cls._FORMAT2 | cls._COMPLETE | cls._INTERRUPTED):
                    raise ValueError(f"unknown flags {flags:#x}")
                (reason_length,) = cls._REASON.unpack_from(raw, end)
                end += cls._REASON.size
                if reason_length != cls._NO_REASON:
                    reason_bytes = raw[end : end + reason_length]
                    end += reason_length
                    if len(reason_bytes) != reason_length:
                        raise ValueError("truncated reason phrase")
                    reason = reason_bytes.decode("latin-1")
            elif flags not in (0, cls._COMPLETE):
                raise ValueError(f"unknown flags {flags:#x}")
            if len(body) != body_length or len(raw) != end:
                raise ValueError(f"{len(raw) - offset} bytes after the headers, {body_length} body")
        except (struct.error, ValueError) as exc:
            raise IdempotencyCorruptRecordError(f"undecodable stored response: {exc}") from exc
        return cls(
            status,
            headers,
            body,
            bool(flags & cls._COMPLETE),
            reason,
            bool(flags & cls._INTERRUPTED),
        )


class ResponseCapture:
    """Keeps a bounded copy of a response while it streams to the client."""

    __slots__ = (
        "cap",
        "chunks",
        "excluded",
        "expected",
        "headers",
        "overflow",
        "reason",
        "size",
        "status",
    )

    def __init__(self, cap: int, excluded: frozenset[bytes]) -> None:
        self.cap = cap
        self.excluded = excluded
        self.status = 0
        self.reason: str | None = None
        self.headers: Headers = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.expected: int | None = None
        self.overflow = False

    def start(self, status: int, headers: Headers, reason: str | None = None) -> None:
        """``reason``: the WSGI reason phrase as sent (ASGI has none)."""
        self.status = status
        self.reason = _nonstandard_reason(status, reason)
        # Excluded headers (Set-Cookie by default) are never stored, so never replayed;
        # framing headers belong to the connection that carried the original.
        kept = []
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                self.expected = int(value) if value.isdigit() else None
            elif lower in self.excluded or lower == b"transfer-encoding":
                continue
            kept.append((name, value))
        self.headers = kept

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.overflow or not chunk:
            return
        if self.size > self.cap:
            self.overflow = True
            self.chunks = []
        else:
            self.chunks.append(chunk)

    @property
    def has_declared_length(self) -> bool:
        """True once the body holds every byte its Content-Length announced."""
        return self.expected is not None and self.size >= self.expected

    def give_up(self) -> None:
        """The body went out by a route we cannot copy (e.g. ASGI pathsend)."""
        self.overflow = True
        self.chunks = []

    def result(self) -> StoredResponse:
        if self.overflow:
            return StoredResponse(self.status, [], b"", complete=False)
        return StoredResponse(self.status, self.headers, b"".join(self.chunks), reason=self.reason)

    def outcome(
        self, error: BaseException | None, *, finished: bool, client_gone: bool = False
    ) -> StoredResponse | None:
        """What to record once the app stopped; None means "release the key".

        Started means it may have had side effects (contract C3): only an application
        exception (``Exception``) raised before any response started, while the client is
        still there, gives the key back. Cancellation, ``KeyboardInterrupt``, ``SystemExit``,
        a client that left, an app that returned without a response or stopped mid-body:
        recorded as executed, so that no retry runs it again.
        """
        if error is None and finished and self.status:
            return self.result()
        if isinstance(error, Exception) and not self.status and not client_gone:
            return None
        if self.status and (self.size or self.overflow):
            # Part of the body (or a body we could not copy) went out: executed, status N.
            self.give_up()
            stopped = self.result()
            stopped.finished = False
            return stopped
        # No response, or none of its body: executed, outcome unknown.
        return StoredResponse(
            self.status, [], b"", complete=False, interrupted=True, finished=False
        )


def _nonstandard_reason(status: int, reason: str | None) -> str | None:
    """The reason phrase worth storing: None when absent or the standard one (RFC 9110 15)."""
    if reason is None:
        return None
    try:
        standard = HTTPStatus(status).phrase
    except ValueError:
        standard = None
    if reason == standard or len(reason) >= StoredResponse._NO_REASON:
        return None
    try:
        reason.encode("latin-1")
    except UnicodeEncodeError:
        return None
    return reason


@dataclass(slots=True)
class Respond:
    """Answer without running the app (replay or problem)."""

    response: StoredResponse


@dataclass(slots=True)
class Execute:
    """Run the app under ``claim``; give the outcome to ``HttpIdempotency.finish``."""

    claim: DataRecord
    expires_after_seconds: int


class _Incomplete:
    """The request body ended before its announced length: the client left mid-body."""


INCOMPLETE = _Incomplete()


class PassThrough:
    """Run the app as if we were not there."""


PASS = PassThrough()


@dataclass(frozen=True, slots=True)
class Rule:
    """The options in force for one method and path."""

    key_required: bool
    expires_after_seconds: int


class HttpIdempotency:
    """One per middleware instance: immutable after ``__init__``, shared by all requests."""

    @classmethod
    def for_middleware(
        cls, persistence_store: BasePersistenceLayer | None, config: IdempotencyConfig | None
    ) -> HttpIdempotency:
        """The middlewares' defaults: the in-memory store and the default configuration."""
        from .persistence.memory import InMemoryPersistenceLayer

        store = InMemoryPersistenceLayer() if persistence_store is None else persistence_store
        return cls(config or IdempotencyConfig(), store)

    def __init__(self, config: IdempotencyConfig, store: BasePersistenceLayer) -> None:
        self.config = config
        self.store = store
        store.enable_local_cache(config)
        self.header_name = config.header_name.lower().encode("latin-1")
        self.header_mode = not config.event_key_jmespath
        self.scheme = KeyScheme.build(
            config, "", config.event_key_jmespath or f'headers."{config.header_name.lower()}"'
        )
        self.methods = frozenset(normalise_method(m) for m in config.methods)
        self.excluded = frozenset(
            h.lower().encode("latin-1") for h in config.replay_exclude_headers
        )
        self.replay_header = (config.replay_header_name.lower().encode("latin-1"), b"true")
        self.store_status = _status_policy(config.store_status)
        self.wait_seconds = config.wait_timeout_seconds if config.on_in_progress == "wait" else 0.0
        self.default_rule = Rule(config.raise_on_no_idempotency_key, config.expires_after_seconds)
        self.has_path_rules = bool(config.include_paths or config.exclude_paths or config.routes)
        # Patterns compiled once; nothing derived from a request is cached (a cache keyed by the
        # raw path let unauthenticated clients pin hundreds of MiB per worker).
        self._exclude = tuple(_glob(p) for p in config.exclude_paths)
        self._include = (
            None if config.include_paths is None else tuple(_glob(p) for p in config.include_paths)
        )
        self._routes: tuple[tuple[_Glob, Rule | None, frozenset[str]], ...] = tuple(
            (_glob(pattern), *self._route_rule(options))
            for pattern, options in config.routes.items()
        )
        #: Every method some path may take: any other is passed through before the path is read.
        self._routable_methods = self.methods.union(*(methods for _, _, methods in self._routes))
        self.problems = _Problems(config)

    # --- Which requests are ours --------------------------------------------------------------
    def rule(self, method: str, path: str) -> Rule | None:
        """The rule for this request, or None to pass it through untouched."""
        method = normalise_method(method)
        if method not in self._routable_methods:
            return None  # decided by the method alone: a GET never costs a path match
        if not self.has_path_rules:
            return self.default_rule
        return self._compute_rule(method, path)

    def _compute_rule(self, method: str, path: str) -> Rule | None:
        """``method`` is normalised. Exclusions first, then inclusions, then the first route
        whose pattern matches (in ``routes`` order), else the middleware-wide rule."""
        if _matches_any(self._exclude, path):
            return None
        if self._include is not None and not _matches_any(self._include, path):
            return None
        for match, rule, methods in self._routes:
            if match(path):
                return rule if method in methods else None
        return self.default_rule if method in self.methods else None

    def _route_rule(self, options: RouteOptions) -> tuple[Rule | None, frozenset[str]]:
        """A route's rule and methods, computed once (a disabled route takes no method)."""
        if not options.enabled:
            return None, frozenset()
        cfg = self.config
        methods = (
            self.methods
            if options.methods is None
            else frozenset(normalise_method(m) for m in options.methods)
        )
        rule = Rule(
            cfg.raise_on_no_idempotency_key
            if options.raise_on_no_idempotency_key is None
            else options.raise_on_no_idempotency_key,
            options.expires_after_seconds or cfg.expires_after_seconds,
        )
        return rule, methods

    # --- Before the body is read ---------------------------------------------------------------
    def precheck(self, request: HttpRequest, rule: Rule) -> Respond | PassThrough | None:
        """Header-only decisions: None means "read the body, then call ``begin``"."""
        if not self.header_mode:
            return None
        values = request.header_values(self.header_name)
        if not values:
            if rule.key_required:
                logger.debug("400 %s %s: key missing", request.method, request.path)
                return Respond(self.problems.missing)
            logger.debug("pass %s %s: no key", request.method, request.path)
            return PASS
        key = _parse_key(values[0]) if len(values) == 1 else None
        if key is None:
            logger.debug("400 %s %s: key malformed", request.method, request.path)
            return Respond(self.problems.invalid)
        request.key = key
        return None

    def incomplete(self, request: HttpRequest) -> StoredResponse:
        """The body ended early or could not be read (a cut upload): nothing is claimed."""
        logger.debug("400 %s %s: body incomplete or unreadable", request.method, request.path)
        return self.problems.incomplete

    def length_required(self, request: HttpRequest) -> StoredResponse:
        """A body the server cannot deliver (chunked, no length, input not terminated): we
        cannot fingerprint it, so the key is not claimed (RFC 9110 section 15.5.12: 411)."""
        logger.debug("411 %s %s: body without a length", request.method, request.path)
        return self.problems.length_required

    def too_large(self, request: HttpRequest) -> StoredResponse:
        logger.debug("413 %s %s: body over the cap", request.method, request.path)
        return self.problems.too_large

    def content_length_too_large(self, request: HttpRequest) -> bool:
        declared = request.header(b"content-length")
        try:
            return declared is not None and int(declared) > self.config.max_request_body_bytes
        except ValueError:
            return False

    # --- The claim ------------------------------------------------------------------------------
    def begin(self, request: HttpRequest, rule: Rule) -> Plan[Respond | Execute | PassThrough]:
        """Key, fingerprint and claim; returns what the adapter should do."""
        cfg = self.config
        tenant = None
        if cfg.scope is not None:
            found_tenant = cfg.scope(request)
            tenant = None if found_tenant is None else str(found_tenant)
        if request.key is not None:
            # Header mode: hash the raw key bytes, after the tenant (NUL never occurs in either).
            material = (
                request.key
                if tenant is None
                else tenant.encode("utf-8", "surrogatepass") + b"\x00" + request.key
            )
            digest = self.scheme.generate_hash(material)
        else:
            try:
                found = self.scheme.key_material(request.document())
            except Exception:  # a JMESPath runtime error on this document: no usable key
                found = None
            if self.scheme.is_missing(found):
                if rule.key_required:
                    logger.debug("400 %s %s: key missing", request.method, request.path)
                    return Respond(self.problems.missing)
                logger.debug("pass %s %s: no key", request.method, request.path)
                return PASS
            try:
                digest = self.scheme.generate_hash([tenant, found])
            except (RecursionError, TypeError, ValueError):  # nested too deep to serialise
                logger.debug("400 %s %s: key unusable", request.method, request.path)
                return Respond(self.problems.invalid)
        key = self._storage_key(request.method, request.path, digest)
        try:
            fingerprint = self._fingerprint(request)
        except Exception:
            fingerprint = self.scheme.generate_hash([request.method, request.path, request.body])
        try:
            decision = yield from plan_claim(
                self.store,
                key,
                fingerprint,
                lease_seconds=cfg.lease_seconds,
                expires_after_seconds=rule.expires_after_seconds,
                wait_seconds=self.wait_seconds,
                retry_after_seconds=cfg.retry_after_seconds,
                use_cache=cfg.use_local_cache,
            )
            if isinstance(decision, Replay):
                return self._replay(key, decision.record)
        except IdempotencyValidationError:
            logger.debug("422 %s: key reused with another payload", key)
            _call_hook(cfg.on_conflict, key, 422)
            return Respond(self.problems.reused)
        except IdempotencyAlreadyInProgressError as exc:
            logger.debug("409 %s: in progress", key)
            _call_hook(cfg.on_conflict, key, 409)
            return Respond(self.problems.in_progress(exc.retry_after))
        except IdempotencyPersistenceLayerError as exc:
            _call_hook(cfg.on_store_error, exc)
            if isinstance(exc, IdempotencyCorruptRecordError):
                logger.error("corrupt record for %s: %s", key, exc)
                return Respond(self.problems.corrupt)
            if cfg.fail_open:
                logger.warning("store unreachable, running unprotected (fail_open): %s", exc)
                return PASS
            logger.error("store unreachable, answering 503: %s", exc)
            return Respond(self.problems.unavailable)
        assert isinstance(decision, Claimed)
        logger.debug("execute %s", key)
        return Execute(decision.record, rule.expires_after_seconds)

    def _storage_key(self, method: str, path: str, digest: str) -> str:
        """``"{METHOD} {path}#{digest}"`` for a path of at most ``KEY_PATH_MAX_BYTES`` UTF-8
        bytes; else ``"{METHOD} {first KEY_PATH_PREFIX_BYTES bytes of the path}...#{H}"``,
        where H hashes the byte 0xFF followed by the UTF-8 of the short form. The README gives
        the same recipe to operators.

        ``digest`` already covers the tenant and the key material, so H covers method, whole
        path, tenant and key: two long paths sharing a prefix never share a key. No UTF-8 text
        and no printable key contains the byte 0xFF, so H's input can never equal the input of
        a short form's digest.
        """
        try:
            raw = path.encode()
        except UnicodeEncodeError:  # lone surrogates: no store could encode that key name
            raw = path.encode("utf-8", "surrogatepass")
        else:
            if len(raw) <= KEY_PATH_MAX_BYTES:
                return f"{method} {path}#{digest}"
        readable = method.encode("utf-8", "surrogatepass") + b" " + raw + b"#" + digest.encode()
        folded = self.scheme.generate_hash(b"\xff" + readable)
        # Cut at a character boundary; "ignore" also drops any lone surrogate from the prefix.
        prefix = raw[:KEY_PATH_PREFIX_BYTES].decode("utf-8", "ignore")
        return f"{method} {prefix}...#{folded}"

    def _fingerprint(self, request: HttpRequest) -> str:
        """Method, path, query and canonical body (IETF draft: same key, other payload: 422)."""
        if self.scheme.validation_expression is not None:
            return self.scheme.payload_hash(request.document())
        parsed = request.json_body(literal_numbers=True)
        # Tagged so that a raw body can never equal the canonical form of a parsed one.
        body = b"R" + request.body if parsed is None else b"J" + canonical_json(parsed)
        head = f"{request.method} {request.path}?".encode("utf-8", "surrogatepass")
        return self.scheme.generate_hash(head + request.query + b"\n" + body)

    def _replay(self, key: str, record: DataRecord) -> Respond:
        stored = StoredResponse.decode(record.response_data or b"")
        _call_hook(self.config.on_replay, key)
        if stored.interrupted:
            logger.debug("replay %s: executed, outcome unknown", key)
            return Respond(self.problems.interrupted)
        if not stored.complete:
            logger.debug("replay %s: executed, response was not stored", key)
            return Respond(self.problems.not_replayable(stored.status))
        logger.debug("replay %s", key)
        headers = [*stored.headers, self.replay_header]
        # RFC 9110 section 8.6: no Content-Length on 1xx, 204 and 304.
        if (
            stored.status >= 200
            and stored.status not in (204, 304)
            and not any(k.lower() == b"content-length" for k, _ in stored.headers)
        ):
            headers.append((b"content-length", str(len(stored.body)).encode()))
        return Respond(StoredResponse(stored.status, headers, stored.body, reason=stored.reason))

    # --- After the app ran --------------------------------------------------------------------
    def releases(self, outcome: StoredResponse | None) -> bool:
        """Whether ``finish`` gives the key back for this outcome (the adapters stop the lease
        before a release, but only after a completion has been written)."""
        return outcome is None or (
            outcome.finished and not outcome.interrupted and not self.store_status(outcome.status)
        )

    def finish(self, action: Execute, outcome: StoredResponse | None) -> Plan[DataRecord | None]:
        """Store the outcome, or release the claim; return a completion the store refused.

        ``outcome`` None: the app raised before responding (see ``ResponseCapture.outcome``).
        An interrupted execution is always stored, whatever its status: it may have had
        side effects, so it must never run again under this key (contract C3). A completion
        that fails to reach the store is returned: the adapter's lease keeps the claim alive
        and writes it later (``_Hold.finish_later``), so a store blip never frees the key of
        a handler that already ran.
        """
        key = action.claim.idempotency_key
        try:
            if self.releases(outcome):
                logger.debug("release %s", key)
                yield from plan_release(self.store, action.claim)
                return None
            assert outcome is not None
            if outcome.interrupted:
                logger.warning(
                    "%s was interrupted after it started: recorded as executed, outcome unknown",
                    key,
                )
            yield from plan_complete(
                self.store,
                action.claim,
                outcome.encode(),
                action.expires_after_seconds,
                use_cache=self.config.use_local_cache,
                background=False,
            )
        except IdempotencyPersistenceLayerError as exc:
            pending: DataRecord | None = getattr(exc, "pending_record", None)
            logger.error(
                "could not record %s: %s%s",
                key,
                exc,
                "; the lease keeps the key and retries" if pending is not None else "",
            )
            _call_hook(self.config.on_store_error, exc)
            return pending
        return None


def _call_hook(hook: Callable[..., None] | None, *args: Any) -> None:
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:  # a counting hook must never break a request
        logger.exception("idempotency hook %r raised", hook)


_Glob = Callable[[str], re.Match[str] | None]


def _glob(pattern: str) -> _Glob:
    """A shell-style path pattern, compiled as ``fnmatch.fnmatchcase`` would compile it."""
    return re.compile(fnmatch.translate(pattern)).match


def _matches_any(patterns: tuple[_Glob, ...], path: str) -> bool:
    # A plain loop: any() over a generator costs three times as much on this path.
    for match in patterns:  # noqa: SIM110
        if match(path):
            return True
    return False


def _status_policy(spec: Callable[[int], bool] | Collection[int]) -> Callable[[int], bool]:
    if callable(spec):
        return spec
    allowed = frozenset(spec)
    return allowed.__contains__


_PRINTABLE_KEY = re.compile(rb"[\x20-\x7e]{1,%d}" % MAX_KEY_LENGTH)


def _parse_key(value: bytes) -> bytes | None:
    """The key, or None when malformed (IETF draft section 2: an sf-string; Stripe: <= 255)."""
    value = value.strip(b" \t")
    if value[:1] == b'"':
        unquoted = _parse_sf_string(value)
        if unquoted is None:
            return None
        value = unquoted
    elif b"," in value or b'"' in value:
        return None  # a list of keys, or a stray quote
    return value if _PRINTABLE_KEY.fullmatch(value) else None


def _parse_sf_string(value: bytes) -> bytes | None:
    """RFC 8941 section 4.2.5: a quoted string; only \\" and \\\\ escapes; nothing after it."""
    out = bytearray()
    index, end = 1, len(value)
    while index < end:
        char = value[index]
        if char == 0x5C:  # backslash
            if index + 1 >= end or value[index + 1] not in (0x22, 0x5C):
                return None
            out.append(value[index + 1])
            index += 2
        elif char == 0x22:  # closing quote: must be the last byte
            return bytes(out) if index == end - 1 else None
        else:
            out.append(char)
            index += 1
    return None  # no closing quote


class _Problems:
    """Every error response, encoded once (RFC 9457, ``application/problem+json``)."""

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
