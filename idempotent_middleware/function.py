"""``idempotent_function``: the Powertools decorator for plain sync and async functions.

Once the function has started, only an exception it raises (an ``Exception``) frees the key for
another run. An interruption (``KeyboardInterrupt``, ``SystemExit``, ``asyncio.CancelledError``)
may come after its side effects, so it is recorded as "executed, outcome unknown" and every
retry raises ``IdempotencyOutcomeUnknownError`` instead of running again (contract C3).

Results are stored as JSON and must come back equal and of the same types: a result that JSON
would alter (``Decimal``, ``datetime``, tuples, non-string dict keys, subclasses of the JSON
types) raises ``TypeError`` and releases the key, unless an ``output_serializer`` handles it.

Payload validation happens only when ``payload_validation_jmespath`` is set (Powertools' rule:
a redelivered event whose other fields changed replays).

``idempotent`` is the same decorator for Lambda-style ``handler(event, context)``: the event is
the data, and the claim's lease is no longer than the invocation's remaining time
(``get_remaining_time_in_millis``), renewed like any other while the handler runs.

Replays give back what was stored or raise a typed error: a record that does not decode, or
that the current serializer cannot rebuild, is ``IdempotencyCorruptRecordError`` (the
function is not run again: it ran once already).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import time
import types
import typing
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

import idempotent_middleware.events as _events

from ._core import Claimed, Replay, completion_record, plan_claim, plan_complete, plan_release
from ._disabled import idempotency_disabled
from ._lease import AsyncLease, sync_renewer
from ._observe import Observation, Timing, fields, publish, store_kind, timed
from ._steps import (
    Op,
    Plan,
    Step,
    perform_step,
    perform_step_async,
    run,
    run_async,
    to_the_end,
)
from .config import _LAMBDA_CONTEXTS, IdempotencyConfig, LambdaContext
from .events import Decision, IdempotencyEvent
from .exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyCachedError,
    IdempotencyCorruptRecordError,
    IdempotencyError,
    IdempotencyKeyError,
    IdempotencyOutcomeUnknownError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from .persistence.base import BasePersistenceLayer, DataRecord, KeyScheme, lease_from_remaining
from .persistence.memory import settles_inline

logger = logging.getLogger("idempotent_middleware")

F = TypeVar("F", bound=Callable[..., Any])

#: The decorator's own steps, besides the store's: run the function, hold and drop its lease,
#: and settle a run that started (write its completion, then stop the lease; a sub-plan that
#: async code runs shielded, so that a cancellation cannot cut the write).
CALL = Op("call", "call")
HOLD_LEASE = Op("hold_lease", "hold_lease")
DROP_LEASE = Op("drop_lease", "drop_lease")
#: After the release that followed ``DROP_LEASE``: a renewal still in flight is dealt with.
RELEASED = Op("released", "released")
SETTLE = Op("settle", "settle")


class OutputSerializer(Protocol):
    """Turns a result into JSON-able data and back (dataclasses, pydantic models ...)."""

    def to_dict(self, value: Any) -> Any: ...

    def from_dict(self, data: Any) -> Any: ...


class ExceptionSerializer(Protocol):
    """Turns a cached exception into JSON-able data and back (``cache_exceptions``)."""

    def to_dict(self, exc: BaseException) -> Any: ...

    def from_dict(self, data: Any) -> BaseException: ...


class DataclassSerializer:
    def __init__(self, model: type[Any]) -> None:
        self.model = model

    @classmethod
    def instantiate(cls, model: type[Any]) -> DataclassSerializer:
        """The "deduced" form: ``output_serializer=DataclassSerializer``, model from the
        function's return annotation (Powertools' name for the hook)."""
        if not dataclasses.is_dataclass(model):
            raise TypeError(f"DataclassSerializer needs a dataclass, not {model!r}")
        return cls(model)

    def to_dict(self, value: Any) -> Any:
        return dataclasses.asdict(value)

    def from_dict(self, data: Any) -> Any:
        """The model, nested dataclasses rebuilt from the field annotations (``Inner``,
        ``list[Inner]``, ``dict[str, Inner]``, ``Inner | None``), as ``asdict`` flattened them."""
        return _build(self.model, data)


class PydanticSerializer:
    def __init__(self, model: type[Any]) -> None:
        self.model = model

    @classmethod
    def instantiate(cls, model: type[Any]) -> PydanticSerializer:
        if not hasattr(model, "model_validate"):
            raise TypeError(f"PydanticSerializer needs a pydantic model, not {model!r}")
        return cls(model)

    def to_dict(self, value: Any) -> Any:
        return value.model_dump(mode="json")

    def from_dict(self, data: Any) -> Any:
        return self.model.model_validate(data)


def _build(hint: Any, data: Any) -> Any:
    """``data`` (decoded JSON) as the annotation ``hint`` describes, for the shapes
    ``dataclasses.asdict`` produces; anything else is returned as it is (and the store-time
    round-trip check refuses results that would not come back equal)."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(data, dict):
            raise TypeError(f"{hint.__qualname__} stored as {type(data).__name__}")
        hints = typing.get_type_hints(hint)
        fields = {f.name: f for f in dataclasses.fields(hint)}
        init = {k: _build(hints.get(k, Any), v) for k, v in data.items() if fields[k].init}
        built = hint(**init)
        for name in data.keys() - init.keys():  # init=False fields: set as stored
            object.__setattr__(built, name, _build(hints.get(name, Any), data[name]))
        return built
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        return _build(members[0], data) if len(members) == 1 else data
    if origin is list and args and isinstance(data, list):
        return [_build(args[0], item) for item in data]
    if origin is dict and len(args) == 2 and isinstance(data, dict):
        return {k: _build(args[1], v) for k, v in data.items()}
    if origin is tuple and args and isinstance(data, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], item) for item in data)
        return tuple(_build(a, item) for a, item in zip(args, data, strict=True))
    return data


