"""A loopback proxy between an HTTP client and a server that loses or cuts responses.

It reuses ``tests/reliability/tcp_proxy.py``'s loop thread and lifecycle (start on a free
loopback port, ``close()``), and replaces what happens on one connection: when a connection's
request head has arrived, ``plan(head)`` says what to do with that connection's response:

- ``None``: forward everything (a healthy network);
- ``"cut"``: forward the response head and the first ``cut_after_bytes`` bytes of its body,
  then close both sides (the response had started when the network failed; a cut inside the
  head could pass for a whole response, since HTTP/1.x lets a head end at EOF);
- ``"drop"``: forward none of it; close the client side once the server closed its side (the
  server finished the response, which never arrived);
- ``"abort"``: close both sides ``abort_after`` seconds after the request if no response byte
  came by then (a client, or a proxy in front, that gave up waiting; the server sees its client
  leave while the handler runs).

One request per connection: the client sends ``Connection: close`` so the server ends the
connection after its response. ``faults`` counts what was injected, per kind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable

from tests.reliability.tcp_proxy import HOST, TcpProxy

Plan = Callable[[bytes], "str | None"]
FAULTS = ("cut", "drop", "abort")
_HEAD_LIMIT = 64 * 1024
_READ = 65536


class HttpFaultProxy(TcpProxy):
    def __init__(
        self,
        upstream_port: int,
        plan: Plan,
        *,
        cut_after_bytes: int = 5,
        abort_after: float = 0.2,
    ) -> None:
        self.plan = plan
        self.cut_after_bytes = cut_after_bytes
        self.abort_after = abort_after
        self.injected: collections.Counter[str] = collections.Counter()
        super().__init__(upstream_port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        decided: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        first_reply = asyncio.Event()
        try:
            await asyncio.gather(
                self._request(reader, up_writer, decided),
                self._response(up_reader, writer, up_writer, decided, first_reply),
                self._abort_timer(decided, first_reply, writer, up_writer),
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)

    async def _request(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        decided: asyncio.Future[str | None],
    ) -> None:
        """Client to server, unchanged; the plan is made once the request head is complete."""
        head = b""
        while True:
            data = await reader.read(_READ)
            if not decided.done():
                head = (head + data)[:_HEAD_LIMIT]
                if b"\r\n\r\n" in head or not data or len(head) >= _HEAD_LIMIT:
                    fault = self.plan(head)
                    if fault is not None and fault not in FAULTS:
                        raise ValueError(f"unknown fault {fault!r}")
                    decided.set_result(fault)
            if not data:
                if up_writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        up_writer.write_eof()
                return
            up_writer.write(data)
            await up_writer.drain()

    async def _response(
        self,
        up_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_writer: asyncio.StreamWriter,
        decided: asyncio.Future[str | None],
        first_reply: asyncio.Event,
    ) -> None:
        """Server to client, with the planned fault applied to this connection's response."""
        data = await up_reader.read(_READ)
        first_reply.set()
        fault = await decided if data else None
        if fault == "abort" and writer.is_closing():
            return  # the abort timer already closed the connection
        if fault == "cut":
            self.injected["cut"] += 1
            seen = b""
            while data:
                seen += data
                end = seen.find(b"\r\n\r\n")
                if end >= 0:
                    writer.write(data[: end + 4 + self.cut_after_bytes - len(seen) + len(data)])
                    break
                writer.write(data)
                data = await up_reader.read(_READ)
            await writer.drain()
            writer.close()
            up_writer.close()
            return
        if fault == "drop":
            self.injected["drop"] += 1
            while await up_reader.read(_READ):
                pass  # the server sends its whole response; none of it goes on
            writer.close()
            return
        while data:
            writer.write(data)
            await writer.drain()
            data = await up_reader.read(_READ)

    async def _abort_timer(
        self,
        decided: asyncio.Future[str | None],
        first_reply: asyncio.Event,
        writer: asyncio.StreamWriter,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        if await decided != "abort":
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(first_reply.wait(), self.abort_after)
            return  # the response came in time: no abort (and counted as none)
        self.injected["abort"] += 1
        for w in (writer, up_writer):
            w.close()
