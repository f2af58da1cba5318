"""``idempotent_function``: the Powertools decorator for plain sync and async functions.

Once the function has started, only an exception it raises (an ``Exception``) frees the key for
another run. An interruption (``KeyboardInterrupt``, ``SystemExit``, ``asyncio.CancelledError``)
may come after its side effects, so it is recorded as "executed, outcome unknown" and every
retry raises ``IdempotencyOutcomeUnknownError`` instead of running again (contract C3).

Results are stored as JSON and must come back equal and of the same types: a result that JSON
would alter (``Decimal``, ``datetime``, tuples, non-string dict keys, subclasses of the JSON
types) raises ``TypeError`` and releases the key, unless an ``output_serializer`` handles it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from ._core import Claimed, Replay, plan_claim, plan_complete, plan_release
from ._lease import AsyncLease, sync_renewer
from ._steps import Op, Plan, Step, perform_step, perform_step_async, run, run_async
from .config import IdempotencyConfig
from .exceptions import IdempotencyOutcomeUnknownError, IdempotencyPersistenceLayerError
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


class DataclassSerializer:
    def __init__(self, model: type[Any]) -> None:
        self.model = model

    def to_dict(self, value: Any) -> Any:
        return dataclasses.asdict(value)

    def from_dict(self, data: Any) -> Any:
        return self.model(**data)


class PydanticSerializer:
    def __init__(self, model: type[Any]) -> None:
        self.model = model

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


def idempotent_function(
    *,
    data_keyword_argument: str,
    persistence_store: BasePersistenceLayer,
    config: IdempotencyConfig | None = None,
    output_serializer: OutputSerializer | type[Any] | None = None,
) -> Callable[[F], F]:
    """Run the function once per key taken from the ``data_keyword_argument`` argument.

    Duplicates get the stored result; an in-flight duplicate raises
    ``IdempotencyAlreadyInProgressError``; an exception releases the key and propagates.
    Results must be JSON-serialisable, or a dataclass / pydantic model with a serializer.
    """
    cfg = config or IdempotencyConfig()
    serializer = _resolve_serializer(output_serializer)

    def decorate(func: F) -> F:
        scheme = KeyScheme.build(cfg, f"{func.__module__}.{func.__qualname__}")
        persistence_store.enable_local_cache(cfg)  # created if wanted; used by this caller only
        signature = inspect.signature(func)

        def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Plan[Replay | Claimed | None]:
            bound = signature.bind(*args, **kwargs)
            if data_keyword_argument not in bound.arguments:
                raise RuntimeError(f"{func.__qualname__} has no argument {data_keyword_argument!r}")
            data = _payload(bound.arguments[data_keyword_argument])
            key = scheme.hashed_key(scheme.key_material(data))
            if key is None:
                return None
            return (
                yield from plan_claim(
                    persistence_store,
                    key,
                    scheme.payload_hash(data),
                    lease_seconds=cfg.lease_seconds,
                    expires_after_seconds=cfg.expires_after_seconds,
                    use_cache=cfg.use_local_cache,
                )
            )

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

        def decode(record: DataRecord) -> Any:
            if record.outcome_unknown:
                raise IdempotencyOutcomeUnknownError(
                    f"{func.__qualname__}: the first call with this key was interrupted after "
                    "it started; it may have had its effects, so it is not run again"
                )
            value = record.response_json_as_dict()
            if value is None or serializer is None:
                return value
            return serializer.from_dict(value)

        def release(claim: DataRecord) -> Plan[None]:
            """Free the key; the caller's exception, not a store error, is what propagates."""
            with contextlib.suppress(IdempotencyPersistenceLayerError):
                yield from plan_release(persistence_store, claim)

        def plan(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Plan[Any]:
            """The whole call, written once: the drivers below only perform its steps."""
            decision = yield from begin(args, kwargs)
            call = functools.partial(func, *args, **kwargs)
            if decision is None:
                return (yield Step(CALL, call))
            if isinstance(decision, Replay):
                return decode(decision.record)
            claim = decision.record
            ttl = cfg.expires_after_seconds
            try:
                lease = yield Step(HOLD_LEASE, claim)
            except BaseException:  # the function has not started: the key may be freed
                yield from release(claim)
                raise
            try:
                result = yield Step(CALL, call)
            except GeneratorExit:
                raise
            except Exception:  # the function's own error: release, then let it propagate
                yield Step(DROP_LEASE, lease)
                yield from release(claim)
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

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await run_async(plan(args, kwargs), perform_async, BaseException)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return run(plan(args, kwargs), perform, BaseException)

        return cast(F, wrapper)

    return decorate


def _resolve_serializer(spec: OutputSerializer | type[Any] | None) -> OutputSerializer | None:
    if spec is None or not isinstance(spec, type):
        return spec
    if hasattr(spec, "model_validate"):
        return PydanticSerializer(spec)
    if dataclasses.is_dataclass(spec):
        return DataclassSerializer(spec)
    raise TypeError(f"no serializer for {spec!r}: pass an object with to_dict/from_dict")