def _same(first: Any, second: Any) -> bool:
    """Equal and of the same types all the way down (dataclasses field by field, so that one
    with ``eq=False`` still compares by value, and a dict never passes for a dataclass)."""
    if type(first) is not type(second):
        return False
    if dataclasses.is_dataclass(first):
        return all(
            _same(getattr(first, f.name), getattr(second, f.name))
            for f in dataclasses.fields(first)
        )
    if isinstance(first, (list, tuple)):
        return len(first) == len(second) and all(map(_same, first, second))
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(_same(v, second[k]) for k, v in first.items())
    if isinstance(first, float) and first != first:  # NaN: the same value, never equal
        return bool(second != second)
    return bool(first == second)


def _payload(value: Any) -> Any:
    """The JSON document the key and fingerprint are taken from."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


#: The exact types JSON gives back as they went in (``bool`` is not ``int`` here: both listed).
_EXACT_SCALARS = frozenset({str, int, float, bool, type(None)})


def _require_exact_json(value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` decodes from JSON to an equal value of equal types.

    Called after ``json.dumps`` succeeded, so the value has no cycles.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _EXACT_SCALARS:
            continue
        if kind is list:
            stack.extend(item)
            continue
        if kind is dict:
            for key, member in item.items():
                if type(key) is not str:
                    raise TypeError(
                        f"dict key {key!r} ({type(key).__name__}) would come back as a string"
                    )
                stack.append(member)
            continue
        raise TypeError(
            f"a result holding {kind.__name__} would not replay as it was returned; "
            "return JSON types or pass output_serializer"
        )


def _encode_strict(value: Any) -> bytes:
    """JSON without the lenient ``str()`` fallback of payload hashing."""
    return json.dumps(value, separators=(",", ":")).encode()


#: The shortest lease taken from a remaining time: renewal happens every half lease from a
#: thread or a timer that looks every few milliseconds, so a lease of a few milliseconds could
#: lapse between two looks and let a retry run beside the handler. A crashed invocation's key
#: is blocked this much longer at worst.
_SHORTEST_RENEWED_LEASE = 0.1

#: Marks a stored exception (``cache_exceptions``): no JSON document starts with a NUL byte,
#: so a stored result can never be mistaken for one.
_EXCEPTION_MARK = b"\x00exception\x00"


def idempotent_function(
    *,
    data_keyword_argument: str,
    persistence_store: BasePersistenceLayer,
    config: IdempotencyConfig | None = None,
    output_serializer: OutputSerializer | type[Any] | None = None,
    key_prefix: str | None = None,
    cache_exceptions: tuple[type[Exception], ...] = (),
    exception_serializer: ExceptionSerializer | None = None,
) -> Callable[[F], F]:
    """Run the function once per key taken from the ``data_keyword_argument`` argument.

    Duplicates get the stored result; an in-flight duplicate raises
    ``IdempotencyAlreadyInProgressError``; an exception releases the key and propagates, unless
    it is an instance of ``cache_exceptions``: then it is stored and raised again to every
    retry (a deterministic failure). Results must be JSON-serialisable, or a dataclass /
    pydantic model with a serializer. ``key_prefix`` replaces the function's
    ``module.qualname`` in its keys, so that they survive renaming or moving it.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        def data_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            bound = signature.bind(*args, **kwargs)
            if data_keyword_argument not in bound.arguments:
                raise RuntimeError(f"{func.__qualname__} has no argument {data_keyword_argument!r}")
            return bound.arguments[data_keyword_argument]

        return _wrap(
            func,
            data_of,
            None,
            persistence_store,
            config or IdempotencyConfig(),
            output_serializer,
            key_prefix,
            cache_exceptions,
            exception_serializer,
        )

    return decorate


