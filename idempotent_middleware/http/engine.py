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

import idempotent_middleware.events as _events

from .._core import Claimed, Replay, completion_record, plan_claim, plan_complete, plan_release
from .._labels import printable, route_label
from .._observe import Observation, Timing, fields, publish, store_kind, timed
from .._steps import Plan
from ..config import IdempotencyConfig, RouteOptions
from ..events import Decision
from ..exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyCorruptRecordError,
    IdempotencyKeyError,
    IdempotencyPersistenceLayerError,
    IdempotencyScopeRefusedError,
    IdempotencyValidationError,
)
from ..persistence.base import BasePersistenceLayer, DataRecord, KeyScheme
from . import observe
from .fingerprint import fingerprint
from .keys import parse_key, storage_key
from .problems import Problems
from .request import HttpRequest, normalise_method
from .response import StoredResponse
from .routes import RouteTable, Rule

logger = logging.getLogger("idempotent_middleware")
DEBUG = logging.DEBUG


@dataclass(slots=True)
class Respond:
    """Answer without running the app (replay or problem)."""

    response: StoredResponse


@dataclass(slots=True)
class Execute:
    """Run the app under ``claim``; give the outcome to ``HttpIdempotency.finish``."""

    claim: DataRecord
    expires_after_seconds: int
    #: The execution's event fields, when someone listened at its claim (else None).
    observed: Observation | None = None


class Incomplete:
    """The request body ended before its announced length: the client left mid-body."""


INCOMPLETE = Incomplete()


class PassThrough:
    """Run the app as if we were not there."""


PASS = PassThrough()


