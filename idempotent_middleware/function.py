"""``idempotent_function``: the Powertools decorator for plain sync and async functions."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from ._core import Claimed, Replay, plan_claim, plan_complete, plan_release
from ._lease import AsyncLease, sync_renewer
from ._steps import Op, Plan, Step, perform_step, perform_step_async, run, run_async
from .config import IdempotencyConfig
from .persistence.base import BasePersistenceLayer, DataRecord, KeyScheme, _json_default

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
        persistence_store.enable_local_cache(cfg)
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
                )
            )

        def encode(result: Any) -> bytes:
            value = serializer.to_dict(result) if serializer else result
            return json.dumps(value, separators=(",", ":"), default=_json_default).encode()

        def decode(record: DataRecord) -> Any:
            value = record.response_json_as_dict()
            return serializer.from_dict(value) if serializer else value

        def plan(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Plan[Any]:
            """The whole call, written once: the drivers below only perform its steps."""
            decision = yield from begin(args, kwargs)
            call = functools.partial(func, *args, **kwargs)
            if decision is None:
                return (yield Step(CALL, call))
            if isinstance(decision, Replay):
                return decode(decision.record)
            claim = decision.record
            lease = yield Step(HOLD_LEASE, claim)
            try:
                result = yield Step(CALL, call)
            except BaseException:  # release, then let the function's exception propagate
                yield Step(DROP_LEASE, lease)
                yield from plan_release(persistence_store, claim)
                raise
            yield Step(DROP_LEASE, lease)
            yield from plan_complete(
                persistence_store, claim, encode(result), cfg.expires_after_seconds
            )
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
