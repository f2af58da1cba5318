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
the data, and the claim's lease ends with the invocation (``get_remaining_time_in_millis``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from ._core import Claimed, Replay, plan_claim, plan_complete, plan_release
from ._disabled import idempotency_disabled
from ._lease import AsyncLease, sync_renewer
from ._steps import Op, Plan, Step, perform_step, perform_step_async, run, run_async
from .config import _LAMBDA_CONTEXTS, IdempotencyConfig, LambdaContext
from .exceptions import (
    IdempotencyCachedError,
    IdempotencyNoTimeLeftError,
    IdempotencyOutcomeUnknownError,
    IdempotencyPersistenceLayerError,
)
from .persistence.base import BasePersistenceLayer, DataRecord, KeyScheme

logger = logging.getLogger("idempotent_middleware")

F = TypeVar("F", bound=Callable[..., Any])

#: The decorator's own steps, besides the store's: run the function, hold and drop its lease.
CALL = Op("call", "call")
HOLD_LEASE = Op("hold_lease", "hold_lease")
DROP_LEASE = Op("drop_lease", "drop_lease")


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
        return self.model(**data)


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


#: Marks a stored exception (``cache_exceptions``): no JSON document starts with a NUL byte,
#: so a stored result can never be mistaken for one.
_EXCEPTION_MARK = b"\x00exception\x00"


class _NoRenewal:
    """The lease of a Lambda invocation: it ends with the invocation, so it is not renewed."""

    def stop(self) -> None:
        return None


