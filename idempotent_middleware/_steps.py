"""The I/O steps the sans-IO core yields, and the two drivers that perform them.

The decision logic (``_core.py``, ``http/`` and the template methods of
``BasePersistenceLayer``) is written once as generators that ``yield`` a ``Step`` and receive
its result (or have its exception thrown back in). ``drive`` performs the steps with the sync
methods of a persistence layer, ``drive_async`` with the async ones; they are the only places
where sync and async differ, so no decision exists twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, NamedTuple, TypeVar

#: A persistence layer, seen only through the method names a step carries: the drivers sit
#: below ``persistence`` in the import graph, so they name no layer class.
Layer = object

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
#: A claim that answers with what holds the key instead of raising (``_claim_record``).
CLAIM = _op("claim_record")
UPDATE = _op("update_record")
DELETE = _op("delete_record")
RENEW = _op("renew_lease")
SLEEP = Op("sleep", "sleep")
#: Run the Step given as argument later, off the request's path; its outcome is ignored.
BACKGROUND = Op("background", "background")
#: How long a background step waits: a store that just failed gets a moment to recover, and
#: a request arriving meanwhile is not queued behind it.
BACKGROUND_DELAY = 1.0

_background_queue: queue.SimpleQueue[tuple[float, Layer, Step]] = queue.SimpleQueue()
_background_thread: threading.Thread | None = None
_background_pid = os.getpid()
_background_tasks: set[asyncio.Task[None]] = set()


def _background_worker(jobs: queue.SimpleQueue[tuple[float, Layer, Step]]) -> None:
    while True:
        due, layer, step = jobs.get()
        time.sleep(max(0.0, due - time.monotonic()))
        with contextlib.suppress(Exception):
            getattr(layer, step.op.sync)(step.arg)


def _in_background(layer: Layer, step: Step) -> None:
    global _background_thread
    if (
        _background_thread is None
        or not _background_thread.is_alive()
        or _background_pid != os.getpid()
    ):
        _background_thread = threading.Thread(
            target=_background_worker,
            args=(_background_queue,),
            name="idempotency-background",
            daemon=True,
        )
        _background_thread.start()
    _background_queue.put((time.monotonic() + BACKGROUND_DELAY, layer, step))


def _after_fork_in_child() -> None:
    """Threads do not survive ``fork``: the child starts its own worker on first use, with
    an empty queue (what the parent queued is the parent's to do)."""
    global _background_queue, _background_thread, _background_pid
    _background_queue = queue.SimpleQueue()
    _background_thread, _background_pid = None, os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


async def _quietly(layer: Layer, step: Step) -> None:
    await asyncio.sleep(BACKGROUND_DELAY)
    with contextlib.suppress(Exception):
        await getattr(layer, step.op.async_)(step.arg)


def run(
    plan: Generator[Any, Any, T],
    perform: Callable[[Any], Any],
    errors: type[BaseException] | tuple[type[BaseException], ...] = Exception,
) -> T:
    """Run a generator of I/O requests to its end: ``perform`` each one, send back its result
    or throw back its error (only ``errors``; anything else propagates)."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = plan.throw(error) if error is not None else plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result, error = None, None
        try:
            result = perform(request)
        except errors as exc:
            error = exc


async def run_async(
    plan: Generator[Any, Any, T],
    perform: Callable[[Any], Awaitable[Any]],
    errors: type[BaseException] | tuple[type[BaseException], ...] = Exception,
) -> T:
    """``run`` for a coroutine ``perform``."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = plan.throw(error) if error is not None else plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result, error = None, None
        try:
            result = await perform(request)
        except errors as exc:
            error = exc


def perform_step(layer: Layer, step: Step) -> Any:
    """One step with the layer's blocking methods."""
    if step.op is SLEEP:
        return time.sleep(step.arg)
    if step.op is BACKGROUND:
        return _in_background(layer, step.arg)
    return getattr(layer, step.op.sync)(step.arg)


async def perform_step_async(layer: Layer, step: Step) -> Any:
    """One step with the layer's async methods, on the running loop.

    Under another async library than asyncio (trio), with the layer's blocking methods in a
    worker thread instead: the layers' async clients are asyncio-only.
    """
    if asyncio._get_running_loop() is None:  # the one cheap check on the asyncio path
        return await _perform_foreign(layer, step)
    if step.op is SLEEP:
        return await asyncio.sleep(step.arg)
    if step.op is BACKGROUND:
        task = asyncio.get_running_loop().create_task(_quietly(layer, step.arg))
        _background_tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(_background_tasks.discard)
        return None
    return await getattr(layer, step.op.async_)(step.arg)


async def _perform_foreign(layer: Layer, step: Step) -> Any:
    """``perform_step_async`` for a non-asyncio library, found with sniffio (lazily: trio
    and anyio depend on it, asyncio users need neither)."""
    import sniffio

    library = sniffio.current_async_library()
    if library != "trio":
        raise RuntimeError(f"idempotent_middleware runs under asyncio or trio, not {library!r}")
    trio: Any = importlib.import_module("trio")  # typed or not depending on its version
    if step.op is SLEEP:
        return await trio.sleep(step.arg)
    # Not abandoned on cancellation: a store write half done must finish (or fail) first.
    return await trio.to_thread.run_sync(perform_step, layer, step)


#: Records being written while the task that asked for them was cancelled (kept referenced).
finishing_writes: set[asyncio.Future[Any]] = set()


async def to_the_end(awaitable: Coroutine[Any, Any, T], inline: bool = False) -> T:
    """Await a record's write to its end even if the calling task is cancelled meanwhile.

    A cancellation in the middle of the store write would leave the claim to run out with
    its lease, and the handler to run again: the write goes on in its own task, and the
    caller still sees its cancellation.

    The write runs in that task from its first step, not moved there at its first
    suspension: what a store enters at its start is bound to the task current then, and
    must be left in the same one (``asyncio.timeout`` and, from 3.12, ``wait_for`` inside
    redis-py or our PostgreSQL layer, anyio cancel scopes, ``ContextVar`` tokens); a move
    between tasks cancels the wrong one or fails on exit.

    ``inline`` is for a write known to enter nothing of the kind (the in-memory store's
    own methods): it starts in the caller's task, where one that ends without suspending
    needs no task at all, and moves to one only if it suspends.
    """
    if asyncio._get_running_loop() is None:  # not on asyncio (trio): nothing to shield here
        return await awaitable
    if inline:
        try:
            suspended = awaitable.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        task = asyncio.ensure_future(_resumed(awaitable, suspended))
    else:
        task = asyncio.ensure_future(_awaited(awaitable))
        task.add_done_callback(functools.partial(_start_if_cancelled_unstarted, awaitable))
    return await asyncio.shield(_kept(task))


def _kept(task: asyncio.Future[T]) -> asyncio.Future[T]:
    """Referenced in ``finishing_writes`` until done (the loop holds tasks weakly)."""
    finishing_writes.add(task)
    task.add_done_callback(finishing_writes.discard)
    return task


async def _awaited(coroutine: Coroutine[Any, Any, T]) -> T:
    return await coroutine


def _start_if_cancelled_unstarted(coroutine: Coroutine[Any, Any, Any], task: Any) -> None:
    """A task cancelled before its first step (a shutdown cancelling every task) never
    enters its coroutine: the write's own handling of an interruption (handing the record
    to the lease) would never run, and the record be lost. Start it here instead, as the
    inline mode does; from its first suspension it goes on in a task of its own."""
    if not task.cancelled() or inspect.getcoroutinestate(coroutine) != inspect.CORO_CREATED:
        return
    try:
        suspended = coroutine.send(None)
    except (StopIteration, Exception):  # it ended without suspending: it handled itself
        return
    _kept(asyncio.ensure_future(_resumed(coroutine, suspended))).add_done_callback(_retrieved)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Nobody awaits the rest of such a write: its error was handled by the write itself."""
    if not task.cancelled():
        task.exception()


class _Resume:
    """A coroutine already started, awaitable from its first suspension on: what it yielded
    goes to the task running it, and the task's answers (results, cancellation) back in, as
    ``await`` itself would pass them."""

    __slots__ = ("coroutine", "suspended")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], suspended: Any) -> None:
        self.coroutine = coroutine
        self.suspended = suspended

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, yielded = self.coroutine, self.suspended
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:
                try:
                    yielded = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = coroutine.send(sent)
                except StopIteration as done:
                    return done.value


async def _resumed(coroutine: Coroutine[Any, Any, T], suspended: Any) -> T:
    result: T = await _Resume(coroutine, suspended)
    return result


def drive(layer: Layer, plan: Plan[T]) -> T:
    """Run ``plan`` to its end with the layer's blocking methods.

    ``run`` with ``perform_step`` inlined: a store call, the common step, costs no extra
    frame; an error is thrown back into the plan as ``run`` does.
    """
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            step = plan.throw(error) if error is not None else plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result, error = None, None
        op = step.op
        try:
            if op is SLEEP or op is BACKGROUND:
                result = perform_step(layer, step)
            else:
                result = getattr(layer, op.sync)(step.arg)
        except Exception as exc:
            error = exc


async def drive_async(layer: Layer, plan: Plan[T]) -> T:
    """Run ``plan`` to its end with the layer's async methods, on the running loop.

    ``run_async`` with ``perform_step_async`` inlined on asyncio (the library cannot change
    while one plan runs, so it is looked up once).
    """
    if asyncio._get_running_loop() is None:  # trio: each step through the foreign path
        return await run_async(plan, functools.partial(perform_step_async, layer))
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            step = plan.throw(error) if error is not None else plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        result, error = None, None
        op = step.op
        try:
            if op is SLEEP or op is BACKGROUND:
                result = await perform_step_async(layer, step)
            else:
                result = await getattr(layer, op.async_)(step.arg)
        except Exception as exc:
            error = exc
