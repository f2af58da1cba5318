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


class Step(NamedTuple):
    """One I/O operation: ``op`` names a layer method (``_<op>`` / ``_<op>_async``) or sleep."""

    op: str
    arg: Any


Plan = Generator[Step, Any, T]

GET = "get_record"
PUT = "put_record"
UPDATE = "update_record"
DELETE = "delete_record"
RENEW = "renew_lease"
SLEEP = "sleep"


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
            if step.op == SLEEP:
                time.sleep(step.arg)
            else:
                result = getattr(layer, "_" + step.op)(step.arg)
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
            if step.op == SLEEP:
                await asyncio.sleep(step.arg)
            else:
                result = await getattr(layer, "_" + step.op + "_async")(step.arg)
        except Exception as exc:
            error = exc
