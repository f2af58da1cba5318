"""The decisions of the HTTP core, as plans of I/O steps; the adapters only move bytes.

Which requests are ours, the key and its validation, the fingerprint, the claim, what a replay
looks like, which responses are stored: each answer comes from here, as an action the adapter
carries out (``Respond``, ``Execute``, ``PASS``), never from the adapter itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from .._core import Claimed, Replay, completion_record, plan_claim, plan_complete, plan_release
from .._steps import Plan
from ..config import IdempotencyConfig, RouteOptions
from ..exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyCorruptRecordError,
    IdempotencyKeyError,
    IdempotencyPersistenceLayerError,
    IdempotencyScopeRefusedError,
    IdempotencyValidationError,
)
from ..persistence.base import BasePersistenceLayer, DataRecord, KeyScheme
from .fingerprint import fingerprint
from .keys import parse_key, storage_key
from .problems import Problems
from .request import HttpRequest, normalise_method
from .response import StoredResponse
from .routes import RouteTable, Rule

logger = logging.getLogger("idempotent_middleware")


@dataclass(slots=True)
class Respond:
    """Answer without running the app (replay or problem)."""

    response: StoredResponse


@dataclass(slots=True)
class Execute:
    """Run the app under ``claim``; give the outcome to ``HttpIdempotency.finish``."""

    claim: DataRecord
    expires_after_seconds: int


class Incomplete:
    """The request body ended before its announced length: the client left mid-body."""


INCOMPLETE = Incomplete()


class PassThrough:
    """Run the app as if we were not there."""


PASS = PassThrough()


class HttpIdempotency:
    """One per middleware instance: immutable after ``__init__``, shared by all requests."""

    @classmethod
    def for_middleware(
        cls, persistence_store: BasePersistenceLayer | None, config: IdempotencyConfig | None
    ) -> HttpIdempotency:
        """The middlewares' defaults: the in-memory store and the default configuration."""
        from ..persistence.memory import InMemoryPersistenceLayer

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
        self.excluded = frozenset(
            h.lower().encode("latin-1") for h in config.replay_exclude_headers
        )
        self.replay_header = (config.replay_header_name.lower().encode("latin-1"), b"true")
        self.store_status = _status_policy(config.store_status)
        self.wait_seconds = config.wait_timeout_seconds if config.on_in_progress == "wait" else 0.0
        self.routes = RouteTable(config)
        self.default_rule = self.routes.default
        self.has_path_rules = self.routes.has_path_rules
        self.problems = Problems(config)

    # --- Which requests are ours --------------------------------------------------------------
    def rule(self, method: str, path: str) -> Rule | None:
        """The rule for this request, or None to pass it through untouched."""
        method = normalise_method(method)
        routes = self.routes
        if not routes.routable(method):
            return None  # decided by the method alone: a GET never costs a path match
        if not self.has_path_rules:
            return self.default_rule
        return routes.rule(method, path)

    def view_rule(self, method: str, path: str, options: RouteOptions | None) -> Rule | None:
        """The rule for a request whose view may carry its own options (``@idempotent``,
        ``@idempotent_exempt`` in the framework integrations): a view's options decide over
        the path rules; without them the path rules apply as in ``rule``."""
        if options is None:
            return self.rule(method, path)
        if not self.routes.takes(options, normalise_method(method)):
            return None
        return self.routes.for_options(self.config, options)

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
        key = parse_key(values[0]) if len(values) == 1 else None
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
            try:
                found_tenant = cfg.scope(request)
            except IdempotencyScopeRefusedError as exc:
                logger.debug("401 %s %s: %s", request.method, request.path, exc)
                return Respond(self.problems.unauthenticated)
            except Exception:
                # A hook that cannot tell whose request this is must not run it unscoped
                # (another user's record) nor leak a 500: nothing is claimed.
                logger.exception("scope hook raised for %s %s", request.method, request.path)
                return Respond(self.problems.scope_unavailable)
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
            except IdempotencyKeyError:  # a value past its bound (a gzip bomb): refused
                logger.debug("400 %s %s: key too large", request.method, request.path)
                return Respond(self.problems.invalid)
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
        key = storage_key(self.scheme, request.method, request.path, digest)
        try:
            request_hash = fingerprint(self.scheme, request)
        except Exception:
            request_hash = self.scheme.generate_hash([request.method, request.path, request.body])
        try:
            decision = yield from plan_claim(
                self.store,
                key,
                request_hash,
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

    def _replay(self, key: str, record: DataRecord) -> Respond:
        _call_hook(self.config.on_replay, key)
        if record.outcome_unknown:  # the handler committed its execution, no response stored
            logger.debug("replay %s: executed in its transaction, response not stored", key)
            return Respond(self.problems.not_replayable(0))
        stored = StoredResponse.decode(record.response_data or b"")
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

    def completion(self, action: Execute, outcome: StoredResponse | None) -> DataRecord:
        """The record ``finish`` writes for a stored ``outcome``: what the lease writes in its
        place when the write was interrupted (it may or may not have landed; writing it again
        is fenced and idempotent)."""
        assert outcome is not None
        return completion_record(
            self.store, action.claim, outcome.encode(), action.expires_after_seconds
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


def _status_policy(spec: Callable[[int], bool] | Collection[int]) -> Callable[[int], bool]:
    if callable(spec):
        return spec
    allowed = frozenset(spec)
    return allowed.__contains__
