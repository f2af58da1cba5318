"""The I/O steps the sans-IO core yields, and the two drivers that perform them.

The decision logic (``_core.py``, ``_http.py`` and the template methods of
``BasePersistenceLayer``) is written once as generators that ``yield`` a ``Step`` and receive
its result (or have its exception thrown back in). ``drive`` performs the steps with the sync
methods of a persistence layer, ``drive_async`` with the async ones; they are the only places
where sync and async differ, so no decision exists twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    from .persistence.base import BasePersistenceLayer

T = TypeVar("T")


class Op(NamedTuple):
    """A layer method by its sync and async names (``_put_record``, ``_put_record_async``)."""

    sync: str
    async_: str


class Step(NamedTuple):
    """One I/O operation: a layer method and its argument, or ``SLEEP`` and seconds."""

    op: Op
    arg: Any


Plan = Generator[Step, Any, T]


def _op(name: str) -> Op:
    return Op(f"_{name}", f"_{name}_async")


GET = _op("get_record")
PUT = _op("put_record")
UPDATE = _op("update_record")
DELETE = _op("delete_record")
RENEW = _op("renew_lease")
SLEEP = Op("", "")


def drive(layer: BasePersistenceLayer, plan: Plan[T]) -> T:
    """Run ``plan`` to its end with blocking I/O."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = plan.throw(error) if error is not None else plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result, error = None, None
        try:
            if step.op is SLEEP:
                time.sleep(step.arg)
            else:
                result = getattr(layer, step.op.sync)(step.arg)
        except Exception as exc:
            error = exc


async def drive_async(layer: BasePersistenceLayer, plan: Plan[T]) -> T:
    """Run ``plan`` to its end on the running event loop."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = plan.throw(error) if error is not None else plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result, error = None, None
        try:
            if step.op is SLEEP:
                await asyncio.sleep(step.arg)
            else:
                result = await getattr(layer, step.op.async_)(step.arg)
        except Exception as exc:
            error = exc
