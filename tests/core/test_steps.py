"""The step drivers' guarantees: ``to_the_end`` finishes a write whatever befalls its caller,
in both of its modes (a task from the first step; ``inline``, moved to one on suspension)."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Generator
from typing import Any

import pytest

from idempotent_middleware._steps import finishing_writes, to_the_end

INLINE = pytest.mark.parametrize("inline", [False, True], ids=["task", "inline"])


def test_an_inline_write_that_never_suspends_runs_in_the_callers_task() -> None:
    """No task, no loop turn: nothing could have cancelled it, so nothing is shielded."""
    seen: list[asyncio.Task[Any] | None] = []

    async def write() -> str:
        seen.append(asyncio.current_task())
        return "stored"

    async def main() -> str:
        result = await to_the_end(write(), inline=True)
        assert not finishing_writes
        assert seen == [asyncio.current_task()]
        return result

    assert asyncio.run(main()) == "stored"


def test_a_write_runs_in_a_task_of_its_own_from_its_first_step() -> None:
    """What it enters before suspending (a timeout, a context token) stays in one task."""
    seen: list[asyncio.Task[Any] | None] = []

    async def write() -> str:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())
        return "stored"

    async def main() -> str:
        result = await to_the_end(write())
        assert len(seen) == 2 and seen[0] is seen[1] is not asyncio.current_task()
        return result

    assert asyncio.run(main()) == "stored"


@INLINE
def test_a_write_that_raises_before_suspending_raises_to_the_caller(inline: bool) -> None:
    async def write() -> None:
        raise OSError("store down")

    with pytest.raises(OSError, match="store down"):
        asyncio.run(to_the_end(write(), inline=inline))


@INLINE
def test_a_write_suspended_when_its_caller_is_cancelled_finishes(inline: bool) -> None:
    """Cancelled at the write's first suspension: the write still gets its answers (a
    future's result, a bare yield) and ends; the caller sees its cancellation."""
    steps: list[object] = []

    @types.coroutine
    def bare_yield() -> Generator[None, None, None]:
        yield

    async def write(answer: asyncio.Future[str]) -> str:
        steps.append("started")
        steps.append(await answer)
        await bare_yield()
        await asyncio.sleep(0.01)
        steps.append("stored")
        return "done"

    async def main() -> None:
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        caller = asyncio.ensure_future(to_the_end(write(answer), inline=inline))
        while not steps:  # the write has started and waits for its answer
            await asyncio.sleep(0)
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        assert caller.cancelled()
        assert len(finishing_writes) == 1
        answer.set_result("answer")
        await asyncio.gather(*finishing_writes)
        assert steps == ["started", "answer", "stored"]
        assert not finishing_writes

    asyncio.run(main())


@INLINE
def test_a_write_that_fails_after_suspending_raises_to_the_caller(inline: bool) -> None:
    async def write() -> None:
        await asyncio.sleep(0)
        raise OSError("lost mid-write")

    with pytest.raises(OSError, match="lost mid-write"):
        asyncio.run(to_the_end(write(), inline=inline))


@INLINE
def test_a_write_that_catches_an_error_thrown_in_goes_on(inline: bool) -> None:
    """What its awaited future raises reaches the write, which may handle it."""

    async def write(failing: asyncio.Future[None]) -> str:
        try:
            await failing
        except OSError:
            return "handled"
        return "not reached"

    async def main() -> str:
        failing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(failing.set_exception, OSError("timeout"))
        return await to_the_end(write(failing), inline=inline)

    assert asyncio.run(main()) == "handled"
