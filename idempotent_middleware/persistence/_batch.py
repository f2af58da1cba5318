"""Automatic pipelining: batch the Redis commands of one event-loop tick."""

from __future__ import annotations

import asyncio
from typing import Any

Command = tuple[Any, ...]


class TickBatcher:
    """Queues the commands issued during one event-loop tick; ``_flush`` sends them together.

    The first command of a tick schedules the flush with ``call_soon``: it runs once every
    callback already ready has run, so concurrent requests join the batch, and an idle
    command waits for no timer.
    """

    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: list[tuple[Command, asyncio.Future[Any]]] = []

    def execute(self, command: Command) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        if not self.queue:
            self.loop.call_soon(self._flush)
        self.queue.append((command, future))
        return future

    def _flush(self) -> None:
        raise NotImplementedError