def idempotent(
    *,
    persistence_store: BasePersistenceLayer,
    config: IdempotencyConfig | None = None,
    output_serializer: OutputSerializer | type[Any] | None = None,
    key_prefix: str | None = None,
    cache_exceptions: tuple[type[Exception], ...] = (),
    exception_serializer: ExceptionSerializer | None = None,
) -> Callable[[F], F]:
    """``idempotent_function`` for Lambda-style ``handler(event, context)`` (sync or async).

    The event is the data: the first parameter, or the one after ``self`` / ``cls`` on a
    method (never the instance: every call on it would share one key). The context, the next
    parameter, is registered on the config for the call (``register_lambda_context``), so the
    claim's lease is at most the invocation's remaining time, as the seed's
    ``remaining_time_in_millis``: a retry after a timed-out invocation is not told "in
    progress" for longer than the invocation could run. Unlike the seed the lease is renewed
    while the handler runs (up to ``max_lease_hold_seconds``): a handler outliving the time it
    registered is never run a second time beside itself. Any object with
    ``get_remaining_time_in_millis()`` works, outside Lambda too.
    """

    def decorate(func: F) -> F:
        event_at, event_name, context_at, context_name = _handler_parameters(func)

        def event_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if len(args) > event_at:
                return args[event_at]
            if event_name in kwargs:
                return kwargs[event_name]
            raise TypeError(f"{func.__qualname__}() missing its event argument {event_name!r}")

        def context_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> LambdaContext | None:
            if context_name is None:
                return None
            context = args[context_at] if len(args) > context_at else kwargs.get(context_name)
            return context if hasattr(context, "get_remaining_time_in_millis") else None

        return _wrap(
            func,
            event_of,
            context_of,
            persistence_store,
            config or IdempotencyConfig(),
            output_serializer,
            key_prefix,
            cache_exceptions,
            exception_serializer,
        )

    return decorate