class HttpIdempotency:
    """One per middleware instance: immutable after ``__init__``, shared by all requests."""

    #: The ``source`` of its events; the adapter or integration that builds it sets its own.
    source = "asgi"
    #: The integration's route template of a request (events only), None: the patterns.
    route_of: Callable[[HttpRequest], str | None] | None = None

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
                if _events._listeners or logger.isEnabledFor(DEBUG):
                    self._note(request, Decision.KEY_INVALID, 400, "key missing")
                return Respond(self.problems.missing)
            if _events._listeners or logger.isEnabledFor(DEBUG):
                self._note(request, Decision.NO_KEY, None, "no key", "pass")
            return PASS
        key = parse_key(values[0]) if len(values) == 1 else None
        if key is None:
            if _events._listeners or logger.isEnabledFor(DEBUG):
                self._note(request, Decision.KEY_INVALID, 400, "key malformed")
            return Respond(self.problems.invalid)
        request.key = key
        return None

    def incomplete(self, request: HttpRequest) -> StoredResponse:
        """The body ended early or could not be read (a cut upload): nothing is claimed."""
        if _events._listeners or logger.isEnabledFor(DEBUG):
            self._note(request, Decision.BODY_INCOMPLETE, 400, "body incomplete or unreadable")
        return self.problems.incomplete

    def client_gone(self, request: HttpRequest) -> None:
        """The client left before its body ended (ASGI): nothing claimed, nobody to answer."""
        if _events._listeners or logger.isEnabledFor(DEBUG):
            self._note(request, Decision.BODY_INCOMPLETE, None, "client left mid-body", "gone")

    def length_required(self, request: HttpRequest) -> StoredResponse:
        """A body the server cannot deliver (chunked, no length, input not terminated): we
        cannot fingerprint it, so the key is not claimed (RFC 9110 section 15.5.12: 411)."""
        if _events._listeners or logger.isEnabledFor(DEBUG):
            self._note(request, Decision.LENGTH_REQUIRED, 411, "body without a length")
        return self.problems.length_required

    def too_large(self, request: HttpRequest) -> StoredResponse:
        if _events._listeners or logger.isEnabledFor(DEBUG):
            self._note(request, Decision.TOO_LARGE, 413, "body over the cap")
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
            # The headers as they came (a WSGI environ's are read lazily): a hook may write
            # its framework's request (take a credential off the environ), and the key and
            # fingerprint must not depend on what it left there.
            request.headers  # noqa: B018
            try:
                found_tenant = cfg.scope(request)
            except IdempotencyScopeRefusedError as exc:
                if _events._listeners or logger.isEnabledFor(DEBUG):
                    self._note(request, Decision.UNAUTHENTICATED, 401, "%s", detail=exc)
                return Respond(self.problems.unauthenticated)
            except Exception as exc:
                # A hook that cannot tell whose request this is must not run it unscoped
                # (another user's record) nor leak a 500: nothing is claimed.
                # The route label, never the raw path: a client's "%0A" would forge a line.
                event = observe.event(self, request, Decision.SCOPE_ERROR, 503, error=exc)
                publish(
                    event,
                    logger,
                    logging.ERROR,
                    "scope hook raised for %s %s",
                    request.method,
                    route_label(event.route),
                    exc_info=True,
                )
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
                if _events._listeners or logger.isEnabledFor(DEBUG):
                    self._note(request, Decision.KEY_INVALID, 400, "key too large")
                return Respond(self.problems.invalid)
            except Exception:  # a JMESPath runtime error on this document: no usable key
                found = None
            if self.scheme.is_missing(found):
                if rule.key_required:
                    if _events._listeners or logger.isEnabledFor(DEBUG):
                        self._note(request, Decision.KEY_INVALID, 400, "key missing")
                    return Respond(self.problems.missing)
                if _events._listeners or logger.isEnabledFor(DEBUG):
                    self._note(request, Decision.NO_KEY, None, "no key", "pass")
                return PASS
            try:
                digest = self.scheme.generate_hash([tenant, found])
            except (RecursionError, TypeError, ValueError):  # nested too deep to serialise
                if _events._listeners or logger.isEnabledFor(DEBUG):
                    self._note(request, Decision.KEY_INVALID, 400, "key unusable")
                return Respond(self.problems.invalid)
        key = storage_key(self.scheme, request.method, request.path, digest)
        try:
            request_hash = fingerprint(self.scheme, request)
        except Exception:
            request_hash = self.scheme.generate_hash([request.method, request.path, request.body])
        claiming = plan_claim(
            self.store,
            key,
            request_hash,
            lease_seconds=cfg.lease_seconds,
            expires_after_seconds=rule.expires_after_seconds,
            wait_seconds=self.wait_seconds,
            retry_after_seconds=cfg.retry_after_seconds,
            use_cache=cfg.use_local_cache,
        )
        timing = None
        if _events._listeners:  # durations are measured only for someone
            timing = Timing()
            claiming = timed(claiming, timing)
        try:
            decision = yield from claiming
            if isinstance(decision, Replay):
                return self._replay(key, decision.record, request, timing)
        except IdempotencyValidationError:
            if _events._listeners or logger.isEnabledFor(DEBUG):
                self._decided(
                    request,
                    Decision.PAYLOAD_MISMATCH,
                    422,
                    key,
                    timing,
                    None,
                    DEBUG,
                    "422 %s: key reused with another payload",
                    key,
                )
            _call_hook(cfg.on_conflict, key, 422)
            return Respond(self.problems.reused)
        except IdempotencyAlreadyInProgressError as exc:
            if _events._listeners or logger.isEnabledFor(DEBUG):
                self._decided(
                    request,
                    Decision.IN_PROGRESS,
                    409,
                    key,
                    timing,
                    None,
                    DEBUG,
                    "409 %s: in progress",
                    key,
                )
            _call_hook(cfg.on_conflict, key, 409)
            return Respond(self.problems.in_progress(exc.retry_after))
        except IdempotencyPersistenceLayerError as exc:
            _call_hook(cfg.on_store_error, exc)
            if isinstance(exc, IdempotencyCorruptRecordError):
                answer = self.problems.corrupt
                self._decided(
                    request,
                    Decision.STORE_ERROR,
                    answer.status,
                    key,
                    timing,
                    exc,
                    logging.ERROR,
                    "corrupt record for %s: %s",
                    key,
                    exc,
                )
                return Respond(answer)
            if cfg.fail_open:
                self._decided(
                    request,
                    Decision.FAIL_OPEN,
                    None,
                    key,
                    timing,
                    exc,
                    logging.WARNING,
                    "store unreachable, running unprotected (fail_open): %s",
                    exc,
                )
                return PASS
            self._decided(
                request,
                Decision.STORE_ERROR,
                503,
                key,
                timing,
                exc,
                logging.ERROR,
                "store unreachable, answering 503: %s",
                exc,
            )
            return Respond(self.problems.unavailable)
        assert isinstance(decision, Claimed)
        if _events._listeners:
            observed = observe.observation(self, request, key)
            self._decided(
                request, Decision.EXECUTE, None, key, timing, None, DEBUG, "execute %s", key
            )
            return Execute(decision.record, rule.expires_after_seconds, observed)
        if logger.isEnabledFor(DEBUG):
            self._decided(
                request, Decision.EXECUTE, None, key, None, None, DEBUG, "execute %s", key
            )
        return Execute(decision.record, rule.expires_after_seconds)

    def _replay(
        self, key: str, record: DataRecord, request: HttpRequest, timing: Timing | None
    ) -> Respond:
        if self.config.on_replay is not None:
            _call_hook(self.config.on_replay, key)
        if record.outcome_unknown:  # the handler committed its execution, no response stored
            answer = self.problems.not_replayable(0)
            if _events._listeners or logger.isEnabledFor(DEBUG):
                self._decided(
                    request,
                    Decision.REPLAY,
                    answer.status,
                    key,
                    timing,
                    None,
                    DEBUG,
                    "replay %s: executed in its transaction, response not stored",
                    key,
                )
            return Respond(answer)
        stored = StoredResponse.decode(record.response_data or b"")
        if stored.interrupted:
            if _events._listeners or logger.isEnabledFor(DEBUG):
                self._decided(
                    request,
                    Decision.REPLAY,
                    self.problems.interrupted.status,
                    key,
                    timing,
                    None,
                    DEBUG,
                    "replay %s: executed, outcome unknown",
                    key,
                )
            return Respond(self.problems.interrupted)
        if not stored.complete:
            answer = self.problems.not_replayable(stored.status)
            if _events._listeners or logger.isEnabledFor(DEBUG):
                self._decided(
                    request,
                    Decision.REPLAY,
                    answer.status,
                    key,
                    timing,
                    None,
                    DEBUG,
                    "replay %s: executed, response was not stored",
                    key,
                )
            return Respond(answer)
        if _events._listeners or logger.isEnabledFor(DEBUG):
            self._decided(
                request, Decision.REPLAY, stored.status, key, timing, None, DEBUG, "replay %s", key
            )
        # Decoded for this request alone: its header list is ours to extend, and the
        # response is answered as decoded (complete, not interrupted, its reason kept).
        headers = stored.headers
        # RFC 9110 section 8.6: no Content-Length on 1xx, 204 and 304.
        length = stored.status >= 200 and stored.status not in (204, 304)
        if length:
            for name, _ in headers:
                if name.lower() == b"content-length":
                    length = False
                    break
        headers.append(self.replay_header)
        if length:
            headers.append((b"content-length", str(len(stored.body)).encode()))
        return Respond(stored)

    # --- After the app ran --------------------------------------------------------------------
    def releases(self, outcome: StoredResponse | None) -> bool:
        """Whether ``finish`` gives the key back for this outcome (the adapters stop the lease
        before a release, but only after a completion has been written)."""
        if outcome is None:
            return True
        if not outcome.finished or outcome.interrupted:
            return False
        try:
            return not self.store_status(outcome.status)
        except Exception:  # the app ran: a policy that cannot decide keeps its response (R4)
            logger.exception("store_status raised for %s: the response is stored", outcome.status)
            return False

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
        observed = None
        if _events._listeners:
            # A subscriber added while the handler ran still gets this outcome (one truth
            # test when nobody listens, as before).
            observed = action.observed or observe.late_observation(self, key)
        timing = None
        try:
            if self.releases(outcome):
                if observed is None and not logger.isEnabledFor(DEBUG):
                    yield from plan_release(self.store, action.claim)
                    return None
                status = _status(outcome)
                timing = None if observed is None else Timing()
                releasing = plan_release(self.store, action.claim)
                released = yield from (releasing if timing is None else timed(releasing, timing))
                decision = Decision.RELEASED if outcome is None else Decision.NOT_STORED
                if released is False:  # fenced: plan_release logged the loss
                    self._finished(observed, Decision.LEASE_LOST, None, timing, key, None)
                    return None
                self._finished(observed, decision, status, timing, key, None, "release %s", key)
                return None
            assert outcome is not None
            if outcome.interrupted:
                logger.warning(
                    "%s was interrupted after it started: recorded as executed, outcome unknown",
                    printable(key),
                    extra=self._fields(observed, key, Decision.STORED, _status(outcome)),
                )
            completing = plan_complete(
                self.store,
                action.claim,
                outcome.encode(),
                action.expires_after_seconds,
                use_cache=self.config.use_local_cache,
                background=False,
            )
            if observed is None:
                yield from completing
                return None
            timing = Timing()
            written = yield from timed(completing, timing)
            if written is None:  # fenced: plan_complete logged the loss
                self._finished(observed, Decision.LEASE_LOST, None, timing, key, None)
            else:
                self._finished(observed, Decision.STORED, _status(outcome), timing, key, None)
        except IdempotencyPersistenceLayerError as exc:
            pending: DataRecord | None = getattr(exc, "pending_record", None)
            status = _status(outcome)
            fields = self._fields(observed, key, Decision.STORE_ERROR, status, exc)
            if observed is not None:
                publish(
                    observed.event(
                        Decision.STORE_ERROR,
                        status,
                        timing=timing,
                        handler=True,
                        error=type(exc).__name__,
                    )
                )
            logger.error(
                "could not record %s: %s%s",
                printable(key),
                exc,
                "; the lease keeps the key and retries" if pending is not None else "",
                extra=fields,
            )
            _call_hook(self.config.on_store_error, exc)
            return pending
        return None

    # --- Events and log fields (only called when someone listens or the level is on) ----------
    def _note(
        self,
        request: HttpRequest,
        decision: Decision,
        status: int | None,
        what: str,
        label: str | None = None,
        detail: object = None,
    ) -> None:
        """A decision taken before any key is known: event and debug line."""
        message = f"{label or status} %s %s: {what}"
        event = observe.event(self, request, decision, status)
        args: tuple[object, ...] = (request.method, route_label(event.route))
        if detail is not None:
            args = (*args, detail)
        publish(event, logger, DEBUG, message, *args)

    def _decided(
        self,
        request: HttpRequest,
        decision: Decision,
        status: int | None,
        key: str,
        timing: Timing | None,
        error: BaseException | None,
        level: int,
        message: str,
        *args: object,
    ) -> None:
        event = observe.event(self, request, decision, status, key, timing, error)
        publish(event, logger, level, message, *args)

    def _finished(
        self,
        observed: Observation | None,
        decision: Decision,
        status: int | None,
        timing: Timing | None,
        key: str,
        error: str | None,
        message: str = "",
        *args: object,
    ) -> None:
        """An execution's outcome: its event (once per loss) and its debug line, if any."""
        if observed is not None:
            event = (
                observed.lease_lost(error)
                if decision is Decision.LEASE_LOST
                else observed.event(decision, status, timing=timing, handler=True, error=error)
            )
            if event is not None:
                publish(event)
        if message and logger.isEnabledFor(DEBUG):
            args = tuple(printable(arg) if isinstance(arg, str) else arg for arg in args)
            logger.debug(message, *args, extra=self._fields(observed, key, decision, status))

    def _fields(
        self,
        observed: Observation | None,
        key: str,
        decision: Decision,
        status: int | None,
        error: BaseException | None = None,
    ) -> dict[str, object]:
        """Log fields of an execution's line (the request's, when it was observed)."""
        return fields(
            decision=decision.value,
            source=self.source,
            method=None if observed is None else observed.method,
            route=None if observed is None else observed.route,
            status=status,
            store=store_kind(self.store),
            key=key,
            error=None if error is None else type(error).__name__,
        )


def _status(outcome: StoredResponse | None) -> int | None:
    """An outcome's status for events (None: no response, or none started)."""
    return None if outcome is None else outcome.status or None


def _call_hook(hook: Callable[..., None] | None, *args: Any) -> None:
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:  # a counting hook must never break a request
        key = args[0] if args and isinstance(args[0], str) else None
        logger.exception("idempotency hook %r raised", hook, extra=fields(key=key))


def _status_policy(spec: Callable[[int], bool] | Collection[int]) -> Callable[[int], bool]:
    if callable(spec):
        return spec
    allowed = frozenset(spec)
    return allowed.__contains__