_NO_RENEWAL = _NoRenewal()


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

    The event is the data. The context is registered on the config for the call
    (``register_lambda_context``), so the claim's lease is the invocation's remaining time, as
    the seed's ``remaining_time_in_millis``: a retry after a timed-out invocation is not told
    "in progress" for longer than the invocation could run. Any object with
    ``get_remaining_time_in_millis()`` works, outside Lambda too.
    """

    def decorate(func: F) -> F:
        def event_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return args[0] if args else kwargs["event"]

        def context_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> LambdaContext | None:
            context = args[1] if len(args) > 1 else kwargs.get("context")
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

    def begin(
        args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Plan[tuple[Replay | Claimed | None, bool]]:
        """The decision, and whether the claim's lease is renewed while the function runs."""
        data = _payload(data_of(args, kwargs))
        key = scheme.hashed_key(scheme.key_material(data))
        if key is None:
            return None, False
        lease_seconds, renew = cfg.lease_seconds, True
        invocation = cfg.lambda_context
        if invocation is not None:
            remaining = invocation.get_remaining_time_in_millis()
            if remaining <= 0:  # a lease of no time would be expired when written
                raise IdempotencyNoTimeLeftError(
                    f"remaining_time_in_millis={remaining}: no time left to run"
                )
            lease_seconds, renew = remaining / 1000, False
        decision = yield from plan_claim(
            persistence_store,
            key,
            scheme.payload_hash(data),
            lease_seconds=lease_seconds,
            expires_after_seconds=cfg.expires_after_seconds,
            use_cache=cfg.use_local_cache,
        )
        return decision, renew

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
        return _encode_strict(value)

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
                json.loads(raw[len(_EXCEPTION_MARK) :]), cacheable, exception_serializer
            )
        value = record.response_json_as_dict()
        if value is not None and serializer is not None:
            value = serializer.from_dict(value)
        return value if hook is None else hook(value, record)

    def release(claim: DataRecord) -> Plan[None]:
        """Free the key; the caller's exception, not a store error, is what propagates."""
        with contextlib.suppress(IdempotencyPersistenceLayerError):
            yield from plan_release(persistence_store, claim)

    def plan(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Plan[Any]:
        """The whole call, written once: the drivers below only perform its steps."""
        decision, renew = yield from begin(args, kwargs)
        call = functools.partial(func, *args, **kwargs)
        if decision is None:
            return (yield Step(CALL, call))
        if isinstance(decision, Replay):
            return decode(decision.record)
        claim = decision.record
        ttl = cfg.expires_after_seconds
        try:
            lease = (yield Step(HOLD_LEASE, claim)) if renew else _NO_RENEWAL
        except BaseException:  # the function has not started: the key may be freed
            yield from release(claim)
            raise
        try:
            result = yield Step(CALL, call)
        except GeneratorExit:
            raise
        except Exception as exc:
            yield Step(DROP_LEASE, lease)
            stored = None
            if cacheable and isinstance(exc, cacheable):
                # A deterministic failure the caller asked to keep: stored like a result, so
                # that every retry gets it again instead of running again.
                try:
                    stored = encode_exception(exc)
                except Exception as failure:  # not storable: released as any other error
                    logger.error("exception of %s not storable: %r", claim.idempotency_key, failure)
            if stored is None:  # the function's own error: release, then let it propagate
                yield from release(claim)
                raise
            try:
                yield from plan_complete(
                    persistence_store, claim, stored, ttl, use_cache=cfg.use_local_cache
                )
            except IdempotencyPersistenceLayerError as store_error:
                logger.error("exception of %s not recorded: %s", claim.idempotency_key, store_error)
            raise
        except BaseException:
            # Interrupted after it started (C3): it may have had its effects, so the key
            # is never freed; retries are told the outcome is unknown.
            yield Step(DROP_LEASE, lease)
            with contextlib.suppress(IdempotencyPersistenceLayerError):
                yield from plan_complete(persistence_store, claim, None, ttl)
            raise
        yield Step(DROP_LEASE, lease)
        try:
            encoded = encode(result)
        except Exception:  # not storable: the caller sees why; a retry may run again
            yield from release(claim)
            raise
        try:
            yield from plan_complete(
                persistence_store, claim, encoded, ttl, use_cache=cfg.use_local_cache
            )
        except IdempotencyPersistenceLayerError as exc:
            # The function ran: its caller gets the result rather than an error that
            # invites a retry. The completion is retried once in the background; if that
            # fails too, the claim expires with its lease.
            logger.error("result of %s not recorded: %s", claim.idempotency_key, exc)
        return result

    def perform(step: Step) -> Any:
        if step.op is CALL:
            return step.arg()
        if step.op is HOLD_LEASE:
            return sync_renewer.start(
                persistence_store, step.arg, cfg.lease_seconds, cfg.max_lease_hold_seconds
            )
        if step.op is DROP_LEASE:
            return step.arg.stop()
        return perform_step(persistence_store, step)

    async def perform_async(step: Step) -> Any:
        if step.op is CALL:
            return await step.arg()
        if step.op is HOLD_LEASE:
            return AsyncLease(
                persistence_store, step.arg, cfg.lease_seconds, cfg.max_lease_hold_seconds
            )
        if step.op is DROP_LEASE:
            return step.arg.stop()
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


def _check_cacheable(kinds: tuple[type[Exception], ...]) -> tuple[type[Exception], ...]:
    """Only ``Exception`` subclasses: an interruption is "outcome unknown", never a result."""
    kinds = tuple(kinds)
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise TypeError(f"cache_exceptions takes Exception subclasses, not {kind!r}")
    return kinds


def _rebuild_exception(
    doc: dict[str, Any],
    cacheable: tuple[type[Exception], ...],
    exception_serializer: ExceptionSerializer | None,
) -> BaseException:
    """The exception a replay raises.

    With a user serializer, whatever its ``from_dict`` gives. Otherwise the original class when
    it is already imported (no import is triggered by stored data), is one of this function's
    ``cache_exceptions`` (stored data never picks an arbitrary class), and rebuilds from the
    stored arguments with the same message; else ``IdempotencyCachedError`` with the type name
    and message.
    """
    if exception_serializer is not None:
        return exception_serializer.from_dict(doc.get("data"))
    module, qualname = str(doc.get("module", "")), str(doc.get("qualname", ""))
    message = str(doc.get("message", ""))
    kind: Any = sys.modules.get(module)
    for part in qualname.split("."):
        kind = getattr(kind, part, None)
    if isinstance(kind, type) and cacheable and issubclass(kind, cacheable):
        args = doc.get("args")
        try:
            rebuilt = kind(*args) if isinstance(args, list) else kind(message)
        except Exception:
            rebuilt = None
        if rebuilt is not None and type(rebuilt) is kind and str(rebuilt) == message:
            return cast(BaseException, rebuilt)
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