def _wrap(
    func: F,
    data_of: Callable[[tuple[Any, ...], dict[str, Any]], Any],
    context_of: Callable[[tuple[Any, ...], dict[str, Any]], LambdaContext | None] | None,
    persistence_store: BasePersistenceLayer,
    cfg: IdempotencyConfig,
    output_serializer: OutputSerializer | type[Any] | None,
    key_prefix: str | None,
    cache_exceptions: tuple[type[Exception], ...],
    exception_serializer: ExceptionSerializer | None,
) -> F:
    """Both decorators: everything but where the data and the invocation context come from."""
    if key_prefix is not None and (not isinstance(key_prefix, str) or not key_prefix):
        raise ValueError("key_prefix must be a non-empty string")
    cacheable = _check_cacheable(cache_exceptions)
    serializer = _resolve_serializer(output_serializer, func)
    scheme = KeyScheme.build(cfg, key_prefix or f"{func.__module__}.{func.__qualname__}")
    persistence_store.enable_local_cache(cfg)  # created if wanted; used by this caller only
    hook = cfg.response_hook
    ttl = cfg.expires_after_seconds
    check_round_trip = isinstance(serializer, (DataclassSerializer, PydanticSerializer))

    kind = store_kind(persistence_store)

    def begin(
        args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Plan[tuple[Replay | Claimed | None, float, Observation | None]]:
        """The decision, and the lease the claim is held with (renewed while the function
        runs): ``lease_seconds``, or the invocation's remaining time when that is shorter;
        and the event fields of this call when someone listens."""
        data = _payload(data_of(args, kwargs))
        try:
            key = scheme.hashed_key(scheme.key_material(data))
        except IdempotencyKeyError as exc:
            if _events._listeners:
                publish(_no_key_event(Decision.KEY_INVALID, kind, exc))
            raise
        if key is None:
            if _events._listeners:
                publish(_no_key_event(Decision.NO_KEY, kind, None))
            return None, 0.0, None
        lease_seconds = cfg.lease_seconds
        invocation = cfg.lambda_context
        if invocation is not None:
            lease_seconds = max(
                lease_from_remaining(invocation.get_remaining_time_in_millis(), lease_seconds),
                min(_SHORTEST_RENEWED_LEASE, lease_seconds),
            )
        claiming = plan_claim(
            persistence_store,
            key,
            scheme.payload_hash(data),
            lease_seconds=lease_seconds,
            expires_after_seconds=ttl,
            use_cache=cfg.use_local_cache,
        )
        if not _events._listeners:
            return (yield from claiming), lease_seconds, None
        observed = Observation("function", None, None, kind, key)
        timing = Timing()
        try:
            decision = yield from timed(claiming, timing)
        except (
            IdempotencyValidationError,
            IdempotencyAlreadyInProgressError,
            IdempotencyPersistenceLayerError,
        ) as exc:
            refused = (
                Decision.PAYLOAD_MISMATCH
                if isinstance(exc, IdempotencyValidationError)
                else Decision.IN_PROGRESS
                if isinstance(exc, IdempotencyAlreadyInProgressError)
                else Decision.STORE_ERROR
            )
            publish(observed.event(refused, timing=timing, error=type(exc).__name__))
            raise
        done = Decision.REPLAY if isinstance(decision, Replay) else Decision.EXECUTE
        publish(observed.event(done, timing=timing))
        observed.started = time.perf_counter()  # the function starts now
        return decision, lease_seconds, observed

    def encode(result: Any) -> bytes:
        if result is None:  # None is None with or without a serializer
            return b"null"
        if serializer is None:
            encoded = _encode_strict(result)
            _require_exact_json(result)
            return encoded
        value = serializer.to_dict(result)
        if value is None:
            raise TypeError(
                f"{type(serializer).__name__}.to_dict returned None for a "
                f"{type(result).__name__}: its replay would be None"
            )
        encoded = _encode_strict(value)
        if check_round_trip:
            # Checked once, when stored: a replay that differs from what the caller got (a
            # dataclass under ``Any`` coming back as a dict) is refused now, not discovered
            # by a retry.
            rebuilt = serializer.from_dict(json.loads(encoded))
            if not _same(rebuilt, result):
                raise TypeError(
                    f"a {type(result).__name__} would not replay equal through "
                    f"{type(serializer).__name__} (replay: {rebuilt!r}); pass an "
                    "output_serializer that rebuilds it"
                )
        return encoded

    def encode_exception(exc: Exception) -> bytes:
        kind = type(exc)
        doc: dict[str, Any] = {"module": kind.__module__, "qualname": kind.__qualname__}
        if exception_serializer is not None:
            doc["data"] = exception_serializer.to_dict(exc)
        else:
            doc["message"] = str(exc)
            args = list(exc.args)
            try:  # the arguments too when JSON keeps them exactly: KeyError('x') stays so
                _encode_strict(args)
                _require_exact_json(args)
                doc["args"] = args
            except (TypeError, ValueError):
                pass
        return _EXCEPTION_MARK + _encode_strict(doc)

    def decode(record: DataRecord) -> Any:
        if record.outcome_unknown:
            raise IdempotencyOutcomeUnknownError(
                f"{func.__qualname__}: the first call with this key was interrupted after "
                "it started; it may have had its effects, so it is not run again"
            )
        raw = record.response_data or b""
        if raw.startswith(_EXCEPTION_MARK):
            raise _rebuild_exception(
                _load_json(record, raw[len(_EXCEPTION_MARK) :]), cacheable, exception_serializer
            )
        value = _load_json(record, raw)
        if value is not None and serializer is not None:
            try:
                value = serializer.from_dict(value)
            except Exception as exc:  # the model changed since: the run is not repeated
                raise IdempotencyCorruptRecordError(
                    f"stored result of {record.idempotency_key} does not fit "
                    f"{type(serializer).__name__} any more: {exc}"
                ) from exc
        # A copy: what the hook does to its record never reaches the stored or cached one.
        return value if hook is None else hook(value, dataclasses.replace(record))

    def release(
        claim: DataRecord,
        observed: Observation | None = None,
        decision: Decision = Decision.RELEASED,
        error: BaseException | None = None,
    ) -> Plan[None]:
        """Free the key; the caller's exception, not a store error, is what propagates."""
        releasing = plan_release(persistence_store, claim)
        timing = None if observed is None else Timing()
        try:
            released = yield from (releasing if timing is None else timed(releasing, timing))
        except IdempotencyPersistenceLayerError as exc:
            if observed is not None and _events._listeners:
                publish(
                    observed.event(
                        Decision.STORE_ERROR, timing=timing, handler=True, error=_name(exc)
                    )
                )
            return
        if observed is not None and _events._listeners:
            event = (
                observed.event(decision, timing=timing, handler=True, error=_name(error))
                if released
                else observed.lease_lost()
            )
            if event is not None:
                publish(event)

    def settle(
        claim: DataRecord,
        lease: Any,
        stored: bytes | None,
        observed: Observation | None = None,
        error: BaseException | None = None,
    ) -> Plan[None]:
        """Write the completion of a run that started (``stored`` None: outcome unknown),
        then stop its lease; as the HTTP adapters do, the lease is stopped only once the
        write landed. A store error or an interruption mid-write hands the completion to
        the lease, which keeps the key and writes it soon (``finish_later``): the function
        ran, so its key must never free for a second run."""
        key = claim.idempotency_key
        lease.closing = True
        completing = plan_complete(
            persistence_store,
            claim,
            stored,
            ttl,
            use_cache=cfg.use_local_cache and stored is not None,
            background=False,
        )
        timing = None if observed is None else Timing()
        try:
            written = yield from (completing if timing is None else timed(completing, timing))
        except IdempotencyPersistenceLayerError as exc:
            pending: DataRecord | None = getattr(exc, "pending_record", None)
            if observed is not None and _events._listeners:
                publish(
                    observed.event(
                        Decision.STORE_ERROR, timing=timing, handler=True, error=_name(exc)
                    )
                )
            logger.error(
                "%s of %s not recorded: %s%s",
                "result" if stored is not None else "outcome",
                key,
                exc,
                "; the lease keeps the key and retries" if pending is not None else "",
                extra=fields(
                    decision=Decision.STORE_ERROR.value,
                    source="function",
                    store=kind,
                    key=key,
                    error=_name(exc),
                ),
            )
            if pending is None:
                lease.stop()
            else:
                lease.finish_later(pending)
            return
        except BaseException:  # interrupted mid-write: it may or may not have landed
            lease.finish_later(completion_record(persistence_store, claim, stored, ttl))
            raise
        if observed is not None and _events._listeners:
            event = (
                observed.lease_lost()
                if written is None
                else observed.event(
                    Decision.STORED, timing=timing, handler=True, error=_name(error)
                )
            )
            if event is not None:
                publish(event)
        lease.stop()

    def plan(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Plan[Any]:
        """The whole call, written once: the drivers below only perform its steps."""
        decision, lease_seconds, observed = yield from begin(args, kwargs)
        call = functools.partial(func, *args, **kwargs)
        if decision is None:
            return (yield Step(CALL, call))
        if isinstance(decision, Replay):
            return decode(decision.record)
        claim = decision.record
        try:
            lease = yield Step(HOLD_LEASE, (claim, lease_seconds))
        except BaseException:  # the function has not started: the key may be freed
            yield from release(claim)
            raise
        if observed is not None:
            lease.observed = observed
        try:
            result = yield Step(CALL, call)
        except GeneratorExit:
            raise
        except Exception as exc:
            stored = None
            if cacheable and isinstance(exc, cacheable) and not isinstance(exc, IdempotencyError):
                # A deterministic failure the caller asked to keep: stored like a result, so
                # that every retry gets it again instead of running again. Never one of our
                # own errors: "in progress", "store down" are transient, not outcomes.
                try:
                    stored = encode_exception(exc)
                except Exception as failure:  # not storable: released as any other error
                    logger.error(
                        "exception of %s not storable: %r",
                        claim.idempotency_key,
                        failure,
                        extra=fields(
                            source="function",
                            store=kind,
                            key=claim.idempotency_key,
                            error=_name(failure),
                        ),
                    )
            if stored is None:  # the function's own error: release, then let it propagate
                yield Step(DROP_LEASE, lease)
                yield from release(claim, observed, Decision.RELEASED, exc)
                yield Step(RELEASED, lease)
                raise
            yield Step(SETTLE, settle(claim, lease, stored, observed, exc))
            raise
        except BaseException as exc:
            # Interrupted after it started (C3): it may have had its effects, so the key
            # is never freed; retries are told the outcome is unknown.
            yield Step(SETTLE, settle(claim, lease, None, observed, exc))
            raise
        try:
            encoded = encode(result)
        except Exception as exc:  # not storable: the caller sees why; a retry may run again
            yield Step(DROP_LEASE, lease)
            yield from release(claim, observed, Decision.NOT_STORED, exc)
            yield Step(RELEASED, lease)
            raise
        # A store error is logged and left to the lease: the function ran, its caller gets
        # the result rather than an error that invites a retry.
        yield Step(SETTLE, settle(claim, lease, encoded, observed))
        return result

    def perform(step: Step) -> Any:
        if step.op is CALL:
            return step.arg()
        if step.op is HOLD_LEASE:
            claim, lease_seconds = step.arg
            return sync_renewer.start(
                persistence_store, claim, lease_seconds, cfg.max_lease_hold_seconds
            )
        if step.op is DROP_LEASE:
            return step.arg.stop()
        if step.op is RELEASED:
            return None
        if step.op is SETTLE:
            return run(step.arg, perform, BaseException)
        return perform_step(persistence_store, step)

    async def perform_async(step: Step) -> Any:
        if step.op is CALL:
            return await step.arg()
        if step.op is HOLD_LEASE:
            claim, lease_seconds = step.arg
            return AsyncLease(persistence_store, claim, lease_seconds, cfg.max_lease_hold_seconds)
        if step.op is DROP_LEASE:  # waits for a renewal in flight (it would retake the key)
            return await step.arg.stop_async()
        if step.op is RELEASED:
            return await step.arg.released_async()
        if step.op is SETTLE:  # in its own task: a cancellation of the caller cannot cut it
            return await to_the_end(
                run_async(step.arg, perform_async, BaseException),
                inline=settles_inline(persistence_store),
            )
        return await perform_step_async(persistence_store, step)

    def bind_context(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``register_lambda_context`` for the duration of one handler call (a reset token)."""
        context = context_of(args, kwargs) if context_of is not None else None
        if context is None:
            return None
        registered = dict(_LAMBDA_CONTEXTS.get({}))
        registered[id(cfg)] = (cfg, context)
        return _LAMBDA_CONTEXTS.set(registered)

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if idempotency_disabled():
                return await func(*args, **kwargs)
            token = bind_context(args, kwargs)
            try:
                return await run_async(plan(args, kwargs), perform_async, BaseException)
            finally:
                if token is not None:
                    _LAMBDA_CONTEXTS.reset(token)

        return cast(F, async_wrapper)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if idempotency_disabled():
            return func(*args, **kwargs)
        token = bind_context(args, kwargs)
        try:
            return run(plan(args, kwargs), perform, BaseException)
        finally:
            if token is not None:
                _LAMBDA_CONTEXTS.reset(token)

    return cast(F, wrapper)


def _name(error: BaseException | None) -> str | None:
    return None if error is None else type(error).__name__


def _no_key_event(decision: Decision, kind: str, error: BaseException | None) -> IdempotencyEvent:
    return IdempotencyEvent(decision, "function", None, None, None, kind, None, error=_name(error))


def _handler_parameters(func: Callable[..., Any]) -> tuple[int, str, int, str | None]:
    """Where ``handler(event, context)`` takes its event and context: positions and names,
    past a leading ``self`` / ``cls`` (a method decorated in its class body is still a plain
    function here, so its first parameter's name is what tells)."""
    positional = [
        p.name
        for p in inspect.signature(func).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    skip = 1 if positional[:1] in (["self"], ["cls"]) else 0
    if len(positional) <= skip:
        raise TypeError(
            f"@idempotent needs a handler(event, context); {func.__qualname__} takes no event"
        )
    context = positional[skip + 1] if len(positional) > skip + 1 else None
    return skip, positional[skip], skip + 1, context


def _check_cacheable(kinds: tuple[type[Exception], ...]) -> tuple[type[Exception], ...]:
    """Only ``Exception`` subclasses: an interruption is "outcome unknown", never a result;
    and none of this package's errors, which say something about this call (in progress,
    store down), not about the function's outcome."""
    kinds = tuple(kinds)
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise TypeError(f"cache_exceptions takes Exception subclasses, not {kind!r}")
        if issubclass(kind, IdempotencyError):
            raise TypeError(
                f"cache_exceptions cannot hold {kind.__qualname__}: the package's own errors "
                "are transient, never cached"
            )
    return kinds


def _load_json(record: DataRecord, raw: bytes) -> Any:
    """A stored JSON document, or ``IdempotencyCorruptRecordError``."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise IdempotencyCorruptRecordError(
            f"undecodable stored result under {record.idempotency_key!r}: {exc}"
        ) from exc


def _cacheable_class(name: str, cacheable: tuple[type[Exception], ...]) -> type[Exception] | None:
    """The class named ``module.qualname`` among ``cacheable`` and their subclasses.

    Only classes the decorator was given, and those already defined below them, can match:
    stored data never imports a module, runs a module's ``__getattr__``, or picks an
    arbitrary class.
    """
    seen: set[type[Any]] = set()
    stack: list[type[Any]] = list(cacheable)
    while stack:
        kind = stack.pop()
        if kind in seen:
            continue
        seen.add(kind)
        if f"{kind.__module__}.{kind.__qualname__}" == name and not issubclass(
            kind, IdempotencyError
        ):
            return cast(type[Exception], kind)
        stack.extend(kind.__subclasses__())
    return None


def _rebuild_exception(
    doc: Any,
    cacheable: tuple[type[Exception], ...],
    exception_serializer: ExceptionSerializer | None,
) -> BaseException:
    """The exception a replay raises.

    With a user serializer, whatever its ``from_dict`` gives. Otherwise the original class when
    it is one of this function's ``cache_exceptions`` or a subclass of one (found by walking
    their subclasses: no import, no attribute lookup on modules), and it rebuilds from the
    stored arguments with the same message; else ``IdempotencyCachedError`` with the type name
    and message. A document of the wrong shape is ``IdempotencyCorruptRecordError``.
    """
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(field, ""), str) for field in ("module", "qualname", "message")
    ):
        raise IdempotencyCorruptRecordError(f"stored exception of an unknown shape: {doc!r:.200}")
    if exception_serializer is not None:
        try:
            rebuilt_by_user = exception_serializer.from_dict(doc.get("data"))
        except Exception as exc:
            raise IdempotencyCorruptRecordError(
                f"stored exception not rebuilt by {type(exception_serializer).__name__}: {exc}"
            ) from exc
        if not isinstance(rebuilt_by_user, BaseException):
            raise IdempotencyCorruptRecordError(
                f"{type(exception_serializer).__name__}.from_dict returned "
                f"{type(rebuilt_by_user).__name__}, not an exception"
            )
        return rebuilt_by_user
    module, qualname = doc.get("module", ""), doc.get("qualname", "")
    message = doc.get("message", "")
    kind = _cacheable_class(f"{module}.{qualname}", cacheable) if cacheable else None
    if kind is not None:
        args = doc.get("args")
        try:
            rebuilt = kind(*args) if isinstance(args, list) else kind(message)
        except Exception:
            rebuilt = None
        if rebuilt is not None and type(rebuilt) is kind and str(rebuilt) == message:
            return rebuilt
    return IdempotencyCachedError(f"{module}.{qualname}", message)


def _return_model(func: Callable[..., Any]) -> type[Any]:
    """The model a "deduced" serializer works with: the return annotation, ``X | None`` -> X."""
    try:
        hint = typing.get_type_hints(func).get("return")
    except Exception as exc:  # a forward reference that does not resolve
        raise TypeError(f"cannot read the return annotation of {func.__qualname__}: {exc}") from exc
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = members[0] if len(members) == 1 else None
    if not isinstance(hint, type):
        raise TypeError(
            f"{func.__qualname__} needs a return annotation naming one class for a deduced "
            "output_serializer (or pass the serializer with its model)"
        )
    return hint


def _resolve_serializer(
    spec: OutputSerializer | type[Any] | None, func: Callable[..., Any]
) -> OutputSerializer | None:
    """An instance as is; a pydantic model or a dataclass gets its serializer; a serializer
    class with ``instantiate`` gets the return annotation's model (deduced). Models first: a
    model with its own ``instantiate`` method is still a model."""
    if spec is None or not isinstance(spec, type):
        return spec
    if hasattr(spec, "model_validate"):
        return PydanticSerializer(spec)
    if dataclasses.is_dataclass(spec):
        return DataclassSerializer(spec)
    instantiate = getattr(spec, "instantiate", None)
    if callable(instantiate):
        return cast(OutputSerializer, instantiate(_return_model(func)))
    raise TypeError(f"no serializer for {spec!r}: pass an object with to_dict/from_dict")
