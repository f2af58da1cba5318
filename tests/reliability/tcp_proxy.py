"""A loopback TCP proxy that adds latency to, or stalls, the traffic between an app and Redis.

It runs its own asyncio loop in a daemon thread, so sync and async clients can both go
through it and the test thread steers it with plain attribute writes:

- ``latency``: seconds added to every chunk in the chosen directions (order kept, no
  head-of-line build-up: each chunk leaves at its arrival time plus the latency);
- ``stalled``: while True, chunks in the chosen directions are held, not forwarded;
- ``blackhole``: while True, chunks in the chosen directions are dropped (a lost packet that
  never arrives, so Redis never sees the command);
- ``directions``: ``{"up", "down"}`` by default (``up`` = app to Redis, ``down`` = replies).

One-shot faults, for fault scripts (``inject(direction, *faults)``): each applies to the
next chunk that crosses the proxy in that direction, on any connection, in order:

- ``Delay(seconds)``: hold that chunk (later chunks queue behind it);
- ``DROP``: drop it; ``DUPLICATE``: forward it twice (a reply nobody asked for);
- ``SPLIT``: forward it one byte per write (parsers must reassemble);
- ``RESET``: abort both sides with a TCP RST instead of forwarding it;
- ``HALF_CLOSE``: send FIN towards the receiver instead of forwarding it, keep reading.

``close()`` drops every connection and stops the thread. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

HOST = "127.0.0.1"
_POLL = 0.01
_MAX_HOLD = 60.0  # a held chunk is dropped (connection closed) after this long, come what may


@dataclass(frozen=True)
class Delay:
    seconds: float


DROP = "drop"
DUPLICATE = "duplicate"
SPLIT = "split"
RESET = "reset"
HALF_CLOSE = "half-close"
Fault = Delay | str


class TcpProxy:
    def __init__(self, upstream_port: int) -> None:
        self.faults: dict[str, deque[Fault]] = {"up": deque(), "down": deque()}
        #: How many one-shot faults have been applied (tests wait on this, not on sleeps).
        self.applied = 0
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
        self._peers: dict[asyncio.StreamWriter, asyncio.StreamWriter] = {}
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
        for queue in self.faults.values():
            queue.clear()

    def inject(self, direction: str, *faults: Fault) -> None:
        """Queue one-shot faults for the next chunks in ``direction`` (``up`` or ``down``)."""
        self.faults[direction].extend(faults)

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
        self._peers[writer], self._peers[up_writer] = up_writer, writer
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
                self._peers.pop(w, None)

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
                fault = _pop(self.faults[direction])
                if fault is not None:
                    self.applied += 1
                    if not await self._apply(fault, data, writer, peer):
                        return
                    continue
                writer.write(data)
                await writer.drain()

        peer = self._peers.get(writer)
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

    @staticmethod
    async def _apply(
        fault: Fault,
        data: bytes,
        writer: asyncio.StreamWriter,
        peer: asyncio.StreamWriter | None,
    ) -> bool:
        """Perform one fault on ``data``; False when the connection is finished."""
        if isinstance(fault, Delay):
            await asyncio.sleep(fault.seconds)
            writer.write(data)
        elif fault == DUPLICATE:
            writer.write(data + data)
        elif fault == SPLIT:
            for index in range(len(data)):
                writer.write(data[index : index + 1])
                await writer.drain()
                await asyncio.sleep(0.001)
        elif fault == RESET:
            for side in (writer, peer):
                if side is not None:
                    _abort_with_rst(side)
            return False
        elif fault == HALF_CLOSE:
            if writer.can_write_eof():
                writer.write_eof()
            return False  # nothing more goes this way; the other direction keeps flowing
        elif fault != DROP:
            raise ValueError(f"unknown fault {fault!r}")
        await writer.drain()
        return True


def _pop(queue: deque[Fault]) -> Fault | None:
    try:
        return queue.popleft()
    except IndexError:
        return None


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout: close() sends RST, not FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
