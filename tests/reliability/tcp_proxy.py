"""A loopback TCP proxy that adds latency to, or stalls, the traffic between an app and Redis.

It runs its own asyncio loop in a daemon thread, so sync and async clients can both go
through it and the test thread steers it with plain attribute writes:

- ``latency``: seconds added to every chunk in the chosen directions (order kept, no
  head-of-line build-up: each chunk leaves at its arrival time plus the latency);
- ``stalled``: while True, chunks in the chosen directions are held, not forwarded;
- ``blackhole``: while True, chunks in the chosen directions are dropped (a lost packet that
  never arrives, so Redis never sees the command);
- ``directions``: ``{"up", "down"}`` by default (``up`` = app to Redis, ``down`` = replies).

``close()`` drops every connection and stops the thread. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Collection

HOST = "127.0.0.1"
_POLL = 0.01
_MAX_HOLD = 60.0  # a held chunk is dropped (connection closed) after this long, come what may


class TcpProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.latency = 0.0
        self.stalled = False
        self.blackhole = False
        self.directions: Collection[str] = frozenset({"up", "down"})
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("proxy did not start")

    # --- control (test thread) ------------------------------------------------------------
    def configure(
        self,
        *,
        latency: float = 0.0,
        stalled: bool = False,
        blackhole: bool = False,
        directions: Collection[str] = ("up", "down"),
    ) -> None:
        self.directions = frozenset(directions)
        self.latency = latency
        self.stalled = stalled
        self.blackhole = blackhole

    def heal(self) -> None:
        self.configure()

    def drop_connections(self) -> None:
        """Close every proxied connection now (the app's pooled sockets break)."""
        self._loop.call_soon_threadsafe(self._close_all)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(10)

    # --- the loop (proxy thread) ----------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, HOST, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._close_all()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.call_later(0.05, self._loop.stop)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, "up"), self._pump(up_reader, writer, "down")
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                arrived, data = await queue.get()
                if not data:
                    writer.close()
                    return
                if direction in self.directions and self.blackhole:
                    continue
                while direction in self.directions and self.stalled:
                    if time.monotonic() - arrived > _MAX_HOLD:
                        writer.close()
                        return
                    await asyncio.sleep(_POLL)
                if direction in self.directions and self.latency:
                    await asyncio.sleep(max(0.0, arrived + self.latency - time.monotonic()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(forward())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((time.monotonic(), data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
